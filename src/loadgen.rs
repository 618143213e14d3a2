//! Load generation shared by `imd demo` and `imd bench`: a synthetic fleet and its device map,
//! pre-serialized activation requests, simulated clients (with bounded 503/429 retries), a runner
//! that drives them at a fixed concurrency within a count and a deadline, and latency statistics.
//! Loopback only: every URL is built from the address the server reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::ProgressBar;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use serde_json::json;

use crate::domain::IdentifierType;

pub const DEVICE_MAP_HEADER: &str =
    "emailID,userName,deviceName,deviceIdentifierType,deviceIdentifier,oldDeviceName,restoreData\n";

/// A client gives up after this many retries of a 503/429 ...
pub const MAX_RETRIES: u32 = 5;
/// ... and never waits longer than this between attempts, whatever Retry-After says, so that a
/// misbehaving server cannot stall a bounded run.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
/// Per-request cap for small requests; a stuck request is an error, not a hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A command-line count bounded to `min..=max` (the flags' ranges keep every run bounded).
pub fn count(min: u64, max: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(min..=max)
}

/// One HTTP client for the whole run: a pool with room for every worker's connection keeps the
/// run from paying for new TCP connections once warm; no proxy, the target is always loopback.
pub fn http_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    crate::startup::install_crypto_provider();
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()?)
}

/// `POST /api/v1/admin/tokens` for a v4 (device map) token; returns the token string and its id.
pub async fn mint_v4_token(
    client: &reqwest::Client,
    base: &str,
    admin_key: &str,
    name: &str,
) -> anyhow::Result<(String, String)> {
    let resp = client
        .post(format!("{base}/api/v1/admin/tokens"))
        .bearer_auth(admin_key)
        .timeout(REQUEST_TIMEOUT)
        .json(&json!({"version": "v4", "name": name}))
        .send()
        .await?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await?;
    if status != reqwest::StatusCode::CREATED {
        anyhow::bail!("minting a token answered {status}: {body}");
    }
    let field = |k: &str| body[k].as_str().map(str::to_string);
    match (field("token"), field("id")) {
        (Some(t), Some(id)) => Ok((t, id)),
        _ => anyhow::bail!("mint response without token or id: {body}"),
    }
}

/// `POST /api/v1/admin/device-maps` (all or nothing); the JSON report, or an error with the body.
/// Uploads a fleet's device map before `deadline`: the report, the CSV size and the time taken.
pub async fn upload_fleet(
    client: &reqwest::Client,
    base: &str,
    admin_key: &str,
    fleet: &Fleet,
    deadline: std::time::Instant,
) -> anyhow::Result<(serde_json::Value, usize, Duration)> {
    let csv = fleet.device_map_csv();
    let csv_len = csv.len();
    let t = std::time::Instant::now();
    let timeout = deadline.saturating_duration_since(std::time::Instant::now());
    let report = upload_device_map(client, base, admin_key, csv.into(), None, timeout).await?;
    Ok((report, csv_len, t.elapsed()))
}

pub async fn upload_device_map(
    client: &reqwest::Client,
    base: &str,
    admin_key: &str,
    body: reqwest::Body,
    content_length: Option<u64>,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let mut req = client
        .post(format!("{base}/api/v1/admin/device-maps"))
        .bearer_auth(admin_key)
        .header(CONTENT_TYPE, "text/csv")
        .timeout(timeout);
    // A streamed body has no length of its own; declaring it lets the server refuse an oversized
    // map before it is sent, and avoids chunked encoding.
    if let Some(n) = content_length {
        req = req.header(CONTENT_LENGTH, n);
    }
    let resp = req.body(body).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if status != reqwest::StatusCode::OK {
        let shown: String = text.chars().take(2000).collect();
        anyhow::bail!("device map upload answered {status}: {shown}");
    }
    Ok(serde_json::from_str(&text)?)
}

// ---------------------------------------------------------------------------------------------
// The synthetic fleet.

const FIRST: [&str; 16] = [
    "anna", "ben", "carla", "david", "elif", "femi", "grace", "hiro", "ines", "jonas", "kofi",
    "lena", "marta", "noah", "olga", "pavel",
];
const LAST: [&str; 16] = [
    "schmidt",
    "okafor",
    "garcia",
    "tanaka",
    "novak",
    "dubois",
    "rossi",
    "kowalski",
    "silva",
    "jensen",
    "murphy",
    "haddad",
    "fischer",
    "lindqvist",
    "moreau",
    "petrov",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Desktop,
    Laptop,
}

