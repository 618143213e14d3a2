//! `imd bench azure`: IMD v5 activations resolved through Microsoft Graph, against the Graph
//! stand-in (`tests/graph-standin`), next to the v4 (device map) rate of the same server in the
//! same run. It spawns the `graph-standin` binary found next to this executable (`cargo build
//! --release -p graph-standin`, or `--workspace`, builds it) with N + warm-up bulk users, starts
//! `imd serve` (SQLite, or `--database-url`), creates an organization, PUTs the Azure
//! configuration pointing at the stand-in, maps the stand-in's "All Staff" group (found through
//! `GET /api/v1/admin/azure/groups?q=All`; every bulk user is in it transitively) and mints v4 and
//! v5 tokens. Then it measures:
//!
//! 1. **v4 activations**: N device-map activations (the main bench's fleet and helpers);
//! 2. **v5 activations (new users)**: N distinct users, one device each; anything but a `201`
//!    that created the user is an error;
//! 3. **v5 activations (2nd device)**: the same N users, each with a second device: the look-up
//!    cache (`[azure] lookup_cache_secs`) should serve them without a Graph user look-up; anything
//!    but a `201` for the same user is an error.
//!
//! Graph calls are counted by the stand-in (it sees every request that reaches "Graph", by
//! route) and read between phases from its read-only `GET /_standin/calls`. The server's own
//! `GraphStats` would need a new endpoint on the production server and do not tell user from
//! group look-ups. Every child process is stopped by its PID at the end, also on error.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::fixture::Guarded;
use super::{ServerProcess, cores, cpu_ticks, create_org, fmt_opt, note, pass};
use crate::loadgen::{self, Fleet, PhaseStats, count};

/// v5 activations/s against v4 activations/s, in the same run.
const TARGET_RATIO: f64 = 0.5;
const STANDIN_BIN: &str = "graph-standin";
const BUILD_HINT: &str = "cargo build --release -p graph-standin";
/// How long the stand-in may take to print its line (5,000 bulk users take milliseconds).
const STANDIN_STARTUP: Duration = Duration::from_secs(30);
/// The stand-in routes that read groups or memberships (README of tests/graph-standin).
const GROUP_ROUTES: [&str; 7] = [
    "transitiveMemberOf",
    "memberOf",
    "checkMemberGroups",
    "checkMemberObjects",
    "groups",
    "group",
    "transitiveMembers",
];
/// User reads: by key, or through `$filter` on the collection.
const USER_ROUTES: [&str; 2] = ["user", "users"];

#[derive(Debug, clap::Args)]
pub struct AzureBenchArgs {
    /// Distinct Entra ID users, each activated once (then again with a second device), and as
    /// many v4 devices; plus a few warm-up users and devices.
    #[arg(long, default_value_t = 5_000, value_parser = count(10, 200_000))]
    pub users: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = count(1, 1024))]
    pub concurrency: usize,
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

// ---------------------------------------------------------------------------------------------
// The stand-in.

/// The line the stand-in prints when it is ready.
#[derive(Debug, Deserialize)]
struct StandInInfo {
    authority_url: String,
    graph_url: String,
    tenant_id: String,
    client_id: String,
    client_secret: String,
}

/// `graph-standin` next to this executable, or an error naming the command that builds it.
fn standin_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name(format!("{STANDIN_BIN}{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        anyhow::bail!(
            "the Graph stand-in binary is missing: {} does not exist; build it with `{BUILD_HINT}` \
             (or `cargo build --release --workspace`; the same profile as this imd)",
            bin.display()
        );
    }
    Ok(bin)
}

async fn start_standin(
    bin: &Path,
    bulk: usize,
    dir: &Path,
) -> anyhow::Result<(Guarded, StandInInfo)> {
    let log = dir.join("graph-standin.log");
    let mut child = std::process::Command::new(bin)
        .args(["--bulk", &bulk.to_string(), "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {} ({e}); `{BUILD_HINT}`", bin.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut standin = Guarded {
        child,
        what: "the Graph stand-in",
        log,
    };
    let read = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let res = r.read_line(&mut line);
        // Keep reading so a later write never meets a closed pipe; ends when the child exits.
        std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
        res.map(|_| line)
    });
    let line = match tokio::time::timeout(STANDIN_STARTUP, read).await {
        Ok(joined) => joined??,
        Err(_) => anyhow::bail!(
            "the Graph stand-in printed nothing within {} s; end of its log:\n{}",
            STANDIN_STARTUP.as_secs(),
            super::log_tail(&standin.log)
        ),
    };
    standin.check_alive()?;
    let info: StandInInfo = serde_json::from_str(line.trim()).map_err(|e| {
        anyhow::anyhow!(
            "unexpected first line from the Graph stand-in ({e}): {:?}",
            line.trim_end()
        )
    })?;
    Ok((standin, info))
}

