//! Microsoft Graph (app-only) for one organization's Entra ID app registration: the v5
//! resolver's directory. Wire formats: shared/notes/microsoft-graph.md (§ numbers below).
//!
//! - Token: OAuth 2.0 client credentials on `{authority_url}/{tenant}/oauth2/v2.0/token` with
//!   scope `{graph_url}/.default`, form-encoded once (§1). The token is cached until shortly
//!   before it expires (10 % of its lifetime early, at most 5 minutes), refreshed once when
//!   Graph answers 401, and refreshed by one caller at a time: concurrent callers wait for that
//!   refresh and share its result, success or failure (single flight).
//! - Calls: `$select` always names `id` (§3); collections follow `@odata.nextLink` exactly as
//!   given, resending the headers (§5); `ConsistencyLevel: eventual` + `$count=true` where an
//!   advanced query needs it; a fresh `client-request-id` GUID on every request (§10).
//! - Throttling: 429, 503 and 504 honour `Retry-After` (seconds, integer or decimal, or an
//!   HTTP date); without it, capped exponential backoff with jitter. Retries are bounded and
//!   stay inside the caller's deadline: a wait that would pass it fails at once with
//!   `GraphError::Unavailable` (§9). Retries and throttles are counted (`stats`) and logged.
//! - Keys in paths are percent-encoded (`#` → `%23`, `'`, `+`, non-ASCII); a UPN starting with
//!   `$` uses the `/users('…')` form; a UPN with `'` is looked up through
//!   `$filter=userPrincipalName eq '…'` (the note's safe form); OData literals double `'`.
//! - The client secret and access tokens never reach a log or a `Debug` string, and a link
//!   (nextLink, deltaLink, one a caller kept) is followed only under `{graph_url}/v1.0`: same
//!   scheme, host and port, so the bearer token never goes to another host.
//! - Directory sync (`graph/sync.rs`): group members, filtered users and the users delta one
//!   page per call; an expired or reset delta token is `GraphError::DeltaExpired` (§7).
//!
//! `GraphClients` keeps one client per organization (so tokens are reused across requests),
//! rebuilt when the organization's `azure_config` row changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::crypto::MasterKey;
use crate::store::{AzureConfigRow, Store, StoreError, azure_secret_aad};

pub const DEFAULT_AUTHORITY_URL: &str = "https://login.microsoftonline.com";
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";

/// Graph user properties a v5 look-up selects (`id` first: `$select` never adds it, §3).
pub const USER_SELECT: [&str; 13] = [
    "id",
    "userPrincipalName",
    "mail",
    "displayName",
    "department",
    "country",
    "companyName",
    "jobTitle",
    "officeLocation",
    "employeeType",
    "accountEnabled",
    "userType",
    "onPremisesImmutableId",
];
const GROUP_SELECT: &str = "id,displayName,groupTypes,mailEnabled,securityEnabled";
/// Largest page Graph serves for memberships (§4).
const MAX_PAGE: u32 = 999;
/// A collection longer than this many pages is refused rather than followed forever.
const MAX_PAGES: usize = 1000;
/// The longest secret accepted; Entra ID secrets are ~40 characters.
pub const MAX_SECRET_BYTES: usize = 1024;

/// One organization's app registration.
#[derive(Clone, PartialEq, Eq)]
pub struct GraphSettings {
    /// GUID (preferred) or a verified domain.
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// Token host, e.g. `https://login.microsoftonline.com` (national clouds: §1).
    pub authority_url: String,
    /// Graph root, e.g. `https://graph.microsoft.com`; the scope is `{graph_url}/.default`.
    pub graph_url: String,
}

impl GraphSettings {
    /// Settings for the public cloud.
    pub fn new(tenant_id: &str, client_id: &str, client_secret: &str) -> GraphSettings {
        GraphSettings {
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            authority_url: DEFAULT_AUTHORITY_URL.into(),
            graph_url: DEFAULT_GRAPH_URL.into(),
        }
    }
}

impl std::fmt::Debug for GraphSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSettings")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("authority_url", &self.authority_url)
            .field("graph_url", &self.graph_url)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphUser {
    /// The Entra object id (users are keyed by it).
    pub id: String,
    pub user_principal_name: String,
    pub mail: Option<String>,
    pub display_name: Option<String>,
    pub department: Option<String>,
    pub country: Option<String>,
    pub company_name: Option<String>,
    pub job_title: Option<String>,
    pub office_location: Option<String>,
    pub employee_type: Option<String>,
    /// `false` also when Graph left it out (a disabled user must never pass by omission).
    pub account_enabled: bool,
    /// `Member` | `Guest`.
    pub user_type: Option<String>,
    pub on_premises_immutable_id: Option<String>,
    /// The `extension_*` attributes asked for that have a value (as text).
    pub extensions: BTreeMap<String, String>,
}

