//! `imd bench directory`: IMD v2 activations through one connector, next to the directory's own
//! limit. In one run it starts a throwaway slapd on a free loopback port (memberof overlay,
//! `dbnosync`, N users in 10 groups, some of them nested two levels up), `imd serve` on a
//! temporary data directory, and a real `imd connector run` process registered with it; then it
//! fires N v2 activations (every user once, distinct serials) and, against the same slapd at the
//! same concurrency, N raw look-ups of the same users made straight with `ldap3` over as many
//! bound connections as the connector's pool holds, with the connector's own search (same base,
//! filter and attributes). Every child process is stopped by its PID at the end, also on error.
//!
//! What "raw" means: one search per user, which is the least any resolver must ask the
//! directory. It is measured twice: multiplexed (all requests in flight at once over the pool's
//! connections, the directory's limit; the ratio is taken against this one) and one request per
//! connection at a time (how the connector used its pool before look-ups were multiplexed; it
//! still uses connections that way for paging cursors).

use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::ProgressBar;
use ldap3::{Ldap, LdapConnAsync, Scope, SearchOptions};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::{ServerProcess, cores, cpu_ticks, create_org, fmt_opt, note, pass};
use crate::connector::config::ConnectorConfig;
use crate::connector::directory::Directory;
use crate::connector::proto::{OpResult, Operation};
use crate::loadgen::{self, Attempted, Failure, PhaseStats, count};

/// Activations/s through the connector against raw look-ups/s, in the same run.
const TARGET_RATIO: f64 = 0.6;
const AIM_RATIO: f64 = 0.8;
const BASE_DN: &str = "dc=bench,dc=example";
const ADMIN_DN: &str = "cn=admin,dc=bench,dc=example";
const ADMIN_PW: &str = "bench-admin";
const READER_DN: &str = "cn=imd-reader,ou=service,dc=bench,dc=example";
const READER_PW: &str = "bench-reader";
/// Leaf groups; every user is in exactly one of them.
const TEAMS: usize = 10;

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

// ---------------------------------------------------------------------------------------------
// Child processes other than the server (which `super::ServerProcess` covers).

/// A child stopped by its PID on drop: SIGTERM, up to 5 s to exit, then SIGKILL.
pub(super) struct Guarded {
    pub(super) child: Child,
    pub(super) what: &'static str,
    pub(super) log: PathBuf,
}

impl Guarded {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}); end of its log:\n{}",
                self.what,
                super::log_tail(&self.log)
            );
        }
        Ok(())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command that sees no `IMD_*` variable of the caller's (the connector reads
/// `IMD_CONNECTOR_*` as overrides).
fn clean(exe: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("IMD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("IMD_LOG", "warn").stdin(Stdio::null());
    cmd
}

// ---------------------------------------------------------------------------------------------
// The directory.

fn login(i: usize) -> String {
    format!("user{i:06}")
}

fn warm_login(i: usize) -> String {
    format!("warm{i:04}")
}

fn user_dn(login: &str) -> String {
    format!("uid={login},ou=people,{BASE_DN}")
}

fn group_dn(cn: &str) -> String {
    format!("cn={cn},ou=groups,{BASE_DN}")
}

fn team(i: usize) -> String {
    format!("team-{i:02}")
}

/// The parent group of a team, if it has one: teams 0–4 are in `division-a`, 5–7 in
/// `division-b`, 8–9 in none; both divisions are in `staff`.
fn team_parent(t: usize) -> Option<&'static str> {
    match t {
        0..=4 => Some("division-a"),
        5..=7 => Some("division-b"),
        _ => None,
    }
}

/// The groups a user of team `t` is in, transitively (what the connector must report).
fn expected_groups(t: usize) -> Vec<String> {
    let mut g = vec![group_dn(&team(t))];
    if let Some(p) = team_parent(t) {
        g.push(group_dn(p));
        g.push(group_dn("staff"));
    }
    g
}

