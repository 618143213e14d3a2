//! `imd bench directory`: IMD v2 activations through one connector, next to the directory's own
//! limit. In one run it starts a throwaway slapd on a free loopback port (memberof overlay,
//! `dbnosync`, N users in 10 groups, some of them nested two levels up: `fixture.rs`, shared
//! with `imd bench sync`), `imd serve` on a temporary data directory, and a real `imd connector
//! run` process registered with it; then it fires N v2 activations (every user once, distinct
//! serials) and, against the same slapd at the same concurrency, N raw look-ups of the same users
//! made straight with `ldap3` over as many bound connections as the connector's pool holds, with
//! the connector's own search (same base, filter and attributes). Every child process is stopped
//! by its PID at the end, also on error.
//!
//! What "raw" means: one search per user, which is the least any resolver must ask the
//! directory. It is measured twice: multiplexed (all requests in flight at once over the pool's
//! connections, the directory's limit; the ratio is taken against this one) and one request per
//! connection at a time (how the connector used its pool before look-ups were multiplexed; it
//! still uses connections that way for paging cursors).

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::ProgressBar;
use ldap3::{Ldap, Scope, SearchOptions};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::fixture::{
    self, READER_DN, READER_PW, admin_post, bound, login, start_connector, warm_login,
};
use super::{ServerProcess, create_org, fmt_opt, note, pass};
use crate::connector::config::ConnectorConfig;
use crate::connector::directory::Directory;
use crate::connector::proto::{OpResult, Operation};
use crate::loadgen::{self, Attempted, Failure, PhaseStats, count};

/// Activations/s through the connector against raw look-ups/s, in the same run.
const TARGET_RATIO: f64 = 0.6;
const AIM_RATIO: f64 = 0.8;

#[derive(Debug, clap::Args)]
pub struct DirectoryBenchArgs {
    /// Distinct directory users, each activated once (plus a few warm-up users).
    #[arg(long, default_value_t = 5_000, value_parser = count(10, 200_000))]
    pub users: usize,
    /// Requests in flight at once, on both sides.
    #[arg(long, default_value_t = 64, value_parser = count(1, 64))]
    pub concurrency: usize,
    /// The connector's `pool_size`; the raw side gets as many bound connections.
    #[arg(long, default_value_t = 4, value_parser = count(1, 64))]
    pub pool_size: usize,
    /// A PostgreSQL server for imd's own database (the bench creates a database of its own there
    /// and drops it afterwards); SQLite in the temporary data directory otherwise.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Hard cap on the whole run, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub duration_limit_secs: u64,
    /// Also print the figures as one JSON object at the end.
    #[arg(long)]
    pub json: bool,
}

fn activation_body(token: &str, serial: &str, login: &str) -> Bytes {
    let v = json!({
        "token": token,
        "device": {"hostname": format!("WS-{serial}"), "serial": serial, "os": "windows"},
        "user": {"login": login},
    });
    Bytes::from(serde_json::to_vec(&v).expect("a JSON value serializes"))
}

// ---------------------------------------------------------------------------------------------
// The raw side.

/// How the raw side uses its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawMode {
    /// Every request in flight at once, spread over the connections (LDAP allows many
    /// outstanding operations per connection).
    Multiplexed,
    /// One request per connection at a time, as the connector's exclusive connections are used.
    Exclusive,
}

struct RawPool {
    conns: Vec<Ldap>,
    idle: Mutex<Vec<Ldap>>,
    permits: Semaphore,
}

fn raw_failure(code: &str, message: String) -> Failure {
    Failure {
        code: code.into(),
        status: None,
        message,
    }
}

/// The connector's search for `login`, made directly; exactly one entry is a success.
async fn raw_lookup(mut ldap: Ldap, dir: &Directory, login: &str) -> Result<(), Failure> {
    let (base, filter, attrs) = dir.login_search(login);
    let res = ldap
        .with_search_options(SearchOptions::new().sizelimit(2))
        .search(&base, Scope::Subtree, &filter, attrs)
        .await
        .map_err(|e| raw_failure("ldap_error", e.to_string()))?;
    let ldap3::SearchResult(entries, r) = res;
    if r.rc != 0 {
        return Err(raw_failure("ldap_rc", r.to_string()));
    }
    if entries.len() != 1 {
        return Err(raw_failure(
            "not_one_entry",
            format!("{} entries for {login}", entries.len()),
        ));
    }
    Ok(())
}

