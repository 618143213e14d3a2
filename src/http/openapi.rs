//! The OpenAPI 3.1 description, built once from the route table (`api_routes.rs`), and the
//! browsable reference page that renders it. The page is our own small HTML, script and style
//! sheet (in `docs_page/`), compiled into the binary: nothing is fetched at build or run time, and
//! the page's Content-Security-Policy allows only its own script and style.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, ContentType};
use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::api_routes::{Auth, Body, Content, Operation, by_path, tag};
use super::schemas::ErrorBody;

pub const DESCRIPTION_PATH: &str = "/api/v1/openapi.json";
pub const PAGE_PATH: &str = "/api/docs";
pub const SCRIPT_PATH: &str = "/api/docs/reference.js";
pub const STYLE_PATH: &str = "/api/docs/reference.css";

const PAGE_HTML: &str = include_str!("docs_page/index.html");
const PAGE_JS: &str = include_str!("docs_page/reference.js");
const PAGE_CSS: &str = include_str!("docs_page/reference.css");

/// Only the page's own script and style; the description is fetched from the same origin.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The description as served (built on first use).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

fn serialized() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| serde_json::to_string(document()).unwrap_or_default())
}

pub async fn description() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .insert_header((CACHE_CONTROL, "no-cache"))
        .body(serialized())
}

pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .insert_header((CONTENT_SECURITY_POLICY, PAGE_CSP))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(PAGE_HTML)
}

pub async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("x-content-type-options", "nosniff"))
        .body(PAGE_JS)
}

pub async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("x-content-type-options", "nosniff"))
        .body(PAGE_CSS)
}

fn generator(serialize: bool) -> SchemaGenerator {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let settings = if serialize {
        settings.for_serialize()
    } else {
        settings.for_deserialize()
    };
    settings.into_generator()
}

/// Generators: requests are described as they are deserialized, responses as they are
/// serialized (a `#[serde(skip)]` column, a renamed key). Their components share one namespace.
struct Gens {
    request: SchemaGenerator,
    response: SchemaGenerator,
}

fn build() -> Value {
    let mut g = Gens {
        request: generator(false),
        response: generator(true),
    };
    let error_ref = g.response.subschema_for::<ErrorBody>().to_value();
    let mut paths = Map::new();
    for (path, ops) in by_path() {
        let mut item = Map::new();
        for o in ops {
            item.insert(
                o.method.openapi_key().into(),
                operation(o, &mut g, &error_ref),
            );
        }
        paths.insert(path.into(), Value::Object(item));
    }
    let mut schemas = g.request.take_definitions(true);
    for (name, schema) in g.response.take_definitions(true) {
        match schemas.get(&name) {
            Some(existing) if *existing != schema => {
                // Every `$ref` names the one component: two shapes under one name would make
                // half of them wrong. Give one side its own `schema_name`.
                panic!("schema {name} differs between requests and responses");
            }
            _ => {
                schemas.insert(name, schema);
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "imd",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "Mass-deployment activation service",
            "description": "Generated from the server's route table (src/http/api_routes.rs). Errors share one body, `{\"error\": {\"code\", \"message\", \"retryable\", \"request_id\"}}`; each error response lists its possible codes in `x-error-codes`. Prose, examples and limits: docs/api.md.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "tags": tag::ALL.iter().map(|(name, d)| json!({"name": name, "description": d})).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "adminKey": {"type": "http", "scheme": "bearer", "description": "An admin API key, `imd_adm_…` (scoped to one organization)."},
                "deviceCredential": {"type": "http", "scheme": "bearer", "description": "A device credential, `imd_dev_<device id>.…`."},
                "connectorCredential": {"type": "http", "scheme": "bearer", "description": "A connector credential, `imdc_…`, with `x-imd-connector-protocol: 1`."},
                "clusterSignature": {"type": "apiKey", "in": "header", "name": "x-imd-cluster-signature", "description": "HMAC-SHA256 of `<x-imd-cluster-time>\\n<body>` under a key derived from the master key (replicas only)."}
            }
        }
    })
}