/// The directory's content as LDIF: base, OUs, the service account, `users` measured users and
/// `warm` warm-up users (user `i` in team `i % 10`), then the groups, children before parents
/// (the memberof overlay writes memberOf onto entries that exist).
fn ldif(users: usize, warm: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity((users + warm) * 220);
    let _ = write!(
        s,
        "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Bench\ndc: bench\n\n"
    );
    for ou in ["people", "groups", "service"] {
        let _ = write!(
            s,
            "dn: ou={ou},{BASE_DN}\nobjectClass: organizationalUnit\nou: {ou}\n\n"
        );
    }
    let _ = write!(
        s,
        "dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
         cn: imd-reader\nuserPassword: {READER_PW}\n\n"
    );
    let all: Vec<String> = (0..users)
        .map(login)
        .chain((0..warm).map(warm_login))
        .collect();
    for (i, l) in all.iter().enumerate() {
        let _ = write!(
            s,
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {l}\ncn: Bench User {i}\nsn: User{i}\n\
             mail: {l}@bench.example\ndepartmentNumber: Team{t}\n\n",
            dn = user_dn(l),
            t = i % TEAMS
        );
    }
    for t in 0..TEAMS {
        let _ = write!(
            s,
            "dn: {}\nobjectClass: groupOfNames\ncn: {}\n",
            group_dn(&team(t)),
            team(t)
        );
        for l in all.iter().skip(t).step_by(TEAMS) {
            let _ = writeln!(s, "member: {}", user_dn(l));
        }
        s.push('\n');
    }
    for div in ["division-a", "division-b"] {
        let _ = write!(
            s,
            "dn: {}\nobjectClass: groupOfNames\ncn: {div}\n",
            group_dn(div)
        );
        for t in (0..TEAMS).filter(|t| team_parent(*t) == Some(div)) {
            let _ = writeln!(s, "member: {}", group_dn(&team(t)));
        }
        s.push('\n');
    }
    let _ = write!(
        s,
        "dn: {}\nobjectClass: groupOfNames\ncn: staff\nmember: {}\nmember: {}\n\n",
        group_dn("staff"),
        group_dn("division-a"),
        group_dn("division-b")
    );
    s
}

/// slapd.conf in the style of tests/ldap/openldap/slapd.conf.in: plain LDAP on loopback only (no
/// TLS on either side, so both pay the same), no fsync, no logging, the indexes and overlays the
/// connector's queries rely on.
fn slapd_conf(dir: &Path) -> String {
    let d = dir.display();
    let modules = if Path::new("/usr/lib/ldap/back_mdb.so").exists() {
        "modulepath /usr/lib/ldap\nmoduleload back_mdb\nmoduleload memberof\nmoduleload refint\n"
    } else {
        ""
    };
    format!(
        "include /etc/ldap/schema/core.schema\n\
         include /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\n\
         include /etc/ldap/schema/nis.schema\n\
         pidfile {d}/slapd.pid\n\
         argsfile {d}/slapd.args\n\
         loglevel 0\n\
         {modules}\
         database mdb\n\
         maxsize 1073741824\n\
         suffix \"{BASE_DN}\"\n\
         rootdn \"{ADMIN_DN}\"\n\
         rootpw {ADMIN_PW}\n\
         directory {d}/data\n\
         dbnosync\n\
         index objectClass eq\n\
         index uid,mail,cn eq\n\
         index member,memberOf,uniqueMember,memberUid eq\n\
         index entryUUID eq\n\
         overlay memberof\n\
         memberof-group-oc groupOfNames\n\
         memberof-member-ad member\n\
         memberof-memberof-ad memberOf\n\
         memberof-refint TRUE\n\
         overlay refint\n\
         refint_attributes member\n\
         access to attrs=userPassword\n    by anonymous auth\n    by * none\n\
         access to *\n    by * read\n"
    )
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn slapd_binary() -> &'static str {
    if Path::new("/usr/sbin/slapd").exists() {
        "/usr/sbin/slapd"
    } else {
        "slapd"
    }
}

async fn bound(url: &str, dn: &str, pw: &str) -> anyhow::Result<Ldap> {
    let (conn, mut ldap) = LdapConnAsync::new(url).await?;
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.simple_bind(dn, pw).await?.success()?;
    Ok(ldap)
}

