//! Helpers for the directory-sync tests (tests/api/sync.rs, the contract is docs/sync.md):
//!
//! - `TestOu`: an OU of the test's own (`ou=sync-<8 hex>` under the base) in the real OpenLDAP
//!   or Samba AD DC, written with an admin bind (TEST_OPENLDAP_ADMIN_* / TEST_SAMBA_ADMIN_*,
//!   printed by scripts/directories.sh) over StartTLS: users, sub-OUs, groups, and the changes
//!   a sync must notice (disable, enable, rename, move, department, group membership, delete).
//!   The shared servers serve every test at once, so every name carries the OU's tag. The OU
//!   is deleted by `cleanup()`, by `Drop` when a test fails, and OUs a killed test run left
//!   behind are swept (older than three hours) whenever a new one is made.
//! - the sync API: settings, profiles, `POST /sync`, waiting for a run, its per-user report.
//! - connectors that can be stopped and started again on the same registration, with a page
//!   size of the test's choice, optionally through `SlowLink`, a loopback TCP relay that
//!   delays every answer of the directory (so a run can be interrupted part-way reliably).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with};
use crate::imd_v2::{Connector, Dir, Kind, create_connector, dir, register, wait_status};

pub const SYNC: &str = "/api/v1/admin/sync";
pub const RUNS: &str = "/api/v1/admin/sync-runs";
pub const SETTINGS: &str = "/api/v1/admin/sync-settings";
pub const PROFILES: &str = "/api/v1/admin/profiles";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required() -> bool {
    env("REQUIRE_DIRECTORIES").as_deref() == Some("1")
}

/// The bind that may write the test directory (the rootdn of slapd, the DC's Administrator).
#[derive(Clone, Debug)]
pub struct DirAdmin {
    pub dn: String,
    pub password: String,
}

pub fn admin(kind: Kind) -> Option<DirAdmin> {
    let p = match kind {
        Kind::OpenLdap => "TEST_OPENLDAP",
        Kind::Ad => "TEST_SAMBA",
    };
    let a = (|| {
        Some(DirAdmin {
            dn: env(&format!("{p}_ADMIN_DN"))?,
            password: env(&format!("{p}_ADMIN_PASSWORD"))?,
        })
    })();
    if a.is_none() {
        if required() {
            panic!(
                "{p}_ADMIN_DN/{p}_ADMIN_PASSWORD are not set; scripts/directories.sh prints them"
            );
        }
        eprintln!("skipped: {p}_ADMIN_* not set (scripts/directories.sh prints them)");
    }
    a
}

/// A directory the sync tests can write: `dir(kind)` plus its admin bind.
pub fn writable(kind: Kind) -> Option<(Dir, DirAdmin)> {
    let d = dir(kind)?;
    let a = admin(kind)?;
    Some((d, a))
}

/// Runs `f` on OpenLDAP, then on the Samba AD DC (each that is configured).
pub async fn both_dirs<F, Fut>(f: F)
where
    F: Fn(Dir, DirAdmin) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for kind in [Kind::OpenLdap, Kind::Ad] {
        if let Some((d, a)) = writable(kind) {
            eprintln!("-- {kind:?}");
            f(d, a).await;
        }
    }
}

// ---- the test's own OU ----------------------------------------------------------------------

/// A user written by the test.
#[derive(Clone, Debug)]
pub struct DirUser {
    /// uid (OpenLDAP) or sAMAccountName (AD): `<name>-<tag>`, unique in the directory.
    pub login: String,
    pub dn: String,
    pub mail: Option<String>,
    pub display: String,
}

/// What `TestOu::add_user` writes.
#[derive(Clone, Debug)]
pub struct UserSpec {
    name: String,
    parent: Option<String>,
    mail: bool,
    department: String,
    enabled: bool,
}

impl UserSpec {
    /// `name` (at most 11 characters: AD's sAMAccountName holds 20) with a mail, enabled,
    /// department "Staff", directly in the test OU.
    pub fn new(name: &str) -> UserSpec {
        assert!(name.len() <= 11, "user name {name:?} too long");
        UserSpec {
            name: name.to_string(),
            parent: None,
            mail: true,
            department: "Staff".into(),
            enabled: true,
        }
    }
    /// In the sub-OU `ou` (made with `TestOu::add_ou`).
    pub fn under(mut self, ou: &str) -> UserSpec {
        self.parent = Some(ou.to_string());
        self
    }
    pub fn no_mail(mut self) -> UserSpec {
        self.mail = false;
        self
    }
    pub fn department(mut self, d: &str) -> UserSpec {
        self.department = d.to_string();
        self
    }
    pub fn disabled(mut self) -> UserSpec {
        self.enabled = false;
        self
    }
}

