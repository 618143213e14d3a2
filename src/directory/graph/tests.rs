//! The Graph client against a small in-test server that answers in the note's wire formats
//! (token endpoint, users, transitive memberships, groups) and counts what it was sent.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::json;

use super::*;

const TENANT: &str = "4f6c1a2e-0b8e-4a47-9d7b-2f3c5e6a7b8c";
const CLIENT: &str = "535fb089-9ff3-47b6-9bfb-4f1264799865";
const SECRET: &str = "s3cr3t~Value.with+and&=";
const ADELE: &str = "87d349ed-44d7-43e1-9a83-5f2406dee5bd";

/// What the fake was sent on a Graph route.
#[derive(Debug, Clone)]
struct Seen {
    path_and_query: String,
    client_request_id: Option<String>,
    consistency: Option<String>,
}

#[derive(Default)]
struct Fake {
    token_calls: AtomicU64,
    issued: AtomicU64,
    /// Tokens numbered below this are expired.
    valid_from: AtomicU64,
    lifetime_secs: AtomicU64,
    token_delay_ms: AtomicU64,
    expired_secret: AtomicBool,
    deny_users: AtomicBool,
    /// Answers to give Graph routes before the real one: (status, Retry-After).
    faults: Mutex<VecDeque<(u16, Option<String>)>>,
    forms: Mutex<Vec<String>>,
    seen: Mutex<Vec<Seen>>,
    /// Where nextLinks point (this server, or elsewhere).
    next_host: Mutex<String>,
}

fn graph_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(json!({
        "error": {"code": code, "message": message,
                  "innerError": {"date": "2025-01-10T08:10:04", "request-id": "r", "client-request-id": "c"}}
    }))
}

fn token_error(status: u16, error: &str, code: u64, desc: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {desc}\r\nTrace ID: t\r\nCorrelation ID: c\r\nTimestamp: 2025-01-10 08:10:04Z"),
        "error_codes": [code], "timestamp": "2025-01-10 08:10:04Z", "trace_id": "t", "correlation_id": "c"
    }))
}

