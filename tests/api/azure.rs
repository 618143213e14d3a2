//! Entra ID administration: the app registration (the secret sealed at rest and never
//! returned), Azure AD mappings (CRUD, priority order, validation naming the field), and
//! `azure/test` diagnostics against a minimal token/Graph endpoint served by the test itself
//! (the full Graph stand-in's scenarios are in azure_standin.rs).

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app, spawn_app_with};

const CONFIG: &str = "/api/v1/admin/azure";
const MAPPINGS: &str = "/api/v1/admin/azure-mappings";
const TENANT: &str = "4f6c1a2e-0b8e-4a47-9d7b-2f3c5e6a7b8c";
const CLIENT: &str = "535fb089-9ff3-47b6-9bfb-4f1264799865";
const SECRET: &str = "Xy8Q~notReallyASecret.But-Long-Enough_42";
const GROUP: &str = "f448435d-3ad1-4f4a-9d1c-1b2a3c4d5e6f";

/// An admin request with a JSON body.
pub(crate) async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> reqwest::Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(&app.admin_key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn put_config(app: &TestApp, body: &Value) -> reqwest::Response {
    send(app, reqwest::Method::PUT, CONFIG, body).await
}

pub(crate) fn config(authority: &str, graph: &str) -> Value {
    json!({"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
           "authority_url": authority, "graph_url": graph})
}

/// (status, code, field) of a refused request.
async fn refused(r: reqwest::Response) -> (StatusCode, String, Value) {
    let (s, c, body) = error_code(r).await;
    (s, c, body["error"]["field"].clone())
}

#[tokio::test]
async fn the_configuration_is_stored_with_its_secret_sealed_and_never_returned() {
    let app = spawn_app().await;
    let (s, code, _) = error_code(app.admin_get(CONFIG).await).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::CONFLICT, "azure_not_configured")
    );

    let r = put_config(
        &app,
        &json!({"tenant_id": TENANT.to_uppercase(), "client_id": CLIENT, "client_secret": SECRET}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains(SECRET), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["tenant_id"], TENANT);
    assert_eq!(v["client_secret_set"], true);
    assert_eq!(v["authority_url"], "https://login.microsoftonline.com");
    assert_eq!(v["graph_url"], "https://graph.microsoft.com");
    assert_eq!(v["allow_guests"], false);
    assert!(v.get("client_secret").is_none() && v.get("client_secret_enc").is_none());

    let r = app.admin_get(CONFIG).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(SECRET) && !text.contains("client_secret_enc"),
        "{text}"
    );

    // The database holds ciphertext only.
    let row = app.store.azure_config(&app.org_id).await.unwrap().unwrap();
    assert!(!row.client_secret_enc.contains(SECRET));
    assert!(!row.client_secret_enc.contains("notReallyASecret"));
    assert!(!format!("{row:?}").contains(&row.client_secret_enc));

    // Moving to other hosts (or another tenant/app) without the secret is refused: the stored
    // secret must not be sent to a host just typed in.
    let r = put_config(
        &app,
        &json!({"tenant_id": "contoso.onmicrosoft.us", "client_id": CLIENT, "allow_guests": true,
                "authority_url": "https://login.microsoftonline.us/",
                "graph_url": "https://graph.microsoft.us"}),
    )
    .await;
    let (s, _, body) = error_code(r).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "client_secret", "{body}");
    // The same registration without the secret keeps it (here: only allow_guests changes).
    let current: Value = app.admin_get(CONFIG).await.json().await.unwrap();
    let r = put_config(
        &app,
        &json!({"tenant_id": current["tenant_id"], "client_id": CLIENT, "allow_guests": true}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["allow_guests"], true);
    assert_eq!(
        v["authority_url"], current["authority_url"],
        "URLs stay as stored"
    );
    let after = app.store.azure_config(&app.org_id).await.unwrap().unwrap();
    assert_eq!(after.client_secret_enc, row.client_secret_enc);
    assert_eq!(after.created_at, row.created_at);
    // National-cloud URLs, with the secret, are kept (without a trailing /).
    let r = put_config(
        &app,
        &json!({"tenant_id": "contoso.onmicrosoft.us", "client_id": CLIENT, "client_secret": SECRET,
                "authority_url": "https://login.microsoftonline.us/",
                "graph_url": "https://graph.microsoft.us"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["authority_url"], "https://login.microsoftonline.us");
    // Plain http off loopback is refused.
    let r = put_config(
        &app,
        &json!({"tenant_id": "contoso.onmicrosoft.us", "client_id": CLIENT, "client_secret": SECRET,
                "graph_url": "http://graph.example.com"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Another organization sees none of it.
    let (_, other_key) = app.other_org().await;
    let (s, code, _) = error_code(app.get_as(CONFIG, &other_key).await).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::CONFLICT, "azure_not_configured")
    );
}

#[tokio::test]
async fn configuration_fields_are_validated_by_name() {
    let app = spawn_app().await;
    let ok = config(
        "https://login.microsoftonline.com",
        "https://graph.microsoft.com",
    );
    let long = "x".repeat(1025);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("tenant_id", json!("common"), "tenant_id"),
        ("tenant_id", json!("not a tenant"), "tenant_id"),
        ("client_id", json!("my-app"), "client_id"),
        ("client_secret", json!(""), "client_secret"),
        ("client_secret", json!(long), "client_secret"),
        ("client_secret", json!("secret\n"), "client_secret"),
        (
            "authority_url",
            json!("ftp://login.example"),
            "authority_url",
        ),
        (
            "graph_url",
            json!("https://user:pw@graph.example"),
            "graph_url",
        ),
        ("graph_url", json!("not a url"), "graph_url"),
    ];
    for (key, value, field) in cases {
        let mut body = ok.clone();
        body[key] = value.clone();
        let (s, code, f) = refused(put_config(&app, &body).await).await;
        assert_eq!(
            (s, code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{key}={value}"
        );
        assert_eq!(f, field, "{key}={value}");
    }
    // The first PUT needs the secret.
    let mut body = ok.clone();
    body.as_object_mut().unwrap().remove("client_secret");
    let (s, _, f) = refused(put_config(&app, &body).await).await;
    assert_eq!((s, f), (StatusCode::BAD_REQUEST, json!("client_secret")));
    let mut body = ok.clone();
    body["tenant"] = json!("x");
    assert_eq!(
        put_config(&app, &body).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert!(app.store.azure_config(&app.org_id).await.unwrap().is_none());
}

#[tokio::test]
async fn test_and_group_search_need_a_configuration() {
    let app = spawn_app().await;
    let (s, code, _) =
        error_code(app.admin_post("/api/v1/admin/azure/test", &json!({})).await).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::CONFLICT, "azure_not_configured")
    );
    let (s, code, _) = error_code(app.admin_get("/api/v1/admin/azure/groups?q=Sales").await).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::CONFLICT, "azure_not_configured")
    );
}