/// Where to reach the directory with the admin bind.
#[derive(Clone, Debug)]
struct Target {
    kind: Kind,
    url: String,
    ca: String,
    base: String,
    admin: DirAdmin,
}

/// The test's OU; deleted (subtree) by `cleanup` or, failing that, on drop.
pub struct TestOu {
    pub kind: Kind,
    /// The 8 hex digits every name in it carries.
    pub tag: String,
    /// `ou=sync-<tag>,<base>` (AD: `OU=...`).
    pub dn: String,
    target: Target,
    ldap: Ldap,
    done: bool,
}

fn tls(ca: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("directory CA readable") {
        roots.add(c.expect("CA certificate")).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// An admin-bound connection (StartTLS on ldap:// URLs: Samba refuses simple binds in clear).
async fn connect(t: &Target) -> Ldap {
    let settings = LdapConnSettings::new()
        .set_conn_timeout(Duration::from_secs(10))
        .set_starttls(t.url.starts_with("ldap://"))
        .set_config(tls(&t.ca));
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &t.url)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", t.url));
    ldap3::drive!(conn);
    ldap.simple_bind(&t.admin.dn, &t.admin.password)
        .await
        .unwrap()
        .success()
        .unwrap_or_else(|e| panic!("admin bind {} on {}: {e}", t.admin.dn, t.url));
    ldap
}

fn set(values: &[&str]) -> HashSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn attrs(list: Vec<(&str, Vec<String>)>) -> Vec<(String, HashSet<String>)> {
    list.into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.into_iter().collect()))
        .collect()
}

/// `YYYYMMDDHHMMSS` in UTC, `hours` ago: the prefix of LDAP GeneralizedTime.
fn generalized_time_hours_ago(hours: i64) -> String {
    let t = time::OffsetDateTime::now_utc() - time::Duration::hours(hours);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Deletes `dn` and everything below it, groups first (an OpenLDAP groupOfNames must keep a
/// member), then the deepest entries first. Best effort: returns what could not be deleted.
async fn delete_tree(ldap: &mut Ldap, dn: &str) -> Vec<String> {
    let Ok(res) = ldap
        .search(dn, Scope::Subtree, "(objectClass=*)", vec!["objectClass"])
        .await
    else {
        return vec![dn.to_string()];
    };
    let (entries, _) = match res.success() {
        Ok(r) => r,
        // 32 noSuchObject: already gone.
        Err(_) => return Vec::new(),
    };
    let mut items: Vec<(bool, usize, String)> = entries
        .into_iter()
        .map(SearchEntry::construct)
        .map(|e| {
            let group = e.attrs.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("objectClass")
                    && v.iter().any(|c| {
                        c.eq_ignore_ascii_case("group") || c.eq_ignore_ascii_case("groupOfNames")
                    })
            });
            (!group, e.dn.matches(',').count(), e.dn)
        })
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut left = Vec::new();
    for (_, _, dn) in items {
        match ldap.delete(&dn).await.map(|r| r.success()) {
            Ok(Ok(_)) => {}
            _ => left.push(dn),
        }
    }
    left
}

impl TestOu {
    /// Makes `ou=sync-<8 hex>` under the base (after sweeping stale ones).
    pub async fn create(d: &Dir, a: &DirAdmin) -> TestOu {
        let target = Target {
            kind: d.kind,
            url: d.url.clone(),
            ca: d.ca.clone(),
            base: d.base.clone(),
            admin: a.clone(),
        };
        let mut ldap = connect(&target).await;
        Self::sweep(&mut ldap, &target).await;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let name = format!("sync-{tag}");
        let dn = match d.kind {
            Kind::OpenLdap => format!("ou={name},{}", d.base),
            Kind::Ad => format!("OU={name},{}", d.base),
        };
        ldap.add(
            &dn,
            attrs(vec![
                ("objectClass", vec!["organizationalUnit".into()]),
                ("ou", vec![name.clone()]),
                (
                    "description",
                    vec!["imd sync test (deleted at its end)".into()],
                ),
            ]),
        )
        .await
        .unwrap()
        .success()
        .unwrap_or_else(|e| panic!("add {dn}: {e}"));
        TestOu {
            kind: d.kind,
            tag,
            dn,
            target,
            ldap,
            done: false,
        }
    }

