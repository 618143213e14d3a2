//! Failed activation attempts are recorded off the request path: queued and written in batches,
//! so a flood of bad requests costs one write transaction per batch, not one per request.
//! Successful activations are recorded inside their own transaction instead (atomic with the
//! binding). The queue is bounded; when it is full a sender waits at most `SEND_WAIT` (some
//! back-pressure on a flood of failures), then the record is dropped and counted (`dropped`,
//! shown on `/readyz` and logged), so no request ever blocks without bound on the audit trail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{ActivationRecord, Store};

const QUEUE: usize = 8192;
const BATCH: usize = 512;
const SEND_WAIT: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct AuditSink {
    tx: mpsc::Sender<ActivationRecord>,
    dropped: Arc<AtomicU64>,
}

impl AuditSink {
    /// Starts the writer task; it ends after every sender is dropped and the queue is drained.
    pub fn start(store: Store) -> (AuditSink, tokio::task::JoinHandle<()>) {
        Self::start_with(store, QUEUE)
    }

    /// `start` with a queue of `capacity` records (tests use a tiny one).
    pub fn start_with(store: Store, capacity: usize) -> (AuditSink, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<ActivationRecord>(capacity.max(1));
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
        (
            AuditSink {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            handle,
        )
    }

    pub async fn record(&self, r: ActivationRecord) {
        match tokio::time::timeout(SEND_WAIT, self.tx.send(r)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => self.drop_one("the audit writer has stopped"),
            Err(_) => self.drop_one("the audit queue is full"),
        }
    }

    fn drop_one(&self, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(
            dropped_total = n,
            "failed-activation audit record dropped: {why}"
        );
    }

    /// Failed-attempt records dropped since start (a full queue or a stopped writer).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