// ---------------------------------------------------------------------------------------------
// Mappings.

pub(crate) fn group_mapping(name: &str, priority: i64) -> Value {
    json!({"name": name, "priority": priority, "source": {"group_id": GROUP},
           "profile": "Laptops", "storage_region": "eu-central", "quota_bytes": 1000,
           "auto_import": true})
}

async fn created(app: &TestApp, body: &Value) -> Value {
    let r = app.admin_post(MAPPINGS, body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

#[tokio::test]
async fn mappings_are_created_listed_by_priority_patched_and_deleted() {
    let app = spawn_app().await;
    let a = created(&app, &group_mapping("laptop users", 20)).await;
    assert_eq!(a["source"], json!({"group_id": GROUP}));
    assert_eq!(a["auto_import"], true);
    assert_eq!(a["quota_bytes"], 1000);
    assert!(a.get("org_id").is_none());
    let b = created(
        &app,
        &json!({"name": "sales", "priority": 10,
                "source": {"attribute": "Department", "value": " Sales "},
                "profile": "Default", "storage_region": "eu"}),
    )
    .await;
    assert_eq!(
        b["source"],
        json!({"attribute": "department", "value": "Sales"})
    );
    assert_eq!(b["auto_import"], false);
    assert_eq!(b["quota_bytes"], Value::Null);
    let c = created(
        &app,
        &json!({"name": "cost center", "priority": 30,
                "source": {"attribute": "extension_0123456789ABCDEF0123456789abcdef_costCenter", "value": "4711"},
                "profile": "Default", "storage_region": "eu"}),
    )
    .await;
    assert_eq!(
        c["source"]["attribute"],
        "extension_0123456789abcdef0123456789abcdef_costCenter"
    );

    let names: Vec<Value> = app
        .list(MAPPINGS)
        .await
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert_eq!(
        names,
        [json!("sales"), json!("laptop users"), json!("cost center")]
    );

    let id = a["id"].as_str().unwrap();
    let path = format!("{MAPPINGS}/{id}");
    let r = send(
        &app,
        reqwest::Method::PATCH,
        &path,
        &json!({"priority": 5, "source": {"attribute": "companyName", "value": "Contoso"}, "quota_bytes": null}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["priority"], 5);
    assert_eq!(
        p["source"],
        json!({"attribute": "companyName", "value": "Contoso"})
    );
    assert_eq!(p["quota_bytes"], Value::Null);
    assert_eq!(p["profile"], "Laptops");
    let got: Value = app.admin_get(&path).await.json().await.unwrap();
    assert_eq!(got, p);
    let row = app
        .store
        .azure_mapping(&app.org_id, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.source_kind.as_str(), row.group_id),
        ("attribute", None)
    );
    assert_eq!(app.list(MAPPINGS).await[0]["name"], "laptop users");

    // Another organization neither sees nor touches it.
    let (_, other_key) = app.other_org().await;
    assert_eq!(
        app.get_as(&path, &other_key).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete_as(&path, &other_key).await.status(),
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        app.delete_as(&path, &app.admin_key).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete_as(&path, &app.admin_key).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.admin_get(&path).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.list(MAPPINGS).await.len(), 2);
}

#[tokio::test]
async fn equal_priorities_and_names_are_refused_naming_the_other_mapping() {
    let app = spawn_app().await;
    let a = created(&app, &group_mapping("a", 10)).await;
    let b = created(&app, &group_mapping("b", 20)).await;
    let r = app.admin_post(MAPPINGS, &group_mapping("c", 10)).await;
    let (s, code, body) = error_code(r).await;
    assert_eq!((s, code.as_str()), (StatusCode::CONFLICT, "conflict"));
    assert_eq!(body["error"]["field"], "priority");
    assert_eq!(body["error"]["conflicting_mapping_id"], a["id"]);
    let (s, _, body) = error_code(app.admin_post(MAPPINGS, &group_mapping("a", 30)).await).await;
    assert_eq!(
        (s, body["error"]["field"].clone()),
        (StatusCode::CONFLICT, json!("name"))
    );
    // A patch onto another mapping's priority too; onto its own is fine.
    let path = format!("{MAPPINGS}/{}", b["id"].as_str().unwrap());
    let r = send(
        &app,
        reqwest::Method::PATCH,
        &path,
        &json!({"priority": 10}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = send(
        &app,
        reqwest::Method::PATCH,
        &path,
        &json!({"priority": 20, "name": "b"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.list(MAPPINGS).await.len(), 2);
}

#[tokio::test]
async fn invalid_mappings_are_422_naming_the_field() {
    let app = spawn_app().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": " "}), "name"),
        (json!({"priority": -1}), "priority"),
        (json!({"priority": 1_000_001}), "priority"),
        (json!({"profile": ""}), "profile"),
        (json!({"storage_region": "x".repeat(101)}), "storage_region"),
        (json!({"quota_bytes": -5}), "quota_bytes"),
        (json!({"source": {"group_id": "Sales"}}), "source.group_id"),
        (
            json!({"source": {"attribute": "mail", "value": "x"}}),
            "source.attribute",
        ),
        (
            json!({"source": {"attribute": "extension_12_x", "value": "x"}}),
            "source.attribute",
        ),
        (
            json!({"source": {"attribute": "department"}}),
            "source.value",
        ),
        (
            json!({"source": {"attribute": "department", "value": "  "}}),
            "source.value",
        ),
        (json!({"source": {"value": "Sales"}}), "source.attribute"),
        (json!({"source": {}}), "source"),
        (
            json!({"source": {"group_id": GROUP, "attribute": "department", "value": "x"}}),
            "source",
        ),
    ];
    for (patch, field) in cases {
        let mut body = group_mapping("m", 1);
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, code, f) = refused(app.admin_post(MAPPINGS, &body).await).await;
        assert_eq!(
            (s, code.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "mapping_invalid"),
            "{patch}"
        );
        assert_eq!(f, field, "{patch}");
    }
    // Unknown fields (also inside source) are 400.
    let mut body = group_mapping("m", 1);
    body["source"]["groupId"] = json!(GROUP);
    assert_eq!(
        app.admin_post(MAPPINGS, &body).await.status(),
        StatusCode::BAD_REQUEST
    );
    let a = created(&app, &group_mapping("m", 1)).await;
    let path = format!("{MAPPINGS}/{}", a["id"].as_str().unwrap());
    let r = send(
        &app,
        reqwest::Method::PATCH,
        &path,
        &json!({"source": {"group_id": "x"}}),
    )
    .await;
    let (s, _, f) = refused(r).await;
    assert_eq!(
        (s, f),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("source.group_id"))
    );
    assert!(app.list(MAPPINGS).await.len() == 1);
}

// ---------------------------------------------------------------------------------------------
// `azure/test` against a minimal identity platform + Graph served here.

/// The identity platform's refusal this fake token endpoint answers with, or a token.
#[derive(Clone, Copy, PartialEq)]
enum TokenMode {
    Ok,
    BadSecret,
    ExpiredSecret,
}

pub(crate) struct Fake {
    mode: std::sync::Mutex<TokenMode>,
    deny_groups: std::sync::atomic::AtomicBool,
    token_calls: AtomicU64,
}

async fn fake_handler(
    req: actix_web::HttpRequest,
    body: actix_web::web::Bytes,
    fake: actix_web::web::Data<Fake>,
) -> actix_web::HttpResponse {
    use actix_web::HttpResponse;
    let path = req.path().to_string();
    if path.ends_with("/oauth2/v2.0/token") {
        fake.token_calls.fetch_add(1, Ordering::SeqCst);
        let form = String::from_utf8_lossy(&body).to_string();
        assert!(form.contains("grant_type=client_credentials"), "{form}");
        if !path.starts_with(&format!("/{TENANT}/")) {
            return HttpResponse::BadRequest()
                .json(json!({"error": "invalid_tenant", "error_codes": [90002],
                "error_description": "AADSTS90002: Tenant 'x' not found.\r\nTrace ID: t"}));
        }
        return match *fake.mode.lock().unwrap() {
            TokenMode::Ok => HttpResponse::Ok().json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "tok"})),
            TokenMode::BadSecret => HttpResponse::Unauthorized().json(json!({"error": "invalid_client", "error_codes": [7000215],
                "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: t"})),
            TokenMode::ExpiredSecret => HttpResponse::Unauthorized().json(json!({"error": "invalid_client", "error_codes": [7000222],
                "error_description": "AADSTS7000222: The provided client secret keys for app 'x' are expired.\r\nTrace ID: t"})),
        };
    }
    assert_eq!(req.headers().get("authorization").unwrap(), "Bearer tok");
    assert!(req.headers().get("client-request-id").is_some());
    let denied = || {
        HttpResponse::Forbidden().json(json!({"error": {"code": "Authorization_RequestDenied",
            "message": "Insufficient privileges to complete the operation.", "innerError": {"date": "2025-01-10T08:10:04"}}}))
    };
    match path.as_str() {
        "/v1.0/users" => HttpResponse::Ok().json(json!({"value": [
            {"id": "87d349ed-44d7-43e1-9a83-5f2406dee5bd", "userPrincipalName": "AdeleV@contoso.com", "displayName": "Adele Vance"}]})),
        "/v1.0/groups" if fake.deny_groups.load(Ordering::SeqCst) => denied(),
        "/v1.0/groups" => {
            let query = req.query_string();
            if query.contains("$filter") {
                assert_eq!(req.headers().get("ConsistencyLevel").unwrap(), "eventual");
                assert!(query.contains("$count=true"), "{query}");
            }
            HttpResponse::Ok().json(json!({"value": [
                {"id": GROUP, "displayName": "Laptop Users", "groupTypes": [], "mailEnabled": false, "securityEnabled": true}]}))
        }
        _ => HttpResponse::NotFound().finish(),
    }
}

