// imd console: pages drawn from the JSON admin API (/api/v1/admin), with the session cookie and
// the page's CSRF token. No framework and nothing loaded from elsewhere; text always goes in as
// text (never as HTML), so data from the directory or a CSV cannot inject markup.
'use strict';
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const main = document.getElementById('main');
  const banner = document.getElementById('banner');
  let stopPage = () => {};

  // ---------------------------------------------------------------- DOM and API helpers

  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'class') e.className = v;
      else if (k === 'for') e.htmlFor = v;
      else if (k === 'value') e.value = v;
      else e.setAttribute(k, v === true ? '' : v);
    }
    append(e, children);
    return e;
  }
  function append(e, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const svgNs = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const e = document.createElementNS(svgNs, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return append(e, children);
  }

  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `the server answered ${status}`);
      this.status = status;
      this.code = e.code || 'http_' + status;
      this.requestId = e.request_id;
      this.body = e;
    }
  }

  function qs(query) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(query || {})) {
      if (v !== null && v !== undefined && v !== '') p.set(k, v);
    }
    const t = p.toString();
    return t ? '?' + t : '';
  }

  async function api(method, path, opts = {}) {
    const headers = { Accept: opts.accept || 'application/json' };
    if (method !== 'GET') headers['X-CSRF-Token'] = csrf;
    // The page's own refreshes are not use: an open tab must not keep a session alive.
    if (opts.background) headers['X-Imd-Background'] = '1';
    let body = opts.body;
    if (body !== undefined && !(body instanceof Blob) && typeof body !== 'string') {
      body = JSON.stringify(body);
      headers['Content-Type'] = 'application/json';
    } else if (opts.contentType) {
      headers['Content-Type'] = opts.contentType;
    }
    const r = await fetch('/api/v1/admin' + path + qs(opts.query), {
      method, headers, body, credentials: 'same-origin',
    });
    if (r.status === 401) {
      location.href = '/console/login?expired=1';
      throw new ApiError(401, await r.json().catch(() => null));
    }
    if (opts.raw) return r;
    if (r.status === 204) return null;
    const data = await r.json().catch(() => null);
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  function showError(e) {
    banner.className = 'error';
    banner.replaceChildren(
      h('strong', {}, e.code || 'error'), ': ', e.message || String(e),
      e.requestId ? h('span', { class: 'rid' }, ` (request id ${e.requestId})`) : null,
      h('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', onclick: () => { banner.hidden = true; } }, '×'));
    banner.hidden = false;
  }
  function notify(text) {
    banner.className = 'ok';
    banner.replaceChildren(h('span', {}, text),
      h('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', onclick: () => { banner.hidden = true; } }, '×'));
    banner.hidden = false;
  }
  // Runs an action, reporting its failure in the banner; returns its result or undefined.
  async function attempt(fn) {
    try { return await fn(); } catch (e) { if (e.status !== 401) showError(e); return undefined; }
  }

  function fmtTime(t) {
    if (!t) return '—';
    const d = new Date(t);
    return isNaN(d) ? t : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  }
  function badge(text, kind) {
    return h('span', { class: 'badge ' + (kind || text) }, text);
  }
  function link(href, text) { return h('a', { href }, text); }
  function section(title, ...children) {
    return h('section', { class: 'card' }, h('h2', {}, title), children);
  }
  function dl(pairs) {
    return h('dl', { class: 'fields' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v === null || v === undefined || v === '' ? '—' : v)]));
  }

  // A modal dialog; resolves with the value of the button pressed (or null on Escape).
  function dialog(title, body, buttons) {
    const opener = document.activeElement;
    return new Promise((resolve) => {
      const d = h('dialog', { 'aria-labelledby': 'dlg-title' });
      const done = (v) => {
        d.close();
        d.remove();
        // Back to where the keyboard was (if that control is still on the page).
        if (opener && opener.isConnected && opener.focus) opener.focus();
        resolve(v);
      };
      append(d, [
        h('h2', { id: 'dlg-title' }, title),
        body,
        h('div', { class: 'actions' }, buttons.map(([label, value, cls]) =>
          h('button', { type: 'button', class: cls || '', onclick: () => done(typeof value === 'function' ? value() : value) }, label))),
      ]);
      d.addEventListener('cancel', (ev) => { ev.preventDefault(); done(null); });
      document.body.append(d);
      d.showModal();
    });
  }
  function confirmDo(title, text, label) {
    return dialog(title, h('p', {}, text), [['Cancel', false], [label, true, 'danger']]);
  }
  // Shows a secret once, with a copy button; the console never stores it.
  function showOnce(title, what, secret, extra) {
    const area = h('textarea', { readonly: true, rows: 4, id: 'secret-value', 'aria-label': what }, secret);
    const status = h('span', { role: 'status', class: 'copied' });
    const copy = h('button', {
      type: 'button', id: 'copy-secret', onclick: async () => {
        area.select();
        try { await navigator.clipboard.writeText(secret); } catch (_) { document.execCommand('copy'); }
        status.textContent = 'Copied.';
      },
    }, 'Copy');
    return dialog(title, h('div', {},
      h('p', { class: 'warn' }, `This is the only time the ${what} is shown. Copy it now.`),
      area, h('div', {}, copy, ' ', status), extra || null), [['Done', true]]);
  }
  function download(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // A form from field descriptions; `submit` gets the values (empty strings left out).
  function form(fields, label, submit, opts = {}) {
    const inputs = {};
    const f = h('form', { class: 'form' + (opts.inline ? ' inline' : ''), onsubmit: async (ev) => {
      ev.preventDefault();
      const values = {};
      for (const [name, input] of Object.entries(inputs)) {
        if (input.type === 'checkbox') values[name] = input.checked;
        else if (input.value.trim() !== '') values[name] = input.value.trim();
      }
      btn.disabled = true;
      try { await submit(values); } finally { btn.disabled = false; }
    } });
    for (const fd of fields) {
      const id = (opts.prefix || 'f') + '-' + fd.name;
      let input;
      if (fd.type === 'select') {
        input = h('select', { id, name: fd.name }, fd.options.map(([v, t]) => h('option', { value: v }, t)));
        if (fd.value !== undefined) input.value = fd.value;
      } else if (fd.type === 'checkbox') {
        input = h('input', { id, name: fd.name, type: 'checkbox' });
        input.checked = !!fd.value;
      } else {
        input = h('input', { id, name: fd.name, type: fd.type || 'text', required: fd.required, placeholder: fd.placeholder, min: fd.min, max: fd.max, value: fd.value });
      }
      inputs[fd.name] = input;
      append(f, [h('div', { class: 'field' + (fd.type === 'checkbox' ? ' check' : '') }, h('label', { for: id }, fd.label), input,
        fd.help ? h('small', {}, fd.help) : null)]);
    }
    const btn = h('button', { type: 'submit', id: opts.id || null }, label);
    append(f, [h('div', { class: 'field submit' }, btn)]);
    f.inputs = inputs;
    return f;
  }

  // ---------------------------------------------------------------- the list pattern
  // Every list page is one call: an endpoint, filters (query parameters), columns and row
  // actions. Pages are fetched with the API's cursor ("Load more").
  function listView(cfg) {
    const wrap = h('div', { class: 'list' });
    const tbody = h('tbody');
    const more = h('button', { type: 'button', class: 'more', hidden: true }, 'Load more');
    const count = h('p', { class: 'count', role: 'status' });
    let cursor = null;
    let query = Object.assign({}, cfg.initial || {});
    let shown = 0;
    const table = h('table', { class: 'grid' },
      h('caption', { class: 'sr-only' }, cfg.caption || ''),
      h('thead', {}, h('tr', {}, cfg.columns.map((c) => h('th', { scope: 'col' }, c.label)),
        cfg.actions ? h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')) : null)),
      tbody);
    async function load(reset) {
      if (reset) { cursor = null; shown = 0; tbody.replaceChildren(); }
      const data = await attempt(() => api('GET', cfg.endpoint, { query: Object.assign({ limit: cfg.limit || 50 }, query, cursor ? { cursor } : {}) }));
      if (!data) return;
      for (const row of data.items) {
        const tr = h('tr', {}, cfg.columns.map((c) => h('td', { 'data-label': c.label }, c.value(row) ?? '—')));
        if (cfg.actions) {
          append(tr, [h('td', { class: 'row-actions' }, cfg.actions.filter((a) => !a.when || a.when(row)).map((a) =>
            h('button', { type: 'button', class: a.cls || '', 'aria-label': `${a.label} ${cfg.name ? cfg.name(row) : ''}`.trim(), onclick: async () => {
              const changed = await attempt(() => a.run(row));
              if (changed) load(true);
            } }, a.label)))]);
        }
        tbody.append(tr);
      }
      shown += data.items.length;
      cursor = data.next_cursor;
      more.hidden = !cursor;
      count.textContent = shown === 0 ? (cfg.empty || 'Nothing here yet.') : `${shown}${cursor ? '+' : ''} shown`;
    }
    more.addEventListener('click', () => load(false));
    if (cfg.filters) {
      const f = form(cfg.filters.map((x) => Object.assign({}, x, { value: query[x.name] ?? x.value })), 'Filter', async (values) => {
        for (const x of cfg.filters) if (x.toApi && values[x.name]) values[x.name] = x.toApi(values[x.name]);
        query = values;
        await load(true);
      }, { inline: true, prefix: 'filter' });
      f.classList.add('filters');
      f.setAttribute('role', 'search');
      wrap.append(f);
    }
    append(wrap, [h('div', { class: 'table-wrap' }, table), count, more]);
    wrap.reload = () => load(true);
    load(true);
    return wrap;
  }

  // ---------------------------------------------------------------- pages

  const pages = {};

  pages.overview = async (root) => {
    let win = '24h';
    const body = h('div', { id: 'overview' });
    const toggle = h('div', { class: 'toggle', role: 'group', 'aria-label': 'Time window' },
      [['24h', 'Last 24 hours'], ['30d', 'Last 30 days']].map(([w, t]) => h('button', {
        type: 'button', 'aria-pressed': String(w === win), 'data-window': w, onclick: (ev) => {
          win = w;
          toggle.querySelectorAll('button').forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.window === w)));
          refresh(false);
        },
      }, t)));
    append(root, [h('h1', {}, 'Overview'), toggle, body]);
    async function refresh(background) {
      // Someone reading or using the page keeps their place: no redraw under their focus.
      if (background && (document.hidden || (body.contains(document.activeElement) && document.activeElement !== body))) return;
      const o = await attempt(() => api('GET', '/overview', { query: { window: win }, background }));
      if (!o) return;
      const tableOpen = !!body.querySelector('details[open]');
      body.replaceChildren(
        rollout(o.rollout),
        section('Activations over time', chart(o.activity),
          h('p', { class: 'totals', id: 'activity-totals' },
            h('span', { class: 'k-activated' }, `${o.activity.totals.activated} activated`), ' · ',
            h('span', { class: 'k-reactivated' }, `${o.activity.totals.reactivated} reactivated`), ' · ',
            h('span', { class: 'k-failed' }, `${o.activity.totals.failed} failed`))),
        failures(o.top_failures),
        h('div', { class: 'two' }, connectorsCard(o.connectors), directoriesCard(o.directories)),
        h('p', { class: 'muted' }, `Updated ${fmtTime(o.generated_at)}; refreshes every 10 seconds.`));
      if (tableOpen) body.querySelector('details').open = true;
    }
    await refresh(false);
    const timer = setInterval(() => refresh(true), 10000);
    return () => clearInterval(timer);
  };

  function rollout(r) {
    if (r.tokens.length === 0) {
      return section('Rollout', h('p', {}, 'No tokens yet. ', link('#/tokens', 'Mint one'), ' to start a rollout.'));
    }
    return section('Rollout', h('ul', { class: 'rollout', id: 'rollout' }, r.tokens.map((t) => h('li', { 'data-token': t.id },
      h('div', { class: 'rollout-head' }, h('strong', {}, t.name), ' ', badge(t.version, 'version'), ' ', badge(t.status)),
      h('progress', { max: Math.max(t.expected, 1), value: t.activated, 'aria-label': `${t.name}: ${t.activated} of ${t.expected} devices` }),
      h('span', { class: 'rollout-count' }, `${t.activated} of ${t.expected} activated`),
      t.pending ? h('small', {}, ` (${t.pending} still expected in the organisation for ${t.version})`) : null))));
  }

  // Stacked bars per bucket; the same figures are in a table for screen readers.
  function chart(a) {
    const W = 720, H = 180, pad = 24;
    const n = a.buckets.length;
    const max = Math.max(1, ...a.buckets.map((b) => b.activated + b.reactivated + b.failed));
    const bw = (W - pad) / n;
    const svg = s('svg', { viewBox: `0 0 ${W} ${H + 20}`, preserveAspectRatio: 'xMinYMid meet', class: 'chart', role: 'img', 'aria-labelledby': 'chart-desc' });
    svg.append(s('desc', { id: 'chart-desc' }, `Activation attempts per ${a.bucket_secs === 3600 ? 'hour' : 'day'}: ${a.totals.activated} activated, ${a.totals.reactivated} reactivated, ${a.totals.failed} failed.`));
    svg.append(s('line', { x1: pad, y1: H, x2: W, y2: H, class: 'axis' }));
    svg.append(s('text', { x: 0, y: 12, class: 'tick' }, String(max)));
    a.buckets.forEach((b, i) => {
      let y = H;
      for (const k of ['activated', 'reactivated', 'failed']) {
        const hgt = (b[k] / max) * (H - 10);
        if (hgt > 0) {
          y -= hgt;
          svg.append(s('rect', { x: pad + i * bw + 1, y, width: Math.max(bw - 2, 1), height: hgt, class: 'bar-' + k },
            s('title', {}, `${fmtTime(b.start)}: ${b[k]} ${k}`)));
        }
      }
      if (i % Math.ceil(n / 6) === 0) {
        const d = new Date(b.start);
        const label = a.bucket_secs === 3600 ? d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' }) : d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
        svg.append(s('text', { x: pad + i * bw, y: H + 16, class: 'tick' }, label));
      }
    });
    const legend = h('ul', { class: 'legend' }, ['activated', 'reactivated', 'failed'].map((k) => h('li', { class: 'k-' + k }, k)));
    const table = h('details', {}, h('summary', {}, 'Show as a table'),
      h('table', { class: 'grid small' }, h('thead', {}, h('tr', {}, ['Start', 'Activated', 'Reactivated', 'Failed'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, a.buckets.filter((b) => b.activated + b.reactivated + b.failed > 0).map((b) =>
          h('tr', {}, h('td', {}, fmtTime(b.start)), h('td', {}, b.activated), h('td', {}, b.reactivated), h('td', {}, b.failed))))));
    return h('figure', {}, svg, legend, table);
  }

  function failures(list) {
    if (list.length === 0) return section('Most common failures', h('p', { id: 'no-failures' }, 'No failed activations in this window.'));
    const machine = (d) => h('div', {}, [d.hostname, d.serial].filter(Boolean).join(' · ') || d.uuid || 'unidentified',
      h('small', {}, ` ${d.attempts}×, last ${fmtTime(d.last_at)}`));
    const row = (f) => h('tr', {},
      h('td', {}, link('#/audit?outcome=' + encodeURIComponent(f.code), f.code)),
      h('td', {}, f.count), h('td', {}, f.devices),
      h('td', {}, f.recent_devices.map(machine)));
    return section('Most common failures', h('div', { class: 'table-wrap' }, h('table', { class: 'grid', id: 'failures' },
      h('thead', {}, h('tr', {}, ['Code', 'Attempts', 'Machines', 'Recent machines'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, list.map(row)))));
  }

  function connectorsCard(c) {
    return section('Connectors', c.total === 0 ? h('p', {}, 'No connectors. ', link('#/directories', 'Add one'), ' for AD/LDAP (IMD v2).') :
      h('ul', { class: 'health' }, c.items.map((x) => h('li', {}, badge(x.status), ' ', x.name, h('small', {}, ` ${x.version || ''} last seen ${fmtTime(x.last_seen_at)}`)))));
  }
  function directoriesCard(d) {
    return section('Directories', dl([
      ['AD/LDAP mappings', String(d.ldap_mappings)],
      ['Azure AD', d.azure_configured ? `configured, ${d.azure_mappings} mapping(s)` : 'not configured'],
      ['Last sync', d.last_sync ? h('span', {}, badge(d.last_sync.status), ' ', fmtTime(d.last_sync.started_at)) : 'never'],
    ]));
  }

  pages.tokens = async (root) => {
    let list;
    const mint = form([
      { name: 'name', label: 'Name', required: true, placeholder: 'Berlin laptops' },
      { name: 'version', label: 'IMD version', type: 'select', value: 'v4', options: [['v4', 'v4 — device map'], ['v2', 'v2 — AD/LDAP'], ['v5', 'v5 — Azure AD']] },
      { name: 'expires', label: 'Expires on', type: 'date', help: 'Empty: never' },
      { name: 'max_uses', label: 'Max uses', type: 'number', min: 1, help: 'Empty: unlimited' },
    ], 'Mint token', async (v) => {
      const body = { name: v.name, version: v.version };
      if (v.expires) body.expires_at = toRfc3339(v.expires + 'T23:59:59');
      if (v.max_uses) body.max_uses = Number(v.max_uses);
      const t = await attempt(() => api('POST', '/tokens', { body }));
      if (!t) return;
      mint.reset();
      await showOnce('Token minted', 'token', t.token, h('p', {}, 'Put it in the GPO or MDM profile, or download the bundle from the list.'));
      list.reload();
    }, { prefix: 'mint', id: 'mint-submit' });
    list = listView({
      endpoint: '/tokens', caption: 'Tokens', name: (t) => t.name, empty: 'No tokens yet.',
      columns: [
        { label: 'Name', value: (t) => t.name },
        { label: 'Version', value: (t) => t.version },
        { label: 'Status', value: (t) => badge(t.revoked_at ? 'revoked' : t.expired ? 'expired' : 'active') },
        { label: 'Uses', value: (t) => t.max_uses ? `${t.uses} / ${t.max_uses}` : String(t.uses) },
        { label: 'Last use', value: (t) => fmtTime(t.last_used_at) },
        { label: 'Expires', value: (t) => t.expires_at ? fmtTime(t.expires_at) : 'never' },
      ],
      actions: [
        { label: 'Bundle', when: (t) => !t.revoked_at && !t.expired, run: async (t) => {
          const r = await api('POST', `/tokens/${t.id}/bundle`, { raw: true, accept: 'application/zip' });
          if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
          download(await r.blob(), `imd-bundle-${t.name.replace(/[^A-Za-z0-9._-]+/g, '-')}.zip`);
          return false;
        } },
        { label: 'Rotate', when: (t) => !t.revoked_at, run: async (t) => {
          const days = h('input', { id: 'grace-days', type: 'number', min: 0, max: 365, value: 7 });
          const ok = await dialog('Rotate token', h('div', {},
            h('p', {}, `A successor of "${t.name}" is minted now; the old token keeps working for the grace period.`),
            h('label', { for: 'grace-days' }, 'Grace period (days)'), days), [['Cancel', false], ['Rotate', true]]);
          if (!ok) return false;
          const r = await api('POST', `/tokens/${t.id}/rotate`, { body: { grace_days: Number(days.value || 0) } });
          await showOnce('Token rotated', 'new token', r.token);
          return true;
        } },
        { label: 'Revoke', cls: 'danger', when: (t) => !t.revoked_at, run: async (t) => {
          if (!await confirmDo('Revoke token', `Machines that have not activated yet can no longer use "${t.name}". Activated machines keep working.`, 'Revoke')) return false;
          await api('POST', `/tokens/${t.id}/revoke`);
          notify(`Token "${t.name}" revoked.`);
          return true;
        } },
      ],
    });
    append(root, [h('h1', {}, 'Tokens'), section('Mint a token', mint), section('All tokens', list)]);
  };

  pages['device-maps'] = async (root) => {
    let file = null;
    let mappings;
    const result = h('div', { id: 'upload-result', 'aria-live': 'polite' });
    const input = h('input', { type: 'file', id: 'csv-file', accept: '.csv,text/csv' });
    const zone = h('div', { class: 'dropzone', id: 'dropzone' },
      h('p', {}, 'Drop a device-map CSV here, or choose one:'), h('label', { for: 'csv-file', class: 'sr-only' }, 'Device-map CSV file'), input,
      h('p', { class: 'muted' }, 'It is checked first (a dry run); nothing is written until you apply it. The format: docs/csv-format.md.'));
    zone.addEventListener('dragover', (ev) => { ev.preventDefault(); zone.classList.add('over'); });
    zone.addEventListener('dragleave', () => zone.classList.remove('over'));
    zone.addEventListener('drop', (ev) => {
      ev.preventDefault();
      zone.classList.remove('over');
      if (ev.dataTransfer.files.length) choose(ev.dataTransfer.files[0]);
    });
    input.addEventListener('change', () => { if (input.files.length) choose(input.files[0]); });

    async function upload(query, accept) {
      return api('POST', '/device-maps', { query, body: file, contentType: 'text/csv', raw: true, accept });
    }
    async function choose(f) {
      file = f;
      result.replaceChildren(h('p', {}, `Checking ${f.name}…`));
      const r = await attempt(() => upload({ dry_run: 'true' }));
      if (!r) return;
      const data = await r.json().catch(() => null);
      if (r.ok) return showReport(data, null);
      const e = new ApiError(r.status, data);
      if (e.code === 'device_map_invalid' && e.body.errors) return showReport(e.body, e);
      result.replaceChildren();
      showError(e);
    }
    function showReport(rep, err) {
      const invalid = rep.rows_invalid || 0;
      const total = rep.rows_total || 0;
      const parts = [h('h3', {}, file.name),
        h('p', { id: 'upload-summary' }, `${total} rows, ${total - invalid} valid, ${invalid} invalid.`)];
      if (err && rep.stopped_at_line) parts.push(h('p', { class: 'warn' }, err.message));
      if (invalid > 0) {
        parts.push(h('div', { class: 'table-wrap' }, h('table', { class: 'grid', id: 'row-errors' },
          h('caption', {}, rep.errors_truncated ? 'The first 1,000 row errors' : 'Row errors'),
          h('thead', {}, h('tr', {}, ['Line', 'Column', 'Value', 'Problem'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, (rep.errors || []).map((x) => h('tr', {}, h('td', {}, x.line), h('td', {}, x.column || '—'), h('td', {}, x.value || '—'), h('td', {}, x.error)))))));
      }
      const actions = h('div', { class: 'actions' });
      if (invalid > 0) {
        actions.append(h('button', { type: 'button', id: 'download-failures', onclick: () => attempt(async () => {
          const r = await upload({ dry_run: 'true', mode: 'partial' }, 'text/csv');
          download(await r.blob(), file.name.replace(/\.csv$/i, '') + '-failures.csv');
        }) }, 'Download the failing rows'));
      }
      if (!rep.stopped_at_line && total > invalid) {
        actions.append(h('button', { type: 'button', id: 'apply', class: 'primary', onclick: () => apply(invalid > 0) },
          invalid > 0 ? `Apply the ${total - invalid} valid rows` : `Apply ${total} rows`));
      }
      parts.push(actions);
      result.replaceChildren(...parts);
    }
    async function apply(partial) {
      const r = await attempt(() => upload(partial ? { mode: 'partial' } : {}));
      if (!r) return;
      const data = await r.json().catch(() => null);
      if (!r.ok) return showError(new ApiError(r.status, data));
      result.replaceChildren(h('p', { id: 'applied' }, `Applied: ${data.created} new and ${data.updated} updated mappings${data.rows_invalid ? `, ${data.rows_invalid} rows skipped` : ''}.`));
      mappings.reload();
    }

    mappings = listView({
      endpoint: '/device-mappings', caption: 'Device mappings', name: (m) => m.deviceName,
      filters: [
        { name: 'status', label: 'Status', type: 'select', options: [['', 'Any'], ['pending', 'Pending'], ['consumed', 'Consumed']] },
        { name: 'emailID', label: 'Email', type: 'email' },
      ],
      columns: [
        { label: 'Email', value: (m) => m.emailID },
        { label: 'User name', value: (m) => m.userName },
        { label: 'Device', value: (m) => m.deviceName },
        { label: 'Identifier', value: (m) => `${m.deviceIdentifierType}: ${m.deviceIdentifier}` },
        { label: 'Status', value: (m) => m.consumed_at ? h('span', {}, badge('consumed'), ' ', m.device_id ? link('#/devices/' + m.device_id, 'device') : '') : badge('pending') },
        { label: 'Updated', value: (m) => fmtTime(m.updated_at) },
      ],
      actions: [{ label: 'Delete', cls: 'danger', when: (m) => !m.consumed_at, run: async (m) => {
        if (!await confirmDo('Delete mapping', `Delete the pending mapping of ${m.deviceName} to ${m.emailID}?`, 'Delete')) return false;
        await api('DELETE', `/device-mappings/${m.id}`);
        return true;
      } }],
    });
    append(root, [h('h1', {}, 'Device maps'), section('Upload a CSV', zone, result), section('Mappings', mappings)]);
  };

  const sources = [['', 'Any'], ['device_map', 'Device map'], ['ldap', 'AD/LDAP'], ['azure', 'Azure AD']];

  pages.devices = async (root, id) => {
    if (id) return deviceDetail(root, id);
    append(root, [h('h1', {}, 'Devices'), section('All devices', listView({
      endpoint: '/devices', caption: 'Devices', name: (d) => d.name,
      filters: [
        { name: 'q', label: 'Search', type: 'search', placeholder: 'name, hostname, serial' },
        { name: 'status', label: 'Status', type: 'select', options: [['', 'Any'], ['active', 'Active'], ['replaced', 'Replaced'], ['revoked', 'Revoked']] },
        { name: 'os', label: 'OS', placeholder: 'Windows' },
        { name: 'source', label: 'User source', type: 'select', options: sources },
        { name: 'seen_after', label: 'Last seen after', type: 'date', toApi: toRfc3339 },
      ],
      columns: [
        { label: 'Name', value: (d) => link('#/devices/' + d.id, d.name) },
        { label: 'Hostname', value: (d) => d.hostname },
        { label: 'Serial', value: (d) => d.serial },
        { label: 'OS', value: (d) => [d.os, d.os_version].filter(Boolean).join(' ') },
        { label: 'Status', value: (d) => badge(d.status) },
        { label: 'Last activated', value: (d) => fmtTime(d.last_activated_at) },
      ],
    }))]);
  };
  // Date and datetime-local inputs give local times; the API takes RFC 3339.
  function toRfc3339(v) {
    const d = new Date(v.length === 10 ? v + 'T00:00' : v);
    return isNaN(d) ? v : d.toISOString().replace(/\.\d+Z$/, 'Z');
  }
  async function deviceDetail(root, id) {
    const d = await api('GET', '/devices/' + encodeURIComponent(id));
    const user = await api('GET', '/users/' + encodeURIComponent(d.user_id)).catch(() => null);
    const revoke = d.status === 'active' ? h('button', { type: 'button', class: 'danger', id: 'revoke-device', onclick: async () => {
      if (!await confirmDo('Revoke device', `${d.name} loses its credential at once and can only come back through a new mapping or activation.`, 'Revoke')) return;
      if (await attempt(() => api('POST', `/devices/${d.id}/revoke`))) { notify(`Device ${d.name} revoked.`); render(); }
    } }, 'Revoke device') : null;
    append(root, [h('p', {}, link('#/devices', '← Devices')), h('h1', {}, d.name, ' ', badge(d.status)),
      section('Device', dl([
        ['User', user ? link('#/users/' + user.id, user.email) : d.user_id],
        ['Hostname', d.hostname], ['Serial number', d.serial], ['Hardware UUID', d.uuid],
        ['OS', [d.os, d.os_version].filter(Boolean).join(' ')], ['Client', d.client_version],
        ['Token', d.token_id], ['Created', fmtTime(d.created_at)], ['Last activated', fmtTime(d.last_activated_at)],
        ['Revoked', d.revoked_at ? fmtTime(d.revoked_at) : null],
        ['Replaces', d.replaces ? link('#/devices/' + d.replaces, d.replaces) : null],
        ['Replaced by', d.replaced_by ? link('#/devices/' + d.replaced_by, d.replaced_by) : null],
      ]), revoke),
      section('Activation history', auditList({ device_id: d.id }, false))]);
  }

  pages.users = async (root, id) => {
    if (id) return userDetail(root, id);
    append(root, [h('h1', {}, 'Users'), section('All users', listView({
      endpoint: '/users', caption: 'Users', name: (u) => u.email,
      filters: [
        { name: 'q', label: 'Search', type: 'search', placeholder: 'email or name' },
        { name: 'status', label: 'Status', type: 'select', options: [['', 'Any'], ['active', 'Active'], ['preserved', 'Preserved'], ['deleted', 'Deleted']] },
        { name: 'source', label: 'Source', type: 'select', options: sources },
      ],
      columns: [
        { label: 'Email', value: (u) => link('#/users/' + u.id, u.email) },
        { label: 'Name', value: (u) => u.user_name },
        { label: 'Source', value: (u) => u.source },
        { label: 'Profile', value: (u) => u.profile },
        { label: 'Status', value: (u) => badge(u.status) },
        { label: 'Created', value: (u) => fmtTime(u.created_at) },
      ],
    }))]);
  };
  async function userDetail(root, id) {
    const u = await api('GET', '/users/' + encodeURIComponent(id));
    append(root, [h('p', {}, link('#/users', '← Users')), h('h1', {}, u.email, ' ', badge(u.status)),
      section('User', dl([
        ['Name', u.user_name], ['Source', u.source], ['Directory id', u.external_id], ['Profile', u.profile],
        ['Storage region', u.storage_region], ['Quota', u.quota_bytes === null ? 'unlimited' : `${u.quota_bytes} bytes`],
        ['Created', fmtTime(u.created_at)], ['Preserved', u.preserved_at ? fmtTime(u.preserved_at) : null],
        ['Deleted', u.deleted_at ? fmtTime(u.deleted_at) : null],
      ])),
      section('Devices', listView({
        endpoint: '/devices', initial: { user_id: u.id }, caption: 'Devices of this user', empty: 'No devices.',
        columns: [
          { label: 'Name', value: (d) => link('#/devices/' + d.id, d.name) },
          { label: 'Status', value: (d) => badge(d.status) },
          { label: 'Last activated', value: (d) => fmtTime(d.last_activated_at) },
        ],
      })),
      section('Activation history', auditList({ user_id: u.id }, false))]);
  }

  function auditList(initial, withFilters) {
    return listView({
      endpoint: '/activations', initial, caption: 'Activation attempts', empty: 'No activation attempts.',
      filters: withFilters ? [
        { name: 'outcome', label: 'Outcome', placeholder: 'activated, failed, token_expired…', type: 'search' },
        { name: 'token_id', label: 'Token id' },
        { name: 'device_id', label: 'Device id' },
        { name: 'user_id', label: 'User id' },
        { name: 'since', label: 'Since', type: 'datetime-local', toApi: toRfc3339 },
        { name: 'until', label: 'Until', type: 'datetime-local', toApi: toRfc3339 },
      ] : null,
      columns: [
        { label: 'Time', value: (a) => fmtTime(a.created_at) },
        { label: 'Outcome', value: (a) => badge(a.outcome, a.outcome === 'activated' || a.outcome === 'reactivated' ? 'active' : 'failed') },
        { label: 'Machine', value: (a) => a.device_id ? link('#/devices/' + a.device_id, a.hostname || a.serial || a.device_id) : [a.hostname, a.serial].filter(Boolean).join(' · ') || a.uuid },
        { label: 'User', value: (a) => a.user_id ? link('#/users/' + a.user_id, a.login || 'user') : a.login },
        { label: 'Token', value: (a) => a.token_id ? link('#/audit?token_id=' + encodeURIComponent(a.token_id), a.token_id.slice(0, 8) + '…') : null },
        { label: 'From', value: (a) => a.remote_ip },
        { label: 'Message', value: (a) => a.message },
      ],
    });
  }

  pages.audit = async (root, _id, params) => {
    const initial = {};
    for (const k of ['outcome', 'token_id', 'device_id', 'user_id']) if (params.get(k)) initial[k] = params.get(k);
    const list = auditList(initial, true);
    append(root, [h('h1', {}, 'Audit'), section('Activation trail', list)]);
  };

  pages.directories = async (root) => {
    append(root, [h('h1', {}, 'Directories')]);
    root.append(connectorsSection(), ldapSection(), await azureSection(), await syncSection());
  };

  function connectorsSection() {
    let list;
    const create = form([{ name: 'name', label: 'Connector name', required: true, placeholder: 'hq-dc01' }], 'Add connector', async (v) => {
      const c = await attempt(() => api('POST', '/connectors', { body: { name: v.name } }));
      if (!c) return;
      create.reset();
      await showOnce('Connector added', 'registration key', c.registration_key,
        h('p', {}, 'Run ', h('code', {}, 'imd connector register'), ' with it on a machine inside the firewall (docs/connector.md). It works once, for 24 hours.'));
      list.reload();
    }, { inline: true, prefix: 'connector' });
    list = listView({
      endpoint: '/connectors', caption: 'Connectors', name: (c) => c.name, empty: 'No connectors.',
      columns: [
        { label: 'Name', value: (c) => c.name },
        { label: 'Status', value: (c) => badge(c.status) },
        { label: 'Version', value: (c) => c.version },
        { label: 'Host', value: (c) => c.hostname },
        { label: 'Directory', value: (c) => c.directory_kind },
        { label: 'Last seen', value: (c) => fmtTime(c.last_seen_at) },
      ],
      actions: [
        { label: 'New registration key', run: async (c) => {
          const k = await api('POST', `/connectors/${c.id}/registration-key`);
          await showOnce('New registration key', 'registration key', k.registration_key);
          return true;
        } },
        { label: 'Retire', cls: 'danger', run: async (c) => {
          if (!await confirmDo('Retire connector', `${c.name} is disconnected and its credential stops working.`, 'Retire')) return false;
          await api('DELETE', `/connectors/${c.id}`);
          return true;
        } },
      ],
    });
    return section('Connectors (AD/LDAP, IMD v2)', create, list);
  }

  function ldapSection() {
    let list;
    const browser = h('div', { class: 'browser', id: 'dir-browser' });
    const create = form([
      { name: 'name', label: 'Name', required: true },
      { name: 'priority', label: 'Priority', type: 'number', min: 0, required: true, value: 100 },
      { name: 'base_dn', label: 'Base DN', required: true, placeholder: 'OU=Staff,DC=corp,DC=example' },
      { name: 'group', label: 'Group DN (optional)' },
      { name: 'filter', label: 'LDAP filter (optional)', placeholder: '(department=Sales)' },
      { name: 'profile', label: 'Profile', required: true, value: 'default' },
      { name: 'storage_region', label: 'Storage region', required: true, value: 'default' },
      { name: 'auto_import', label: 'Import users on sync', type: 'checkbox' },
    ], 'Add mapping', async (v) => {
      const body = { name: v.name, priority: Number(v.priority), base_dn: v.base_dn, profile: v.profile, storage_region: v.storage_region, auto_import: v.auto_import };
      if (v.group) body.group = v.group;
      if (v.filter) body.filter = v.filter;
      if (await attempt(() => api('POST', '/ldap-mappings', { body }))) { create.reset(); list.reload(); }
    }, { prefix: 'ldap' });
    const browse = h('button', { type: 'button', id: 'browse-directory', onclick: () => attempt(async () => {
      const root = await api('GET', '/directory/naming-contexts');
      browser.replaceChildren(h('p', {}, `Through connector ${root.connector_id}; pick an OU for the base DN.`), ouTree(root.root_dse.base_dn || root.root_dse.default_naming_context));
    }) }, 'Browse the directory');
    function ouTree(base) {
      const li = h('li', {});
      const kids = h('ul', { class: 'tree' });
      const pick = h('button', { type: 'button', class: 'link', onclick: () => { create.inputs.base_dn.value = base; create.inputs.base_dn.focus(); } }, base);
      const open = h('button', { type: 'button', 'aria-expanded': 'false', 'aria-label': 'Show OUs under ' + base, onclick: () => attempt(async () => {
        if (open.getAttribute('aria-expanded') === 'true') { kids.replaceChildren(); open.setAttribute('aria-expanded', 'false'); return; }
        const r = await api('GET', '/directory/ous', { query: { base } });
        kids.replaceChildren(...r.items.map((o) => ouTree(o.dn).firstChild));
        if (r.items.length === 0) kids.append(h('li', { class: 'muted' }, 'no OUs below'));
        open.setAttribute('aria-expanded', 'true');
      }) }, '▸');
      append(li, [open, ' ', pick, kids]);
      return h('ul', { class: 'tree' }, li);
    }
    list = listView({
      endpoint: '/ldap-mappings', caption: 'AD/LDAP mappings', name: (m) => m.name, empty: 'No AD/LDAP mappings.',
      columns: [
        { label: 'Priority', value: (m) => m.priority },
        { label: 'Name', value: (m) => m.name },
        { label: 'Base DN', value: (m) => m.base_dn },
        { label: 'Group / filter', value: (m) => [m.group, m.filter].filter(Boolean).join(' ') },
        { label: 'Profile', value: (m) => m.profile },
        { label: 'Import', value: (m) => m.auto_import ? 'yes' : 'no' },
      ],
      actions: [{ label: 'Delete', cls: 'danger', run: async (m) => {
        if (!await confirmDo('Delete mapping', `Delete the AD/LDAP mapping "${m.name}"?`, 'Delete')) return false;
        await api('DELETE', `/ldap-mappings/${m.id}`);
        return true;
      } }],
    });
    return section('AD/LDAP mappings', list, h('h3', {}, 'Add a mapping'), browse, browser, create);
  }

  async function azureSection() {
    const cfg = await api('GET', '/azure').catch((e) => { if (e.code === 'azure_not_configured') return null; throw e; });
    const result = h('div', { id: 'azure-test-result', 'aria-live': 'polite' });
    const f = form([
      { name: 'tenant_id', label: 'Tenant id or domain', required: true, value: cfg?.tenant_id },
      { name: 'client_id', label: 'Application (client) id', required: true, value: cfg?.client_id },
      { name: 'client_secret', label: 'Client secret value', type: 'password', required: !cfg, help: cfg?.client_secret_set ? 'Stored; leave empty to keep it.' : 'Stored encrypted; never shown again.' },
      { name: 'allow_guests', label: 'Guests may activate', type: 'checkbox', value: cfg?.allow_guests },
    ], 'Save', async (v) => {
      if (await attempt(() => api('PUT', '/azure', { body: v }))) { notify('Azure AD settings saved.'); render(); }
    }, { prefix: 'azure' });
    const test = h('button', { type: 'button', id: 'azure-test', disabled: !cfg, onclick: () => attempt(async () => {
      result.replaceChildren(h('p', {}, 'Testing…'));
      const r = await api('POST', '/azure/test');
      result.replaceChildren(r.ok ? h('p', { class: 'ok' }, `Connection works: read ${r.user_sample ? r.user_sample.user_principal_name : 'no user'} and ${r.group_sample ? r.group_sample.display_name : 'no group'}.`)
        : h('p', { class: 'warn' }, h('strong', {}, r.problem), ': ', r.message));
    }) }, 'Test connection');
    const mappings = cfg ? listView({
      endpoint: '/azure-mappings', caption: 'Azure AD mappings', name: (m) => m.name, empty: 'No Azure AD mappings.',
      columns: [
        { label: 'Priority', value: (m) => m.priority },
        { label: 'Name', value: (m) => m.name },
        { label: 'Source', value: (m) => m.source.group_id ? `group ${m.source.group_id}` : `${m.source.attribute} = ${m.source.value}` },
        { label: 'Profile', value: (m) => m.profile },
        { label: 'Import', value: (m) => m.auto_import ? 'yes' : 'no' },
      ],
      actions: [{ label: 'Delete', cls: 'danger', run: async (m) => {
        if (!await confirmDo('Delete mapping', `Delete the Azure AD mapping "${m.name}"?`, 'Delete')) return false;
        await api('DELETE', `/azure-mappings/${m.id}`);
        return true;
      } }],
    }) : h('p', {}, 'Save the app registration first.');
    const add = cfg ? form([
      { name: 'name', label: 'Name', required: true },
      { name: 'priority', label: 'Priority', type: 'number', min: 0, required: true, value: 100 },
      { name: 'group_id', label: 'Group object id', help: 'Or an attribute and value below' },
      { name: 'attribute', label: 'Attribute', placeholder: 'department' },
      { name: 'value', label: 'Value' },
      { name: 'profile', label: 'Profile', required: true, value: 'default' },
      { name: 'storage_region', label: 'Storage region', required: true, value: 'default' },
      { name: 'auto_import', label: 'Import users on sync', type: 'checkbox' },
    ], 'Add mapping', async (v) => {
      const source = v.group_id ? { group_id: v.group_id } : { attribute: v.attribute, value: v.value };
      const body = { name: v.name, priority: Number(v.priority), source, profile: v.profile, storage_region: v.storage_region, auto_import: v.auto_import };
      if (await attempt(() => api('POST', '/azure-mappings', { body }))) { add.reset(); mappings.reload(); }
    }, { prefix: 'azmap' }) : null;
    return section('Azure AD (IMD v5)', f, test, result, h('h3', {}, 'Mappings'), mappings, add);
  }

  async function syncSection() {
    const st = await api('GET', '/sync-settings');
    const f = form([
      { name: 'auto_sync_interval_hours', label: 'Sync every (hours)', type: 'number', min: 1, max: 8760, value: st.auto_sync_interval_hours },
      { name: 'auto_update_user_details', label: 'Update user details', type: 'checkbox', value: st.auto_update_user_details },
      { name: 'auto_preserve_unmapped_users', label: 'Preserve users no longer mapped', type: 'checkbox', value: st.auto_preserve_unmapped_users },
      { name: 'mass_change_threshold_percent', label: 'Hold changes above (% of users)', type: 'number', min: 0, max: 100, value: st.mass_change_threshold_percent },
      { name: 'mass_change_threshold_min', label: '…and above (users)', type: 'number', min: 0, value: st.mass_change_threshold_min },
    ], 'Save', async (v) => {
      const body = {};
      for (const [k, x] of Object.entries(v)) body[k] = typeof x === 'boolean' ? x : Number(x);
      if (await attempt(() => api('PUT', '/sync-settings', { body }))) notify('Sync settings saved.');
    }, { prefix: 'sync' });
    let runs;
    const dry = h('input', { type: 'checkbox', id: 'sync-dry-run' });
    const start = h('div', { class: 'actions' }, h('button', { type: 'button', id: 'sync-now', onclick: () => attempt(async () => {
      const r = await api('POST', '/sync', { query: dry.checked ? { dry_run: 'true' } : {} });
      notify(`Sync run ${r.id} started${r.dry_run ? ' (dry run)' : ''}.`);
      setTimeout(() => runs.reload(), 1500);
    }) }, 'Sync now'), ' ', h('label', { for: 'sync-dry-run' }, dry, ' dry run'));
    runs = listView({
      endpoint: '/sync-runs', caption: 'Sync runs', name: (r) => r.id, empty: 'No sync runs yet.', limit: 20,
      columns: [
        { label: 'Started', value: (r) => fmtTime(r.started_at) },
        { label: 'Trigger', value: (r) => r.trigger + (r.dry_run ? ' (dry run)' : '') },
        { label: 'Status', value: (r) => badge(r.status) },
        { label: 'Changes', value: (r) => Object.entries(r.counts || {}).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(', ') || 'none' },
        { label: 'Held back', value: (r) => r.held ? `${r.held.preserve} preserve, ${r.held.delete} delete` : '—' },
        { label: 'Error', value: (r) => r.error },
      ],
      actions: [
        { label: 'Details', run: async (r) => { await runDetail(r); return false; } },
        { label: 'Approve', when: (r) => r.status === 'needs_approval', run: async (r) => {
          if (!await confirmDo('Approve held changes', `Apply the ${r.held.preserve} preserve and ${r.held.delete} delete changes this run held back?`, 'Approve')) return false;
          await api('POST', `/sync-runs/${r.id}/approve`);
          return true;
        } },
        { label: 'Reject', cls: 'danger', when: (r) => r.status === 'needs_approval', run: async (r) => {
          if (!await confirmDo('Reject held changes', 'Drop the changes this run held back? Nothing is preserved or deleted.', 'Reject')) return false;
          await api('POST', `/sync-runs/${r.id}/reject`);
          return true;
        } },
      ],
    });
    return section('Directory sync', f, start, runs);
  }
  async function runDetail(r) {
    const users = await api('GET', `/sync-runs/${r.id}/users`, { query: { limit: 200 } });
    await dialog(`Sync run ${r.id}`, h('div', { class: 'table-wrap' }, h('table', { class: 'grid small' },
      h('thead', {}, h('tr', {}, ['Action', 'User', 'Reason', 'Applied'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, users.items.map((u) => h('tr', {}, h('td', {}, u.action), h('td', {}, u.email || u.external_id), h('td', {}, u.reason || ''), h('td', {}, u.applied ? 'yes' : 'no')))))), [['Close', true]]);
  }

  // ---------------------------------------------------------------- router

  function route() {
    const hash = location.hash.replace(/^#\/?/, '') || 'overview';
    const [path, query] = hash.split('?');
    const [page, id] = path.split('/');
    return { page: pages[page] ? page : 'overview', id: id ? decodeURIComponent(id) : null, params: new URLSearchParams(query || '') };
  }
  let renders = 0;
  async function render() {
    stopPage();
    stopPage = () => {};
    const r = route();
    const mine = ++renders;
    document.querySelectorAll('#nav a').forEach((a) => {
      if (a.dataset.page === r.page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    });
    // Each render draws into its own container; one the user has already left is dropped.
    const view = h('div', { class: 'view' });
    main.replaceChildren(view);
    try {
      const stop = await pages[r.page](view, r.id, r.params);
      if (mine !== renders || !view.isConnected) {
        if (typeof stop === 'function') stop();
        return;
      }
      if (typeof stop === 'function') stopPage = stop;
    } catch (e) {
      if (mine === renders && e.status !== 401) showError(e);
    }
    const h1 = main.querySelector('h1');
    document.title = `${h1 ? h1.textContent : 'imd'} · imd console`;
  }
  const toggle = document.querySelector('.menu-toggle');
  window.addEventListener('hashchange', () => {
    banner.hidden = true;
    // On a phone the menu folds away again once a page is chosen.
    toggle.setAttribute('aria-expanded', 'false');
    document.getElementById('nav').classList.remove('open');
    render();
    main.focus();
  });
  toggle.addEventListener('click', () => {
    const open = toggle.getAttribute('aria-expanded') !== 'true';
    toggle.setAttribute('aria-expanded', String(open));
    document.getElementById('nav').classList.toggle('open', open);
  });
  render();
})();
