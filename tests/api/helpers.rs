//! `spawn_app()`: the real server on 127.0.0.1:0 with a fresh data directory, plus helpers per
//! endpoint. Logs are silent unless TEST_LOG is set.

use std::sync::Arc;

use imd::clock::OffsetClock;
use imd::config::{self, Settings};
use imd::startup::Application;
use imd::store::Store;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

pub struct TestApp {
    pub addr: String,
    /// `http://host:port` of the separate metrics listener, when `metrics.listen` is set.
    pub metrics_addr: Option<String>,
    pub client: reqwest::Client,
    pub org_id: String,
    pub admin_key: String,
    pub clock: OffsetClock,
    pub settings: Settings,
    pub store: Store,
    /// Kept so the data directory lives as long as the app.
    pub _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the server with extra settings (`("limits.device_map_bytes", "100")`, ...).
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    spawn_app_in(dir, extra).await
}

pub async fn spawn_app_in(dir: tempfile::TempDir, extra: &[(&str, &str)]) -> TestApp {
    spawn_app_full(dir, extra, Vec::new()).await
}

/// The database the suite runs on: SQLite in the data directory, or, when `TEST_PG_URL`
/// names a PostgreSQL cluster (scripts/test.sh starts one), a fresh database of its own in it.
/// The URL is kept in the data directory so that every server started on that directory (a
/// restart, a second replica) shares the database.
pub async fn prepare_database(dir: &std::path::Path) {
    let Ok(admin) = std::env::var("TEST_PG_URL") else {
        return;
    };
    let marker = dir.join(DB_URL_FILE);
    if marker.exists() {
        return;
    }
    use sqlx::{Connection, Executor};
    let name = format!("imd_t_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .expect("the test PostgreSQL cluster is reachable");
    c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let _ = c.close().await;
    let (base, _) = admin.rsplit_once('/').expect("TEST_PG_URL ends in /DBNAME");
    std::fs::write(marker, format!("{base}/{name}")).unwrap();
}

const DB_URL_FILE: &str = "test-database-url";

/// The per-test PostgreSQL database of this data directory, if the suite runs on PostgreSQL.
pub fn database_url_of(dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(dir.join(DB_URL_FILE)).ok()
}

pub fn on_postgres() -> bool {
    std::env::var("TEST_PG_URL").is_ok()
}

/// `spawn_app_in` with resolvers of the test's own (see tests/api/resolvers.rs).
pub async fn spawn_app_full(
    dir: tempfile::TempDir,
    extra: &[(&str, &str)],
    resolvers: Vec<(imd_tokens::ImdVersion, Arc<dyn imd::resolve::Resolver>)>,
) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        imd::telemetry::init(false);
    }
    prepare_database(dir.path()).await;
    let settings = settings_for(dir.path(), extra);
    let clock = OffsetClock::default();
    let app = Application::build_with(settings.clone(), Arc::new(clock.clone()), resolvers)
        .await
        .expect("server starts");
    let addr = format!("http://{}", app.addr());
    let metrics_addr = app.metrics_addr().map(|a| format!("http://{a}"));
    let store = app.store().clone();
    tokio::spawn(app.run_until_stopped());
    let (org, admin_key) = imd::cli::create_org(&settings, "Test Org").await.unwrap();
    TestApp {
        addr,
        metrics_addr,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()
            .unwrap(),
        org_id: org.id,
        admin_key,
        clock,
        settings,
        store,
        _dir: dir,
    }
}

pub fn settings_for(dir: &std::path::Path, extra: &[(&str, &str)]) -> Settings {
    let mut flags: Vec<(&str, String)> = vec![
        ("listen", "127.0.0.1:0".into()),
        ("data_dir", dir.display().to_string()),
        // Tests move the clock by weeks: a scheduled sync would start in the middle of them.
        // The scheduler's own test turns it on.
        ("sync.scheduler", "false".into()),
    ];
    if let Some(url) = database_url_of(dir) {
        flags.push(("database_url", url));
    }
    flags.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    config::load(Some(std::path::Path::new("/dev/null")), Vec::new(), &flags).unwrap()
}

