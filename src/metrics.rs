//! Prometheus metrics: the process-wide registry, its text rendering and the `/metrics` handler.
//! This module owns every metric name the service exports (docs/metrics.md lists them). Counters
//! and histograms are plain atomics recorded where things happen; gauges (database pool, write
//! queues, connector channels) are read from their owners at scrape time, so nothing is kept in
//! step by hand. Label values are bounded by construction: IMD versions, error codes, resolver
//! names, route *patterns* and status codes, never user, device or organization ids.
//!
//! Hand-written rather than a client crate: the service needs counters, one histogram shape and
//! scrape-time gauges, all of it ~300 lines with no dependency, and the hot path stays one
//! read-locked map look-up plus an atomic add.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};

/// Latency buckets (seconds), shared by every histogram: 1 ms to 30 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A counter family with a fixed list of label names.
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Cells<AtomicU64>,
}

impl CounterVec {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> CounterVec {
        let values = Cells::default();
        // A family without labels is shown from the start, at 0.
        if labels.is_empty() {
            values.with(&[], || AtomicU64::new(0), |_| ());
        }
        CounterVec {
            name,
            help,
            labels,
            values,
        }
    }

    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1);
    }

    pub fn add(&self, labels: &[&str], n: u64) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        self.values.with(
            labels,
            || AtomicU64::new(0),
            |c| c.fetch_add(n, Ordering::Relaxed),
        );
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        for (values, v) in self.values.sorted() {
            let _ = writeln!(
                out,
                "{}{} {}",
                self.name,
                label_set(self.labels, &values, None),
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// One histogram's counts: one per bucket (not cumulative), the total and the sum in
/// microseconds.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// A histogram family (seconds) with a fixed list of label names.
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Cells<Histogram>,
}

impl HistogramVec {
    fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> HistogramVec {
        HistogramVec {
            name,
            help,
            labels,
            values: Cells::default(),
        }
    }

    pub fn observe(&self, labels: &[&str], d: Duration) {
        debug_assert_eq!(labels.len(), self.labels.len(), "{}", self.name);
        self.values.with(labels, Histogram::new, |h| h.observe(d));
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        for (values, h) in self.values.sorted() {
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let le = b.to_string();
                let _ = writeln!(
                    out,
                    "{}_bucket{} {cumulative}",
                    self.name,
                    label_set(self.labels, &values, Some(&le))
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let set = label_set(self.labels, &values, None);
            let _ = writeln!(
                out,
                "{}_bucket{} {count}",
                self.name,
                label_set(self.labels, &values, Some("+Inf"))
            );
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{}_sum{set} {sum}", self.name);
            let _ = writeln!(out, "{}_count{set} {count}", self.name);
        }
    }
}

/// The cells of one family, by label values. Recording hashes the borrowed label values and
/// looks them up under the read lock, so the hot path allocates nothing; the write lock is
/// taken only the first time a label set is seen.
pub struct Cells<T> {
    map: RwLock<HashMap<u64, Vec<Cell<T>>>>,
}

/// One label set's values and its counter or histogram.
type Cell<T> = (Vec<String>, Arc<T>);

impl<T> Default for Cells<T> {
    fn default() -> Self {
        Cells {
            map: RwLock::new(HashMap::new()),
        }
    }
}

fn label_hash(labels: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    for l in labels {
        l.hash(&mut h);
    }
    h.finish()
}

impl<T> Cells<T> {
    /// Runs `f` on the cell of `labels`, made with `make` the first time.
    fn with<R>(&self, labels: &[&str], make: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
        let key = label_hash(labels);
        let same = |(k, _): &&Cell<T>| k.iter().map(String::as_str).eq(labels.iter().copied());
        if let Some((_, c)) = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .and_then(|v| v.iter().find(same))
        {
            return f(c);
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let bucket = map.entry(key).or_default();
        if let Some((_, c)) = bucket.iter().find(same) {
            return f(c);
        }
        let c = Arc::new(make());
        let r = f(&c);
        bucket.push((labels.iter().map(|s| s.to_string()).collect(), c));
        r
    }

    fn sorted(&self) -> Vec<Cell<T>> {
        let mut v: Vec<_> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn label_set(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
    header(out, name, help, "gauge");
    for (labels, v) in samples {
        let names: Vec<&str> = labels.iter().map(|(n, _)| *n).collect();
        let values: Vec<String> = labels.iter().map(|(_, v)| v.to_string()).collect();
        let _ = writeln!(out, "{name}{} {v}", label_set(&names, &values, None));
    }
}

// ---------------------------------------------------------------------------------------------
// The metrics.

pub static ACTIVATIONS: LazyLock<CounterVec> = LazyLock::new(|| {
    CounterVec::new(
        "imd_activations_total",
        "Activation requests by IMD version and outcome (created, repeat or the error code).",
        &["version", "outcome"],
    )
});
pub static ACTIVATION_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        "imd_activation_duration_seconds",
        "Time from request to answer of activation requests, by IMD version.",
        &["version"],
    )
});
pub static TOKEN_VERIFICATIONS: LazyLock<CounterVec> = LazyLock::new(|| {
    CounterVec::new(
        "imd_token_verifications_total",
        "Deployment token verifications by result (valid, expired, invalid, error).",
        &["result"],
    )
});
pub static TOKEN_CACHE_HITS: LazyLock<CounterVec> = LazyLock::new(|| {
    CounterVec::new(
        "imd_token_cache_hits_total",
        "Token verifications answered from the verified-token cache.",
        &[],
    )
});
pub static DEVICE_MAP_ROWS: LazyLock<CounterVec> = LazyLock::new(|| {
    CounterVec::new(
        "imd_device_map_rows_total",
        "Device-map rows uploaded, by result (created, updated: written; invalid: refused).",
        &["result"],
    )
});
pub static DEVICE_MAP_UPLOADS: LazyLock<CounterVec> = LazyLock::new(|| {
    CounterVec::new(
        "imd_device_map_uploads_total",
        "Device-map uploads by outcome (applied, dry_run, refused, error).",
        &["outcome"],
    )
});
pub static DIRECTORY_LOOKUPS: LazyLock<CounterVec> = LazyLock::new(|| {
    CounterVec::new(
        "imd_directory_lookups_total",
        "Directory look-ups of activations by resolver and result (ok or the error kind).",
        &["resolver", "result"],
    )
});
pub static DIRECTORY_LOOKUP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        "imd_directory_lookup_duration_seconds",
        "Time of directory look-ups of activations, by resolver.",
        &["resolver"],
    )
});
pub static SYNC_RUNS: LazyLock<CounterVec> = LazyLock::new(|| {
    CounterVec::new(
        "imd_sync_runs_total",
        "Directory sync runs ended, by status.",
        &["status"],
    )
});
pub static HTTP_REQUESTS: LazyLock<CounterVec> = LazyLock::new(|| {
    CounterVec::new(
        "imd_http_requests_total",
        "HTTP requests by method, route pattern (\"unmatched\" for unknown paths) and status.",
        &["method", "route", "status"],
    )
});
pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        "imd_http_request_duration_seconds",
        "Time to the response head of HTTP requests, by route pattern.",
        &["route"],
    )
});

