//! A stand-in for the Microsoft identity platform's v2.0 token endpoint and the Microsoft Graph
//! `v1.0` directory routes imd uses, following the wire formats in
//! `shared/notes/microsoft-graph.md` (§11 is the checklist). Tests start one per test with
//! [`StandIn::start`]; the benchmark spawns the `graph-standin` binary.
//!
//! The server runs on its own thread with its own actix `System`, so a test runtime that blocks
//! never stalls it. It stops when the [`StandIn`] is dropped.

mod filter;
mod graph;
mod odata;
mod state;
mod tenant;
mod token;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;

pub use state::{DeltaExpiry, Recorded};
pub use tenant::{Props, Tenant};

use state::{Control, Directory, Fault, Removal, lock};

pub(crate) struct Shared {
    dir: std::sync::Mutex<Directory>,
    ctl: std::sync::Mutex<Control>,
    started: Instant,
}

/// A running stand-in. Point the client's authority at `authority_url` (it posts to
/// `{authority_url}/{tenant}/oauth2/v2.0/token`) and its Graph root at `graph_url` (it calls
/// `{graph_url}/v1.0/...`, scope `{graph_url}/.default`).
pub struct StandIn {
    pub authority_url: String,
    pub graph_url: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    shared: Arc<Shared>,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Starts a stand-in serving `tenant` on `127.0.0.1:0`.
    pub async fn start(tenant: Tenant) -> StandIn {
        StandIn::start_blocking(tenant)
    }

    /// [`StandIn::start`] for callers without an async context (the binary).
    pub fn start_blocking(tenant: Tenant) -> StandIn {
        StandIn::start_on(tenant, "127.0.0.1:0").expect("graph stand-in: bind 127.0.0.1:0")
    }

    /// Starts on a given address (`"127.0.0.1:0"` for a free port).
    pub fn start_on(tenant: Tenant, addr: &str) -> std::io::Result<StandIn> {
        let tenant_id = tenant.tenant_id.clone();
        let client_id = tenant.client_id.clone();
        let client_secret = tenant.client_secret.clone();
        let shared = Arc::new(Shared {
            dir: std::sync::Mutex::new(Directory::new(tenant)),
            ctl: std::sync::Mutex::new(Control::new()),
            started: Instant::now(),
        });
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        let (tx, rx) = mpsc::channel();
        let data = web::Data::from(shared.clone());
        let thread = std::thread::Builder::new()
            .name("graph-standin".into())
            .spawn(move || {
                let sys = actix_web::rt::System::new();
                sys.block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(1 << 20))
                            .route(STATS_PATH, web::get().to(stats))
                            .default_service(web::to(dispatch))
                    })
                    .workers(2)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .listen(listener);
                    match server {
                        Ok(s) => {
                            let s = s.run();
                            let _ = tx.send(Ok(s.handle()));
                            let _ = s.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("graph stand-in thread died"))??;
        let url = format!("http://127.0.0.1:{port}");
        Ok(StandIn {
            authority_url: url.clone(),
            graph_url: url,
            tenant_id,
            client_id,
            client_secret,
            shared,
            handle,
            thread: Some(thread),
        })
    }

    /// Requests that reached `route` (including faulted ones). Routes: `"token"`, `"user"`,
    /// `"users"`, `"transitiveMemberOf"`, `"memberOf"`, `"groups"`, `"group"`,
    /// `"transitiveMembers"`, `"checkMemberGroups"`, `"checkMemberObjects"`, `"delta"`,
    /// `"unknown"`; `"*"` = all of them.
    pub fn calls(&self, route: &str) -> usize {
        let ctl = lock(&self.shared.ctl);
        if route == "*" {
            ctl.calls.values().sum()
        } else {
            ctl.calls.get(route).copied().unwrap_or(0)
        }
    }

    /// Graph calls only (everything but `"token"`).
    pub fn graph_calls(&self) -> usize {
        self.calls("*") - self.calls("token")
    }

