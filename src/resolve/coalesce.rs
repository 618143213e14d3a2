//! Concurrent identical look-ups share one round trip: the first caller's future runs, later
//! callers with the same key wait for its answer; the entry goes when the answer is in. Used by
//! the network resolvers (a classroom of laptops of one user at 9:00 asks the directory once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::time::Instant;

type Entry<T> = (Instant, Shared<BoxFuture<'static, T>>);

pub struct Coalescer<T: Clone + Send + Sync + 'static> {
    inflight: Arc<Mutex<HashMap<String, Entry<T>>>>,
}

impl<T: Clone + Send + Sync + 'static> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            inflight: Arc::default(),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Coalescer<T> {
    /// `deadline` is the look-up's own: an entry whose callers all gave up (and so left it
    /// unfinished) is replaced once its deadline has passed.
    pub async fn run<F>(&self, key: String, deadline: Instant, start: F) -> T
    where
        F: FnOnce() -> BoxFuture<'static, T>,
    {
        let fut = {
            let mut map = self.inflight.lock().unwrap();
            let now = Instant::now();
            match map.get(&key).filter(|(d, _)| *d > now) {
                Some((_, f)) => f.clone(),
                None => {
                    let (map2, key2) = (self.inflight.clone(), key.clone());
                    let inner = start();
                    let f: BoxFuture<'static, T> = Box::pin(async move {
                        let r = inner.await;
                        map2.lock().unwrap().remove(&key2);
                        r
                    });
                    let f = f.shared();
                    map.insert(key, (deadline, f.clone()));
                    f
                }
            }
        };
        fut.await
    }

    /// Look-ups in flight (tests).
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().unwrap().len()
    }
}
