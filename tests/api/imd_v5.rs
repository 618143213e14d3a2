//! IMD v5 end to end: activations resolved through Microsoft Graph, against the Graph stand-in
//! (tests/graph-standin, the documented wire format) on a random loopback port.

use reqwest::StatusCode;
use serde_json::{Value, json};

use graph_standin::{StandIn, Tenant};

use crate::helpers::{TestApp, error_code, spawn_app, spawn_app_with};

pub async fn configure(app: &TestApp, g: &StandIn, allow_guests: bool) {
    let r = app
        .client
        .put(app.url("/api/v1/admin/azure"))
        .bearer_auth(&app.admin_key)
        .json(&json!({
            "tenant_id": g.tenant_id, "client_id": g.client_id, "client_secret": g.client_secret,
            "authority_url": g.authority_url, "graph_url": g.graph_url, "allow_guests": allow_guests
        }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn mapping(app: &TestApp, body: Value) -> Value {
    let r = app.admin_post("/api/v1/admin/azure-mappings", &body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

/// An app with the fixture tenant configured: Sales by department first, then everyone in All
/// Staff (nested groups).
async fn azure_app_with(extra: &[(&str, &str)], tenant: Tenant) -> (TestApp, StandIn) {
    let app = spawn_app_with(extra).await;
    let all_staff = tenant.group_id("All Staff").unwrap();
    let g = StandIn::start(tenant).await;
    configure(&app, &g, false).await;
    mapping(
        &app,
        json!({"name": "staff", "priority": 10, "source": {"group_id": all_staff},
               "profile": "staff", "storage_region": "eu", "quota_bytes": 7000}),
    )
    .await;
    mapping(
        &app,
        json!({"name": "sales", "priority": 5, "source": {"attribute": "department", "value": "Sales"},
               "profile": "sales", "storage_region": "us"}),
    )
    .await;
    (app, g)
}

async fn azure_app() -> (TestApp, StandIn) {
    azure_app_with(&[], Tenant::fixture()).await
}

async fn v5_token(app: &TestApp) -> String {
    app.token_with(json!({"version": "v5", "name": "v5 rollout"}))
        .await
}

fn v5(token: &str, serial: &str, upn: &str) -> Value {
    json!({"token": token, "device": {"serial": serial, "hostname": format!("LT-{serial}")},
           "user": {"upn": upn}})
}

async fn counts(app: &TestApp) -> (usize, usize) {
    (
        app.list("/api/v1/admin/users").await.len(),
        app.list("/api/v1/admin/devices").await.len(),
    )
}

#[tokio::test]
async fn v5_activation_creates_the_user_under_the_winning_mapping() {
    let (app, _g) = azure_app().await;
    let token = v5_token(&app).await;
    // Adele is in Backend ⊂ Engineering ⊂ All Staff: transitive membership counts.
    let (status, a) = app
        .activate_ok(&v5(&token, "V5-ADELE", "adelev@contoso.test"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(a["profile"], "staff");
    assert_eq!(a["quota_bytes"], 7000);
    let u: Value = app
        .admin_get(&format!(
            "/api/v1/admin/users/{}",
            a["user_id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let u = if u["user"].is_object() {
        u["user"].clone()
    } else {
        u
    };
    assert_eq!(u["source"], "azure");
    assert_eq!(u["external_id"], "ab3427e0-5bcd-498b-a10f-c473aea72967");
    assert_eq!(u["email"], "AdeleV@contoso.test");
    assert_eq!(u["department"], "Engineering");
    assert_eq!(u["display_name"], "Adele Vance");
    // By attribute: Sam is in Sales (and in All Staff; the lower priority number wins).
    let (_, s) = app
        .activate_ok(&v5(&token, "V5-SAM", "sam@contoso.test"))
        .await;
    assert_eq!(s["profile"], "sales");
    // The same device again: the same binding.
    let (status, again) = app
        .activate_ok(&v5(&token, "V5-ADELE", "AdeleV@contoso.test"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["device_id"], a["device_id"]);
}

#[tokio::test]
async fn v5_refusals() {
    let (app, _g) = azure_app().await;
    let token = v5_token(&app).await;
    let cases = [
        (
            "nobody@contoso.test",
            StatusCode::FORBIDDEN,
            "user_not_found",
        ),
        // Disabled users are refused on their very first activation too.
        (
            "dave.disabled@contoso.test",
            StatusCode::FORBIDDEN,
            "user_disabled",
        ),
        (
            "alex_fabrikam.test#EXT#@contoso.onmicrosoft.com",
            StatusCode::FORBIDDEN,
            "user_not_mapped",
        ),
        // In no mapped group and not in Sales.
        (
            "gina.nogroups@contoso.test",
            StatusCode::FORBIDDEN,
            "user_not_mapped",
        ),
    ];
    for (i, (upn, status, code)) in cases.iter().enumerate() {
        let (s, c, body) =
            error_code(app.activate(&v5(&token, &format!("R-{i}"), upn)).await).await;
        assert_eq!((s, c.as_str()), (*status, *code), "{upn}: {body}");
    }
    assert_eq!(counts(&app).await, (0, 0));
    // No UPN at all.
    let r = app
        .activate(&json!({"token": token, "device": {"serial": "R-X"}, "user": {"login": "x"}}))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn guests_activate_only_when_allowed_and_a_user_without_mail_uses_the_upn() {
    let (app, g) = azure_app().await;
    let token = v5_token(&app).await;
    configure(&app, &g, true).await;
    mapping(
        &app,
        json!({"name": "everyone-eng", "priority": 30, "source": {"attribute": "department", "value": "Engineering"},
               "profile": "eng", "storage_region": "eu"}),
    )
    .await;
    // Nora has no mail: her UPN is her email.
    let (_, n) = app
        .activate_ok(&v5(&token, "G-NORA", "nora.nomail@contoso.test"))
        .await;
    let users = app.list("/api/v1/admin/users").await;
    let nora = users.iter().find(|u| u["id"] == n["user_id"]).unwrap();
    assert_eq!(nora["email"], "nora.nomail@contoso.test");
    // The guest, in the Microsoft 365 group Project Falcon, activates now that guests are allowed.
    let falcon = Tenant::fixture().group_id("Project Falcon").unwrap();
    mapping(
        &app,
        json!({"name": "falcon", "priority": 1, "source": {"group_id": falcon},
               "profile": "falcon", "storage_region": "eu"}),
    )
    .await;
    let (_, a) = app
        .activate_ok(&v5(
            &token,
            "G-ALEX",
            "alex_fabrikam.test#EXT#@contoso.onmicrosoft.com",
        ))
        .await;
    assert_eq!(a["profile"], "falcon");
    // Reported by email only (the guest's mail differs from its UPN): found by mail.
    let (_, again) = app
        .activate_ok(&json!({"token": token, "device": {"serial": "G-ALEX-2"},
                              "user": {"email": "alex@fabrikam.test"}}))
        .await;
    assert_eq!(again["user_id"], a["user_id"]);
}

#[tokio::test]
async fn upns_with_hash_apostrophe_plus_and_non_ascii_are_found() {
    let (app, g) = azure_app().await;
    let token = v5_token(&app).await;
    // A mapping everyone here matches: company.
    mapping(
        &app,
        json!({"name": "company", "priority": 40, "source": {"attribute": "companyName", "value": "Contoso Ltd"},
               "profile": "co", "storage_region": "eu"}),
    )
    .await;
    for (i, upn) in [
        "o'neil@contoso.test",
        "zoë@contoso.test",
        "dev#ops@contoso.test",
        "erin+test@contoso.test",
        "$kiosk@contoso.test",
    ]
    .iter()
    .enumerate()
    {
        let r = app.activate(&v5(&token, &format!("U-{i}"), upn)).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        // Found (not user_not_found): either activated or refused by the mappings.
        assert_ne!(
            body["error"]["code"], "user_not_found",
            "{upn}: {status} {body}"
        );
    }
    assert!(g.calls("user") + g.calls("users") >= 5);
}

#[tokio::test]
async fn a_burst_of_activations_costs_one_user_lookup_per_user() {
    let (app, g) = azure_app().await;
    let token = v5_token(&app).await;
    g.reset_calls();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = app.client.clone();
        let url = app.url("/api/v1/activations");
        let body = v5(&token, &format!("BURST-{i}"), "AdeleV@contoso.test");
        tasks.push(tokio::spawn(async move {
            client.post(url).json(&body).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    assert_eq!(
        g.calls("user"),
        1,
        "one user look-up for 20 devices of one user"
    );
    assert_eq!(g.calls("transitiveMemberOf"), 1);
    assert_eq!(g.calls("token"), 1);
    // A second user: one more look-up.
    app.activate_ok(&v5(&token, "BURST-SAM", "sam@contoso.test"))
        .await;
    assert_eq!(g.calls("user"), 2);
    assert_eq!(counts(&app).await, (2, 21));
}

#[tokio::test]
async fn throttling_is_retried_within_the_deadline_and_an_outage_writes_nothing() {
    let (app, g) = azure_app().await;
    let token = v5_token(&app).await;
    // Two 429s with Retry-After: 1, then an answer.
    g.throttle("user", 2, Some("1"));
    let started = std::time::Instant::now();
    let (status, _) = app
        .activate_ok(&v5(&token, "T-1", "AdeleV@contoso.test"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "Retry-After honoured"
    );
    // Graph down: 503 directory_unavailable with Retry-After, nothing written.
    g.fail("user", 503, 1000);
    let r = app.activate(&v5(&token, "T-2", "sam@contoso.test")).await;
    assert!(r.headers().get("retry-after").is_some());
    let (s, c, _) = error_code(r).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "directory_unavailable")
    );
    assert_eq!(counts(&app).await, (1, 1));
}

#[tokio::test]
async fn throttling_past_the_deadline_is_a_503() {
    let (app, g) = azure_app_with(&[("azure.timeout_ms", "1500")], Tenant::fixture()).await;
    let token = v5_token(&app).await;
    g.throttle("user", 10, Some("5"));
    let started = std::time::Instant::now();
    let (s, c, _) = error_code(app.activate(&v5(&token, "TD-1", "sam@contoso.test")).await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "directory_unavailable")
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert_eq!(counts(&app).await, (0, 0));
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_once() {
    let (app, g) = azure_app().await;
    let token = v5_token(&app).await;
    app.activate_ok(&v5(&token, "E-1", "AdeleV@contoso.test"))
        .await;
    assert_eq!(g.calls("token"), 1);
    g.expire_tokens();
    app.activate_ok(&v5(&token, "E-2", "sam@contoso.test"))
        .await;
    assert_eq!(g.calls("token"), 2, "one refresh after the 401");
}

#[tokio::test]
async fn known_users_may_activate_during_an_outage_when_allowed() {
    let (app, g) = azure_app().await;
    let token = v5_token(&app).await;
    app.activate_ok(&v5(&token, "O-1", "sam@contoso.test"))
        .await;
    let r = app
        .client
        .patch(app.url("/api/v1/admin/org"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"directory_outage": "allow_known_users"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The cache would answer: make Graph fail and drop the cache with a config change.
    configure(&app, &g, false).await;
    g.fail("*", 503, 1000);
    let (status, _) = app
        .activate_ok(&v5(&token, "O-2", "sam@contoso.test"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, c, _) = error_code(
        app.activate(&v5(&token, "O-3", "AdeleV@contoso.test"))
            .await,
    )
    .await;
    assert_eq!(c, "directory_unavailable");
}

#[tokio::test]
async fn a_hybrid_user_activated_through_v2_is_the_same_person() {
    let (app, _g) = azure_app().await;
    // Henrik as an earlier v2 activation left him: source ldap, keyed by his AD objectGUID
    // (the one his onPremisesImmutableId carries).
    let url = app.settings.database_url();
    let id = uuid::Uuid::new_v4().to_string();
    let sql = "INSERT INTO users (id, org_id, email, email_norm, user_name, external_id, source, profile, storage_region, status, created_at, updated_at)
               VALUES ($1, $2, 'henrik@contoso.test', 'henrik@contoso.test', 'henrik', '3f2504e0-4f89-11d3-9a0c-0305e82c3301', 'ldap', 'onprem', 'eu', 'active', 1, 1)";
    {
        use sqlx::Connection;
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(sql)
                .bind(&id)
                .bind(&app.org_id)
                .execute(&mut c)
                .await
                .unwrap();
        } else {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(sql)
                .bind(&id)
                .bind(&app.org_id)
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
    let token = v5_token(&app).await;
    // Henrik must fall under a mapping: company.
    mapping(
        &app,
        json!({"name": "hybrid", "priority": 1, "source": {"attribute": "companyName", "value": "Contoso Ltd"},
               "profile": "staff", "storage_region": "eu"}),
    )
    .await;
    let (_, v) = app
        .activate_ok(&v5(&token, "H-1", "henrik@contoso.test"))
        .await;
    assert_eq!(v["user_id"], id.as_str());
    assert_eq!(v["user_created"], false);
    assert_eq!(app.list("/api/v1/admin/users").await.len(), 1);
}

#[tokio::test]
async fn the_client_secret_is_never_returned() {
    let app = spawn_app().await;
    let g = StandIn::start(Tenant::fixture()).await;
    configure(&app, &g, false).await;
    let text = app
        .admin_get("/api/v1/admin/azure")
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains(&g.client_secret), "{text}");
}

/// Captures everything the service logs (debug and up) in this test process.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_client_secret_never_reaches_the_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    // Each test runs in a process of its own (nextest), so this is the only subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber);
    let (app, g) = azure_app().await;
    let token = v5_token(&app).await;
    app.activate_ok(&v5(&token, "LOG-1", "AdeleV@contoso.test"))
        .await;
    let r = app.admin_post("/api/v1/admin/azure/test", &json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    g.set_secret_expired(true);
    g.expire_tokens();
    let _ = app.activate(&v5(&token, "LOG-2", "sam@contoso.test")).await;
    let _ = app.admin_post("/api/v1/admin/azure/test", &json!({})).await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.len() > 100, "the service logged: {text}");
    assert!(!text.contains(&g.client_secret), "secret in the logs");
    // Nor its form-encoded shape.
    let encoded: String = g
        .client_secret
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    assert!(!text.contains(&encoded), "encoded secret in the logs");
}
