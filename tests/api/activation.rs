//! Activation over HTTP: the happy path, idempotent repeats, every refusal code, device identity
//! rules, replacement and reassignment.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HEADER, activation, error_code, spawn_app, spawn_app_with};

#[tokio::test]
async fn v4_activation_creates_user_and_device_and_returns_a_working_credential() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}jdoe@corp.example.com,jdoe,WS-0042,serial-number,5CG1234XYZ,,\n"
    ))
    .await;
    let token = app.token().await;
    let (status, body) = app
        .activate_ok(&activation(
            &token,
            "5cg1234xyz ",
            "WS-0042.corp.example.com",
            "jdoe",
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["user_created"], true);
    assert_eq!(body["device_created"], true);
    assert_eq!(body["replaced_device_id"], Value::Null);
    assert_eq!(body["profile"], "default");
    assert_eq!(body["storage_region"], "default");
    let cred = body["device_credential"].as_str().unwrap();
    assert!(cred.starts_with("imd_dev_"));

    let r = app.get_as("/api/v1/device", cred).await;
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["device"]["id"], body["device_id"]);
    assert_eq!(me["device"]["name"], "WS-0042");
    assert_eq!(me["user"]["email"], "jdoe@corp.example.com");
    assert_eq!(me["user"]["id"], body["user_id"]);
    // The credential is stored only as a hash: it appears nowhere in the admin views.
    let devices = app
        .admin_get("/api/v1/admin/devices")
        .await
        .text()
        .await
        .unwrap();
    assert!(!devices.contains(cred));

    // The mapping is consumed, kept for audit.
    let m = app
        .list("/api/v1/admin/device-mappings?status=consumed")
        .await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["device_id"], body["device_id"]);
}

#[tokio::test]
async fn repeat_activation_is_idempotent_and_does_not_consume_a_use() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}jdoe@corp.example.com,jdoe,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app
        .token_with(json!({"version": "v4", "name": "one", "max_uses": 1}))
        .await;
    let req = activation(&token, "S1", "WS-1", "jdoe");
    let (s1, first) = app.activate_ok(&req).await;
    let (s2, second) = app.activate_ok(&req).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(first["device_id"], second["device_id"]);
    assert_eq!(first["device_credential"], second["device_credential"]);
    assert_eq!(second["device_created"], false);
    assert_eq!(second["user_created"], false);
    let tokens = app.list("/api/v1/admin/tokens").await;
    assert_eq!(tokens[0]["uses"], 1);
    assert!(tokens[0]["last_used_at"].is_string());
    assert_eq!(app.list("/api/v1/admin/devices").await.len(), 1);
}

#[tokio::test]
async fn unmapped_device_and_wrong_user_are_refused() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}jdoe@corp.example.com,jdoe,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    let (status, code, _) = error_code(
        app.activate(&activation(&token, "NOPE", "WS-9", "jdoe"))
            .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "device_not_mapped")
    );
    let (status, code, _) = error_code(
        app.activate(&activation(&token, "S1", "WS-1", "mallory"))
            .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "user_not_mapped")
    );
    // The refused attempt consumed nothing: the right user still activates.
    app.activate_ok(&activation(&token, "S1", "WS-1", "jdoe"))
        .await;
}

