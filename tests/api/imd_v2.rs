//! IMD v2 end to end: real `imd connector` processes against the real OpenLDAP and Samba AD DC
//! that scripts/directories.sh starts (TEST_OPENLDAP_* / TEST_SAMBA_* variables). Without them
//! these tests say so and return, unless REQUIRE_DIRECTORIES=1 (CI), where that is a failure.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    OpenLdap,
    Ad,
}

/// One test directory and the facts its fixtures hold (fixtures/directory/).
#[derive(Clone, Debug)]
pub struct Dir {
    pub kind: Kind,
    pub url: String,
    pub ldaps_url: String,
    pub ca: String,
    pub bind_dn: String,
    pub bind_password: String,
    pub base: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn dir(kind: Kind) -> Option<Dir> {
    let p = match kind {
        Kind::OpenLdap => "TEST_OPENLDAP",
        Kind::Ad => "TEST_SAMBA",
    };
    let ldaps = match kind {
        Kind::OpenLdap => "TEST_OPENLDAPS_URL".to_string(),
        Kind::Ad => "TEST_SAMBA_LDAPS_URL".to_string(),
    };
    let d = (|| {
        Some(Dir {
            kind,
            url: env(&format!("{p}_URL"))?,
            ldaps_url: env(&ldaps)?,
            ca: env(&format!("{p}_CA"))?,
            bind_dn: env(&format!("{p}_BIND_DN"))?,
            bind_password: env(&format!("{p}_BIND_PASSWORD"))?,
            base: env(&format!("{p}_BASE"))?,
        })
    })();
    if d.is_none() {
        if env("REQUIRE_DIRECTORIES").as_deref() == Some("1") {
            panic!("{p}_* variables are not set; start the servers with scripts/directories.sh");
        }
        eprintln!("skipped: {p}_* not set (scripts/directories.sh starts the test directories)");
    }
    d
}

impl Dir {
    /// A DN under the base: `rdn("ou", "people")`, cased as each directory's fixtures are.
    pub fn dn(&self, parts: &[(&str, &str)]) -> String {
        let mut s: Vec<String> = parts
            .iter()
            .map(|(a, v)| match self.kind {
                Kind::OpenLdap => format!("{a}={v}"),
                Kind::Ad => format!("{}={v}", a.to_uppercase()),
            })
            .collect();
        s.push(self.base.clone());
        s.join(",")
    }

    pub fn group(&self, cn: &str) -> String {
        match self.kind {
            Kind::OpenLdap => self.dn(&[("cn", cn), ("ou", "groups")]),
            Kind::Ad => self.dn(&[("cn", cn), ("ou", "Groups")]),
        }
    }

    pub fn ou(&self, path: &[&str]) -> String {
        let parts: Vec<(&str, &str)> = path.iter().map(|p| ("ou", *p)).collect();
        match self.kind {
            Kind::OpenLdap => {
                let lower: Vec<String> = path.iter().map(|p| p.to_lowercase()).collect();
                let parts: Vec<(&str, &str)> = lower.iter().map(|p| ("ou", p.as_str())).collect();
                self.dn(&parts)
            }
            Kind::Ad => self.dn(&parts),
        }
    }

    pub fn mail(&self, user: &str) -> String {
        match self.kind {
            Kind::OpenLdap => format!("{user}@example.com"),
            Kind::Ad => format!("{user}@example.test"),
        }
    }

    pub fn department_filter(&self, dept: &str) -> String {
        match self.kind {
            Kind::OpenLdap => format!("(departmentNumber={dept})"),
            Kind::Ad => format!("(department={dept})"),
        }
    }

    pub fn domain(&self) -> Option<&'static str> {
        match self.kind {
            Kind::OpenLdap => None,
            Kind::Ad => Some("EXAMPLE"),
        }
    }

