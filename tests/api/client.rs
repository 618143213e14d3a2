//! `imd client`: the built binary run against the real server. Identity overrides (and an empty
//! `--uuid=`, so the test machine's DMI UUID is never sent) make the runs deterministic.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::{HEADER, TestApp, spawn_app, spawn_app_with};

fn imd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imd"));
    // The developer's environment must not choose the token or server.
    c.env_remove("IMD_TOKEN").env_remove("IMD_SERVER");
    c.kill_on_drop(true);
    c
}

fn activate_cmd(app: &TestApp, token: &str, dir: &Path, serial: &str) -> Command {
    let mut c = imd();
    c.args([
        "client", "activate", "--server", &app.addr, "--token", token,
    ])
    .arg("--state-dir")
    .arg(dir)
    .args(["--serial", serial, "--hostname", "WS-1", "--login", "jdoe"])
    .arg("--uuid=");
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn mapped_app(extra: &[(&str, &str)]) -> (TestApp, String) {
    let app = spawn_app_with(extra).await;
    app.map(&format!(
        "{HEADER}jdoe@corp.example.com,jdoe,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    (app, token)
}

fn state(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("activation.json")).unwrap()).unwrap()
}

async fn status(dir: &Path) -> Output {
    imd()
        .args(["client", "status", "--state-dir"])
        .arg(dir)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn activate_stores_a_working_credential_and_a_repeat_is_idempotent() {
    let (app, token) = mapped_app(&[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");

    let o = activate_cmd(&app, &token, &dir, "S1")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let first = state(&dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("activation.json")), 0o600);
        assert_eq!(mode(&dir.join("install_key")), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }
    let cred = first["device_credential"].as_str().unwrap();
    let r = app.get_as("/api/v1/device", cred).await;
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["device"]["id"], first["device_id"]);
    assert_eq!(me["user"]["email"], "jdoe@corp.example.com");
    // The install key was sent and bound: the server knows the device by it from now on.
    let stdout = String::from_utf8_lossy(&o.stdout);
    let key = std::fs::read_to_string(dir.join("install_key")).unwrap();
    assert!(!stdout.contains(key.trim()) && !stdout.contains(cred));

    let o = activate_cmd(&app, &token, &dir, "S1")
        .arg("--json")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["status"], "activated");
    assert_eq!(out["new_binding"], false);
    assert_eq!(state(&dir)["device_id"], first["device_id"]);
    assert_eq!(app.list("/api/v1/admin/devices").await.len(), 1);
}

#[tokio::test]
async fn an_unmapped_device_is_a_permanent_refusal_with_exit_2() {
    let (app, token) = mapped_app(&[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let o = activate_cmd(&app, &token, tmp.path(), "NOPE")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("device_not_mapped"), "{}", text(&o));
    assert!(started.elapsed() < Duration::from_secs(5), "no retries");
    assert!(!tmp.path().join("activation.json").exists());
}

#[tokio::test]
async fn a_locked_database_is_retried_until_it_clears() {
    let (app, token) = mapped_app(&[
        ("database.busy_timeout_ms", "200"),
        ("database.acquire_timeout_ms", "500"),
    ])
    .await;
    let locker = app.lock_writes().await;
    let tmp = tempfile::tempdir().unwrap();
    let child = activate_cmd(&app, &token, tmp.path(), "S1")
        .args(["--deadline-secs", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    locker.release().await;
    let o = child.wait_with_output().await.unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("retrying"), "{}", text(&o));

    // Failed attempts reach the audit trail in batches: poll briefly.
    let mut items = Vec::new();
    for _ in 0..100 {
        items = app.list("/api/v1/admin/activations").await;
        if items.iter().any(|a| a["outcome"] == "unavailable")
            && items.iter().any(|a| a["outcome"] == "activated")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = |outcome: &str| {
        items
            .iter()
            .filter(|a| a["outcome"] == outcome)
            .map(|a| a["created_at"].as_str().unwrap().to_string())
            .min()
    };
    let (unavailable, activated) = (at("unavailable"), at("activated"));
    assert!(
        unavailable.is_some() && activated.is_some() && unavailable <= activated,
        "{items:?}"
    );
}

#[tokio::test]
async fn a_database_locked_past_the_deadline_gives_up_with_exit_3() {
    let (app, token) = mapped_app(&[
        ("database.busy_timeout_ms", "200"),
        ("database.acquire_timeout_ms", "500"),
    ])
    .await;
    let locker = app.lock_writes().await;
    let tmp = tempfile::tempdir().unwrap();
    let o = activate_cmd(&app, &token, tmp.path(), "S1")
        .args(["--deadline-secs", "2"])
        .output()
        .await
        .unwrap();
    locker.release().await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(!tmp.path().join("activation.json").exists());
}

#[tokio::test]
async fn an_unreachable_server_gives_up_and_local_errors_exit_4() {
    let tmp = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: connection refused, retried, then given up.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app().await;
    let token = app.token().await;
    let o = imd()
        .args([
            "client",
            "activate",
            "--token",
            &token,
            "--deadline-secs",
            "1",
        ])
        .args(["--server", &format!("http://127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(tmp.path())
        .args(["--serial", "S1", "--login", "jdoe"])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    let o = imd()
        .args(["client", "activate", "--server", &app.addr, "--login", "x"])
        .arg("--state-dir")
        .arg(tmp.path())
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "no token: {}", text(&o));
    let o = imd()
        .args(["client", "activate", "--token", "not-a-jwt"])
        .arg("--state-dir")
        .arg(tmp.path())
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "bad token: {}", text(&o));
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let o = imd()
        .args([
            "client", "activate", "--token", &token, "--serial", "S1", "--login", "x",
        ])
        .arg("--state-dir")
        .arg(blocker.join("sub"))
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "unwritable state: {}", text(&o));
}

#[tokio::test]
async fn the_server_defaults_to_the_tokens_issuer() {
    let (app, token) = mapped_app(&[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let o = imd()
        .args(["client", "activate", "--token", &token, "--json"])
        .arg("--state-dir")
        .arg(tmp.path())
        .args([
            "--serial",
            "S1",
            "--hostname",
            "WS-1",
            "--login",
            "jdoe",
            "--uuid=",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(state(tmp.path())["server"], app.addr);
}

#[tokio::test]
async fn status_reports_a_valid_credential_and_a_revoked_one() {
    let (app, token) = mapped_app(&[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let o = status(tmp.path()).await;
    assert_eq!(o.status.code(), Some(4), "not activated: {}", text(&o));

    let o = activate_cmd(&app, &token, tmp.path(), "S1")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = status(tmp.path()).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("jdoe@corp.example.com"), "{}", text(&o));

    let id = state(tmp.path())["device_id"].as_str().unwrap().to_string();
    let r = app
        .admin_post(&format!("/api/v1/admin/devices/{id}/revoke"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let o = status(tmp.path()).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[tokio::test]
async fn dry_run_sends_nothing_and_prints_no_secrets() {
    let (app, token) = mapped_app(&[]).await;
    let tmp = tempfile::tempdir().unwrap();
    // A real run first, so an install key exists that the dry run could leak.
    let o = activate_cmd(&app, &token, tmp.path(), "S1")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let key = std::fs::read_to_string(tmp.path().join("install_key")).unwrap();

    let o = activate_cmd(&app, &token, tmp.path(), "S2")
        .arg("--dry-run")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let all = text(&o);
    assert!(
        all.contains("\"S2\"") && all.contains("<redacted>"),
        "{all}"
    );
    assert!(!all.contains(&token) && !all.contains(key.trim()), "{all}");
    // Nothing was sent: no attempt for S2 in the audit trail (failures are batched; wait a bit).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let items = app.list("/api/v1/admin/activations").await;
    assert_eq!(items.len(), 1, "{items:?}");
}