/// Values read at scrape time from their owners (plain numbers; the store hands out no
/// database types).
pub struct Sources {
    pub store: crate::store::Store,
    pub hub: Arc<crate::directory::Hub>,
    pub audit: crate::activation::audit::AuditSink,
}

/// Every metric in the Prometheus text format (version 0.0.4).
pub fn render(sources: &Sources) -> String {
    let mut out = String::with_capacity(16 * 1024);
    gauge(
        &mut out,
        "imd_build_info",
        "Always 1; the running version is its label.",
        &[(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)],
    );
    ACTIVATIONS.render(&mut out);
    ACTIVATION_DURATION.render(&mut out);
    TOKEN_VERIFICATIONS.render(&mut out);
    TOKEN_CACHE_HITS.render(&mut out);
    DEVICE_MAP_ROWS.render(&mut out);
    DEVICE_MAP_UPLOADS.render(&mut out);
    DIRECTORY_LOOKUPS.render(&mut out);
    DIRECTORY_LOOKUP_DURATION.render(&mut out);
    SYNC_RUNS.render(&mut out);
    HTTP_REQUESTS.render(&mut out);
    HTTP_DURATION.render(&mut out);

    gauge(
        &mut out,
        "imd_connector_connections",
        "Live connector channels held by this replica.",
        &[(&[], sources.hub.channel_count() as f64)],
    );
    let pools = sources.store.pool_stats();
    let mut size = Vec::new();
    let mut max = Vec::new();
    let mut idle = Vec::new();
    let mut in_use = Vec::new();
    let labels: Vec<[(&str, &str); 1]> = pools.iter().map(|p| [("pool", p.name)]).collect();
    for (p, l) in pools.iter().zip(&labels) {
        size.push((&l[..], p.size as f64));
        max.push((&l[..], p.max as f64));
        idle.push((&l[..], p.idle as f64));
        in_use.push((&l[..], p.size.saturating_sub(p.idle) as f64));
    }
    gauge(
        &mut out,
        "imd_db_pool_connections",
        "Open database connections per pool.",
        &size,
    );
    gauge(
        &mut out,
        "imd_db_pool_max_connections",
        "Configured maximum of database connections per pool.",
        &max,
    );
    gauge(
        &mut out,
        "imd_db_pool_idle_connections",
        "Idle database connections per pool.",
        &idle,
    );
    gauge(
        &mut out,
        "imd_db_pool_in_use_connections",
        "Database connections in use per pool.",
        &in_use,
    );
    gauge(
        &mut out,
        "imd_db_writer_queue_depth",
        "Write jobs waiting for SQLite's group-commit writer thread (always 0 on PostgreSQL, \
         which has no writer queue).",
        &[(&[], sources.store.writer_queue_depth() as f64)],
    );
    gauge(
        &mut out,
        "imd_audit_queue_depth",
        "Failed-activation audit records waiting to be written in a batch.",
        &[(&[], sources.audit.queue_depth() as f64)],
    );
    header(
        &mut out,
        "imd_audit_records_dropped_total",
        "Failed-activation audit records dropped (queue full or writer stopped).",
        "counter",
    );
    let _ = writeln!(
        out,
        "imd_audit_records_dropped_total {}",
        sources.audit.dropped()
    );
    out
}

