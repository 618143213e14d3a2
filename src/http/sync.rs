//! Directory sync endpoints (docs/sync.md): sync settings, profiles' retention policy, starting
//! a run (also as a dry run or a preview at a future date), the run history with its per-user
//! report, and approve / reject of held-back changes.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::AdminAuth;
use super::pagination::PageQuery;
use super::{ApiError, AppState, Code};
use crate::store::{ProfileRow, StoreError, SyncSettingsRow};
use crate::sync::{RunOptions, Trigger, run_json};

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(Code::InvalidSetting, message).with_detail("field", json!(field))
}

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| ApiError::invalid("the body must be a JSON object"))
}

fn int(field: &str, v: &Value, min: i64, max: i64) -> Result<i64, ApiError> {
    match v.as_i64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            field,
            format!("{field} must be a whole number from {min} to {max}"),
        )),
    }
}

/// A field the object does not have, named in the error with the ones it has.
fn unknown(field: &str, what: &str, known: &[&str]) -> ApiError {
    invalid(
        field,
        format!("unknown field {field:?}; {what} has {}", known.join(", ")),
    )
}

fn boolean(field: &str, v: &Value) -> Result<bool, ApiError> {
    v.as_bool()
        .ok_or_else(|| invalid(field, format!("{field} must be true or false")))
}

async fn settings_json(state: &AppState, org_id: &str) -> Result<Value, ApiError> {
    let s = state.store.sync_settings(org_id).await?;
    let mut v = serde_json::to_value(&s).map_err(ApiError::internal)?;
    let last = state.store.last_sync_run(org_id).await?.map(|(t, _)| t);
    let next = state.sync.next_run_at(org_id).await?;
    v["last_run_at"] = json!(last.map(crate::clock::rfc3339));
    v["next_run_at"] = json!(next.map(crate::clock::rfc3339));
    Ok(v)
}

pub async fn get_settings(
    state: web::Data<AppState>,
    auth: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(settings_json(&state, &auth.org_id).await?))
}

/// Any subset of the settings; the others stay.
pub async fn put_settings(
    state: web::Data<AppState>,
    auth: AdminAuth,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let mut s: SyncSettingsRow = state.store.sync_settings(&auth.org_id).await?;
    for (k, v) in object(&body)? {
        match k.as_str() {
            "auto_sync_interval_hours" => s.auto_sync_interval_hours = int(k, v, 1, 8760)?,
            "auto_update_user_details" => s.auto_update_user_details = boolean(k, v)?,
            "auto_preserve_unmapped_users" => s.auto_preserve_unmapped_users = boolean(k, v)?,
            "mass_change_threshold_percent" => s.mass_change_threshold_percent = int(k, v, 0, 100)?,
            "mass_change_threshold_min" => s.mass_change_threshold_min = int(k, v, 0, 1_000_000)?,
            other => {
                return Err(unknown(
                    other,
                    "the sync settings",
                    &[
                        "auto_sync_interval_hours",
                        "auto_update_user_details",
                        "auto_preserve_unmapped_users",
                        "mass_change_threshold_percent",
                        "mass_change_threshold_min",
                    ],
                ));
            }
        }
    }
    state
        .store
        .put_sync_settings(&auth.org_id, &s, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(settings_json(&state, &auth.org_id).await?))
}

fn profile_name(name: &str) -> Result<String, ApiError> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 200 || n.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            "a profile name is 1 to 200 printable characters",
        ));
    }
    Ok(n.to_string())
}

fn profile_json(p: &ProfileRow, configured: bool, users: i64) -> Value {
    json!({
        "name": p.name,
        "auto_delete_preserved": p.auto_delete_preserved,
        "delete_after_days": p.delete_after_days,
        "configured": configured,
        "users": users,
    })
}