/// One simulated device and the user it is mapped to.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub user: usize,
    pub email: String,
    pub user_name: String,
    /// The mapping's deviceName (also the machine's hostname, in upper case as admins type it).
    pub device_name: String,
    /// Which identifier the device map row uses.
    pub kind: IdentifierType,
    /// The hostname as the agent reports it (sometimes fully qualified, sometimes not).
    pub reported_hostname: String,
    pub serial: String,
    pub uuid: String,
    pub os: &'static str,
    pub os_version: &'static str,
    pub client_version: &'static str,
    /// Signs in with a UPN instead of DOMAIN\login.
    pub reports_upn: bool,
    pub old_device_name: Option<String>,
    pub restore_data: Option<&'static str>,
    pub install_key: String,
}

/// Distinct, well-formed user names: 256 first.last pairs, then the same pairs with a number.
fn user_name(u: usize) -> String {
    let base = format!("{}.{}", FIRST[u % 16], LAST[(u / 16) % 16]);
    match u / 256 {
        0 => base,
        k => format!("{base}{k}"),
    }
}

impl SimDevice {
    /// Device `d` (unique within a run) of user `u`. Everything is derived from the numbers, so a
    /// 1M-row map needs no state; the install key is left empty (see `with_install_key`).
    pub fn new(d: usize, u: usize, form: Form) -> SimDevice {
        let name = user_name(u);
        // Some directories hand out mixed-case addresses; the service compares case-insensitively.
        let email = if u % 7 == 3 {
            let mut c = name.chars();
            let first = c.next().map(|f| f.to_ascii_uppercase()).unwrap_or('x');
            format!("{first}{}@Corp.Example.com", c.as_str())
        } else {
            format!("{name}@corp.example.com")
        };
        let apple = d % 3 == 2;
        let (prefix, serial) = match d % 3 {
            0 => ("WS", format!("PF{d:07}")),
            1 => ("WS", format!("5CG{d:07}")),
            _ => ("MAC", format!("C02{d:07}")),
        };
        let prefix = if form == Form::Laptop && !apple {
            "LT"
        } else {
            prefix
        };
        let device_name = format!("{prefix}-{d:05}");
        let kind = match d % 10 {
            0..=6 => IdentifierType::SerialNumber,
            7 | 8 => IdentifierType::Uuid,
            _ => IdentifierType::Hostname,
        };
        let reported_hostname = match d % 4 {
            0 => format!("{}.corp.example.com", device_name.to_lowercase()),
            1 if apple => format!("{device_name}.local"),
            _ => device_name.clone(),
        };
        // Multiplying by an odd constant is a bijection on u128: distinct devices get distinct,
        // random-looking UUIDs, reproducibly; `d + 1` keeps device 0 away from the all-zero
        // placeholder.
        let raw = (d as u128 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        let uuid = uuid::Uuid::from_u128(raw)
            .hyphenated()
            .to_string()
            .to_uppercase();
        let (os, os_version) = match (apple, d % 5) {
            (true, _) => ("macos", "14.5"),
            (false, 0) => ("windows", "10 22H2"),
            (false, _) => ("windows", "11 23H2"),
        };
        SimDevice {
            user: u,
            email,
            user_name: name,
            device_name,
            kind,
            reported_hostname,
            serial,
            uuid,
            os,
            os_version,
            client_version: if d.is_multiple_of(8) {
                "7.4.2"
            } else {
                "7.5.0"
            },
            reports_upn: u % 5 == 4,
            old_device_name: None,
            restore_data: None,
            install_key: String::new(),
        }
    }

    /// What a real agent does on first start: a random secret that later activations must repeat.
    pub fn with_install_key(mut self) -> anyhow::Result<SimDevice> {
        self.install_key = crate::crypto::random_secret("ik_")?;
        Ok(self)
    }

    pub fn identifier(&self) -> &str {
        match self.kind {
            IdentifierType::SerialNumber => &self.serial,
            IdentifierType::Uuid => &self.uuid,
            IdentifierType::Hostname => &self.device_name,
        }
    }

    /// Appends this device's device-map row (no field needs CSV quoting).
    pub fn write_csv_row(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{},{},{},{},{},{},{}",
            self.email,
            self.user_name,
            self.device_name,
            self.kind.as_str(),
            self.identifier(),
            self.old_device_name.as_deref().unwrap_or(""),
            self.restore_data.unwrap_or("")
        )
    }

