//! The storage seam from the outside: backups, migrations, refusing a newer schema, secrets in
//! database errors, readiness through the write path, and rotation guarantees, on whichever
//! backend the suite runs.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HEADER, activation, error_code, on_postgres, spawn_app, spawn_app_with};

fn imd(args: &[&str], data: &std::path::Path, url: Option<&str>) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imd"));
    c.args(args).arg("--data-dir").arg(data);
    if let Some(u) = url {
        c.arg("--database-url").arg(u);
    }
    c.env_remove("IMD_MASTER_KEY").output().unwrap()
}

#[tokio::test]
async fn backup_copies_the_running_database_consistently() {
    let app = spawn_app().await;
    let url = app.settings.database_url();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("imd-backup.db");
    if on_postgres() {
        let o = imd(
            &["backup", "--out", out.to_str().unwrap()],
            &app.settings.data_dir,
            Some(&url),
        );
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("pg_dump"));
        return;
    }
    let mut csv = String::from(HEADER);
    for i in 0..50 {
        csv.push_str(&format!(
            "u{i}@corp.example.com,u{i},WS-{i},serial-number,S{i},,\n"
        ));
    }
    app.map(&csv).await;
    let token = app.token().await;
    for i in 0..10 {
        app.activate_ok(&activation(
            &token,
            &format!("S{i}"),
            &format!("WS-{i}"),
            &format!("u{i}"),
        ))
        .await;
    }
    // Activations keep arriving while the backup runs.
    let busy = {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/v1/activations"),
            token.clone(),
        );
        tokio::spawn(async move {
            for i in 10..50 {
                let body = activation(
                    &token,
                    &format!("S{i}"),
                    &format!("WS-{i}"),
                    &format!("u{i}"),
                );
                client.post(&url).json(&body).send().await.unwrap();
            }
        })
    };
    let o = imd(
        &["backup", "--out", out.to_str().unwrap()],
        &app.settings.data_dir,
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    busy.await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o077,
        0,
        "0600"
    );
    // The copy is a database imd opens, with every mapping and at least the first devices.
    let copy = imd::store::Store::open(&imd::store::StoreOptions {
        url: format!("sqlite://{}", out.display()),
        max_connections: 1,
        busy_timeout: std::time::Duration::from_secs(1),
        acquire_timeout: std::time::Duration::from_secs(1),
        replica_id: "restore-check".into(),
        migrate: false,
    })
    .await
    .unwrap();
    let page = imd::store::Page {
        after: None,
        limit: 1000,
    };
    let devices = copy
        .list_devices(&app.org_id, &Default::default(), &page)
        .await
        .unwrap();
    assert!((10..=50).contains(&devices.len()), "{}", devices.len());
    let mappings = copy
        .list_mappings(&app.org_id, &Default::default(), &page)
        .await
        .unwrap();
    assert_eq!(mappings.len(), 50);
    // Consistent: every consumed mapping names a device that is in the copy.
    let ids: std::collections::HashSet<_> = devices.iter().map(|d| d.id.clone()).collect();
    for m in mappings.iter().filter(|m| m.consumed_at.is_some()) {
        assert!(ids.contains(m.device_id.as_ref().unwrap()));
    }
}

#[tokio::test]
async fn migrate_applies_once_and_a_newer_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::prepare_database(dir.path()).await;
    let url = crate::helpers::database_url_of(dir.path());
    let data = dir.path().join("data");
    let first = imd(&["migrate"], &data, url.as_deref());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("applied migrations [1, 2, 3, 4, 5, 6, 7]")
    );
    let second = imd(&["migrate"], &data, url.as_deref());
    assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));
    // A newer imd migrated this database: this one refuses it with a clear message.
    let url = url.unwrap_or_else(|| format!("sqlite://{}/imd.db", data.display()));
    if url.starts_with("postgres") {
        let p = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (9999, 'from the future', TRUE, '\\x00'::bytea, 0)",
        )
        .execute(&p)
        .await
        .unwrap();
    } else {
        let p = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (9999, 'from the future', TRUE, x'00', 0)",
        )
        .execute(&p)
        .await
        .unwrap();
    }
    for args in [&["migrate"][..], &["org", "create", "--name", "X"][..]] {
        let o = imd(args, &data, Some(&url));
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("schema version 9999") && err.contains("newer"),
            "{err}"
        );
    }
}

#[test]
fn database_passwords_never_appear_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the connection fails, and says so without the password.
    let o = imd(
        &["org", "create", "--name", "X"],
        dir.path(),
        Some("postgres://imd:Sup3rSecretPw@127.0.0.1:1/imd"),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("Sup3rSecretPw"), "{err}");
    let o = imd(
        &["org", "create", "--name", "X"],
        dir.path(),
        Some("mysql://u:Sup3rSecretPw@h/db"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && !err.contains("Sup3rSecretPw"),
        "{err}"
    );
}

