//! The service's end of one connector channel: after the HTTP layer authenticated the
//! connector and upgraded the connection, `serve` sends the welcome, waits for the hello,
//! records the session (so every replica can find it), then relays requests and answers,
//! pings every heartbeat interval, closes the channel when nothing was heard for the
//! heartbeat window or when the connector's credential changed (re-registered, retired),
//! and removes the session on the way out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::hub::{Hub, Link};
use crate::connector::proto::{ConnectorMessage, ServerMessage};
use crate::store::{ConnectorRow, ConnectorSessionRow, new_id};

pub struct Accepted {
    pub connector: ConnectorRow,
    pub credential_hash: String,
    pub remote_addr: Option<String>,
}

fn reason(code: CloseCode, text: &str) -> Option<CloseReason> {
    Some(CloseReason {
        code,
        description: Some(text.to_string()),
    })
}

pub async fn serve(
    hub: Arc<Hub>,
    accepted: Accepted,
    mut session: Session,
    stream: actix_ws::MessageStream,
) {
    let s = hub.settings().clone();
    let mut stream = stream
        .max_frame_size(s.max_response_bytes as usize + 4096)
        .aggregate_continuations()
        .max_continuation_size(s.max_response_bytes as usize + 4096);
    let c = &accepted.connector;
    let welcome = ServerMessage::Welcome {
        connector_id: c.id.clone(),
        heartbeat_secs: s.heartbeat_interval.as_secs().max(1),
        max_in_flight: s.max_in_flight as u32,
        max_response_bytes: s.max_response_bytes,
    };
    if session.text(json(&welcome)).await.is_err() {
        return;
    }
    // The connector introduces itself next.
    let hello = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
    let (version, kind) = match hello {
        Ok(Some(Ok(AggregatedMessage::Text(t)))) => match serde_json::from_str(&t) {
            Ok(ConnectorMessage::Hello {
                version,
                directory_kind,
            }) => (version, directory_kind),
            _ => {
                let _ = session
                    .close(reason(CloseCode::Protocol, "expected hello"))
                    .await;
                return;
            }
        },
        _ => {
            let _ = session
                .close(reason(CloseCode::Protocol, "no hello within 10 s"))
                .await;
            return;
        }
    };
    let now = hub.now();
    let row = ConnectorSessionRow {
        connector_id: c.id.clone(),
        org_id: c.org_id.clone(),
        session_id: new_id(),
        replica_id: hub.replica_id().to_string(),
        forward_url: hub.forward_url(),
        credential_hash: accepted.credential_hash.clone(),
        connected_at: now,
        last_seen_at: now,
        in_flight: 0,
        remote_addr: accepted.remote_addr.clone(),
        version: Some(version.clone()),
        directory_kind: Some(kind.as_str().to_string()),
    };
    if let Err(e) = hub.store().upsert_connector_session(&row).await {
        tracing::error!(error = %e, "cannot record the connector session");
        let _ = session
            .close(reason(
                CloseCode::Again,
                "the service cannot record the session; retry",
            ))
            .await;
        return;
    }
    let (out_tx, mut out_rx) = mpsc::channel::<ServerMessage>(1024);
    let link = Arc::new(Link::new(
        c.id.clone(),
        c.org_id.clone(),
        row.session_id.clone(),
        out_tx,
    ));
    hub.attach(link.clone());
    tracing::info!(connector_id = %c.id, org_id = %c.org_id, %version, kind = kind.as_str(), "connector connected");

    let mut last_heard = Instant::now();
    let mut ticker = tokio::time::interval(s.heartbeat_interval);
    ticker.tick().await;
    let why: Option<CloseReason> = loop {
        tokio::select! {
            m = stream.next() => {
                last_heard = Instant::now();
                match m {
                    None => break None,
                    Some(Err(e)) => {
                        tracing::warn!(connector_id = %c.id, error = %e, "connector channel protocol error");
                        break reason(CloseCode::Size, &format!("protocol error: {e}"));
                    }
                    Some(Ok(AggregatedMessage::Text(t))) => match serde_json::from_str::<ConnectorMessage>(&t) {
                        Ok(ConnectorMessage::Response { id, outcome }) => link.deliver(id, outcome),
                        Ok(ConnectorMessage::Ping) => {
                            if session.text(json(&ServerMessage::Pong)).await.is_err() { break None; }
                        }
                        Ok(ConnectorMessage::Pong | ConnectorMessage::Hello { .. }) => {}
                        Err(e) => {
                            tracing::warn!(connector_id = %c.id, error = %e, "unreadable message from connector");
                            break reason(CloseCode::Invalid, "unreadable message");
                        }
                    },
                    Some(Ok(AggregatedMessage::Ping(b))) => {
                        if session.pong(&b).await.is_err() { break None; }
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Binary(_))) => break reason(CloseCode::Unsupported, "binary frames are not part of the protocol"),
                    Some(Ok(AggregatedMessage::Close(_))) => break None,
                }
            }
            out = out_rx.recv() => {
                let Some(out) = out else { break None };
                if session.text(json(&out)).await.is_err() { break None; }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > s.heartbeat_window {
                    tracing::warn!(connector_id = %c.id, "connector missed its heartbeat window");
                    break reason(CloseCode::Away, "heartbeat missed");
                }
                if session.text(json(&ServerMessage::Ping)).await.is_err() { break None; }
                match hub.store().touch_connector_session(&c.id, &row.session_id, hub.now(), link.in_flight() as i64).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(connector_id = %c.id, "connector session superseded, re-registered or retired");
                        break reason(CloseCode::Policy, "session superseded or credential retired");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot refresh the connector session"),
                }
            }
            _ = link.closed() => break reason(CloseCode::Policy, "replaced by a newer session"),
        }
    };
    hub.detach(&link);
    link.close();
    if let Err(e) = hub
        .store()
        .remove_connector_session(&c.id, &row.session_id)
        .await
    {
        tracing::warn!(error = %e, "cannot remove the connector session");
    }
    tracing::info!(connector_id = %c.id, "connector disconnected");
    let _ = session.close(why).await;
}

fn json(m: &ServerMessage) -> String {
    serde_json::to_string(m).unwrap_or_default()
}