    /// Deletes `sync-*` OUs made more than three hours ago (by a test run that was killed).
    async fn sweep(ldap: &mut Ldap, t: &Target) {
        let created = match t.kind {
            Kind::OpenLdap => "createTimestamp",
            Kind::Ad => "whenCreated",
        };
        let Ok(res) = ldap
            .search(
                &t.base,
                Scope::OneLevel,
                "(&(objectClass=organizationalUnit)(ou=sync-*))",
                vec![created],
            )
            .await
        else {
            return;
        };
        let Ok((entries, _)) = res.success() else {
            return;
        };
        let cutoff = generalized_time_hours_ago(3);
        for e in entries.into_iter().map(SearchEntry::construct) {
            let when = e
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(created))
                .and_then(|(_, v)| v.first().cloned())
                .unwrap_or_default();
            if when.len() >= 14 && when[..14] < *cutoff {
                eprintln!("sweeping stale test OU {}", e.dn);
                delete_tree(ldap, &e.dn).await;
            }
        }
    }

    fn conn(&self) -> Ldap {
        self.ldap.clone()
    }

    fn rdn(&self, attr: &str, value: &str) -> String {
        match self.kind {
            Kind::OpenLdap => format!("{attr}={value}"),
            Kind::Ad => format!("{}={value}", attr.to_uppercase()),
        }
    }

    /// The DN of the sub-OU `name` (as made by `add_ou`), or the test OU itself for `None`.
    pub fn ou_dn(&self, name: Option<&str>) -> String {
        match name {
            None => self.dn.clone(),
            Some(n) => format!("{},{}", self.rdn("ou", n), self.dn),
        }
    }

    pub fn login(&self, name: &str) -> String {
        format!("{name}-{}", self.tag)
    }

    pub fn mail_of(&self, login: &str) -> String {
        match self.kind {
            Kind::OpenLdap => format!("{login}@example.com"),
            Kind::Ad => format!("{login}@example.test"),
        }
    }

    /// A sub-OU of the test OU.
    pub async fn add_ou(&self, name: &str) -> String {
        let dn = self.ou_dn(Some(name));
        self.conn()
            .add(
                &dn,
                attrs(vec![
                    ("objectClass", vec!["organizationalUnit".into()]),
                    ("ou", vec![name.into()]),
                ]),
            )
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|e| panic!("add {dn}: {e}"));
        dn
    }

    pub async fn add_user(&self, spec: UserSpec) -> DirUser {
        let login = self.login(&spec.name);
        let display = format!("{} {}", capitalized(&spec.name), self.tag);
        let mail = spec.mail.then(|| self.mail_of(&login));
        let parent = self.ou_dn(spec.parent.as_deref());
        let (dn, entry) = match self.kind {
            Kind::OpenLdap => (
                format!("uid={login},{parent}"),
                attrs(vec![
                    (
                        "objectClass",
                        vec!["inetOrgPerson".into(), "extensibleObject".into()],
                    ),
                    ("uid", vec![login.clone()]),
                    ("cn", vec![display.clone()]),
                    ("sn", vec![self.tag.clone()]),
                    ("displayName", vec![display.clone()]),
                    ("mail", mail.iter().cloned().collect()),
                    ("departmentNumber", vec![spec.department.clone()]),
                    (
                        "employeeActive",
                        vec![if spec.enabled { "TRUE" } else { "FALSE" }.into()],
                    ),
                ]),
            ),
            // CN = the full name, as AD admins name users (the connector's `name` is cn).
            Kind::Ad => (
                format!("CN={display},{parent}"),
                attrs(vec![
                    ("objectClass", vec!["user".into()]),
                    ("sAMAccountName", vec![login.clone()]),
                    ("userPrincipalName", vec![format!("{login}@example.test")]),
                    ("sn", vec![self.tag.clone()]),
                    ("givenName", vec![capitalized(&spec.name)]),
                    ("displayName", vec![display.clone()]),
                    ("mail", mail.iter().cloned().collect()),
                    ("department", vec![spec.department.clone()]),
                    // NORMAL_ACCOUNT | PASSWD_NOTREQD (+ ACCOUNTDISABLE): no password needed.
                    (
                        "userAccountControl",
                        vec![if spec.enabled { "544" } else { "546" }.into()],
                    ),
                ]),
            ),
        };
        self.conn()
            .add(&dn, entry)
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|e| panic!("add {dn}: {e}"));
        DirUser {
            login,
            dn,
            mail,
            display,
        }
    }

    /// `n` users `<prefix><i>` (i = 0..n, two digits) directly in the test OU.
    pub async fn add_users(&self, prefix: &str, n: usize) -> Vec<DirUser> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(
                self.add_user(UserSpec::new(&format!("{prefix}{i:02}")))
                    .await,
            );
        }
        out
    }

    async fn modify(&self, dn: &str, mods: Vec<Mod<String>>) {
        self.conn()
            .modify(dn, mods)
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|e| panic!("modify {dn}: {e}"));
    }

    /// Disables or enables the account (AD userAccountControl bit 0x2, OpenLDAP employeeActive).
    pub async fn set_enabled(&self, u: &DirUser, enabled: bool) {
        let m = match self.kind {
            Kind::OpenLdap => Mod::Replace(
                "employeeActive".to_string(),
                set(&[if enabled { "TRUE" } else { "FALSE" }]),
            ),
            Kind::Ad => Mod::Replace(
                "userAccountControl".to_string(),
                set(&[if enabled { "544" } else { "546" }]),
            ),
        };
        self.modify(&u.dn, vec![m]).await;
    }

    pub async fn set_department(&self, u: &DirUser, dept: &str) {
        let attr = match self.kind {
            Kind::OpenLdap => "departmentNumber",
            Kind::Ad => "department",
        };
        self.modify(&u.dn, vec![Mod::Replace(attr.to_string(), set(&[dept]))])
            .await;
    }

    /// Renames the user to `<name>-<tag>`: a new RDN, login, UPN, mail and display name (the
    /// directory id stays).
    pub async fn rename(&self, u: &DirUser, name: &str) -> DirUser {
        assert!(name.len() <= 11, "user name {name:?} too long");
        let login = self.login(name);
        let display = format!("{} {}", capitalized(name), self.tag);
        let mail = u.mail.as_ref().map(|_| self.mail_of(&login));
        let (_, parent) = u.dn.split_once(',').unwrap();
        let new_rdn = match self.kind {
            Kind::OpenLdap => format!("uid={login}"),
            Kind::Ad => format!("CN={display}"),
        };
        self.conn()
            .modifydn(&u.dn, &new_rdn, true, None)
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|e| panic!("rename {}: {e}", u.dn));
        let dn = format!("{new_rdn},{parent}");
        let mut mods = vec![Mod::Replace("displayName".to_string(), set(&[&display]))];
        if let Some(m) = &mail {
            mods.push(Mod::Replace("mail".to_string(), set(&[m])));
        }
        match self.kind {
            Kind::OpenLdap => mods.push(Mod::Replace("cn".to_string(), set(&[&display]))),
            Kind::Ad => {
                mods.push(Mod::Replace("sAMAccountName".to_string(), set(&[&login])));
                mods.push(Mod::Replace(
                    "userPrincipalName".to_string(),
                    set(&[&format!("{login}@example.test")]),
                ));
            }
        }
        self.modify(&dn, mods).await;
        DirUser {
            login,
            dn,
            mail,
            display,
        }
    }

    /// Moves the user into the sub-OU `ou` (`None`: back to the test OU itself).
    pub async fn move_to(&self, u: &DirUser, ou: Option<&str>) -> DirUser {
        let (rdn, _) = u.dn.split_once(',').unwrap();
        let sup = self.ou_dn(ou);
        self.conn()
            .modifydn(&u.dn, rdn, true, Some(&sup))
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|e| panic!("move {} to {sup}: {e}", u.dn));
        DirUser {
            dn: format!("{rdn},{sup}"),
            ..u.clone()
        }
    }

    /// A group `<name>-<tag>` in the test OU with these members. On OpenLDAP it also lists the
    /// test OU itself, so that a groupOfNames (which must have a member) can lose its last user.
    pub async fn add_group(&self, name: &str, members: &[&DirUser]) -> String {
        let cn = format!("{name}-{}", self.tag);
        let dn = format!("{},{}", self.rdn("cn", &cn), self.dn);
        let mut member: Vec<String> = members.iter().map(|u| u.dn.clone()).collect();
        let entry = match self.kind {
            Kind::OpenLdap => {
                member.push(self.dn.clone());
                attrs(vec![
                    ("objectClass", vec!["groupOfNames".into()]),
                    ("cn", vec![cn.clone()]),
                    ("member", member),
                ])
            }
            Kind::Ad => attrs(vec![
                ("objectClass", vec!["group".into()]),
                ("sAMAccountName", vec![cn.clone()]),
                ("member", member),
            ]),
        };
        self.conn()
            .add(&dn, entry)
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|e| panic!("add {dn}: {e}"));
        dn
    }

    pub async fn add_member(&self, group: &str, u: &DirUser) {
        self.modify(group, vec![Mod::Add("member".to_string(), set(&[&u.dn]))])
            .await;
    }

    pub async fn remove_member(&self, group: &str, u: &DirUser) {
        self.modify(
            group,
            vec![Mod::Delete("member".to_string(), set(&[&u.dn]))],
        )
        .await;
    }

    /// Deletes the user's entry from the directory.
    pub async fn delete_user(&self, u: &DirUser) {
        self.conn()
            .delete(&u.dn)
            .await
            .unwrap()
            .success()
            .unwrap_or_else(|e| panic!("delete {}: {e}", u.dn));
    }

    /// Every entry under the test OU matching `filter`, with these attributes.
    pub async fn search(&self, filter: &str, attributes: &[&str]) -> Vec<SearchEntry> {
        let (entries, _) = self
            .conn()
            .search(&self.dn, Scope::Subtree, filter, attributes.to_vec())
            .await
            .unwrap()
            .success()
            .unwrap();
        entries.into_iter().map(SearchEntry::construct).collect()
    }

    /// Entries directly under the base matching `filter` (to see test OUs come and go).
    pub async fn search_base(&self, filter: &str) -> Vec<SearchEntry> {
        let (entries, _) = self
            .conn()
            .search(&self.target.base, Scope::OneLevel, filter, vec!["ou"])
            .await
            .unwrap()
            .success()
            .unwrap();
        entries.into_iter().map(SearchEntry::construct).collect()
    }

    /// Deletes the OU and everything in it, asserting it is gone.
    pub async fn cleanup(mut self) {
        let dn = self.dn.clone();
        let left = delete_tree(&mut self.ldap, &dn).await;
        assert!(left.is_empty(), "could not delete {left:?}");
        self.done = true;
        let _ = self.ldap.unbind().await;
    }
}