fn operation(o: &Operation, g: &mut Gens, error_ref: &Value) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(o.operation_id));
    op.insert("summary".into(), json!(o.summary));
    if let Some(d) = o.description {
        op.insert("description".into(), json!(d));
    }
    op.insert("tags".into(), json!([o.tag]));
    op.insert("x-imd-auth".into(), json!(o.auth.as_str()));
    op.insert(
        "security".into(),
        match o.auth.security_scheme() {
            Some(s) => json!([{ s: [] }]),
            None => json!([]),
        },
    );
    let mut params: Vec<Value> = o
        .path_params()
        .into_iter()
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if let Some(q) = o.query {
        let schema = q(&mut g.request).to_value();
        params.extend(query_params(&schema));
    }
    if o.auth == Auth::ConnectorCredential {
        params.push(json!({"name": "x-imd-connector-protocol", "in": "header", "required": true, "schema": {"const": "1"}}));
    }
    if o.auth == Auth::ClusterSignature {
        params.push(json!({"name": "x-imd-cluster-time", "in": "header", "required": true, "schema": {"type": "string"}, "description": "Unix seconds, within 60 s of the receiver's clock."}));
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    match o.body {
        Body::None => {}
        Body::Json { schema, required } => {
            let s = schema(&mut g.request).to_value();
            op.insert(
                "requestBody".into(),
                json!({"required": required, "content": {"application/json": {"schema": s}}}),
            );
        }
        Body::Csv => {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"text/csv": {"schema": {"type": "string"}}}}),
            );
        }
    }
    let mut responses = Map::new();
    for s in &o.responses {
        let mut r = Map::new();
        r.insert("description".into(), json!(s.description));
        match s.content {
            Content::None => {}
            Content::Json(f) => {
                let schema = f(&mut g.response).to_value();
                r.insert(
                    "content".into(),
                    json!({"application/json": {"schema": schema}}),
                );
            }
            Content::Other(media) => {
                let schema = match media {
                    "application/zip" => json!({"type": "string", "contentMediaType": media}),
                    // The description itself: a JSON document, described elsewhere.
                    "application/json" => json!({"type": "object"}),
                    _ => json!({"type": "string"}),
                };
                r.insert("content".into(), json!({ media: {"schema": schema} }));
            }
        }
        responses.insert(s.status.to_string(), Value::Object(r));
    }
    // One response per error status, listing its codes (and restricting `code` to them).
    let codes = o.error_codes();
    let mut statuses: Vec<u16> = codes.iter().map(|c| c.status().as_u16()).collect();
    statuses.dedup();
    for status in statuses {
        let here: Vec<&str> = codes
            .iter()
            .filter(|c| c.status().as_u16() == status)
            .map(|c| c.as_str())
            .collect();
        let reason = actix_web::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        responses.insert(
            status.to_string(),
            json!({
                "description": format!("{reason}: {}", here.join(", ")),
                "x-error-codes": here,
                "content": {"application/json": {"schema": {
                    "allOf": [error_ref],
                    "properties": {"error": {"properties": {"code": {"enum": here}}}}
                }}}
            }),
        );
    }
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

/// A query struct's properties as OpenAPI query parameters (flattened structs included).
fn query_params(schema: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut collect = |s: &Value| {
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (name, p) in props {
                // A missing parameter is how a query says "none"; `null` is not sendable.
                let mut p = p.clone();
                if let Some(Value::Array(types)) = p.get_mut("type") {
                    types.retain(|t| t != "null");
                    if types.len() == 1 {
                        p["type"] = types[0].clone();
                    }
                }
                let mut param = json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&name.as_str()),
                    "schema": &p,
                });
                if let Some(d) = p.get("description") {
                    param["description"] = d.clone();
                }
                out.push(param);
            }
        }
    };
    collect(schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        all.iter().for_each(collect);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_ref_resolves_and_names_are_valid() {
        let doc = document();
        if let Ok(p) = std::env::var("IMD_DUMP_OPENAPI") {
            std::fs::write(p, serde_json::to_string_pretty(doc).unwrap()).unwrap();
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in schemas.keys() {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
                "component name {name:?} is not valid in OpenAPI"
            );
        }
        let mut all = Vec::new();
        refs(doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
    }
}
