//! `GET /api/v1/admin/overview`: what an admin watching a rollout wants on one screen (the
//! console's first page): progress per token, attempts over time by outcome, the commonest
//! failure codes with the machines behind them, connector and directory health.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::auth::AdminAuth;
use super::connectors::{ConnectorStatus, ConnectorView};
use super::{ApiError, AppState};
use crate::clock::ser::{Timestamp, ts, ts_opt};

const TOP_FAILURES: i64 = 10;
const DEVICES_PER_FAILURE: i64 = 5;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    /// `24h` (hourly buckets, the default) or `30d` (daily buckets).
    window: Option<String>,
}

/// The answer; its schema in the OpenAPI description is derived from these types.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Overview {
    window: Window,
    #[serde(serialize_with = "ts")]
    #[schemars(with = "Timestamp")]
    generated_at: i64,
    rollout: Rollout,
    activity: Activity,
    /// The ten commonest failure codes in the window.
    top_failures: Vec<Failure>,
    connectors: Connectors,
    directories: Directories,
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
enum Window {
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "30d")]
    Month,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Rollout {
    /// Every token, newest first (at most 200).
    tokens: Vec<TokenProgress>,
    pending: Pending,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct TokenProgress {
    id: String,
    name: String,
    /// `v2`, `v4` or `v5`.
    version: String,
    status: TokenStatus,
    uses: i64,
    #[serde(serialize_with = "ts_opt")]
    #[schemars(with = "Option<Timestamp>")]
    last_used_at: Option<i64>,
    /// Active devices bound through the token.
    activated: i64,
    /// Machines still to come: the organization's figure for the token's IMD version.
    pending: i64,
    /// `activated + pending`.
    expected: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum TokenStatus {
    Active,
    Expired,
    Revoked,
}

/// Machines still to come, per source.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Pending {
    /// Pending device-map rows (IMD v4).
    device_map: i64,
    /// Active AD/LDAP users without an active device (IMD v2).
    ldap: i64,
    /// Active Azure AD users without an active device (IMD v5).
    azure: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Activity {
    #[serde(serialize_with = "ts")]
    #[schemars(with = "Timestamp")]
    since: i64,
    /// 3600 (24h) or 86400 (30d).
    bucket_secs: i64,
    buckets: Vec<Bucket>,
    totals: Counts,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Bucket {
    #[serde(serialize_with = "ts")]
    #[schemars(with = "Timestamp")]
    start: i64,
    #[serde(flatten)]
    counts: Counts,
}

/// Attempts by outcome; `failed` is every outcome but `activated` and `reactivated`.
#[derive(Debug, Default, Clone, Copy, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Counts {
    activated: i64,
    reactivated: i64,
    failed: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Failure {
    /// The error code the attempts failed with.
    code: String,
    count: i64,
    /// Distinct machines (by serial, UUID and hostname as reported).
    devices: i64,
    /// The five machines seen most recently.
    recent_devices: Vec<FailingMachine>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct FailingMachine {
    hostname: Option<String>,
    serial: Option<String>,
    uuid: Option<String>,
    attempts: i64,
    #[serde(serialize_with = "ts")]
    #[schemars(with = "Timestamp")]
    last_at: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Connectors {
    total: usize,
    connected: usize,
    items: Vec<ConnectorView>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Directories {
    ldap_mappings: usize,
    azure_configured: bool,
    azure_mappings: usize,
    /// The last run that was not a dry run.
    last_sync: Option<LastSync>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
struct LastSync {
    #[serde(serialize_with = "ts")]
    #[schemars(with = "Timestamp")]
    started_at: i64,
    status: String,
}

pub async fn overview(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<OverviewQuery>,
) -> Result<HttpResponse, ApiError> {
    let (window, span, bucket) = match q.window.as_deref().unwrap_or("24h") {
        "24h" => (Window::Day, 86_400, 3_600),
        "30d" => (Window::Month, 30 * 86_400, 86_400),
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
    let without = state.store.users_without_devices(org).await?;
    let of = |source: &str| {
        without
            .iter()
            .find(|(s, _)| s == source)
            .map_or(0, |(_, n)| *n)
    };
    let pending = Pending {
        device_map: state.store.count_pending_mappings(org).await?,
        ldap: of("ldap"),
        azure: of("azure"),
    };
    let tokens = state
        .store
        .token_rollout(org)
        .await?
        .into_iter()
        .map(|t| {
            let still = match t.version.as_str() {
                "v4" => pending.device_map,
                "v2" => pending.ldap,
                "v5" => pending.azure,
                _ => 0,
            };
            let status = if t.revoked_at.is_some() {
                TokenStatus::Revoked
            } else if t.expires_at.is_some_and(|e| e <= now) {
                TokenStatus::Expired
            } else {
                TokenStatus::Active
            };
            TokenProgress {
                id: t.token_id,
                name: t.name,
                version: t.version,
                status,
                uses: t.uses,
                last_used_at: t.last_used_at,
                activated: t.active_devices,
                pending: still,
                expected: t.active_devices + still,
            }
        })
        .collect();

    let mut buckets: BTreeMap<i64, Counts> = (0..span / bucket)
        .map(|i| (since + i * bucket, Counts::default()))
        .collect();
    for b in state.store.activity(org, since, end, bucket).await? {
        let e = buckets.entry(b.bucket).or_default();
        match b.outcome.as_str() {
            "activated" => e.activated += b.n,
            "reactivated" => e.reactivated += b.n,
            _ => e.failed += b.n,
        }
    }
    let totals = buckets.values().fold(Counts::default(), |t, b| Counts {
        activated: t.activated + b.activated,
        reactivated: t.reactivated + b.reactivated,
        failed: t.failed + b.failed,
    });
    let buckets = buckets
        .into_iter()
        .map(|(start, counts)| Bucket { start, counts })
        .collect();

    let mut top_failures = Vec::new();
    for f in state.store.top_failures(org, since, TOP_FAILURES).await? {
        let recent_devices = state
            .store
            .failing_devices(org, &f.outcome, since, DEVICES_PER_FAILURE)
            .await?
            .into_iter()
            .map(|d| FailingMachine {
                hostname: d.hostname,
                serial: d.serial,
                uuid: d.uuid,
                attempts: d.attempts,
                last_at: d.last_at,
            })
            .collect();
        top_failures.push(Failure {
            code: f.outcome,
            count: f.n,
            devices: f.devices,
            recent_devices,
        });
    }

    let items = super::connectors::views(&state, org, now).await?;
    let connected = items
        .iter()
        .filter(|c| c.status == ConnectorStatus::Connected)
        .count();
    let directories = Directories {
        ldap_mappings: state.store.ldap_mappings(org).await?.len(),
        azure_configured: state.store.azure_config(org).await?.is_some(),
        azure_mappings: state.store.azure_mappings(org).await?.len(),
        last_sync: state
            .store
            .last_sync_run(org)
            .await?
            .map(|(started_at, status)| LastSync { started_at, status }),
    };

    Ok(HttpResponse::Ok().json(Overview {
        window,
        generated_at: now,
        rollout: Rollout { tokens, pending },
        activity: Activity {
            since,
            bucket_secs: bucket,
            buckets,
            totals,
        },
        top_failures,
        connectors: Connectors {
            total: items.len(),
            connected,
            items,
        },
        directories,
    }))
}