#[tokio::test]
async fn token_errors_have_distinct_codes() {
    let app = spawn_app().await;
    app.map(&format!("{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\nb@corp.example.com,b,WS-2,serial-number,S2,,\n")).await;

    let (s, c, _) = error_code(
        app.activate(&activation("not.a.jwt", "S1", "WS-1", "a"))
            .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "token_invalid"));

    let good = app.token().await;
    let mut tampered = good.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let (s, c, _) = error_code(
        app.activate(&activation(
            &String::from_utf8(tampered).unwrap(),
            "S1",
            "WS-1",
            "a",
        ))
        .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "token_invalid"));

    let expiring = app
        .token_with(json!({"version": "v4", "name": "short", "expires_at": imd::clock::rfc3339(app.clock_now() + 3600)}))
        .await;
    app.clock.advance(2 * 3600);
    let (s, c, _) = error_code(
        app.activate(&activation(&expiring, "S1", "WS-1", "a"))
            .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "token_expired"));

    let revoked = app
        .mint(&json!({"version": "v4", "name": "r"}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let r = app
        .admin_post(
            &format!(
                "/api/v1/admin/tokens/{}/revoke",
                revoked["id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (s, c, _) = error_code(
        app.activate(&activation(
            revoked["token"].as_str().unwrap(),
            "S1",
            "WS-1",
            "a",
        ))
        .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "token_revoked"));

    let once = app
        .token_with(json!({"version": "v4", "name": "once", "max_uses": 1}))
        .await;
    app.activate_ok(&activation(&once, "S1", "WS-1", "a")).await;
    let (s, c, _) = error_code(app.activate(&activation(&once, "S2", "WS-2", "b")).await).await;
    assert_eq!((s, c.as_str()), (StatusCode::FORBIDDEN, "token_exhausted"));
}

impl crate::helpers::TestApp {
    pub fn clock_now(&self) -> i64 {
        use imd::clock::Clock;
        self.clock.now()
    }
}

#[tokio::test]
async fn revoking_a_token_keeps_devices_activated_and_revoking_a_device_cuts_its_credential() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let minted = app
        .mint(&json!({"version": "v4", "name": "t"}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let (_, body) = app
        .activate_ok(&activation(
            minted["token"].as_str().unwrap(),
            "S1",
            "WS-1",
            "a",
        ))
        .await;
    let cred = body["device_credential"].as_str().unwrap();
    app.admin_post(
        &format!(
            "/api/v1/admin/tokens/{}/revoke",
            minted["id"].as_str().unwrap()
        ),
        &json!({}),
    )
    .await;
    let r = app.get_as("/api/v1/device", cred).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "token revocation must not deactivate devices"
    );

    let r = app
        .admin_post(
            &format!(
                "/api/v1/admin/devices/{}/revoke",
                body["device_id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "revoked");
    let (s, c, _) = error_code(app.get_as("/api/v1/device", cred).await).await;
    assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
}

#[tokio::test]
async fn install_key_protects_an_activated_device_from_takeover() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    let mut req = activation(&token, "S1", "WS-1", "a");
    req["device"]["install_key"] = json!("k-0123456789abcdef-original");
    let (_, first) = app.activate_ok(&req).await;

    // Same token, same serial, same user, but no key or another key: no credential handover.
    let mut thief = activation(&token, "S1", "WS-1", "a");
    let (s, c, _) = error_code(app.activate(&thief).await).await;
    assert_eq!((s, c.as_str()), (StatusCode::CONFLICT, "device_conflict"));
    thief["device"]["install_key"] = json!("k-0123456789abcdef-attacker");
    let (s, c, body) = error_code(app.activate(&thief).await).await;
    assert_eq!((s, c.as_str()), (StatusCode::CONFLICT, "device_conflict"));
    assert!(!body.to_string().contains("imd_dev_"));

    let (s, again) = app.activate_ok(&req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["device_credential"], first["device_credential"]);
}

#[tokio::test]
async fn device_of_another_user_is_a_conflict_without_a_mapping() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    app.activate_ok(&activation(&token, "S1", "WS-1", "a"))
        .await;
    let (s, c, _) = error_code(app.activate(&activation(&token, "S1", "WS-1", "bob")).await).await;
    assert_eq!((s, c.as_str()), (StatusCode::CONFLICT, "device_conflict"));
}

#[tokio::test]
async fn a_mapping_reassigns_a_device_and_cuts_off_the_old_credential() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    let (_, first) = app
        .activate_ok(&activation(&token, "S1", "WS-1", "a"))
        .await;
    app.map(&format!(
        "{HEADER}b@corp.example.com,b,WS-1-B,serial-number,S1,,\n"
    ))
    .await;
    let (s, second) = app
        .activate_ok(&activation(&token, "S1", "WS-1", "b"))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(second["device_id"], first["device_id"]);
    assert_ne!(second["user_id"], first["user_id"]);
    assert_ne!(second["device_credential"], first["device_credential"]);
    let r = app
        .client
        .get(app.url("/api/v1/device"))
        .bearer_auth(first["device_credential"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .client
        .get(app.url("/api/v1/device"))
        .bearer_auth(second["device_credential"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["user"]["email"], "b@corp.example.com");
    assert_eq!(me["device"]["name"], "WS-1-B");
}

#[tokio::test]
async fn old_device_name_replaces_the_old_device_with_restore_data() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,OLD-LAPTOP,serial-number,OLD1,,\n"
    ))
    .await;
    let token = app.token().await;
    let (_, old) = app
        .activate_ok(&activation(&token, "OLD1", "OLD-LAPTOP", "a"))
        .await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,NEW-LAPTOP,serial-number,NEW1,old-laptop,DATA\n"
    ))
    .await;
    let (s, new) = app
        .activate_ok(&activation(&token, "NEW1", "NEW-LAPTOP", "a"))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(new["replaced_device_id"], old["device_id"]);
    assert_eq!(new["restore_data"], "DATA");
    assert_eq!(new["user_id"], old["user_id"]);
    assert_eq!(new["user_created"], false);
    let d = app
        .admin_get(&format!(
            "/api/v1/admin/devices/{}",
            old["device_id"].as_str().unwrap()
        ))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(d["status"], "replaced");
    assert_eq!(d["replaced_by"], new["device_id"]);
    // A repeat of the new device reports the same replacement.
    let (_, again) = app
        .activate_ok(&activation(&token, "NEW1", "NEW-LAPTOP", "a"))
        .await;
    assert_eq!(again["replaced_device_id"], old["device_id"]);
}