impl GraphUser {
    /// A mapping attribute's value by its Graph property name (`department`, `companyName`,
    /// `extension_<appid>_<name>`, ...).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        match name {
            "department" => self.department.as_deref(),
            "country" => self.country.as_deref(),
            "companyName" => self.company_name.as_deref(),
            "jobTitle" => self.job_title.as_deref(),
            "officeLocation" => self.office_location.as_deref(),
            "employeeType" => self.employee_type.as_deref(),
            n => self.extensions.get(n).map(String::as_str),
        }
    }

    pub fn is_guest(&self) -> bool {
        self.user_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("guest"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphGroup {
    pub id: String,
    pub display_name: Option<String>,
    /// `microsoft365` | `security` | `distribution` | `mail_enabled_security`.
    pub kind: String,
}

/// A user as `test` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserSample {
    pub id: String,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
}

/// What `GraphClient::test` found: a token was issued and one user and one group were read
/// (`None`: the tenant has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestReport {
    pub user_sample: Option<UserSample>,
    pub group_sample: Option<GraphGroup>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Transport failure, 5xx, or throttled past the deadline: retry later.
    #[error("Microsoft Graph unavailable: {0}")]
    Unavailable(String),
    /// The identity platform refused the app's credentials (or Graph its token). `code` is
    /// the platform's own (`AADSTS7000215`, or `invalid_client` when it sent no number);
    /// `message` says what to fix.
    #[error("authentication failed ({code}): {message}")]
    Auth { code: String, message: String },
    /// `Authorization_RequestDenied`: an application permission is missing or not
    /// admin-consented; the message names it.
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// Graph refused the request itself (400 and other unexpected answers).
    #[error("request refused by Microsoft Graph: {0}")]
    BadRequest(String),
    /// A delta link (or a nextLink of its round) expired or its round was reset: any 410, or a
    /// 4xx `syncStateNotFound` / `resyncRequired` (§7). Not retryable: drop the link and run a
    /// full enumeration (which must also reconcile deletions, since they are not replayed).
    #[error("the users delta link is no longer valid ({0}): run a full synchronization")]
    DeltaExpired(String),
}

impl GraphError {
    /// Whether the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, GraphError::Unavailable(_))
    }
}

/// Counters since the client was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GraphStats {
    /// Graph requests sent (retries included, token requests not).
    pub requests: u64,
    /// Requests (Graph or token) sent again after a throttle, 503/504 or transport error.
    pub retries: u64,
    /// 429, 503 and 504 answers received.
    pub throttled: u64,
    /// Token requests sent.
    pub token_fetches: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    token_fetches: AtomicU64,
}

/// An access token; never printed.
struct AccessToken(String);

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(..)")
    }
}

struct CachedToken {
    token: Arc<AccessToken>,
    /// Bumped on every fetch: a caller whose token Graph refused asks for a newer one.
    generation: u64,
    refresh_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct TokenState {
    cached: Option<CachedToken>,
    generation: u64,
    /// Fetches finished, and the error of the last one if it failed: callers that waited for
    /// a refresh share its outcome instead of each trying again.
    fetches: u64,
    last_error: Option<GraphError>,
}

/// Retry timing without `Retry-After`.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    base: Duration,
    cap: Duration,
}

/// Which call a request is, for logs and diagnostics.
#[derive(Clone, Copy)]
struct Call {
    what: &'static str,
    /// The application permission that grants it (named when Graph says 403).
    permission: &'static str,
    /// Send `ConsistencyLevel: eventual` (the URL carries `$count=true`).
    advanced: bool,
    /// A users delta request: an expired or reset delta token is `DeltaExpired` (§7).
    delta: bool,
}

pub struct GraphClient {
    settings: GraphSettings,
    http: reqwest::Client,
    token_url: String,
    scope: String,
    /// `{graph_url}/v1.0`.
    base: String,
    /// `base` parsed: links are followed only under it (`None`: graph_url is no URL).
    base_url: Option<url::Url>,
    max_retries: u32,
    backoff: Backoff,
    token: tokio::sync::Mutex<TokenState>,
    fetches_done: AtomicU64,
    stats: Counters,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("settings", &self.settings)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// The same app registration with no cached token: diagnostics (`azure/test`) must see
    /// what a token issued now carries (permissions are fixed in a token when it is issued).
    pub fn fresh(&self) -> GraphClient {
        GraphClient::new(self.settings.clone(), self.http.clone())
            .with_max_retries(self.max_retries)
    }

