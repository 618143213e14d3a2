//! Per-client-address limit on *failed* activations. Thousands of legitimate machines may share
//! one NAT address, so successes are never limited; a client that keeps failing (guessing
//! identifiers, a broken script in a loop) is slowed down with 429 and Retry-After.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

const WINDOW: i64 = 60;
const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
pub struct FailureLimiter {
    per_window: u64,
    state: Mutex<HashMap<IpAddr, (i64, u64)>>,
}

impl FailureLimiter {
    pub fn new(per_minute: u64) -> Self {
        FailureLimiter {
            per_window: per_minute,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds)` when this address has used up its failures for the current window.
    pub fn check(&self, ip: IpAddr, now: i64) -> Result<(), u64> {
        if self.per_window == 0 {
            return Ok(());
        }
        let window = now - now.rem_euclid(WINDOW);
        let state = self.state.lock().expect("limiter lock");
        match state.get(&ip) {
            Some((w, n)) if *w == window && *n >= self.per_window => {
                Err((window + WINDOW - now).max(1) as u64)
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, ip: IpAddr, now: i64) {
        if self.per_window == 0 {
            return;
        }
        let window = now - now.rem_euclid(WINDOW);
        let mut state = self.state.lock().expect("limiter lock");
        if state.len() >= MAX_TRACKED {
            state.retain(|_, (w, _)| *w == window);
        }
        let e = state.entry(ip).or_insert((window, 0));
        if e.0 != window {
            *e = (window, 0);
        }
        e.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_until_the_window_ends() {
        let l = FailureLimiter::new(3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(ip, 120).is_ok());
            l.record_failure(ip, 120);
        }
        assert_eq!(l.check(ip, 130), Err(50));
        assert!(l.check(other, 130).is_ok());
        assert!(l.check(ip, 180).is_ok(), "a new window starts fresh");
    }

    #[test]
    fn zero_disables_the_limit() {
        let l = FailureLimiter::new(0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            l.record_failure(ip, 1);
        }
        assert!(l.check(ip, 1).is_ok());
    }
}