    /// The activation request body this device's agent sends, serialized once up front so that
    /// the timed section does no JSON work on the client side.
    pub fn activation_body(&self, token: &str) -> Bytes {
        let user = if self.reports_upn {
            json!({"login": null, "domain": null, "upn": self.email.to_lowercase(), "email": null})
        } else {
            json!({"login": self.user_name, "domain": "CORP", "upn": null, "email": null})
        };
        let body = json!({
            "token": token,
            "device": {
                "hostname": self.reported_hostname,
                "serial": self.serial,
                "uuid": self.uuid,
                "os": self.os,
                "os_version": self.os_version,
                "client_version": self.client_version,
                "install_key": self.install_key,
            },
            "user": user,
        });
        Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
    }
}

/// A fleet of simulated devices and what it is made of.
#[derive(Debug)]
pub struct Fleet {
    pub devices: Vec<SimDevice>,
    pub users: usize,
    pub two_device_users: usize,
    /// Indices of devices mapped with `oldDeviceName`, and of the device each replaces.
    pub replacements: Vec<(usize, usize)>,
}

impl Fleet {
    /// One device per user, identifier types mixed: the bench's fleet.
    pub fn plain(n: usize) -> anyhow::Result<Fleet> {
        let devices = (0..n)
            .map(|d| SimDevice::new(d, d, Form::Desktop).with_install_key())
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Fleet {
            devices,
            users: n,
            two_device_users: 0,
            replacements: Vec::new(),
        })
    }

    /// The demo's fleet: mostly one device per user, every 25th user also has a laptop, and a
    /// handful of hardware refreshes (a new machine mapped with `oldDeviceName`, half of them
    /// restoring data) placed last so they can be activated after the machines they replace.
    pub fn varied(n: usize) -> anyhow::Result<Fleet> {
        let replacing = if n >= 200 { (n / 200).min(10) } else { 0 };
        let regular = n - replacing;
        let mut devices: Vec<SimDevice> = Vec::with_capacity(n);
        let mut users = 0;
        let mut two_device_users = 0;
        while devices.len() < regular {
            let u = users;
            users += 1;
            devices.push(SimDevice::new(devices.len(), u, Form::Desktop));
            if u % 25 == 7 && devices.len() < regular {
                devices.push(SimDevice::new(devices.len(), u, Form::Laptop));
                two_device_users += 1;
            }
        }
        let mut replacements = Vec::with_capacity(replacing);
        for k in 0..replacing {
            // Spread over the fleet; distinct because regular / replacing >= 199.
            let old = k * (regular / replacing);
            let mut new = SimDevice::new(devices.len(), devices[old].user, Form::Laptop);
            new.old_device_name = Some(devices[old].device_name.clone());
            new.restore_data = (k % 2 == 0).then_some("ALL");
            replacements.push((devices.len(), old));
            devices.push(new);
        }
        let devices = devices
            .into_iter()
            .map(SimDevice::with_install_key)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Fleet {
            devices,
            users,
            two_device_users,
            replacements,
        })
    }

    pub fn count(&self, kind: IdentifierType) -> usize {
        self.devices.iter().filter(|d| d.kind == kind).count()
    }

    /// The whole device map in memory (fine for fleets; the bench's 1M-row map is streamed).
    pub fn device_map_csv(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DEVICE_MAP_HEADER.len() + self.devices.len() * 100);
        out.extend_from_slice(DEVICE_MAP_HEADER.as_bytes());
        for d in &self.devices {
            d.write_csv_row(&mut out)
                .expect("writing to a Vec cannot fail");
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated clients.

/// Why an operation failed: the API's error code, or a client-side category.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: String,
    pub status: Option<u16>,
    pub message: String,
}

impl Failure {
    fn transport(e: &reqwest::Error) -> Failure {
        let code = if e.is_timeout() {
            "client_timeout"
        } else if e.is_connect() {
            "connect_error"
        } else {
            "transport_error"
        };
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let _ = write!(message, ": {s}");
            source = s.source();
        }
        Failure {
            code: code.into(),
            status: None,
            message,
        }
    }

    /// The documented error body's code, or `http_<status>` when the body is not one.
    fn from_response(status: u16, body: &[u8]) -> Failure {
        #[derive(Deserialize)]
        struct Body {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: String,
            #[serde(default)]
            message: String,
        }
        match serde_json::from_slice::<Body>(body) {
            Ok(b) => Failure {
                code: b.error.code,
                status: Some(status),
                message: b.error.message,
            },
            Err(_) => Failure {
                code: format!("http_{status}"),
                status: Some(status),
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            },
        }
    }
}