/// Every metric family name this service exports (the dashboard test checks against it).
pub const FAMILIES: &[&str] = &[
    "imd_build_info",
    "imd_activations_total",
    "imd_activation_duration_seconds",
    "imd_token_verifications_total",
    "imd_token_cache_hits_total",
    "imd_device_map_rows_total",
    "imd_device_map_uploads_total",
    "imd_directory_lookups_total",
    "imd_directory_lookup_duration_seconds",
    "imd_sync_runs_total",
    "imd_http_requests_total",
    "imd_http_request_duration_seconds",
    "imd_connector_connections",
    "imd_db_pool_connections",
    "imd_db_pool_max_connections",
    "imd_db_pool_idle_connections",
    "imd_db_pool_in_use_connections",
    "imd_db_writer_queue_depth",
    "imd_audit_queue_depth",
    "imd_audit_records_dropped_total",
];

// ---------------------------------------------------------------------------------------------
// HTTP.

/// Counts every request by its route pattern (bounded), not its path.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = std::time::Instant::now();
    let method = req.method().clone();
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let method = match method.as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    };
    HTTP_REQUESTS.inc(&[method, &route, res.status().as_str()]);
    HTTP_DURATION.observe(&[&route], start.elapsed());
    Ok(res)
}

/// Where `/metrics` is served (`MetricsSettings`): on the main listener it answers loopback
/// peers that did not come through a proxy; on its own listener it answers everyone there.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    LoopbackOnly,
    Dedicated,
}

