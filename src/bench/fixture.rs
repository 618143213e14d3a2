//! What `imd bench directory` and `imd bench sync` share: a throwaway OpenLDAP directory (slapd
//! on a free loopback port in a temporary directory, N users in 10 groups, some nested two levels
//! up, loaded with `slapadd` before slapd starts), a real `imd connector run` process registered
//! with the service, the child-process guard that stops both by PID, the admin API calls they
//! make, and per-process CPU over a phase.
//!
//! Loading: `slapadd -q` of a generated LDIF takes ~2 s for 100,000 users on the project's VM,
//! `ldapadd` of the same entries into a running slapd ~17 s (the memberof overlay rewrites every
//! member when a group of 10,000 is added). Tool mode runs no overlay, so the LDIF carries the
//! `memberOf` values the overlay would have written (on users and on nested groups); slapadd
//! generates `entryUUID` and the other operational attributes itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ldap3::{Ldap, LdapConnAsync};
use serde_json::{Value, json};

use super::{cpu_ticks, note};
use crate::loadgen;

pub(super) const BASE_DN: &str = "dc=bench,dc=example";
const ADMIN_DN: &str = "cn=admin,dc=bench,dc=example";
const ADMIN_PW: &str = "bench-admin";
pub(super) const READER_DN: &str = "cn=imd-reader,ou=service,dc=bench,dc=example";
pub(super) const READER_PW: &str = "bench-reader";
/// Leaf groups; every user is in exactly one of them.
pub(super) const TEAMS: usize = 10;
/// The connector's `page_size` (its default, written out so the raw side can use the same).
pub(super) const CONNECTOR_PAGE_SIZE: u32 = 500;

// ---------------------------------------------------------------------------------------------
// Child processes other than the server (which `super::ServerProcess` covers).

/// A child stopped by its PID on drop: SIGTERM, up to 5 s to exit, then SIGKILL.
pub(super) struct Guarded {
    pub(super) child: Child,
    pub(super) what: &'static str,
    pub(super) log: PathBuf,
}

impl Guarded {
    /// Spawns `cmd` with its standard error to `log` and no standard output.
    fn spawn(
        mut cmd: std::process::Command,
        what: &'static str,
        log: PathBuf,
    ) -> anyhow::Result<Guarded> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {what} ({e})"))?;
        Ok(Guarded { child, what, log })
    }

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

/// CPU of a fixed set of processes (`None`: this one) over a phase, in % of one core.
pub(super) struct Cpu<const N: usize> {
    at: Instant,
    pids: [Option<u32>; N],
    before: [Option<u64>; N],
}

impl<const N: usize> Cpu<N> {
    pub(super) fn mark(pids: [Option<u32>; N]) -> Cpu<N> {
        Cpu {
            at: Instant::now(),
            before: pids.map(cpu_ticks),
            pids,
        }
    }