#[tokio::test]
async fn readiness_fails_while_the_database_takes_no_writes() {
    let app = spawn_app_with(&[
        ("database.busy_timeout_ms", "200"),
        ("database.acquire_timeout_ms", "500"),
    ])
    .await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["backend"],
        if on_postgres() { "postgres" } else { "sqlite" }
    );
    let locker = app.lock_writes().await;
    // Reads still work; the write path does not: not ready.
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    let (s, c, _) = error_code(r).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    locker.release().await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_tokens_bundle_holds_the_string_that_was_deployed() {
    let app = spawn_app_with(&[("public_url", "https://imd.example.com")]).await;
    let minted: Value = app
        .mint(&json!({"version": "v4", "name": "deployed", "expires_at": "2099-01-01T00:00:00Z"}))
        .await
        .json()
        .await
        .unwrap();
    let (id, deployed) = (
        minted["id"].as_str().unwrap(),
        minted["token"].as_str().unwrap(),
    );
    let r = app
        .admin_post(
            &format!("/api/v1/admin/tokens/{id}/rotate"),
            &json!({"grace_days": 3}),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = app
        .admin_post(
            &format!("/api/v1/admin/tokens/{id}/bundle?vendor=Acme"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let bytes = r.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut ps1 = String::new();
    std::io::Read::read_to_string(
        &mut zip
            .by_name(&format!("{}Install-Imd.ps1", imd_tokens::bundle::ZIP_ROOT))
            .unwrap(),
        &mut ps1,
    )
    .unwrap();
    assert!(
        ps1.contains(deployed),
        "the bundle carries the deployed string, not a re-signed one"
    );
}

#[tokio::test]
async fn concurrent_rotations_of_one_token_link_exactly_one_successor() {
    let app = spawn_app().await;
    let minted: Value = app
        .mint(&json!({"version": "v4", "name": "r"}))
        .await
        .json()
        .await
        .unwrap();
    let id = minted["id"].as_str().unwrap().to_string();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = app.url(&format!("/api/v1/admin/tokens/{id}/rotate"));
            let (client, key) = (app.client.clone(), app.admin_key.clone());
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(key)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT)
    );
    let tokens = app.list("/api/v1/admin/tokens").await;
    assert_eq!(tokens.len(), 2, "one successor");
    let successor = tokens.iter().find(|t| t["id"] != id.as_str()).unwrap();
    assert_eq!(successor["rotated_from"], id.as_str());
}

#[tokio::test]
async fn a_full_audit_queue_drops_and_counts_instead_of_blocking() {
    use imd::activation::audit::AuditSink;
    use imd::store::ActivationRecord;
    let app = spawn_app_with(&[
        ("database.busy_timeout_ms", "100"),
        ("database.acquire_timeout_ms", "200"),
    ])
    .await;
    let (sink, _stop, _task) = AuditSink::start_with(app.store.clone(), 1);
    let record = |i: usize| ActivationRecord {
        org_id: Some(app.org_id.clone()),
        created_at: 1,
        outcome: "device_not_mapped".into(),
        status: 403,
        message: Some(format!("queued {i}")),
        ..Default::default()
    };
    // The database takes no writes: the writer task holds one batch and retries it, the queue
    // (one record) fills, and every further record waits at most 250 ms before it is dropped.
    let locker = app.lock_writes().await;
    let started = std::time::Instant::now();
    for i in 0..6 {
        sink.record(record(i)).await;
    }
    let waited = started.elapsed();
    assert!(sink.dropped() >= 3, "dropped {}", sink.dropped());
    assert!(
        waited < std::time::Duration::from_secs(6),
        "six records never waited without bound ({waited:?})"
    );
    locker.release().await;
    // What was queued is written once the database is back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows = app
            .list("/api/v1/admin/activations?outcome=device_not_mapped")
            .await;
        if rows.len() as u64 + sink.dropped() == 6 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} written",
            rows.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn doctor_checks_the_deployment_and_names_what_to_fix() {
    let app = spawn_app().await;
    let url = app.settings.database_url();
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_imd"))
            .args(args)
            .env_remove("IMD_MASTER_KEY")
            .output()
            .await
            .unwrap()
    };
    let args = || {
        vec![
            "doctor".to_string(),
            "--data-dir".into(),
            app.settings.data_dir.display().to_string(),
            "--database-url".into(),
            url.clone(),
        ]
    };
    // A healthy deployment: every check passes (plain HTTP is a warning only).
    let o = run(args()).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}");
    for want in [
        "ok    configuration",
        "ok    master key",
        "ok    database",
        "ok    clock",
        "warn  TLS",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    assert!(!out.contains("secret"), "no password in the output: {out}");

    // A master key others can read is a failure with the fix.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = app.settings.master_key_path();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = run(args()).await;
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert_eq!(o.status.code(), Some(1), "{out}");
        assert!(
            out.contains("FAIL  master key") && out.contains("chmod 600"),
            "{out}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // A database that cannot be reached.
    let mut bad = args();
    bad[4] = if on_postgres() {
        "postgres://imd@127.0.0.1:1/imd".into()
    } else {
        format!(
            "sqlite://{}/missing-dir/x.db",
            app.settings.data_dir.display()
        )
    };
    let o = run(bad).await;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL  database"), "{out}");
}