/// The outcome of one simulated client's operation, retries included.
#[derive(Debug)]
pub struct Attempted<T> {
    pub attempts: u32,
    pub result: Result<T, Failure>,
}

/// `GET url`, expecting 200.
pub async fn get_ok(client: &reqwest::Client, url: &str) -> Attempted<()> {
    let result = async {
        let resp = client
            .get(url)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| Failure::transport(&e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| Failure::transport(&e))?;
        if status == 200 {
            Ok(())
        } else {
            Err(Failure::from_response(status, &body))
        }
    }
    .await;
    Attempted {
        attempts: 1,
        result,
    }
}

/// What a successful activation returned (the fields the demo and bench check).
#[derive(Debug, Clone, Deserialize)]
pub struct Activated {
    #[serde(skip)]
    pub status: u16,
    pub device_id: String,
    pub user_id: String,
    pub user_created: bool,
    #[serde(default)]
    pub replaced_device_id: Option<String>,
}

/// One agent activating: POST the prepared body; on 503/429 wait as Retry-After says (capped)
/// and try again, at most `MAX_RETRIES` times and never past `deadline`.
pub async fn activate(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    deadline: Instant,
) -> Attempted<Activated> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let sent = client
            .post(url)
            .header(CONTENT_TYPE, JSON)
            .timeout(REQUEST_TIMEOUT)
            .body(body.clone())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Attempted {
                    attempts,
                    result: Err(Failure::transport(&e)),
                };
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Attempted {
                    attempts,
                    result: Err(Failure::transport(&e)),
                };
            }
        };
        if status == 200 || status == 201 {
            let result = serde_json::from_slice::<Activated>(&bytes)
                .map(|mut a| {
                    a.status = status;
                    a
                })
                .map_err(|e| Failure {
                    code: "bad_response".into(),
                    status: Some(status),
                    message: e.to_string(),
                });
            return Attempted { attempts, result };
        }
        let failure = Failure::from_response(status, &bytes);
        if (status == 503 || status == 429) && attempts <= MAX_RETRIES {
            let wait = retry_after
                .unwrap_or(Duration::from_secs(1))
                .min(MAX_RETRY_WAIT);
            if Instant::now() + wait < deadline {
                tokio::time::sleep(wait).await;
                continue;
            }
        }
        return Attempted {
            attempts,
            result: Err(failure),
        };
    }
}

// ---------------------------------------------------------------------------------------------
// The runner.

#[derive(Debug)]
pub struct Sample<T> {
    pub index: usize,
    pub latency: Duration,
    pub attempts: u32,
    pub result: Result<T, Failure>,
}

#[derive(Debug)]
pub struct Run<T> {
    /// Sorted by index.
    pub samples: Vec<Sample<T>>,
    pub planned: usize,
    pub wall: Duration,
}

impl<T> Run<T> {
    /// Operations never started because the deadline passed.
    pub fn not_started(&self) -> usize {
        self.planned - self.samples.len()
    }
}

/// Runs `op(0..n)` with `concurrency` workers, each taking the next index as soon as it is free,
/// so at most `concurrency` operations are in flight. Workers stop taking work at `deadline`.
pub async fn run<T, F, Fut>(
    n: usize,
    concurrency: usize,
    deadline: Instant,
    progress: &ProgressBar,
    op: F,
) -> Run<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Attempted<T>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let op = op.clone();
        let next = next.clone();
        let progress = progress.clone();
        workers.spawn(async move {
            let mut out = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t0 = Instant::now();
                let a = op(i).await;
                out.push(Sample {
                    index: i,
                    latency: t0.elapsed(),
                    attempts: a.attempts,
                    result: a.result,
                });
                progress.inc(1);
            }
            out
        });
    }
    let mut samples = Vec::with_capacity(n);
    while let Some(r) = workers.join_next().await {
        // A panicking operation is a bug in this module; surface it rather than under-count.
        samples.extend(r.expect("load worker panicked"));
    }
    let wall = started.elapsed();
    samples.sort_by_key(|s| s.index);
    Run {
        samples,
        planned: n,
        wall,
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub mean: Duration,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    /// Nearest-rank percentiles over all samples (sorting is fine at these sizes).
    pub fn of(mut v: Vec<Duration>) -> Option<Latency> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let total: Duration = v.iter().sum();
        Some(Latency {
            mean: total / v.len() as u32,
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
        })
    }
}

