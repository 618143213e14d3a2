//! `imd bench`: throughput and latency of activations against a `/healthz` baseline, the idempotent
//! repeat path, and a large streamed device-map upload with the server's peak memory, on SQLite
//! and (with `--database-url`) on PostgreSQL with one replica and with `--replicas` replicas, in
//! one run. Servers run as separate processes (this binary's `serve`, on loopback ports in a
//! temporary data directory) so their memory can be read from /proc and their CPU (and
//! PostgreSQL's, when it runs here) told apart from the load generator's. Figures are printed
//! next to the targets; missing a target is informational. `imd bench directory` (in
//! `bench/directory.rs`) measures IMD v2 activations through a connector instead, `imd bench
//! azure` (in `bench/azure.rs`) IMD v5 activations through Microsoft Graph (the stand-in), `imd
//! bench sync` (in `bench/sync.rs`) a directory sync of many users through a connector.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::loadgen::{self, Fleet, PhaseStats, SimDevice, count};

pub mod azure;
pub mod directory;
mod fixture;
pub mod sync;

/// Targets the figures are held against.
const TARGET_RATIO_PCT: f64 = 17.0;
const TARGET_P99_MS: f64 = 50.0;
const TARGET_UPLOAD_ROWS: usize = 1_000_000;
const TARGET_UPLOAD_SECS: f64 = 12.0;
const TARGET_RSS_MB: f64 = 200.0;
/// PostgreSQL single replica against SQLite, activation rate in the same run.
const TARGET_PG_RATIO: f64 = 0.4;

/// Device numbers of the large upload start here, above any `--devices`, so its rows are new
/// mappings rather than updates of the activation fleet's.
const BULK_BASE: usize = 10_000_000;
/// `/proc/<pid>/stat` counts CPU time in USER_HZ, which Linux fixes at 100 for user space.
const TICKS_PER_SEC: f64 = 100.0;
/// How long the server may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Devices to map and activate; also the number of baseline requests.
    #[arg(long, default_value_t = 20_000, value_parser = count(1, 1_000_000))]
    pub devices: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = count(1, 1024))]
    pub concurrency: usize,
    /// Hard cap on the whole run, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub duration_limit_secs: u64,
    /// Rows of the large device-map upload (0 skips it).
    #[arg(long, default_value_t = 1_000_000, value_parser = count(0, 2_000_000))]
    pub upload_rows: usize,
    /// Also print the figures as one JSON object at the end.
    #[arg(long)]
    pub json: bool,
    /// A PostgreSQL server to measure too (any database on it; the bench creates a fresh
    /// database of its own there and drops it afterwards). Without it only SQLite is measured.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Replicas of the multi-replica PostgreSQL run (the bench starts them and spreads its
    /// load across them); a single-replica run is always made too.
    #[arg(long, default_value_t = 2, value_parser = count(2, 8))]
    pub replicas: usize,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// IMD v2 activations through one connector against a throwaway slapd, next to the raw rate
    /// of the same look-ups made directly with ldap3 (docs/performance.md).
    Directory(directory::DirectoryBenchArgs),
    /// A first full directory sync of N users through one connector against a throwaway slapd,
    /// a no-change re-sync, and a raw paged search of the same entries made directly with ldap3,
    /// with the peak memory of the service and the connector (docs/performance.md).
    Sync(sync::SyncBenchArgs),
    /// IMD v5 activations through Microsoft Graph against the Graph stand-in (the
    /// `graph-standin` binary next to this one: `cargo build --release -p graph-standin`), next
    /// to v4 activations in the same run, with Graph calls per activation (docs/performance.md).
    Azure(azure::AzureBenchArgs),
}

/// One measured configuration: a backend and a number of `imd serve` processes.
#[derive(Debug, Clone)]
struct Setup {
    label: String,
    /// `None`: SQLite in the data directory.
    database_url: Option<String>,
    replicas: usize,
    upload: bool,
}

// ---------------------------------------------------------------------------------------------
// The server process.

/// The spawned server; dropping it kills the process, so no exit path (error, time limit, panic)
/// leaves a server behind.
struct ServerProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Errors (with the end of the server's log) if the server has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "the server exited ({status}); end of its log:\n{}",
                log_tail(&self.log)
            );
        }
        Ok(())
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The children see only the settings the bench gives them: no `IMD_*` variable and no
/// `./imd.toml` from the caller's environment may point them at a real database or address.
fn isolated(exe: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("IMD_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--config", "/dev/null"]);
    cmd
}

async fn create_org(exe: &Path, data: &Path, db: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::from(isolated(exe));
    cmd.args([
        "org",
        "create",
        "--name",
        "Bench Org",
        "--json",
        "--data-dir",
    ])
    .arg(data)
    .args(db.map(|u| ["--database-url", u]).into_iter().flatten())
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("`imd org create` took longer than 60 s"))??;
    if !out.status.success() {
        anyhow::bail!(
            "`imd org create` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["admin_key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("`imd org create --json` printed no admin_key: {v}"))
}