pub async fn list_profiles(
    state: web::Data<AppState>,
    auth: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let configured = state.store.profiles(&auth.org_id).await?;
    let in_use = state.store.profiles_in_use(&auth.org_id).await?;
    let mut names: Vec<String> = configured
        .iter()
        .map(|p| p.name.clone())
        .chain(in_use.iter().map(|(n, _)| n.clone()))
        .collect();
    names.sort();
    names.dedup();
    let items: Vec<Value> = names
        .iter()
        .map(|n| {
            let c = configured.iter().find(|p| &p.name == n);
            let users = in_use.iter().find(|(m, _)| m == n).map_or(0, |(_, u)| *u);
            let p = c.cloned().unwrap_or_else(|| ProfileRow::defaults(n));
            profile_json(&p, c.is_some(), users)
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

async fn one_profile(state: &AppState, org_id: &str, name: &str) -> Result<Value, ApiError> {
    let configured = state.store.profiles(org_id).await?;
    let users = state
        .store
        .profiles_in_use(org_id)
        .await?
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, u)| u);
    let c = configured.into_iter().find(|p| p.name == name);
    let configured = c.is_some();
    let p = c.unwrap_or_else(|| ProfileRow::defaults(name));
    Ok(profile_json(&p, configured, users))
}

pub async fn get_profile(
    state: web::Data<AppState>,
    auth: AdminAuth,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = profile_name(&name)?;
    Ok(HttpResponse::Ok().json(one_profile(&state, &auth.org_id, &name).await?))
}

pub async fn put_profile(
    state: web::Data<AppState>,
    auth: AdminAuth,
    name: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let name = profile_name(&name)?;
    let mut p = state
        .store
        .profiles(&auth.org_id)
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| ProfileRow::defaults(&name));
    for (k, v) in object(&body)? {
        match k.as_str() {
            "auto_delete_preserved" => p.auto_delete_preserved = boolean(k, v)?,
            "delete_after_days" => p.delete_after_days = int(k, v, 1, 366)?,
            other => {
                return Err(unknown(
                    other,
                    "a profile",
                    &["auto_delete_preserved", "delete_after_days"],
                ));
            }
        }
    }
    state
        .store
        .put_profile(&auth.org_id, &p, state.clock.now())
        .await?;
    Ok(HttpResponse::Ok().json(one_profile(&state, &auth.org_id, &name).await?))
}

pub async fn delete_profile(
    state: web::Data<AppState>,
    auth: AdminAuth,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = profile_name(&name)?;
    state.store.delete_profile(&auth.org_id, &name).await?;
    Ok(HttpResponse::Ok().json(one_profile(&state, &auth.org_id, &name).await?))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartQuery {
    dry_run: Option<String>,
    as_of: Option<String>,
}

pub async fn start(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<StartQuery>,
) -> Result<HttpResponse, ApiError> {
    let dry_run = match q.dry_run.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "dry_run must be true or false, got {other:?}"
            )));
        }
    };
    let as_of = match q.as_of.as_deref() {
        None => None,
        Some(s) => Some(crate::clock::parse_rfc3339(s).map_err(|m| invalid("as_of", m))?),
    };
    let opts = RunOptions {
        trigger: Trigger::Manual,
        dry_run,
        as_of,
    };
    let id = state.sync.start(&auth.org_id, opts).await?;
    Ok(HttpResponse::Accepted().json(json!({"id": id, "status": "running", "dry_run": dry_run})))
}

fn run_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("sync run"),
        other => other.into(),
    }
}

pub async fn list_runs(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = q.page()?;
    let rows = state.store.list_sync_runs(&auth.org_id, &page).await?;
    let items: Vec<Value> = rows.iter().map(run_json).collect();
    Ok(
        HttpResponse::Ok().json(super::pagination::Paged::new(items, &page, |r| {
            r["id"].as_str().unwrap_or_default()
        })),
    )
}

pub async fn get_run(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let r = state
        .store
        .sync_run(&auth.org_id, &id)
        .await
        .map_err(run_not_found)?;
    Ok(HttpResponse::Ok().json(run_json(&r)))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunUsersQuery {
    action: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

const ACTIONS: [&str; 7] = [
    "imported",
    "updated",
    "preserved",
    "reenabled",
    "deleted",
    "skipped",
    "error",
];

pub async fn run_users(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
    q: web::Query<RunUsersQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = q.page.page()?;
    if let Some(a) = &q.action
        && !ACTIONS.contains(&a.as_str())
    {
        return Err(ApiError::invalid(format!(
            "action must be one of {}",
            ACTIONS.join(", ")
        )));
    }
    let run = state
        .store
        .sync_run(&auth.org_id, &id)
        .await
        .map_err(run_not_found)?;
    let after = match &page.after {
        None => 0,
        Some(a) => a
            .parse::<i64>()
            .map_err(|_| ApiError::invalid("malformed cursor"))?,
    };
    let rows = state
        .store
        .sync_run_users(&run.id, q.action.as_deref(), after, page.limit)
        .await?;
    let next = (rows.len() as u32 == page.limit)
        .then(|| {
            rows.last()
                .map(|r| super::pagination::cursor_for(&r.seq.to_string()))
        })
        .flatten();
    Ok(HttpResponse::Ok().json(json!({"items": rows, "next_cursor": next})))
}

pub async fn approve(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let r = state
        .sync
        .approve(&auth.org_id, &id)
        .await
        .map_err(|e| match e {
            crate::sync::SyncError::Store(s) => run_not_found(s),
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok().json(run_json(&r)))
}

pub async fn reject(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let r = state
        .sync
        .reject(&auth.org_id, &id)
        .await
        .map_err(|e| match e {
            crate::sync::SyncError::Store(s) => run_not_found(s),
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok().json(run_json(&r)))
}
