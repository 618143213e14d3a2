//! The hub: every connector channel this replica holds (`Link`), and `Hub::call`, which sends
//! one operation to a connector of the organization and waits for its answer within the
//! deadline. Local channels are preferred (least in flight first); otherwise the call is
//! forwarded over HTTP to the replica that holds a live channel (its `connector_sessions`
//! row names it), signed with a key derived from the master key all replicas share. A call
//! whose connector drops mid-flight is retried once on another connector.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::connector::proto::{OpError, OpResult, Operation, Outcome, ServerMessage};
use crate::store::{ConnectorSessionRow, Store};

#[derive(Debug, Clone)]
pub struct HubSettings {
    pub heartbeat_interval: Duration,
    pub heartbeat_window: Duration,
    pub request_timeout: Duration,
    pub max_in_flight: usize,
    pub max_response_bytes: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No connector connected, none answered in time, or every one dropped: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The connector answered with an error of the directory's.
    #[error("{}", .0.message)]
    Directory(OpError),
}

/// Why one attempt on one channel failed.
#[derive(Debug)]
enum AttemptError {
    /// The channel went away before the answer: another connector may still answer.
    Dropped,
    Timeout,
}

/// One live channel to a connector, held by this replica.
pub struct Link {
    pub connector_id: String,
    pub org_id: String,
    pub session_id: String,
    out: mpsc::Sender<ServerMessage>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    in_flight: AtomicUsize,
    next_id: AtomicU64,
    closed: AtomicBool,
    close_notify: Notify,
}

impl Link {
    pub fn new(
        connector_id: String,
        org_id: String,
        session_id: String,
        out: mpsc::Sender<ServerMessage>,
    ) -> Link {
        Link {
            connector_id,
            org_id,
            session_id,
            out,
            pending: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            close_notify: Notify::new(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Marks the link closed and fails every call waiting on it (they may fail over).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.pending.lock().unwrap().clear();
        self.close_notify.notify_waiters();
        self.close_notify.notify_one();
    }

    pub async fn closed(&self) {
        if self.is_closed() {
            return;
        }
        self.close_notify.notified().await;
    }

    /// An answer from the connector; unknown ids (answered after the deadline) are dropped.
    pub fn deliver(&self, id: u64, outcome: Outcome) {
        if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
            let _ = tx.send(outcome);
        }
    }

    async fn call(&self, op: &Operation, deadline: Instant) -> Result<Outcome, AttemptError> {
        if self.is_closed() {
            return Err(AttemptError::Dropped);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        struct Done<'a>(&'a Link, u64);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
                self.0.pending.lock().unwrap().remove(&self.1);
            }
        }
        let _done = Done(self, id);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let msg = ServerMessage::Request {
            id,
            deadline_ms: remaining.as_millis().max(1) as u64,
            op: op.clone(),
        };
        if self.out.send(msg).await.is_err() {
            return Err(AttemptError::Dropped);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(AttemptError::Dropped),
            Err(_) => {
                let _ = self.out.try_send(ServerMessage::Cancel { id });
                Err(AttemptError::Timeout)
            }
        }
    }
}

/// A call another replica forwards to the one holding the channel.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub org_id: String,
    pub connector_id: String,
    pub deadline_ms: u64,
    pub op: Operation,
}

#[allow(clippy::large_enum_variant)] // one per forwarded call, serialized at once
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ForwardResponse {
    Answered {
        outcome: Outcome,
    },
    /// The channel is gone from this replica (or dropped mid-call): try another connector.
    Dropped,
    Timeout,
}

pub const FORWARD_PATH: &str = "/api/v1/internal/connector-calls";
pub const FORWARD_TIME_HEADER: &str = "x-imd-cluster-time";
pub const FORWARD_SIGNATURE_HEADER: &str = "x-imd-cluster-signature";
/// How far apart two replicas' clocks (plus transit) may be for a forwarded call.
const FORWARD_SKEW_SECS: i64 = 60;

enum Target {
    Local(Arc<Link>),
    Remote(Box<ConnectorSessionRow>),
}

pub struct Hub {
    store: Store,
    clock: Arc<dyn Clock>,
    replica_id: String,
    settings: HubSettings,
    links: Mutex<HashMap<String, Vec<Arc<Link>>>>,
    forward_url: RwLock<String>,
    cluster_key: hmac::Key,
    http: reqwest::Client,
}