fn user_json(id: &str, upn: &str) -> Value {
    json!({"id": id, "userPrincipalName": upn, "mail": null, "displayName": "Adele Vance",
           "department": "Sales", "country": "US", "companyName": null, "jobTitle": "Rep",
           "officeLocation": null, "employeeType": null, "accountEnabled": true,
           "userType": "Member", "onPremisesImmutableId": "Zm9v",
           "extension_0123456789abcdef0123456789abcdef_costCenter": 4711})
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("k={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn handle(req: HttpRequest, body: web::Bytes, fake: web::Data<Fake>) -> HttpResponse {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path.ends_with("/oauth2/v2.0/token") {
        fake.token_calls.fetch_add(1, Ordering::SeqCst);
        let delay = fake.token_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let form = String::from_utf8(body.to_vec()).unwrap();
        fake.forms.lock().unwrap().push(form.clone());
        let f: HashMap<String, String> = url::form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        if path != format!("/{TENANT}/oauth2/v2.0/token") {
            return token_error(400, "invalid_tenant", 90002, "Tenant 'x' not found.");
        }
        if f.get("client_secret").map(String::as_str) != Some(SECRET) {
            return token_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided.",
            );
        }
        if fake.expired_secret.load(Ordering::SeqCst) {
            return token_error(
                401,
                "invalid_client",
                7000222,
                "The provided client secret keys are expired.",
            );
        }
        assert_eq!(f["grant_type"], "client_credentials");
        assert_eq!(f["client_id"], CLIENT);
        assert!(f["scope"].ends_with("/.default"), "{}", f["scope"]);
        let n = fake.issued.fetch_add(1, Ordering::SeqCst);
        return HttpResponse::Ok().json(json!({
            "token_type": "Bearer", "expires_in": fake.lifetime_secs.load(Ordering::SeqCst),
            "ext_expires_in": 3599, "access_token": format!("tok-{n}")
        }));
    }
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    fake.seen.lock().unwrap().push(Seen {
        path_and_query: if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        },
        client_request_id: header("client-request-id"),
        consistency: header("ConsistencyLevel"),
    });
    let valid = header("authorization")
        .and_then(|a| {
            a.strip_prefix("Bearer tok-")
                .and_then(|n| n.parse::<u64>().ok())
        })
        .is_some_and(|n| n >= fake.valid_from.load(Ordering::SeqCst));
    if !valid {
        return graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        );
    }
    if let Some((status, retry_after)) = fake.faults.lock().unwrap().pop_front() {
        let mut r = graph_error(status, "TooManyRequests", "Please retry again later.");
        if let Some(ra) = retry_after {
            r.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from_str(&ra).unwrap(),
            );
        }
        return r;
    }
    let host = fake.next_host.lock().unwrap().clone();
    let rest = path.strip_prefix("/v1.0/users/").or_else(|| {
        path.strip_prefix("/v1.0/users")
            .filter(|r| r.starts_with("('"))
    });
    if let Some(rest) = rest {
        if let Some(id) = rest.strip_suffix("/transitiveMemberOf/microsoft.graph.group") {
            return if query.contains("p2") {
                HttpResponse::Ok()
                    .json(json!({"value": [{"@odata.type": "#microsoft.graph.group", "id": "g3"}]}))
            } else {
                HttpResponse::Ok().json(json!({
                    "@odata.nextLink": format!("{host}/v1.0/users/{id}/transitiveMemberOf/microsoft.graph.group?$top=999&$skiptoken=X%274453707%27p2"),
                    "value": [{"@odata.type": "#microsoft.graph.group", "id": "g1"},
                              {"@odata.type": "#microsoft.graph.group", "id": "g2"}]}))
            };
        }
        if fake.deny_users.load(Ordering::SeqCst) {
            return graph_error(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            );
        }
        let key = if let Some(inner) = rest.strip_prefix("('").and_then(|r| r.strip_suffix("')")) {
            decode(inner).replace("''", "'")
        } else {
            decode(rest)
        };
        let known = [
            "adele_fabrikam.com#ext#@contoso.com",
            "jürgen+x@contoso.com",
            "$adele@contoso.com",
        ];
        return if key == ADELE || known.contains(&key.to_lowercase().as_str()) {
            HttpResponse::Ok().json(user_json(ADELE, &key))
        } else {
            graph_error(
                404,
                "Request_ResourceNotFound",
                &format!("Resource '{key}' does not exist"),
            )
        };
    }
    if path == "/v1.0/users" {
        if fake.deny_users.load(Ordering::SeqCst) {
            return graph_error(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            );
        }
        let filter = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("$filter="))
            .map(decode)
            .unwrap_or_default();
        let value = match filter.strip_prefix("userPrincipalName eq '") {
            Some(lit) => {
                let upn = lit.strip_suffix('\'').unwrap().replace("''", "'");
                if upn == "o'neil@contoso.com" {
                    vec![user_json(ADELE, &upn)]
                } else {
                    vec![]
                }
            }
            None => vec![user_json(ADELE, "adele@contoso.com")],
        };
        return HttpResponse::Ok().json(json!({"value": value}));
    }
    if path == "/v1.0/groups" {
        return HttpResponse::Ok().json(json!({"@odata.count": 4, "value": [
            {"id": "g1", "displayName": "Sales EU", "groupTypes": ["Unified"], "mailEnabled": true, "securityEnabled": false},
            {"id": "g2", "displayName": "Sales Laptops", "groupTypes": [], "mailEnabled": false, "securityEnabled": true},
            {"id": "g3", "displayName": "sales-dl", "groupTypes": [], "mailEnabled": true, "securityEnabled": false},
            {"id": "g4", "displayName": "Sales Admins", "groupTypes": [], "mailEnabled": true, "securityEnabled": true}]}));
    }
    graph_error(400, "Request_BadRequest", "unknown route")
}

struct Harness {
    fake: web::Data<Fake>,
    url: String,
}

async fn start() -> Harness {
    let fake = web::Data::new(Fake::default());
    fake.lifetime_secs.store(3599, Ordering::SeqCst);
    let data = fake.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(handle))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    *fake.next_host.lock().unwrap() = url.clone();
    tokio::spawn(server.run());
    Harness { fake, url }
}