impl Drop for TestOu {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // A failed test: delete on a connection of its own, on a thread of its own (the test's
        // runtime may be unwinding).
        let t = self.target.clone();
        let dn = self.dn.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut ldap = connect(&t).await;
                let left = delete_tree(&mut ldap, &dn).await;
                if !left.is_empty() {
                    eprintln!("test OU cleanup left {left:?}");
                }
            });
        })
        .join();
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The value of `attr` (any case) on an entry, first value.
pub fn attr(e: &SearchEntry, attr: &str) -> Option<String> {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .and_then(|(_, v)| v.first().cloned())
}

// ---- connectors that stop and start again -------------------------------------------------

fn imd_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imd"));
    c.env(
        "IMD_LOG",
        std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    c
}

fn spawn_run(config: &std::path::Path, state: &std::path::Path) -> std::process::Child {
    imd_command()
        .args(["connector", "run", "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(if std::env::var("TEST_LOG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap()
}

/// A registered connector whose process the test stops and starts (same registration, same
/// state directory), with its LDAP page size and URLs of the test's choice.
pub struct RestartableConnector {
    pub c: Connector,
    config: PathBuf,
}

impl RestartableConnector {
    pub fn id(&self) -> &str {
        &self.c.id
    }

    /// Kills the process (SIGKILL: no goodbye on the channel) and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.c.child.kill();
        let _ = self.c.child.wait();
    }

    /// Kills it and waits until the service shows it disconnected.
    pub async fn stop(&mut self, app: &TestApp) {
        self.kill();
        wait_status(app, &self.c.id, "disconnected").await;
    }

    /// Starts the process again (after `kill`/`stop`, or kills it first) and waits until the
    /// service has seen the old channel go and the new one come.
    pub async fn restart(&mut self, app: &TestApp) {
        self.stop(app).await;
        self.c.child = spawn_run(&self.config, self.c._state.path());
        wait_status(app, &self.c.id, "connected").await;
    }
}

/// Creates, registers and runs a connector for `d` with LDAP `page_size` and optional URLs.
pub async fn start_connector_paged(
    app: &TestApp,
    d: &Dir,
    name: &str,
    urls: Option<Vec<String>>,
    page_size: u32,
) -> RestartableConnector {
    let (id, key) = create_connector(app, name).await;
    let state = tempfile::tempdir().unwrap();
    let out = register(app, &key, state.path()).await;
    assert!(
        out.status.success(),
        "register failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = d.config(state.path(), urls);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("page_size = 200"), "{text}");
    std::fs::write(
        &config,
        text.replace("page_size = 200", &format!("page_size = {page_size}")),
    )
    .unwrap();
    let child = spawn_run(&config, state.path());
    let c = Connector {
        id,
        child,
        _state: state,
    };
    wait_status(app, &c.id, "connected").await;
    RestartableConnector { c, config }
}

/// A loopback TCP relay in front of a directory that holds every chunk the directory sends
/// back for `delay_ms` (adjustable while it runs). Stops accepting on drop.
pub struct SlowLink {
    pub url: String,
    delay_ms: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    /// A relay to `upstream` (an `ldap://host:port` URL); the returned URL keeps the scheme.
    pub async fn start(upstream: &str) -> SlowLink {
        let (scheme, rest) = upstream.split_once("://").unwrap();
        let target = rest.trim_end_matches('/').to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = target.clone();
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut ri, &mut wo).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    loop {
                        let n = match ro.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let ms = delay.load(Ordering::Relaxed);
                        if ms > 0 {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        if wi.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        SlowLink {
            url: format!("{scheme}://127.0.0.1:{port}"),
            delay_ms,
            accept,
        }
    }

    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

// ---- apps and the sync API ----------------------------------------------------------------

/// A server for sync tests: no scheduled runs (the tests start each run; some move the clock
/// by weeks), connector heartbeats every second (so a connector shows connected again soon
/// after the clock moved).
pub async fn sync_app(extra: &[(&str, &str)]) -> TestApp {
    let mut all: Vec<(&str, &str)> = vec![
        ("sync.scheduler", "false"),
        ("connectors.heartbeat_interval_secs", "1"),
    ];
    all.extend_from_slice(extra);
    spawn_app_with(&all).await
}

/// A sync test on a directory: the server, the test's OU, a connected connector.
pub struct LdapSync {
    pub app: TestApp,
    pub d: Dir,
    pub ou: TestOu,
    pub conn: RestartableConnector,
}

pub async fn ldap_sync(d: &Dir, a: &DirAdmin, extra: &[(&str, &str)]) -> LdapSync {
    let ou = TestOu::create(d, a).await;
    let app = sync_app(extra).await;
    let conn = start_connector_paged(&app, d, "dc-1", None, 200).await;
    LdapSync {
        app,
        d: d.clone(),
        ou,
        conn,
    }
}

impl LdapSync {
    /// A mapping named `name` over the sub-OU `ou` (`None`: the whole test OU), auto_import on,
    /// profile `profile`, region eu.
    pub async fn map_ou(
        &self,
        name: &str,
        priority: i64,
        ou: Option<&str>,
        profile: &str,
    ) -> Value {
        self.map(
            json!({"name": name, "priority": priority, "base_dn": self.d.base,
                        "ou": self.ou.ou_dn(ou), "profile": profile, "storage_region": "eu",
                        "auto_import": true}),
        )
        .await
    }

    pub async fn map(&self, body: Value) -> Value {
        crate::imd_v2::add_mapping(&self.app, body).await
    }

    /// A v2 activation of `u` on device `serial`.
    pub fn activation(&self, token: &str, serial: &str, u: &DirUser) -> Value {
        crate::imd_v2::v2(token, serial, &u.login, self.d.domain())
    }
}

pub async fn admin_send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Response {
    let mut r = app
        .client
        .request(method, app.url(path))
        .bearer_auth(&app.admin_key);
    if let Some(b) = body {
        r = r.json(b);
    }
    r.send().await.unwrap()
}

pub async fn put_settings(app: &TestApp, body: &Value) -> Response {
    admin_send(app, reqwest::Method::PUT, SETTINGS, Some(body)).await
}

/// Sets sync settings, asserting 200; returns the settings.
pub async fn set_settings(app: &TestApp, body: Value) -> Value {
    let r = put_settings(app, &body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "PUT sync-settings {body}: {v}");
    v
}

pub async fn get_settings(app: &TestApp) -> Value {
    let r = app.admin_get(SETTINGS).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

pub async fn put_profile(app: &TestApp, name: &str, body: &Value) -> Response {
    admin_send(
        app,
        reqwest::Method::PUT,
        &format!("{PROFILES}/{name}"),
        Some(body),
    )
    .await
}

/// Sets a profile's policy, asserting 200.
pub async fn set_profile(app: &TestApp, name: &str, body: Value) -> Value {
    let r = put_profile(app, name, &body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "PUT profile {name} {body}: {v}");
    v
}

/// Deletion after 45 days for `profile`.
pub async fn delete_after_45_days(app: &TestApp, profile: &str) {
    let v = set_profile(
        app,
        profile,
        json!({"auto_delete_preserved": true, "delete_after_days": 45}),
    )
    .await;
    assert_eq!(v["auto_delete_preserved"], true, "{v}");
    assert_eq!(v["delete_after_days"], 45, "{v}");
}

/// `POST /api/v1/admin/sync{query}` as sent.
pub async fn post_sync(app: &TestApp, query: &str) -> Response {
    app.client
        .post(app.url(&format!("{SYNC}{query}")))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap()
}

/// Starts a run, asserting `202 {"id", "status": "running", "dry_run"}`; returns its id.
pub async fn start_sync(app: &TestApp, query: &str) -> String {
    let r = post_sync(app, query).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::ACCEPTED, "POST /sync{query}: {v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(
        v["dry_run"],
        json!(query.contains("dry_run=true")),
        "POST /sync{query}: {v}"
    );
    v["id"].as_str().expect("run id").to_string()
}

pub async fn get_run(app: &TestApp, id: &str) -> Value {
    let r = app.admin_get(&format!("{RUNS}/{id}")).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "GET sync-runs/{id}: {v}");
    v
}

/// Polls the run every 100 ms for up to 60 s until it is no longer `running`.
pub async fn wait_run(app: &TestApp, id: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let v = get_run(app, id).await;
        if v["status"] != "running" {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "run {id} still running after 60 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run (`query` e.g. `""` or `"?dry_run=true"`) to its end: the run record.
pub async fn sync_with(app: &TestApp, query: &str) -> Value {
    let id = start_sync(app, query).await;
    let run = wait_run(app, &id).await;
    assert_eq!(run["id"], id.as_str(), "{run}");
    run
}

/// One manual run that must end `completed`.
pub async fn sync(app: &TestApp) -> Value {
    let run = sync_with(app, "").await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["trigger"], "manual", "{run}");
    assert_eq!(run["dry_run"], false, "{run}");
    assert!(run["error"].is_null(), "{run}");
    run
}

/// `counts[k]` of a run.
pub fn count(run: &Value, k: &str) -> i64 {
    run["counts"][k]
        .as_i64()
        .unwrap_or_else(|| panic!("counts.{k} missing in {run}"))
}

/// Asserts the run's counts for the given keys (the others are not checked).
pub fn assert_counts(run: &Value, want: &[(&str, i64)]) {
    for (k, n) in want {
        assert_eq!(count(run, k), *n, "counts.{k} in {run}");
    }
}

/// Every per-user row of a run with `action`, following the cursor.
pub async fn run_users(app: &TestApp, id: &str, action: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut q = format!("{RUNS}/{id}/users?action={action}&limit=100");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let r = app.admin_get(&q).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::OK, "GET {q}: {v}");
        let items = v["items"].as_array().expect("items").clone();
        for i in &items {
            assert_eq!(i["action"], action, "?action={action} filters: {i}");
        }
        out.extend(items);
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("run users never ended");
}

/// The run's row for a user (by user id), if any.
pub fn row_for<'a>(rows: &'a [Value], user_id: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["user_id"] == user_id)
}

/// Every user of the organization (up to 1000), optionally `?status=`.
pub async fn users(app: &TestApp, status: Option<&str>) -> Vec<Value> {
    let q = match status {
        Some(s) => format!("/api/v1/admin/users?limit=1000&status={s}"),
        None => "/api/v1/admin/users?limit=1000".to_string(),
    };
    let r = app.admin_get(&q).await;
    let code = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(code, StatusCode::OK, "GET {q}: {v}");
    let items = v["items"].as_array().unwrap().clone();
    if let Some(s) = status {
        for u in &items {
            assert_eq!(u["status"], s, "?status={s} filters: {u}");
        }
    }
    items
}

/// The organization's user with this email (case-insensitive), if any.
pub async fn user_by_email(app: &TestApp, email: &str) -> Option<Value> {
    users(app, None).await.into_iter().find(|u| {
        u["email"]
            .as_str()
            .is_some_and(|e| e.eq_ignore_ascii_case(email))
    })
}

/// `GET /api/v1/admin/users/{id}`.
pub async fn user(app: &TestApp, id: &str) -> Value {
    let r = app.admin_get(&format!("/api/v1/admin/users/{id}")).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "GET users/{id}: {v}");
    if v["user"].is_object() {
        v["user"].clone()
    } else {
        v
    }
}