/// The stand-in's route counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Calls {
    routes: BTreeMap<String, u64>,
}

impl Calls {
    async fn read(client: &reqwest::Client, graph_url: &str) -> anyhow::Result<Calls> {
        let url = format!("{graph_url}/_standin/calls");
        let v: Value = client
            .get(&url)
            .timeout(loadgen::REQUEST_TIMEOUT)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let routes = v["calls"]
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("GET {url} answered without calls: {v}"))?
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
            .collect();
        Ok(Calls { routes })
    }

    /// What happened between `before` and `self`.
    fn since(&self, before: &Calls) -> Calls {
        Calls {
            routes: self
                .routes
                .iter()
                .map(|(k, n)| {
                    (
                        k.clone(),
                        n.saturating_sub(*before.routes.get(k).unwrap_or(&0)),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    fn sum(&self, routes: &[&str]) -> u64 {
        routes
            .iter()
            .map(|r| self.routes.get(*r).copied().unwrap_or(0))
            .sum()
    }

    fn users(&self) -> u64 {
        self.sum(&USER_ROUTES)
    }

    fn groups(&self) -> u64 {
        self.sum(&GROUP_ROUTES)
    }

    fn tokens(&self) -> u64 {
        self.sum(&["token"])
    }

    fn other(&self) -> u64 {
        let all: u64 = self.routes.values().sum();
        all - self.users() - self.groups() - self.tokens()
    }
}

/// A bulk user's UPN as the stand-in generates it (`Tenant::with_bulk_users`: zero-padded to
/// the width of the largest index, at least 4 digits).
fn bulk_upn(i: usize, bulk: usize) -> String {
    let width = bulk.saturating_sub(1).to_string().len().max(4);
    format!("bulk{i:0width$}@contoso.test")
}

fn v5_body(token: &str, serial: &str, upn: &str) -> Bytes {
    let v = json!({
        "token": token,
        "device": {"hostname": format!("LT-{serial}"), "serial": serial, "os": "windows"},
        "user": {"upn": upn},
    });
    Bytes::from(serde_json::to_vec(&v).expect("a JSON value serializes"))
}

// ---------------------------------------------------------------------------------------------
// The service side.

async fn admin(
    req: reqwest::RequestBuilder,
    key: &str,
    want: reqwest::StatusCode,
    what: &str,
) -> anyhow::Result<Value> {
    let r = req
        .bearer_auth(key)
        .timeout(loadgen::REQUEST_TIMEOUT)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if status != want {
        anyhow::bail!("{what} answered {status}: {v}");
    }
    Ok(v)
}

/// Azure configuration pointing at the stand-in, a mapping of "All Staff", and a v5 token.
async fn configure(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    g: &StandInInfo,
) -> anyhow::Result<(String, String)> {
    use reqwest::StatusCode;
    admin(
        client.put(format!("{base}/api/v1/admin/azure")).json(&json!({
            "tenant_id": g.tenant_id, "client_id": g.client_id, "client_secret": g.client_secret,
            "authority_url": g.authority_url, "graph_url": g.graph_url,
        })),
        key,
        StatusCode::OK,
        "PUT /api/v1/admin/azure",
    )
    .await?;
    let found = admin(
        client.get(format!("{base}/api/v1/admin/azure/groups?q=All")),
        key,
        StatusCode::OK,
        "GET /api/v1/admin/azure/groups?q=All",
    )
    .await?;
    let all_staff = found["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["display_name"] == "All Staff")
        .and_then(|g| g["id"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("the stand-in's tenant has no \"All Staff\": {found}"))?;
    admin(
        client
            .post(format!("{base}/api/v1/admin/azure-mappings"))
            .json(&json!({
                "name": "all staff", "priority": 10, "source": {"group_id": all_staff},
                "profile": "staff", "storage_region": "eu", "quota_bytes": 1000,
            })),
        key,
        StatusCode::CREATED,
        "POST /api/v1/admin/azure-mappings",
    )
    .await?;
    let token = admin(
        client
            .post(format!("{base}/api/v1/admin/tokens"))
            .json(&json!({"version": "v5", "name": "bench v5"})),
        key,
        StatusCode::CREATED,
        "POST /api/v1/admin/tokens (v5)",
    )
    .await?["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("minted a v5 token without a token string"))?;
    Ok((token, all_staff))
}

// ---------------------------------------------------------------------------------------------
// Figures.

/// CPU of the stand-in, imd serve and this process over a phase, in % of one core.
struct Cpu {
    at: Instant,
    pids: [Option<u32>; 3],
    before: [Option<u64>; 3],
}

impl Cpu {
    fn mark(pids: [Option<u32>; 3]) -> Cpu {
        Cpu {
            at: Instant::now(),
            before: pids.map(cpu_ticks),
            pids,
        }
    }

    fn since(&self) -> [Option<f64>; 3] {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        std::array::from_fn(|i| {
            let (b, a) = (self.before[i]?, cpu_ticks(self.pids[i])?);
            Some(a.saturating_sub(b) as f64 / super::TICKS_PER_SEC / secs * 100.0)
        })
    }
}

struct Phase {
    label: &'static str,
    stats: PhaseStats,
    /// Activations that created their user.
    new_users: usize,
    /// Graph requests the stand-in saw during the phase.
    calls: Calls,
    /// stand-in, imd serve, bench.
    cpu: [Option<f64>; 3],
}

impl Phase {
    fn per_new_user(&self, n: u64) -> Option<f64> {
        (self.new_users > 0).then(|| n as f64 / self.new_users as f64)
    }

    fn per_activation(&self, n: u64) -> Option<f64> {
        (self.stats.ok > 0).then(|| n as f64 / self.stats.ok as f64)
    }

    fn json(&self) -> Value {
        let l = self.stats.latency;
        json!({
            "ops": self.stats.planned,
            "ok": self.stats.ok,
            "errors": self.stats.error_count(),
            "error_codes": self.stats.errors,
            "retries": self.stats.retries,
            "per_s": self.stats.throughput(),
            "p50_ms": l.map(|l| loadgen::ms(l.p50)),
            "p95_ms": l.map(|l| loadgen::ms(l.p95)),
            "p99_ms": l.map(|l| loadgen::ms(l.p99)),
            "max_ms": l.map(|l| loadgen::ms(l.max)),
            "new_users": self.new_users,
            "graph_calls": self.calls.routes,
            "user_lookups": self.calls.users(),
            "user_lookups_per_new_user": self.per_new_user(self.calls.users()),
            "group_lookups": self.calls.groups(),
            "group_lookups_per_activation": self.per_activation(self.calls.groups()),
            "token_fetches": self.calls.tokens(),
            "cpu_pct": {"graph_standin": self.cpu[0], "imd": self.cpu[1], "bench": self.cpu[2]},
        })
    }
}

/// Checks a phase's answers: `want_new` — every activation must be a `201` that created its
/// user; otherwise a `201` for the user `same_user[i]` names. Mismatches count as errors.
fn phase_of(
    label: &'static str,
    run: &loadgen::Run<loadgen::Activated>,
    cpu: &Cpu,
    calls: Calls,
    expect: Expect<'_>,
) -> Phase {
    let mut stats = PhaseStats::of(run);
    let mut wrong = 0;
    let mut new_users = 0;
    for s in &run.samples {
        let Ok(a) = &s.result else { continue };
        new_users += usize::from(a.user_created);
        let ok = match expect {
            Expect::Any => true,
            Expect::NewUser => a.status == 201 && a.user_created,
            Expect::SameUser(users) => {
                a.status == 201 && !a.user_created && users.get(s.index) == Some(&a.user_id)
            }
        };
        wrong += usize::from(!ok);
    }
    if wrong > 0 {
        stats.ok -= wrong;
        let code = match expect {
            Expect::SameUser(_) => "not_new_device_of_same_user",
            _ => "not_a_new_user",
        };
        stats.errors.insert(code.into(), wrong);
    }
    let p = Phase {
        label,
        stats,
        new_users,
        calls,
        cpu: cpu.since(),
    };
    note(format_args!(
        "{label}: {} ok of {} in {:.2} s ({:.0}/s), errors: {}; Graph: {:?}",
        p.stats.ok,
        p.stats.planned,
        p.stats.wall.as_secs_f64(),
        p.stats.throughput(),
        p.stats.errors_line(),
        p.calls.routes
    ));
    p
}

#[derive(Clone, Copy)]
enum Expect<'a> {
    Any,
    NewUser,
    SameUser(&'a [String]),
}

fn print_tables(phases: &[Phase]) {
    println!(
        "{:<30} {:>6} {:>6} {:>6} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6}",
        "phase",
        "ops",
        "ok",
        "errors",
        "ops/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "stand-in",
        "imd",
        "bench"
    );
    for p in phases {
        let l = p.stats.latency;
        let ms = |pick: fn(&loadgen::Latency) -> Duration| {
            fmt_opt(l.as_ref().map(|l| loadgen::ms(pick(l))), "", 2)
        };
        let cpu = |i: usize| fmt_opt(p.cpu[i], "%", 0);
        println!(
            "{:<30} {:>6} {:>6} {:>6} {:>8.0} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6}",
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
        );
    }
    println!();
    println!(
        "{:<30} {:>9} {:>12} {:>13} {:>13} {:>14} {:>7} {:>6}",
        "Graph calls (stand-in)",
        "new users",
        "user look-ups",
        "per new user",
        "group look-ups",
        "per activation",
        "tokens",
        "other"
    );
    for p in phases {
        println!(
            "{:<30} {:>9} {:>12} {:>13} {:>13} {:>14} {:>7} {:>6}",
            p.label,
            p.new_users,
            p.calls.users(),
            fmt_opt(p.per_new_user(p.calls.users()), "", 3),
            p.calls.groups(),
            fmt_opt(p.per_activation(p.calls.groups()), "", 3),
            p.calls.tokens(),
            p.calls.other(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

struct Outcome {
    header: String,
    /// v4, v5 new users, v5 second devices.
    phases: Vec<Phase>,
    /// Graph calls before the measured phases (configuration, group search, warm-up).
    setup_calls: Calls,
}

async fn activation_run(
    client: &reqwest::Client,
    url: &Arc<Vec<Arc<str>>>,
    bodies: Vec<Bytes>,
    c: usize,
    deadline: Instant,
) -> loadgen::Run<loadgen::Activated> {
    super::activation_phase(client, url, Arc::new(bodies), c, deadline).await
}

fn first_failure(run: &loadgen::Run<loadgen::Activated>) -> Option<String> {
    run.samples
        .iter()
        .find_map(|s| s.result.as_ref().err())
        .map(|f| format!("{} {}", f.code, f.message))
}

async fn measure(
    args: &AzureBenchArgs,
    tmp: &Path,
    database_url: Option<&str>,
    deadline: Instant,
) -> anyhow::Result<Outcome> {
    let bin = standin_binary()?;
    let exe = std::env::current_exe()?;
    let (n, c) = (args.users, args.concurrency);
    let warm = (2 * c).clamp(16, 1024);
    let bulk = n + warm;

    // The stand-in: users 0..n are measured, n..n+warm warm up.
    let (mut standin, g) = start_standin(&bin, bulk, tmp).await?;
    note(format_args!(
        "graph-standin pid {} on {} with {bulk} bulk users",
        standin.pid(),
        g.graph_url
    ));

    // The service.
    let data = tmp.join("data");
    let admin_key = create_org(&exe, &data, database_url).await?;
    let (mut server, addr): (ServerProcess, _) =
        super::start_server(&exe, &data, database_url, &tmp.join("server.log")).await?;
    let base = format!("http://{addr}");
    let client = loadgen::http_client(c)?;
    let (v5_token, all_staff) = configure(&client, &base, &admin_key, &g).await?;
    note(format_args!(
        "Azure configured; mapping \"All Staff\" ({all_staff})"
    ));
    let (v4_token, _) = loadgen::mint_v4_token(&client, &base, &admin_key, "bench v4").await?;
    let pids = [Some(standin.pid()), Some(server.pid()), None];
    let header = format!(
        "imd bench azure: {n} users (v4: {n} devices), concurrency {c}, {}\n  graph-standin pid \
         {} on {}, imd serve pid {} on {base}; load generator: this process",
        super::setup_line(database_url),
        standin.pid(),
        g.graph_url,
        server.pid(),
    );
    let mut alive = || -> anyhow::Result<()> {
        standin.check_alive()?;
        server.check_alive()
    };
    let url: Arc<Vec<Arc<str>>> = Arc::new(vec![format!("{base}/api/v1/activations").into()]);

    // v4: the main bench's fleet; the last `warm` devices warm up (unmeasured).
    let fleet = Fleet::plain(n + warm)?;
    let (report, _, took) =
        loadgen::upload_fleet(&client, &base, &admin_key, &fleet, deadline).await?;
    if report["created"].as_u64() != Some((n + warm) as u64) {
        anyhow::bail!("the device map was not applied as expected: {report}");
    }
    note(format_args!(
        "device map of {} rows uploaded in {:.2} s",
        n + warm,
        took.as_secs_f64()
    ));
    let mut v4_bodies: Vec<Bytes> = fleet
        .devices
        .iter()
        .map(|d| d.activation_body(&v4_token))
        .collect();
    let v4_warm = v4_bodies.split_off(n);
    let run = activation_run(&client, &url, v4_warm, c, deadline).await;
    if let Some(f) = first_failure(&run) {
        anyhow::bail!("a v4 warm-up activation failed: {f}");
    }
    alive()?;
    let before = Calls::read(&client, &g.graph_url).await?;
    let cpu = Cpu::mark(pids);
    let run = activation_run(&client, &url, v4_bodies, c, deadline).await;
    let calls = Calls::read(&client, &g.graph_url).await?.since(&before);
    let v4 = phase_of(
        "v4 activations (device map)",
        &run,
        &cpu,
        calls,
        Expect::Any,
    );
    alive()?;

    // v5 warm-up (unmeasured): HTTP connections to Graph, the client's token.
    let bodies: Vec<Bytes> = (n..bulk)
        .map(|i| v5_body(&v5_token, &format!("AZW-{i:06}"), &bulk_upn(i, bulk)))
        .collect();
    let run = activation_run(&client, &url, bodies, c, deadline).await;
    if let Some(f) = first_failure(&run) {
        anyhow::bail!(
            "a v5 warm-up activation failed: {f}; end of the server's log:\n{}",
            super::log_tail(&tmp.join("server.log"))
        );
    }
    alive()?;
    let setup_calls = Calls::read(&client, &g.graph_url).await?;

    // v5, every user once.
    let bodies: Vec<Bytes> = (0..n)
        .map(|i| v5_body(&v5_token, &format!("AZ1-{i:06}"), &bulk_upn(i, bulk)))
        .collect();
    let cpu = Cpu::mark(pids);
    let run = activation_run(&client, &url, bodies, c, deadline).await;
    let after = Calls::read(&client, &g.graph_url).await?;
    let v5 = phase_of(
        "v5 activations (new users)",
        &run,
        &cpu,
        after.since(&setup_calls),
        Expect::NewUser,
    );
    let mut users = vec![String::new(); n];
    for s in &run.samples {
        if let Ok(a) = &s.result {
            users[s.index] = a.user_id.clone();
        }
    }
    alive()?;

    // v5, every user again with a second device: the look-up cache's turn.
    let bodies: Vec<Bytes> = (0..n)
        .map(|i| v5_body(&v5_token, &format!("AZ2-{i:06}"), &bulk_upn(i, bulk)))
        .collect();
    let cpu = Cpu::mark(pids);
    let run = activation_run(&client, &url, bodies, c, deadline).await;
    let calls = Calls::read(&client, &g.graph_url).await?.since(&after);
    let repeat = phase_of(
        "v5 activations (2nd device)",
        &run,
        &cpu,
        calls,
        Expect::SameUser(&users),
    );
    alive()?;
    Ok(Outcome {
        header,
        phases: vec![v4, v5, repeat],
        setup_calls,
    })
}

pub async fn run(args: AzureBenchArgs) -> anyhow::Result<ExitCode> {
    // Before anything starts: a missing stand-in is a build step, not a failed run.
    standin_binary()?;
    let out = super::run_limited(
        "imd-bench-azure-",
        args.database_url.as_deref(),
        args.duration_limit_secs,
        async |dir, db, deadline| measure(&args, &dir, db.as_deref(), deadline).await,
    )
    .await?;
    super::print_header(&out.header);
    println!();
    print_tables(&out.phases);
    let [v4, v5, repeat] = &out.phases[..] else {
        unreachable!("three phases")
    };
    let errors: usize = out.phases.iter().map(|p| p.stats.error_count()).sum();
    let incomplete = out
        .phases
        .iter()
        .any(|p| p.stats.completed < p.stats.planned);
    let ratio =
        (v4.stats.throughput() > 0.0).then(|| v5.stats.throughput() / v4.stats.throughput());
    let user_per_new = v5.per_new_user(v5.calls.users());
    let group_per_act = v5.per_activation(v5.calls.groups());
    let v5_total_ok = v5.stats.ok + repeat.stats.ok;
    let group_overall = (v5_total_ok > 0)
        .then(|| (v5.calls.groups() + repeat.calls.groups()) as f64 / v5_total_ok as f64);
    println!();
    println!(
        "errors: {errors}, retried requests: {}; Graph calls before the measured v5 phases \
         (configuration, group search, warm-up): {:?}",
        out.phases.iter().map(|p| p.stats.retries).sum::<u64>(),
        out.setup_calls.routes
    );
    println!();
    let targets = [
        (
            "zero errors".to_string(),
            errors.to_string(),
            pass(errors == 0),
        ),
        (
            "Graph user look-ups per new user <= 1".into(),
            fmt_opt(user_per_new, "", 3),
            user_per_new.map_or("n/a", |u| pass(u <= 1.0)),
        ),
        (
            "user look-ups on 2nd devices = 0 (cache)".into(),
            repeat.calls.users().to_string(),
            pass(repeat.calls.users() == 0),
        ),
        (
            "group look-ups on 2nd devices = 0 (cache)".into(),
            repeat.calls.groups().to_string(),
            pass(repeat.calls.groups() == 0),
        ),
        (
            "group look-ups per v5 activation, both phases".into(),
            format!(
                "{} (new users: {})",
                fmt_opt(group_overall, "", 3),
                fmt_opt(group_per_act, "", 3)
            ),
            group_overall.map_or("n/a", |g| pass(g <= 1.0)),
        ),
        (
            format!("v5 / v4 activations/s >= {TARGET_RATIO:.2}"),
            fmt_opt(ratio, "", 2),
            ratio.map_or("n/a", |r| pass(r >= TARGET_RATIO)),
        ),
    ];
    super::print_targets(&targets, (48, 30), "", "; token = token endpoint requests");
    if args.json {
        println!(
            "{}",
            json!({
                "users": args.users,
                "concurrency": args.concurrency,
                "build": super::build(),
                "cpus": cores(),
                "v4": v4.json(),
                "v5_new_users": v5.json(),
                "v5_second_device": repeat.json(),
                "setup_graph_calls": out.setup_calls.routes,
                "ratio_v5_v4": ratio,
                "errors": errors,
                "targets": targets
                    .iter()
                    .map(|(t, f, r)| json!({"target": t, "figure": f, "result": r}))
                    .collect::<Vec<_>>(),
            })
        );
    }
    Ok(if errors == 0 && !incomplete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_upns_are_padded_like_the_stand_in_pads_them() {
        assert_eq!(bulk_upn(7, 5_128), "bulk0007@contoso.test");
        assert_eq!(bulk_upn(7, 10_001), "bulk00007@contoso.test");
        assert_eq!(bulk_upn(3, 10), "bulk0003@contoso.test");
        let t = graph_standin::Tenant::fixture().with_bulk_users(10_001);
        assert!(t.user(&bulk_upn(10_000, 10_001)).is_some());
        assert!(t.user(&bulk_upn(42, 10_001)).is_some());
    }

    #[test]
    fn calls_are_split_into_users_groups_tokens_and_the_rest() {
        let at = |pairs: &[(&str, u64)]| Calls {
            routes: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        let before = at(&[("user", 10), ("token", 1)]);
        let after = at(&[
            ("user", 15),
            ("users", 1),
            ("transitiveMemberOf", 5),
            ("groups", 1),
            ("token", 2),
            ("unknown", 1),
        ]);
        let d = after.since(&before);
        assert_eq!((d.users(), d.groups(), d.tokens(), d.other()), (6, 6, 1, 1));
        assert_eq!(after.since(&after), Calls::default());
    }
}
