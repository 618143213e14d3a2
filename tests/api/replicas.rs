//! Several `imd serve` processes on one PostgreSQL database keep the guarantees one process
//! gives: 64-way concurrency spread over 2 or 3 replicas. These run in the PostgreSQL pass of the
//! suite (TEST_PG_URL set); on SQLite (one writer, one node) there are no replicas to test and
//! each test says so and returns.

use std::io::BufRead;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HEADER, TestApp, activation, on_postgres, spawn_app_with};

pub const PUBLIC_URL: &str = "https://imd.replicas.test";

/// A replica: `imd serve` on the test's database and data directory (so the same master key).
pub struct Replica {
    child: std::process::Child,
    pub base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_replica(app: &TestApp) -> Replica {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imd"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--public-url",
            PUBLIC_URL,
        ])
        .arg("--data-dir")
        .arg(&app.settings.data_dir)
        .arg("--database-url")
        .arg(app.settings.database_url())
        .env("IMD_LOG", "warn")
        .env_remove("IMD_MASTER_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("replica did not start: {line:?}"))
        .to_string();
    Replica {
        child,
        base: format!("http://{addr}"),
    }
}

/// The in-process app plus `n - 1` replica processes: base URLs, first is the app.
async fn cluster(n: usize) -> Option<(TestApp, Vec<Replica>, Vec<String>)> {
    if !on_postgres() {
        eprintln!("replica tests run on PostgreSQL only (TEST_PG_URL is not set)");
        return None;
    }
    let app = spawn_app_with(&[("public_url", PUBLIC_URL)]).await;
    let replicas: Vec<Replica> = (1..n).map(|_| start_replica(&app)).collect();
    let mut bases = vec![app.addr.clone()];
    bases.extend(replicas.iter().map(|r| r.base.clone()));
    Some((app, replicas, bases))
}