/// Starts slapd in `dir` and waits until it answers; loads nothing.
async fn start_slapd(dir: &Path) -> anyhow::Result<(Guarded, String)> {
    std::fs::create_dir_all(dir.join("data"))?;
    let conf = dir.join("slapd.conf");
    std::fs::write(&conf, slapd_conf(dir))?;
    let port = free_port()?;
    let url = format!("ldap://127.0.0.1:{port}");
    let log = dir.join("slapd.log");
    let child = std::process::Command::new(slapd_binary())
        // -d 0: in the foreground, so the child's PID is slapd's
        .args(["-d", "0", "-h", &format!("{url}/"), "-f"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start slapd ({e}); install slapd and ldap-utils"))?;
    let mut slapd = Guarded {
        child,
        what: "slapd",
        log,
    };
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        slapd.check_alive()?;
        if let Ok(Ok(mut l)) =
            tokio::time::timeout(Duration::from_secs(1), bound(&url, ADMIN_DN, ADMIN_PW)).await
        {
            let _ = l.unbind().await;
            return Ok((slapd, url));
        }
        if Instant::now() > until {
            anyhow::bail!("slapd did not answer on {url} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ldapadd(url: &str, file: &Path) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ldapadd")
        .args(["-x", "-H", url, "-D", ADMIN_DN, "-w", ADMIN_PW, "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run ldapadd ({e}); install ldap-utils"))?;
    if !out.status.success() {
        anyhow::bail!(
            "ldapadd failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The service side.

async fn admin_post(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let r = client
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .timeout(loadgen::REQUEST_TIMEOUT)
        .json(body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if status != reqwest::StatusCode::CREATED {
        anyhow::bail!("POST {path} answered {status}: {v}");
    }
    Ok(v)
}

/// Creates, registers and starts the connector; returns once the service shows it connected.
async fn start_connector(
    exe: &Path,
    client: &reqwest::Client,
    base: &str,
    key: &str,
    dir: &Path,
    ldap_url: &str,
    pool_size: usize,
) -> anyhow::Result<(Guarded, PathBuf)> {
    let created = admin_post(
        client,
        base,
        key,
        "/api/v1/admin/connectors",
        &json!({"name": "bench"}),
    )
    .await?;
    let (Some(id), Some(reg)) = (created["id"].as_str(), created["registration_key"].as_str())
    else {
        anyhow::bail!("connector created without id or registration_key: {created}");
    };
    std::fs::create_dir_all(dir)?;
    let out = tokio::process::Command::from(clean(exe))
        .args(["connector", "register", "--server", base, "--key", reg])
        .arg("--state-dir")
        .arg(dir)
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        anyhow::bail!(
            "`imd connector register` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pw = dir.join("bind-password");
    std::fs::write(&pw, READER_PW)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600))?;
    }
    let config = dir.join("connector.toml");
    std::fs::write(
        &config,
        format!(
            "[directory]\nkind = \"openldap\"\nurls = [{ldap_url:?}]\nbind_dn = {READER_DN:?}\n\
             bind_password_file = {pw:?}\nbase_dn = {BASE_DN:?}\ntimeout_secs = 10\n\
             pool_size = {pool_size}\n",
            pw = pw.display().to_string()
        ),
    )?;
    let log = dir.join("connector.log");
    let child = clean(exe)
        .args(["connector", "run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut connector = Guarded {
        child,
        what: "the connector",
        log,
    };
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        connector.check_alive()?;
        let v: Value = client
            .get(format!("{base}/api/v1/admin/connectors/{id}"))
            .bearer_auth(key)
            .timeout(loadgen::REQUEST_TIMEOUT)
            .send()
            .await?
            .json()
            .await?;
        if v["status"] == "connected" {
            return Ok((connector, config));
        }
        if Instant::now() > until {
            anyhow::bail!("the connector did not connect within 15 s: {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// CPU of slapd, imd serve, the connector and this process over a phase, in % of one core.
struct Cpu {
    at: Instant,
    before: Vec<Option<u64>>,
    pids: Vec<Option<u32>>,
}

impl Cpu {
    fn mark(pids: &[Option<u32>]) -> Cpu {
        Cpu {
            at: Instant::now(),
            before: pids.iter().map(|p| cpu_ticks(*p)).collect(),
            pids: pids.to_vec(),
        }
    }

    fn since(&self) -> Vec<Option<f64>> {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        self.pids
            .iter()
            .zip(&self.before)
            .map(|(p, b)| {
                let (b, a) = ((*b)?, cpu_ticks(*p)?);
                Some(a.saturating_sub(b) as f64 / super::TICKS_PER_SEC / secs * 100.0)
            })
            .collect()
    }
}

struct Phase {
    label: &'static str,
    stats: PhaseStats,
    /// slapd, imd serve, connector, bench.
    cpu: Vec<Option<f64>>,
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
        let cpu = |i: usize| fmt_opt(p.cpu.get(i).copied().flatten(), "%", 0);
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
    let t = Instant::now();
    let (mut slapd, ldap_url) = start_slapd(&tmp.join("slapd")).await?;
    let file = tmp.join("bench.ldif");
    std::fs::write(&file, ldif(n, warm))?;
    ldapadd(&ldap_url, &file).await?;
    let _ = std::fs::remove_file(&file);
    note(format_args!(
        "slapd pid {} on {ldap_url}: {n} + {warm} users in {TEAMS} groups loaded in {:.1} s",
        slapd.pid(),
        t.elapsed().as_secs_f64()
    ));

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
    admin_post(
        &client,
        &base,
        &admin_key,
        "/api/v1/admin/ldap-mappings",
        &json!({"name": "everyone", "priority": 100, "base_dn": BASE_DN, "profile": "all",
                "storage_region": "eu", "quota_bytes": 1000}),
    )
    .await?;
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
         many connections), {} build, {} CPUs, imd database {}\n  slapd pid {} on {ldap_url}, \
         imd serve pid {} on {base}, connector pid {}; load generator and raw client: this process",
        args.pool_size,
        super::build(),
        cores(),
        if database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
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
    let cpu = Cpu::mark(&pids);
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
    let cpu = Cpu::mark(&pids);
    let run = connector_phase(dir.clone(), logins.clone(), c, deadline).await;
    let in_process = Phase::of("connector look-ups, in process", &run, &cpu);
    for (mode, label) in [
        (RawMode::Multiplexed, "raw ldap3 look-ups, multiplexed"),
        (RawMode::Exclusive, "raw ldap3 look-ups, 1 per conn."),
    ] {
        let cpu = Cpu::mark(&pids);
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
        let mut got: Vec<String> = got.iter().map(|g| g.to_lowercase()).collect();
        got.sort();
        let mut want = expected_groups(i % TEAMS);
        want.sort();
        if got != want {
            note(format_args!(
                "{}: groups {got:?}, expected {want:?}",
                login(i)
            ));
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
        |dir, db, deadline| {
            let args = &args;
            async move { measure(args, &dir, db.as_deref(), deadline).await }
        },
    )
    .await?;
    println!("{}", out.header);
    if cfg!(debug_assertions) {
        println!("  (a debug build: measure with `cargo run --release`)");
    }
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
    fn fixture_puts_every_user_in_one_team_and_nests_some_teams() {
        let text = ldif(25, 5);
        let entries: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        // base + 3 OUs + reader + 30 users + 10 teams + 2 divisions + staff
        assert_eq!(entries.len(), 1 + 3 + 1 + 30 + TEAMS + 3);
        let members = text.matches("\nmember: uid=").count();
        assert_eq!(members, 30, "every user in exactly one team");
        assert!(text.contains(&format!("member: {}", group_dn("division-a"))));
        // users come before the groups that name them
        let first_group = text.find("objectClass: groupOfNames").unwrap();
        assert!(text.rfind("objectClass: inetOrgPerson").unwrap() < first_group);
        assert_eq!(expected_groups(3).len(), 3);
        assert_eq!(expected_groups(9), vec![group_dn("team-09")]);
    }

    #[test]
    fn ratio_needs_a_raw_rate() {
        assert_eq!(ratio(10.0, 0.0), None);
        assert_eq!(ratio(30.0, 40.0), Some(0.75));
    }
}