impl Harness {
    fn client(&self) -> GraphClient {
        self.client_with(TENANT, SECRET)
    }

    fn client_with(&self, tenant: &str, secret: &str) -> GraphClient {
        GraphClient::new(
            GraphSettings {
                tenant_id: tenant.into(),
                client_id: CLIENT.into(),
                client_secret: secret.into(),
                authority_url: self.url.clone(),
                graph_url: format!("{}/", self.url),
            },
            reqwest::Client::new(),
        )
        .with_backoff(Duration::from_millis(10), Duration::from_millis(40))
    }

    fn seen(&self) -> Vec<Seen> {
        self.fake.seen.lock().unwrap().clone()
    }

    fn fault(&self, status: u16, retry_after: Option<&str>) {
        self.fake
            .faults
            .lock()
            .unwrap()
            .push_back((status, retry_after.map(str::to_string)));
    }
}

fn soon(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

#[test]
fn keys_are_percent_encoded_and_odata_literals_escaped() {
    assert_eq!(
        user_path("adele_fabrikam.com#EXT#@contoso.com"),
        "/users/adele_fabrikam.com%23EXT%23@contoso.com"
    );
    assert_eq!(
        user_path("o'neil+x@contoso.com"),
        "/users/o%27neil%2Bx@contoso.com"
    );
    assert_eq!(user_path("jürgen@x.de"), "/users/j%C3%BCrgen@x.de");
    assert_eq!(user_path("a/b?c%d e"), "/users/a%2Fb%3Fc%25d%20e");
    assert_eq!(user_path(ADELE), format!("/users/{ADELE}"));
    assert_eq!(
        user_path("$AdeleVance@contoso.com"),
        "/users('$AdeleVance@contoso.com')"
    );
    assert_eq!(user_path("$o'neil#1@x"), "/users('$o''neil%231@x')");
    assert_eq!(odata_string("R'n'D"), "'R''n''D'");
    assert_eq!(
        encode_query(&format!("department eq {}", odata_string("R'n D+"))),
        "department%20eq%20%27R%27%27n%20D%2B%27"
    );
    assert_eq!(
        encode_query("startsWith(displayName,'Sal')"),
        "startsWith(displayName,%27Sal%27)"
    );
    assert!(is_guid(ADELE) && !is_guid("not-a-guid") && !is_guid(&ADELE.replace('-', "")));
    assert!(is_extension_name(
        "extension_0123456789abcdef0123456789abcdef_costCenter"
    ));
    for bad in [
        "extension_0123_costCenter",
        "extension_0123456789abcdef0123456789abcdef_",
        "department",
        "extension_0123456789abcdef0123456789abcdef_a,b",
    ] {
        assert!(!is_extension_name(bad), "{bad}");
    }
}

#[test]
fn retry_after_is_read_as_seconds_decimal_or_date_and_backoff_is_capped() {
    let now = time::OffsetDateTime::parse(
        "2025-01-10T08:10:04Z",
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(parse_retry_after("10", now), Some(Duration::from_secs(10)));
    assert_eq!(
        parse_retry_after(" 2.128 ", now),
        Some(Duration::from_millis(2128))
    );
    assert_eq!(
        parse_retry_after("0.0001", now),
        Some(Duration::from_millis(1))
    );
    assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("-1", now), None);
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("1e9", now), None);
    assert_eq!(
        parse_retry_after("Fri, 10 Jan 2025 08:10:34 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after("Fri, 10 Jan 2025 08:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    let b = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(8),
    };
    assert_eq!(backoff(b, 0, 1.0), Duration::from_millis(500));
    assert_eq!(backoff(b, 2, 1.0), Duration::from_secs(2));
    assert_eq!(backoff(b, 2, 0.0), Duration::from_secs(1));
    assert_eq!(backoff(b, 30, 1.0), Duration::from_secs(8));
    let j = jitter();
    assert!((0.0..=1.0).contains(&j));
}

#[test]
fn group_kinds_come_from_group_types_mail_and_security() {
    let kind = |v: Value| parse_group(&v).unwrap().kind;
    assert_eq!(
        kind(
            json!({"id": "a", "groupTypes": ["Unified"], "mailEnabled": true, "securityEnabled": false})
        ),
        "microsoft365"
    );
    assert_eq!(
        kind(json!({"id": "a", "groupTypes": [], "mailEnabled": false, "securityEnabled": true})),
        "security"
    );
    assert_eq!(
        kind(json!({"id": "a", "groupTypes": [], "mailEnabled": true, "securityEnabled": false})),
        "distribution"
    );
    assert_eq!(
        kind(json!({"id": "a", "groupTypes": [], "mailEnabled": true, "securityEnabled": true})),
        "mail_enabled_security"
    );
    assert!(parse_group(&json!({"displayName": "no id"})).is_none());
}

#[test]
fn secrets_and_tokens_never_show_in_debug_output() {
    let s = GraphSettings::new(TENANT, CLIENT, SECRET);
    assert_eq!(s.authority_url, DEFAULT_AUTHORITY_URL);
    assert!(!format!("{s:?}").contains("s3cr3t"));
    let c = GraphClient::new(s, reqwest::Client::new());
    assert!(!format!("{c:?}").contains("s3cr3t"));
    assert_eq!(
        format!("{:?}", AccessToken("eyJ-secret".into())),
        "AccessToken(..)"
    );
}

#[tokio::test]
async fn the_token_is_fetched_once_form_encoded_once_and_cached() {
    let h = start().await;
    let c = h.client();
    let u = c.user(ADELE, &[], soon(5)).await.unwrap().unwrap();
    assert_eq!(u.id, ADELE);
    assert_eq!(u.department.as_deref(), Some("Sales"));
    assert!(u.account_enabled && !u.is_guest());
    assert_eq!(u.mail, None);
    c.user(ADELE, &[], soon(5)).await.unwrap().unwrap();
    assert_eq!(h.fake.token_calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.stats().token_fetches, 1);
    assert_eq!(c.stats().requests, 2);
    let form = h.fake.forms.lock().unwrap()[0].clone();
    // The scope is encoded exactly once (a double-encoded scope is AADSTS1002012).
    let scope = format!(
        "scope={}%2F.default",
        url::form_urlencoded::byte_serialize(h.url.as_bytes()).collect::<String>()
    );
    assert!(form.contains(&scope), "{form}");
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    let seen = h.seen();
    let q = &seen[0].path_and_query;
    assert!(
        q.starts_with(&format!(
            "/v1.0/users/{ADELE}?$select=id,userPrincipalName,"
        )),
        "{q}"
    );
    assert!(
        q.contains("accountEnabled") && q.contains("onPremisesImmutableId"),
        "{q}"
    );
    assert_eq!(seen[0].consistency, None);
    let ids: Vec<_> = seen
        .iter()
        .map(|s| s.client_request_id.clone().unwrap())
        .collect();
    assert!(ids.iter().all(|i| is_guid(i)));
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn concurrent_callers_share_one_token_fetch_and_one_refresh_after_401() {
    let h = start().await;
    h.fake.token_delay_ms.store(200, Ordering::SeqCst);
    let c = Arc::new(h.client());
    let calls = (0..16).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.user(ADELE, &[], soon(5)).await })
    });
    for r in futures_util::future::join_all(calls).await {
        assert!(r.unwrap().unwrap().is_some());
    }
    assert_eq!(h.fake.token_calls.load(Ordering::SeqCst), 1);
    // Graph now refuses every token issued so far: one refresh serves every caller.
    h.fake
        .valid_from
        .store(h.fake.issued.load(Ordering::SeqCst), Ordering::SeqCst);
    let calls = (0..16).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.user(ADELE, &[], soon(5)).await })
    });
    for r in futures_util::future::join_all(calls).await {
        assert!(r.unwrap().unwrap().is_some());
    }
    assert_eq!(h.fake.token_calls.load(Ordering::SeqCst), 2);
    assert_eq!(c.stats().token_fetches, 2);
}

