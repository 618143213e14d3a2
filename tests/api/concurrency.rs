//! Concurrency is designed: the same device or user activating many times at once yields exactly
//! one device and one user, and max_uses holds under contention.

use std::collections::HashSet;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HEADER, activation, device_map, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_parallel_activations_of_one_device_make_one_device() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    let req = activation(&token, "S1", "WS-1", "a");
    let results = join_all((0..64).map(|_| async { app.activate(&req).await })).await;
    let mut created = 0;
    let mut ids = HashSet::new();
    let mut creds = HashSet::new();
    for r in results {
        let s = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{s} {v}");
        created += usize::from(s == StatusCode::CREATED);
        ids.insert(v["device_id"].as_str().unwrap().to_string());
        creds.insert(v["device_credential"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    assert_eq!(creds.len(), 1, "every caller got the same credential");
    assert_eq!(app.list("/api/v1/admin/devices").await.len(), 1);
    assert_eq!(app.list("/api/v1/admin/users").await.len(), 1);
    assert_eq!(app.list("/api/v1/admin/tokens").await[0]["uses"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_first_activations_of_one_user_make_one_user() {
    let app = spawn_app().await;
    let mut csv = String::from(HEADER);
    for i in 0..64 {
        csv.push_str(&format!(
            "jdoe@corp.example.com,jdoe,WS-{i},serial-number,JS{i},,\n"
        ));
    }
    app.map(&csv).await;
    let token = app.token().await;
    let results = join_all((0..64).map(|i| {
        let req = activation(&token, &format!("JS{i}"), &format!("WS-{i}"), "jdoe");
        let app = &app;
        async move { app.activate(&req).await }
    }))
    .await;
    let mut users = HashSet::new();
    let mut user_created = 0;
    for r in results {
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        users.insert(v["user_id"].as_str().unwrap().to_string());
        user_created += usize::from(v["user_created"] == json!(true));
    }
    assert_eq!(users.len(), 1);
    assert_eq!(user_created, 1);
    assert_eq!(app.list("/api/v1/admin/users").await.len(), 1);
    assert_eq!(app.list("/api/v1/admin/devices?limit=1000").await.len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_uses_holds_under_contention() {
    let app = spawn_app().await;
    app.map(&device_map(64)).await;
    let token = app
        .token_with(json!({"version": "v4", "name": "63", "max_uses": 63}))
        .await;
    let results = join_all((0..64).map(|i| {
        let req = activation(
            &token,
            &format!("SER{i:06}"),
            &format!("WS-{i:05}"),
            &format!("user{i}"),
        );
        let app = &app;
        async move { app.activate(&req).await }
    }))
    .await;
    let mut ok = 0;
    let mut exhausted = 0;
    for r in results {
        match r.status() {
            StatusCode::CREATED => ok += 1,
            StatusCode::FORBIDDEN => {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "token_exhausted");
                exhausted += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, exhausted), (63, 1));
    assert_eq!(app.list("/api/v1/admin/tokens").await[0]["uses"], 63);
    assert_eq!(app.list("/api/v1/admin/devices?limit=1000").await.len(), 63);
}