async fn start_server(
    exe: &Path,
    data: &Path,
    db: Option<&str>,
    log: &Path,
) -> anyhow::Result<(ServerProcess, SocketAddr)> {
    start_server_with(exe, data, db, log, &[]).await
}

/// `start_server` with extra `IMD_*` settings for the server.
async fn start_server_with(
    exe: &Path,
    data: &Path,
    db: Option<&str>,
    log: &Path,
    env: &[(String, String)],
) -> anyhow::Result<(ServerProcess, SocketAddr)> {
    let mut cmd = isolated(exe);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(db.map(|u| ["--database-url", u]).into_iter().flatten())
        // Replicas must agree on the issuer of the tokens they verify.
        .args(["--public-url", "http://imd-bench.invalid"])
        // One address sends every request: the per-address failure limit would skew the run.
        .env("IMD_LIMITS__ACTIVATION_FAILURES_PER_MINUTE", "0")
        .env("IMD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?);
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let server = ServerProcess {
        child,
        log: log.to_path_buf(),
    };
    let read = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let res = r.read_line(&mut line);
        // Keep reading so a later write by the server never meets a closed pipe; ends at exit.
        std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
        res.map(|_| line)
    });
    let line = match tokio::time::timeout(STARTUP_TIMEOUT, read).await {
        Ok(joined) => joined??,
        Err(_) => anyhow::bail!(
            "the server printed no listening line within {} s; end of its log:\n{}",
            STARTUP_TIMEOUT.as_secs(),
            log_tail(log)
        ),
    };
    let addr = line
        .strip_prefix("imd listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse::<SocketAddr>().ok());
    match addr {
        Some(a) if a.ip().is_loopback() => Ok((server, a)),
        _ => anyhow::bail!(
            "unexpected first line from the server: {:?}; end of its log:\n{}",
            line.trim_end(),
            log_tail(log)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// User + system CPU time of a process (or this one), in ticks.
fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesized command name, which may itself contain spaces.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/<pid>/status` figure given in kB (VmHWM, VmRSS), in MB.
fn status_mb(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024.0 / 1e6)
}

/// CPU ticks of every process on this machine named `postgres` (the database server, if it
/// runs here), by pid.
fn postgres_ticks() -> std::collections::HashMap<u32, u64> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres"
            && let Some(t) = cpu_ticks(Some(pid))
        {
            out.insert(pid, t);
        }
    }
    out
}

/// CPU use of the servers, of PostgreSQL (when measured) and of this process (the load
/// generator) over a phase, in % of one core.
struct CpuMark {
    at: Instant,
    servers: Vec<(u32, Option<u64>)>,
    postgres: Option<std::collections::HashMap<u32, u64>>,
    me: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    server: Option<f64>,
    postgres: Option<f64>,
    bench: Option<f64>,
}

impl CpuMark {
    fn now(pids: &[u32], postgres: bool) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            servers: pids.iter().map(|p| (*p, cpu_ticks(Some(*p)))).collect(),
            postgres: postgres.then(postgres_ticks),
            me: cpu_ticks(None),
        }
    }

    fn since(&self) -> CpuUse {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let pct = |ticks: u64| ticks as f64 / TICKS_PER_SEC / secs * 100.0;
        let mut server = Some(0u64);
        for (pid, before) in &self.servers {
            server = match (server, before, cpu_ticks(Some(*pid))) {
                (Some(sum), Some(b), Some(a)) => Some(sum + a.saturating_sub(*b)),
                _ => None,
            };
        }
        let postgres = self.postgres.as_ref().map(|before| {
            postgres_ticks()
                .iter()
                .map(|(pid, after)| after.saturating_sub(*before.get(pid).unwrap_or(&0)))
                .sum::<u64>()
        });
        CpuUse {
            server: server.map(pct),
            postgres: postgres.map(pct),
            bench: cpu_ticks(None)
                .zip(self.me)
                .map(|(a, b)| pct(a.saturating_sub(b))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Figures.

struct LoadFigures {
    label: String,
    stats: PhaseStats,
    server_cpu: Option<f64>,
    postgres_cpu: Option<f64>,
    bench_cpu: Option<f64>,
}

impl LoadFigures {
    fn json(&self) -> Value {
        let l = self.stats.latency;
        json!({
            "planned": self.stats.planned,
            "completed": self.stats.completed,
            "ok": self.stats.ok,
            "errors": self.stats.errors,
            "retries": self.stats.retries,
            "wall_s": self.stats.wall.as_secs_f64(),
            "per_s": self.stats.throughput(),
            "mean_ms": l.map(|l| loadgen::ms(l.mean)),
            "p50_ms": l.map(|l| loadgen::ms(l.p50)),
            "p95_ms": l.map(|l| loadgen::ms(l.p95)),
            "p99_ms": l.map(|l| loadgen::ms(l.p99)),
            "max_ms": l.map(|l| loadgen::ms(l.max)),
            "server_cpu_pct": self.server_cpu,
            "postgres_cpu_pct": self.postgres_cpu,
            "bench_cpu_pct": self.bench_cpu,
            "cpu_us_per_op": self.cpu_us_per_op(),
        })
    }

    /// Server (and PostgreSQL) CPU per completed operation, in microseconds.
    fn cpu_us_per_op(&self) -> Option<f64> {
        let per_s = self.stats.throughput();
        let pct = self.server_cpu? + self.postgres_cpu.unwrap_or(0.0);
        (per_s > 0.0).then(|| pct / 100.0 / per_s * 1e6)
    }
}

struct UploadFigures {
    rows: usize,
    bytes: u64,
    secs: f64,
    /// Until the last byte of the body was handed to the connection.
    send_secs: Option<f64>,
    generate_secs: f64,
    report: Option<Value>,
    error: Option<String>,
    server_cpu: Option<f64>,
    bench_cpu: Option<f64>,
    peak_before_mb: Option<f64>,
    peak_after_mb: Option<f64>,
    rss_after_mb: Option<f64>,
}

#[derive(Default)]
struct Figures {
    baseline: Option<LoadFigures>,
    device_map: Option<(usize, usize, f64)>,
    activations: Option<LoadFigures>,
    repeats: Option<LoadFigures>,
    upload: Option<UploadFigures>,
    /// Why the run stopped early, if it did.
    incomplete: Option<String>,
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn fmt_opt(v: Option<f64>, unit: &str, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}{unit}"))
}

impl Figures {
    fn ratio_pct(&self) -> Option<f64> {
        let b = self.baseline.as_ref()?.stats.throughput();
        let a = self.activations.as_ref()?.stats.throughput();
        (b > 0.0).then(|| a / b * 100.0)
    }

    fn total_errors(&self) -> usize {
        let load: usize = [&self.baseline, &self.activations, &self.repeats]
            .into_iter()
            .flatten()
            .map(|f| f.stats.error_count())
            .sum();
        let upload = self
            .upload
            .as_ref()
            .map_or(0, |u| usize::from(u.error.is_some()));
        load + upload
    }

    /// (target, figure, PASS/MISS/n/a)
    fn targets(&self, concurrency: usize) -> Vec<(String, String, &'static str)> {
        let mut t = Vec::new();
        let errors = self.total_errors();
        t.push((
            "zero errors".into(),
            errors.to_string(),
            if self.incomplete.is_some() {
                "n/a"
            } else {
                pass(errors == 0)
            },
        ));
        let ratio = self.ratio_pct();
        t.push((
            format!("activation throughput >= {TARGET_RATIO_PCT:.0}% of baseline"),
            fmt_opt(ratio, "%", 1),
            ratio.map_or("n/a", |r| pass(r >= TARGET_RATIO_PCT)),
        ));
        let p99 = self
            .activations
            .as_ref()
            .and_then(|a| a.stats.latency)
            .map(|l| loadgen::ms(l.p99));
        t.push((
            format!("activation p99 < {TARGET_P99_MS:.0} ms at concurrency {concurrency}"),
            fmt_opt(p99, " ms", 1),
            p99.map_or("n/a", |p| pass(p < TARGET_P99_MS)),
        ));
        let (upload_figure, upload_status, rss) = match &self.upload {
            None => ("skipped".to_string(), "n/a", None),
            Some(u) if u.error.is_some() => ("failed".to_string(), "MISS", u.peak_after_mb),
            Some(u) if u.rows == TARGET_UPLOAD_ROWS => (
                format!("{:.2} s", u.secs),
                pass(u.secs < TARGET_UPLOAD_SECS),
                u.peak_after_mb,
            ),
            // Another size is not the target's; a linear estimate still says roughly where it is.
            Some(u) => (
                format!(
                    "{:.2} s for {} rows (~{:.1} s per 1M)",
                    u.secs,
                    u.rows,
                    u.secs * TARGET_UPLOAD_ROWS as f64 / u.rows.max(1) as f64
                ),
                "n/a",
                u.peak_after_mb,
            ),
        };
        t.push((
            format!("1M-row upload < {TARGET_UPLOAD_SECS:.0} s"),
            upload_figure,
            upload_status,
        ));
        t.push((
            format!("server peak RSS < {TARGET_RSS_MB:.0} MB"),
            fmt_opt(rss, " MB", 1),
            rss.map_or("n/a", |r| pass(r < TARGET_RSS_MB)),
        ));
        t
    }

    fn print(&self, args: &BenchArgs, header: &str) {
        println!();
        println!("{header}");
        println!();
        println!(
            "{:<24} {:>7} {:>7} {:>6} {:>9} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7}",
            "phase",
            "ops",
            "ok",
            "errors",
            "ops/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "srv CPU",
            "gen CPU"
        );
        for f in [&self.baseline, &self.activations, &self.repeats]
            .into_iter()
            .flatten()
        {
            let s = &f.stats;
            let l = s.latency;
            let lat = |pick: fn(&loadgen::Latency) -> Duration| {
                fmt_opt(l.as_ref().map(|l| loadgen::ms(pick(l))), "", 2)
            };
            println!(
                "{:<24} {:>7} {:>7} {:>6} {:>9.0} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7}",
                f.label,
                s.completed,
                s.ok,
                s.error_count(),
                s.throughput(),
                lat(|l| l.p50),
                lat(|l| l.p95),
                lat(|l| l.p99),
                lat(|l| l.max),
                fmt_opt(f.server_cpu, "%", 0),
                fmt_opt(f.bench_cpu, "%", 0),
            );
        }
        println!();
        for f in [&self.baseline, &self.activations, &self.repeats]
            .into_iter()
            .flatten()
        {
            let mut extra = String::new();
            if f.stats.retries > 0 {
                extra.push_str(&format!("; {} retries after 503/429", f.stats.retries));
            }
            if f.stats.completed < f.stats.planned {
                extra.push_str(&format!(
                    "; {} not started (time limit)",
                    f.stats.planned - f.stats.completed
                ));
            }
            println!(
                "errors, {}: {}{extra}",
                f.label.trim(),
                f.stats.errors_line()
            );
        }
        if let Some((rows, bytes, secs)) = self.device_map {
            println!(
                "device map upload, {rows} rows ({:.1} MB): {secs:.2} s",
                bytes as f64 / 1e6
            );
        }
        if let Some(r) = self.ratio_pct() {
            println!("activation throughput / baseline throughput: {r:.1}%");
        }
        if let Some(u) = &self.upload {
            match &u.error {
                None => {
                    println!(
                        "large upload, {} rows ({:.1} MB, generated in {:.1} s, streamed from a \
                         file): {:.2} s end to end ({:.0} rows/s); server CPU {}, bench CPU {}",
                        u.rows,
                        u.bytes as f64 / 1e6,
                        u.generate_secs,
                        u.secs,
                        loadgen::per_sec(u.rows, Duration::from_secs_f64(u.secs)),
                        fmt_opt(u.server_cpu, "%", 0),
                        fmt_opt(u.bench_cpu, "%", 0),
                    );
                    if let Some(sent) = u.send_secs {
                        println!(
                            "  last byte handed to the connection after {sent:.2} s (transfer and \
                             spooling); the server answered {:.2} s later (validating, applying)",
                            u.secs - sent
                        );
                    }
                }
                Some(e) => println!(
                    "large upload, {} rows: FAILED after {:.2} s: {e}",
                    u.rows, u.secs
                ),
            }
            if let Some(r) = &u.report {
                println!(
                    "  report: rows_total {}, rows_valid {}, rows_invalid {}, created {}, \
                     updated {}",
                    r["rows_total"], r["rows_valid"], r["rows_invalid"], r["created"], r["updated"]
                );
            }
            println!(
                "peak RSS of the server (VmHWM): {} before the large upload, {} after \
                 (resident now {})",
                fmt_opt(u.peak_before_mb, " MB", 1),
                fmt_opt(u.peak_after_mb, " MB", 1),
                fmt_opt(u.rss_after_mb, " MB", 1),
            );
        }
        if let Some(why) = &self.incomplete {
            println!("RUN INCOMPLETE: {why}");
        }
        println!();
        print_targets(
            &self.targets(args.concurrency),
            (46, 38),
            "informational; ",
            "",
        );
    }

    fn json(&self, args: &BenchArgs) -> Value {
        json!({
            "devices": args.devices,
            "concurrency": args.concurrency,
            "upload_rows": args.upload_rows,
            "build": build(),
            "cpus": cores(),
            "complete": self.incomplete.is_none(),
            "incomplete_reason": self.incomplete,
            "baseline": self.baseline.as_ref().map(LoadFigures::json),
            "device_map": self.device_map.map(|(rows, bytes, secs)| {
                json!({"rows": rows, "bytes": bytes, "secs": secs})
            }),
            "activations": self.activations.as_ref().map(LoadFigures::json),
            "activation_vs_baseline_pct": self.ratio_pct(),
            "repeats": self.repeats.as_ref().map(LoadFigures::json),
            "large_upload": self.upload.as_ref().map(|u| json!({
                "rows": u.rows,
                "bytes": u.bytes,
                "secs": u.secs,
                "send_secs": u.send_secs,
                "generate_secs": u.generate_secs,
                "error": u.error,
                "report": u.report,
                "server_cpu_pct": u.server_cpu,
                "bench_cpu_pct": u.bench_cpu,
                "server_peak_rss_before_mb": u.peak_before_mb,
                "server_peak_rss_after_mb": u.peak_after_mb,
                "server_rss_after_mb": u.rss_after_mb,
            })),
            "targets": self
                .targets(args.concurrency)
                .into_iter()
                .map(|(t, f, s)| json!({"target": t, "figure": f, "result": s}))
                .collect::<Vec<_>>(),
        })
    }
}

/// The targets (target, figure, PASS/MISS/n/a) in columns `widths` wide, then how CPU figures
/// are counted (`lead` and `tail` around it).
fn print_targets<A, B, C>(rows: &[(A, B, C)], widths: (usize, usize), lead: &str, tail: &str)
where
    A: std::fmt::Display,
    B: std::fmt::Display,
    C: std::fmt::Display,
{
    let (w0, w1) = widths;
    println!("{:<w0$} {:<w1$} result", "target", "figure");
    for (t, f, r) in rows {
        println!("{t:<w0$} {f:<w1$} {r}");
    }
    let n = cores();
    println!(
        "({lead}CPU is % of one core, {n} cores = {}%{tail})",
        n * 100
    );
}

/// A bench's header, and a word when the build is not the one to measure with.
fn print_header(header: &str) {
    println!("{header}");
    if cfg!(debug_assertions) {
        println!("  (a debug build: measure with `cargo run --release`)");
    }
}

/// The build, the CPUs and imd's database, for a bench's header.
fn setup_line(database_url: Option<&str>) -> String {
    let db = if database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    format!("{} build, {} CPUs, imd database {db}", build(), cores())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn build() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

// ---------------------------------------------------------------------------------------------
// The phases.

fn note(text: impl std::fmt::Display) {
    eprintln!("bench: {text}");
}

/// `n` GETs spread round-robin over `urls` (one per replica).
async fn get_phase(
    client: &reqwest::Client,
    urls: &[String],
    n: usize,
    concurrency: usize,
    deadline: Instant,
) -> loadgen::Run<()> {
    let client = client.clone();
    let urls: Arc<Vec<String>> = Arc::new(urls.to_vec());
    loadgen::run(n, concurrency, deadline, &ProgressBar::hidden(), move |i| {
        let (client, urls) = (client.clone(), urls.clone());
        async move { loadgen::get_ok(&client, &urls[i % urls.len()]).await }
    })
    .await
}

/// One activation per body, spread round-robin over `urls` (one per replica).
async fn activation_phase(
    client: &reqwest::Client,
    urls: &Arc<Vec<Arc<str>>>,
    bodies: Arc<Vec<Bytes>>,
    concurrency: usize,
    deadline: Instant,
) -> loadgen::Run<loadgen::Activated> {
    let (client, urls) = (client.clone(), urls.clone());
    loadgen::run(
        bodies.len(),
        concurrency,
        deadline,
        &ProgressBar::hidden(),
        move |i| {
            let url = urls[i % urls.len()].clone();
            let (client, body) = (client.clone(), bodies[i].clone());
            async move { loadgen::activate(&client, &url, body, deadline).await }
        },
    )
    .await
}

/// Writes the large device map to `path` row by row (never the whole map in memory); returns its
/// size in bytes.
fn write_bulk_map(path: &Path, rows: usize) -> std::io::Result<u64> {
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    w.write_all(loadgen::DEVICE_MAP_HEADER.as_bytes())?;
    for d in BULK_BASE..BULK_BASE + rows {
        SimDevice::new(d, d, loadgen::Form::Desktop).write_csv_row(&mut w)?;
    }
    w.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// The file as a request body, read in chunks as the connection takes them. `sent` records when
/// the last of its `len` bytes was handed over (the connection stops asking once it has the
/// declared length, so end of file is never seen), which splits the upload's time into transfer
/// and processing.
async fn file_body(
    path: &Path,
    len: u64,
    sent: Arc<OnceLock<Instant>>,
) -> std::io::Result<reqwest::Body> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    // The file goes to None after an error or at the end so that the stream ends.
    let stream = futures_util::stream::unfold((Some(file), 0u64), move |(state, done)| {
        let sent = sent.clone();
        async move {
            let mut f = state?;
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    let done = done + n as u64;
                    if done >= len {
                        let _ = sent.set(Instant::now());
                    }
                    Some((Ok::<_, std::io::Error>(Bytes::from(buf)), (Some(f), done)))
                }
                Err(e) => Some((Err(e), (None, done))),
            }
        }
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

async fn large_upload(
    ctx: &Ctx<'_>,
    servers: &mut [ServerProcess],
    rows: usize,
) -> anyhow::Result<UploadFigures> {
    let path = ctx.tmp.join("large-device-map.csv");
    let t = Instant::now();
    let p = path.clone();
    let bytes = tokio::task::spawn_blocking(move || write_bulk_map(&p, rows)).await??;
    let generate_secs = t.elapsed().as_secs_f64();
    note(format_args!(
        "large upload: {rows} rows, {:.1} MB written in {generate_secs:.1} s; uploading",
        bytes as f64 / 1e6
    ));
    let pid = servers[0].pid();
    let peak_before_mb = status_mb(pid, "VmHWM");
    let sent = Arc::new(OnceLock::new());
    let body = file_body(&path, bytes, sent.clone()).await?;
    let cpu = CpuMark::now(&[pid], ctx.postgres);
    let t = Instant::now();
    let result = loadgen::upload_device_map(
        ctx.client,
        &ctx.bases[0],
        ctx.admin_key,
        body,
        Some(bytes),
        ctx.deadline.saturating_duration_since(Instant::now()),
    )
    .await;
    let secs = t.elapsed().as_secs_f64();
    let send_secs = sent.get().map(|at| at.duration_since(t).as_secs_f64());
    let used = cpu.since();
    for s in servers.iter_mut() {
        s.check_alive()?;
    }
    let _ = std::fs::remove_file(&path);
    let (report, mut error) = match result {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    if let Some(r) = &report
        && (r["rows_invalid"].as_u64() != Some(0) || r["applied"] != json!(true))
    {
        error = Some("the server did not apply every row".into());
    }
    Ok(UploadFigures {
        rows,
        bytes,
        secs,
        send_secs,
        generate_secs,
        report,
        error,
        server_cpu: used.server.map(|s| s + used.postgres.unwrap_or(0.0)),
        bench_cpu: used.bench,
        peak_before_mb,
        peak_after_mb: status_mb(pid, "VmHWM"),
        rss_after_mb: status_mb(pid, "VmRSS"),
    })
}

struct Ctx<'a> {
    client: &'a reqwest::Client,
    bases: &'a [String],
    admin_key: &'a str,
    tmp: &'a Path,
    deadline: Instant,
    postgres: bool,
}

fn load_figures<T>(label: &str, run: &loadgen::Run<T>, cpu: CpuMark) -> LoadFigures {
    let used = cpu.since();
    let stats = PhaseStats::of(run);
    note(format_args!(
        "{}: {} ok of {} in {:.2} s ({:.0}/s), errors: {}",
        label.trim(),
        stats.ok,
        stats.planned,
        stats.wall.as_secs_f64(),
        stats.throughput(),
        stats.errors_line()
    ));
    LoadFigures {
        label: label.into(),
        stats,
        server_cpu: used.server,
        postgres_cpu: used.postgres,
        bench_cpu: used.bench,
    }
}

/// Runs the phases of one setup in order, filling `fig`; stops early (recording why) at the
/// deadline.
async fn phases(
    args: &BenchArgs,
    setup: &Setup,
    deadline: Instant,
    tmp: &Path,
    fig: &mut Figures,
    header: &mut String,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let data = tmp.join("data");
    let db = setup.database_url.as_deref();
    let admin_key = create_org(&exe, &data, db).await?;
    let mut servers = Vec::new();
    let mut bases = Vec::new();
    for i in 0..setup.replicas {
        let (server, addr) =
            start_server(&exe, &data, db, &tmp.join(format!("server-{i}.log"))).await?;
        servers.push(server);
        bases.push(format!("http://{addr}"));
    }
    let pids: Vec<u32> = servers.iter().map(ServerProcess::pid).collect();
    header.push_str(&format!(
        "\n  {}: {} server process(es), pids {pids:?}, {}; load generator: this process",
        setup.label,
        setup.replicas,
        bases.join(" ")
    ));
    note(format_args!(
        "{}: servers {pids:?} on {}",
        setup.label,
        bases.join(" ")
    ));
    let client = loadgen::http_client(args.concurrency)?;
    let postgres = setup.database_url.is_some();
    let ctx = Ctx {
        client: &client,
        bases: &bases,
        admin_key: &admin_key,
        tmp,
        deadline,
        postgres,
    };
    let (n, c) = (args.devices, args.concurrency);
    let out_of_time = |fig: &mut Figures, next: &str| {
        let late = Instant::now() >= deadline;
        if late {
            fig.incomplete = Some(format!(
                "--duration-limit-secs {} reached before {next}",
                args.duration_limit_secs
            ));
        }
        late
    };
    let check = |servers: &mut Vec<ServerProcess>| -> anyhow::Result<()> {
        for s in servers.iter_mut() {
            s.check_alive()?;
        }
        Ok(())
    };

    // Unmeasured warm-up: every worker gets its pooled connection before the clock starts.
    let healthz: Vec<String> = bases.iter().map(|b| format!("{b}/healthz")).collect();
    let warm = get_phase(&client, &healthz, (c * 8).min(n.max(c)), c, deadline).await;
    if let Some(f) = warm.samples.iter().find_map(|s| s.result.as_ref().err()) {
        anyhow::bail!(
            "the server does not answer /healthz: {} {}",
            f.code,
            f.message
        );
    }

    let cpu = CpuMark::now(&pids, postgres);
    let run = get_phase(&client, &healthz, n, c, deadline).await;
    fig.baseline = Some(load_figures("baseline GET /healthz", &run, cpu));
    check(&mut servers)?;
    if out_of_time(fig, "the device map upload") {
        return Ok(());
    }

    let (token, _) = loadgen::mint_v4_token(&client, &bases[0], &admin_key, "bench").await?;
    let fleet = Fleet::plain(n)?;
    let (report, csv_len, took) =
        loadgen::upload_fleet(&client, &bases[0], &admin_key, &fleet, deadline).await?;
    let secs = took.as_secs_f64();
    if report["created"].as_u64() != Some(n as u64) {
        anyhow::bail!("the device map was not applied as expected: {report}");
    }
    fig.device_map = Some((n, csv_len, secs));
    note(format_args!(
        "device map of {n} rows uploaded in {secs:.2} s"
    ));
    if out_of_time(fig, "the activations") {
        return Ok(());
    }

    // Serialized before the clock starts: the client's JSON work must not show in the figures.
    let bodies: Vec<Bytes> = fleet
        .devices
        .iter()
        .map(|d| d.activation_body(&token))
        .collect();
    let urls: Arc<Vec<Arc<str>>> = Arc::new(
        bases
            .iter()
            .map(|b| format!("{b}/api/v1/activations").into())
            .collect(),
    );
    let cpu = CpuMark::now(&pids, postgres);
    let run = activation_phase(&client, &urls, Arc::new(bodies.clone()), c, deadline).await;
    fig.activations = Some(load_figures("activations (new)", &run, cpu));
    check(&mut servers)?;
    if out_of_time(fig, "the repeat activations") {
        return Ok(());
    }

    // Every 4th activated device again, with its own install key: the idempotent path.
    let first: Vec<(usize, String)> = run
        .samples
        .iter()
        .filter_map(|s| match &s.result {
            Ok(a) if a.status == 201 => Some((s.index, a.device_id.clone())),
            _ => None,
        })
        .step_by(4)
        .collect();
    let repeat_bodies: Vec<Bytes> = first.iter().map(|(i, _)| bodies[*i].clone()).collect();
    let cpu = CpuMark::now(&pids, postgres);
    let run = activation_phase(&client, &urls, Arc::new(repeat_bodies), c, deadline).await;
    let mut repeats = load_figures("activations (repeat)", &run, cpu);
    let not_idempotent = run
        .samples
        .iter()
        .filter(|s| {
            s.result
                .as_ref()
                .is_ok_and(|a| a.status != 200 || a.device_id != first[s.index].1)
        })
        .count();
    if not_idempotent > 0 {
        repeats.stats.ok -= not_idempotent;
        repeats
            .stats
            .errors
            .insert("not_idempotent".into(), not_idempotent);
    }
    fig.repeats = Some(repeats);
    check(&mut servers)?;

    if args.upload_rows > 0 && setup.upload {
        if out_of_time(fig, "the large upload") {
            return Ok(());
        }
        fig.upload = Some(large_upload(&ctx, &mut servers, args.upload_rows).await?);
        if let Some(e) = fig.upload.as_ref().and_then(|u| u.error.clone()) {
            fig.incomplete = Some(format!("the large upload failed: {e}"));
        }
    }
    Ok(())
}

/// One measurement (`imd bench directory|azure`) in a temporary directory, on a throwaway
/// database of its own when `database_url` names a PostgreSQL cluster (dropped afterwards), and
/// stopped at `limit_secs`: dropping the future drops the process guards, which stop the
/// children. `measure` gets the directory, the database URL and the deadline.
async fn run_limited<T>(
    prefix: &str,
    database_url: Option<&str>,
    limit_secs: u64,
    measure: impl AsyncFnOnce(PathBuf, Option<String>, Instant) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let limit = Duration::from_secs(limit_secs);
    let deadline = Instant::now() + limit;
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let db = match database_url {
        Some(url) => Some(BenchDatabase::create(url).await?),
        None => None,
    };
    let outcome = tokio::time::timeout(
        limit + Duration::from_secs(10),
        measure(
            tmp.path().to_path_buf(),
            db.as_ref().map(|d| d.url.clone()),
            deadline,
        ),
    )
    .await;
    if let Some(db) = db {
        db.drop_now().await;
    }
    match outcome {
        Ok(r) => r,
        Err(_) => anyhow::bail!("stopped at the time limit ({limit_secs} s)"),
    }
}

/// A database of the bench's own on a PostgreSQL server, dropped by `drop_now`.
struct BenchDatabase {
    admin: String,
    name: String,
    url: String,
}

impl BenchDatabase {
    async fn create(url: &str) -> anyhow::Result<BenchDatabase> {
        let name = format!(
            "imd_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let db_url = crate::store::create_postgres_database(url, &name).await?;
        Ok(BenchDatabase {
            admin: url.to_string(),
            url: db_url,
            name,
        })
    }

    async fn drop_now(self) {
        if let Err(e) = crate::store::drop_postgres_database(&self.admin, &self.name).await {
            note(format_args!("could not drop {}: {e}", self.name));
        }
    }
}

/// Runs one setup in a temporary directory of its own (and a database of its own).
async fn run_setup(args: &BenchArgs, setup: &Setup, limit: Duration) -> (Figures, String) {
    let deadline = Instant::now() + limit;
    let mut fig = Figures::default();
    let mut header = String::new();
    let tmp = match tempfile::Builder::new().prefix("imd-bench-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            fig.incomplete = Some(format!("no temporary directory: {e}"));
            return (fig, header);
        }
    };
    let mut setup = setup.clone();
    let db = match &setup.database_url {
        Some(url) => match BenchDatabase::create(url).await {
            Ok(db) => {
                setup.database_url = Some(db.url.clone());
                Some(db)
            }
            Err(e) => {
                fig.incomplete = Some(format!("{e:#}"));
                return (fig, header);
            }
        },
        None => None,
    };
    // The phases stop themselves at the deadline; this is the backstop for a request that does
    // not, and dropping the phases' future kills the servers (see ServerProcess).
    let grace = Duration::from_secs(10);
    let outcome = tokio::time::timeout(
        limit + grace,
        phases(args, &setup, deadline, tmp.path(), &mut fig, &mut header),
    )
    .await;
    let failed = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some(format!(
            "stopped at the time limit ({} s)",
            args.duration_limit_secs
        )),
    };
    if let Some(why) = &failed {
        fig.incomplete.get_or_insert_with(|| why.clone());
    }
    // A phase cut short by the deadline leaves its figures partial even if nothing came after it.
    if fig.incomplete.is_none()
        && let Some(cut) = [&fig.baseline, &fig.activations, &fig.repeats]
            .into_iter()
            .flatten()
            .find(|f| f.stats.completed < f.stats.planned)
    {
        fig.incomplete = Some(format!(
            "--duration-limit-secs {} reached during {}",
            args.duration_limit_secs,
            cut.label.trim()
        ));
    }
    if let Some(db) = db {
        db.drop_now().await;
    }
    (fig, header)
}

/// The backends side by side, with the cross-backend targets.
fn print_comparison(results: &[(Setup, Figures)]) {
    println!();
    println!("== comparison ==");
    println!(
        "{:<28} {:>9} {:>8} {:>8} {:>8} {:>7} {:>12} {:>10} {:>9}",
        "setup",
        "act/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "CPU us/act",
        "vs /healthz",
        "upload s"
    );
    for (setup, f) in results {
        let a = f.activations.as_ref();
        let l = a.and_then(|a| a.stats.latency);
        let ms = |pick: fn(&loadgen::Latency) -> Duration| {
            fmt_opt(l.as_ref().map(|l| loadgen::ms(pick(l))), "", 2)
        };
        println!(
            "{:<28} {:>9} {:>8} {:>8} {:>8} {:>7} {:>12} {:>10} {:>9}",
            setup.label,
            a.map_or("-".into(), |a| format!("{:.0}", a.stats.throughput())),
            ms(|l| l.p50),
            ms(|l| l.p95),
            ms(|l| l.p99),
            a.map_or("-".into(), |a| a.stats.error_count().to_string()),
            fmt_opt(a.and_then(LoadFigures::cpu_us_per_op), "", 0),
            fmt_opt(f.ratio_pct(), "%", 1),
            fmt_opt(
                f.upload
                    .as_ref()
                    .filter(|u| u.error.is_none())
                    .map(|u| u.secs),
                "",
                2
            ),
        );
    }
    let rate = |i: usize| {
        results
            .get(i)
            .and_then(|(_, f)| f.activations.as_ref())
            .map(|a| a.stats.throughput())
    };
    if let (Some(sqlite), Some(pg)) = (rate(0), rate(1)) {
        let r = pg / sqlite.max(1e-9);
        println!();
        println!(
            "PostgreSQL single replica / SQLite activation rate: {r:.2} (target >= {TARGET_PG_RATIO:.2}) {}",
            pass(r >= TARGET_PG_RATIO)
        );
    }
    if let (Some(one), Some(many)) = (rate(1), rate(2)) {
        println!(
            "PostgreSQL {} replicas / 1 replica: {:.2}",
            results[2].0.replicas,
            many / one.max(1e-9)
        );
    }
}

pub async fn run(mut args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command.take() {
        Some(BenchCommand::Directory(a)) => return directory::run(a).await,
        Some(BenchCommand::Sync(a)) => return sync::run(a).await,
        Some(BenchCommand::Azure(a)) => return azure::run(a).await,
        None => {}
    }
    let limit = Duration::from_secs(args.duration_limit_secs);
    let mut setups = vec![Setup {
        label: "SQLite, 1 server".into(),
        database_url: None,
        replicas: 1,
        upload: true,
    }];
    if let Some(url) = &args.database_url {
        setups.push(Setup {
            label: "PostgreSQL, 1 replica".into(),
            database_url: Some(url.clone()),
            replicas: 1,
            upload: true,
        });
        setups.push(Setup {
            label: format!("PostgreSQL, {} replicas", args.replicas),
            database_url: Some(url.clone()),
            replicas: args.replicas,
            upload: false,
        });
    }
    let mut results = Vec::new();
    let mut incomplete = false;
    for setup in &setups {
        let (fig, detail) = run_setup(&args, setup, limit).await;
        let mut header = format!(
            "imd bench, {}: {} devices, concurrency {}, large upload {} rows, time limit {} s\n  {} \
             build, {} CPUs{detail}",
            setup.label,
            args.devices,
            args.concurrency,
            if setup.upload { args.upload_rows } else { 0 },
            args.duration_limit_secs,
            build(),
            cores()
        );
        if cfg!(debug_assertions) {
            header.push_str(" (a debug build: measure with `cargo build --release`)");
        }
        fig.print(&args, &header);
        incomplete |= fig.incomplete.is_some();
        results.push((setup.clone(), fig));
    }
    print_comparison(&results);
    if args.json {
        let all: Vec<Value> = results
            .iter()
            .map(|(s, f)| {
                let mut v = f.json(&args);
                v["setup"] = json!(s.label);
                v["replicas"] = json!(s.replicas);
                v
            })
            .collect();
        println!("{}", json!({ "setups": all }));
    }
    Ok(if incomplete {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