    pub(super) fn since(&self) -> [Option<f64>; N] {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        std::array::from_fn(|i| {
            let (b, a) = (self.before[i]?, cpu_ticks(self.pids[i])?);
            Some(a.saturating_sub(b) as f64 / super::TICKS_PER_SEC / secs * 100.0)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The directory.

pub(super) fn login(i: usize) -> String {
    format!("user{i:06}")
}

pub(super) fn warm_login(i: usize) -> String {
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

/// What is wrong with `groups`, the transitive groups the connector reports for user `i`, if
/// anything.
pub(super) fn groups_wrong(i: usize, groups: &[String]) -> Option<String> {
    let mut got: Vec<String> = groups.iter().map(|g| g.to_lowercase()).collect();
    got.sort();
    let mut want = expected_groups(i % TEAMS);
    want.sort();
    (got != want).then(|| format!("{}: groups {got:?}, expected {want:?}", login(i)))
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
/// `warm` warm-up users (user `i` in team `i % 10`), then the groups, children before parents.
/// Every entry carries the `memberOf` values the memberof overlay would have written (slapadd
/// runs no overlay).
fn ldif(users: usize, warm: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity((users + warm) * 280);
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
             mail: {l}@bench.example\ndepartmentNumber: Team{t}\nmemberOf: {g}\n\n",
            dn = user_dn(l),
            t = i % TEAMS,
            g = group_dn(&team(i % TEAMS)),
        );
    }
    for t in 0..TEAMS {
        let _ = write!(
            s,
            "dn: {}\nobjectClass: groupOfNames\ncn: {}\n",
            group_dn(&team(t)),
            team(t)
        );
        if let Some(p) = team_parent(t) {
            let _ = writeln!(s, "memberOf: {}", group_dn(p));
        }
        for l in all.iter().skip(t).step_by(TEAMS) {
            let _ = writeln!(s, "member: {}", user_dn(l));
        }
        s.push('\n');
    }
    for div in ["division-a", "division-b"] {
        let _ = write!(
            s,
            "dn: {}\nobjectClass: groupOfNames\ncn: {div}\nmemberOf: {}\n",
            group_dn(div),
            group_dn("staff")
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
/// connector's queries rely on. A plain search still stops at 500 entries (slapd's default); a
/// paged one may return the whole directory, as AD's and most OpenLDAP deployments allow.
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
         sizelimit size.soft=500 size.prtotal=unlimited\n\
         {modules}\
         database mdb\n\
         maxsize 4294967296\n\
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

/// `/usr/sbin/<name>` (Debian puts slapd and slapadd there, outside a user's PATH), else `name`.
fn sbin(name: &'static str) -> String {
    let path = format!("/usr/sbin/{name}");
    if Path::new(&path).exists() {
        path
    } else {
        name.to_string()
    }
}

pub(super) async fn bound(url: &str, dn: &str, pw: &str) -> anyhow::Result<Ldap> {
    let (conn, mut ldap) = LdapConnAsync::new(url).await?;
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.simple_bind(dn, pw).await?.success()?;
    Ok(ldap)
}

/// The running directory.
pub(super) struct Slapd {
    pub(super) process: Guarded,
    pub(super) url: String,
    /// Generating the LDIF, `slapadd`, starting slapd until it answers.
    pub(super) load_secs: [f64; 3],
}

/// Writes the configuration in `dir`, loads `users` + `warm` users with `slapadd`, then starts
/// slapd and waits until it answers a bind.
pub(super) async fn start_slapd(dir: &Path, users: usize, warm: usize) -> anyhow::Result<Slapd> {
    std::fs::create_dir_all(dir.join("data"))?;
    let conf = dir.join("slapd.conf");
    std::fs::write(&conf, slapd_conf(dir))?;

    let t = Instant::now();
    let file = dir.join("load.ldif");
    let text = tokio::task::spawn_blocking(move || ldif(users, warm)).await?;
    std::fs::write(&file, text)?;
    let generated = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let out = tokio::process::Command::new(sbin("slapadd"))
        // -q: no consistency checks (a throwaway database); -f: our configuration, not the system's
        .args(["-q", "-f"])
        .arg(&conf)
        .arg("-l")
        .arg(&file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run slapadd ({e}); install slapd"))?;
    if !out.status.success() {
        anyhow::bail!(
            "slapadd failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&file);
    let added = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let port = free_port()?;
    let url = format!("ldap://127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(sbin("slapd"));
    // -d 0: in the foreground, so the child's PID is slapd's
    cmd.args(["-d", "0", "-h", &format!("{url}/"), "-f"])
        .arg(&conf);
    let mut process = Guarded::spawn(cmd, "slapd", dir.join("slapd.log"))?;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        process.check_alive()?;
        if let Ok(Ok(mut l)) =
            tokio::time::timeout(Duration::from_secs(1), bound(&url, ADMIN_DN, ADMIN_PW)).await
        {
            let _ = l.unbind().await;
            break;
        }
        if Instant::now() > until {
            anyhow::bail!("slapd did not answer on {url} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slapd = Slapd {
        process,
        url,
        load_secs: [generated, added, t.elapsed().as_secs_f64()],
    };
    note(format_args!(
        "slapd pid {} on {}: {users} + {warm} users in {TEAMS} groups loaded in {:.1} s (LDIF \
         {generated:.1} s, slapadd {added:.1} s, slapd start {:.1} s)",
        slapd.process.pid(),
        slapd.url,
        slapd.load_secs.iter().sum::<f64>(),
        slapd.load_secs[2]
    ));
    Ok(slapd)
}

// ---------------------------------------------------------------------------------------------
// The service side.

/// The answer's JSON body, or an error naming the request when the status is not `expect`.
pub(super) async fn expect_json(
    req: reqwest::RequestBuilder,
    what: &str,
    expect: reqwest::StatusCode,
) -> anyhow::Result<Value> {
    let r = req.timeout(loadgen::REQUEST_TIMEOUT).send().await?;
    let status = r.status();
    let text = r.text().await?;
    if status != expect {
        anyhow::bail!("{what} answered {status}: {text}");
    }
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{what}: {e} in {text:?}"))
}

/// `POST` of an admin endpoint that answers 201 Created.
pub(super) async fn admin_post(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let req = client
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(body);
    expect_json(req, &format!("POST {path}"), reqwest::StatusCode::CREATED).await
}

/// `GET` of an admin endpoint, 200 OK.
pub(super) async fn admin_get(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    path: &str,
) -> anyhow::Result<Value> {
    let req = client.get(format!("{base}{path}")).bearer_auth(key);
    expect_json(req, &format!("GET {path}"), reqwest::StatusCode::OK).await
}

/// Creates a mapping of the whole base DN.
pub(super) async fn map_everyone(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    auto_import: bool,
) -> anyhow::Result<Value> {
    admin_post(
        client,
        base,
        key,
        "/api/v1/admin/ldap-mappings",
        &json!({"name": "everyone", "priority": 100, "base_dn": BASE_DN, "profile": "all",
                "storage_region": "eu", "quota_bytes": 1000, "auto_import": auto_import}),
    )
    .await
}

/// Creates, registers and starts the connector; returns once the service shows it connected,
/// with the path of its configuration.
pub(super) async fn start_connector(
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
             pool_size = {pool_size}\npage_size = {CONNECTOR_PAGE_SIZE}\n",
            pw = pw.display().to_string()
        ),
    )?;
    let mut cmd = clean(exe);
    cmd.args(["connector", "run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir);
    let mut connector = Guarded::spawn(cmd, "the connector", dir.join("connector.log"))?;
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        connector.check_alive()?;
        let v = admin_get(client, base, key, &format!("/api/v1/admin/connectors/{id}")).await?;
        if v["status"] == "connected" {
            return Ok((connector, config));
        }
        if Instant::now() > until {
            anyhow::bail!("the connector did not connect within 15 s: {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
        let mut groups = expected_groups(3);
        groups.reverse();
        groups[0] = groups[0].to_uppercase();
        assert_eq!(groups_wrong(13, &groups), None, "any order, any case");
        assert!(groups_wrong(14, &groups).is_some());
    }

    #[test]
    fn fixture_writes_what_the_memberof_overlay_would() {
        let text = ldif(25, 0);
        let user = |i: usize| {
            let start = text.find(&format!("dn: {}\n", user_dn(&login(i)))).unwrap();
            &text[start..start + text[start..].find("\n\n").unwrap()]
        };
        assert!(user(13).contains(&format!("\nmemberOf: {}", group_dn("team-03"))));
        assert_eq!(user(13).matches("memberOf:").count(), 1);
        // every memberOf names a group whose entry has the member back
        let member_of = text.matches("\nmemberOf: ").count();
        // 25 users, teams 0-7 in a division, both divisions in staff
        assert_eq!(member_of, 25 + 8 + 2);
        let team3 = text
            .find(&format!("dn: {}\n", group_dn("team-03")))
            .unwrap();
        assert!(text[team3..].contains(&format!("memberOf: {}", group_dn("division-a"))));
    }
}