    /// Zeroes the counters and forgets recorded requests.
    pub fn reset_calls(&self) {
        let mut ctl = lock(&self.shared.ctl);
        ctl.calls.clear();
        ctl.recorded.clear();
    }

    /// Every request so far (the most recent 200,000), in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.ctl).recorded.iter().cloned().collect()
    }

    /// The next `times` requests to `route` (`"*"`: any route) get `429` with the §9 body and
    /// `Retry-After: {retry_after}` (`None`: no header), plus `x-ms-throttle-*` headers.
    pub fn throttle(&self, route: &str, times: usize, retry_after: Option<&str>) {
        self.push_faults(
            route,
            times,
            Fault::Throttle {
                retry_after: retry_after.map(str::to_owned),
            },
        );
    }

    /// The next `times` requests to `route` fail with `status` (500/502/503/504…) and a Graph
    /// error body (identity-platform body on `"token"`).
    pub fn fail(&self, route: &str, status: u16, times: usize) {
        self.fail_with_retry_after(route, status, times, None);
    }

    /// [`StandIn::fail`] with a `Retry-After` header.
    pub fn fail_with_retry_after(
        &self,
        route: &str,
        status: u16,
        times: usize,
        retry_after: Option<&str>,
    ) {
        self.push_faults(
            route,
            times,
            Fault::Fail {
                status,
                retry_after: retry_after.map(str::to_owned),
            },
        );
    }

    /// Drops faults still queued for every route.
    pub fn clear_faults(&self) {
        lock(&self.shared.ctl).faults.clear();
    }

    fn push_faults(&self, route: &str, times: usize, f: Fault) {
        let mut ctl = lock(&self.shared.ctl);
        let q = ctl.faults.entry(route.to_owned()).or_default();
        q.extend(std::iter::repeat_n(f, times));
    }

    /// Delays every response on `route` (`"*"`: all routes without their own delay) by `ms`.
    pub fn set_delay_ms(&self, route: &str, ms: u64) {
        lock(&self.shared.ctl).delays.insert(route.to_owned(), ms);
    }

    /// Default page size for `route` when the client sends no `$top` (Graph: 100). Also the
    /// delta page size (`"delta"`).
    pub fn set_page_size(&self, route: &str, n: usize) {
        lock(&self.shared.ctl)
            .page_sizes
            .insert(route.to_owned(), n.max(1));
    }

    /// Largest page served on `route` even when the client's `$top` asks for more: Graph
    /// pages on the server side and a page may hold fewer items than `$top` (§5), so a client
    /// must follow nextLinks whatever it asked for.
    pub fn set_max_page_size(&self, route: &str, n: usize) {
        lock(&self.shared.ctl)
            .page_caps
            .insert(route.to_owned(), n.max(1));
    }

    /// `expires_in` of tokens issued from now on (default 3599); they really expire then.
    pub fn set_token_lifetime_secs(&self, secs: u64) {
        lock(&self.shared.ctl).token_lifetime = secs;
    }

    /// Every access token issued so far is now expired (→ 401 `InvalidAuthenticationToken`).
    pub fn expire_tokens(&self) {
        for t in lock(&self.shared.ctl).tokens.values_mut() {
            t.revoked = true;
        }
    }

    /// Number of access tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        lock(&self.shared.ctl).tokens.len()
    }

    /// While `yes`, the token endpoint answers `401 invalid_client` AADSTS7000222.
    pub fn set_secret_expired(&self, yes: bool) {
        lock(&self.shared.ctl).secret_expired = yes;
    }

    /// Application permissions granted (admin-consented) from now on; default
    /// `User.Read.All` + `GroupMember.Read.All`. Empty = consent withheld: tokens are still
    /// issued (without a `roles` claim) and every Graph call is `403`. Like the real service,
    /// the permissions are baked into each token at issue time: tokens issued earlier keep
    /// their old grant (call [`StandIn::expire_tokens`] to force a new token).
    pub fn set_permissions(&self, perms: &[&str]) {
        lock(&self.shared.ctl).perms = perms.iter().map(|p| (*p).to_owned()).collect();
    }

    /// Enables or disables a user (id or UPN); the change shows up in delta.
    pub fn set_user_enabled(&self, id_or_upn: &str, enabled: bool) {
        let found = lock(&self.shared.dir).update_user(id_or_upn, |p| {
            p.insert("accountEnabled".into(), enabled.into());
        });
        assert!(found, "graph stand-in: no user {id_or_upn:?}");
    }

    /// Merges `props` (a JSON object; `null` values clear) into a user's properties.
    pub fn update_user(&self, id_or_upn: &str, props: Value) {
        let found = lock(&self.shared.dir).update_user(id_or_upn, |p| {
            if let Value::Object(m) = props {
                for (k, v) in m {
                    p.insert(k, v);
                }
            }
        });
        assert!(found, "graph stand-in: no user {id_or_upn:?}");
    }

    /// Adds a user (a JSON object with at least `id`), or replaces the one with that id.
    pub fn upsert_user(&self, props: Value) {
        let props = props.as_object().cloned().unwrap_or_default();
        assert!(
            props.contains_key("id"),
            "graph stand-in: a user needs an id"
        );
        lock(&self.shared.dir).upsert_user(props);
    }

    /// Deletes a user: soft (restorable; delta `@removed.reason = "changed"`) or permanent
    /// (`"deleted"`). The user disappears from look-ups (404) and memberships.
    pub fn delete_user(&self, id_or_upn: &str, permanent: bool) {
        let how = if permanent {
            Removal::Hard
        } else {
            Removal::Soft
        };
        let found = lock(&self.shared.dir).remove_user(id_or_upn, how);
        assert!(found, "graph stand-in: no user {id_or_upn:?}");
    }

    /// Every delta token (deltaLink or nextLink) issued so far is expired and answered in the
    /// chosen shape (§7: the sources disagree on which one Graph uses).
    pub fn expire_delta_tokens(&self, how: DeltaExpiry) {
        // Tokens minted so far expire; the sequence moves on so the ones minted after this
        // call (a client's fresh full round) work, as after a real reset.
        let seq = {
            let mut d = lock(&self.shared.dir);
            let s = d.seq;
            d.seq += 1;
            s
        };
        lock(&self.shared.ctl).delta_expired_upto = Some((seq, how));
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        // Sends the stop command right away; the returned future only reports completion.
        drop(self.handle.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read-only counters for a caller in another process (the benchmark spawns the binary):
/// `{"calls": {route: n, ...}, "tokens_issued": n}`. Outside the Graph (`/v1.0/...`) and token
/// (`/{tenant}/oauth2/...`) namespaces, neither counted nor recorded, never faulted or delayed.
pub const STATS_PATH: &str = "/_standin/calls";

async fn stats(shared: web::Data<Shared>) -> HttpResponse {
    let ctl = lock(&shared.ctl);
    let calls: serde_json::Map<String, Value> = ctl
        .calls
        .iter()
        .map(|(k, v)| (k.clone(), (*v).into()))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "calls": calls,
        "tokens_issued": ctl.tokens.len(),
    }))
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn decode_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Every request lands here: record, count, delay, inject faults, authenticate, route.
async fn dispatch(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let raw_path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or("").to_owned();
    let segs: Vec<String> = raw_path
        .trim_start_matches('/')
        .split('/')
        .map(decode_segment)
        .collect();
    let is_token =
        segs.len() == 4 && segs[1] == "oauth2" && segs[2] == "v2.0" && segs[3] == "token";
    let target =
        (segs.first().map(String::as_str) == Some("v1.0")).then(|| graph::classify(&segs[1..]));
    let route = if is_token {
        "token"
    } else {
        target.as_ref().map_or("unknown", graph::Target::route)
    };
    let base = format!("http://{}", req.connection_info().host());
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = header(&req, "client-request-id")
        .map(str::to_owned)
        .unwrap_or_else(|| request_id.clone());

    let (fault, delay) = {
        let mut ctl = lock(&shared.ctl);
        *ctl.calls.entry(route.to_owned()).or_default() += 1;
        if ctl.recorded.len() >= state::RECORD_CAP {
            ctl.recorded.pop_front();
        }
        ctl.recorded.push_back(Recorded {
            route: route.to_owned(),
            method: req.method().to_string(),
            path: raw_path.clone(),
            query: raw_query.clone(),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            at: shared.started.elapsed(),
        });
        (ctl.take_fault(route), ctl.delay(route))
    };
    if delay > 0 {
        actix_web::rt::time::sleep(Duration::from_millis(delay)).await;
    }

    if is_token {
        let extra = vec![("client-request-id".to_owned(), client_request_id.clone())];
        let correlation = uuid::Uuid::parse_str(&client_request_id)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
        if let Some(f) = fault {
            return token_fault(f, &base, &correlation, extra);
        }
        let treq = token::TokenRequest {
            tenant: &segs[0],
            content_type: header(&req, "content-type"),
            authorization: header(&req, "authorization"),
            body: &body,
        };
        let result = {
            let dir = lock(&shared.dir);
            let mut ctl = lock(&shared.ctl);
            token::issue(&treq, &dir, &mut ctl)
        };
        return match result {
            Ok(v) => HttpResponse::Ok()
                .insert_header(("Cache-Control", "no-store, no-cache"))
                .insert_header(("Pragma", "no-cache"))
                .insert_header(("client-request-id", client_request_id.as_str()))
                .insert_header(("x-ms-request-id", request_id.as_str()))
                .content_type("application/json; charset=utf-8")
                .body(v.to_string()),
            Err(e) => e.into_response(&base, &correlation, &extra),
        };
    }

    let result = graph_request(
        &req, &shared, target, &body, &raw_path, &raw_query, base, fault,
    );
    let mut resp = match result {
        Ok(graph::Reply::Json(v)) => HttpResponse::Ok()
            .insert_header(("Content-Type", odata::ODATA_JSON))
            .body(v.to_string()),
        Ok(graph::Reply::Text(t)) => HttpResponse::Ok()
            .content_type("text/plain;charset=utf-8")
            .body(t),
        Err(e) => e.into_response(&request_id, &client_request_id),
    };
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(k), v);
        }
    };
    set("request-id", &request_id);
    set("client-request-id", &client_request_id);
    set("odata-version", "4.0");
    set(
        "x-ms-ags-diagnostic",
        r#"{"ServerInfo":{"DataCenter":"Loopback","Slice":"E","Ring":"0","ScaleUnit":"000","RoleInstance":"GRAPH-STANDIN"}}"#,
    );
    set("strict-transport-security", "max-age=31536000");
    resp
}

