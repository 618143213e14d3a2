//! Failed activation attempts are recorded off the request path: queued and written in batches,
//! so a flood of bad requests costs one write transaction per batch, not one per request.
//! Successful activations are recorded inside their own transaction instead (atomic with the
//! binding). The queue is bounded; when it is full a sender waits at most `SEND_WAIT` (some
//! back-pressure on a flood of failures), then the record is dropped and counted (`dropped`,
//! shown on `/readyz` and logged), so no request ever blocks without bound on the audit trail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{ActivationRecord, Store};

const QUEUE: usize = 8192;
const BATCH: usize = 512;
const SEND_WAIT: Duration = Duration::from_millis(250);

/// Tells the writer task to finish: write what is queued, then end (shutdown, after the last
/// request is answered).
pub struct AuditStop(oneshot::Sender<()>);

impl AuditStop {
    pub fn stop(self) {
        let _ = self.0.send(());
    }
}

#[derive(Clone, Debug)]
pub struct AuditSink {
    tx: mpsc::Sender<ActivationRecord>,
    dropped: Arc<AtomicU64>,
}

impl AuditSink {
    /// Starts the writer task; it ends after every sender is dropped or `AuditStop::stop`, once
    /// the queue is drained.
    pub fn start(store: Store) -> (AuditSink, AuditStop, tokio::task::JoinHandle<()>) {
        Self::start_with(store, QUEUE)
    }

    /// `start` with a queue of `capacity` records (tests use a tiny one).
    pub fn start_with(
        store: Store,
        capacity: usize,
    ) -> (AuditSink, AuditStop, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<ActivationRecord>(capacity.max(1));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            // A dropped `AuditStop` is not a stop: the task then ends with its senders.
            let stop = async move {
                if stop_rx.await.is_err() {
                    std::future::pending::<()>().await
                }
            };
            tokio::pin!(stop);
            let mut batch = Vec::with_capacity(BATCH);
            let mut stopping = false;
            loop {
                let n = tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => n,
                    _ = &mut stop, if !stopping => {
                        // No more records are taken; those queued are still written.
                        rx.close();
                        stopping = true;
                        continue;
                    }
                };
                if n == 0 {
                    break;
                }
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
            AuditStop(stop_tx),
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

    /// Records queued and not yet taken by the writer task.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Failed-attempt records dropped since start (a full queue or a stopped writer).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