#[tokio::test]
async fn same_hostname_for_the_same_user_replaces_the_previous_device() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-7,serial-number,OLD7,,\na@corp.example.com,a,WS-7,serial-number,NEW7,,\n"
    ))
    .await;
    let token = app.token().await;
    let (_, old) = app
        .activate_ok(&activation(&token, "OLD7", "ws-7", "a"))
        .await;
    let (_, new) = app
        .activate_ok(&activation(&token, "NEW7", "WS-7.corp.example.com", "a"))
        .await;
    assert_eq!(new["replaced_device_id"], old["device_id"]);
    assert_eq!(new["restore_data"], Value::Null);
}

#[tokio::test]
async fn cloned_uuid_with_different_serials_is_two_devices() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,VM-1,serial-number,VMS1,,\nb@corp.example.com,b,VM-2,serial-number,VMS2,,\n"
    ))
    .await;
    let token = app.token().await;
    let uuid = "4C4C4544-0042-3510-8052-B4C04F4A3332";
    let mut one = activation(&token, "VMS1", "VM-1", "a");
    one["device"]["uuid"] = json!(uuid);
    let mut two = activation(&token, "VMS2", "VM-2", "b");
    two["device"]["uuid"] = json!(uuid.to_lowercase());
    let (_, d1) = app.activate_ok(&one).await;
    let (s, d2) = app.activate_ok(&two).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_ne!(d1["device_id"], d2["device_id"]);
}

#[tokio::test]
async fn placeholder_serial_falls_back_to_uuid_matching() {
    let app = spawn_app().await;
    let uuid = "03B9A6F2-1D4E-4C8A-9B1F-2A6C7D8E9F01";
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,DESK-1,uuid,{uuid},,\n"
    ))
    .await;
    let token = app.token().await;
    let mut req = activation(&token, "To Be Filled By O.E.M.", "DESK-1", "a");
    req["device"]["uuid"] = json!(uuid);
    let (s, first) = app.activate_ok(&req).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, again) = app.activate_ok(&req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(first["device_id"], again["device_id"]);
    let d = app
        .admin_get(&format!(
            "/api/v1/admin/devices/{}",
            first["device_id"].as_str().unwrap()
        ))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(d["uuid"], uuid);
}

