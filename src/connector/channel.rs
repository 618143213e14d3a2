//! The connector's end of the channel: one outbound WebSocket to the service (rustls; `ws://`
//! only to a loopback address), authenticated with the connector credential on every connect.
//! Requests are answered concurrently (up to the limit the service announces) by a `Backend`,
//! each under its own deadline; heartbeats both ways; reconnects with jittered exponential
//! backoff and resumes without admin action.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::proto::{
    self, ConnectorMessage, DirectoryKind, OpError, OpErrorCode, OpResult, Operation, Outcome,
    ServerMessage,
};

/// What answers the service's questions: the directory (`ldap::Directory`) in production.
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> DirectoryKind;
    fn execute(&self, op: Operation) -> BoxFuture<'_, Result<OpResult, OpError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}")]
    Config(String),
    /// The service refused the credential: the connector was retired or registered again.
    #[error(
        "the service refused this connector's credential ({0}); register it again with a fresh key"
    )]
    CredentialRejected(String),
    /// The service speaks another protocol version: this build cannot talk to it.
    #[error("protocol refused by the service: {0}")]
    ProtocolRefused(String),
    #[error("{0}")]
    Transport(String),
}

/// The service URL: https (or http to a loopback address only, for tests and same-host setups).
pub fn check_server_url(server: &str) -> Result<Url, ChannelError> {
    let url = Url::parse(server.trim_end_matches('/'))
        .map_err(|e| ChannelError::Config(format!("server URL {server:?}: {e}")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(ChannelError::Config(format!(
            "server URL {server}: plain http is only allowed to a loopback address; use https"
        ))),
        s => Err(ChannelError::Config(format!(
            "server URL {server}: unsupported scheme {s} (use https)"
        ))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// rustls client settings: the pinned CA when configured, the system roots otherwise.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ChannelError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    ChannelError::Config(format!("server.ca_file {}: {e}", path.display()))
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ChannelError::Config(format!("server.ca_file {}: {e}", path.display()))
                })?;
            if certs.is_empty() {
                return Err(ChannelError::Config(format!(
                    "server.ca_file {} holds no certificate",
                    path.display()
                )));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| ChannelError::Config(format!("server.ca_file: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(ChannelError::Config(
                    "no system CA certificates found; set server.ca_file".into(),
                ));
            }
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub struct ChannelOptions {
    pub server: Url,
    pub credential: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub version: String,
}

impl std::fmt::Debug for ChannelOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelOptions")
            .field("server", &self.server.as_str())
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// Backoff between connection attempts: doubling from 0.5 s to 60 s, full jitter, so that a
/// fleet of connectors coming back after an outage does not arrive at once.
pub fn backoff(attempt: u32) -> Duration {
    let cap_ms = (500u64 << attempt.min(7)).min(60_000);
    let r = (uuid::Uuid::new_v4().as_u128() % 1_000) as u64;
    Duration::from_millis(cap_ms / 2 + cap_ms / 2 * r / 1_000)
}

/// Runs until `shutdown` resolves or the service refuses this connector for good (credential
/// or protocol). Transport failures only lead to a reconnect.
pub async fn run(
    backend: Arc<dyn Backend>,
    opts: ChannelOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ChannelError> {
    tokio::pin!(shutdown);
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = connect_and_serve(backend.clone(), &opts) => r,
        };
        match result {
            Err(e @ (ChannelError::CredentialRejected(_) | ChannelError::ProtocolRefused(_))) => {
                return Err(e);
            }
            Err(e) => tracing::warn!(error = %e, "channel to the service lost"),
            Ok(()) => tracing::info!("channel closed by the service"),
        }
        // A channel that stayed up for a while was healthy: start the backoff again.
        if started.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
        let wait = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tracing::info!(wait_ms = wait.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn channel_url(server: &Url) -> Result<Url, ChannelError> {
    let mut url = server.clone();
    let scheme = if server.scheme() == "https" {
        "wss"
    } else {
        "ws"
    };
    url.set_scheme(scheme)
        .map_err(|_| ChannelError::Config("cannot derive the channel URL".into()))?;
    url.set_path(proto::CHANNEL_PATH);
    Ok(url)
}

async fn connect_and_serve(
    backend: Arc<dyn Backend>,
    opts: &ChannelOptions,
) -> Result<(), ChannelError> {
    let url = channel_url(&opts.server)?;
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ChannelError::Config(e.to_string()))?;
    let h = req.headers_mut();
    let bearer = format!("Bearer {}", opts.credential);
    h.insert(
        "authorization",
        bearer.parse().map_err(|_| {
            ChannelError::Config("the credential is not a valid header value".into())
        })?,
    );
    h.insert(proto::PROTOCOL_HEADER, proto::PROTOCOL_VERSION.into());
    if let Ok(v) = opts.version.parse() {
        h.insert(proto::VERSION_HEADER, v);
    }
    let mut ws_config = WebSocketConfig::default();
    // Requests from the service are small; a large one is a protocol error.
    ws_config.max_message_size = Some(1 << 20);
    ws_config.max_frame_size = Some(1 << 20);
    let connector = tokio_tungstenite::Connector::Rustls(opts.tls.clone());
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        req,
        Some(ws_config),
        true,
        Some(connector),
    );
    let (ws, _) = tokio::time::timeout(Duration::from_secs(20), connect)
        .await
        .map_err(|_| ChannelError::Transport("connecting timed out after 20 s".into()))?
        .map_err(refusal)?;
    let (mut sink, mut stream) = ws.split();

    // The service speaks first: its limits.
    let welcome = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .map_err(|_| ChannelError::Transport("no welcome from the service within 10 s".into()))?;
    let (heartbeat, max_in_flight, max_response) = match welcome {
        Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMessage>(&t) {
            Ok(ServerMessage::Welcome {
                connector_id,
                heartbeat_secs,
                max_in_flight,
                max_response_bytes,
            }) => {
                tracing::info!(%connector_id, "connected to the service");
                (
                    Duration::from_secs(heartbeat_secs.clamp(1, 300)),
                    max_in_flight.max(1) as usize,
                    max_response_bytes,
                )
            }
            _ => return Err(ChannelError::Transport("expected a welcome message".into())),
        },
        other => {
            return Err(ChannelError::Transport(format!(
                "channel closed before the welcome: {other:?}"
            )));
        }
    };
    let hello = ConnectorMessage::Hello {
        version: opts.version.clone(),
        directory_kind: backend.kind(),
    };
    sink.send(text(&hello)?)
        .await
        .map_err(|e| ChannelError::Transport(e.to_string()))?;

    // One writer: everything to send goes through this queue.
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(256);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let permits = Arc::new(Semaphore::new(max_in_flight));
    let running: Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>> = Arc::default();
    let last_heard = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.tick().await;
    let result = loop {
        tokio::select! {
            msg = stream.next() => {
                last_heard.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                let msg = match msg {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(ChannelError::Transport(e.to_string())),
                    Some(Ok(m)) => m,
                };
                let t = match msg {
                    Message::Text(t) => t,
                    Message::Close(_) => break Ok(()),
                    // tungstenite answers WebSocket pings itself.
                    _ => continue,
                };
                let m: ServerMessage = match serde_json::from_str(&t) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable message from the service; ignored");
                        continue;
                    }
                };
                match m {
                    ServerMessage::Request { id, deadline_ms, op } => {
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            let busy = Outcome::Err { error: OpError::new(OpErrorCode::Busy, format!("the connector already answers {max_in_flight} requests")) };
                            let _ = out_tx.send(text(&ConnectorMessage::Response { id, outcome: busy })?).await;
                            continue;
                        };
                        let (backend, out, running2) = (backend.clone(), out_tx.clone(), running.clone());
                        let deadline = Duration::from_millis(deadline_ms.clamp(1, 600_000));
                        let task = tokio::spawn(async move {
                            let _permit = permit;
                            let name = op.name();
                            let outcome = match tokio::time::timeout(deadline, backend.execute(op)).await {
                                Ok(Ok(result)) => Outcome::Ok { result },
                                Ok(Err(error)) => Outcome::Err { error },
                                Err(_) => Outcome::Err { error: OpError::new(OpErrorCode::Timeout, format!("{name} took longer than {} ms", deadline.as_millis())) },
                            };
                            let mut reply = ConnectorMessage::Response { id, outcome };
                            let mut body = serde_json::to_string(&reply).unwrap_or_default();
                            if body.len() as u64 > max_response {
                                reply = ConnectorMessage::Response { id, outcome: Outcome::Err { error: OpError::new(OpErrorCode::TooLarge, format!("the answer to {name} is {} bytes, more than the {max_response} allowed; narrow the request (smaller page, narrower base)", body.len())) } };
                                body = serde_json::to_string(&reply).unwrap_or_default();
                            }
                            let _ = out.send(Message::Text(body.into())).await;
                            running2.lock().await.remove(&id);
                        });
                        running.lock().await.insert(id, task.abort_handle());
                    }
                    ServerMessage::Cancel { id } => {
                        if let Some(h) = running.lock().await.remove(&id) {
                            h.abort();
                        }
                    }
                    ServerMessage::Ping => {
                        let _ = out_tx.send(text(&ConnectorMessage::Pong)?).await;
                    }
                    ServerMessage::Pong | ServerMessage::Welcome { .. } => {}
                }
            }
            _ = ticker.tick() => {
                let silent = epoch.elapsed().as_millis() as u64 - last_heard.load(Ordering::Relaxed);
                if silent > 3 * heartbeat.as_millis() as u64 {
                    break Err(ChannelError::Transport(format!("no message from the service for {} ms", silent)));
                }
                if out_tx.send(text(&ConnectorMessage::Ping)?).await.is_err() {
                    break Err(ChannelError::Transport("writer stopped".into()));
                }
            }
        }
    };
    for (_, h) in running.lock().await.drain() {
        h.abort();
    }
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    result
}