    pub fn new(settings: GraphSettings, http: reqwest::Client) -> GraphClient {
        let authority = settings.authority_url.trim_end_matches('/');
        let graph = settings.graph_url.trim_end_matches('/').to_string();
        GraphClient {
            token_url: format!(
                "{authority}/{}/oauth2/v2.0/token",
                encode_segment(&settings.tenant_id)
            ),
            scope: format!("{graph}/.default"),
            base: format!("{graph}/v1.0"),
            base_url: url::Url::parse(&format!("{graph}/v1.0")).ok(),
            settings,
            http,
            max_retries: 4,
            backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(8),
            },
            token: tokio::sync::Mutex::default(),
            fetches_done: AtomicU64::new(0),
            stats: Counters::default(),
        }
    }

    /// Retries per call after throttling or transport errors (default 4).
    pub fn with_max_retries(mut self, n: u32) -> GraphClient {
        self.max_retries = n;
        self
    }

    /// The backoff used when Graph sends no `Retry-After` (default 0.5 s doubling to 8 s).
    pub fn with_backoff(mut self, base: Duration, cap: Duration) -> GraphClient {
        self.backoff = Backoff { base, cap };
        self
    }

    pub fn settings(&self) -> &GraphSettings {
        &self.settings
    }

    pub fn stats(&self) -> GraphStats {
        GraphStats {
            requests: self.stats.requests.load(Ordering::Relaxed),
            retries: self.stats.retries.load(Ordering::Relaxed),
            throttled: self.stats.throttled.load(Ordering::Relaxed),
            token_fetches: self.stats.token_fetches.load(Ordering::Relaxed),
        }
    }

    /// One user by object id or UPN, with the `extension_*` attributes named (invalid names
    /// are a `BadRequest`). `None`: no such user.
    pub async fn user(
        &self,
        upn_or_id: &str,
        extensions: &[String],
        deadline: Instant,
    ) -> Result<Option<GraphUser>, GraphError> {
        let key = upn_or_id.trim();
        if key.is_empty() {
            return Ok(None);
        }
        let select = user_select(extensions)?;
        let call = Call {
            what: "read user",
            permission: "User.Read.All",
            advanced: false,
            delta: false,
        };
        let body = if key.contains('\'') && !is_guid(key) {
            // An apostrophe in the path form is undocumented (§3): filter by UPN instead.
            let url = format!(
                "{}/users?$filter={}&$select={select}",
                self.base,
                encode_query(&format!("userPrincipalName eq {}", odata_string(key)))
            );
            match self.get_json(&url, call, deadline).await? {
                Some(page) => page
                    .get("value")
                    .and_then(Value::as_array)
                    .and_then(|v| v.first())
                    .cloned(),
                None => None,
            }
        } else {
            let url = format!("{}{}?$select={select}", self.base, user_path(key));
            self.get_json(&url, call, deadline).await?
        };
        body.map(|v| parse_user(&v, extensions)).transpose()
    }

    /// A user by its `mail` (a client that reports an email, not a UPN): exactly one match, or
    /// none (`mail` is neither required nor unique).
    pub async fn user_by_mail(
        &self,
        mail: &str,
        extensions: &[String],
        deadline: Instant,
    ) -> Result<Option<GraphUser>, GraphError> {
        let mut select: Vec<&str> = USER_SELECT.to_vec();
        for e in extensions {
            if is_extension_name(e) && !select.contains(&e.as_str()) {
                select.push(e);
            }
        }
        let url = format!(
            "{}/users?$filter={}&$select={}&$top=2",
            self.base,
            encode_query(&format!("mail eq {}", odata_string(mail.trim()))),
            select.join(",")
        );
        let call = Call {
            what: "find user by mail",
            permission: "User.Read.All",
            advanced: false,
            delta: false,
        };
        let Some(page) = self.get_json(&url, call, deadline).await? else {
            return Ok(None);
        };
        match page.get("value").and_then(Value::as_array) {
            Some(v) if v.len() == 1 => parse_user(&v[0], extensions).map(Some),
            _ => Ok(None),
        }
    }

    /// The ids of every group the user belongs to, directly or through nested groups, all
    /// pages (`/transitiveMemberOf/microsoft.graph.group`, §4).
    pub async fn transitive_group_ids(
        &self,
        user_id: &str,
        deadline: Instant,
    ) -> Result<Vec<String>, GraphError> {
        let url = format!(
            "{}{}/transitiveMemberOf/microsoft.graph.group?$select=id&$top={MAX_PAGE}",
            self.base,
            user_path(user_id)
        );
        let call = Call {
            what: "read group memberships",
            permission: "GroupMember.Read.All",
            advanced: false,
            delta: false,
        };
        let items = self.collect(&url, call, None, deadline).await?;
        Ok(items
            .iter()
            .filter(|o| {
                o.get("@odata.type")
                    .and_then(Value::as_str)
                    .is_none_or(|t| t == "#microsoft.graph.group")
            })
            .filter_map(|o| o.get("id").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    /// Groups whose display name starts with `prefix` (or the group with that id, when
    /// `prefix` is a GUID), at most `top` (1–999), by display name.
    pub async fn search_groups(
        &self,
        prefix: &str,
        top: u32,
        deadline: Instant,
    ) -> Result<Vec<GraphGroup>, GraphError> {
        let top = top.clamp(1, MAX_PAGE);
        let prefix = prefix.trim();
        let filter = if is_guid(prefix) {
            format!("id eq {}", odata_string(&prefix.to_ascii_lowercase()))
        } else {
            format!("startsWith(displayName,{})", odata_string(prefix))
        };
        let mut url = format!(
            "{}/groups?$select={GROUP_SELECT}&$top={top}&$count=true",
            self.base
        );
        if !prefix.is_empty() {
            url.push_str(&format!("&$filter={}", encode_query(&filter)));
        }
        let call = Call {
            what: "search groups",
            permission: "GroupMember.Read.All",
            advanced: true,
            delta: false,
        };
        let items = self
            .collect(&url, call, Some(top as usize), deadline)
            .await?;
        let mut groups: Vec<GraphGroup> = items.iter().filter_map(parse_group).collect();
        groups.truncate(top as usize);
        groups.sort_by_cached_key(|g| g.display_name.clone().unwrap_or_default().to_lowercase());
        Ok(groups)
    }

    /// Gets a token, reads one user and one group: the first failing step's error says what
    /// to fix (unknown tenant, bad or expired secret, a permission not consented).
    pub async fn test(&self, deadline: Instant) -> Result<TestReport, GraphError> {
        self.token(deadline, None).await?;
        let users = self
            .get_json(
                &format!(
                    "{}/users?$top=1&$select=id,userPrincipalName,displayName",
                    self.base
                ),
                Call {
                    what: "list users",
                    permission: "User.Read.All",
                    advanced: false,
                    delta: false,
                },
                deadline,
            )
            .await?;
        let user_sample = users.as_ref().and_then(first_item).and_then(|u| {
            Some(UserSample {
                id: u.get("id")?.as_str()?.to_string(),
                user_principal_name: text(u, "userPrincipalName"),
                display_name: text(u, "displayName"),
            })
        });
        let groups = self
            .get_json(
                &format!("{}/groups?$top=1&$select={GROUP_SELECT}", self.base),
                Call {
                    what: "list groups",
                    permission: "GroupMember.Read.All",
                    advanced: false,
                    delta: false,
                },
                deadline,
            )
            .await?;
        let group_sample = groups.as_ref().and_then(first_item).and_then(parse_group);
        if let Some(g) = &group_sample
            && g.display_name.is_none()
        {
            // Limited information (§4): the group is visible but not its properties.
            return Err(GraphError::Forbidden(format!(
                "groups are returned without their properties (group {}): the application permission GroupMember.Read.All is not granted or not admin-consented; {}",
                g.id,
                consent_hint("GroupMember.Read.All")
            )));
        }
        Ok(TestReport {
            user_sample,
            group_sample,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Token.

    /// A valid access token and its generation. `stale`: the generation Graph just refused,
    /// which must not be handed out again.
    async fn token(
        &self,
        deadline: Instant,
        stale: Option<u64>,
    ) -> Result<(Arc<AccessToken>, u64), GraphError> {
        let seen = self.fetches_done.load(Ordering::Acquire);
        let mut state = tokio::time::timeout_at(deadline, self.token.lock())
            .await
            .map_err(|_| {
                GraphError::Unavailable("the deadline passed while waiting for a token".into())
            })?;
        let now = Instant::now();
        if let Some(c) = &state.cached
            && now < c.refresh_at
            && stale != Some(c.generation)
        {
            return Ok((c.token.clone(), c.generation));
        }
        // A refresh finished while this caller waited for the lock and failed: share it.
        if state.fetches > seen
            && let Some(e) = &state.last_error
        {
            return Err(e.clone());
        }
        match self.fetch_token(deadline).await {
            Ok((token, lifetime)) => {
                let now = Instant::now();
                let early = (lifetime / 10).min(Duration::from_secs(300));
                state.generation += 1;
                state.cached = Some(CachedToken {
                    token: Arc::new(token),
                    generation: state.generation,
                    refresh_at: now + lifetime - early,
                    expires_at: now + lifetime,
                });
                state.last_error = None;
                state.fetches += 1;
                self.fetches_done.store(state.fetches, Ordering::Release);
                let c = state.cached.as_ref().expect("just set");
                Ok((c.token.clone(), c.generation))
            }
            Err(e) => {
                state.fetches += 1;
                self.fetches_done.store(state.fetches, Ordering::Release);
                state.last_error = Some(e.clone());
                // An early refresh that failed transiently: the old token still works.
                if e.is_retryable()
                    && let Some(c) = &state.cached
                    && Instant::now() + Duration::from_secs(5) < c.expires_at
                    && stale != Some(c.generation)
                {
                    tracing::warn!(error = %e, "Graph token refresh failed; using the current token until it expires");
                    return Ok((c.token.clone(), c.generation));
                }
                Err(e)
            }
        }
    }

    /// One token request (with retries on throttling and transport errors): the token and
    /// its lifetime.
    async fn fetch_token(&self, deadline: Instant) -> Result<(AccessToken, Duration), GraphError> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("scope", &self.scope)
            .append_pair("client_secret", &self.settings.client_secret)
            .append_pair("grant_type", "client_credentials")
            .finish();
        let mut attempt = 0u32;
        loop {
            self.stats.token_fetches.fetch_add(1, Ordering::Relaxed);
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let req = self
                .http
                .post(&self.token_url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header(reqwest::header::ACCEPT, "application/json")
                .header("client-request-id", &client_request_id)
                .body(form.clone());
            let (status, headers, body) = match self.exchange(req, deadline).await {
                Ok(r) => r,
                Err(Exchange::Deadline) => {
                    return Err(GraphError::Unavailable(
                        "the token endpoint did not answer within the deadline".into(),
                    ));
                }
                Err(Exchange::Transport(m)) => {
                    let wait = self.retry_wait(attempt, None, deadline, "token", &m)?;
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            if status.is_success() {
                return parse_token(&body);
            }
            if is_throttle(status) || status.is_server_error() {
                if is_throttle(status) {
                    self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                }
                let what = format!("token endpoint answered {status}");
                if !is_throttle(status) {
                    return Err(GraphError::Unavailable(what));
                }
                let wait =
                    self.retry_wait(attempt, retry_after(&headers), deadline, "token", &what)?;
                attempt += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            let e = token_error(status, &body, &self.settings);
            tracing::warn!(
                status = status.as_u16(),
                error = %e,
                client_request_id,
                "Graph token request refused"
            );
            return Err(e);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Requests.

    /// A collection, all pages (or the first `limit` items): `@odata.nextLink` is followed as
    /// given, with the same headers.
    async fn collect(
        &self,
        first: &str,
        call: Call,
        limit: Option<usize>,
        deadline: Instant,
    ) -> Result<Vec<Value>, GraphError> {
        let mut out = Vec::new();
        let mut url = first.to_string();
        for _ in 0..MAX_PAGES {
            let Some(page) = self.get_json(&url, call, deadline).await? else {
                // 404 on a collection: the user (or group) it belongs to does not exist.
                return Ok(out);
            };
            if let Some(items) = page.get("value").and_then(Value::as_array) {
                out.extend(items.iter().cloned());
            }
            if limit.is_some_and(|l| out.len() >= l) {
                return Ok(out);
            }
            match page.get("@odata.nextLink").and_then(Value::as_str) {
                Some(next) => {
                    self.check_next_link(next)?;
                    url = next.to_string();
                }
                None => return Ok(out),
            }
        }
        Err(GraphError::BadRequest(format!(
            "{}: more than {MAX_PAGES} pages",
            call.what
        )))
    }

    /// The bearer token goes only to the configured Graph root: a link Graph returned is
    /// followed only when it is under `{graph_url}/v1.0` (`link_within`).
    fn check_next_link(&self, next: &str) -> Result<(), GraphError> {
        self.check_link(next, "Graph returned an @odata.nextLink")
    }

    /// `check_next_link` for any link about to be called with the token (`what` names it).
    fn check_link(&self, link: &str, what: &str) -> Result<(), GraphError> {
        if self.base_url.as_ref().is_some_and(|b| link_within(b, link)) {
            Ok(())
        } else {
            Err(GraphError::BadRequest(format!(
                "{what} outside {} (another scheme, host, port or path); not followed, so the access token stays with Microsoft Graph",
                self.base
            )))
        }
    }

    /// GET with the token, retries and one refresh on 401. `None`: 404.
    async fn get_json(
        &self,
        url: &str,
        call: Call,
        deadline: Instant,
    ) -> Result<Option<Value>, GraphError> {
        let mut attempt = 0u32;
        let mut stale = None;
        let mut refreshed = false;
        loop {
            let (token, generation) = self.token(deadline, stale).await?;
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let mut req = self
                .http
                .get(url)
                .bearer_auth(&token.0)
                .header(reqwest::header::ACCEPT, "application/json")
                .header("client-request-id", &client_request_id);
            if call.advanced {
                req = req.header("ConsistencyLevel", "eventual");
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let (status, headers, body) = match self.exchange(req, deadline).await {
                Ok(r) => r,
                Err(Exchange::Deadline) => {
                    return Err(GraphError::Unavailable(format!(
                        "{}: Microsoft Graph did not answer within the deadline",
                        call.what
                    )));
                }
                Err(Exchange::Transport(m)) => {
                    let wait = self.retry_wait(attempt, None, deadline, call.what, &m)?;
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let request_id = header_str(&headers, "request-id");
            if status.is_success() {
                return serde_json::from_slice(&body).map(Some).map_err(|e| {
                    GraphError::Unavailable(format!(
                        "{}: unreadable answer from Microsoft Graph: {e}",
                        call.what
                    ))
                });
            }
            let (code, message) = graph_error_body(&body);
            if is_throttle(status) {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                let what = format!("Microsoft Graph answered {status} {code}");
                let wait =
                    self.retry_wait(attempt, retry_after(&headers), deadline, call.what, &what)?;
                attempt += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            if call.delta && is_delta_expired(status, &code) {
                tracing::info!(
                    call = call.what,
                    status = status.as_u16(),
                    code,
                    client_request_id,
                    request_id,
                    "Graph says the delta token expired or its round was reset"
                );
                return Err(GraphError::DeltaExpired(format!(
                    "{status} {code}: {message}"
                )));
            }
            match status.as_u16() {
                404 => return Ok(None),
                401 if !refreshed => {
                    tracing::info!(
                        call = call.what,
                        code,
                        client_request_id,
                        request_id,
                        "Graph refused the access token; fetching a new one"
                    );
                    refreshed = true;
                    stale = Some(generation);
                    continue;
                }
                401 => {
                    return Err(GraphError::Auth {
                        code: if code.is_empty() {
                            "InvalidAuthenticationToken".into()
                        } else {
                            code
                        },
                        message: format!(
                            "Microsoft Graph refused a freshly issued token ({message}); check that graph_url and authority_url belong to the same cloud"
                        ),
                    });
                }
                403 => {
                    tracing::warn!(
                        call = call.what,
                        code,
                        client_request_id,
                        request_id,
                        "Graph denied the request"
                    );
                    return Err(GraphError::Forbidden(format!(
                        "{} was denied ({}): the application permission {} is not granted or not admin-consented; {}",
                        call.what,
                        if code.is_empty() { "403" } else { &code },
                        call.permission,
                        consent_hint(call.permission)
                    )));
                }
                s if s >= 500 => {
                    return Err(GraphError::Unavailable(format!(
                        "{}: Microsoft Graph answered {status} {code}",
                        call.what
                    )));
                }
                _ => {
                    tracing::warn!(
                        call = call.what,
                        status = status.as_u16(),
                        code,
                        client_request_id,
                        request_id,
                        "Graph refused the request"
                    );
                    return Err(GraphError::BadRequest(format!(
                        "{}: {status} {code}: {message}",
                        call.what
                    )));
                }
            }
        }
    }

    /// Sends and reads the whole answer inside the deadline.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        deadline: Instant,
    ) -> Result<
        (
            reqwest::StatusCode,
            reqwest::header::HeaderMap,
            bytes::Bytes,
        ),
        Exchange,
    > {
        let fut = async {
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(transport)?;
            Ok((status, headers, body))
        };
        tokio::time::timeout_at(deadline, fut)
            .await
            .map_err(|_| Exchange::Deadline)?
    }

    /// How long to wait before retry `attempt + 1`, or the error to give up with: out of
    /// retries, or the wait would end past the deadline.
    fn retry_wait(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        deadline: Instant,
        call: &str,
        cause: &str,
    ) -> Result<Duration, GraphError> {
        if attempt >= self.max_retries {
            tracing::warn!(
                call,
                cause,
                retries = attempt,
                "Graph call failed after the last retry"
            );
            return Err(GraphError::Unavailable(format!(
                "{call}: {cause} (after {attempt} retries)"
            )));
        }
        let wait = retry_after.unwrap_or_else(|| backoff(self.backoff, attempt, jitter()));
        if Instant::now() + wait >= deadline {
            tracing::warn!(
                call,
                cause,
                wait_ms = wait.as_millis() as u64,
                retries = attempt,
                "Graph asked to wait past the deadline; giving up"
            );
            return Err(GraphError::Unavailable(format!(
                "{call}: {cause}; retrying after {} ms would pass the deadline",
                wait.as_millis()
            )));
        }
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            call,
            cause,
            wait_ms = wait.as_millis() as u64,
            retry = attempt + 1,
            from_retry_after = retry_after.is_some(),
            "Graph call throttled or failed; retrying"
        );
        Ok(wait)
    }
}

enum Exchange {
    Deadline,
    Transport(String),
}

/// A transport error's text, without the URL (it may name a user).
fn transport(e: reqwest::Error) -> Exchange {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "connection broken while reading the answer"
    } else {
        "request failed"
    };
    let mut msg = kind.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Exchange::Transport(msg)
}

fn is_throttle(s: reqwest::StatusCode) -> bool {
    matches!(s.as_u16(), 429 | 503 | 504)
}

/// The note's client rule (§7): any 410, and any 4xx whose code is `syncStateNotFound` or
/// `resyncRequired` in any case (the sources disagree on status and casing).
fn is_delta_expired(s: reqwest::StatusCode, code: &str) -> bool {
    s.as_u16() == 410
        || (s.is_client_error()
            && ["syncStateNotFound", "resyncRequired"]
                .iter()
                .any(|c| code.eq_ignore_ascii_case(c)))
}

/// Whether `link` is under `base` (`{graph_url}/v1.0`): same scheme, host and port, no user
/// info, and a path below base's. The path is compared after URL parsing, which resolves
/// `..` and `%2e%2e` the way the request will be sent.
pub fn link_within(base: &url::Url, link: &str) -> bool {
    let Ok(u) = url::Url::parse(link) else {
        return false;
    };
    u.scheme() == base.scheme()
        && u.host() == base.host()
        && u.port_or_known_default() == base.port_or_known_default()
        && u.username().is_empty()
        && u.password().is_none()
        && u.path()
            .strip_prefix(base.path().trim_end_matches('/'))
            .is_some_and(|rest| rest.starts_with('/'))
}

fn header_str(h: &reqwest::header::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, time::OffsetDateTime::now_utc())
}

/// `Retry-After` as seconds (`10`, `2.128`: rounded up to the millisecond) or an HTTP date
/// (the time left until then). Nonsense, negative or absurd (> 1 day) values: `None`.
pub fn parse_retry_after(v: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
            return None;
        }
        return Some(Duration::from_millis((secs * 1000.0).ceil() as u64));
    }
    let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let left = at - now;
    if left.is_negative() {
        return Some(Duration::ZERO);
    }
    let left = Duration::try_from(left).ok()?;
    (left <= Duration::from_secs(86_400)).then_some(left)
}

/// Capped exponential backoff with jitter: `base · 2^attempt`, at most `cap`, then scaled
/// into `[½, 1]` of that by `jitter` (0–1).
fn backoff(b: Backoff, attempt: u32, jitter: f64) -> Duration {
    let full = b
        .base
        .saturating_mul(1u32 << attempt.min(16))
        .min(b.cap)
        .max(Duration::from_millis(1));
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

fn jitter() -> f64 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([b[0], b[1]]) as f64 / u16::MAX as f64
}

fn consent_hint(permission: &str) -> String {
    format!(
        "in the Entra admin center open App registrations → this app → API permissions, add Microsoft Graph application permission {permission} and select \"Grant admin consent\" (docs/azure-app-registration.md)"
    )
}

// ---------------------------------------------------------------------------------------------
// Encoding.

/// RFC 3986 unreserved characters.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn percent_encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One path segment: everything but the unreserved characters and `@` is percent-encoded
/// (`#` → `%23`, `'` → `%27`, `+` → `%2B`, `/` → `%2F`, UTF-8 bytes of non-ASCII).
pub fn encode_segment(s: &str) -> String {
    percent_encode(s, |b| unreserved(b) || b == b'@')
}

/// A query parameter's value: RFC 3986 encoding, space as `%20` (a `+` would read as a space).
pub fn encode_query(s: &str) -> String {
    percent_encode(s, |b| {
        unreserved(b) || matches!(b, b',' | b'(' | b')' | b'@' | b'$')
    })
}

/// An OData string literal: quoted, `'` doubled.
pub fn odata_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The path of one user: `/users/{key}` percent-encoded, or `/users('{key}')` for a key that
/// starts with `$` (which the plain form would read as a system query option, §3).
pub fn user_path(key: &str) -> String {
    if key.starts_with('$') {
        let literal = key.replace('\'', "''");
        format!(
            "/users('{}')",
            percent_encode(&literal, |b| unreserved(b)
                || matches!(b, b'@' | b'$' | b'\''))
        )
    } else {
        format!("/users/{}", encode_segment(key))
    }
}

/// `8-4-4-4-12` hex digits.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `extension_<app id, 32 hex digits>_<name>` (a directory extension attribute).
pub fn is_extension_name(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("extension_") else {
        return false;
    };
    let Some((app, name)) = rest.split_once('_') else {
        return false;
    };
    app.len() == 32
        && app.bytes().all(|c| c.is_ascii_hexdigit())
        && !name.is_empty()
        && name.len() <= 100
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `$select` for a user: `USER_SELECT` plus the `extension_*` attributes named (an invalid
/// name is a `BadRequest`: it would make Graph refuse the whole call).
fn user_select(extensions: &[String]) -> Result<String, GraphError> {
    let mut select: Vec<&str> = USER_SELECT.to_vec();
    for e in extensions {
        if !is_extension_name(e) {
            return Err(GraphError::BadRequest(format!(
                "{e:?} is not an extension attribute name (extension_<app id without dashes>_<name>)"
            )));
        }
        if !select.contains(&e.as_str()) {
            select.push(e);
        }
    }
    Ok(select.join(","))
}

// ---------------------------------------------------------------------------------------------
// Answers.

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn first_item(page: &Value) -> Option<&Value> {
    page.get("value")?.as_array()?.first()
}

fn parse_user(v: &Value, extensions: &[String]) -> Result<GraphUser, GraphError> {
    let id = text(v, "id")
        .ok_or_else(|| GraphError::BadRequest("Graph returned a user without an id".into()))?;
    let mut ext = BTreeMap::new();
    for name in extensions {
        let value = match v.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        };
        if let Some(value) = value {
            ext.insert(name.clone(), value);
        }
    }
    Ok(GraphUser {
        user_principal_name: text(v, "userPrincipalName").unwrap_or_default(),
        mail: text(v, "mail").filter(|m| !m.is_empty()),
        display_name: text(v, "displayName"),
        department: text(v, "department"),
        country: text(v, "country"),
        company_name: text(v, "companyName"),
        job_title: text(v, "jobTitle"),
        office_location: text(v, "officeLocation"),
        employee_type: text(v, "employeeType"),
        account_enabled: v
            .get("accountEnabled")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        user_type: text(v, "userType"),
        on_premises_immutable_id: text(v, "onPremisesImmutableId"),
        extensions: ext,
        id,
    })
}

/// A group and its kind, from `groupTypes`, `mailEnabled` and `securityEnabled`.
fn parse_group(v: &Value) -> Option<GraphGroup> {
    let unified = v
        .get("groupTypes")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().any(|x| x.as_str() == Some("Unified")));
    let mail = v.get("mailEnabled").and_then(Value::as_bool);
    let security = v.get("securityEnabled").and_then(Value::as_bool);
    let kind = if unified {
        "microsoft365"
    } else {
        match (mail, security) {
            (Some(true), Some(true)) => "mail_enabled_security",
            (Some(true), _) => "distribution",
            _ => "security",
        }
    };
    Some(GraphGroup {
        id: text(v, "id")?,
        display_name: text(v, "displayName"),
        kind: kind.into(),
    })
}

/// `{"error":{"code","message"}}` (§2): (code, message), empty when absent.
fn graph_error_body(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    (
        e["code"].as_str().unwrap_or("").to_string(),
        e["message"].as_str().unwrap_or("").to_string(),
    )
}

fn parse_token(body: &[u8]) -> Result<(AccessToken, Duration), GraphError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        GraphError::Unavailable("the token endpoint returned an unreadable answer".into())
    })?;
    let token = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            GraphError::Unavailable("the token endpoint returned no access_token".into())
        })?;
    let secs = match &v["expires_in"] {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|s| s.is_finite() && *s > 0.0)
    .unwrap_or(300.0)
    .min(86_400.0);
    Ok((
        AccessToken(token.to_string()),
        Duration::from_secs_f64(secs),
    ))
}

/// The identity platform's refusal (§1) as an operator hint; reacts to `error_codes`, then
/// to `error`, never to the description's wording.
fn token_error(status: reqwest::StatusCode, body: &[u8], s: &GraphSettings) -> GraphError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = v["error"].as_str().unwrap_or("").to_string();
    let number = v["error_codes"]
        .as_array()
        .and_then(|c| c.first())
        .and_then(Value::as_i64);
    let code = match number {
        Some(n) => format!("AADSTS{n}"),
        None if !error.is_empty() => error.clone(),
        None => format!("HTTP {}", status.as_u16()),
    };
    let first_line = v["error_description"]
        .as_str()
        .and_then(|d| d.lines().next())
        .unwrap_or("")
        .to_string();
    let hint = match (number, error.as_str()) {
        (Some(90002), _) | (None, "invalid_tenant") => format!(
            "tenant {:?} was not found at {}: check tenant_id (the Directory (tenant) ID on the app registration's overview page) and that authority_url is the tenant's cloud",
            s.tenant_id, s.authority_url
        ),
        (Some(900023), _) => format!(
            "tenant_id {:?} is neither a tenant GUID nor a valid domain name",
            s.tenant_id
        ),
        (Some(700016), _) | (None, "unauthorized_client") => format!(
            "no application with client_id {} exists in tenant {}: use the Application (client) ID from the app registration's overview page, registered in this tenant",
            s.client_id, s.tenant_id
        ),
        (Some(7000215), _) => "the client secret is wrong: send the secret's Value (shown once when it was created), not its Secret ID; create a new secret if the value is lost".into(),
        (Some(7000222), _) => "the client secret has expired: create a new secret under Certificates & secrets and PUT it to /api/v1/admin/azure".into(),
        (Some(1002012), _) | (None, "invalid_scope") => format!(
            "the scope {}/.default was refused: check that graph_url is the Microsoft Graph root of the tenant's cloud",
            s.graph_url.trim_end_matches('/')
        ),
        (None, "invalid_client") => "the client credentials were refused: check client_id and client_secret".into(),
        (None, "") => format!(
            "{} answered HTTP {} without an identity-platform error: check authority_url (the token host of the tenant's cloud, e.g. {DEFAULT_AUTHORITY_URL})",
            s.authority_url,
            status.as_u16()
        ),
        _ => "the identity platform refused the token request".into(),
    };
    let message = if first_line.is_empty() {
        hint
    } else {
        format!("{hint} (identity platform: {first_line})")
    };
    GraphError::Auth { code, message }
}

// ---------------------------------------------------------------------------------------------
// One client per organization.

#[derive(Debug, thiserror::Error)]
pub enum GraphClientsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored secret does not open with this master key (a replica with another key, or
    /// a tampered row): the admin has to PUT the configuration again.
    #[error("the stored Azure client secret cannot be decrypted with this master key")]
    Secret,
}

/// The organizations' Graph clients, built from their `azure_config` rows: a client lives as
/// long as its row is unchanged, so its token is reused across requests and activations.
pub struct GraphClients {
    store: Store,
    master: Arc<MasterKey>,
    http: reqwest::Client,
    max_retries: u32,
    clients: std::sync::Mutex<HashMap<String, (AzureConfigRow, Arc<GraphClient>)>>,
}

impl std::fmt::Debug for GraphClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClients").finish_non_exhaustive()
    }
}