/// A load phase in figures.
#[derive(Debug, Clone)]
pub struct PhaseStats {
    pub planned: usize,
    pub completed: usize,
    pub ok: usize,
    pub errors: BTreeMap<String, usize>,
    /// Extra attempts after 503/429.
    pub retries: u64,
    pub wall: Duration,
    /// Over every completed operation, failed ones included.
    pub latency: Option<Latency>,
}

impl PhaseStats {
    pub fn of<T>(run: &Run<T>) -> PhaseStats {
        let mut errors = BTreeMap::new();
        for s in &run.samples {
            if let Err(f) = &s.result {
                *errors.entry(f.code.clone()).or_insert(0) += 1;
            }
        }
        PhaseStats {
            planned: run.planned,
            completed: run.samples.len(),
            ok: run.samples.iter().filter(|s| s.result.is_ok()).count(),
            errors,
            retries: run
                .samples
                .iter()
                .map(|s| u64::from(s.attempts.saturating_sub(1)))
                .sum(),
            wall: run.wall,
            latency: Latency::of(run.samples.iter().map(|s| s.latency).collect()),
        }
    }

    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    /// Successful operations per second of wall time.
    pub fn throughput(&self) -> f64 {
        per_sec(self.ok, self.wall)
    }

    /// `code ×count, ...` or `none`.
    pub fn errors_line(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        self.errors
            .iter()
            .map(|(c, n)| format!("{c} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn per_sec(count: usize, wall: Duration) -> f64 {
    let s = wall.as_secs_f64();
    if s > 0.0 { count as f64 / s } else { 0.0 }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(v).unwrap();
        assert_eq!(l.p50, Duration::from_millis(50));
        assert_eq!(l.p95, Duration::from_millis(95));
        assert_eq!(l.p99, Duration::from_millis(99));
        assert_eq!(l.max, Duration::from_millis(100));
        let one = Latency::of(vec![Duration::from_millis(7)]).unwrap();
        assert_eq!(one.p50, Duration::from_millis(7));
        assert_eq!(one.p99, Duration::from_millis(7));
        assert!(Latency::of(Vec::new()).is_none());
    }

    #[test]
    fn varied_fleet_is_a_valid_device_map_with_unique_identifiers() {
        let fleet = Fleet::varied(1000).unwrap();
        assert_eq!(fleet.devices.len(), 1000);
        assert_eq!(fleet.replacements.len(), 5);
        assert!(fleet.two_device_users > 0);
        for kind in IdentifierType::ALL {
            assert!(fleet.count(kind) > 0, "no {kind} rows");
        }
        let mut seen = HashSet::new();
        for d in &fleet.devices {
            let row = validate(d);
            assert!(
                seen.insert((row.identifier_type, row.identifier_norm.clone())),
                "duplicate identifier {}",
                d.identifier()
            );
            assert!(d.install_key.len() >= 32);
        }
        for &(new, old) in &fleet.replacements {
            assert_eq!(fleet.devices[new].user, fleet.devices[old].user);
            assert_eq!(
                fleet.devices[new].old_device_name.as_deref(),
                Some(fleet.devices[old].device_name.as_str())
            );
        }
        let csv = String::from_utf8(fleet.device_map_csv()).unwrap();
        assert_eq!(csv.lines().count(), 1001);
        assert!(csv.starts_with(DEVICE_MAP_HEADER));
    }

    /// Validates a simulated device's row with the service's own rules.
    fn validate(d: &SimDevice) -> crate::devicemap::MappingRow {
        crate::devicemap::MappingInput {
            email_id: Some(d.email.clone()),
            user_name: Some(d.user_name.clone()),
            device_name: Some(d.device_name.clone()),
            device_identifier_type: Some(d.kind.as_str().into()),
            device_identifier: Some(d.identifier().into()),
            old_device_name: d.old_device_name.clone(),
            restore_data: d.restore_data.map(str::to_string),
        }
        .validate()
        .unwrap_or_else(|e| panic!("{} is invalid: {e:?}", d.device_name))
    }
}
