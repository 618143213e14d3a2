//! `GET /api/v1/admin/overview`: what an admin watching a rollout wants on one screen (the
//! console's first page): progress per token, attempts over time by outcome, the commonest
//! failure codes with the machines behind them, connector and directory health.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::AdminAuth;
use super::{ApiError, AppState};
use crate::clock::rfc3339;

const TOP_FAILURES: i64 = 10;
const DEVICES_PER_FAILURE: i64 = 5;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    /// `24h` (hourly buckets, the default) or `30d` (daily buckets).
    window: Option<String>,
}

fn ts(t: Option<i64>) -> Value {
    t.map_or(Value::Null, |t| json!(rfc3339(t)))
}

pub async fn overview(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<OverviewQuery>,
) -> Result<HttpResponse, ApiError> {
    let (window, span, bucket) = match q.window.as_deref().unwrap_or("24h") {
        "24h" => ("24h", 86_400, 3_600),
        "30d" => ("30d", 30 * 86_400, 86_400),
        _ => return Err(ApiError::invalid("window must be 24h or 30d")),
    };
    let now = state.clock.now();
    let org = &auth.org_id;
    // Buckets end at the next whole bucket after now, so the last one is the current hour/day.
    let end = now - now.rem_euclid(bucket) + bucket;
    let since = end - span;

    // Rollout: machines still to come are the pending device-map rows (v4) and the directory
    // users without an active device (v2: ldap, v5: azure); each token of that IMD version shows
    // the organisation's figure.
    let pending_map = state.store.count_pending_mappings(org).await?;
    let pending_ldap = state.store.users_without_devices(org, "ldap").await?;
    let pending_azure = state.store.users_without_devices(org, "azure").await?;
    let tokens: Vec<Value> = state
        .store
        .token_rollout(org)
        .await?
        .into_iter()
        .map(|t| {
            let pending = match t.version.as_str() {
                "v4" => pending_map,
                "v2" => pending_ldap,
                "v5" => pending_azure,
                _ => 0,
            };
            let status = if t.revoked_at.is_some() {
                "revoked"
            } else if t.expires_at.is_some_and(|e| e <= now) {
                "expired"
            } else {
                "active"
            };
            json!({
                "id": t.token_id,
                "name": t.name,
                "version": t.version,
                "status": status,
                "uses": t.uses,
                "last_used_at": ts(t.last_used_at),
                "activated": t.active_devices,
                "pending": pending,
                "expected": t.active_devices + pending,
            })
        })
        .collect();

    let mut buckets: BTreeMap<i64, (i64, i64, i64)> = (0..span / bucket)
        .map(|i| (since + i * bucket, (0, 0, 0)))
        .collect();
    for b in state.store.activity(org, since, end, bucket).await? {
        let e = buckets.entry(b.bucket).or_default();
        match b.outcome.as_str() {
            "activated" => e.0 += b.n,
            "reactivated" => e.1 += b.n,
            _ => e.2 += b.n,
        }
    }
    let totals = buckets
        .values()
        .fold((0, 0, 0), |t, b| (t.0 + b.0, t.1 + b.1, t.2 + b.2));
    let buckets: Vec<Value> = buckets
        .into_iter()
        .map(|(start, (a, r, f))| {
            json!({ "start": rfc3339(start), "activated": a, "reactivated": r, "failed": f })
        })
        .collect();

    let mut failures = Vec::new();
    for f in state.store.top_failures(org, since, TOP_FAILURES).await? {
        let devices: Vec<Value> = state
            .store
            .failing_devices(org, &f.outcome, since, DEVICES_PER_FAILURE)
            .await?
            .into_iter()
            .map(|d| {
                json!({
                    "hostname": d.hostname,
                    "serial": d.serial,
                    "uuid": d.uuid,
                    "attempts": d.attempts,
                    "last_at": rfc3339(d.last_at),
                })
            })
            .collect();
        failures.push(json!({
            "code": f.outcome,
            "count": f.n,
            "devices": f.devices,
            "recent_devices": devices,
        }));
    }

    let connectors = super::connectors::views(&state, org, now).await?;
    let connected = connectors
        .iter()
        .filter(|c| c.status == super::connectors::ConnectorStatus::Connected)
        .count();
    let azure = state.store.azure_config(org).await?;
    let ldap_mappings = state.store.ldap_mappings(org).await?.len();
    let azure_mappings = state.store.azure_mappings(org).await?.len();
    let last_run = state.store.last_sync_run(org).await?;

    Ok(HttpResponse::Ok().json(json!({
        "window": window,
        "generated_at": rfc3339(now),
        "rollout": {
            "tokens": tokens,
            "pending": { "device_map": pending_map, "ldap": pending_ldap, "azure": pending_azure },
        },
        "activity": {
            "since": rfc3339(since),
            "bucket_secs": bucket,
            "buckets": buckets,
            "totals": { "activated": totals.0, "reactivated": totals.1, "failed": totals.2 },
        },
        "top_failures": failures,
        "connectors": {
            "total": connectors.len(),
            "connected": connected,
            "items": connectors,
        },
        "directories": {
            "ldap_mappings": ldap_mappings,
            "azure_configured": azure.is_some(),
            "azure_mappings": azure_mappings,
            "last_sync": last_run.map(|(at, status)| json!({ "started_at": rfc3339(at), "status": status })),
        },
    })))
}