impl Hub {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        replica_id: String,
        settings: HubSettings,
        cluster_key: hmac::Key,
    ) -> Hub {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("an HTTP client with default settings");
        Hub {
            store,
            clock,
            replica_id,
            settings,
            links: Mutex::default(),
            forward_url: RwLock::new(String::new()),
            cluster_key,
            http,
        }
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Where other replicas reach this one (known once the listener is bound).
    pub fn set_forward_url(&self, url: String) {
        *self.forward_url.write().unwrap() = url.trim_end_matches('/').to_string();
    }

    pub fn forward_url(&self) -> String {
        self.forward_url.read().unwrap().clone()
    }

    /// Live channels on this replica (every organization).
    pub fn channel_count(&self) -> usize {
        self.links.lock().unwrap().values().map(Vec::len).sum()
    }

    /// Closes every channel on this replica (shutdown: connectors reconnect to another one).
    pub fn close_all(&self) {
        for l in self.links.lock().unwrap().values().flatten() {
            l.close();
        }
    }

    /// Adds a channel; a previous channel of the same connector on this replica is closed.
    pub fn attach(&self, link: Arc<Link>) {
        let mut links = self.links.lock().unwrap();
        let list = links.entry(link.org_id.clone()).or_default();
        list.retain(|l| {
            let same = l.connector_id == link.connector_id;
            if same {
                l.close();
            }
            !same
        });
        list.push(link);
    }

    pub fn detach(&self, link: &Link) {
        let mut links = self.links.lock().unwrap();
        if let Some(list) = links.get_mut(&link.org_id) {
            list.retain(|l| l.session_id != link.session_id);
            if list.is_empty() {
                links.remove(&link.org_id);
            }
        }
    }

    /// Closes this replica's channels of a connector (retired, re-registered).
    pub fn disconnect(&self, org_id: &str, connector_id: &str) {
        if let Some(list) = self.links.lock().unwrap().get(org_id) {
            for l in list.iter().filter(|l| l.connector_id == connector_id) {
                l.close();
            }
        }
    }

    /// This replica's live channels of an organization: (connector id, in flight).
    pub fn local_in_flight(&self, org_id: &str) -> Vec<(String, usize)> {
        self.links
            .lock()
            .unwrap()
            .get(org_id)
            .map(|l| {
                l.iter()
                    .map(|l| (l.connector_id.clone(), l.in_flight()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn local(&self, org_id: &str, exclude: &[String], prefer: Option<&str>) -> Option<Arc<Link>> {
        let links = self.links.lock().unwrap();
        let list = links.get(org_id)?;
        let usable = list.iter().filter(|l| {
            !l.is_closed()
                && !exclude.contains(&l.connector_id)
                && l.in_flight() < self.settings.max_in_flight
        });
        if let Some(p) = prefer
            && let Some(l) = usable.clone().find(|l| l.connector_id == p)
        {
            return Some(l.clone());
        }
        usable.min_by_key(|l| l.in_flight()).cloned()
    }

    async fn pick(
        &self,
        org_id: &str,
        exclude: &[String],
        prefer: Option<&str>,
    ) -> Result<Option<Target>, CallError> {
        let local = self.local(org_id, exclude, prefer);
        if let Some(l) = &local
            && (prefer.is_none() || prefer == Some(l.connector_id.as_str()))
        {
            return Ok(Some(Target::Local(l.clone())));
        }
        let since = self.clock.now() - self.settings.heartbeat_window.as_secs() as i64;
        let sessions = self
            .store
            .connector_sessions(org_id, since)
            .await
            .map_err(|e| CallError::Unavailable(format!("connector sessions unreadable: {e}")))?;
        let remote = sessions
            .into_iter()
            .filter(|s| s.replica_id != self.replica_id && !exclude.contains(&s.connector_id))
            .filter(|s| !s.forward_url.is_empty())
            .min_by_key(|s| (Some(s.connector_id.as_str()) != prefer, s.in_flight));
        Ok(match (remote, local) {
            (Some(r), _) if prefer == Some(r.connector_id.as_str()) => {
                Some(Target::Remote(Box::new(r)))
            }
            (_, Some(l)) => Some(Target::Local(l)),
            (r, None) => r.map(|r| Target::Remote(Box::new(r))),
        })
    }

    /// Sends `op` to a connector of the organization and waits until `deadline`.
    #[tracing::instrument(skip_all, fields(org_id, op = op.name()))]
    pub async fn call(
        &self,
        org_id: &str,
        op: Operation,
        deadline: Instant,
    ) -> Result<OpResult, CallError> {
        self.call_via(org_id, None, op, deadline)
            .await
            .map(|(r, _)| r)
    }

    /// `call`, preferring one connector (a paging cursor lives on the connector that issued
    /// it); answers which connector answered.
    pub async fn call_via(
        &self,
        org_id: &str,
        prefer: Option<&str>,
        op: Operation,
        deadline: Instant,
    ) -> Result<(OpResult, String), CallError> {
        let mut exclude: Vec<String> = Vec::new();
        // The first attempt, and one more on another connector if the first one dropped.
        for attempt in 0..2 {
            let Some(target) = self.pick(org_id, &exclude, prefer).await? else {
                let busy = self.links.lock().unwrap().get(org_id).is_some_and(|l| {
                    l.iter()
                        .any(|l| !l.is_closed() && l.in_flight() >= self.settings.max_in_flight)
                });
                return Err(CallError::Unavailable(if busy {
                    format!(
                        "every connected connector already has {} requests in flight",
                        self.settings.max_in_flight
                    )
                } else if attempt == 0 {
                    "no connector of this organization is connected".into()
                } else {
                    "the connector handling the request disconnected and no other connector is connected".into()
                }));
            };
            let (connector, result) = match target {
                Target::Local(link) => (link.connector_id.clone(), link.call(&op, deadline).await),
                Target::Remote(s) => (
                    s.connector_id.clone(),
                    self.forward(&s, &op, deadline).await,
                ),
            };
            match result {
                Ok(outcome) => return into_result(outcome).map(|r| (r, connector)),
                Err(AttemptError::Dropped) => {
                    tracing::warn!(connector_id = %connector, "connector dropped mid-request; failing over");
                    exclude.push(connector);
                }
                Err(AttemptError::Timeout) => {
                    return Err(CallError::Unavailable(
                        "the connector did not answer within the deadline".into(),
                    ));
                }
            }
        }
        Err(CallError::Unavailable(
            "the connectors handling the request disconnected".into(),
        ))
    }

    /// A call forwarded by another replica: answered by this replica's channels only.
    pub async fn call_forwarded(&self, req: ForwardRequest) -> ForwardResponse {
        let deadline = Instant::now() + Duration::from_millis(req.deadline_ms.min(600_000));
        let Some(link) = self.local(&req.org_id, &[], Some(&req.connector_id)) else {
            return ForwardResponse::Dropped;
        };
        match link.call(&req.op, deadline).await {
            Ok(outcome) => ForwardResponse::Answered { outcome },
            Err(AttemptError::Dropped) => ForwardResponse::Dropped,
            Err(AttemptError::Timeout) => ForwardResponse::Timeout,
        }
    }

    async fn forward(
        &self,
        s: &ConnectorSessionRow,
        op: &Operation,
        deadline: Instant,
    ) -> Result<Outcome, AttemptError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let body = serde_json::to_vec(&ForwardRequest {
            org_id: s.org_id.clone(),
            connector_id: s.connector_id.clone(),
            deadline_ms: remaining.as_millis() as u64,
            op: op.clone(),
        })
        .map_err(|_| AttemptError::Dropped)?;
        let now = self.clock.now();
        let sig = self.sign(now, &body);
        let req = self
            .http
            .post(format!("{}{FORWARD_PATH}", s.forward_url))
            .header(FORWARD_TIME_HEADER, now.to_string())
            .header(FORWARD_SIGNATURE_HEADER, sig)
            .header("content-type", "application/json")
            .timeout(remaining + Duration::from_millis(500))
            .body(body);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() && !e.is_connect() => return Err(AttemptError::Timeout),
            Err(e) => {
                tracing::warn!(replica = %s.replica_id, error = %e, "replica holding the connector unreachable");
                return Err(AttemptError::Dropped);
            }
        };
        if !resp.status().is_success() {
            tracing::warn!(replica = %s.replica_id, status = %resp.status(), "forwarded connector call refused");
            return Err(AttemptError::Dropped);
        }
        match resp.json::<ForwardResponse>().await {
            Ok(ForwardResponse::Answered { outcome }) => Ok(outcome),
            Ok(ForwardResponse::Timeout) => Err(AttemptError::Timeout),
            Ok(ForwardResponse::Dropped) | Err(_) => Err(AttemptError::Dropped),
        }
    }

    fn sign(&self, time: i64, body: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.cluster_key);
        ctx.update(time.to_string().as_bytes());
        ctx.update(b"\n");
        ctx.update(body);
        hex::encode(ctx.sign().as_ref())
    }

    /// Checks a forwarded call's signature (constant time) and age.
    pub fn verify_forward(&self, time: &str, signature: &str, body: &[u8]) -> bool {
        let Ok(t) = time.parse::<i64>() else {
            return false;
        };
        if (self.clock.now() - t).abs() > FORWARD_SKEW_SECS {
            return false;
        }
        let Ok(sig) = hex::decode(signature) else {
            return false;
        };
        let mut msg = Vec::with_capacity(body.len() + 24);
        msg.extend_from_slice(time.as_bytes());
        msg.push(b'\n');
        msg.extend_from_slice(body);
        hmac::verify(&self.cluster_key, &msg, &sig).is_ok()
    }
}

fn into_result(outcome: Outcome) -> Result<OpResult, CallError> {
    match outcome {
        Outcome::Ok { result } => Ok(result),
        Outcome::Err { error } => Err(CallError::Directory(error)),
    }
}