/// The user's devices.
pub async fn devices_of(app: &TestApp, user_id: &str) -> Vec<Value> {
    app.list(&format!("/api/v1/admin/devices?user_id={user_id}"))
        .await
}

/// `GET /api/v1/device` with a device credential: the status and error code (if any).
pub async fn device_check(app: &TestApp, credential: &str) -> (StatusCode, Option<String>) {
    let r = app.get_as("/api/v1/device", credential).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v["error"]["code"].as_str().map(str::to_string))
}

/// An activation's status and error code (if any).
pub async fn activation_result(app: &TestApp, body: &Value) -> (StatusCode, Value) {
    let r = app.activate(body).await;
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The server's clock as RFC 3339, `days` from now.
pub fn server_time_in_days(app: &TestApp, days: i64) -> String {
    use imd::clock::Clock;
    imd::clock::rfc3339(app.clock.now() + days * 86_400)
}

pub const DAY: i64 = 86_400;

/// A server with the scheduler on, looking for due organizations every second.
pub async fn spawn_app_with_scheduler() -> TestApp {
    spawn_app_with(&[("sync.scheduler", "true"), ("sync.tick_secs", "1")]).await
}

/// A second server (another replica id) on the same data directory and database as `app`,
/// sharing its clock: its base URL. It serves until the test ends.
pub async fn second_server(app: &TestApp) -> String {
    let other = imd::startup::Application::build_with(
        app.settings.clone(),
        Arc::new(app.clock.clone()),
        Vec::new(),
    )
    .await
    .expect("second server starts");
    let base = format!("http://{}", other.addr());
    tokio::spawn(other.run_until_stopped());
    base
}

// ---- Entra ID -------------------------------------------------------------------------------

pub async fn azure_mapping(app: &TestApp, body: Value) -> Value {
    let r = app.admin_post("/api/v1/admin/azure-mappings", &body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

/// Everyone in the fixture's All Staff group (nested), imported: profile "staff".
pub async fn azure_staff_mapping(app: &TestApp) -> Value {
    let all_staff = graph_standin::Tenant::fixture()
        .group_id("All Staff")
        .unwrap();
    azure_mapping(
        app,
        json!({"name": "staff", "priority": 10, "source": {"group_id": all_staff},
               "profile": "staff", "storage_region": "eu", "auto_import": true}),
    )
    .await
}

/// A sync server with the Graph stand-in serving `tenant` configured and the staff mapping.
pub async fn azure_sync_app(
    extra: &[(&str, &str)],
    tenant: graph_standin::Tenant,
) -> (TestApp, graph_standin::StandIn) {
    let app = sync_app(extra).await;
    let g = graph_standin::StandIn::start(tenant).await;
    crate::imd_v5::configure(&app, &g, false).await;
    azure_staff_mapping(&app).await;
    (app, g)
}

/// A v5 activation body.
pub fn v5(token: &str, serial: &str, upn: &str) -> Value {
    json!({"token": token, "device": {"serial": serial, "hostname": format!("LT-{serial}")},
           "user": {"upn": upn}})
}
