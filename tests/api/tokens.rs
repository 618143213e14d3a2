//! Token minting, listing, key rotation and restarts.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HEADER, activation, error_code, spawn_app, spawn_app_in};

#[tokio::test]
async fn minting_returns_the_token_once_and_lists_never_show_it() {
    let app = spawn_app().await;
    let r = app.mint(&json!({"version": "v4", "name": "Berlin laptops", "expires_at": null, "max_uses": 500})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let t: Value = r.json().await.unwrap();
    for k in [
        "id",
        "token",
        "version",
        "name",
        "expires_at",
        "max_uses",
        "uses",
    ] {
        assert!(t.get(k).is_some(), "missing {k} in {t}");
    }
    assert_eq!(t["uses"], 0);
    assert_eq!(t["max_uses"], 500);
    let token = t["token"].as_str().unwrap();
    let claims = imd_tokens::decode_unverified(token).unwrap();
    assert_eq!(claims.claims.sub, app.org_id);
    assert_eq!(claims.claims.jti, t["id"].as_str().unwrap());
    assert_eq!(claims.claims.iss, app.addr);
    assert_eq!(claims.claims.aud, "imd:activation");
    assert_eq!(claims.alg, "EdDSA");

    let second = app.token().await;
    let listed = app
        .admin_get("/api/v1/admin/tokens")
        .await
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(token) && !listed.contains(&second));
    let v: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        2,
        "a new token never replaces an old one"
    );
    assert!(v["items"][0].get("revoked_at").is_some());
    assert!(v["items"][0].get("last_used_at").is_some());
}