fn text<T: serde::Serialize>(m: &T) -> Result<Message, ChannelError> {
    serde_json::to_string(m)
        .map(|s| Message::Text(s.into()))
        .map_err(|e| ChannelError::Transport(e.to_string()))
}

/// Tells a refusal by the service (credential, protocol) apart from a transport failure, with
/// the service's own message.
fn refusal(e: tungstenite::Error) -> ChannelError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(body);
            match status {
                401 | 403 => ChannelError::CredentialRejected(message),
                400 | 426 => ChannelError::ProtocolRefused(message),
                _ => ChannelError::Transport(format!("HTTP {status}: {message}")),
            }
        }
        other => ChannelError::Transport(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_server_url("https://imd.example.com").is_ok());
        assert!(check_server_url("http://127.0.0.1:8080").is_ok());
        assert!(check_server_url("http://localhost:8080/").is_ok());
        assert!(check_server_url("http://[::1]:8080").is_ok());
        assert!(check_server_url("http://imd.example.com").is_err());
        assert!(check_server_url("ftp://imd.example.com").is_err());
    }

    #[test]
    fn channel_url_follows_the_scheme() {
        let u = channel_url(&Url::parse("https://imd.example.com/").unwrap()).unwrap();
        assert_eq!(
            u.as_str(),
            "wss://imd.example.com/api/v1/connectors/channel"
        );
        let u = channel_url(&Url::parse("http://127.0.0.1:9/").unwrap()).unwrap();
        assert_eq!(u.as_str(), "ws://127.0.0.1:9/api/v1/connectors/channel");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for a in 0..20 {
            let b = backoff(a);
            assert!(b <= Duration::from_secs(60), "{a}: {b:?}");
            assert!(b >= Duration::from_millis(250), "{a}: {b:?}");
        }
        assert!(backoff(10) >= Duration::from_secs(30));
    }
}
