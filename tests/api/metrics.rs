//! `/metrics`: counters move by the right labels, histograms and gauges are there, and the
//! endpoint is not public (loopback without proxy headers, or its own listener).
//! Each test runs in a process of its own (nextest), so the process-wide counters are this
//! test's alone and deltas are exact.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, activation, device_map, error_code, spawn_app, spawn_app_with};

/// `name{labels}` → value of every sample.
async fn scrape(app: &TestApp, base: &str) -> HashMap<String, f64> {
    let r = app
        .client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_activations_uploads_and_failures_by_label() {
    let app = spawn_app().await;
    let before = scrape(&app, &app.addr).await;

    app.map(&device_map(3)).await;
    let token = app.token().await;
    app.activate_ok(&activation(&token, "SER000001", "WS-00001", "user1"))
        .await;
    // The same device again: a repeat, from the token cache.
    app.activate_ok(&activation(&token, "SER000001", "WS-00001", "user1"))
        .await;
    let (s, code, _) = error_code(
        app.activate(&activation("not.a.jwt", "SER000002", "WS-00002", "user2"))
            .await,
    )
    .await;
    assert_eq!(
        (s, code.as_str()),
        (StatusCode::UNAUTHORIZED, "token_invalid")
    );
    let (_, code, _) = error_code(
        app.activate(&activation(&token, "NOPE", "WS-9", "user2"))
            .await,
    )
    .await;
    assert_eq!(code, "device_not_mapped");
    let r = app
        .client
        .get(app.url("/no/such/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .get_as(
            &format!("/api/v1/admin/tokens/{}", "x".repeat(8)),
            &app.admin_key,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let after = scrape(&app, &app.addr).await;
    let d = |k: &str| delta(&before, &after, k);
    assert_eq!(
        d(r#"imd_activations_total{version="v4",outcome="created"}"#),
        1.0
    );
    assert_eq!(
        d(r#"imd_activations_total{version="v4",outcome="repeat"}"#),
        1.0
    );
    assert_eq!(
        d(r#"imd_activations_total{version="v4",outcome="device_not_mapped"}"#),
        1.0
    );
    assert_eq!(
        d(r#"imd_activations_total{version="unknown",outcome="token_invalid"}"#),
        1.0
    );
    assert_eq!(
        d(r#"imd_activation_duration_seconds_count{version="v4"}"#),
        3.0
    );
    assert_eq!(
        d(r#"imd_activation_duration_seconds_bucket{version="v4",le="+Inf"}"#),
        3.0
    );
    assert!(
        after.contains_key(r#"imd_activation_duration_seconds_bucket{version="v4",le="0.001"}"#)
    );
    assert!(after.contains_key(r#"imd_activation_duration_seconds_sum{version="v4"}"#));
    assert_eq!(d(r#"imd_token_verifications_total{result="valid"}"#), 3.0);
    assert_eq!(d(r#"imd_token_verifications_total{result="invalid"}"#), 1.0);
    assert_eq!(d("imd_token_cache_hits_total"), 2.0);
    assert_eq!(d(r#"imd_device_map_rows_total{result="created"}"#), 3.0);
    assert_eq!(d(r#"imd_device_map_uploads_total{outcome="applied"}"#), 1.0);
    // The first activation and the repeat (which checks the mapping again) found the device;
    // the unmapped device is a look-up that failed.
    assert_eq!(
        d(r#"imd_directory_lookups_total{resolver="device_map",result="ok"}"#),
        2.0
    );
    assert_eq!(
        d(r#"imd_directory_lookups_total{resolver="device_map",result="device_not_mapped"}"#),
        1.0
    );
    assert!(
        after.contains_key(r#"imd_directory_lookup_duration_seconds_count{resolver="device_map"}"#)
    );
    // Routes by pattern, never by path.
    assert_eq!(
        d(r#"imd_http_requests_total{method="POST",route="/api/v1/activations",status="201"}"#),
        1.0
    );
    assert_eq!(
        d(r#"imd_http_requests_total{method="POST",route="/api/v1/activations",status="401"}"#),
        1.0
    );
    assert_eq!(
        d(
            r#"imd_http_requests_total{method="POST",route="/api/v1/admin/device-maps",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        d(r#"imd_http_requests_total{method="GET",route="unmatched",status="404"}"#),
        1.0
    );
    assert_eq!(
        d(
            r#"imd_http_requests_total{method="GET",route="/api/v1/admin/tokens/{id}",status="404"}"#
        ),
        1.0
    );
    assert!(
        !after
            .keys()
            .any(|k| k.contains("/no/such/path") || k.contains("xxxxxxxx"))
    );
    // Gauges read at scrape time.
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("imd_db_pool_connections{pool="))
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("imd_db_pool_in_use_connections{pool="))
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("imd_db_pool_max_connections{pool="))
    );
    assert_eq!(after["imd_connector_connections"], 0.0);
    assert!(after.contains_key("imd_db_writer_queue_depth"));
    assert!(after.contains_key("imd_audit_queue_depth"));
    assert!(after.contains_key("imd_audit_records_dropped_total"));
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("imd_build_info{version="))
    );
    // The failed attempts reach the audit trail (through the batch queue).
    let mut audited = 0;
    for _ in 0..100 {
        audited = app
            .list("/api/v1/admin/activations?limit=100")
            .await
            .iter()
            .filter(|a| a["outcome"] == json!("device_not_mapped"))
            .count();
        if audited == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn metrics_on_the_main_listener_refuse_proxied_requests() {
    let app = spawn_app().await;
    for (h, v) in [
        ("X-Forwarded-For", "203.0.113.7"),
        ("Forwarded", "for=203.0.113.7"),
        ("X-Real-IP", "203.0.113.7"),
    ] {
        let r = app
            .client
            .get(app.url("/metrics"))
            .header(h, v)
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_code(r).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{h}"
        );
    }
    // Other methods: as unknown paths.
    let r = app.client.post(app.url("/metrics")).send().await.unwrap();
    assert_eq!(error_code(r).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_on_their_own_listener_and_not_on_the_main_one() {
    let app = spawn_app_with(&[("metrics.listen", "127.0.0.1:0")]).await;
    let base = app.metrics_addr.clone().expect("a metrics listener");
    assert_ne!(base, app.addr);
    let token = app.token().await;
    let before = scrape(&app, &base).await;
    let _ = app.activate(&activation(&token, "S", "H", "u")).await;
    let after = scrape(&app, &base).await;
    assert_eq!(
        delta(
            &before,
            &after,
            r#"imd_activations_total{version="v4",outcome="device_not_mapped"}"#
        ),
        1.0
    );
    // Whoever reaches that listener may scrape it (it is the operator's to firewall).
    let r = app
        .client
        .get(format!("{base}/metrics"))
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // It serves nothing else.
    let r = app
        .client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // And the main listener has no /metrics.
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(error_code(r).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let app = spawn_app_with(&[("metrics.enabled", "false")]).await;
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(error_code(r).await.0, StatusCode::NOT_FOUND);
}