impl GraphClients {
    pub fn new(
        store: Store,
        master: Arc<MasterKey>,
        http: reqwest::Client,
        max_retries: u32,
    ) -> GraphClients {
        GraphClients {
            store,
            master,
            http,
            max_retries,
            clients: std::sync::Mutex::default(),
        }
    }

    /// An HTTP client suited to Graph (short connect timeout; per-call deadlines are the
    /// callers').
    pub fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("an HTTP client with default settings")
    }

    /// The organization's client; `None` while it has no Azure configuration.
    pub async fn get(&self, org_id: &str) -> Result<Option<Arc<GraphClient>>, GraphClientsError> {
        Ok(self.get_with_config(org_id).await?.map(|(c, _)| c))
    }

    /// `get`, with the configuration row it was built from (`allow_guests`, ...).
    pub async fn get_with_config(
        &self,
        org_id: &str,
    ) -> Result<Option<(Arc<GraphClient>, AzureConfigRow)>, GraphClientsError> {
        let Some(row) = self.store.azure_config(org_id).await? else {
            self.lock().remove(org_id);
            return Ok(None);
        };
        if let Some((cached, client)) = self.lock().get(org_id)
            && *cached == row
        {
            return Ok(Some((client.clone(), row)));
        }
        let secret = self
            .master
            .open(&azure_secret_aad(org_id), &row.client_secret_enc)
            .map_err(|_| GraphClientsError::Secret)?;
        let secret = String::from_utf8(secret).map_err(|_| GraphClientsError::Secret)?;
        let client = Arc::new(
            GraphClient::new(
                GraphSettings {
                    tenant_id: row.tenant_id.clone(),
                    client_id: row.client_id.clone(),
                    client_secret: secret,
                    authority_url: row.authority_url.clone(),
                    graph_url: row.graph_url.clone(),
                },
                self.http.clone(),
            )
            .with_max_retries(self.max_retries),
        );
        let mut clients = self.lock();
        // A concurrent caller may have built one for the same row: keep the first.
        if let Some((cached, existing)) = clients.get(org_id)
            && *cached == row
        {
            return Ok(Some((existing.clone(), row)));
        }
        clients.insert(org_id.to_string(), (row.clone(), client.clone()));
        Ok(Some((client, row)))
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (AzureConfigRow, Arc<GraphClient>)>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

mod sync;
pub use sync::{DeltaPage, Removed, UserPage};

#[cfg(test)]
mod tests;