/// The JSON error body's `code`, asserting the documented shape on the way.
pub async fn error_code(resp: Response) -> (StatusCode, String, Value) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("error body is JSON");
    let err = &body["error"];
    assert!(err["code"].is_string(), "error.code missing in {body}");
    assert!(
        err["message"].is_string(),
        "error.message missing in {body}"
    );
    assert!(
        err["retryable"].is_boolean(),
        "error.retryable missing in {body}"
    );
    (status, err["code"].as_str().unwrap().to_string(), body)
}

pub fn activation(token: &str, serial: &str, hostname: &str, login: &str) -> Value {
    json!({
        "token": token,
        "device": {"hostname": hostname, "serial": serial, "uuid": null, "os": "windows",
                   "os_version": "11 23H2", "client_version": "7.5.0"},
        "user": {"login": login, "domain": "CORP", "upn": null, "email": null}
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    /// A request to `path` authenticated with `bearer` (an admin key or a device credential).
    pub async fn get_as(&self, path: &str, bearer: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_as(&self, path: &str, bearer: &str) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete_as(&self, path: &str, bearer: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(&self.admin_key)
            .send()
            .await
            .unwrap()
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&self.admin_key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn mint(&self, body: &Value) -> Response {
        self.admin_post("/api/v1/admin/tokens", body).await
    }

    /// A fresh v4 token string (asserting 201).
    pub async fn token(&self) -> String {
        self.token_with(json!({"version": "v4", "name": "test"}))
            .await
    }

    pub async fn token_with(&self, body: Value) -> String {
        let r = self.mint(&body).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn upload(&self, csv: &str, query: &str) -> Response {
        self.upload_bytes(csv.as_bytes().to_vec(), query).await
    }

    pub async fn upload_bytes(&self, csv: Vec<u8>, query: &str) -> Response {
        self.client
            .post(self.url(&format!("/api/v1/admin/device-maps{query}")))
            .bearer_auth(&self.admin_key)
            .header("Content-Type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap()
    }

    /// Uploads a device map and asserts it was applied.
    pub async fn map(&self, csv: &str) -> Value {
        let r = self.upload(csv, "").await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub async fn activate(&self, body: &Value) -> Response {
        self.client
            .post(self.url("/api/v1/activations"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Activates and returns (status, body) asserting success.
    pub async fn activate_ok(&self, body: &Value) -> (StatusCode, Value) {
        let r = self.activate(body).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status} {v}"
        );
        (status, v)
    }

    pub async fn list(&self, path: &str) -> Vec<Value> {
        let r = self.admin_get(path).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()["items"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Blocks writes from another connection (as a backup tool or a long admin job would)
    /// until `release` or drop: SQLite's write lock, or on PostgreSQL an EXCLUSIVE lock on the
    /// tables activations write (reads go on).
    pub async fn lock_writes(&self) -> WriteLock {
        use sqlx::{Connection, Executor};
        let url = self.settings.database_url();
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            c.execute("BEGIN").await.unwrap();
            c.execute(
                "LOCK TABLE users, devices, device_mappings, activations, tokens, token_use_counts, replicas
                 IN EXCLUSIVE MODE",
            )
            .await
            .unwrap();
            WriteLock::Postgres(c)
        } else {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            c.execute("BEGIN IMMEDIATE").await.unwrap();
            WriteLock::Sqlite(c)
        }
    }

    /// A second organization on the same server: (org_id, admin_key).
    pub async fn other_org(&self) -> (String, String) {
        let (org, key) = imd::cli::create_org(&self.settings, "Other Org")
            .await
            .unwrap();
        (org.id, key)
    }
}

/// A connection holding writes off (`TestApp::lock_writes`).
pub enum WriteLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl WriteLock {
    pub async fn release(self) {
        use sqlx::Executor;
        match self {
            WriteLock::Sqlite(mut c) => c.execute("ROLLBACK").await.map(|_| ()),
            WriteLock::Postgres(mut c) => c.execute("ROLLBACK").await.map(|_| ()),
        }
        .unwrap();
    }
}

pub const HEADER: &str =
    "emailID,userName,deviceName,deviceIdentifierType,deviceIdentifier,oldDeviceName,restoreData\n";

/// A device map of `n` serial-number mappings, user `user{i}` on device `SER{i}`.
pub fn device_map(n: usize) -> String {
    let mut s = String::from(HEADER);
    for i in 0..n {
        s.push_str(&format!(
            "user{i}@corp.example.com,user{i},WS-{i:05},serial-number,SER{i:06},,\n"
        ));
    }
    s
}