    /// connector.toml for this directory; `urls` defaults to the plain URL with StartTLS.
    pub fn config(&self, dir: &Path, urls: Option<Vec<String>>) -> std::path::PathBuf {
        let pw = dir.join("bind-password");
        std::fs::write(&pw, &self.bind_password).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let urls = urls.unwrap_or_else(|| vec![self.url.clone()]);
        let kind = match self.kind {
            Kind::OpenLdap => "openldap",
            Kind::Ad => "ad",
        };
        let extra = match self.kind {
            Kind::OpenLdap => "[directory.attributes]\nenabled = \"employeeActive\"\n",
            Kind::Ad => "",
        };
        let toml = format!(
            "[directory]\nkind = \"{kind}\"\nurls = {urls:?}\nstarttls = true\nca_file = {ca:?}\nbind_dn = {bind:?}\nbind_password_file = {pw:?}\nbase_dn = {base:?}\ntimeout_secs = 15\npage_size = 200\n{extra}",
            ca = self.ca,
            bind = self.bind_dn,
            pw = pw.display().to_string(),
            base = self.base,
        );
        let path = dir.join("connector.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }
}

/// A running `imd connector run`; killed on drop.
pub struct Connector {
    pub id: String,
    pub child: Child,
    /// Holds the state directory as long as the process runs.
    pub _state: tempfile::TempDir,
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Connector {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

fn imd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imd"));
    c.env(
        "IMD_LOG",
        std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    c
}

/// Creates a connector (admin API) and returns `(id, registration_key)`.
pub async fn create_connector(app: &TestApp, name: &str) -> (String, String) {
    let r = app
        .admin_post("/api/v1/admin/connectors", &json!({ "name": name }))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["registration_key"].as_str().unwrap().to_string(),
    )
}

/// `imd connector register`: its exit status and output. Asynchronous, so the test's runtime
/// (which drives the server's database connections) keeps running meanwhile.
pub async fn register(app: &TestApp, key: &str, state: &Path) -> std::process::Output {
    tokio::process::Command::from(imd())
        .args(["connector", "register", "--server", &app.addr, "--key", key])
        .arg("--state-dir")
        .arg(state)
        .output()
        .await
        .unwrap()
}

/// Creates, registers and runs a connector for `d`; returns once the service shows it
/// connected.
pub async fn start_connector(app: &TestApp, d: &Dir, name: &str) -> Connector {
    start_connector_with(app, d, name, None).await
}

pub async fn start_connector_with(
    app: &TestApp,
    d: &Dir,
    name: &str,
    urls: Option<Vec<String>>,
) -> Connector {
    let (id, key) = create_connector(app, name).await;
    let state = tempfile::tempdir().unwrap();
    let out = register(app, &key, state.path()).await;
    assert!(
        out.status.success(),
        "register failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = d.config(state.path(), urls);
    let child = imd()
        .args(["connector", "run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(state.path())
        .stdout(Stdio::null())
        .stderr(if std::env::var("TEST_LOG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap();
    let c = Connector {
        id,
        child,
        _state: state,
    };
    wait_status(app, &c.id, "connected").await;
    c
}

pub async fn connector_status(app: &TestApp, id: &str) -> Value {
    let r = app
        .admin_get(&format!("/api/v1/admin/connectors/{id}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

pub async fn wait_status(app: &TestApp, id: &str, want: &str) {
    for _ in 0..200 {
        if connector_status(app, id).await["status"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "connector {id} not {want}: {}",
        connector_status(app, id).await
    );
}

pub async fn add_mapping(app: &TestApp, body: Value) -> Value {
    let r = app.admin_post("/api/v1/admin/ldap-mappings", &body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

/// The usual mapping: everyone under the base, profile "all".
pub async fn map_everyone(app: &TestApp, d: &Dir) {
    add_mapping(
        app,
        json!({"name": "everyone", "priority": 100, "base_dn": d.base, "profile": "all",
               "storage_region": "eu", "quota_bytes": 1000}),
    )
    .await;
}

pub async fn v2_token(app: &TestApp) -> String {
    app.token_with(json!({"version": "v2", "name": "v2 rollout"}))
        .await
}

pub fn v2(token: &str, serial: &str, login: &str, domain: Option<&str>) -> Value {
    json!({
        "token": token,
        "device": {"hostname": format!("WS-{serial}"), "serial": serial, "os": "windows"},
        "user": {"login": login, "domain": domain}
    })
}

async fn counts(app: &TestApp) -> (usize, usize) {
    (
        app.list("/api/v1/admin/users").await.len(),
        app.list("/api/v1/admin/devices").await.len(),
    )
}

async fn token_uses(app: &TestApp) -> i64 {
    let tokens = app.list("/api/v1/admin/tokens").await;
    tokens.iter().map(|t| t["uses"].as_i64().unwrap_or(0)).sum()
}

async fn both<F, Fut>(f: F)
where
    F: Fn(Dir) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for kind in [Kind::OpenLdap, Kind::Ad] {
        if let Some(d) = dir(kind) {
            f(d).await;
        }
    }
}

#[tokio::test]
async fn v2_activation_creates_the_user_under_the_winning_mapping() {
    both(|d| async move {
        let app = spawn_app().await;
        let _c = start_connector(&app, &d, "dc-1").await;
        // Priority order: the engineers mapping (nested membership: alice is in backend,
        // which is in engineers) wins over the catch-all.
        add_mapping(
            &app,
            json!({"name": "engineers", "priority": 10, "base_dn": d.base,
                   "group": d.group("engineers"), "profile": "eng", "storage_region": "us",
                   "quota_bytes": 5000}),
        )
        .await;
        map_everyone(&app, &d).await;
        let token = v2_token(&app).await;
        let (status, a) = app
            .activate_ok(&v2(&token, "V2-ALICE", "alice", d.domain()))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(a["user_created"], true);
        assert_eq!(a["profile"], "eng");
        assert_eq!(a["storage_region"], "us");
        assert_eq!(a["quota_bytes"], 5000);
        let (_, c) = app
            .activate_ok(&v2(&token, "V2-CAROL", "carol", d.domain()))
            .await;
        assert_eq!(c["profile"], "all");
        assert_eq!(c["quota_bytes"], 1000);

        let r = app
            .admin_get(&format!(
                "/api/v1/admin/users/{}",
                a["user_id"].as_str().unwrap()
            ))
            .await;
        let u: Value = r.json().await.unwrap();
        let u = if u["user"].is_object() {
            u["user"].clone()
        } else {
            u
        };
        assert_eq!(u["email"], d.mail("alice"));
        assert_eq!(u["source"], "ldap");
        let ext = u["external_id"].as_str().unwrap();
        assert!(
            uuid::Uuid::parse_str(ext).is_ok(),
            "external id {ext} is a UUID"
        );

        // The same device again: the same user and device, no new token use.
        let uses = token_uses(&app).await;
        let (status, again) = app
            .activate_ok(&v2(&token, "V2-ALICE", "alice", d.domain()))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again["device_id"], a["device_id"]);
        assert_eq!(again["user_id"], a["user_id"]);
        assert_eq!(token_uses(&app).await, uses);
        // By UPN (AD) or DOMAIN\login form: the same user.
        let body = match d.kind {
            Kind::Ad => json!({"token": token, "device": {"serial": "V2-ALICE-2"},
                               "user": {"upn": "alice@example.test"}}),
            Kind::OpenLdap => json!({"token": token, "device": {"serial": "V2-ALICE-2"},
                                     "user": {"login": "ALICE"}}),
        };
        let (_, second) = app.activate_ok(&body).await;
        assert_eq!(second["user_id"], a["user_id"]);
        assert_eq!(second["user_created"], false);
    })
    .await;
}

#[tokio::test]
async fn v2_refusals_name_what_to_fix_and_write_nothing() {
    both(|d| async move {
        let app = spawn_app().await;
        let _c = start_connector(&app, &d, "dc-1").await;
        add_mapping(
            &app,
            json!({"name": "berlin", "priority": 10, "base_dn": d.base,
                   "ou": d.ou(&["Berlin", "People"]), "profile": "berlin", "storage_region": "eu"}),
        )
        .await;
        let token = v2_token(&app).await;
        let cases = [
            (
                "nobody-here",
                StatusCode::FORBIDDEN,
                "user_not_found",
                "nobody-here",
            ),
            ("frank", StatusCode::FORBIDDEN, "user_disabled", "disabled"),
            // alice is not in the Berlin OU: the closest mapping is named.
            ("alice", StatusCode::FORBIDDEN, "user_not_mapped", "berlin"),
        ];
        for (i, (login, status, code, hint)) in cases.iter().enumerate() {
            let r = app
                .activate(&v2(&token, &format!("REF-{i}"), login, d.domain()))
                .await;
            let (s, c, body) = error_code(r).await;
            assert_eq!((s, c.as_str()), (*status, *code), "{login}: {body}");
            let msg = body["error"]["message"].as_str().unwrap();
            assert!(msg.to_lowercase().contains(hint), "{login}: {msg}");
        }
        // dave has no mail: the mapping matches by scope, the message says what is missing.
        add_mapping(
            &app,
            json!({"name": "everyone", "priority": 20, "base_dn": d.base, "profile": "all",
                   "storage_region": "eu"}),
        )
        .await;
        let (s, c, body) =
            error_code(app.activate(&v2(&token, "REF-D", "dave", d.domain())).await).await;
        assert_eq!(
            (s, c.as_str()),
            (StatusCode::FORBIDDEN, "user_not_mapped"),
            "{body}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains("mail"),
            "{body}"
        );
        // With the UPN fall-back (AD users have a UPN), dave is let in.
        if d.kind == Kind::Ad {
            add_mapping(
                &app,
                json!({"name": "upn-fallback", "priority": 5, "base_dn": d.base,
                       "profile": "upn", "storage_region": "eu", "email_fallback": "upn",
                       "filter": "(sAMAccountName=dave)"}),
            )
            .await;
            let (_, v) = app
                .activate_ok(&v2(&token, "REF-D2", "dave", d.domain()))
                .await;
            assert_eq!(v["profile"], "upn");
            let users = app.list("/api/v1/admin/users").await;
            assert_eq!(users.len(), 1);
            assert_eq!(users[0]["email"], "dave@example.test");
        } else {
            assert_eq!(counts(&app).await, (0, 0));
        }
        // A login of another domain is not this directory's user.
        if d.kind == Kind::Ad {
            let (_, c, _) = error_code(
                app.activate(&v2(&token, "REF-X", "alice", Some("OTHERCORP")))
                    .await,
            )
            .await;
            assert_eq!(c, "user_not_found");
        }
    })
    .await;
}

#[tokio::test]
async fn mappings_scope_by_ou_group_and_filter_in_priority_order() {
    both(|d| async move {
        let app = spawn_app().await;
        let _c = start_connector(&app, &d, "dc-1").await;
        add_mapping(
            &app,
            json!({"name": "sales", "priority": 1, "base_dn": d.base,
            "filter": d.department_filter("Sales"), "profile": "sales", "storage_region": "eu"}),
        )
        .await;
        add_mapping(
            &app,
            json!({"name": "berlin", "priority": 2, "base_dn": d.base,
            "ou": d.ou(&["Berlin", "People"]), "profile": "berlin", "storage_region": "eu"}),
        )
        .await;
        // staff contains engineers, which contains backend, which contains alice: three levels.
        add_mapping(
            &app,
            json!({"name": "staff", "priority": 3, "base_dn": d.base,
            "group": d.group("staff"), "profile": "staff", "storage_region": "eu"}),
        )
        .await;
        let token = v2_token(&app).await;
        let want = [
            ("heidi", "sales"), // Sales and Berlin: the lower priority number wins
            ("carol", "sales"),
            ("alice", "staff"),  // nested three levels deep
            ("jsmith", "staff"), // a DN with an escaped comma, direct member
        ];
        for (i, (login, profile)) in want.iter().enumerate() {
            let (_, v) = app
                .activate_ok(&v2(&token, &format!("MAP-{i}"), login, d.domain()))
                .await;
            assert_eq!(v["profile"], *profile, "{login}");
        }
        // zoe (Design) falls under none of them.
        let (_, c, _) =
            error_code(app.activate(&v2(&token, "MAP-Z", "zoe", d.domain())).await).await;
        assert_eq!(c, "user_not_mapped");
    })
    .await;
}

#[tokio::test]
async fn hostile_logins_never_match_more_than_one_user() {
    let Some(d) = dir(Kind::OpenLdap) else { return };
    let app = spawn_app().await;
    let _c = start_connector(&app, &d, "dc-1").await;
    map_everyone(&app, &d).await;
    let token = v2_token(&app).await;
    for (i, login) in [
        "*",
        "*)(uid=*",
        "admin)(|(x=*",
        "alice)(uid=*",
        "al*",
        "\\",
        "alice\\",
    ]
    .iter()
    .enumerate()
    {
        let r = app
            .activate(&v2(&token, &format!("INJ-{i}"), login, None))
            .await;
        let (s, c, body) = error_code(r).await;
        assert!(
            c == "user_not_found" || (s == StatusCode::BAD_REQUEST && c == "invalid_request"),
            "{login:?}: {body}"
        );
    }
    let long = "a".repeat(10 * 1024);
    for login in ["alice\u{0}", long.as_str()] {
        let r = app.activate(&v2(&token, "INJ-X", login, None)).await;
        let (s, c, _) = error_code(r).await;
        assert_eq!(
            (s, c.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
    }
    assert_eq!(counts(&app).await, (0, 0));
}

#[tokio::test]
async fn no_connector_is_503_and_nothing_is_written_unless_known_users_are_allowed() {
    let Some(d) = dir(Kind::OpenLdap) else { return };
    let app = spawn_app().await;
    map_everyone(&app, &d).await;
    let token = v2_token(&app).await;
    // Never connected.
    let (s, c, body) = error_code(app.activate(&v2(&token, "OUT-1", "alice", None)).await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "connector_unavailable"),
        "{body}"
    );
    assert_eq!(body["error"]["retryable"], true);
    assert_eq!(counts(&app).await, (0, 0));
    assert_eq!(token_uses(&app).await, 0);

    // Known once, then the connector goes away.
    let conn = start_connector(&app, &d, "dc-1").await;
    let (_, first) = app.activate_ok(&v2(&token, "OUT-1", "alice", None)).await;
    drop(conn);
    let id = app.list("/api/v1/admin/connectors").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&app, &id, "disconnected").await;
    let (s, c, _) = error_code(app.activate(&v2(&token, "OUT-2", "alice", None)).await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "connector_unavailable")
    );
    assert_eq!(counts(&app).await, (1, 1));

    let r = app
        .client
        .patch(app.url("/api/v1/admin/org"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"directory_outage": "allow_known_users"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, second) = app.activate_ok(&v2(&token, "OUT-2", "alice", None)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(second["user_id"], first["user_id"]);
    // The audit trail says how it was let in.
    let acts = app.list("/api/v1/admin/activations").await;
    assert!(
        acts.iter()
            .any(|a| a["message"].as_str().is_some_and(|m| m.contains("outage"))),
        "{acts:?}"
    );
    // A user imd never saw is still refused.
    let (_, c, _) = error_code(app.activate(&v2(&token, "OUT-3", "bob", None)).await).await;
    assert_eq!(c, "connector_unavailable");
    assert_eq!(counts(&app).await, (1, 2));
}

#[tokio::test]
async fn a_request_whose_connector_dies_fails_over_to_another() {
    let Some(d) = dir(Kind::OpenLdap) else { return };
    let app = spawn_app().await;
    let first = start_connector(&app, &d, "dc-1").await;
    map_everyone(&app, &d).await;
    let token = v2_token(&app).await;
    // Frozen, the first connector takes the request and never answers...
    first.signal("-STOP");
    let second = start_connector(&app, &d, "dc-2").await;
    let pending = {
        let client = app.client.clone();
        let url = app.url("/api/v1/activations");
        let body = v2(&token, "FAIL-1", "alice", None);
        tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() })
    };
    // ...until it dies mid-request: the service retries on the second one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal("-KILL");
    let r = pending.await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(counts(&app).await, (1, 1));
    wait_status(&app, &first.id, "disconnected").await;
    assert_eq!(
        connector_status(&app, &second.id).await["status"],
        "connected"
    );
}

#[tokio::test]
async fn a_domain_controller_down_means_the_next_url() {
    let Some(d) = dir(Kind::Ad) else { return };
    let app = spawn_app().await;
    let urls = vec!["ldap://127.0.0.1:1".to_string(), d.url.clone()];
    let _c = start_connector_with(&app, &d, "dc-1", Some(urls)).await;
    map_everyone(&app, &d).await;
    let token = v2_token(&app).await;
    let (status, _) = app
        .activate_ok(&v2(&token, "DCDOWN", "bob", Some("EXAMPLE")))
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

async fn post(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn password_activation_and_web_login_bind_as_the_user() {
    both(|d| async move {
        let app = spawn_app().await;
        // Passwords travel over LDAPS here (StartTLS elsewhere).
        let _c = start_connector_with(&app, &d, "dc-1", Some(vec![d.ldaps_url.clone()])).await;
        map_everyone(&app, &d).await;
        let org = app.org_id.clone();
        let login = |user: &str, pw: &str| {
            json!({"organization": org, "login": user, "domain": d.domain(), "password": pw})
        };
        // Web login.
        let r = post(&app, "/api/v1/auth/ldap", &login("alice", "Passw0rd!alice")).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["user"]["email"], d.mail("alice"));
        assert_eq!(v["user"]["mapping"], "everyone");
        let (s, c, _) = error_code(post(&app, "/api/v1/auth/ldap", &login("alice", "wrong")).await).await;
        assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
        let (s, c, _) = error_code(post(&app, "/api/v1/auth/ldap", &login("alice", "")).await).await;
        assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
        let (s, c, _) = error_code(post(&app, "/api/v1/auth/ldap", &login("frank", "Passw0rd!frank")).await).await;
        assert_eq!((s, c.as_str()), (StatusCode::FORBIDDEN, "user_disabled"));

        // The organization by its sign-in name.
        let r = app
            .client
            .patch(app.url("/api/v1/admin/org"))
            .bearer_auth(&app.admin_key)
            .json(&json!({"slug": "acme"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let mut body = login("bob", "Passw0rd!bob");
        body["organization"] = json!("ACME");
        body["device"] = json!({"serial": "PW-BOB", "hostname": "WS-BOB"});
        let r = post(&app, "/api/v1/activations/password", &body).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert_eq!(v["profile"], "all");
        let r = post(&app, "/api/v1/activations/password", &body).await;
        assert_eq!(r.status(), StatusCode::OK);
        body["password"] = json!("nope");
        body["device"] = json!({"serial": "PW-BOB-2"});
        let (s, c, _) = error_code(post(&app, "/api/v1/activations/password", &body).await).await;
        assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
        assert_eq!(app.list("/api/v1/admin/devices").await.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn repeated_password_failures_are_rate_limited() {
    let Some(d) = dir(Kind::OpenLdap) else { return };
    let app = spawn_app().await;
    let _c = start_connector(&app, &d, "dc-1").await;
    map_everyone(&app, &d).await;
    let body = json!({"organization": app.org_id, "login": "carol", "password": "bad"});
    for _ in 0..5 {
        let (_, c, _) = error_code(post(&app, "/api/v1/auth/ldap", &body).await).await;
        assert_eq!(c, "invalid_credentials");
    }
    let r = post(&app, "/api/v1/auth/ldap", &body).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    // Even the right password waits out the window for that login.
    let ok = json!({"organization": app.org_id, "login": "carol", "password": "Passw0rd!carol"});
    assert_eq!(
        post(&app, "/api/v1/auth/ldap", &ok).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another login from the same address is not locked out yet.
    let other = json!({"organization": app.org_id, "login": "bob", "password": "Passw0rd!bob"});
    assert_eq!(
        post(&app, "/api/v1/auth/ldap", &other).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_admin_browses_the_directory_through_the_connector() {
    both(|d| async move {
        let app = spawn_app().await;
        let _c = start_connector(&app, &d, "dc-1").await;
        let r = app
            .admin_get("/api/v1/admin/directory/naming-contexts")
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        let ncs = v["root_dse"]["naming_contexts"].as_array().unwrap();
        assert!(
            ncs.iter()
                .any(|n| n.as_str().unwrap().eq_ignore_ascii_case(&d.base)),
            "{v}"
        );
        let base = urlencode(&d.base);
        let ous = app
            .list(&format!("/api/v1/admin/directory/ous?base={base}"))
            .await;
        let names: Vec<String> = ous
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_lowercase())
            .collect();
        assert!(names.contains(&"people".to_string()), "{names:?}");
        // Groups page by page (limit 2) until the cursor runs out.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let groups_ou = match d.kind {
            Kind::OpenLdap => urlencode(&d.ou(&["groups"])),
            Kind::Ad => urlencode(&d.ou(&["Groups"])),
        };
        let mut pages = 0;
        for _ in 0..100 {
            pages += 1;
            let mut q = format!("/api/v1/admin/directory/groups?base={groups_ou}&limit=2");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={}", urlencode(c)));
            }
            let r = app.admin_get(&q).await;
            assert_eq!(r.status(), StatusCode::OK);
            let v: Value = r.json().await.unwrap();
            let items = v["items"].as_array().unwrap();
            assert!(items.len() <= 2);
            seen.extend(
                items
                    .iter()
                    .map(|g| g["name"].as_str().unwrap().to_lowercase()),
            );
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert!(pages > 2, "paged: {pages} pages");
        for g in ["backend", "engineers", "staff", "sales"] {
            assert!(seen.contains(&g.to_string()), "{g} in {seen:?}");
        }
        let mut dedup = seen.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), seen.len(), "each group once: {seen:?}");
        let r = app
            .admin_get(&format!("/api/v1/admin/directory/groups?base={base}&q=eng"))
            .await;
        let v: Value = r.json().await.unwrap();
        let names: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["engineers"], "{v}");
        // A malformed base is refused before the directory is asked.
        let (s, _, _) = error_code(
            app.admin_get("/api/v1/admin/directory/ous?base=not-a-dn")
                .await,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    })
    .await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A raw channel attempt: the HTTP status and error code the upgrade was refused with.
async fn raw_channel(app: &TestApp, credential: &str, protocol: &str) -> (u16, String) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/api/v1/connectors/channel",
        app.addr.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    req.headers_mut()
        .insert("x-imd-connector-protocol", protocol.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => (101, String::new()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
            (
                resp.status().as_u16(),
                body["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn the_channel_checks_protocol_version_and_credential() {
    let app = spawn_app().await;
    let (_, key) = create_connector(&app, "dc-1").await;
    let state = tempfile::tempdir().unwrap();
    let out = register(&app, &key, state.path()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let credential = std::fs::read_to_string(state.path().join("credential")).unwrap();
    assert_eq!(
        raw_channel(&app, &credential, "99").await,
        (426, "protocol_version_unsupported".into())
    );
    assert_eq!(
        raw_channel(&app, "imdc_forged", "1").await,
        (401, "connector_credential_invalid".into())
    );
    assert_eq!(raw_channel(&app, credential.trim(), "1").await.0, 101);
    // The key was single use.
    let again = register(&app, &key, tempfile::tempdir().unwrap().path()).await;
    assert!(!again.status.success());
}

#[tokio::test]
async fn two_replicas_serve_activations_and_browsing_through_one_connector() {
    if !crate::helpers::on_postgres() {
        eprintln!("replicas need PostgreSQL; skipped on SQLite");
        return;
    }
    let Some(d) = dir(Kind::OpenLdap) else { return };
    let app = crate::helpers::spawn_app_with(&[("public_url", crate::replicas::PUBLIC_URL)]).await;
    let _c = start_connector(&app, &d, "dc-1").await;
    map_everyone(&app, &d).await;
    let token = v2_token(&app).await;
    // The connector is attached to `app`; the other replica forwards to it.
    let other = crate::replicas::start_replica(&app);
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/api/v1/activations", other.base))
        .json(&v2(&token, "REP-1", "alice", None))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let r = client
        .get(format!(
            "{}/api/v1/admin/directory/naming-contexts",
            other.base
        ))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // And the other replica sees the connector as connected.
    let r = client
        .get(format!("{}/api/v1/admin/connectors", other.base))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["items"][0]["status"], "connected", "{v}");
}

#[tokio::test]
async fn a_connector_that_missed_its_heartbeats_comes_back_by_itself() {
    let Some(d) = dir(Kind::OpenLdap) else { return };
    let app = crate::helpers::spawn_app_with(&[
        ("connectors.heartbeat_interval_secs", "1"),
        ("connectors.heartbeat_window_secs", "3"),
    ])
    .await;
    let c = start_connector(&app, &d, "dc-1").await;
    map_everyone(&app, &d).await;
    let token = v2_token(&app).await;
    // Frozen past the heartbeat window: the service gives up on the channel.
    c.signal("-STOP");
    wait_status(&app, &c.id, "disconnected").await;
    let (_, code, _) = error_code(app.activate(&v2(&token, "HB-1", "alice", None)).await).await;
    assert_eq!(code, "connector_unavailable");
    // Thawed, it notices the closed channel and reconnects without anyone's help.
    c.signal("-CONT");
    wait_status(&app, &c.id, "connected").await;
    let (status, _) = app.activate_ok(&v2(&token, "HB-1", "alice", None)).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn limits_have_clear_errors() {
    let Some(d) = dir(Kind::OpenLdap) else { return };
    let app = crate::helpers::spawn_app_with(&[
        ("connectors.max_response_bytes", "2000"),
        ("connectors.request_timeout_ms", "1000"),
    ])
    .await;
    let c = start_connector(&app, &d, "dc-1").await;
    // An answer larger than the limit is refused by the connector itself, with the size.
    let r = app
        .admin_get(&format!(
            "/api/v1/admin/directory/groups?base={}&limit=500",
            urlencode(&d.base)
        ))
        .await;
    let (s, code, body) = error_code(r).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::BAD_GATEWAY, "directory_error"),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("2000"),
        "{body}"
    );
    // A connector that does not answer within the deadline: 503, retryable.
    c.signal("-STOP");
    let started = std::time::Instant::now();
    let r = app
        .admin_get("/api/v1/admin/directory/naming-contexts")
        .await;
    let (s, code, body) = error_code(r).await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "connector_unavailable"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    c.signal("-CONT");
}

#[tokio::test]
async fn a_classroom_of_laptops_for_one_user_activates_together() {
    let Some(d) = dir(Kind::OpenLdap) else { return };
    let app = spawn_app().await;
    let _c = start_connector(&app, &d, "dc-1").await;
    map_everyone(&app, &d).await;
    let token = v2_token(&app).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let client = app.client.clone();
        let url = app.url("/api/v1/activations");
        let body = v2(&token, &format!("CLASS-{i}"), "bob", None);
        tasks.push(tokio::spawn(async move {
            client.post(url).json(&body).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    assert_eq!(counts(&app).await, (1, 24));
}

#[tokio::test]
async fn an_existing_user_with_the_same_email_is_linked_not_duplicated() {
    let Some(d) = dir(Kind::OpenLdap) else { return };
    let app = spawn_app().await;
    let _c = start_connector(&app, &d, "dc-1").await;
    map_everyone(&app, &d).await;
    // alice first arrives through the device map (no directory id).
    app.map(&format!(
        "{}alice@example.com,alice,WS-MAP,serial-number,LINK-1,,\n",
        crate::helpers::HEADER
    ))
    .await;
    let v4 = app.token().await;
    let (_, first) = app
        .activate_ok(&json!({"token": v4, "device": {"serial": "LINK-1"},
                              "user": {"login": "alice", "email": "alice@example.com"}}))
        .await;
    let token = v2_token(&app).await;
    let (_, second) = app.activate_ok(&v2(&token, "LINK-2", "alice", None)).await;
    assert_eq!(second["user_id"], first["user_id"]);
    assert_eq!(second["user_created"], false);
    let users = app.list("/api/v1/admin/users").await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["source"], "ldap");
    assert!(users[0]["external_id"].is_string());
    assert_eq!(users[0]["login"], "alice");
    // From now on it is found by its directory id.
    let (_, third) = app.activate_ok(&v2(&token, "LINK-3", "alice", None)).await;
    assert_eq!(third["user_id"], first["user_id"]);
}

#[tokio::test]
async fn the_password_activation_token_is_never_signed() {
    let Some(d) = dir(Kind::OpenLdap) else { return };
    let app = spawn_app().await;
    let _c = start_connector(&app, &d, "dc-1").await;
    map_everyone(&app, &d).await;
    let body = json!({"organization": app.org_id, "login": "bob", "password": "Passw0rd!bob",
                      "device": {"serial": "PWT-1"}});
    assert_eq!(
        post(&app, "/api/v1/activations/password", &body)
            .await
            .status(),
        StatusCode::CREATED
    );
    let id = format!("pwd-{}", app.org_id);
    for path in [
        format!("/api/v1/admin/tokens/{id}/bundle"),
        format!("/api/v1/admin/tokens/{id}/rotate"),
    ] {
        let (s, _, body) = error_code(app.admin_post(&path, &json!({})).await).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    // Revoking it turns password activation off.
    assert_eq!(
        app.admin_post(&format!("/api/v1/admin/tokens/{id}/revoke"), &json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    let mut body = body;
    body["device"] = json!({"serial": "PWT-2"});
    let (_, code, _) = error_code(post(&app, "/api/v1/activations/password", &body).await).await;
    assert_eq!(code, "token_revoked");
}
