//! The OpenAPI description (`GET /api/v1/openapi.json`) against the server and the docs: every
//! route the server serves is described with its error codes and nothing else is; the examples
//! in docs/api.md and real answers validate against the schemas; the reference page is served
//! with a strict CSP.

use imd::http::Code;
use imd::http::api_routes::{Auth, Method, operations};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

// ---------------------------------------------------------------------------------------------
// A small JSON Schema (2020-12) validator: the keywords the description uses. Unknown keywords
// (`format`, `description`, `default`, `x-…`) are annotations and are not checked.

struct Validator<'a> {
    doc: &'a Value,
}

impl<'a> Validator<'a> {
    fn new(doc: &'a Value) -> Self {
        Validator { doc }
    }

    fn resolve(&self, r: &str) -> &'a Value {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unsupported $ref {r}"));
        self.doc["components"]["schemas"]
            .get(name)
            .unwrap_or_else(|| panic!("$ref {r} does not resolve"))
    }

    /// Every problem found, as `path: problem` lines (empty = valid).
    fn errors(&self, schema: &Value, v: &Value) -> Vec<String> {
        let mut out = Vec::new();
        self.check(schema, v, "$", &mut out);
        out
    }

    fn check(&self, schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
        let s = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                out.push(format!("{at}: no value is allowed here"));
                return;
            }
            Value::Object(s) => s,
            _ => panic!("not a schema at {at}: {schema}"),
        };
        if let Some(Value::String(r)) = s.get("$ref") {
            self.check(self.resolve(r), v, at, out);
        }
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(t) => vec![t.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => panic!("bad type at {at}"),
            };
            if !types.iter().any(|t| type_matches(t, v)) {
                out.push(format!(
                    "{at}: expected {}, got {}",
                    types.join(" or "),
                    kind(v)
                ));
                return;
            }
        }
        if let Some(c) = s.get("const")
            && c != v
        {
            out.push(format!("{at}: expected {c}, got {v}"));
        }
        if let Some(Value::Array(e)) = s.get("enum")
            && !e.contains(v)
        {
            out.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(e.clone())
            ));
        }
        if let Some(n) = v.as_f64() {
            if let Some(min) = s.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                out.push(format!("{at}: {n} is below the minimum {min}"));
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                out.push(format!("{at}: {n} is above the maximum {max}"));
            }
        }
        if let Some(Value::Array(all)) = s.get("allOf") {
            for sub in all {
                self.check(sub, v, at, out);
            }
        }
        if let Some(Value::Array(any)) = s.get("anyOf")
            && !any.iter().any(|sub| self.errors(sub, v).is_empty())
        {
            out.push(format!("{at}: matches none of anyOf"));
        }
        if let Some(Value::Array(one)) = s.get("oneOf") {
            let n = one
                .iter()
                .filter(|sub| self.errors(sub, v).is_empty())
                .count();
            if n != 1 {
                out.push(format!("{at}: matches {n} of oneOf, not exactly one"));
            }
        }
        if let Value::Object(obj) = v {
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(Value::Array(req)) = s.get("required") {
                for r in req.iter().filter_map(Value::as_str) {
                    if !obj.contains_key(r) {
                        out.push(format!("{at}: missing required key {r:?}"));
                    }
                }
            }
            for (k, val) in obj {
                let here = format!("{at}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => self.check(ps, val, &here, out),
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            out.push(format!("{at}: unknown key {k:?}"));
                        }
                        Some(extra @ Value::Object(_)) => self.check(extra, val, &here, out),
                        _ => {}
                    },
                }
            }
        }
        if let (Value::Array(items), Some(item_schema)) = (v, s.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{at}[{i}]"), out);
            }
        }
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        other => panic!("unknown type {other}"),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn description() -> &'static Value {
    imd::http::openapi::document()
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> Option<&'a Value> {
    doc["paths"].get(path)?.get(method.to_ascii_lowercase())
}

fn response_schema<'a>(doc: &'a Value, method: &str, path: &str, status: &str) -> &'a Value {
    let op =
        operation(doc, method, path).unwrap_or_else(|| panic!("{method} {path} is not described"));
    op["responses"]
        .get(status)
        .unwrap_or_else(|| panic!("{method} {path} has no {status} response"))
        .pointer("/content/application~1json/schema")
        .unwrap_or_else(|| panic!("{method} {path} {status} has no JSON schema"))
}

