//! Graceful shutdown of the real `imd serve`: on SIGTERM it stops accepting, lets requests in
//! flight finish (bodies still arriving), writes the queued failed-attempt audit records and
//! closes the database; nothing in flight is lost. Past the bound, requests are cut.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::{activation, device_map, on_postgres, prepare_database};
use crate::process::{Served, imd, serve};

async fn create_org(dir: &std::path::Path) -> String {
    let mut c = imd();
    c.args([
        "org",
        "create",
        "--name",
        "Shutdown",
        "--json",
        "--data-dir",
    ])
    .arg(dir);
    if let Some(url) = crate::helpers::database_url_of(dir) {
        c.arg("--database-url").arg(url);
    }
    let o = c.output().await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["admin_key"].as_str().unwrap().to_string()
}

/// A request whose body is sent in two parts: the first now, the second on `finish`.
struct Trickle {
    rest: Option<(mpsc::Sender<Result<Bytes, std::io::Error>>, Bytes)>,
    response: tokio::task::JoinHandle<Result<(StatusCode, String), reqwest::Error>>,
}

impl Trickle {
    async fn start(req: reqwest::RequestBuilder, body: Vec<u8>) -> Trickle {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let split = body.len() / 2;
        let body = Bytes::from(body);
        tx.send(Ok(body.slice(..split))).await.unwrap();
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        let req = req.body(reqwest::Body::wrap_stream(stream));
        let response = tokio::spawn(async move {
            let r = req.send().await?;
            let status = r.status();
            Ok((status, r.text().await?))
        });
        Trickle {
            rest: Some((tx, body.slice(split..))),
            response,
        }
    }

    /// Sends the rest of the body and waits for the answer.
    async fn finish(mut self) -> Result<(StatusCode, String), reqwest::Error> {
        if let Some((tx, rest)) = self.rest.take() {
            let _ = tx.send(Ok(rest)).await;
        }
        self.response.await.unwrap()
    }
}

fn post_json(http: &reqwest::Client, s: &Served, path: &str) -> reqwest::RequestBuilder {
    http.post(s.url(path))
        .header("Content-Type", "application/json")
}

#[tokio::test]
async fn sigterm_loses_no_activation_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    prepare_database(dir.path()).await;
    let admin_key = create_org(dir.path()).await;
    let server = serve(dir.path(), &[("IMD_SERVER__SHUTDOWN_TIMEOUT_SECS", "10")]).await;
    let http = reqwest::Client::new();
    let r = http
        .post(server.url("/api/v1/admin/device-maps"))
        .bearer_auth(&admin_key)
        .header("Content-Type", "text/csv")
        .body(device_map(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(server.url("/api/v1/admin/tokens"))
        .bearer_auth(&admin_key)
        .json(&json!({"version": "v4", "name": "shutdown"}))
        .send()
        .await
        .unwrap();
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();

    // Failed attempts answered before the signal: their audit records may still be queued.
    for i in 0..20 {
        let r = http
            .post(server.url("/api/v1/activations"))
            .json(&activation(
                &token,
                &format!("GONE{i}"),
                &format!("X-{i}"),
                "nobody",
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    // In flight at the signal: six activations, two failing ones and an upload, their bodies
    // half sent.
    let mut good = Vec::new();
    for i in 0..6 {
        let body = activation(
            &token,
            &format!("SER{i:06}"),
            &format!("WS-{i:05}"),
            &format!("user{i}"),
        );
        good.push(
            Trickle::start(
                post_json(&http, &server, "/api/v1/activations"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await,
        );
    }
    let mut bad = Vec::new();
    for i in 0..2 {
        let body = activation(&token, &format!("LATE{i}"), "X", "nobody");
        bad.push(
            Trickle::start(
                post_json(&http, &server, "/api/v1/activations"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await,
        );
    }
    let mut csv = String::from(crate::helpers::HEADER);
    for i in 100..400 {
        csv.push_str(&format!(
            "late{i}@corp.example.com,late{i},WS-{i:05},serial-number,SER{i:06},,\n"
        ));
    }
    let upload = Trickle::start(
        http.post(server.url("/api/v1/admin/device-maps"))
            .bearer_auth(&admin_key)
            .header("Content-Type", "text/csv"),
        csv.into_bytes(),
    )
    .await;
    // Let every request reach the server before the signal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    server.sigterm();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // No new connections.
    let addr = server.addr.clone();
    let refused = tokio::net::TcpStream::connect(&addr).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted after SIGTERM"
    );

    // Every request in flight is answered as if nothing happened.
    for t in good {
        let (status, body) = t.finish().await.expect("an answer");
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for t in bad {
        let (status, body) = t.finish().await.expect("an answer");
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, body) = upload.finish().await.expect("an answer");
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, out) = server.wait(Duration::from_secs(15)).await;
    assert!(status.success(), "exit {status}:\n{out}");
    // Well inside the 10 s bound: nothing may hold the server until it is cut.
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "{:?}",
        signalled.elapsed()
    );
    assert!(out.contains("shutting down"), "{out}");
    if !on_postgres() {
        // Checkpointed: the WAL is empty (or gone).
        let wal = dir.path().join("imd.db-wal");
        let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert_eq!(len, 0, "the WAL was left with {len} bytes");
    }

    // Everything is there after a restart.
    let again = serve(dir.path(), &[]).await;
    let get = |path: String| {
        let http = http.clone();
        let url = again.url(&path);
        let key = admin_key.clone();
        async move {
            let r = http.get(url).bearer_auth(key).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()["items"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let devices = get("/api/v1/admin/devices?limit=100".into()).await;
    assert_eq!(devices.len(), 6, "{devices:?}");
    let attempts = get("/api/v1/admin/activations?limit=100".into()).await;
    let failed = attempts
        .iter()
        .filter(|a| a["outcome"] == json!("device_not_mapped"))
        .count();
    assert_eq!(failed, 22, "every failed attempt is audited");
    let mappings = get("/api/v1/admin/device-mappings?limit=500".into()).await;
    assert_eq!(mappings.len(), 310);
    again.sigterm();
    let (status, _) = again.wait(Duration::from_secs(15)).await;
    assert!(status.success());
}

#[tokio::test]
async fn a_request_past_the_shutdown_bound_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    prepare_database(dir.path()).await;
    let _ = create_org(dir.path()).await;
    let server = serve(dir.path(), &[("IMD_SERVER__SHUTDOWN_TIMEOUT_SECS", "1")]).await;
    let http = reqwest::Client::new();
    let stuck = Trickle::start(
        post_json(&http, &server, "/api/v1/activations"),
        serde_json::to_vec(&activation("t", "S", "H", "u")).unwrap(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    server.sigterm();
    let (status, out) = server.wait(Duration::from_secs(10)).await;
    assert!(status.success(), "{out}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // The client never gets an answer: the connection was closed under it.
    let r = tokio::time::timeout(Duration::from_secs(5), stuck.response)
        .await
        .expect("the request ends")
        .unwrap();
    assert!(r.is_err(), "{r:?}");
}