pub async fn handler(
    req: HttpRequest,
    sources: web::Data<Sources>,
    exposure: web::Data<Exposure>,
) -> Result<HttpResponse, crate::http::ApiError> {
    if **exposure == Exposure::LoopbackOnly && !direct_loopback(&req) {
        // Answered exactly like a path that does not exist.
        return crate::http::not_found(req).await;
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(render(&sources)))
}

/// A peer on loopback whose request names no forwarding hop (a reverse proxy on the same host
/// would otherwise make every outside caller look local).
fn direct_loopback(req: &HttpRequest) -> bool {
    let forwarded = ["x-forwarded-for", "forwarded", "x-real-ip"]
        .iter()
        .any(|h| req.headers().contains_key(*h));
    !forwarded && req.peer_addr().is_some_and(|a| a.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_direct_loopback_peers_pass() {
        use actix_web::test::TestRequest;
        let peer = |addr: &str| TestRequest::default().peer_addr(addr.parse().unwrap());
        assert!(direct_loopback(&peer("127.0.0.1:5000").to_http_request()));
        assert!(direct_loopback(&peer("[::1]:5000").to_http_request()));
        assert!(!direct_loopback(&peer("10.0.0.1:5000").to_http_request()));
        assert!(!direct_loopback(
            &peer("[2001:db8::1]:5000").to_http_request()
        ));
        let proxied = peer("127.0.0.1:5000").insert_header(("x-forwarded-for", "10.0.0.1"));
        assert!(!direct_loopback(&proxied.to_http_request()));
        assert!(!direct_loopback(&TestRequest::default().to_http_request()));
    }

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        let c = CounterVec::new("t_total", "help", &["a"]);
        c.inc(&["x\"y"]);
        c.add(&["x\"y"], 2);
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains("# TYPE t_total counter"), "{out}");
        assert!(out.contains("t_total{a=\"x\\\"y\"} 3"), "{out}");

        let h = HistogramVec::new("t_seconds", "help", &["r"]);
        h.observe(&["ldap"], Duration::from_millis(3));
        h.observe(&["ldap"], Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out);
        assert!(
            out.contains("t_seconds_bucket{r=\"ldap\",le=\"0.001\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{r=\"ldap\",le=\"0.005\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{r=\"ldap\",le=\"30\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{r=\"ldap\",le=\"+Inf\"} 2"),
            "{out}"
        );
        assert!(out.contains("t_seconds_count{r=\"ldap\"} 2"), "{out}");
    }

    /// Every metric the Grafana dashboard queries is one the service exports.
    #[test]
    fn dashboard_uses_only_exported_metrics() {
        let text = include_str!("../docs/grafana-dashboard.json");
        let dash: serde_json::Value = serde_json::from_str(text).expect("dashboard is JSON");
        assert!(dash["panels"].as_array().is_some_and(|p| !p.is_empty()));
        let mut exprs = Vec::new();
        collect_exprs(&dash, &mut exprs);
        assert!(!exprs.is_empty());
        let mut used = std::collections::BTreeSet::new();
        for e in &exprs {
            for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("imd_") {
                    used.insert(word.to_string());
                }
            }
        }
        for name in &used {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| f.ends_with("_seconds"))
                        .map(str::to_string)
                })
                .unwrap_or_else(|| name.clone());
            assert!(
                FAMILIES.contains(&family.as_str()),
                "the dashboard queries {name}, which imd does not export"
            );
        }
        // And every family appears on the dashboard.
        for f in FAMILIES {
            assert!(
                used.iter().any(|u| u.starts_with(f)),
                "{f} has no panel on the dashboard"
            );
        }
    }

    fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "expr"
                        && let Some(s) = v.as_str()
                    {
                        out.push(s.to_string());
                    }
                    collect_exprs(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }
}