/// 64 activations at once, spread round-robin over the replicas: (status, body) of each.
async fn spread(app: &TestApp, bases: &[String], bodies: Vec<Value>) -> Vec<(StatusCode, Value)> {
    let tasks: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let url = format!("{}/api/v1/activations", bases[i % bases.len()]);
            let client = app.client.clone();
            tokio::spawn(async move {
                let r = client.post(url).json(&body).send().await.unwrap();
                let s = r.status();
                (s, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Maps `n` devices (serial `S{i}`, host `WS-{i}`) to `user(i)`; returns one activation body per
/// device for `token`.
async fn map_fleet(app: &TestApp, token: &str, n: usize, user: fn(usize) -> String) -> Vec<Value> {
    let mut csv = String::from(HEADER);
    for i in 0..n {
        let u = user(i);
        csv.push_str(&format!(
            "{u}@corp.example.com,{u},WS-{i},serial-number,S{i},,\n"
        ));
    }
    app.map(&csv).await;
    (0..n)
        .map(|i| activation(token, &format!("S{i}"), &format!("WS-{i}"), &user(i)))
        .collect()
}

fn ok(s: StatusCode) -> bool {
    s == StatusCode::CREATED || s == StatusCode::OK
}

#[tokio::test]
async fn one_device_activated_64_times_across_3_replicas_is_one_device() {
    let Some((app, _r, bases)) = cluster(3).await else {
        return;
    };
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    let results = spread(
        &app,
        &bases,
        vec![activation(&token, "S1", "WS-1", "a"); 64],
    )
    .await;
    assert!(results.iter().all(|(s, _)| ok(*s)), "{results:?}");
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "exactly one first activation");
    let ids: std::collections::HashSet<_> = results
        .iter()
        .map(|(_, b)| b["device_id"].to_string())
        .collect();
    let creds: std::collections::HashSet<_> = results
        .iter()
        .map(|(_, b)| b["device_credential"].to_string())
        .collect();
    assert_eq!(
        (ids.len(), creds.len()),
        (1, 1),
        "one device, one credential"
    );
    assert_eq!(app.list("/api/v1/admin/devices").await.len(), 1);
    assert_eq!(app.list("/api/v1/admin/users").await.len(), 1);
    let mappings = app.list("/api/v1/admin/device-mappings").await;
    assert!(
        mappings[0]["consumed_at"].is_string(),
        "the mapping was consumed"
    );
    let acts = app.list("/api/v1/admin/activations?limit=200").await;
    assert_eq!(
        acts.iter().filter(|a| a["outcome"] == "activated").count(),
        1
    );
}

#[tokio::test]
async fn one_user_on_64_devices_across_2_replicas_is_one_user() {
    let Some((app, _r, bases)) = cluster(2).await else {
        return;
    };
    let token = app.token().await;
    let bodies = map_fleet(&app, &token, 64, |_| "same".into()).await;
    let results = spread(&app, &bases, bodies).await;
    assert!(
        results.iter().all(|(s, _)| *s == StatusCode::CREATED),
        "{results:?}"
    );
    let users: std::collections::HashSet<_> = results
        .iter()
        .map(|(_, b)| b["user_id"].to_string())
        .collect();
    assert_eq!(users.len(), 1);
    assert_eq!(
        results
            .iter()
            .filter(|(_, b)| b["user_created"] == true)
            .count(),
        1,
        "exactly one activation created the user"
    );
    assert_eq!(app.list("/api/v1/admin/users").await.len(), 1);
    assert_eq!(app.list("/api/v1/admin/devices?limit=100").await.len(), 64);
}

#[tokio::test]
async fn max_uses_is_exact_across_3_replicas() {
    let Some((app, _r, bases)) = cluster(3).await else {
        return;
    };
    let token = app
        .token_with(json!({"version": "v4", "name": "limited", "max_uses": 10}))
        .await;
    let bodies = map_fleet(&app, &token, 64, |i| format!("u{i}")).await;
    let results = spread(&app, &bases, bodies).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let exhausted = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::FORBIDDEN && b["error"]["code"] == "token_exhausted")
        .count();
    assert_eq!((created, exhausted), (10, 54), "{results:?}");
    assert_eq!(app.list("/api/v1/admin/devices?limit=100").await.len(), 10);
    let tokens = app.list("/api/v1/admin/tokens").await;
    assert_eq!(tokens[0]["uses"], 10);
}

#[tokio::test]
async fn unlimited_token_uses_are_counted_exactly_across_replicas() {
    let Some((app, _r, bases)) = cluster(2).await else {
        return;
    };
    let token = app.token().await;
    let bodies = map_fleet(&app, &token, 64, |i| format!("u{i}")).await;
    let results = spread(&app, &bases, bodies).await;
    assert!(results.iter().all(|(s, _)| *s == StatusCode::CREATED));
    let tokens = app.list("/api/v1/admin/tokens").await;
    assert_eq!(tokens[0]["uses"], 64, "sharded counters add up");
    assert!(tokens[0]["last_used_at"].is_string());
}

#[tokio::test]
async fn a_mapping_is_consumed_once_by_64_machines_across_3_replicas() {
    let Some((app, _r, bases)) = cluster(3).await else {
        return;
    };
    // One hostname mapping; 64 different machines (own serials) report that hostname at once.
    app.map(&format!(
        "{HEADER}h@corp.example.com,h,SHARED-PC,hostname,SHARED-PC,,\n"
    ))
    .await;
    let token = app.token().await;
    let bodies = (0..64)
        .map(|i| activation(&token, &format!("SER{i}"), "SHARED-PC", "h"))
        .collect();
    let results = spread(&app, &bases, bodies).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{results:?}");
    let refused = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::FORBIDDEN && b["error"]["code"] == "device_not_mapped")
        .count();
    assert_eq!(refused, 63, "{results:?}");
    let mappings = app.list("/api/v1/admin/device-mappings").await;
    assert_eq!(mappings.len(), 1);
    assert!(mappings[0]["device_id"].is_string());
    assert_eq!(app.list("/api/v1/admin/devices").await.len(), 1);
}

#[tokio::test]
async fn a_token_revoked_on_one_replica_is_refused_by_the_other_at_once() {
    let Some((app, _r, bases)) = cluster(2).await else {
        return;
    };
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\nb@corp.example.com,b,WS-2,serial-number,S2,,\n"
    ))
    .await;
    let minted: Value = app
        .mint(&json!({"version": "v4", "name": "r"}))
        .await
        .json()
        .await
        .unwrap();
    let (id, token) = (
        minted["id"].as_str().unwrap(),
        minted["token"].as_str().unwrap(),
    );
    let other = &bases[1];
    // The other replica has verified (and cached) this token already.
    let r = app
        .client
        .post(format!("{other}/api/v1/activations"))
        .json(&activation(token, "S1", "WS-1", "a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .admin_post(&format!("/api/v1/admin/tokens/{id}/revoke"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .post(format!("{other}/api/v1/activations"))
        .json(&activation(token, "S2", "WS-2", "b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "token_revoked");
}

#[tokio::test]
async fn a_key_rotated_by_another_process_verifies_at_once_on_every_replica() {
    let Some((app, _r, bases)) = cluster(2).await else {
        return;
    };
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let other = &bases[1];
    // The other replica has loaded its key ring (a first activation attempt does).
    let old = app.token().await;
    let r = app
        .client
        .post(format!("{other}/api/v1/activations"))
        .json(&activation(&old, "S0", "WS-0", "nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "verified; not mapped");
    // An operator rotates the signing key with the offline command (a third process)...
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imd"))
        .args(["keys", "rotate", "--json"])
        .arg("--data-dir")
        .arg(&app.settings.data_dir)
        .arg("--database-url")
        .arg(app.settings.database_url())
        .env_remove("IMD_MASTER_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kid = serde_json::from_slice::<Value>(&out.stdout).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    // ...this replica mints with it, and the other accepts the token within the same second.
    let token = app.token().await;
    assert_eq!(
        imd_tokens::decode_unverified(&token)
            .unwrap()
            .kid
            .as_deref(),
        Some(kid.as_str())
    );
    let r = app
        .client
        .post(format!("{other}/api/v1/activations"))
        .json(&activation(&token, "S1", "WS-1", "a"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
}

#[tokio::test]
async fn the_last_admin_key_survives_concurrent_revocations_across_replicas() {
    let Some((app, _r, bases)) = cluster(3).await else {
        return;
    };
    // Forty live keys; each revokes itself, all at once, spread over the replicas. Without a
    // lock two revocations could both see "two live keys" and leave none.
    let mut keys = vec![(String::new(), app.admin_key.clone())];
    for i in 0..39 {
        let r = app
            .admin_post(
                "/api/v1/admin/admin-keys",
                &json!({"name": format!("k{i}")}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        keys.push((
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        ));
    }
    let listed = app.list("/api/v1/admin/admin-keys").await;
    keys[0].0 = listed
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .find(|id| !keys.iter().any(|(k, _)| k == id))
        .unwrap();
    let tasks: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, (id, secret))| {
            let url = format!(
                "{}/api/v1/admin/admin-keys/{id}/revoke",
                bases[i % bases.len()]
            );
            let (client, secret) = (app.client.clone(), secret.clone());
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(secret)
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
    let live = app
        .store
        .list_admin_keys(&app.org_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.revoked_at.is_none())
        .count();
    assert_eq!(live, 1, "exactly one admin key is left: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| s.is_success()).count(),
        39,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn an_old_device_named_by_two_new_machines_at_once_is_replaced_once() {
    let Some((app, _r, bases)) = cluster(3).await else {
        return;
    };
    // 16 users, each with an old laptop; then two new machines per user, both mapped with
    // oldDeviceName = the old laptop, activated at once across the replicas. The identity
    // locks do not serialize them (different serials), the replacement guard must.
    let users = 16;
    let token = app.token().await;
    let old_bodies = map_fleet(&app, &token, users, |i| format!("u{i}")).await;
    let mut old_ids = Vec::new();
    for b in &old_bodies {
        let (_, v) = app.activate_ok(b).await;
        old_ids.push(v["device_id"].as_str().unwrap().to_string());
    }
    let mut csv = String::from(HEADER);
    let mut bodies = Vec::new();
    for i in 0..users {
        for k in 0..2 {
            csv.push_str(&format!(
                "u{i}@corp.example.com,u{i},NEW-{i}-{k},serial-number,N{i}X{k},WS-{i},\n"
            ));
            bodies.push(activation(
                &token,
                &format!("N{i}X{k}"),
                &format!("NEW-{i}-{k}"),
                &format!("u{i}"),
            ));
        }
    }
    app.map(&csv).await;
    let results = spread(&app, &bases, bodies).await;
    assert!(
        results.iter().all(|(s, _)| *s == StatusCode::CREATED),
        "{results:?}"
    );
    for (i, old) in old_ids.iter().enumerate() {
        let claims = results[2 * i..2 * i + 2]
            .iter()
            .filter(|(_, b)| b["replaced_device_id"] == old.as_str())
            .count();
        assert_eq!(claims, 1, "user u{i}: {:?}", &results[2 * i..2 * i + 2]);
    }
}

#[tokio::test]
async fn both_backends_have_the_same_tables_and_columns() {
    if !on_postgres() {
        eprintln!("compares the PostgreSQL schema with SQLite's: runs when TEST_PG_URL is set");
        return;
    }
    let pg = spawn_app_with(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = imd::store::Store::open(&imd::store::StoreOptions {
        url: format!("sqlite://{}/schema.db", dir.path().display()),
        max_connections: 1,
        busy_timeout: std::time::Duration::from_secs(1),
        acquire_timeout: std::time::Duration::from_secs(1),
        replica_id: "schema-test".into(),
        migrate: true,
    })
    .await
    .unwrap();
    let (a, b) = (
        sqlite.schema().await.unwrap(),
        pg.store.schema().await.unwrap(),
    );
    assert!(a.len() >= 10, "{a:?}");
    assert_eq!(a, b);
}

#[tokio::test]
async fn replicas_starting_together_create_one_first_signing_key() {
    // Three servers start at once on a database nobody has used: on SQLite (three processes on
    // one file) as on PostgreSQL, exactly one of them creates the first signing key.
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::prepare_database(dir.path()).await;
    let settings = crate::helpers::settings_for(dir.path(), &[]);
    let url = settings.database_url();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_imd"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--public-url",
                PUBLIC_URL,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--database-url")
            .arg(&url)
            .env("IMD_LOG", "warn")
            .env_remove("IMD_MASTER_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // No master key file yet either: the three race to create it and must end up sharing one.
    let mut children: Vec<Replica> = (0..3)
        .map(|_| Replica {
            child: spawn(),
            base: String::new(),
        })
        .collect();
    for r in &mut children {
        let mut line = String::new();
        std::io::BufReader::new(r.child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("imd listening on"), "{line:?}");
    }
    let store = imd::store::Store::open(&imd::startup::store_options(&settings, "check"))
        .await
        .unwrap();
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].retired_at.is_none());
    // Every one of them can open the key with the master key on disk.
    let master = imd::crypto::MasterKey::load_or_create(&settings.master_key_path()).unwrap();
    master.open(&keys[0].kid, &keys[0].private_key_enc).unwrap();
}
