//! Connectors: creation with a registration key, registration (single use, expiry, re-issue,
//! concurrent use), retirement, live status from session rows, and the shared failure counters.

use imd::clock::Clock;
use imd::connector::proto::{CREDENTIAL_PREFIX, REGISTER_PATH};
use imd::crypto::sha256_hex;
use imd::store::ConnectorSessionRow;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app};

async fn create(app: &TestApp, name: &str) -> Value {
    let r = app
        .admin_post("/api/v1/admin/connectors", &json!({ "name": name }))
        .await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

async fn register(app: &TestApp, key: &str) -> reqwest::Response {
    app.client
        .post(app.url(REGISTER_PATH))
        .json(&json!({"registration_key": key, "version": "1.2.3", "hostname": "dc-host"}))
        .send()
        .await
        .unwrap()
}

async fn register_ok(app: &TestApp, key: &str) -> Value {
    let r = register(app, key).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

async fn assert_key_refused(app: &TestApp, key: &str) {
    let (s, c, body) = error_code(register(app, key).await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::UNAUTHORIZED, "registration_key_invalid"),
        "{body}"
    );
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("used, expired or unknown"), "{msg}");
    assert!(msg.contains("/registration-key"), "{msg}");
}

fn session(
    c: &Value,
    org_id: &str,
    credential: &str,
    session_id: &str,
    now: i64,
) -> ConnectorSessionRow {
    ConnectorSessionRow {
        connector_id: c["connector_id"].as_str().unwrap().to_string(),
        org_id: org_id.to_string(),
        session_id: session_id.to_string(),
        replica_id: "replica-a".into(),
        forward_url: "http://10.0.0.1:9000".into(),
        credential_hash: sha256_hex(credential),
        connected_at: now,
        last_seen_at: now,
        in_flight: 3,
        remote_addr: Some("192.0.2.10".into()),
        version: Some("1.2.4".into()),
        directory_kind: Some("ad".into()),
    }
}

