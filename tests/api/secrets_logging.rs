//! Secrets never reach the logs: the real `imd` binary, logging everything (`RUST_LOG=trace`,
//! JSON lines), is put through an organization's whole life — admin key, admin keys made
//! through the API, a device map, a token, an activation with an install key, the device
//! credential in use, a rotation, a bundle, a connector registration key, failed attempts —
//! and everything it printed is searched for every secret it handled.

use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{activation, device_map, prepare_database};
use crate::process::{imd, serve};

const TRACE: &[(&str, &str)] = &[("RUST_LOG", "trace"), ("IMD_LOG_FORMAT", "json")];

#[tokio::test]
async fn a_full_run_at_trace_level_logs_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    prepare_database(dir.path()).await;
    let mut logs = String::new();

    // The first admin key comes from the CLI (shown once on its stdout, by design; its logs
    // are searched too).
    let mut c = imd();
    c.args([
        "org",
        "create",
        "--name",
        "Leak Test",
        "--json",
        "--data-dir",
    ])
    .arg(dir.path())
    .envs(TRACE.iter().copied());
    if let Some(url) = crate::helpers::database_url_of(dir.path()) {
        c.arg("--database-url").arg(url);
    }
    let o = c.output().await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    logs.push_str(&String::from_utf8_lossy(&o.stderr));
    let org: Value = serde_json::from_slice(&o.stdout).unwrap();
    let admin_key = org["admin_key"].as_str().unwrap().to_string();

    let server = serve(dir.path(), TRACE).await;
    let http = reqwest::Client::new();
    let admin =
        |m: reqwest::Method, path: &str| http.request(m, server.url(path)).bearer_auth(&admin_key);
    let mut secrets: Vec<(String, String)> = vec![("admin key".into(), admin_key.clone())];

    let r = admin(reqwest::Method::PATCH, "/api/v1/admin/org")
        .json(&json!({"require_install_key": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = admin(reqwest::Method::POST, "/api/v1/admin/admin-keys")
        .json(&json!({"name": "automation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    secrets.push(("second admin key".into(), v["key"].as_str().unwrap().into()));

    let r = admin(reqwest::Method::POST, "/api/v1/admin/device-maps")
        .header("Content-Type", "text/csv")
        .body(device_map(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = admin(reqwest::Method::POST, "/api/v1/admin/tokens")
        .json(&json!({"version": "v4", "name": "leak"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let minted: Value = r.json().await.unwrap();
    let token = minted["token"].as_str().unwrap().to_string();
    let token_id = minted["id"].as_str().unwrap().to_string();
    secrets.push(("token".into(), token.clone()));

    let install_key = "ik-3f9a1c7e5b2d4086a1b2c3d4e5f60718";
    secrets.push(("install key".into(), install_key.into()));
    let mut req = activation(&token, "SER000001", "WS-00001", "user1");
    req["device"]["install_key"] = json!(install_key);
    let r = http
        .post(server.url("/api/v1/activations"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let activated: Value = r.json().await.unwrap();
    let credential = activated["device_credential"].as_str().unwrap().to_string();
    secrets.push(("device credential".into(), credential.clone()));
    let r = http
        .get(server.url("/api/v1/device"))
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Failed attempts: a forged signature, a wrong install key, a wrong admin key.
    let forged = format!("{}AAAA", &token[..token.len() - 4]);
    // Refused values are the likeliest to be quoted back in a log line.
    secrets.push(("forged token".into(), forged.clone()));
    let mut bad = activation(&forged, "SER000002", "WS-00002", "user2");
    bad["device"]["install_key"] = json!("ik-0000000000000000-forged-attempt");
    assert!(
        !http
            .post(server.url("/api/v1/activations"))
            .json(&bad)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let mut thief = activation(&token, "SER000001", "WS-00001", "user1");
    thief["device"]["install_key"] = json!("ik-9999999999999999-wrong-key");
    secrets.push((
        "wrong install key".into(),
        "ik-9999999999999999-wrong-key".into(),
    ));
    let r = http
        .post(server.url("/api/v1/activations"))
        .json(&thief)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    // A password activation (this organization has no directory, so it fails after parsing),
    // and a body whose password has the wrong type (serde quotes such values).
    let password = "Pw-7c1e9b3a5d2f4e60-correct-horse";
    secrets.push(("password".into(), password.into()));
    for body in [
        json!({"organization": org["id"], "login": "user1", "password": password,
               "device": {"serial": "SER000003", "hostname": "WS-00003"}}),
        json!({"organization": org["id"], "login": "user1", "password": [password]}),
    ] {
        let r = http
            .post(server.url("/api/v1/activations/password"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error() || r.status().is_server_error());
    }
    let wrong_admin = format!("{}x", &admin_key[..admin_key.len() - 1]);
    secrets.push(("near-miss admin key".into(), wrong_admin.clone()));
    let r = http
        .get(server.url("/api/v1/admin/org"))
        .bearer_auth(&wrong_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = admin(
        reqwest::Method::POST,
        &format!("/api/v1/admin/tokens/{token_id}/rotate"),
    )
    .json(&json!({"grace_days": 1}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let rotated: Value = r.json().await.unwrap();
    let new_token = rotated["token"].as_str().unwrap().to_string();
    let new_id = rotated["id"].as_str().unwrap().to_string();
    secrets.push(("rotated token".into(), new_token.clone()));

    let r = admin(
        reqwest::Method::POST,
        &format!("/api/v1/admin/tokens/{new_id}/bundle"),
    )
    .json(&json!({}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let zip = r.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip.to_vec())).unwrap();
    let mut in_bundle = false;
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut f, &mut text);
        in_bundle |= text.contains(&new_token);
    }
    assert!(in_bundle, "the bundle carries the rotated token");

    let r = admin(reqwest::Method::POST, "/api/v1/admin/connectors")
        .json(&json!({"name": "dc-leak"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let conn: Value = r.json().await.unwrap();
    let reg_key = conn["registration_key"].as_str().unwrap().to_string();
    secrets.push(("registration key".into(), reg_key.clone()));
    let r = http
        .post(server.url("/api/v1/connectors/register"))
        .json(&json!({"registration_key": reg_key, "version": "1.2.3", "hostname": "dc-host"}))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "connector registration: {}",
        r.status()
    );
    let registered: Value = r.json().await.unwrap();
    assert!(registered["credential"].is_string(), "{registered}");
    for (k, v) in registered.as_object().into_iter().flatten() {
        if (k.contains("secret") || k.contains("credential") || k.contains("key"))
            && let Some(s) = v.as_str().filter(|s| s.len() >= 16)
        {
            secrets.push((format!("connector {k}"), s.to_string()));
        }
    }

    // A console session: sign-in with the key, a page, an API call with the cookie and CSRF
    // token, sign-out.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = browser
        .post(server.url("/console/session"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("key={admin_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    secrets.push((
        "console session".into(),
        cookie.trim_start_matches("imd_session=").to_string(),
    ));
    let page = browser
        .get(server.url("/console"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = crate::console::csrf_in(&page);
    let r = browser
        .post(server.url("/api/v1/admin/tokens"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .json(&json!({"version": "v4", "name": "from the console"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let minted: Value = r.json().await.unwrap();
    secrets.push((
        "console-minted token".into(),
        minted["token"].as_str().unwrap().into(),
    ));
    secrets.push(("console CSRF token".into(), csrf.clone()));
    let r = browser
        .post(server.url("/console/signout"))
        .header("Cookie", &cookie)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    server.sigterm();
    let (status, out) = server.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "{out}");
    logs.push_str(&out);

    // The master key, as stored and as raw bytes in the other base64 alphabet.
    let master_text = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
    let master_text = master_text.trim().to_string();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&master_text)
        .unwrap();
    secrets.push(("master key file".into(), master_text));
    secrets.push((
        "master key (url-safe)".into(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw),
    ));
    secrets.push(("master key (hex)".into(), hex_of(&raw)));

    // Parts that identify a secret on their own too: a token's signature, a key's random part.
    let mut all = Vec::new();
    for (what, s) in &secrets {
        all.push((what.clone(), s.clone()));
        if let Some(sig) = s.rsplit('.').next().filter(|p| p.len() >= 16 && p != s) {
            all.push((format!("{what} (signature)"), sig.to_string()));
        }
        if let Some((_, rest)) = s.split_once('_').filter(|(_, r)| r.len() >= 16) {
            all.push((format!("{what} (without prefix)"), rest.to_string()));
        }
    }

    // The logs must be the real thing, so the test can fail.
    let lines = logs.lines().count();
    assert!(lines > 40, "only {lines} lines of logs");
    assert!(logs.contains(r#""level":"TRACE""#), "no trace lines");
    assert!(logs.contains(r#""level":"DEBUG""#));
    assert!(logs.contains("/api/v1/activations"), "requests are logged");
    for (what, s) in &all {
        if let Some(at) = logs.find(s.as_str()) {
            let start = logs[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
            panic!("the {what} is in the logs:\n{}", &logs[start..end]);
        }
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