#[tokio::test]
async fn bad_mint_requests_are_refused_with_reasons() {
    let app = spawn_app().await;
    let cases = [
        json!({"version": "v9", "name": "x"}),
        json!({"version": "v4", "name": ""}),
        json!({"version": "v4", "name": "x", "expires_at": "yesterday"}),
        json!({"version": "v4", "name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"version": "v4", "name": "x", "max_uses": 0}),
        json!({"version": "v4", "name": "x", "colour": "blue"}),
        json!({"name": "x"}),
    ];
    for body in cases {
        let (s, c, _) = error_code(app.mint(&body).await).await;
        assert_eq!(
            (s, c.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid_and_keys_survive_restarts() {
    let app = spawn_app().await;
    app.map(&format!("{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\nb@corp.example.com,b,WS-2,serial-number,S2,,\nc@corp.example.com,c,WS-3,serial-number,S3,,\n")).await;
    let old = app.token().await;
    // `imd keys rotate` runs as another process against the same database.
    let master = imd::crypto::MasterKey::load_or_create(&app.settings.master_key_path()).unwrap();
    let new_kid = imd::tokens::rotate(&app.store, &master, app.clock_now())
        .await
        .unwrap();
    let new = app.token().await;
    assert_eq!(
        imd_tokens::decode_unverified(&new).unwrap().kid.as_deref(),
        Some(new_kid.as_str())
    );
    assert_ne!(
        imd_tokens::decode_unverified(&old).unwrap().kid,
        imd_tokens::decode_unverified(&new).unwrap().kid
    );
    app.activate_ok(&activation(&old, "S1", "WS-1", "a")).await;
    app.activate_ok(&activation(&new, "S2", "WS-2", "b")).await;
    let jwks: Value = app
        .client
        .get(app.url("/api/v1/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert!(
        !jwks.to_string().contains("\"d\""),
        "no private key material in the JWKS"
    );
}

#[tokio::test]
async fn signing_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let pinned = [("public_url", "https://imd.example.com")];
    let app = spawn_app_in(dir, &pinned).await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    assert_eq!(
        imd_tokens::decode_unverified(&token).unwrap().claims.iss,
        "https://imd.example.com"
    );
    // A second server on the same data directory: what a restart (or another replica) sees.
    let second = imd::startup::Application::build(
        crate::helpers::settings_for(&data, &pinned),
        std::sync::Arc::new(imd::clock::OffsetClock::default()),
    )
    .await
    .unwrap();
    let url = format!("http://{}/api/v1/activations", second.addr());
    tokio::spawn(second.run_until_stopped());
    let r = reqwest::Client::new()
        .post(url)
        .json(&activation(&token, "S1", "WS-1", "a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// The offline commands work against the configured database without a running server.
#[test]
fn org_create_and_key_rotation_commands_work_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bin = env!("CARGO_BIN_EXE_imd");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("IMD_MASTER_KEY")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let org: Value =
        serde_json::from_str(&run(&["org", "create", "--name", "Acme", "--json"])).unwrap();
    assert!(org["id"].is_string());
    assert!(org["admin_key"].as_str().unwrap().starts_with("imd_adm_"));
    let human = run(&["org", "create", "--name", "Beta"]);
    assert!(
        human.contains("admin key:") && human.contains("imd_adm_"),
        "{human}"
    );
    let first: Value = serde_json::from_str(&run(&["keys", "rotate", "--json"])).unwrap();
    let second: Value = serde_json::from_str(&run(&["keys", "rotate", "--json"])).unwrap();
    assert_ne!(first["kid"], second["kid"]);
    let list = run(&["keys", "list"]);
    // The first key (created by the first rotate's ensure step) plus two rotations.
    assert_eq!(list.lines().count(), 3, "{list}");
    assert_eq!(
        list.lines().filter(|l| l.ends_with("signing")).count(),
        1,
        "{list}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("master.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // Unknown configuration is an error, not silently ignored.
    let out = std::process::Command::new(bin)
        .args(["keys", "list", "--data-dir"])
        .arg(&data)
        .env("IMD_LISTN", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listn"));
}

#[tokio::test]
async fn rotation_keeps_the_old_token_working_for_the_grace_period_then_stops_it() {
    let app = spawn_app().await;
    let mut csv = String::from(HEADER);
    for i in 1..=4 {
        csv.push_str(&format!(
            "u{i}@corp.example.com,u{i},WS-{i},serial-number,R{i},,\n"
        ));
    }
    app.map(&csv).await;
    let old = app
        .mint(&json!({"version": "v4", "name": "rollout", "max_uses": 100}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let old_token = old["token"].as_str().unwrap().to_string();
    app.activate_ok(&activation(&old_token, "R1", "WS-1", "u1"))
        .await;

    let r = app
        .admin_post(
            &format!(
                "/api/v1/admin/tokens/{}/rotate",
                old["id"].as_str().unwrap()
            ),
            &json!({"grace_days": 3}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let rotated: Value = r.json().await.unwrap();
    let new_token = rotated["token"].as_str().unwrap().to_string();
    assert_ne!(new_token, old_token);
    assert_eq!(rotated["name"], "rollout");
    assert_eq!(rotated["max_uses"], 100);
    assert_eq!(rotated["rotated_from"], old["id"]);
    assert_eq!(rotated["previous"]["rotated_to"], rotated["id"]);
    assert_eq!(rotated["previous"]["days_to_expiry"], 3);

    // During the grace period both work.
    app.activate_ok(&activation(&old_token, "R2", "WS-2", "u2"))
        .await;
    app.activate_ok(&activation(&new_token, "R3", "WS-3", "u3"))
        .await;
    // Rotating twice is refused: the successor is the one to rotate.
    let (s, c, _) = error_code(
        app.admin_post(
            &format!(
                "/api/v1/admin/tokens/{}/rotate",
                old["id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (StatusCode::CONFLICT, "conflict"));

    // After the grace period the old token stops; the new one goes on.
    app.clock.advance(3 * 86_400 + 1);
    let (s, c, _) = error_code(
        app.activate(&activation(&old_token, "R4", "WS-4", "u4"))
            .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "token_expired"));
    app.activate_ok(&activation(&new_token, "R4", "WS-4", "u4"))
        .await;

    let (s, c, _) = error_code(
        app.admin_post(
            &format!(
                "/api/v1/admin/tokens/{}/rotate",
                rotated["id"].as_str().unwrap()
            ),
            &json!({"grace_days": 999}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (s, c, _) = error_code(
        app.admin_post("/api/v1/admin/tokens/nope/rotate", &json!({}))
            .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn bundle_endpoint_returns_the_deployment_files_for_an_existing_token() {
    let app = spawn_app_in(
        tempfile::tempdir().unwrap(),
        &[("public_url", "https://imd.example.com")],
    )
    .await;
    let minted = app
        .mint(&json!({"version": "v4", "name": "bundle"}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let id = minted["id"].as_str().unwrap();
    let token = minted["token"].as_str().unwrap();

    let r = app
        .admin_post(
            &format!("/api/v1/admin/tokens/{id}/bundle?vendor=Acme&msi=acme-agent.msi"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/zip");
    let bytes = r.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    // The server re-derives the very token string it handed out at minting: the zip holds
    // exactly the bundle built from the minted token.
    let expected = imd_tokens::bundle::build(
        token,
        &imd_tokens::bundle::BundleOptions {
            vendor: "Acme".into(),
            msi: "acme-agent.msi".into(),
            now: app.clock_now(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(zip.len(), expected.files.len());
    for f in &expected.files {
        let mut entry = zip
            .by_name(&format!("{}{}", imd_tokens::bundle::ZIP_ROOT, f.path))
            .unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut got).unwrap();
        assert_eq!(got, f.contents, "{}", f.path);
    }
    assert!(expected.file("imd.admx").is_some() && expected.file("en-US/imd.adml").is_some());
    let ps1 =
        String::from_utf8(expected.file("Install-Imd.ps1").unwrap().contents.clone()).unwrap();
    assert!(
        ps1.contains(token)
            && ps1.contains("acme-agent.msi")
            && ps1.contains("https://imd.example.com")
    );

    // Refusals: bad option, unknown token, another org's token, a revoked token.
    let (s, c, _) = error_code(
        app.admin_post(
            &format!("/api/v1/admin/tokens/{id}/bundle?vendor=Not%20Valid"),
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (s, _, _) = error_code(
        app.admin_post("/api/v1/admin/tokens/nope/bundle", &json!({}))
            .await,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, other_key) = app.other_org().await;
    let r = app
        .post_as(&format!("/api/v1/admin/tokens/{id}/bundle"), &other_key)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    app.admin_post(&format!("/api/v1/admin/tokens/{id}/revoke"), &json!({}))
        .await;
    let (s, c, _) = error_code(
        app.admin_post(&format!("/api/v1/admin/tokens/{id}/bundle"), &json!({}))
            .await,
    )
    .await;
    assert_eq!((s, c.as_str()), (StatusCode::CONFLICT, "conflict"));
}
