//! Admin API: authentication, organization isolation, pagination, settings, health, TLS.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HEADER, activation, device_map, error_code, spawn_app, spawn_app_with};

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, c, _) = error_code(app.client.get(app.url("/nope")).send().await.unwrap()).await;
    assert_eq!((s, c.as_str()), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn admin_endpoints_need_a_valid_admin_key() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(app.url("/api/v1/admin/tokens"))
        .send()
        .await
        .unwrap();
    let (s, c, _) = error_code(r).await;
    assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let r = app.get_as("/api/v1/admin/tokens", "imd_adm_wrong").await;
    let (s, c, _) = error_code(r).await;
    assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    // A device credential is not an admin key.
    let r = app.get_as("/api/v1/device", &app.admin_key).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn organizations_cannot_see_or_touch_each_other() {
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
    let token = minted["token"].as_str().unwrap();
    let (_, act) = app.activate_ok(&activation(token, "S1", "WS-1", "a")).await;

    let (other_id, other_key) = app.other_org().await;
    assert_ne!(other_id, app.org_id);
    let get = |path: String| {
        let c = app.client.clone();
        let url = app.url(&path);
        let key = other_key.clone();
        async move { c.get(url).bearer_auth(key).send().await.unwrap() }
    };
    for path in [
        "/api/v1/admin/tokens",
        "/api/v1/admin/users",
        "/api/v1/admin/devices",
        "/api/v1/admin/device-mappings",
        "/api/v1/admin/activations",
    ] {
        let v: Value = get(path.to_string()).await.json().await.unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 0, "{path} leaks: {v}");
    }
    for path in [
        format!("/api/v1/admin/tokens/{}", minted["id"].as_str().unwrap()),
        format!(
            "/api/v1/admin/devices/{}",
            act["device_id"].as_str().unwrap()
        ),
        format!("/api/v1/admin/users/{}", act["user_id"].as_str().unwrap()),
    ] {
        assert_eq!(
            get(path.clone()).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let r = app
        .post_as(
            &format!(
                "/api/v1/admin/devices/{}/revoke",
                act["device_id"].as_str().unwrap()
            ),
            &other_key,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .post_as(
            &format!(
                "/api/v1/admin/tokens/{}/revoke",
                minted["id"].as_str().unwrap()
            ),
            &other_key,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The other org's mapping for the same serial is invisible to this org's token.
    let r = app
        .client
        .post(app.url("/api/v1/admin/device-maps"))
        .bearer_auth(&other_key)
        .header("Content-Type", "text/csv")
        .body(format!(
            "{HEADER}z@other.example.com,z,WS-2,serial-number,S2,,\n"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, c, _) = error_code(app.activate(&activation(token, "S2", "WS-2", "z")).await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::FORBIDDEN, "device_not_mapped")
    );
    // And the device still works for its own org.
    let r = app
        .client
        .get(app.url("/api/v1/device"))
        .bearer_auth(act["device_credential"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn lists_are_cursor_paginated() {
    let app = spawn_app().await;
    app.map(&device_map(5)).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/admin/device-mappings?limit=2&cursor={c}"),
            None => "/api/v1/admin/device-mappings?limit=2".to_string(),
        };
        let v: Value = app.admin_get(&path).await.json().await.unwrap();
        for m in v["items"].as_array().unwrap() {
            seen.push(m["deviceIdentifier"].as_str().unwrap().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..5).map(|i| format!("SER{i:06}")).collect::<Vec<_>>()
    );
    let (s, c, _) = error_code(app.admin_get("/api/v1/admin/devices?limit=0").await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (s, c, _) = error_code(app.admin_get("/api/v1/admin/devices?cursor=%%%").await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

#[tokio::test]
async fn org_defaults_apply_to_users_created_just_in_time() {
    let app = spawn_app().await;
    let r = app
        .client
        .patch(app.url("/api/v1/admin/org"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"default_profile": "Laptops", "default_storage_region": "eu-central", "default_quota_bytes": 53687091200_i64}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    let (_, body) = app
        .activate_ok(&activation(&token, "S1", "WS-1", "a"))
        .await;
    assert_eq!(body["profile"], "Laptops");
    assert_eq!(body["storage_region"], "eu-central");
    assert_eq!(body["quota_bytes"], 53687091200_i64);
    let r = app
        .client
        .patch(app.url("/api/v1/admin/org"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"default_quota_bytes": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .client
        .patch(app.url("/api/v1/admin/org"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"bogus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn org_can_require_install_keys() {
    let app = spawn_app().await;
    app.client
        .patch(app.url("/api/v1/admin/org"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"require_install_key": true}))
        .send()
        .await
        .unwrap();
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    let (s, c, _) = error_code(app.activate(&activation(&token, "S1", "WS-1", "a")).await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let mut req = activation(&token, "S1", "WS-1", "a");
    req["device"]["install_key"] = json!("0123456789abcdef0123");
    app.activate_ok(&req).await;
}

#[tokio::test]
async fn serves_https_when_a_certificate_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let app = spawn_app_with(&[
        ("tls.cert_file", cert_path.to_str().unwrap()),
        ("tls.key_file", key_path.to_str().unwrap()),
    ])
    .await;
    let port = app.addr.rsplit(':').next().unwrap().to_string();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Plain HTTP to the TLS port does not get an answer.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
    );
}

#[tokio::test]
async fn wrong_method_on_a_known_path_is_405_json() {
    let app = spawn_app().await;
    let r = app.delete_as("/api/v1/admin/tokens", &app.admin_key).await;
    let (s, c, _) = error_code(r).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let r = app
        .client
        .get(app.url("/api/v1/activations"))
        .send()
        .await
        .unwrap();
    let (s, c, _) = error_code(r).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn admin_keys_can_be_added_listed_and_revoked_but_not_the_last_one() {
    let app = spawn_app().await;
    let r = app
        .admin_post("/api/v1/admin/admin-keys", &json!({"name": "automation"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let second = created["key"].as_str().unwrap().to_string();
    assert!(second.starts_with("imd_adm_"));
    let listed = app
        .admin_get("/api/v1/admin/admin-keys")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !listed.contains(&second) && !listed.contains(&app.admin_key),
        "keys are never listed"
    );
    let items: Value = serde_json::from_str(&listed).unwrap();
    let ids: Vec<String> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);

    // Revoke the first key with the second; the first stops working at once.
    let first_id = ids
        .iter()
        .find(|i| **i != created["id"].as_str().unwrap())
        .unwrap();
    let r = app
        .post_as(
            &format!("/api/v1/admin/admin-keys/{first_id}/revoke"),
            &second,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.get_as("/api/v1/admin/tokens", &app.admin_key).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The last live key cannot be revoked: that would lock the organization out.
    let r = app
        .post_as(
            &format!(
                "/api/v1/admin/admin-keys/{}/revoke",
                created["id"].as_str().unwrap()
            ),
            &second,
        )
        .await;
    let (s, c, _) = error_code(r).await;
    assert_eq!((s, c.as_str()), (StatusCode::CONFLICT, "conflict"));
    let (s, c, _) = error_code(
        app.client
            .post(app.url("/api/v1/admin/admin-keys"))
            .bearer_auth(&second)
            .json(&json!({"name": ""}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_errors_name_it() {
    let app = spawn_app().await;
    // The caller's id is kept, echoed and put in the error body.
    let r = app
        .client
        .get(app.url("/api/v1/admin/no-such-thing"))
        .bearer_auth(&app.admin_key)
        .header("X-Request-Id", "report-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "report-42");
    let (status, _, body) = error_code(r).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["request_id"], "report-42");

    // None (or an unusable one): a fresh id, the same in the header and the body; also for an
    // error raised while reading the body.
    for given in [None, Some("bad id\twith spaces")] {
        let mut req = app
            .client
            .post(app.url("/api/v1/admin/tokens"))
            .bearer_auth(&app.admin_key)
            .header("Content-Type", "application/json")
            .body("{not json");
        if let Some(g) = given {
            req = req.header("X-Request-Id", g);
        }
        let r = req.send().await.unwrap();
        let header = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(uuid::Uuid::parse_str(&header).is_ok(), "{header}");
        let (status, code, body) = error_code(r).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        assert_eq!(body["error"]["request_id"], header.as_str());
    }

    // Successful responses carry one too.
    let r = app.admin_get("/api/v1/admin/org").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().contains_key("x-request-id"));
}
