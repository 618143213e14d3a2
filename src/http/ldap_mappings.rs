//! `/api/v1/admin/ldap-mappings`: create, list (by priority), read, patch and delete the
//! organization's AD/LDAP mappings. Every field is validated here (DNs and filters through
//! `domain::ldap`); a failure is 422 `mapping_invalid` naming the field, a taken priority or
//! name is 409 `conflict` naming the other mapping.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::admin::double_option;
use super::auth::AdminAuth;
use super::error::mapping_written as written;
use super::{ApiError, AppState, Code};
use crate::domain::ldap::{Dn, check_filter};
use crate::store::{EMAIL_FALLBACKS, LdapMappingValues};

pub const MAX_PRIORITY: i64 = 1_000_000;
const MAX_TEXT: usize = 100;

pub(super) fn invalid(field: &'static str, problem: impl std::fmt::Display) -> ApiError {
    ApiError::new(Code::MappingInvalid, format!("{field}: {problem}"))
        .with_detail("field", json!(field))
}

pub(super) fn text(field: &'static str, v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    if v.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if v.chars().count() > MAX_TEXT {
        return Err(invalid(field, format!("longer than {MAX_TEXT} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "contains a control character"));
    }
    Ok(v.to_string())
}

fn dn(field: &'static str, v: &str) -> Result<Dn, ApiError> {
    Dn::parse(v).map_err(|e| invalid(field, format!("not a valid DN: {e}")))
}

/// Checks and normalizes every field; the stored DNs are the admin's text, trimmed.
fn validate(v: LdapMappingValues) -> Result<LdapMappingValues, ApiError> {
    let name = text("name", &v.name)?;
    if !(0..=MAX_PRIORITY).contains(&v.priority) {
        return Err(invalid(
            "priority",
            format!("must be between 0 and {MAX_PRIORITY}"),
        ));
    }
    let base = dn("base_dn", &v.base_dn)?;
    let within = |field: &'static str, s: &Option<String>| -> Result<Option<String>, ApiError> {
        let Some(s) = s else { return Ok(None) };
        let d = dn(field, s)?;
        if !d.is_within(&base) {
            return Err(invalid(
                field,
                format!(
                    "{:?} does not lie within base_dn {:?}",
                    d.as_str(),
                    base.as_str()
                ),
            ));
        }
        Ok(Some(d.as_str().to_string()))
    };
    let ou = within("ou", &v.ou)?;
    let group_dn = within("group", &v.group_dn)?;
    let filter = v
        .filter
        .as_deref()
        .map(check_filter)
        .transpose()
        .map_err(|e| invalid("filter", e))?;
    if v.quota_bytes.is_some_and(|q| q < 0) {
        return Err(invalid("quota_bytes", "must be >= 0 or null"));
    }
    if !EMAIL_FALLBACKS.contains(&v.email_fallback.as_str()) {
        return Err(invalid(
            "email_fallback",
            "must be \"none\" or \"upn\" (a user without mail may use its UPN)",
        ));
    }
    Ok(LdapMappingValues {
        name,
        priority: v.priority,
        base_dn: base.as_str().to_string(),
        ou,
        group_dn,
        filter,
        profile: text("profile", &v.profile)?,
        storage_region: text("storage_region", &v.storage_region)?,
        quota_bytes: v.quota_bytes,
        auto_import: v.auto_import,
        email_fallback: v.email_fallback,
    })
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "LdapMappingCreate")]
#[serde(deny_unknown_fields)]
pub struct NewMapping {
    name: String,
    priority: i64,
    base_dn: String,
    #[serde(default)]
    ou: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    filter: Option<String>,
    profile: String,
    storage_region: String,
    #[serde(default)]
    quota_bytes: Option<i64>,
    #[serde(default)]
    auto_import: bool,
    #[serde(default)]
    email_fallback: Option<String>,
}

/// Absent fields stay as they are; `null` clears the optional ones.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "LdapMappingPatch")]
#[serde(deny_unknown_fields)]
pub struct MappingPatch {
    name: Option<String>,
    priority: Option<i64>,
    base_dn: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    ou: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    group: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    filter: Option<Option<String>>,
    profile: Option<String>,
    storage_region: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    quota_bytes: Option<Option<i64>>,
    auto_import: Option<bool>,
    email_fallback: Option<String>,
}

pub async fn create(
    state: web::Data<AppState>,
    auth: AdminAuth,
    body: web::Json<NewMapping>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let v = validate(LdapMappingValues {
        name: b.name,
        priority: b.priority,
        base_dn: b.base_dn,
        ou: b.ou,
        group_dn: b.group,
        filter: b.filter,
        profile: b.profile,
        storage_region: b.storage_region,
        quota_bytes: b.quota_bytes,
        auto_import: b.auto_import,
        email_fallback: b.email_fallback.unwrap_or_else(|| "none".into()),
    })?;
    let w = state
        .store
        .create_ldap_mapping(&auth.org_id, &v, state.clock.now())
        .await?;
    state.activator.ldap_mappings_changed(&auth.org_id);
    Ok(HttpResponse::Created().json(written(w, v.priority)?))
}

pub async fn list(state: web::Data<AppState>, auth: AdminAuth) -> Result<HttpResponse, ApiError> {
    let rows = state.store.ldap_mappings(&auth.org_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": null })))
}

pub async fn get(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = state
        .store
        .ldap_mapping(&auth.org_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("ldap mapping"))?;
    Ok(HttpResponse::Ok().json(row))
}

pub async fn patch(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
    body: web::Json<MappingPatch>,
) -> Result<HttpResponse, ApiError> {
    let p = body.into_inner();
    let cur = state
        .store
        .ldap_mapping(&auth.org_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("ldap mapping"))?;
    let mut v = LdapMappingValues::of(&cur);
    v.name = p.name.unwrap_or(v.name);
    v.priority = p.priority.unwrap_or(v.priority);
    v.base_dn = p.base_dn.unwrap_or(v.base_dn);
    v.ou = p.ou.unwrap_or(v.ou);
    v.group_dn = p.group.unwrap_or(v.group_dn);
    v.filter = p.filter.unwrap_or(v.filter);
    v.profile = p.profile.unwrap_or(v.profile);
    v.storage_region = p.storage_region.unwrap_or(v.storage_region);
    v.quota_bytes = p.quota_bytes.unwrap_or(v.quota_bytes);
    v.auto_import = p.auto_import.unwrap_or(v.auto_import);
    v.email_fallback = p.email_fallback.unwrap_or(v.email_fallback);
    let v = validate(v)?;
    let w = state
        .store
        .update_ldap_mapping(&auth.org_id, &id, &v, state.clock.now())
        .await?
        .ok_or_else(|| ApiError::not_found("ldap mapping"))?;
    state.activator.ldap_mappings_changed(&auth.org_id);
    Ok(HttpResponse::Ok().json(written(w, v.priority)?))
}

pub async fn delete(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if state.store.delete_ldap_mapping(&auth.org_id, &id).await? {
        state.activator.ldap_mappings_changed(&auth.org_id);
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found("ldap mapping"))
    }
}