fn request_schema<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    operation(doc, method, path)
        .and_then(|op| op.pointer("/requestBody/content/application~1json/schema"))
        .unwrap_or_else(|| panic!("{method} {path} has no JSON request body"))
}

/// The error codes an operation of the description lists, over all its error responses, each
/// checked to sit under its own HTTP status.
fn listed_codes(op: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (status, r) in op["responses"].as_object().unwrap() {
        for c in r["x-error-codes"].as_array().into_iter().flatten() {
            let c = c.as_str().unwrap();
            let code = Code::ALL.iter().find(|k| k.as_str() == c).unwrap();
            assert_eq!(
                code.status().as_u16().to_string(),
                *status,
                "{c} listed under {status}"
            );
            out.push(c.to_string());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The table and the description.

#[test]
fn openapi_describes_every_table_route_with_its_error_codes() {
    let doc = description();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut described = 0;
    for item in doc["paths"].as_object().unwrap().values() {
        described += item.as_object().unwrap().len();
    }
    assert_eq!(
        described,
        operations().len(),
        "the description has operations the table has not"
    );
    for o in operations() {
        let op = operation(doc, o.method.as_str(), o.path)
            .unwrap_or_else(|| panic!("{o:?} is not in the description"));
        assert_eq!(op["operationId"], o.operation_id);
        let listed = listed_codes(op);
        for c in o.error_codes() {
            assert!(
                listed.contains(&c.as_str().to_string()),
                "{o:?}: {} not listed",
                c.as_str()
            );
        }
        assert_eq!(
            listed.len(),
            o.error_codes().len(),
            "{o:?}: extra codes listed"
        );
        for p in o.path_params() {
            assert!(
                op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["name"] == p && x["in"] == "path"),
                "{o:?}: path parameter {p} not described"
            );
        }
    }
}

#[test]
fn openapi_operations_list_their_auth_codes() {
    let doc = description();
    for o in operations() {
        let op = operation(doc, o.method.as_str(), o.path).unwrap();
        assert_eq!(op["x-imd-auth"], o.auth.as_str());
        let listed = listed_codes(op);
        for c in o.auth.codes() {
            assert!(
                listed.contains(&c.as_str().to_string()),
                "{o:?}: auth code {} missing",
                c.as_str()
            );
        }
        if o.auth == Auth::AdminKey {
            assert_eq!(op["security"], json!([{"adminKey": []}]), "{o:?}");
        }
        if !o.infallible {
            assert!(listed.contains(&"internal".to_string()), "{o:?}");
            assert!(!listed.is_empty());
        }
        // Every admin route is under /api/v1/admin/ and the other way round.
        assert_eq!(
            o.auth == Auth::AdminKey,
            o.path.starts_with("/api/v1/admin/"),
            "{o:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The description and the live server agree, both ways.

fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s.starts_with('{') {
                "00000000-0000-0000-0000-000000000000"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn send(app: &TestApp, m: Method, path: &str) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(m.as_str().as_bytes()).unwrap();
    let resp = app
        .client
        .request(method, app.url(path))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn openapi_routes_match_the_live_server() {
    let app = spawn_app().await;
    let doc = description();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = concrete(path);
        for m in Method::ALL {
            let (status, body) = send(&app, m, &url).await;
            let code = body["error"]["code"].as_str().unwrap_or("");
            let message = body["error"]["message"].as_str().unwrap_or("");
            if item.get(m.openapi_key()).is_some() {
                assert!(
                    !(status == 404 && message.starts_with("no route for")),
                    "{} {path} is described but not served",
                    m.as_str()
                );
                assert_ne!(
                    code,
                    "method_not_allowed",
                    "{} {path} is described but 405",
                    m.as_str()
                );
            } else {
                assert_eq!(
                    (status, code),
                    (405, "method_not_allowed"),
                    "{} {path} is not described: it must be 405",
                    m.as_str()
                );
            }
        }
    }
    // And a path that is not described is not served.
    let (status, body) = send(&app, Method::Get, "/api/v1/not-a-route").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

// ---------------------------------------------------------------------------------------------
// docs/api.md's examples.

#[derive(Debug)]
struct Example {
    line: usize,
    /// `METHOD /path` of the section, if any.
    endpoint: Option<(String, String)>,
    kind: ExampleKind,
    json: Value,
}

#[derive(Debug, PartialEq)]
enum ExampleKind {
    Request,
    Response(String),
    ErrorBody,
}

/// Every ```json block of the markdown with its label (the line before the fence: `Request:`,
/// `Response NNN:` or `Error body:`) and the `### METHOD /path` section it is in. An unlabelled
/// block is an error, so every example is checked.
fn examples(md: &str) -> Result<Vec<Example>, String> {
    let mut out = Vec::new();
    let mut endpoint = None;
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if let Some(h) = l.strip_prefix("### ") {
            endpoint = h.split_once(' ').and_then(|(m, p)| {
                (Method::ALL.iter().any(|x| x.as_str() == m) && p.starts_with('/'))
                    .then(|| (m.to_string(), p.trim().to_string()))
            });
        } else if l.starts_with("## ") {
            endpoint = None;
        }
        if l.trim_end() == "```json" {
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && lines[end].trim_end() != "```" {
                end += 1;
            }
            let text = lines[start..end].join("\n");
            let json: Value = serde_json::from_str(&text)
                .map_err(|e| format!("docs/api.md:{}: not JSON: {e}", i + 1))?;
            let label = i.checked_sub(1).map(|p| lines[p].trim()).unwrap_or("");
            let kind = if label == "Request:" {
                ExampleKind::Request
            } else if label == "Error body:" {
                ExampleKind::ErrorBody
            } else if let Some(s) = label
                .strip_prefix("Response ")
                .and_then(|s| s.strip_suffix(':'))
            {
                ExampleKind::Response(s.to_string())
            } else {
                return Err(format!(
                    "docs/api.md:{}: a json example without a label (`Request:`, `Response NNN:` or `Error body:` on the line before)",
                    i + 1
                ));
            };
            if kind != ExampleKind::ErrorBody && endpoint.is_none() {
                return Err(format!(
                    "docs/api.md:{}: an example outside an endpoint section",
                    i + 1
                ));
            }
            out.push(Example {
                line: i + 1,
                endpoint: endpoint.clone(),
                kind,
                json,
            });
            i = end;
        }
        i += 1;
    }
    Ok(out)
}

/// The problems of each example against the description, as `docs/api.md:LINE: …` lines.
fn example_problems(doc: &Value, examples: &[Example]) -> Vec<String> {
    let v = Validator::new(doc);
    let error_schema = json!({"$ref": "#/components/schemas/Error"});
    let mut out = Vec::new();
    for e in examples {
        let schema = match (&e.kind, &e.endpoint) {
            (ExampleKind::ErrorBody, _) => &error_schema,
            (ExampleKind::Request, Some((m, p))) => request_schema(doc, m, p),
            (ExampleKind::Response(s), Some((m, p))) => response_schema(doc, m, p, s),
            _ => unreachable!(),
        };
        for problem in v.errors(schema, &e.json) {
            out.push(format!("docs/api.md:{}: {problem}", e.line));
        }
    }
    out
}

#[test]
fn openapi_docs_examples_validate() {
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let examples = examples(&md).unwrap();
    assert!(
        examples.len() >= 10,
        "only {} examples found",
        examples.len()
    );
    assert!(examples.iter().any(|e| e.kind == ExampleKind::Request));
    let problems = example_problems(description(), &examples);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every described endpoint has a section in docs/api.md (the sync endpoints are described
    // in docs/sync.md, which names each of them).
    let sync_md =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sync.md")).unwrap();
    for o in operations() {
        let heading = format!("### {} {}", o.method.as_str(), o.path);
        let documented = if o.tag == imd::http::api_routes::tag::SYNC {
            sync_md.contains(&format!("{} {}", o.method.as_str(), o.path))
                || sync_md.contains(&format!("{} `{}", o.method.as_str(), o.path))
                || md.contains(&format!("| {} | `{}` |", o.method.as_str(), o.path))
        } else {
            md.lines().any(|l| l.trim_end() == heading)
        };
        assert!(documented, "{heading:?} is not documented");
    }
}

#[test]
fn openapi_wrong_examples_are_rejected() {
    let doc = description();
    let md = "## Endpoints\n\n### POST /api/v1/admin/tokens\n\nRequest:\n```json\n{\"version\":\"v4\",\"name\":\"x\",\"max_use\":5}\n```\n\nResponse 201:\n```json\n{\"id\":\"t\"}\n```\n\nError body:\n```json\n{\"error\":{\"code\":\"no_such_code\",\"message\":\"m\",\"retryable\":false}}\n```\n";
    let ex = examples(md).unwrap();
    assert_eq!(ex.len(), 3);
    let problems = example_problems(doc, &ex);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("unknown key \"max_use\"")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("missing required key \"token\"")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("no_such_code")),
        "{problems:?}"
    );
    // An unlabelled example, or one outside an endpoint section, is refused outright.
    assert!(examples("### GET /healthz\n\n```json\n{}\n```\n").is_err());
    assert!(examples("## Intro\n\nResponse 200:\n```json\n{}\n```\n").is_err());
    // A wrong type, and an error code listed under another status.
    let v = Validator::new(doc);
    let mint = request_schema(doc, "POST", "/api/v1/admin/tokens");
    assert!(
        !v.errors(mint, &json!({"version": "v4", "name": 5}))
            .is_empty()
    );
    assert!(
        v.errors(mint, &json!({"version": "v4", "name": "n"}))
            .is_empty()
    );
    let s401 = response_schema(doc, "POST", "/api/v1/admin/tokens", "401");
    let body = |c: &str| json!({"error": {"code": c, "message": "m", "retryable": false}});
    assert!(v.errors(s401, &body("unauthorized")).is_empty());
    assert!(!v.errors(s401, &body("not_found")).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Real answers against their schemas.

async fn check_response(resp: reqwest::Response, method: &str, path: &str) -> Value {
    let status = resp.status().as_u16().to_string();
    let body: Value = resp.json().await.unwrap();
    let doc = description();
    let problems = Validator::new(doc).errors(response_schema(doc, method, path, &status), &body);
    assert!(
        problems.is_empty(),
        "{method} {path} {status}: {problems:?}\n{body}"
    );
    body
}

#[tokio::test]
async fn openapi_real_responses_validate() {
    let app = spawn_app().await;
    let get = |p: &str| app.client.get(app.url(p)).send();
    check_response(get("/healthz").await.unwrap(), "GET", "/healthz").await;
    check_response(get("/readyz").await.unwrap(), "GET", "/readyz").await;
    check_response(get("/api/v1/keys").await.unwrap(), "GET", "/api/v1/keys").await;

    // Mint, list, one, rotate.
    let minted = app
        .mint(&json!({"version": "v4", "name": "Berlin", "max_uses": 5}))
        .await;
    let minted = check_response(minted, "POST", "/api/v1/admin/tokens").await;
    let token = minted["token"].as_str().unwrap().to_string();
    let id = minted["id"].as_str().unwrap().to_string();
    check_response(
        app.admin_get("/api/v1/admin/tokens").await,
        "GET",
        "/api/v1/admin/tokens",
    )
    .await;
    check_response(
        app.admin_get(&format!("/api/v1/admin/tokens/{id}")).await,
        "GET",
        "/api/v1/admin/tokens/{id}",
    )
    .await;
    check_response(
        app.admin_get("/api/v1/admin/org").await,
        "GET",
        "/api/v1/admin/org",
    )
    .await;
    check_response(
        app.admin_get("/api/v1/admin/admin-keys").await,
        "GET",
        "/api/v1/admin/admin-keys",
    )
    .await;

    // An activation, then the device and user lists and the device's own view.
    app.map(&crate::helpers::device_map(1)).await;
    let body = crate::helpers::activation(&token, "SER000000", "WS-00000", "user0");
    let activated = app.activate(&body).await;
    let activated = check_response(activated, "POST", "/api/v1/activations").await;
    let devices = check_response(
        app.admin_get("/api/v1/admin/devices").await,
        "GET",
        "/api/v1/admin/devices",
    )
    .await;
    assert_eq!(devices["items"].as_array().unwrap().len(), 1);
    check_response(
        app.admin_get("/api/v1/admin/users").await,
        "GET",
        "/api/v1/admin/users",
    )
    .await;
    check_response(
        app.admin_get("/api/v1/admin/activations").await,
        "GET",
        "/api/v1/admin/activations",
    )
    .await;
    check_response(
        app.admin_get("/api/v1/admin/device-mappings").await,
        "GET",
        "/api/v1/admin/device-mappings",
    )
    .await;
    let cred = activated["device_credential"].as_str().unwrap();
    check_response(
        app.get_as("/api/v1/device", cred).await,
        "GET",
        "/api/v1/device",
    )
    .await;

    let rotated = app
        .admin_post(
            &format!("/api/v1/admin/tokens/{id}/rotate"),
            &json!({"grace_days": 1}),
        )
        .await;
    check_response(rotated, "POST", "/api/v1/admin/tokens/{id}/rotate").await;

    // Error bodies: no key, an unknown id, an unknown body field.
    let anonymous = app
        .client
        .get(app.url("/api/v1/admin/devices"))
        .send()
        .await
        .unwrap();
    check_response(anonymous, "GET", "/api/v1/admin/devices").await;
    check_response(
        app.admin_get("/api/v1/admin/tokens/nope").await,
        "GET",
        "/api/v1/admin/tokens/{id}",
    )
    .await;
    let unknown_field = app
        .mint(&json!({"version": "v4", "name": "x", "colour": 1}))
        .await;
    let e = check_response(unknown_field, "POST", "/api/v1/admin/tokens").await;
    assert_eq!(e["error"]["code"], "invalid_request");
}

#[tokio::test]
async fn openapi_description_and_reference_page_are_served() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let served: Value = resp.json().await.unwrap();
    assert_eq!(&served, description());

    let page = app.client.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("<html lang=\"en\">"));
    assert!(html.contains("src=\"/api/docs/reference.js\""));
    // No inline script: every <script> has a src.
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=").count()
    );
    for (path, kind) in [
        ("/api/docs/reference.js", "javascript"),
        ("/api/docs/reference.css", "css"),
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"].to_str().unwrap().contains(kind),
            "{path}"
        );
    }
}

/// The admin answers built from handler-made JSON: connectors, the overview, the device-map
/// report, sync settings and profiles, Azure AD (against a Graph stand-in) and sync runs.
#[tokio::test]
async fn openapi_real_admin_responses_validate() {
    let app = spawn_app_with(&[("azure.max_retries", "1")]).await;
    let put = reqwest::Method::PUT;

    // Connectors: create, list, one, a new key.
    let c = app
        .admin_post("/api/v1/admin/connectors", &json!({"name": "hq"}))
        .await;
    let c = check_response(c, "POST", "/api/v1/admin/connectors").await;
    let cid = c["id"].as_str().unwrap().to_string();
    check_response(
        app.admin_get("/api/v1/admin/connectors").await,
        "GET",
        "/api/v1/admin/connectors",
    )
    .await;
    check_response(
        app.admin_get(&format!("/api/v1/admin/connectors/{cid}"))
            .await,
        "GET",
        "/api/v1/admin/connectors/{id}",
    )
    .await;
    let k = app
        .admin_post(
            &format!("/api/v1/admin/connectors/{cid}/registration-key"),
            &json!({}),
        )
        .await;
    check_response(k, "POST", "/api/v1/admin/connectors/{id}/registration-key").await;

    // Device maps: a dry run, a refusal with row errors, an upload applied.
    let map = crate::helpers::device_map(2);
    let dry = app.upload(&map, "?dry_run=true").await;
    let dry = check_response(dry, "POST", "/api/v1/admin/device-maps").await;
    assert_eq!(dry["dry_run"], true);
    let bad = format!("{map}not-an-email,,,,\n");
    let refused = app.upload(&bad, "").await;
    let refused = check_response(refused, "POST", "/api/v1/admin/device-maps").await;
    assert_eq!(refused["error"]["code"], "device_map_invalid", "{refused}");
    let applied = app.upload(&map, "").await;
    let applied = check_response(applied, "POST", "/api/v1/admin/device-maps").await;
    assert_eq!(applied["applied"], true);

    // The overview after an activation and a failure, both windows.
    let token = app.token().await;
    let ok = app
        .activate(&crate::helpers::activation(
            &token,
            "SER000000",
            "WS-00000",
            "user0",
        ))
        .await;
    assert!(ok.status().is_success());
    let failed = app
        .activate(&crate::helpers::activation(
            &token, "NOPE", "WS-NOPE", "nobody",
        ))
        .await;
    assert!(failed.status().is_client_error());
    for w in ["24h", "30d"] {
        let o = check_response(
            app.admin_get(&format!("/api/v1/admin/overview?window={w}"))
                .await,
            "GET",
            "/api/v1/admin/overview",
        )
        .await;
        assert_eq!(o["window"], w);
        assert!(!o["top_failures"].as_array().unwrap().is_empty(), "{o}");
        assert_eq!(o["connectors"]["total"], 1);
    }

    // Sync settings and profiles.
    check_response(
        app.admin_get("/api/v1/admin/sync-settings").await,
        "GET",
        "/api/v1/admin/sync-settings",
    )
    .await;
    let s = crate::azure::send(
        &app,
        put.clone(),
        "/api/v1/admin/sync-settings",
        &json!({"auto_sync_interval_hours": 12}),
    )
    .await;
    check_response(s, "PUT", "/api/v1/admin/sync-settings").await;
    let p = crate::azure::send(
        &app,
        put.clone(),
        "/api/v1/admin/profiles/Default",
        &json!({"delete_after_days": 60}),
    )
    .await;
    check_response(p, "PUT", "/api/v1/admin/profiles/{name}").await;
    check_response(
        app.admin_get("/api/v1/admin/profiles").await,
        "GET",
        "/api/v1/admin/profiles",
    )
    .await;
    check_response(
        app.admin_get("/api/v1/admin/profiles/Default").await,
        "GET",
        "/api/v1/admin/profiles/{name}",
    )
    .await;

    // Azure AD against a Graph stand-in: the registration, a test, a mapping.
    let (_fake, url) = crate::azure::start_fake().await;
    let cfg = crate::azure::send(
        &app,
        put.clone(),
        "/api/v1/admin/azure",
        &crate::azure::config(&url, &url),
    )
    .await;
    check_response(cfg, "PUT", "/api/v1/admin/azure").await;
    check_response(
        app.admin_get("/api/v1/admin/azure").await,
        "GET",
        "/api/v1/admin/azure",
    )
    .await;
    let t = app.admin_post("/api/v1/admin/azure/test", &json!({})).await;
    let t = check_response(t, "POST", "/api/v1/admin/azure/test").await;
    assert_eq!(t["ok"], true, "{t}");
    let m = app
        .admin_post(
            "/api/v1/admin/azure-mappings",
            &crate::azure::group_mapping("laptop users", 20),
        )
        .await;
    let m = check_response(m, "POST", "/api/v1/admin/azure-mappings").await;
    check_response(
        app.admin_get("/api/v1/admin/azure-mappings").await,
        "GET",
        "/api/v1/admin/azure-mappings",
    )
    .await;
    check_response(
        app.admin_get(&format!(
            "/api/v1/admin/azure-mappings/{}",
            m["id"].as_str().unwrap()
        ))
        .await,
        "GET",
        "/api/v1/admin/azure-mappings/{id}",
    )
    .await;

    // A sync run against the stand-in (it may fail: its shape is what is checked).
    let started = app
        .admin_post("/api/v1/admin/sync?dry_run=true", &json!({}))
        .await;
    let started = check_response(started, "POST", "/api/v1/admin/sync").await;
    let rid = started["id"].as_str().unwrap().to_string();
    let mut run = Value::Null;
    for _ in 0..100 {
        run = check_response(
            app.admin_get(&format!("/api/v1/admin/sync-runs/{rid}"))
                .await,
            "GET",
            "/api/v1/admin/sync-runs/{id}",
        )
        .await;
        if run["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_ne!(run["status"], "running", "{run}");
    check_response(
        app.admin_get("/api/v1/admin/sync-runs").await,
        "GET",
        "/api/v1/admin/sync-runs",
    )
    .await;
    check_response(
        app.admin_get(&format!("/api/v1/admin/sync-runs/{rid}/users"))
            .await,
        "GET",
        "/api/v1/admin/sync-runs/{id}/users",
    )
    .await;
}

/// Directory browsing answers, through a real connector to the test OpenLDAP, match their
/// schemas (skipped without the test directories).
#[tokio::test]
async fn openapi_directory_responses_validate() {
    use crate::imd_v2::{Kind, dir, start_connector};
    let Some(d) = dir(Kind::OpenLdap) else {
        return;
    };
    let app = spawn_app().await;
    let _c = start_connector(&app, &d, "browse").await;
    let r = app
        .admin_get("/api/v1/admin/directory/naming-contexts")
        .await;
    let root = check_response(r, "get", "/api/v1/admin/directory/naming-contexts").await;
    assert_eq!(root["root_dse"]["directory_kind"], "openldap");
    let r = app.admin_get("/api/v1/admin/directory/ous").await;
    let ous = check_response(r, "get", "/api/v1/admin/directory/ous").await;
    assert!(!ous["items"].as_array().unwrap().is_empty(), "{ous}");
    let r = app
        .admin_get("/api/v1/admin/directory/groups?limit=2")
        .await;
    let groups = check_response(r, "get", "/api/v1/admin/directory/groups").await;
    assert!(!groups["items"].as_array().unwrap().is_empty(), "{groups}");
}