async fn raw_phase(
    pool: Arc<RawPool>,
    dir: Arc<Directory>,
    logins: Arc<Vec<String>>,
    mode: RawMode,
    concurrency: usize,
    deadline: Instant,
) -> loadgen::Run<()> {
    loadgen::run(
        logins.len(),
        concurrency,
        deadline,
        &ProgressBar::hidden(),
        move |i| {
            let (pool, dir, logins) = (pool.clone(), dir.clone(), logins.clone());
            async move {
                let result = match mode {
                    RawMode::Multiplexed => {
                        let ldap = pool.conns[i % pool.conns.len()].clone();
                        raw_lookup(ldap, &dir, &logins[i]).await
                    }
                    RawMode::Exclusive => {
                        let _permit = pool.permits.acquire().await.expect("never closed");
                        let ldap = pool.idle.lock().expect("lock").pop().expect("a connection");
                        let r = raw_lookup(ldap.clone(), &dir, &logins[i]).await;
                        pool.idle.lock().expect("lock").push(ldap);
                        r
                    }
                };
                Attempted {
                    attempts: 1,
                    result,
                }
            }
        },
    )
    .await
}

/// `LookupUser` for every login through the connector's `Directory`, in this process.
async fn connector_phase(
    dir: Arc<Directory>,
    logins: Arc<Vec<String>>,
    concurrency: usize,
    deadline: Instant,
) -> loadgen::Run<()> {
    loadgen::run(
        logins.len(),
        concurrency,
        deadline,
        &ProgressBar::hidden(),
        move |i| {
            let (dir, logins) = (dir.clone(), logins.clone());
            async move {
                let op = Operation::LookupUser {
                    login: Some(logins[i].clone()),
                    domain: None,
                    upn: None,
                    filters: vec![],
                };
                let result = match dir.execute(op).await {
                    Ok(OpResult::User { user: Some(_) }) => Ok(()),
                    Ok(_) => Err(raw_failure("no_user", logins[i].clone())),
                    Err(e) => Err(raw_failure("connector_error", e.message)),
                };
                Attempted {
                    attempts: 1,
                    result,
                }
            }
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Figures.

/// slapd, imd serve, the connector and this process.
type Cpu = fixture::Cpu<4>;

struct Phase {
    label: &'static str,
    stats: PhaseStats,
    /// slapd, imd serve, connector, bench.
    cpu: [Option<f64>; 4],
}

impl Phase {
    fn of<T>(label: &'static str, run: &loadgen::Run<T>, cpu: &Cpu) -> Phase {
        let p = Phase {
            label,
            stats: PhaseStats::of(run),
            cpu: cpu.since(),
        };
        note(format_args!(
            "{label}: {} ok of {} in {:.2} s ({:.0}/s), errors: {}",
            p.stats.ok,
            p.stats.planned,
            p.stats.wall.as_secs_f64(),
            p.stats.throughput(),
            p.stats.errors_line()
        ));
        p
    }

    fn json(&self) -> Value {
        let l = self.stats.latency;
        json!({
            "ok": self.stats.ok,
            "errors": self.stats.error_count(),
            "retries": self.stats.retries,
            "per_s": self.stats.throughput(),
            "p50_ms": l.map(|l| loadgen::ms(l.p50)),
            "p95_ms": l.map(|l| loadgen::ms(l.p95)),
            "p99_ms": l.map(|l| loadgen::ms(l.p99)),
            "cpu_pct": {"slapd": self.cpu[0], "imd": self.cpu[1], "connector": self.cpu[2], "bench": self.cpu[3]},
        })
    }
}

/// Activations/s over raw look-ups/s.
fn ratio(activations_per_s: f64, raw_per_s: f64) -> Option<f64> {
    (raw_per_s > 0.0).then(|| activations_per_s / raw_per_s)
}

fn print_table(phases: &[Phase]) {
    println!(
        "{:<34} {:>6} {:>6} {:>6} {:>8} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6}",
        "phase",
        "ops",
        "ok",
        "errors",
        "ops/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "slapd",
        "imd",
        "conn.",
        "bench"
    );
    for p in phases {
        let l = p.stats.latency;
        let ms = |pick: fn(&loadgen::Latency) -> Duration| {
            fmt_opt(l.as_ref().map(|l| loadgen::ms(pick(l))), "", 2)
        };
        let cpu = |i: usize| fmt_opt(p.cpu[i], "%", 0);
        println!(
            "{:<34} {:>6} {:>6} {:>6} {:>8.0} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6}",
            p.label,
            p.stats.planned,
            p.stats.ok,
            p.stats.error_count(),
            p.stats.throughput(),
            ms(|l| l.p50),
            ms(|l| l.p95),
            ms(|l| l.p99),
            ms(|l| l.max),
            cpu(0),
            cpu(1),
            cpu(2),
            cpu(3),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

struct Outcome {
    header: String,
    phases: Vec<Phase>,
    /// Activations that were not a first activation (201) of a device.
    not_new: usize,
    /// Sampled users whose transitive groups, as the connector's code finds them, are wrong.
    wrong_groups: usize,
}

async fn measure(
    args: &DirectoryBenchArgs,
    tmp: &Path,
    database_url: Option<&str>,
    deadline: Instant,
) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe()?;
    let (n, c) = (args.users, args.concurrency);
    let warm = (2 * c).clamp(16, 1024);

    // The directory.
    let fixture::Slapd {
        process: mut slapd,
        url: ldap_url,
        ..
    } = fixture::start_slapd(&tmp.join("slapd"), n, warm).await?;

    // The service and the connector.
    let data = tmp.join("data");
    let admin_key = create_org(&exe, &data, database_url).await?;
    let (mut server, addr): (ServerProcess, _) =
        super::start_server(&exe, &data, database_url, &tmp.join("server.log")).await?;
    let base = format!("http://{addr}");
    let client = loadgen::http_client(c)?;
    let (mut connector, connector_toml) = start_connector(
        &exe,
        &client,
        &base,
        &admin_key,
        &tmp.join("connector"),
        &ldap_url,
        args.pool_size,
    )
    .await?;
    fixture::map_everyone(&client, &base, &admin_key, false).await?;
    let token = admin_post(
        &client,
        &base,
        &admin_key,
        "/api/v1/admin/tokens",
        &json!({"version": "v2", "name": "bench v2"}),
    )
    .await?["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("minted a token without a token string"))?;
    let pids = [
        Some(slapd.pid()),
        Some(server.pid()),
        Some(connector.pid()),
        None,
    ];
    let header = format!(
        "imd bench directory: {n} users, concurrency {c}, connector pool_size {} (raw side: as \
         many connections), {}\n  slapd pid {} on {ldap_url}, imd serve pid {} on {base}, \
         connector pid {}; load generator and raw client: this process",
        args.pool_size,
        super::setup_line(database_url),
        slapd.pid(),
        server.pid(),
        connector.pid()
    );
    let connector_log = connector.log.clone();
    let mut alive = || -> anyhow::Result<()> {
        slapd.check_alive()?;
        server.check_alive()?;
        connector.check_alive()
    };

    // Warm-up (unmeasured): HTTP connections, the connector's LDAP pool, slapd's caches.
    let url: Arc<Vec<Arc<str>>> = Arc::new(vec![format!("{base}/api/v1/activations").into()]);
    let bodies: Vec<Bytes> = (0..warm)
        .map(|i| activation_body(&token, &format!("BENCH-W{i:05}"), &warm_login(i)))
        .collect();
    let run = super::activation_phase(&client, &url, Arc::new(bodies), c, deadline).await;
    if let Some(f) = run.samples.iter().find_map(|s| s.result.as_ref().err()) {
        anyhow::bail!(
            "a warm-up activation failed: {} {}; connector log:\n{}",
            f.code,
            f.message,
            super::log_tail(&connector_log)
        );
    }
    alive()?;

    // v2 activations, every user once.
    let bodies: Vec<Bytes> = (0..n)
        .map(|i| activation_body(&token, &format!("BENCH-{i:06}"), &login(i)))
        .collect();
    let cpu = Cpu::mark(pids);
    let run = super::activation_phase(&client, &url, Arc::new(bodies), c, deadline).await;
    let mut activations = Phase::of("v2 activations via the connector", &run, &cpu);
    let not_new = run
        .samples
        .iter()
        .filter(|s| s.result.as_ref().is_ok_and(|a| a.status != 201))
        .count();
    if not_new > 0 {
        activations.stats.ok -= not_new;
        activations.stats.errors.insert("not_new".into(), not_new);
    }
    alive()?;

    // Raw look-ups: the connector's own search, with the connector's configuration.
    let config = ConnectorConfig::load(Some(&connector_toml))?;
    let dir = Arc::new(Directory::new(&config).map_err(|e| anyhow::anyhow!(e.message))?);
    let wrong_groups = check_groups(&dir, n).await?;
    let mut conns = Vec::new();
    for _ in 0..args.pool_size {
        conns.push(bound(&ldap_url, READER_DN, READER_PW).await?);
    }
    let pool = Arc::new(RawPool {
        idle: Mutex::new(conns.clone()),
        conns,
        permits: Semaphore::new(args.pool_size),
    });
    let logins: Arc<Vec<String>> = Arc::new((0..n).map(login).collect());
    let warm_logins: Arc<Vec<String>> = Arc::new((0..warm).map(warm_login).collect());
    let _ = raw_phase(
        pool.clone(),
        dir.clone(),
        warm_logins,
        RawMode::Multiplexed,
        c,
        deadline,
    )
    .await;
    let mut phases = vec![activations];
    // Where the time goes: the connector's directory code alone, in this process (no channel,
    // no service), on the same users.
    let cpu = Cpu::mark(pids);
    let run = connector_phase(dir.clone(), logins.clone(), c, deadline).await;
    let in_process = Phase::of("connector look-ups, in process", &run, &cpu);
    for (mode, label) in [
        (RawMode::Multiplexed, "raw ldap3 look-ups, multiplexed"),
        (RawMode::Exclusive, "raw ldap3 look-ups, 1 per conn."),
    ] {
        let cpu = Cpu::mark(pids);
        let run = raw_phase(pool.clone(), dir.clone(), logins.clone(), mode, c, deadline).await;
        phases.push(Phase::of(label, &run, &cpu));
    }
    phases.push(in_process);
    for mut l in pool.conns.iter().cloned() {
        let _ = l.unbind().await;
    }
    alive()?;
    Ok(Outcome {
        header,
        phases,
        not_new,
        wrong_groups,
    })
}

/// Looks up a sample of the users (every 97th) the way the connector does, in process, and
/// counts those whose transitive groups differ from the fixture's: a faster look-up that lost
/// groups would not count.
async fn check_groups(dir: &Directory, n: usize) -> anyhow::Result<usize> {
    let mut wrong = 0;
    for i in (0..n).step_by(97) {
        let op = Operation::LookupUser {
            login: Some(login(i)),
            domain: None,
            upn: None,
            filters: vec![],
        };
        let got = match dir.execute(op).await {
            Ok(OpResult::User { user: Some(u) }) => u.groups,
            Ok(other) => anyhow::bail!("look-up of {} answered {other:?}", login(i)),
            Err(e) => anyhow::bail!("look-up of {} failed: {}", login(i), e.message),
        };
        if let Some(why) = fixture::groups_wrong(i, &got) {
            note(why);
            wrong += 1;
        }
    }
    Ok(wrong)
}

pub async fn run(args: DirectoryBenchArgs) -> anyhow::Result<ExitCode> {
    let out = super::run_limited(
        "imd-bench-dir-",
        args.database_url.as_deref(),
        args.duration_limit_secs,
        async |dir, db, deadline| measure(&args, &dir, db.as_deref(), deadline).await,
    )
    .await?;
    super::print_header(&out.header);
    println!();
    print_table(&out.phases);
    let act = out.phases[0].stats.throughput();
    let raw = out.phases[1].stats.throughput();
    let raw_exclusive = out.phases[2].stats.throughput();
    let errors: usize = out.phases.iter().map(|p| p.stats.error_count()).sum();
    let incomplete = out
        .phases
        .iter()
        .any(|p| p.stats.completed < p.stats.planned);
    let r = ratio(act, raw);
    println!();
    println!(
        "errors: {errors} (activations not new: {}), retried requests: {}; users with wrong \
         groups in a sample looked up as the connector does: {}",
        out.not_new, out.phases[0].stats.retries, out.wrong_groups
    );
    println!(
        "ratio activations/s / raw look-ups/s (multiplexed): {} (target >= {TARGET_RATIO:.2}, aim \
         {AIM_RATIO:.2}) {}; against one request per connection: {}",
        fmt_opt(r, "", 2),
        pass(r.is_some_and(|r| r >= TARGET_RATIO)),
        fmt_opt(ratio(act, raw_exclusive), "", 2)
    );
    if args.json {
        println!(
            "{}",
            json!({
                "users": args.users,
                "concurrency": args.concurrency,
                "pool_size": args.pool_size,
                "activations": out.phases[0].json(),
                "raw_multiplexed": out.phases[1].json(),
                "raw_exclusive": out.phases[2].json(),
                "connector_in_process": out.phases[3].json(),
                "ratio": r,
                "errors": errors,
                "wrong_groups": out.wrong_groups,
            })
        );
    }
    Ok(if errors == 0 && out.wrong_groups == 0 && !incomplete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_needs_a_raw_rate() {
        assert_eq!(ratio(10.0, 0.0), None);
        assert_eq!(ratio(30.0, 40.0), Some(0.75));
    }
}
