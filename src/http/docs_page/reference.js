// Renders the OpenAPI description of this server (GET /api/v1/openapi.json): tags, operations,
// parameters, bodies, responses with their error codes, and the component schemas. Builds the
// page with DOM calls only (no innerHTML), so nothing in the description is run as markup.
"use strict";

(function () {
  const DESCRIPTION = "/api/v1/openapi.json";

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function slug(s) {
    return String(s).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
  }

  function refName(ref) {
    return ref.split("/").pop();
  }

  // Code spans for `backticks` in descriptions.
  function prose(text) {
    const p = el("p");
    String(text).split(/(`[^`]*`)/).forEach((part) => {
      if (part.startsWith("`") && part.endsWith("`") && part.length > 1) {
        p.append(el("code", {}, part.slice(1, -1)));
      } else if (part) {
        p.append(part);
      }
    });
    return p;
  }

  function typeOf(s) {
    if (!s || typeof s !== "object") return "any";
    if (s.$ref) return refName(s.$ref);
    if (s.const !== undefined) return JSON.stringify(s.const);
    if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
    if (s.anyOf) return s.anyOf.map(typeOf).join(" | ");
    if (s.oneOf) return s.oneOf.map(typeOf).join(" | ");
    if (s.allOf) return s.allOf.map(typeOf).join(" & ");
    let t = Array.isArray(s.type) ? s.type.join(" | ") : s.type || "any";
    if (s.type === "array" || (Array.isArray(s.type) && s.type.includes("array"))) {
      t = t.replace("array", "array of " + typeOf(s.items));
    }
    if (s.format) t += " (" + s.format + ")";
    return t;
  }

  function schemaLink(s) {
    if (s && s.$ref) {
      const name = refName(s.$ref);
      return el("a", { href: "#schema-" + slug(name) }, name);
    }
    if (s && s.type === "array" && s.items && s.items.$ref) {
      return el("span", {}, "array of ", schemaLink(s.items));
    }
    return el("code", {}, typeOf(s));
  }

  // A table of an object schema's properties (one level; nested schemas link to components).
  function propertiesTable(s, caption) {
    const props = (s && s.properties) || {};
    const names = Object.keys(props);
    if (names.length === 0) return null;
    const required = new Set((s && s.required) || []);
    const body = el("tbody");
    for (const n of names) {
      const p = props[n];
      body.append(
        el("tr", {},
          el("th", { scope: "row" }, el("code", {}, n)),
          el("td", {}, schemaLink(p)),
          el("td", {}, required.has(n) ? "yes" : "no"),
          el("td", {}, p && p.description ? p.description : ""))
      );
    }
    return el("table", {},
      el("caption", {}, caption),
      el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "name"), el("th", { scope: "col" }, "type"),
        el("th", { scope: "col" }, "required"), el("th", { scope: "col" }, "description"))),
      body);
  }

  function parametersTable(params) {
    if (!params || params.length === 0) return null;
    const body = el("tbody");
    for (const p of params) {
      body.append(el("tr", {},
        el("th", { scope: "row" }, el("code", {}, p.name)),
        el("td", {}, p.in),
        el("td", {}, schemaLink(p.schema)),
        el("td", {}, p.required ? "yes" : "no"),
        el("td", {}, p.description || "")));
    }
    return el("table", {},
      el("caption", {}, "Parameters"),
      el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "name"), el("th", { scope: "col" }, "in"),
        el("th", { scope: "col" }, "type"), el("th", { scope: "col" }, "required"),
        el("th", { scope: "col" }, "description"))),
      body);
  }

  function responsesList(responses) {
    const list = el("dl", { class: "responses" });
    for (const [status, r] of Object.entries(responses || {})) {
      const cls = status.startsWith("2") || status.startsWith("1") ? "ok" : "err";
      const dd = el("dd");
      if (r["x-error-codes"]) {
        const codes = el("ul", { class: "codes", "aria-label": "error codes" });
        for (const c of r["x-error-codes"]) codes.append(el("li", {}, el("code", {}, c)));
        dd.append(codes);
      } else {
        dd.append(r.description || "");
        for (const [media, m] of Object.entries(r.content || {})) {
          dd.append(el("div", {}, el("span", { class: "media" }, media), " ", schemaLink(m.schema)));
        }
      }
      list.append(el("dt", { class: cls }, status), dd);
    }
    return list;
  }

  function operationBlock(path, method, op) {
    const id = "op-" + slug(op.operationId || method + path);
    const summary = el("summary", {},
      el("span", { class: "method method-" + method }, method.toUpperCase()), " ",
      el("code", { class: "path" }, path), " ",
      el("span", { class: "summary" }, op.summary || ""));
    const details = el("details", { id: id, class: "operation" }, summary);
    details.dataset.search = [method, path, op.summary, (op.tags || []).join(" "),
      Object.values(op.responses || {}).map((r) => (r["x-error-codes"] || []).join(" ")).join(" ")]
      .join(" ").toLowerCase();
    if (op.description) details.append(prose(op.description));
    details.append(el("p", {}, "Authentication: ", el("code", {}, op["x-imd-auth"] || "none"),
      " · operationId ", el("code", {}, op.operationId)));
    const params = parametersTable(op.parameters);
    if (params) details.append(params);
    if (op.requestBody) {
      for (const [media, m] of Object.entries(op.requestBody.content || {})) {
        details.append(el("p", {}, "Request body (", el("span", { class: "media" }, media),
          op.requestBody.required ? "" : ", optional", "): ", schemaLink(m.schema)));
      }
    }
    details.append(el("h4", {}, "Responses"), responsesList(op.responses));
    return details;
  }

  function schemaBlock(name, s) {
    const section = el("section", { id: "schema-" + slug(name), class: "schema", "aria-labelledby": "schema-h-" + slug(name) },
      el("h3", { id: "schema-h-" + slug(name) }, name));
    if (s.description) section.append(prose(s.description));
    const table = propertiesTable(s, name + " properties");
    if (table) {
      section.append(table);
    } else {
      section.append(el("p", {}, "Type: ", el("code", {}, typeOf(s))));
    }
    return section;
  }

  function render(doc) {
    const info = document.getElementById("info");
    info.textContent = "";
    info.append("OpenAPI " + doc.openapi + " · " + doc.info.title + " " + doc.info.version + " · ",
      el("a", { href: DESCRIPTION }, "download the description"));
    const main = document.getElementById("main");
    const toc = document.getElementById("toc");
    const tocList = el("ul");
    toc.append(el("h2", {}, "Tags"), tocList);
    const byTag = new Map((doc.tags || []).map((t) => [t.name, []]));
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const [method, op] of Object.entries(item)) {
        const t = (op.tags || ["Other"])[0];
        if (!byTag.has(t)) byTag.set(t, []);
        byTag.get(t).push([path, method, op]);
      }
    }
    const tagInfo = new Map((doc.tags || []).map((t) => [t.name, t.description]));
    for (const [t, ops] of byTag) {
      if (ops.length === 0) continue;
      const tid = "tag-" + slug(t);
      tocList.append(el("li", {}, el("a", { href: "#" + tid }, t + " (" + ops.length + ")")));
      const section = el("section", { id: tid, class: "tag", "aria-labelledby": tid + "-h" },
        el("h2", { id: tid + "-h" }, t));
      if (tagInfo.get(t)) section.append(el("p", {}, tagInfo.get(t)));
      for (const [path, method, op] of ops) section.append(operationBlock(path, method, op));
      main.append(section);
    }
    const schemas = (doc.components && doc.components.schemas) || {};
    tocList.append(el("li", {}, el("a", { href: "#schemas" }, "Schemas")));
    const ss = el("section", { id: "schemas", "aria-labelledby": "schemas-h" }, el("h2", { id: "schemas-h" }, "Schemas"));
    for (const name of Object.keys(schemas).sort()) ss.append(schemaBlock(name, schemas[name]));
    main.append(ss);
    openFromHash();
  }

  function openFromHash() {
    const id = decodeURIComponent(location.hash.slice(1));
    const target = id && document.getElementById(id);
    if (target && target.tagName === "DETAILS") target.open = true;
  }

  function filter(q) {
    q = q.trim().toLowerCase();
    for (const d of document.querySelectorAll("details.operation")) {
      d.hidden = q !== "" && !d.dataset.search.includes(q);
    }
    for (const s of document.querySelectorAll("section.tag")) {
      s.hidden = s.querySelectorAll("details.operation:not([hidden])").length === 0;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("filter-form").addEventListener("submit", (e) => e.preventDefault());
    document.getElementById("filter").addEventListener("input", (e) => filter(e.target.value));
    window.addEventListener("hashchange", openFromHash);
    fetch(DESCRIPTION, { headers: { Accept: "application/json" } })
      .then((r) => {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(render)
      .catch((e) => {
        document.getElementById("info").textContent = "Could not load " + DESCRIPTION + ": " + e.message;
      });
  });
})();