#[allow(clippy::too_many_arguments)]
fn graph_request(
    req: &HttpRequest,
    shared: &Shared,
    target: Option<graph::Target>,
    body: &[u8],
    raw_path: &str,
    raw_query: &str,
    base: String,
    fault: Option<Fault>,
) -> Result<graph::Reply, odata::GraphError> {
    use odata::GraphError;
    let Some(target) = target else {
        return Err(GraphError::new(
            400,
            "BadRequest",
            format!(
                "Invalid version: {}",
                raw_path
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or("")
            ),
        ));
    };
    if let Some(f) = fault {
        return Err(graph_fault(f, &shared.dir));
    }
    let (perms, page_size, page_cap, delta_expired_upto) = {
        let ctl = lock(&shared.ctl);
        let perms = authenticate(header(req, "authorization"), &ctl, &base)?;
        (
            perms,
            ctl.page_sizes.get(target.route()).copied(),
            ctl.page_caps.get(target.route()).copied(),
            ctl.delta_expired_upto,
        )
    };
    let r = graph::GraphReq {
        method: req.method().as_str(),
        base,
        path: raw_path,
        query: odata::Query::parse(raw_query),
        eventual: header(req, "consistencylevel")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("eventual")),
        perms,
        body,
        page_size,
        page_cap,
        delta_expired_upto,
    };
    let mut dir = lock(&shared.dir);
    graph::handle(target, &r, &mut dir)
}

