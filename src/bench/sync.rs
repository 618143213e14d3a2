//! `imd bench sync`: a directory sync of many users through one connector (docs/sync.md), next
//! to the directory's own limit. In one run it starts a throwaway slapd with N users
//! (`fixture.rs`, shared with `imd bench directory`: memberof overlay, `dbnosync`, users in 10
//! groups, some nested), `imd serve` on a temporary data directory (SQLite, or a database of its
//! own on `--database-url`), and a real `imd connector run` process registered with it, and
//! creates one AD/LDAP mapping of the whole base DN with `auto_import`. Then it measures:
//!
//! 1. **raw paged search**: the connector's own user search (`Directory::users_search`: same
//!    base, filter and attributes, same page size) paged straight through with ldap3 over one
//!    bound connection: the least any sync must ask the directory;
//! 2. **connector SearchUsers, in process**: the connector's `Directory::execute(SearchUsers)`
//!    paged through in this process (groups resolved, entries converted; no channel, no
//!    service), to tell the connector's share of a sync from the service's;
//! 3. **first full sync**: `POST /api/v1/admin/sync`, then `GET /api/v1/admin/sync-runs/{id}`
//!    every 200 ms until the run is no longer `running`; it must end `completed` with every user
//!    imported. Timed from the POST to the poll that sees the end;
//! 4. **no-change re-sync**: the same again; it must import and update nobody.
//!
//! At the end it reads the peak RSS (`VmHWM`) of `imd serve` and of the connector. Every child
//! process is stopped by its PID at the end, also on error or at `--max-seconds`. Loading the
//! directory is timed and printed, not held against a target.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ldap3::controls::PagedResults;
use ldap3::{Scope, SearchResult};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::fixture::{
    self, CONNECTOR_PAGE_SIZE, READER_DN, READER_PW, admin_get, bound, expect_json, start_connector,
};
use super::{ServerProcess, cores, create_org, fmt_opt, note, pass, status_mb};
use crate::connector::config::ConnectorConfig;
use crate::connector::directory::{Directory, paged_cookie};
use crate::connector::proto::{OpResult, Operation};
use crate::loadgen::{self, count};

/// The first full sync of this many users ...
const TARGET_USERS: usize = 100_000;
/// ... takes less than this.
const TARGET_FIRST_SECS: f64 = 30.0;
/// A no-change re-sync against the raw paged search of the same entries, in the same run.
const TARGET_RESYNC_RATIO: f64 = 1.5;
/// Peak RSS of `imd serve` and of the connector, each.
const TARGET_RSS_MB: f64 = 300.0;
/// How often a running sync is polled.
const POLL: Duration = Duration::from_millis(200);
/// The connector's `pool_size`.
const POOL_SIZE: usize = 4;
/// Deadline of one raw page (the service's `[sync] page_timeout_ms` default).
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct SyncBenchArgs {
    /// Directory users, all under the one mapping; the first-sync target is for 100,000.
    #[arg(long, default_value_t = TARGET_USERS, value_parser = count(10, 1_000_000))]
    pub users: usize,
    /// A PostgreSQL server for imd's own database (the bench creates a database of its own there
    /// and drops it afterwards); SQLite in the temporary data directory otherwise.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Hard cap on the whole run, in seconds.
    #[arg(
        long,
        visible_alias = "duration-limit-secs",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(10..=3600)
    )]
    pub max_seconds: u64,
    /// Also print the figures as one JSON object at the end.
    #[arg(long)]
    pub json: bool,
}

/// slapd, imd serve, the connector and this process.
type Cpu = fixture::Cpu<4>;

/// An environment variable and its value.
type Setting = (String, String);