#[tokio::test]
async fn a_refused_fresh_token_is_an_auth_error_after_exactly_one_refresh() {
    let h = start().await;
    h.fake.valid_from.store(u64::MAX, Ordering::SeqCst);
    let c = h.client();
    let e = c.user(ADELE, &[], soon(5)).await.unwrap_err();
    assert!(
        matches!(&e, GraphError::Auth { code, .. } if code == "InvalidAuthenticationToken"),
        "{e:?}"
    );
    assert_eq!(h.fake.token_calls.load(Ordering::SeqCst), 2);
    assert_eq!(c.stats().requests, 2);
}

#[tokio::test]
async fn a_token_is_refreshed_shortly_before_it_expires() {
    let h = start().await;
    h.fake.lifetime_secs.store(1, Ordering::SeqCst);
    let c = h.client();
    c.user(ADELE, &[], soon(5)).await.unwrap();
    c.user(ADELE, &[], soon(5)).await.unwrap();
    assert_eq!(h.fake.token_calls.load(Ordering::SeqCst), 1);
    // 10 % early: refreshed after 0.9 s, before Graph would refuse it.
    tokio::time::sleep(Duration::from_millis(950)).await;
    c.user(ADELE, &[], soon(5)).await.unwrap();
    assert_eq!(h.fake.token_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn throttling_honours_retry_after_and_backs_off_without_it() {
    let h = start().await;
    let c = h.client();
    h.fault(429, Some("0.3"));
    h.fault(503, None);
    h.fault(504, None);
    let t = std::time::Instant::now();
    assert!(c.user(ADELE, &[], soon(5)).await.unwrap().is_some());
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let s = c.stats();
    assert_eq!((s.requests, s.retries, s.throttled), (4, 3, 3));
    // Every retry is a new request with a new client-request-id.
    let ids: std::collections::HashSet<_> =
        h.seen().into_iter().map(|s| s.client_request_id).collect();
    assert_eq!(ids.len(), 4);
}

#[tokio::test]
async fn a_wait_past_the_deadline_or_past_the_last_retry_is_unavailable() {
    let h = start().await;
    let c = h.client();
    h.fault(429, Some("30"));
    let t = std::time::Instant::now();
    let e = c.user(ADELE, &[], soon(2)).await.unwrap_err();
    assert!(
        matches!(e, GraphError::Unavailable(ref m) if m.contains("deadline")),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(e.is_retryable());
    let c = h.client().with_max_retries(2);
    for _ in 0..5 {
        h.fault(503, None);
    }
    let e = c.user(ADELE, &[], soon(5)).await.unwrap_err();
    assert!(
        matches!(e, GraphError::Unavailable(ref m) if m.contains("after 2 retries")),
        "{e:?}"
    );
    assert_eq!(c.stats().requests, 3);
    // A token endpoint that accepts the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let t = std::time::Instant::now();
    let e = GraphClient::new(
        GraphSettings {
            authority_url: format!("http://{}", silent.local_addr().unwrap()),
            ..GraphSettings::new(TENANT, CLIENT, SECRET)
        },
        reqwest::Client::new(),
    )
    .user(ADELE, &[], Instant::now() + Duration::from_millis(300))
    .await
    .unwrap_err();
    assert!(
        matches!(e, GraphError::Unavailable(ref m) if m.contains("deadline")),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn upns_with_hash_plus_dollar_non_ascii_and_apostrophes_reach_the_user() {
    let h = start().await;
    let c = h.client();
    for upn in [
        "adele_fabrikam.com#EXT#@contoso.com",
        "jürgen+x@contoso.com",
        "$adele@contoso.com",
        "o'neil@contoso.com",
    ] {
        let u = c.user(upn, &[], soon(5)).await.unwrap();
        assert_eq!(
            u.map(|u| u.user_principal_name).as_deref(),
            Some(upn),
            "{upn}"
        );
    }
    let paths: Vec<_> = h.seen().into_iter().map(|s| s.path_and_query).collect();
    assert!(
        paths[0].starts_with("/v1.0/users/adele_fabrikam.com%23EXT%23@contoso.com?"),
        "{}",
        paths[0]
    );
    assert!(
        paths[1].starts_with("/v1.0/users/j%C3%BCrgen%2Bx@contoso.com?"),
        "{}",
        paths[1]
    );
    assert!(
        paths[2].starts_with("/v1.0/users('$adele@contoso.com')?"),
        "{}",
        paths[2]
    );
    assert!(
        paths[3].starts_with(
            "/v1.0/users?$filter=userPrincipalName%20eq%20%27o%27%27neil@contoso.com%27&$select=id,"
        ),
        "{}",
        paths[3]
    );
    assert_eq!(
        c.user("nobody@contoso.com", &[], soon(5)).await.unwrap(),
        None
    );
    assert_eq!(
        c.user("nob'ody@contoso.com", &[], soon(5)).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn extension_attributes_are_selected_and_returned_as_text() {
    let h = start().await;
    let c = h.client();
    let ext = "extension_0123456789abcdef0123456789abcdef_costCenter".to_string();
    let u = c
        .user(ADELE, std::slice::from_ref(&ext), soon(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(u.attribute(&ext), Some("4711"));
    assert_eq!(u.attribute("jobTitle"), Some("Rep"));
    assert!(
        h.seen()[0]
            .path_and_query
            .ends_with(&format!(",onPremisesImmutableId,{ext}"))
    );
    let e = c
        .user(ADELE, &["extension_x".into()], soon(5))
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::BadRequest(_)), "{e:?}");
}

#[tokio::test]
async fn memberships_follow_every_next_link_exactly_as_given() {
    let h = start().await;
    let c = h.client();
    let ids = c.transitive_group_ids(ADELE, soon(5)).await.unwrap();
    assert_eq!(ids, ["g1", "g2", "g3"]);
    let seen = h.seen();
    assert_eq!(
        seen[0].path_and_query,
        format!("/v1.0/users/{ADELE}/transitiveMemberOf/microsoft.graph.group?$select=id&$top=999")
    );
    assert_eq!(
        seen[1].path_and_query,
        format!(
            "/v1.0/users/{ADELE}/transitiveMemberOf/microsoft.graph.group?$top=999&$skiptoken=X%274453707%27p2"
        )
    );
    assert!(
        seen.iter()
            .all(|s| s.consistency.is_none() && s.client_request_id.is_some())
    );
    // A nextLink to another host is not followed (the token would go with it).
    *h.fake.next_host.lock().unwrap() = "http://evil.example".into();
    let e = c.transitive_group_ids(ADELE, soon(5)).await.unwrap_err();
    assert!(
        matches!(e, GraphError::BadRequest(ref m) if m.contains("nextLink")),
        "{e:?}"
    );
}

#[tokio::test]
async fn group_search_is_an_advanced_query_with_its_header() {
    let h = start().await;
    let c = h.client();
    let groups = c.search_groups("Sales O'Neil", 3, soon(5)).await.unwrap();
    assert_eq!(groups.len(), 3);
    assert_eq!(groups[0].display_name.as_deref(), Some("Sales EU"));
    assert_eq!(groups[0].kind, "microsoft365");
    let s = &h.seen()[0];
    assert_eq!(s.consistency.as_deref(), Some("eventual"));
    assert!(
        s.path_and_query.contains("$count=true"),
        "{}",
        s.path_and_query
    );
    assert!(s.path_and_query.contains("$top=3"), "{}", s.path_and_query);
    assert!(
        s.path_and_query
            .contains("$filter=startsWith(displayName,%27Sales%20O%27%27Neil%27)"),
        "{}",
        s.path_and_query
    );
    c.search_groups(ADELE, 5000, soon(5)).await.unwrap();
    let q = h.seen()[1].path_and_query.clone();
    assert!(
        q.contains(&format!("$filter=id%20eq%20%27{ADELE}%27")) && q.contains("$top=999"),
        "{q}"
    );
}

#[tokio::test]
async fn test_names_the_problem_in_the_identity_platforms_terms() {
    let h = start().await;
    let report = h.client().test(soon(5)).await.unwrap();
    assert_eq!(report.user_sample.unwrap().id, ADELE);
    assert_eq!(report.group_sample.unwrap().id, "g1");

    let e = h
        .client_with("contoso.example", SECRET)
        .test(soon(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, GraphError::Auth { code, message } if code == "AADSTS90002" && message.contains("tenant")),
        "{e:?}"
    );
    let e = h
        .client_with(TENANT, "Bad-Secret-Value-123")
        .test(soon(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, GraphError::Auth { code, message } if code == "AADSTS7000215" && message.contains("Secret ID")),
        "{e:?}"
    );
    assert!(!format!("{e} {e:?}").contains("Bad-Secret-Value"));
    h.fake.expired_secret.store(true, Ordering::SeqCst);
    let e = h.client().test(soon(5)).await.unwrap_err();
    assert!(
        matches!(&e, GraphError::Auth { code, message } if code == "AADSTS7000222" && message.contains("expired")),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    h.fake.expired_secret.store(false, Ordering::SeqCst);
    h.fake.deny_users.store(true, Ordering::SeqCst);
    let e = h.client().test(soon(5)).await.unwrap_err();
    assert!(
        matches!(&e, GraphError::Forbidden(m) if m.contains("User.Read.All") && m.contains("admin consent")),
        "{e:?}"
    );
}

#[tokio::test]
async fn callers_waiting_on_a_failed_token_fetch_share_its_error() {
    let h = start().await;
    h.fake.token_delay_ms.store(200, Ordering::SeqCst);
    let c = Arc::new(h.client_with(TENANT, "wrong"));
    let calls = (0..8).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.user(ADELE, &[], soon(5)).await })
    });
    for r in futures_util::future::join_all(calls).await {
        assert!(matches!(r.unwrap(), Err(GraphError::Auth { .. })));
    }
    assert_eq!(h.fake.token_calls.load(Ordering::SeqCst), 1);
}

#[test]
fn links_are_followed_only_under_graph_url() {
    let base = url::Url::parse("https://graph.microsoft.com/v1.0").unwrap();
    for ok in [
        "https://graph.microsoft.com/v1.0/users/delta?$deltatoken=x",
        "https://GRAPH.microsoft.com:443/v1.0/users?$skiptoken=y",
    ] {
        assert!(link_within(&base, ok), "{ok}");
    }
    for bad in [
        "http://graph.microsoft.com/v1.0/users",
        "https://graph.microsoft.com:8443/v1.0/users",
        "https://graph.microsoft.us/v1.0/users",
        "https://graph.microsoft.com.evil.example/v1.0/users",
        "https://graph.microsoft.com/beta/users",
        "https://graph.microsoft.com/v1.0",
        "https://graph.microsoft.com/v1.0x/users",
        "https://graph.microsoft.com/v1.0/../beta/users",
        "https://graph.microsoft.com/v1.0/%2E%2e/beta/users",
        "https://a@graph.microsoft.com/v1.0/users",
        "//graph.microsoft.com/v1.0/users",
        "",
    ] {
        assert!(!link_within(&base, bad), "{bad}");
    }
    // A graph_url with a path of its own.
    let base = url::Url::parse("http://127.0.0.1:8080/graph/v1.0").unwrap();
    assert!(link_within(&base, "http://127.0.0.1:8080/graph/v1.0/users"));
    assert!(!link_within(&base, "http://127.0.0.1:8080/v1.0/users"));
}

#[test]
fn expired_delta_tokens_by_status_and_code() {
    use reqwest::StatusCode as S;
    assert!(is_delta_expired(S::GONE, ""));
    assert!(is_delta_expired(S::GONE, "SyncStateNotFound"));
    assert!(is_delta_expired(S::BAD_REQUEST, "syncstatenotfound"));
    assert!(is_delta_expired(S::BAD_REQUEST, "resyncRequired"));
    assert!(is_delta_expired(S::CONFLICT, "RESYNCREQUIRED"));
    assert!(!is_delta_expired(S::BAD_REQUEST, "Request_BadRequest"));
    assert!(!is_delta_expired(
        S::SERVICE_UNAVAILABLE,
        "syncStateNotFound"
    ));
    assert!(!GraphError::DeltaExpired("410 Gone".into()).is_retryable());
}
