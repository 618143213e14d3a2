//! Failed activation attempts are recorded off the request path: queued and written in batches,
//! so a flood of bad requests costs one write transaction per batch, not one per request.
//! Successful activations are recorded inside their own transaction instead (atomic with the
//! binding). The queue is bounded; when it is full, senders wait (back-pressure), nothing is dropped.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{ActivationRecord, Store};

const QUEUE: usize = 8192;
const BATCH: usize = 512;

#[derive(Clone, Debug)]
pub struct AuditSink {
    tx: mpsc::Sender<ActivationRecord>,
}

impl AuditSink {
    /// Starts the writer task; it ends after every sender is dropped and the queue is drained.
    pub fn start(store: Store) -> (AuditSink, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<ActivationRecord>(QUEUE);
        let handle = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let mut delay = Duration::from_millis(50);
                // Retry until written: while the database is unavailable the queue fills and
                // senders wait, which slows failing clients down instead of losing their records.
                while let Err(e) = store.insert_activation_records(batch.clone()).await {
                    tracing::warn!(error = %e, records = batch.len(), "writing activation audit records failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                batch.clear();
            }
        });
        (AuditSink { tx }, handle)
    }

    pub async fn record(&self, r: ActivationRecord) {
        if self.tx.send(r).await.is_err() {
            tracing::error!("activation audit writer has stopped; record lost");
        }
    }
}
