//! Time is a parameter: request handlers read the clock once and pass `now` (unix seconds) down.
//! Tests swap in a clock they can move forward; nothing below the HTTP layer reads the time itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> i64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// The system clock shifted by an adjustable offset (tests use it to age tokens).
#[derive(Debug, Default, Clone)]
pub struct OffsetClock(Arc<AtomicI64>);

impl OffsetClock {
    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> i64 {
        SystemClock.now() + self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 rendering of unix seconds for API responses.
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .map(|d| d.unix_timestamp())
        .map_err(|_| format!("{s:?} is not an RFC 3339 date-time (e.g. 2027-01-31T12:00:00Z)"))
}

/// serde helpers so stored unix seconds serialize as RFC 3339.
pub mod ser {
    use serde::Serializer;

    /// How a timestamp field serialized with [`ts`] / [`ts_opt`] looks in the API description
    /// (`#[schemars(with = "crate::clock::ser::Timestamp")]`): an RFC 3339 string.
    pub struct Timestamp;

    impl schemars::JsonSchema for Timestamp {
        fn schema_name() -> std::borrow::Cow<'static, str> {
            "Timestamp".into()
        }

        fn inline_schema() -> bool {
            true
        }

        fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({"type": "string", "format": "date-time"})
        }
    }

    pub fn ts<S: Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*t))
    }

    pub fn ts_opt<S: Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::rfc3339(*t)),
            None => s.serialize_none(),
        }
    }
}
