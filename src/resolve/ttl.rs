//! A small map whose entries count for a fixed time: what the resolvers and the pipeline keep
//! briefly per organization (mappings, Graph client and configuration, user look-ups, the
//! network phase's org/token pre-check). Bounded: when full it starts over.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct TtlMap<K, V> {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlMap<K, V> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        TtlMap {
            ttl,
            max,
            map: Mutex::default(),
        }
    }

    /// The value stored under `key` less than the TTL ago.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if self.ttl.is_zero() {
            return None;
        }
        let map = self.map.lock().unwrap();
        let (at, v) = map.get(key)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    pub fn insert(&self, key: K, v: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap();
        if map.len() >= self.max {
            map.clear();
        }
        map.insert(key, (Instant::now(), v));
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.lock().unwrap().remove(key);
    }

    pub fn retain(&self, mut keep: impl FnMut(&K) -> bool) {
        self.map.lock().unwrap().retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_a_zero_ttl_keeps_nothing() {
        let m: TtlMap<String, u32> = TtlMap::new(Duration::from_millis(50), 2);
        m.insert("a".into(), 1);
        assert_eq!(m.get("a"), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(m.get("a"), None);
        m.insert("a".into(), 1);
        m.insert("b".into(), 2);
        m.insert("c".into(), 3);
        assert_eq!(m.get("a"), None, "full: started over");
        assert_eq!(m.get("c"), Some(3));
        let off: TtlMap<String, u32> = TtlMap::new(Duration::ZERO, 2);
        off.insert("a".into(), 1);
        assert_eq!(off.get("a"), None);
    }
}