#[tokio::test]
async fn malformed_requests_are_invalid_request() {
    let app = spawn_app().await;
    let token = app.token().await;
    let cases = vec![
        json!({}),
        json!({"token": token}),
        json!({"token": token, "device": {"hostname": "WS-1"}}),
        json!({"token": token, "device": {}, "user": {"login": "a"}}),
        json!({"token": token, "device": {"uuid": "not-a-uuid"}, "user": {"login": "a"}}),
        json!({"token": token, "device": {"serial": "S1"}, "user": {"domain": "CORP"}}),
        json!({"token": token, "device": {"serial": "S1", "install_key": "short"}, "user": {"login": "a"}}),
        json!({"token": token, "device": {"serial": "x".repeat(300)}, "user": {"login": "a"}}),
        json!([1, 2, 3]),
    ];
    for body in cases {
        let (s, c, _) = error_code(app.activate(&body).await).await;
        assert_eq!(
            (s, c.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{body}"
        );
    }
    let r = app
        .client
        .post(app.url("/api/v1/activations"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (s, c, _) = error_code(r).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

#[tokio::test]
async fn oversized_activation_body_is_payload_too_large() {
    let app = spawn_app().await;
    let body = json!({"token": "x", "pad": "y".repeat(20_000)});
    let (s, c, _) = error_code(app.activate(&body).await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_rate_limited() {
    let app = spawn_app_with(&[("limits.activation_failures_per_minute", "3")]).await;
    for _ in 0..3 {
        let (s, _, _) = error_code(app.activate(&activation("bad", "S1", "WS-1", "a")).await).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let r = app.activate(&activation("bad", "S1", "WS-1", "a")).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    let (s, c, body) = error_code(r).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(body["error"]["retryable"], true);
}

#[tokio::test]
async fn a_locked_database_is_503_with_retry_after_and_nothing_is_lost() {
    let app = spawn_app_with(&[
        ("database.busy_timeout_ms", "200"),
        ("database.acquire_timeout_ms", "500"),
    ])
    .await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    // Another process holds the write lock (a long admin job, a backup tool).
    let locker = app.lock_writes().await;
    let r = app.activate(&activation(&token, "S1", "WS-1", "a")).await;
    assert!(r.headers().contains_key("retry-after"));
    let (s, c, body) = error_code(r).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert_eq!(body["error"]["retryable"], true);
    assert!(
        !body.to_string().contains("SQLITE"),
        "no internal text in 5xx bodies: {body}"
    );
    locker.release().await;
    let (s, _) = app
        .activate_ok(&activation(&token, "S1", "WS-1", "a"))
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "the failed attempt consumed nothing"
    );
}

#[tokio::test]
async fn failed_and_successful_attempts_are_in_the_audit_trail() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    app.activate_ok(&activation(&token, "S1", "WS-1", "a"))
        .await;
    let _ = app.activate(&activation(&token, "S9", "WS-9", "a")).await;
    // Failures are written in batches off the request path: poll briefly.
    let mut outcomes = Vec::new();
    for _ in 0..50 {
        outcomes = app
            .list("/api/v1/admin/activations")
            .await
            .iter()
            .map(|a| a["outcome"].as_str().unwrap().to_string())
            .collect();
        if outcomes.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(outcomes, vec!["activated", "device_not_mapped"]);
    let failed = app
        .list("/api/v1/admin/activations?outcome=device_not_mapped")
        .await;
    assert_eq!(failed[0]["serial"], "S9");
    assert_eq!(failed[0]["status"], 403);
}

#[tokio::test]
async fn reassignment_with_old_device_name_replaces_the_new_users_old_device() {
    let app = spawn_app().await;
    app.map(&format!("{HEADER}a@corp.example.com,a,A-LAPTOP,serial-number,SA,,\nb@corp.example.com,b,B-OLD,serial-number,SB,,\n")).await;
    let token = app.token().await;
    let (_, a) = app
        .activate_ok(&activation(&token, "SA", "A-LAPTOP", "a"))
        .await;
    let (_, b_old) = app
        .activate_ok(&activation(&token, "SB", "B-OLD", "b"))
        .await;
    // A's laptop goes to B and takes over B's old device's data.
    app.map(&format!(
        "{HEADER}b@corp.example.com,b,B-NEW,serial-number,SA,b-old,ALL\n"
    ))
    .await;
    let (s, moved) = app
        .activate_ok(&activation(&token, "SA", "A-LAPTOP", "b"))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(moved["device_id"], a["device_id"]);
    assert_eq!(moved["user_id"], b_old["user_id"]);
    assert_eq!(moved["replaced_device_id"], b_old["device_id"]);
    assert_eq!(moved["restore_data"], "ALL");
    let old = app
        .admin_get(&format!(
            "/api/v1/admin/devices/{}",
            b_old["device_id"].as_str().unwrap()
        ))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(old["status"], "replaced");
}

#[tokio::test]
async fn restore_data_is_only_reported_when_a_device_was_replaced() {
    let app = spawn_app().await;
    // A brand-new user cannot have an old device, whatever the mapping says.
    app.map(&format!(
        "{HEADER}n@corp.example.com,n,N-1,serial-number,SN,GONE,ALL\n"
    ))
    .await;
    let token = app.token().await;
    let (_, body) = app.activate_ok(&activation(&token, "SN", "N-1", "n")).await;
    assert_eq!(body["replaced_device_id"], Value::Null);
    assert_eq!(body["restore_data"], Value::Null);
}

#[tokio::test]
async fn placeholders_are_not_stored_and_repeats_fill_in_identifiers() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,KIOSK-1,hostname,kiosk-1,,\n"
    ))
    .await;
    let token = app.token().await;
    let (_, first) = app
        .activate_ok(&activation(&token, "N/A", "KIOSK-1", "a"))
        .await;
    let url = format!(
        "/api/v1/admin/devices/{}",
        first["device_id"].as_str().unwrap()
    );
    let d = app.admin_get(&url).await.json::<Value>().await.unwrap();
    assert_eq!(
        d["serial"],
        Value::Null,
        "a placeholder serial is not a serial"
    );
    assert_eq!(d["hostname"], "KIOSK-1");
    // Same machine after an agent update that can read the hardware identifiers: the hostname-only
    // device is recognised and learns them.
    let mut again = activation(&token, "KS-778899", "kiosk-1", "a");
    again["device"]["uuid"] = json!("6F1B0C3A-2D4E-4F5A-8B6C-7D8E9F0A1B2C");
    let (s, second) = app.activate_ok(&again).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(second["device_id"], first["device_id"]);
    let d = app.admin_get(&url).await.json::<Value>().await.unwrap();
    assert_eq!(d["serial"], "KS-778899");
    assert_eq!(d["uuid"], "6F1B0C3A-2D4E-4F5A-8B6C-7D8E9F0A1B2C");
    // From now on the serial identifies it, whatever the hostname.
    let (s, third) = app
        .activate_ok(&activation(&token, "KS-778899", "RENAMED-9", "a"))
        .await;
    assert_eq!(
        (s, &third["device_id"]),
        (StatusCode::OK, &first["device_id"])
    );
}

#[tokio::test]
async fn another_users_machine_sharing_a_hostname_does_not_take_over_a_hostname_only_device() {
    let app = spawn_app().await;
    app.map(&format!("{HEADER}a@corp.example.com,a,SHARED,hostname,shared,,\nb@corp.example.com,b,SHARED-B,serial-number,SB1,,\n")).await;
    let token = app.token().await;
    let mut first = activation(&token, "", "SHARED", "a");
    first["device"]["serial"] = Value::Null;
    let (_, a) = app.activate_ok(&first).await;
    let (s, b) = app
        .activate_ok(&activation(&token, "SB1", "shared", "b"))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_ne!(a["device_id"], b["device_id"]);
    let d = app
        .admin_get(&format!(
            "/api/v1/admin/devices/{}",
            a["device_id"].as_str().unwrap()
        ))
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(d["status"], "active");
    assert_eq!(d["user_id"], a["user_id"]);
}

/// POSTs `body` to the activation endpoint with the given `Content-Type`.
async fn activate_with_content_type(
    app: &crate::helpers::TestApp,
    content_type: &str,
    body: &Value,
) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/activations"))
        .header("Content-Type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn activation_content_type_is_case_insensitive() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n\
         b@corp.example.com,b,WS-2,serial-number,S2,,\n"
    ))
    .await;
    let token = app.token().await;
    let r = activate_with_content_type(
        &app,
        "Application/JSON",
        &activation(&token, "S1", "WS-1", "a"),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = activate_with_content_type(
        &app,
        "application/json; charset=UTF-8",
        &activation(&token, "S2", "WS-2", "b"),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    // A repeat, in yet another spelling.
    let r = activate_with_content_type(
        &app,
        "APPLICATION/Json;Charset=utf-8",
        &activation(&token, "S1", "WS-1", "a"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Other types are still refused, whatever their case.
    for ct in [
        "Text/Plain",
        "application/jsonp",
        "application/x-www-form-urlencoded",
    ] {
        let r = activate_with_content_type(&app, ct, &activation(&token, "S1", "WS-1", "a")).await;
        let (s, c, _) = error_code(r).await;
        assert_eq!(
            (s, c.as_str()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            "{ct}"
        );
    }
}

#[tokio::test]
async fn non_ascii_email_matches_its_mapping_in_any_case() {
    let app = spawn_app().await;
    // The user name differs from the login, so only the email can match.
    app.map(&format!(
        "{HEADER}Özil@corp.example.com,mesut,WS-OZ,serial-number,OZ1,,\n\
         özil@corp.example.com,mesut,WS-OZ2,serial-number,OZ2,,\n"
    ))
    .await;
    let token = app.token().await;
    let mut req = activation(&token, "OZ1", "WS-OZ", "m10");
    req["user"]["upn"] = json!("ÖZIL@corp.example.com");
    let r = app.activate(&req).await;
    let status = r.status();
    let first: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["user_created"], true);

    // The email field counts the same, and the second mapping (lowercase) is the same user.
    let mut req = activation(&token, "OZ2", "WS-OZ2", "m10");
    req["user"]["email"] = json!("ÖZIL@CORP.EXAMPLE.COM");
    let (status, second) = app.activate_ok(&req).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(second["user_created"], false);
    assert_eq!(second["user_id"], first["user_id"]);

    let users = app.list("/api/v1/admin/users").await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["email"], "Özil@corp.example.com");
    let found = app
        .list("/api/v1/admin/users?email=%C3%96ZIL%40corp.example.com")
        .await;
    assert_eq!(found.len(), 1);
    let consumed = app
        .list("/api/v1/admin/device-mappings?status=consumed&emailID=%C3%96ZIL%40CORP.EXAMPLE.COM")
        .await;
    assert_eq!(consumed.len(), 2);

    // Someone else still does not get the device.
    app.map(&format!(
        "{HEADER}Özil@corp.example.com,mesut,WS-OZ3,serial-number,OZ3,,\n"
    ))
    .await;
    let mut req = activation(&token, "OZ3", "WS-OZ3", "m10");
    req["user"]["upn"] = json!("OZIL@corp.example.com");
    let (s, c, _) = error_code(app.activate(&req).await).await;
    assert_eq!((s, c.as_str()), (StatusCode::FORBIDDEN, "user_not_mapped"));
}