#[tokio::test]
async fn a_connector_registers_once_and_its_secrets_are_stored_as_hashes_only() {
    let app = spawn_app().await;
    let created = create(&app, "dc-berlin").await;
    let key = created["registration_key"].as_str().unwrap();
    assert!(key.starts_with("imdr_") && key.len() > 40, "{key}");
    assert!(created["registration_key_expires_at"].is_string());
    let id = created["id"].as_str().unwrap();

    // Listed, not yet registered.
    let items = app.list("/api/v1/admin/connectors").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], "dc-berlin");
    assert_eq!(items[0]["status"], "disconnected");
    assert_eq!(items[0]["registered"], false);
    assert_eq!(items[0]["in_flight"], 0);

    let reg = register_ok(&app, key).await;
    let credential = reg["credential"].as_str().unwrap();
    assert!(credential.starts_with(CREDENTIAL_PREFIX), "{credential}");
    assert_eq!(reg["connector_id"], id);
    assert_eq!(reg["org_id"], app.org_id.as_str());
    assert_eq!(reg["name"], "dc-berlin");

    // The credential works by its hash; neither secret is anywhere in the row.
    let row = app
        .store
        .connector_by_credential(&sha256_hex(credential))
        .await
        .unwrap()
        .expect("the credential's hash finds the connector");
    assert_eq!(row.id, id);
    assert_eq!(row.version.as_deref(), Some("1.2.3"));
    assert_eq!(row.hostname.as_deref(), Some("dc-host"));
    assert!(row.registered_at.is_some());
    assert_eq!(row.registration_key_expires_at, None, "the key is used up");
    assert!(
        app.store
            .connector_by_credential(credential)
            .await
            .unwrap()
            .is_none(),
        "the plaintext is not what is stored"
    );
    let dump = format!("{row:?}");
    assert!(!dump.contains(credential) && !dump.contains(key));
    let via_api = app
        .admin_get(&format!("/api/v1/admin/connectors/{id}"))
        .await;
    assert_eq!(via_api.status(), StatusCode::OK);
    let text = via_api.text().await.unwrap();
    assert!(!text.contains(credential) && !text.contains(key), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["registered"], true);
    assert_eq!(v["status"], "disconnected");

    // Single use.
    assert_key_refused(&app, key).await;
    assert_key_refused(&app, "imdr_never-issued").await;

    // Duplicate names are a conflict; bad names are refused.
    let r = app
        .admin_post("/api/v1/admin/connectors", &json!({"name": "dc-berlin"}))
        .await;
    let (s, c, _) = error_code(r).await;
    assert_eq!((s, c.as_str()), (StatusCode::CONFLICT, "conflict"));
    for bad in [
        json!({"name": ""}),
        json!({"name": "x".repeat(65)}),
        json!({"name": "a\u{7}b"}),
    ] {
        let (s, c, _) = error_code(app.admin_post("/api/v1/admin/connectors", &bad).await).await;
        assert_eq!(
            (s, c.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn an_expired_key_is_refused_and_a_reissued_key_replaces_the_credential() {
    let app = spawn_app().await;
    let created = create(&app, "dc-1").await;
    let id = created["id"].as_str().unwrap();
    let first = created["registration_key"].as_str().unwrap().to_string();

    app.clock.advance(24 * 3600 + 1);
    assert_key_refused(&app, &first).await;

    // A new key: the old unused one stays dead, the new one registers.
    let path = format!("/api/v1/admin/connectors/{id}/registration-key");
    let r = app.admin_post(&path, &json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let second: Value = r.json().await.unwrap();
    let second = second["registration_key"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let cred1 = register_ok(&app, &second).await["credential"]
        .as_str()
        .unwrap()
        .to_string();

    // Re-registration with a reissued key retires the old credential.
    let third: Value = app
        .admin_post(&path, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let third = third["registration_key"].as_str().unwrap().to_string();
    // Still registered with cred1 until the new key is used.
    assert!(
        app.store
            .connector_by_credential(&sha256_hex(&cred1))
            .await
            .unwrap()
            .is_some()
    );
    let cred2 = register_ok(&app, &third).await["credential"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        app.store
            .connector_by_credential(&sha256_hex(&cred1))
            .await
            .unwrap()
            .is_none(),
        "the old credential is retired"
    );
    assert_eq!(
        app.store
            .connector_by_credential(&sha256_hex(&cred2))
            .await
            .unwrap()
            .unwrap()
            .id,
        id
    );
    let r = app
        .admin_post(
            "/api/v1/admin/connectors/no-such-id/registration-key",
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn two_concurrent_registrations_with_one_key_have_exactly_one_winner() {
    let app = spawn_app().await;
    for round in 0..4 {
        let created = create(&app, &format!("dc-race-{round}")).await;
        let key = created["registration_key"].as_str().unwrap().to_string();
        let attempts = (0..8).map(|_| {
            let (client, url, key) = (app.client.clone(), app.url(REGISTER_PATH), key.clone());
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"registration_key": key, "version": "1", "hostname": null}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        });
        let mut ok = 0;
        for a in attempts.collect::<Vec<_>>() {
            match a.await.unwrap() {
                StatusCode::OK => ok += 1,
                StatusCode::UNAUTHORIZED => {}
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(ok, 1, "round {round}");
        // The losers counted as failed attempts from this address; start the next round fresh.
        app.store
            .clear_auth_failures("register:ip:127.0.0.1")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_retired_connector_vanishes_and_its_credential_stops_working() {
    let app = spawn_app().await;
    let created = create(&app, "dc-old").await;
    let id = created["id"].as_str().unwrap();
    let reg = register_ok(&app, created["registration_key"].as_str().unwrap()).await;
    let cred = reg["credential"].as_str().unwrap();
    let now = app.clock.now();
    app.store
        .upsert_connector_session(&session(&reg, &app.org_id, cred, "s1", now))
        .await
        .unwrap();

    let r = app
        .delete_as(&format!("/api/v1/admin/connectors/{id}"), &app.admin_key)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(app.list("/api/v1/admin/connectors").await.is_empty());
    let r = app
        .admin_get(&format!("/api/v1/admin/connectors/{id}"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        app.store
            .connector_by_credential(&sha256_hex(cred))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !app.store
            .touch_connector_session(id, "s1", now, 0)
            .await
            .unwrap()
    );
    assert!(
        app.store
            .connector_sessions(&app.org_id, 0)
            .await
            .unwrap()
            .is_empty()
    );
    let r = app
        .delete_as(&format!("/api/v1/admin/connectors/{id}"), &app.admin_key)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The name is free again.
    create(&app, "dc-old").await;
}

#[tokio::test]
async fn sessions_make_a_connector_connected_until_the_heartbeat_window_passes() {
    let app = spawn_app().await;
    let created = create(&app, "dc-live").await;
    let id = created["id"].as_str().unwrap().to_string();
    let reg = register_ok(&app, created["registration_key"].as_str().unwrap()).await;
    let cred = reg["credential"].as_str().unwrap();
    let now = app.clock.now();
    app.store
        .upsert_connector_session(&session(&reg, &app.org_id, cred, "s1", now))
        .await
        .unwrap();

    let items = app.list("/api/v1/admin/connectors").await;
    assert_eq!(items[0]["status"], "connected", "{}", items[0]);
    assert_eq!(items[0]["in_flight"], 3);
    assert_eq!(items[0]["version"], "1.2.4");
    assert_eq!(items[0]["remote_addr"], "192.0.2.10");
    assert_eq!(items[0]["directory_kind"], "ad");
    let row = app
        .store
        .connector(&app.org_id, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.directory_kind.as_deref(),
        Some("ad"),
        "copied onto the connector"
    );
    assert_eq!(row.last_seen_at, Some(now));

    // A newer connection replaces the old session: the old one's heartbeat fails.
    app.store
        .upsert_connector_session(&session(&reg, &app.org_id, cred, "s2", now))
        .await
        .unwrap();
    assert!(
        !app.store
            .touch_connector_session(&id, "s1", now, 1)
            .await
            .unwrap()
    );
    assert!(
        app.store
            .touch_connector_session(&id, "s2", now + 5, 7)
            .await
            .unwrap()
    );
    // Removing the replaced session leaves the live one.
    app.store.remove_connector_session(&id, "s1").await.unwrap();
    let live = app
        .store
        .connector_sessions(&app.org_id, now)
        .await
        .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].session_id.as_str(), live[0].in_flight), ("s2", 7));

    // Older than the window (30 s by default): disconnected.
    app.clock.advance(36);
    let items = app.list("/api/v1/admin/connectors").await;
    assert_eq!(items[0]["status"], "disconnected");
    assert_eq!(items[0]["in_flight"], 0);
    assert!(items[0]["last_seen_at"].is_string());

    // Re-registration: the session authenticated with the old credential is dead.
    let key: Value = app
        .admin_post(
            &format!("/api/v1/admin/connectors/{id}/registration-key"),
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    register_ok(&app, key["registration_key"].as_str().unwrap()).await;
    let later = app.clock.now();
    assert!(
        !app.store
            .touch_connector_session(&id, "s2", later, 0)
            .await
            .unwrap()
    );
    assert!(
        app.store
            .connector_sessions(&app.org_id, 0)
            .await
            .unwrap()
            .is_empty()
    );
    app.store.remove_connector_session(&id, "s2").await.unwrap();
    assert!(
        app.store
            .connector_sessions(&app.org_id, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn registration_failures_are_limited_per_address() {
    let app = spawn_app().await;
    for _ in 0..20 {
        assert_key_refused(&app, "imdr_guess").await;
    }
    let (s, c, _) = error_code(register(&app, "imdr_guess").await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    // Also for a valid key while blocked; the window ends.
    let created = create(&app, "dc-late").await;
    let key = created["registration_key"].as_str().unwrap();
    assert_eq!(
        register(&app, key).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.clock.advance(15 * 60 + 1);
    register_ok(&app, key).await;
}

#[tokio::test]
async fn auth_failures_count_within_a_window_and_clear() {
    let app = spawn_app().await;
    let s = &app.store;
    let k = "login:org:alice";
    assert_eq!(s.auth_failures(k, 1000, 60).await.unwrap(), 0);
    assert_eq!(s.record_auth_failure(k, 1000, 60).await.unwrap(), 1);
    assert_eq!(s.record_auth_failure(k, 1030, 60).await.unwrap(), 2);
    assert_eq!(s.record_auth_failure(k, 1059, 60).await.unwrap(), 3);
    assert_eq!(s.auth_failures(k, 1059, 60).await.unwrap(), 3);
    assert_eq!(
        s.auth_failures("ip:org:10.0.0.1", 1059, 60).await.unwrap(),
        0
    );
    // The window started at 1000: at 1060 it has passed.
    assert_eq!(s.auth_failures(k, 1060, 60).await.unwrap(), 0);
    assert_eq!(s.record_auth_failure(k, 1060, 60).await.unwrap(), 1);
    assert_eq!(s.record_auth_failure(k, 1061, 60).await.unwrap(), 2);
    s.clear_auth_failures(k).await.unwrap();
    assert_eq!(s.auth_failures(k, 1061, 60).await.unwrap(), 0);
    assert_eq!(s.record_auth_failure(k, 1062, 60).await.unwrap(), 1);
    // Concurrent failures are all counted.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.record_auth_failure("ip:org:x", 2000, 60).await.unwrap() })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=16).collect::<Vec<i64>>());
    assert_eq!(s.prune_auth_failures(1500).await.unwrap(), 1);
}