/// `[sync]` settings the bench gives the server, each only if this build's configuration knows
/// it (a build without directory sync refuses unknown keys): no scheduled run may start on its
/// own and spoil the first measured one, and pages as large as the raw side's. Returns the ones
/// set and the ones this build does not know.
fn sync_env() -> (Vec<Setting>, Vec<Setting>) {
    [
        ("IMD_SYNC__SCHEDULER", "false".to_string()),
        ("IMD_SYNC__PAGE_SIZE", CONNECTOR_PAGE_SIZE.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .partition(|kv| crate::config::load(Some(Path::new("/dev/null")), [kv.clone()], &[]).is_ok())
}

// ---------------------------------------------------------------------------------------------
// The phases.

/// A paging through every user: entries, pages and CPU.
struct Listing {
    label: &'static str,
    secs: f64,
    entries: usize,
    pages: usize,
    /// Users whose transitive groups differ from the fixture's (the connector's listing only),
    /// and the first of them.
    wrong_groups: (usize, Option<String>),
    cpu: [Option<f64>; 4],
}

/// A finished sync run.
#[derive(Debug)]
struct SyncRun {
    label: &'static str,
    /// From the POST to the poll that saw the run end (so up to `POLL` late).
    wall_secs: f64,
    /// `ended_at - started_at` of the run record.
    server_secs: Option<f64>,
    /// The run record as `GET /api/v1/admin/sync-runs/{id}` last answered.
    run: Value,
    cpu: [Option<f64>; 4],
}

impl SyncRun {
    fn count(&self, key: &str) -> Option<u64> {
        self.run["counts"][key].as_u64()
    }
}

fn listed(label: &'static str, t: Instant, cpu: &Cpu, entries: usize, pages: usize) -> Listing {
    let l = Listing {
        label,
        secs: t.elapsed().as_secs_f64(),
        entries,
        pages,
        wrong_groups: (0, None),
        cpu: cpu.since(),
    };
    note(format_args!(
        "{label}: {entries} users in {pages} pages in {:.2} s",
        l.secs
    ));
    l
}

fn out_of_time(deadline: Instant, during: &str) -> anyhow::Result<()> {
    if Instant::now() >= deadline {
        anyhow::bail!("--max-seconds reached during {during}");
    }
    Ok(())
}

/// The connector's user search, paged straight through with ldap3 over one connection.
async fn raw_search(
    url: &str,
    dir: &Directory,
    page_size: u32,
    pids: [Option<u32>; 4],
    deadline: Instant,
) -> anyhow::Result<Listing> {
    let (base, filter, attrs) = dir.users_search();
    let mut ldap = bound(url, READER_DN, READER_PW).await?;
    let cpu = Cpu::mark(pids);
    let t = Instant::now();
    let (mut entries, mut pages, mut cookie) = (0, 0, Vec::new());
    loop {
        out_of_time(deadline, "the raw paged search")?;
        let SearchResult(page, r) = ldap
            .with_timeout(PAGE_TIMEOUT)
            .with_controls(PagedResults {
                size: page_size as i32,
                cookie,
            })
            .search(&base, Scope::Subtree, &filter, attrs.clone())
            .await?;
        if r.rc != 0 {
            anyhow::bail!("the raw paged search failed after {entries} entries: {r}");
        }
        entries += page.len();
        pages += 1;
        cookie = paged_cookie(&r.ctrls);
        if cookie.is_empty() {
            break;
        }
    }
    let listing = listed("raw paged search (ldap3)", t, &cpu, entries, pages);
    let _ = ldap.unbind().await;
    Ok(listing)
}

/// `SearchUsers` through the connector's `Directory`, in this process, every page; checks every
/// user's transitive groups against the fixture's.
async fn connector_search(
    dir: &Directory,
    page_size: u32,
    pids: [Option<u32>; 4],
    deadline: Instant,
) -> anyhow::Result<Listing> {
    let cpu = Cpu::mark(pids);
    let t = Instant::now();
    let (mut entries, mut pages, mut cursor) = (0, 0, None);
    let mut wrong: (usize, Option<String>) = (0, None);
    loop {
        out_of_time(deadline, "the connector's SearchUsers")?;
        let op = Operation::SearchUsers {
            base: None,
            filter: None,
            page_size,
            cursor: cursor.take(),
        };
        match dir.execute(op).await {
            Ok(OpResult::Users { items, next_cursor }) => {
                for u in &items {
                    let i = u.login.as_deref().and_then(|l| l.strip_prefix("user"));
                    let why = match i.and_then(|i| i.parse().ok()) {
                        Some(i) => fixture::groups_wrong(i, &u.groups),
                        None => Some(format!("a user not of the fixture: {}", u.dn)),
                    };
                    if let Some(why) = why {
                        wrong.0 += 1;
                        wrong.1.get_or_insert(why);
                    }
                }
                entries += items.len();
                pages += 1;
                match next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            Ok(other) => anyhow::bail!("SearchUsers answered {other:?}"),
            Err(e) => anyhow::bail!("SearchUsers failed after {entries} users: {}", e.message),
        }
    }
    let mut l = listed("connector SearchUsers, in process", t, &cpu, entries, pages);
    l.wrong_groups = wrong;
    Ok(l)
}

fn rfc3339_secs(run: &Value, from: &str, to: &str) -> Option<f64> {
    use time::format_description::well_known::Rfc3339;
    let at = |k: &str| time::OffsetDateTime::parse(run[k].as_str()?, &Rfc3339).ok();
    Some((at(to)? - at(from)?).as_seconds_f64())
}

/// The service the sync runs are started on.
struct Service<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
    key: &'a str,
    pids: [Option<u32>; 4],
    deadline: Instant,
}

/// Starts a sync run and polls it until it is no longer `running`; `alive` checks the children
/// between polls.
async fn sync_once(
    label: &'static str,
    service: &Service<'_>,
    alive: &mut impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<SyncRun> {
    let Service {
        client,
        base,
        key,
        pids,
        deadline,
    } = *service;
    let cpu = Cpu::mark(pids);
    let t = Instant::now();
    let req = client
        .post(format!("{base}/api/v1/admin/sync"))
        .bearer_auth(key);
    let started = match expect_json(req, "POST /api/v1/admin/sync", StatusCode::ACCEPTED).await {
        Ok(v) => v,
        Err(e) if e.to_string().contains("answered 404") => {
            anyhow::bail!("{e:#} (this build has no directory sync)")
        }
        Err(e) if e.to_string().contains("sync_in_progress") => anyhow::bail!(
            "{e:#} (a run the bench did not start: the scheduler? `sync_env` turns it off \
             through IMD_SYNC__SCHEDULER when this build knows that setting)"
        ),
        Err(e) => return Err(e),
    };
    let Some(id) = started["id"].as_str() else {
        anyhow::bail!("POST /api/v1/admin/sync answered without an id: {started}");
    };
    note(format_args!("{label}: run {id} started"));
    loop {
        tokio::time::sleep(POLL).await;
        alive()?;
        let run = admin_get(client, base, key, &format!("/api/v1/admin/sync-runs/{id}")).await?;
        match run["status"].as_str() {
            Some("running") => {}
            Some(status) => {
                let r = SyncRun {
                    label,
                    wall_secs: t.elapsed().as_secs_f64(),
                    server_secs: rfc3339_secs(&run, "started_at", "ended_at"),
                    cpu: cpu.since(),
                    run: run.clone(),
                };
                note(format_args!(
                    "{label}: {status} after {:.2} s, counts {}, sources {}",
                    r.wall_secs, run["counts"], run["sources"]
                ));
                return Ok(r);
            }
            None => {
                anyhow::bail!("GET /api/v1/admin/sync-runs/{id}: a run without a status: {run}")
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "--max-seconds reached with the {label} still running after {:.1} s: {run}",
                t.elapsed().as_secs_f64()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Default)]
struct Outcome {
    header: String,
    /// Generating the LDIF, slapadd, starting slapd.
    load_secs: [f64; 3],
    raw: Option<Listing>,
    connector: Option<Listing>,
    first: Option<SyncRun>,
    resync: Option<SyncRun>,
    /// Peak RSS (VmHWM) at the end, MB: imd serve, the connector, slapd.
    peak_mb: [Option<f64>; 3],
    /// What a finished phase got wrong (a run that did not complete, wrong counts).
    problems: Vec<String>,
    /// Why the run stopped early, if it did.
    incomplete: Option<String>,
}

impl Outcome {
    fn users_per_s(&self, users: usize) -> Option<f64> {
        let f = self.first.as_ref()?;
        (f.wall_secs > 0.0).then(|| users as f64 / f.wall_secs)
    }

    /// Re-sync wall time over the raw paged search's.
    fn ratio(&self) -> Option<f64> {
        let (raw, resync) = (self.raw.as_ref()?.secs, self.resync.as_ref()?.wall_secs);
        (raw > 0.0).then(|| resync / raw)
    }

    /// Records what is wrong with a finished run.
    fn check(&mut self, run: &SyncRun, imported: u64, updated: Option<u64>) {
        let status = run.run["status"].as_str().unwrap_or("?");
        if status != "completed" {
            self.problems.push(format!(
                "{} ended {status}, not completed: {}",
                run.label, run.run["error"]
            ));
        }
        if run.count("imported") != Some(imported) {
            self.problems.push(format!(
                "{}: imported {}, expected {imported}",
                run.label, run.run["counts"]["imported"]
            ));
        }
        if let Some(u) = updated
            && run.count("updated") != Some(u)
        {
            self.problems.push(format!(
                "{}: updated {}, expected {u}",
                run.label, run.run["counts"]["updated"]
            ));
        }
    }
}

async fn measure(
    args: &SyncBenchArgs,
    tmp: &Path,
    database_url: Option<&str>,
    deadline: Instant,
) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe()?;
    let n = args.users;
    let mut out = Outcome::default();

    // Setting up: any failure here ends the run without figures.
    let slapd = fixture::start_slapd(&tmp.join("slapd"), n, 0).await?;
    out.load_secs = slapd.load_secs;
    let (mut slapd, ldap_url) = (slapd.process, slapd.url);
    let data = tmp.join("data");
    let admin_key = create_org(&exe, &data, database_url).await?;
    let (env, unknown) = sync_env();
    let (mut server, addr): (ServerProcess, _) =
        super::start_server_with(&exe, &data, database_url, &tmp.join("server.log"), &env).await?;
    let base = format!("http://{addr}");
    let client = loadgen::http_client(4)?;
    let (mut connector, connector_toml) = start_connector(
        &exe,
        &client,
        &base,
        &admin_key,
        &tmp.join("connector"),
        &ldap_url,
        POOL_SIZE,
    )
    .await?;
    let mapping = fixture::map_everyone(&client, &base, &admin_key, true).await?;
    if mapping["auto_import"] != json!(true) {
        anyhow::bail!("the mapping was stored without auto_import: {mapping}");
    }
    let config = ConnectorConfig::load(Some(&connector_toml))?;
    let page_size = config.directory.page_size;
    let pids = [
        Some(slapd.pid()),
        Some(server.pid()),
        Some(connector.pid()),
        None,
    ];
    let setting = |kv: &[Setting]| {
        kv.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    out.header = format!(
        "imd bench sync: {n} users under one mapping (auto_import), connector page_size \
         {page_size}, {}\n  slapd pid {} on {ldap_url}, imd serve pid {} on {base}, connector \
         pid {}; raw client: this process\n  server settings: {}{}",
        super::setup_line(database_url),
        slapd.pid(),
        server.pid(),
        connector.pid(),
        if env.is_empty() {
            "defaults".to_string()
        } else {
            setting(&env)
        },
        if unknown.is_empty() {
            String::new()
        } else {
            format!(
                " (this build knows no {}: left at its defaults)",
                setting(&unknown)
            )
        }
    );
    let mut alive = || -> anyhow::Result<()> {
        slapd.check_alive()?;
        server.check_alive()?;
        connector.check_alive()
    };

    let service = Service {
        client: &client,
        base: &base,
        key: &admin_key,
        pids,
        deadline,
    };

    // The phases: a failure is recorded and the figures so far are still printed.
    let phases = async {
        // The connector's directory code in this process, for its search and its SearchUsers;
        // dropped (its connections closed) before the syncs.
        let dir = Directory::new(&config).map_err(|e| anyhow::anyhow!(e.message))?;
        out.raw = Some(raw_search(&ldap_url, &dir, page_size, pids, deadline).await?);
        out.connector = Some(connector_search(&dir, page_size, pids, deadline).await?);
        drop(dir);
        alive()?;
        let first = sync_once("first full sync", &service, &mut alive).await?;
        out.check(&first, n as u64, None);
        let completed = first.run["status"] == "completed";
        out.first = Some(first);
        if !completed {
            anyhow::bail!("the first sync did not complete; no re-sync");
        }
        let resync = sync_once("no-change re-sync", &service, &mut alive).await?;
        out.check(&resync, 0, Some(0));
        out.resync = Some(resync);
        alive()
    };
    if let Err(e) = phases.await {
        out.incomplete = Some(format!("{e:#}"));
    }
    out.peak_mb = [
        status_mb(server.pid(), "VmHWM"),
        status_mb(connector.pid(), "VmHWM"),
        status_mb(slapd.pid(), "VmHWM"),
    ];
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Figures.

fn print_phases(out: &Outcome) {
    println!(
        "{:<36} {:>9} {:>8} {:>9} {:>9} {:>6} {:>6} {:>6} {:>6}",
        "phase", "wall s", "users", "users/s", "server s", "slapd", "imd", "conn.", "bench"
    );
    let row = |label: &str,
               secs: f64,
               users: Option<u64>,
               server: Option<f64>,
               cpu: &[Option<f64>; 4]| {
        let cpu = |i: usize| fmt_opt(cpu[i], "%", 0);
        println!(
            "{:<36} {:>9.2} {:>8} {:>9} {:>9} {:>6} {:>6} {:>6} {:>6}",
            label,
            secs,
            users.map_or("-".into(), |u| u.to_string()),
            fmt_opt(users.filter(|_| secs > 0.0).map(|u| u as f64 / secs), "", 0),
            fmt_opt(server, "", 2),
            cpu(0),
            cpu(1),
            cpu(2),
            cpu(3),
        );
    };
    for l in [&out.raw, &out.connector].into_iter().flatten() {
        row(l.label, l.secs, Some(l.entries as u64), None, &l.cpu);
    }
    for s in [&out.first, &out.resync].into_iter().flatten() {
        row(s.label, s.wall_secs, s.count("seen"), s.server_secs, &s.cpu);
    }
}

/// (target, figure, PASS/MISS/n/a)
fn targets(out: &Outcome, users: usize) -> Vec<(String, String, &'static str)> {
    let mut t = Vec::new();
    let first = out.first.as_ref().map(|f| f.wall_secs);
    let (figure, status) = match first {
        None => ("-".to_string(), "n/a"),
        Some(s) if users >= TARGET_USERS => (format!("{s:.2} s"), pass(s < TARGET_FIRST_SECS)),
        // Another size is not the target's; a linear estimate still says roughly where it is.
        Some(s) => (
            format!(
                "{s:.2} s for {users} (~{:.1} s per 100k)",
                s * TARGET_USERS as f64 / users as f64
            ),
            "n/a",
        ),
    };
    t.push((
        format!("first full sync of {TARGET_USERS} users < {TARGET_FIRST_SECS:.0} s"),
        figure,
        status,
    ));
    let ratio = out.ratio();
    t.push((
        format!("no-change re-sync <= {TARGET_RESYNC_RATIO} x raw paged search"),
        match (ratio, &out.resync, &out.raw) {
            (Some(r), Some(s), Some(raw)) => {
                format!("{r:.2} ({:.2} s / {:.2} s)", s.wall_secs, raw.secs)
            }
            _ => "-".into(),
        },
        ratio.map_or("n/a", |r| pass(r <= TARGET_RESYNC_RATIO)),
    ));
    for (what, mb) in [("imd serve", out.peak_mb[0]), ("connector", out.peak_mb[1])] {
        t.push((
            format!("{what} peak RSS < {TARGET_RSS_MB:.0} MB"),
            fmt_opt(mb, " MB", 1),
            mb.map_or("n/a", |m| pass(m < TARGET_RSS_MB)),
        ));
    }
    t
}

fn listing_json(l: &Option<Listing>) -> Value {
    l.as_ref().map_or(Value::Null, |l| {
        json!({"secs": l.secs, "users": l.entries, "pages": l.pages,
               "wrong_groups": l.wrong_groups.0, "cpu_pct": cpu_json(&l.cpu)})
    })
}

fn sync_json(s: &Option<SyncRun>) -> Value {
    s.as_ref().map_or(Value::Null, |s| {
        json!({"wall_secs": s.wall_secs, "server_secs": s.server_secs, "run": s.run,
               "cpu_pct": cpu_json(&s.cpu)})
    })
}

fn cpu_json(cpu: &[Option<f64>; 4]) -> Value {
    json!({"slapd": cpu[0], "imd": cpu[1], "connector": cpu[2], "bench": cpu[3]})
}

pub async fn run(args: SyncBenchArgs) -> anyhow::Result<ExitCode> {
    let measured = async |tmp: PathBuf, db: Option<String>, deadline: Instant| {
        measure(&args, &tmp, db.as_deref(), deadline).await
    };
    let db = args.database_url.as_deref();
    let out = super::run_limited("imd-bench-sync-", db, args.max_seconds, measured).await?;
    let n = args.users;
    super::print_header(&out.header);
    let [generated, added, started] = out.load_secs;
    println!(
        "  directory loaded in {:.1} s (LDIF {generated:.1} s, slapadd {added:.1} s, slapd start \
         {started:.1} s; not part of the targets)",
        out.load_secs.iter().sum::<f64>()
    );
    println!();
    print_phases(&out);
    println!();
    for s in [&out.first, &out.resync].into_iter().flatten() {
        println!(
            "{}: status {}, counts {}, error {}",
            s.label, s.run["status"], s.run["counts"], s.run["error"]
        );
    }
    if out.first.is_some() {
        println!(
            "first full sync: {} users/s; wall s: from the POST to the poll (every {} ms) that \
             saw the run end; server s: the run's ended_at - started_at",
            fmt_opt(out.users_per_s(n), "", 0),
            POLL.as_millis()
        );
    }
    println!(
        "peak RSS (VmHWM) at the end: imd serve {}, connector {}, slapd {}",
        fmt_opt(out.peak_mb[0], " MB", 1),
        fmt_opt(out.peak_mb[1], " MB", 1),
        fmt_opt(out.peak_mb[2], " MB", 1),
    );
    let listings = [&out.raw, &out.connector].into_iter().flatten();
    let listings_ok = listings.clone().count() == 2
        && listings
            .clone()
            .all(|l| l.entries == n && l.wrong_groups.0 == 0);
    for l in listings {
        if l.entries != n {
            println!("WRONG: {} found {} users, not {n}", l.label, l.entries);
        }
        if let (k, Some(first)) = &l.wrong_groups {
            println!(
                "WRONG: {}: {k} users with wrong groups, e.g. {first}",
                l.label
            );
        }
    }
    for p in &out.problems {
        println!("WRONG: {p}");
    }
    if let Some(why) = &out.incomplete {
        println!("RUN INCOMPLETE: {why}");
    }
    let targets = targets(&out, n);
    println!();
    super::print_targets(&targets, (48, 36), "informational; ", "");
    let ok = out.incomplete.is_none() && out.problems.is_empty() && listings_ok;
    if args.json {
        println!(
            "{}",
            json!({
                "users": n,
                "page_size": CONNECTOR_PAGE_SIZE,
                "build": super::build(),
                "cpus": cores(),
                "load_secs": {"ldif": generated, "slapadd": added, "slapd_start": started},
                "raw_paged_search": listing_json(&out.raw),
                "connector_search_users": listing_json(&out.connector),
                "first_sync": sync_json(&out.first),
                "resync": sync_json(&out.resync),
                "first_sync_users_per_s": out.users_per_s(n),
                "resync_vs_raw": out.ratio(),
                "peak_rss_mb": {"imd": out.peak_mb[0], "connector": out.peak_mb[1], "slapd": out.peak_mb[2]},
                "problems": out.problems,
                "complete": out.incomplete.is_none(),
                "incomplete_reason": out.incomplete,
                "targets": targets
                    .iter()
                    .map(|(t, f, s)| json!({"target": t, "figure": f, "result": s}))
                    .collect::<Vec<_>>(),
            })
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &'static str, wall_secs: f64, run: Value) -> SyncRun {
        SyncRun {
            label,
            wall_secs,
            server_secs: None,
            run,
            cpu: [None; 4],
        }
    }

    #[test]
    fn a_run_is_checked_for_status_and_counts() {
        let mut out = Outcome::default();
        let good = run(
            "first full sync",
            2.0,
            json!({"status": "completed", "counts": {"imported": 10, "updated": 0}}),
        );
        out.check(&good, 10, None);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let bad = run(
            "no-change re-sync",
            1.0,
            json!({"status": "failed", "error": "connector dropped",
                   "counts": {"imported": 0, "updated": 3}}),
        );
        out.check(&bad, 0, Some(0));
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems[0].contains("failed"));
        assert!(out.problems[1].contains("updated 3"));
    }

    #[test]
    fn targets_extrapolate_other_sizes_and_hold_the_ratio() {
        let mut out = Outcome {
            first: Some(run("first full sync", 1.5, json!({}))),
            resync: Some(run("no-change re-sync", 0.3, json!({}))),
            raw: Some(Listing {
                label: "raw",
                secs: 0.25,
                entries: 5_000,
                pages: 10,
                wrong_groups: (0, None),
                cpu: [None; 4],
            }),
            peak_mb: [Some(120.0), Some(301.0), None],
            ..Outcome::default()
        };
        let t = targets(&out, 5_000);
        assert_eq!(t[0].2, "n/a");
        assert!(t[0].1.contains("~30.0 s per 100k"), "{}", t[0].1);
        assert_eq!(t[1].2, "PASS", "1.2 <= 1.5");
        assert_eq!((t[2].2, t[3].2), ("PASS", "MISS"));
        out.first = Some(run("first full sync", 31.0, json!({})));
        assert_eq!(targets(&out, TARGET_USERS)[0].2, "MISS");
        assert_eq!(out.users_per_s(TARGET_USERS).map(f64::round), Some(3226.0));
    }

    /// A stand-in for the sync API: `POST /sync` answers `post_status`; run r1 is `running` for
    /// two polls, then `completed`.
    async fn fake_api(post_status: u16) -> String {
        use actix_web::{App, HttpResponse, HttpServer, http, web};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let polls = web::Data::new(AtomicUsize::new(0));
        let server = HttpServer::new(move || {
            let post = move || async move {
                let status = http::StatusCode::from_u16(post_status).unwrap();
                HttpResponse::build(status).json(json!({"id": "r1", "status": "running",
                    "error": {"code": "sync_in_progress"}}))
            };
            let get = |polls: web::Data<AtomicUsize>| async move {
                let done = polls.fetch_add(1, Ordering::SeqCst) >= 2;
                HttpResponse::Ok().json(json!({
                    "id": "r1",
                    "status": if done { "completed" } else { "running" },
                    "started_at": "2026-12-01T10:00:00Z",
                    "ended_at": if done { json!("2026-12-01T10:00:00.5Z") } else { Value::Null },
                    "counts": {"seen": 10, "imported": 10, "updated": 0},
                }))
            };
            App::new()
                .app_data(polls.clone())
                .route("/api/v1/admin/sync", web::post().to(post))
                .route("/api/v1/admin/sync-runs/r1", web::get().to(get))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let url = format!("http://{}", server.addrs()[0]);
        tokio::spawn(server.run());
        url
    }

    #[tokio::test]
    async fn a_sync_run_is_polled_until_it_ends() {
        let client = reqwest::Client::new();
        let base = fake_api(202).await;
        let service = Service {
            client: &client,
            base: &base,
            key: "key",
            pids: [None; 4],
            deadline: Instant::now() + Duration::from_secs(30),
        };
        let mut checks = 0;
        let mut alive = || {
            checks += 1;
            Ok(())
        };
        let r = sync_once("first full sync", &service, &mut alive)
            .await
            .unwrap();
        assert_eq!(r.run["status"], "completed");
        assert_eq!((r.count("imported"), r.server_secs), (Some(10), Some(0.5)));
        assert!(r.wall_secs >= 3.0 * POLL.as_secs_f64(), "{}", r.wall_secs);
        assert_eq!(checks, 3, "the children are checked at every poll");

        let busy = fake_api(409).await;
        let service = Service {
            base: &busy,
            ..service
        };
        let e = sync_once("first full sync", &service, &mut || Ok(()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("409") && e.contains("scheduler"), "{e}");

        let slow = fake_api(202).await;
        let service = Service {
            base: &slow,
            deadline: Instant::now(),
            ..service
        };
        let e = sync_once("first full sync", &service, &mut || Ok(()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("--max-seconds reached"), "{e}");
    }

    #[test]
    fn run_record_times_are_read() {
        let v = json!({"started_at": "2026-12-01T10:00:00Z", "ended_at": "2026-12-01T10:00:12.5Z"});
        assert_eq!(rfc3339_secs(&v, "started_at", "ended_at"), Some(12.5));
        assert_eq!(rfc3339_secs(&json!({}), "started_at", "ended_at"), None);
    }

    #[test]
    fn sync_settings_are_only_given_to_a_build_that_knows_them() {
        let (set, unknown) = sync_env();
        assert_eq!(set.len() + unknown.len(), 2);
        for kv in &set {
            assert!(crate::config::load(Some(Path::new("/dev/null")), [kv.clone()], &[]).is_ok());
        }
    }
}