fn authenticate(
    auth: Option<&str>,
    ctl: &Control,
    base: &str,
) -> Result<Vec<String>, odata::GraphError> {
    let unauthorized = |msg: &str| {
        odata::GraphError::new(401, "InvalidAuthenticationToken", msg).header(
            "WWW-Authenticate",
            format!(
                r#"Bearer realm="", authorization_uri="{base}/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000""#
            ),
        )
    };
    let token = match auth.map(str::trim) {
        None | Some("") => return Err(unauthorized("Access token is empty.")),
        Some(a) => match a.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                t.trim()
            }
            _ => {
                return Err(unauthorized(
                    "Access token validation failure. Invalid audience.",
                ));
            }
        },
    };
    match ctl.tokens.get(token) {
        Some(t) if t.revoked || t.expires_at <= Instant::now() => Err(unauthorized(
            "Access token has expired or is not yet valid.",
        )),
        Some(t) => Ok(t.perms.clone()),
        None if token.matches('.').count() == 2 => {
            Err(unauthorized("Access token validation failure."))
        }
        None => Err(unauthorized(
            "CompactToken parsing failed with error code: 80049217",
        )),
    }
}

fn graph_fault(f: Fault, dir: &std::sync::Mutex<Directory>) -> odata::GraphError {
    use odata::GraphError;
    match f {
        Fault::Throttle { retry_after } => {
            let (app, tenant) = {
                let d = lock(dir);
                (d.client_id.clone(), d.tenant_id.clone())
            };
            let mut e = GraphError::new(429, "TooManyRequests", "Please retry again later.")
                .header(
                    "x-ms-throttle-scope",
                    format!("Tenant_Application/ReadWrite/{app}/{tenant}"),
                )
                .header("x-ms-throttle-information", "ResourceUnitLimitExceeded");
            e.inner = vec![
                ("code".into(), "429".into()),
                ("message".into(), "Please retry after".into()),
                ("status".into(), "429".into()),
            ];
            if let Some(ra) = retry_after {
                e = e.header("Retry-After", ra);
            }
            e
        }
        Fault::Fail {
            status,
            retry_after,
        } => {
            let (code, msg) = match status {
                503 => (
                    "serviceNotAvailable",
                    "The service is temporarily unavailable for maintenance or is overloaded. You may repeat the request after a delay, the length of which may be specified in a Retry-After header.",
                ),
                504 => (
                    "gatewayTimeout",
                    "The server, while acting as a proxy, did not receive a timely response from the upstream server it needed to access in attempting to complete the request.",
                ),
                502 => (
                    "badGateway",
                    "The server, while acting as a gateway, received an invalid response from the upstream server.",
                ),
                _ => ("generalException", "An unspecified error has occurred."),
            };
            let mut e = GraphError::new(status, code, msg);
            if let Some(ra) = retry_after {
                e = e.header("Retry-After", ra);
            }
            e
        }
    }
}

fn token_fault(
    f: Fault,
    authority: &str,
    correlation: &str,
    mut headers: Vec<(String, String)>,
) -> HttpResponse {
    let (status, retry_after) = match f {
        Fault::Throttle { retry_after } => (429, retry_after),
        Fault::Fail {
            status,
            retry_after,
        } => (status, retry_after),
    };
    if let Some(ra) = retry_after {
        headers.push(("Retry-After".into(), ra));
    }
    token::AadError {
        status,
        error: "temporarily_unavailable",
        code: None,
        description: "The server is temporarily too busy to handle the request (graph stand-in fault injection).".into(),
    }
    .into_response(authority, correlation, &headers)
}