pub(crate) async fn start_fake() -> (actix_web::web::Data<Fake>, String) {
    let fake = actix_web::web::Data::new(Fake {
        mode: std::sync::Mutex::new(TokenMode::Ok),
        deny_groups: Default::default(),
        token_calls: AtomicU64::new(0),
    });
    let data = fake.clone();
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .default_service(actix_web::web::to(fake_handler))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    tokio::spawn(server.run());
    (fake, url)
}

async fn run_test(app: &TestApp) -> Value {
    let r = app.admin_post("/api/v1/admin/azure/test", &json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains(SECRET), "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn azure_test_reports_success_and_each_problem_with_its_code() {
    // One retry: the unreachable case at the end backs off once instead of four times.
    let app = spawn_app_with(&[("azure.max_retries", "1")]).await;
    let (fake, url) = start_fake().await;
    assert_eq!(
        put_config(&app, &config(&url, &url)).await.status(),
        StatusCode::OK
    );

    let v = run_test(&app).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["token"], "ok");
    assert_eq!(
        v["user_sample"]["user_principal_name"],
        "AdeleV@contoso.com"
    );
    assert_eq!(v["group_sample"]["id"], GROUP);
    assert_eq!(v["group_sample"]["kind"], "security");
    // Each test asks for a token of its own (a cached one would hide a permission change).
    run_test(&app).await;
    assert_eq!(fake.token_calls.load(Ordering::SeqCst), 2);

    let r = app.admin_get("/api/v1/admin/azure/groups?q=Laptop").await;
    assert_eq!(r.status(), StatusCode::OK);
    let g: Value = r.json().await.unwrap();
    assert_eq!(g["items"][0]["display_name"], "Laptop Users");
    let (s, _, _) = error_code(app.admin_get("/api/v1/admin/azure/groups?top=1000").await).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    fake.deny_groups.store(true, Ordering::SeqCst);
    let v = run_test(&app).await;
    assert_eq!(
        (v["ok"].clone(), v["problem"].clone()),
        (json!(false), json!("consent_missing")),
        "{v}"
    );
    assert_eq!(v["permission"], "GroupMember.Read.All");
    assert_eq!(v["code"], "Authorization_RequestDenied");
    assert_eq!(v["token"], "ok");
    let (s, code, _) = error_code(app.admin_get("/api/v1/admin/azure/groups?q=L").await).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::BAD_GATEWAY, "directory_error")
    );
    fake.deny_groups.store(false, Ordering::SeqCst);

    // A new configuration builds a new client, which needs a new token.
    for (mode, code, problem) in [
        (TokenMode::BadSecret, "AADSTS7000215", "bad_secret"),
        (TokenMode::ExpiredSecret, "AADSTS7000222", "expired_secret"),
    ] {
        *fake.mode.lock().unwrap() = mode;
        assert_eq!(
            put_config(&app, &config(&url, &url)).await.status(),
            StatusCode::OK
        );
        let v = run_test(&app).await;
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["problem"], problem, "{v}");
        assert_eq!(v["token"], "failed");
        assert!(v["message"].as_str().unwrap().len() > 20, "{v}");
    }
    let mut body = config(&url, &url);
    body["tenant_id"] = json!("unknown.onmicrosoft.com");
    assert_eq!(put_config(&app, &body).await.status(), StatusCode::OK);
    let v = run_test(&app).await;
    assert_eq!(
        (v["code"].clone(), v["problem"].clone()),
        (json!("AADSTS90002"), json!("unknown_tenant")),
        "{v}"
    );

    // Graph unreachable: a diagnostic, retryable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    assert_eq!(
        put_config(&app, &config(&dead, &dead)).await.status(),
        StatusCode::OK
    );
    let v = run_test(&app).await;
    assert_eq!(
        (v["problem"].clone(), v["retryable"].clone()),
        (json!("unavailable"), json!(true)),
        "{v}"
    );
}
