//! Entra ID (Azure AD) administration:
//! - `PUT|GET /api/v1/admin/azure`: the organization's app registration. The client secret is
//!   sealed with the master key (AAD `azure:<org_id>`) before it reaches the store and is
//!   never returned (`client_secret_set`) or logged.
//! - `POST /api/v1/admin/azure/test`: token, one user, one group; a failure is a diagnostic in
//!   the identity platform's own terms with what to fix (200 `{"ok": false, ...}`: the test
//!   ran, the configuration failed it).
//! - `GET /api/v1/admin/azure/groups?q=<prefix>`: groups to pick for a mapping.
//! - `/api/v1/admin/azure-mappings`: CRUD like the AD/LDAP mappings (422 `mapping_invalid`
//!   naming the field, 409 `conflict` on a taken priority or name).

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::admin::double_option;
use super::auth::AdminAuth;
use super::error::mapping_written as written;
use super::ldap_mappings::{MAX_PRIORITY, invalid, text};
use super::{ApiError, AppState, Code};
use crate::clock::rfc3339;
use crate::directory::graph::{
    DEFAULT_AUTHORITY_URL, DEFAULT_GRAPH_URL, GraphClient, GraphClientsError, GraphError,
    MAX_SECRET_BYTES, is_extension_name, is_guid,
};
use crate::store::{AzureConfigRow, AzureMappingRow, AzureMappingValues, azure_secret_aad};

/// Graph user properties a mapping may test (besides `extension_*`), as Graph spells them.
pub const MAPPING_ATTRIBUTES: [&str; 6] = [
    "department",
    "country",
    "companyName",
    "jobTitle",
    "officeLocation",
    "employeeType",
];
const MAX_VALUE: usize = 256;
const DEFAULT_GROUP_RESULTS: u32 = 25;
const MAX_GROUP_RESULTS: u32 = 100;

// ---------------------------------------------------------------------------------------------
// The app registration.

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "AzureConfigPut")]
#[serde(deny_unknown_fields)]
pub struct PutConfig {
    tenant_id: String,
    client_id: String,
    /// Required the first time; absent afterwards keeps the stored secret.
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    authority_url: Option<String>,
    #[serde(default)]
    graph_url: Option<String>,
    #[serde(default)]
    allow_guests: Option<bool>,
}

fn config_invalid(field: &'static str, problem: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("{field}: {problem}")).with_detail("field", json!(field))
}

/// A tenant GUID, or a domain (`contoso.onmicrosoft.com`); lower-cased. The multi-tenant
/// aliases do not take the client-credentials grant (AADSTS9001023).
fn tenant(v: &str) -> Result<String, ApiError> {
    let t = v.trim().to_ascii_lowercase();
    if is_guid(&t) {
        return Ok(t);
    }
    if matches!(t.as_str(), "common" | "organizations" | "consumers") {
        return Err(config_invalid(
            "tenant_id",
            format!(
                "{t:?} does not work for app-only access; use the Directory (tenant) ID GUID from the app registration's overview page"
            ),
        ));
    }
    let labels: Vec<&str> = t.split('.').collect();
    let domain = t.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    if !domain {
        return Err(config_invalid(
            "tenant_id",
            "must be the tenant's GUID (Directory (tenant) ID) or one of its domain names",
        ));
    }
    Ok(t)
}

fn base_url(field: &'static str, v: Option<&str>, default: &str) -> Result<String, ApiError> {
    let Some(v) = v.map(str::trim) else {
        return Ok(default.to_string());
    };
    let u = url::Url::parse(v).map_err(|e| config_invalid(field, format!("not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(config_invalid(field, "must be an http:// or https:// URL"));
    }
    // The secret and access tokens travel there: plain http only to this host (a test server).
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    if u.scheme() == "http" && !loopback {
        return Err(config_invalid(
            field,
            "must be https:// (plain http only to a loopback address)",
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(config_invalid(field, "must not carry credentials"));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(config_invalid(field, "must not have a query or fragment"));
    }
    Ok(v.trim_end_matches('/').to_string())
}

fn config_json(row: &AzureConfigRow) -> Value {
    json!({
        "tenant_id": row.tenant_id,
        "client_id": row.client_id,
        "client_secret_set": true,
        "authority_url": row.authority_url,
        "graph_url": row.graph_url,
        "allow_guests": row.allow_guests,
        "created_at": rfc3339(row.created_at),
        "updated_at": rfc3339(row.updated_at),
    })
}

pub async fn put_config(
    state: web::Data<AppState>,
    auth: AdminAuth,
    body: web::Json<PutConfig>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let tenant_id = tenant(&b.tenant_id)?;
    let client_id = b.client_id.trim().to_ascii_lowercase();
    if !is_guid(&client_id) {
        return Err(config_invalid(
            "client_id",
            "must be the Application (client) ID GUID from the app registration's overview page",
        ));
    }
    let current = state.store.azure_config(&auth.org_id).await?;
    // Left out, the URLs stay as stored (a secret rotation on a national cloud must not move
    // the organization to the public cloud); the public cloud is only the first default.
    let authority_url = base_url(
        "authority_url",
        b.authority_url.as_deref(),
        current
            .as_ref()
            .map_or(DEFAULT_AUTHORITY_URL, |c| c.authority_url.as_str()),
    )?;
    let graph_url = base_url(
        "graph_url",
        b.graph_url.as_deref(),
        current
            .as_ref()
            .map_or(DEFAULT_GRAPH_URL, |c| c.graph_url.as_str()),
    )?;
    let client_secret_enc = match b.client_secret {
        Some(secret) => {
            if secret.is_empty() {
                return Err(config_invalid("client_secret", "must not be empty"));
            }
            if secret.len() > MAX_SECRET_BYTES {
                return Err(config_invalid(
                    "client_secret",
                    format!("longer than {MAX_SECRET_BYTES} bytes"),
                ));
            }
            if secret.chars().any(char::is_control) {
                return Err(config_invalid(
                    "client_secret",
                    "contains a control character (a pasted line break?)",
                ));
            }
            state
                .master
                .seal(&azure_secret_aad(&auth.org_id), secret.as_bytes())
                .map_err(ApiError::internal)?
        }
        None => match &current {
            // The stored secret is kept only for the same tenant, app and hosts: sending it to
            // a host an admin just typed in would hand the tenant's secret to that host.
            Some(c)
                if c.tenant_id == tenant_id
                    && c.client_id == client_id
                    && c.authority_url == authority_url
                    && c.graph_url == graph_url =>
            {
                c.client_secret_enc.clone()
            }
            Some(_) => {
                return Err(config_invalid(
                    "client_secret",
                    "required again when tenant_id, client_id, authority_url or graph_url change",
                ));
            }
            None => {
                return Err(config_invalid(
                    "client_secret",
                    "required (the secret's Value from Certificates & secrets)",
                ));
            }
        },
    };
    let now = state.clock.now();
    let row = state
        .store
        .put_azure_config(&AzureConfigRow {
            org_id: auth.org_id.clone(),
            tenant_id,
            client_id,
            client_secret_enc,
            authority_url,
            graph_url,
            allow_guests: b
                .allow_guests
                .unwrap_or(current.as_ref().is_some_and(|c| c.allow_guests)),
            created_at: now,
            updated_at: now,
        })
        .await?;
    state.activator.azure_changed(&auth.org_id);
    tracing::info!(org_id = %auth.org_id, tenant_id = %row.tenant_id, client_id = %row.client_id, "Azure AD configuration stored");
    Ok(HttpResponse::Ok().json(config_json(&row)))
}

pub async fn get_config(
    state: web::Data<AppState>,
    auth: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let row = state
        .store
        .azure_config(&auth.org_id)
        .await?
        .ok_or_else(not_configured)?;
    Ok(HttpResponse::Ok().json(config_json(&row)))
}

fn not_configured() -> ApiError {
    ApiError::new(
        Code::AzureNotConfigured,
        "Azure AD is not configured for this organization: PUT /api/v1/admin/azure first",
    )
}

async fn client(state: &AppState, org_id: &str) -> Result<std::sync::Arc<GraphClient>, ApiError> {
    match state.graph.get(org_id).await {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Err(not_configured()),
        Err(GraphClientsError::Store(e)) => Err(e.into()),
        Err(e @ GraphClientsError::Secret) => Err(ApiError::new(
            Code::DirectoryError,
            format!("{e}: PUT /api/v1/admin/azure again with the client secret"),
        )),
    }
}

fn deadline(state: &AppState) -> Instant {
    Instant::now() + std::time::Duration::from_millis(state.azure.timeout_ms)
}

/// A machine-readable name for what a failed test found.
fn problem(e: &GraphError) -> (&'static str, Option<&'static str>) {
    match e {
        GraphError::Auth { code, .. } => (
            match code.as_str() {
                "AADSTS90002" | "invalid_tenant" => "unknown_tenant",
                "AADSTS900023" => "invalid_tenant",
                "AADSTS700016" | "unauthorized_client" => "unknown_client",
                "AADSTS7000215" => "bad_secret",
                "AADSTS7000222" => "expired_secret",
                "AADSTS1002012" | "invalid_scope" => "invalid_scope",
                _ => "authentication_failed",
            },
            None,
        ),
        GraphError::Forbidden(m) => (
            "consent_missing",
            ["GroupMember.Read.All", "User.Read.All"]
                .into_iter()
                .find(|p| m.contains(p)),
        ),
        GraphError::Unavailable(_) => ("unavailable", None),
        GraphError::BadRequest(_) => ("bad_request", None),
        GraphError::DeltaExpired(_) => ("delta_expired", None),
    }
}

pub async fn test(state: web::Data<AppState>, auth: AdminAuth) -> Result<HttpResponse, ApiError> {
    let client = match client(&state, &auth.org_id).await {
        Err(e) if e.code == Code::DirectoryError => {
            return Ok(HttpResponse::Ok().json(json!({
                "ok": false, "token": "failed", "problem": "secret_unreadable", "message": e.message,
            })));
        }
        r => r?,
    };
    let body = match client.fresh().test(deadline(&state)).await {
        Ok(report) => json!({
            "ok": true,
            "token": "ok",
            "user_sample": report.user_sample,
            "group_sample": report.group_sample,
        }),
        Err(e) => {
            let (problem, permission) = problem(&e);
            let (code, message) = match &e {
                GraphError::Auth { code, message } => (code.clone(), message.clone()),
                GraphError::Forbidden(m) => ("Authorization_RequestDenied".into(), m.clone()),
                GraphError::Unavailable(m) => ("unavailable".into(), m.clone()),
                GraphError::BadRequest(m) => ("bad_request".into(), m.clone()),
                GraphError::DeltaExpired(m) => ("delta_expired".into(), m.clone()),
            };
            let token = match &e {
                GraphError::Forbidden(_) => "ok",
                GraphError::Auth { code, .. } if code == "InvalidAuthenticationToken" => "ok",
                GraphError::Auth { .. } => "failed",
                _ => "unknown",
            };
            tracing::warn!(org_id = %auth.org_id, code, problem, "Azure AD configuration test failed");
            json!({
                "ok": false,
                "token": token,
                "problem": problem,
                "code": code,
                "permission": permission,
                "message": message,
                "retryable": e.is_retryable(),
            })
        }
    };
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[schemars(rename = "AzureGroupQuery")]
#[serde(deny_unknown_fields)]
pub struct GroupQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    top: Option<u32>,
}

/// A Graph failure on an admin call: 503 `directory_unavailable` (retry) or 502
/// `directory_error` with what Graph said.
fn graph_api_error(e: GraphError) -> ApiError {
    match e {
        GraphError::Unavailable(m) => {
            tracing::warn!(cause = %m, "Microsoft Graph unavailable");
            ApiError::new(
                Code::DirectoryUnavailable,
                "Microsoft Graph did not answer in time; retry later",
            )
        }
        other => ApiError::new(Code::DirectoryError, other.to_string()),
    }
}

pub async fn groups(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<GroupQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let top = q.top.unwrap_or(DEFAULT_GROUP_RESULTS);
    if !(1..=MAX_GROUP_RESULTS).contains(&top) {
        return Err(ApiError::invalid(format!(
            "top must be between 1 and {MAX_GROUP_RESULTS}"
        )));
    }
    let prefix = q.q.unwrap_or_default();
    if prefix.chars().count() > 256 || prefix.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "q must be at most 256 characters without control characters",
        ));
    }
    let client = client(&state, &auth.org_id).await?;
    let groups = client
        .search_groups(&prefix, top, deadline(&state))
        .await
        .map_err(graph_api_error)?;
    Ok(HttpResponse::Ok().json(json!({ "items": groups, "next_cursor": null })))
}

// ---------------------------------------------------------------------------------------------
// Mappings.

/// `{"group_id"}` or `{"attribute", "value"}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "AzureMappingSource")]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    group_id: Option<String>,
    #[serde(default)]
    attribute: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "AzureMappingCreate")]
#[serde(deny_unknown_fields)]
pub struct NewMapping {
    name: String,
    priority: i64,
    source: Source,
    profile: String,
    storage_region: String,
    #[serde(default)]
    quota_bytes: Option<i64>,
    #[serde(default)]
    auto_import: bool,
}

/// Absent fields stay as they are; `source` is replaced whole; `null` clears `quota_bytes`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "AzureMappingPatch")]
#[serde(deny_unknown_fields)]
pub struct MappingPatch {
    name: Option<String>,
    priority: Option<i64>,
    source: Option<Source>,
    profile: Option<String>,
    storage_region: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    quota_bytes: Option<Option<i64>>,
    auto_import: Option<bool>,
}

/// A mapping attribute in Graph's spelling (accepted in any case), or an `extension_*` name
/// with its application id lower-cased.
pub fn mapping_attribute(v: &str) -> Option<String> {
    let v = v.trim();
    if let Some(a) = MAPPING_ATTRIBUTES
        .iter()
        .find(|a| a.eq_ignore_ascii_case(v))
    {
        return Some(a.to_string());
    }
    let lower = v.to_ascii_lowercase();
    if lower.starts_with("extension_") && is_extension_name(&format!("extension_{}", &v[10..])) {
        let (app, name) = v[10..].split_once('_')?;
        return Some(format!("extension_{}_{name}", app.to_ascii_lowercase()));
    }
    None
}

/// The source's columns: (kind, group_id, attribute, value).
type SourceCols = (String, Option<String>, Option<String>, Option<String>);

fn source(s: Source) -> Result<SourceCols, ApiError> {
    match (s.group_id, s.attribute, s.value) {
        (Some(g), None, None) => {
            let g = g.trim().to_ascii_lowercase();
            if !is_guid(&g) {
                return Err(invalid(
                    "source.group_id",
                    "must be the group's object id (a GUID); GET /api/v1/admin/azure/groups?q= finds it",
                ));
            }
            Ok(("group".into(), Some(g), None, None))
        }
        (None, Some(a), Some(v)) => {
            let attribute = mapping_attribute(&a).ok_or_else(|| {
                invalid(
                    "source.attribute",
                    format!(
                        "{a:?} is not one of {} or an extension_<app id>_<name> attribute",
                        MAPPING_ATTRIBUTES.join(", ")
                    ),
                )
            })?;
            let v = v.trim();
            if v.is_empty() {
                return Err(invalid("source.value", "must not be empty"));
            }
            if v.chars().count() > MAX_VALUE {
                return Err(invalid(
                    "source.value",
                    format!("longer than {MAX_VALUE} characters"),
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(invalid("source.value", "contains a control character"));
            }
            Ok((
                "attribute".into(),
                None,
                Some(attribute),
                Some(v.to_string()),
            ))
        }
        (None, Some(_), None) => Err(invalid("source.value", "required with source.attribute")),
        (None, None, Some(_)) => Err(invalid("source.attribute", "required with source.value")),
        _ => Err(invalid(
            "source",
            "must be {\"group_id\": \"<guid>\"} or {\"attribute\": \"…\", \"value\": \"…\"}",
        )),
    }
}

fn validate(v: AzureMappingValues) -> Result<AzureMappingValues, ApiError> {
    let name = text("name", &v.name)?;
    if !(0..=MAX_PRIORITY).contains(&v.priority) {
        return Err(invalid(
            "priority",
            format!("must be between 0 and {MAX_PRIORITY}"),
        ));
    }
    if v.quota_bytes.is_some_and(|q| q < 0) {
        return Err(invalid("quota_bytes", "must be >= 0 or null"));
    }
    Ok(AzureMappingValues {
        name,
        profile: text("profile", &v.profile)?,
        storage_region: text("storage_region", &v.storage_region)?,
        ..v
    })
}

pub fn mapping_json(r: &AzureMappingRow) -> Value {
    let source = match r.source_kind.as_str() {
        "group" => json!({ "group_id": r.group_id }),
        _ => json!({ "attribute": r.attribute, "value": r.value }),
    };
    json!({
        "id": r.id,
        "name": r.name,
        "priority": r.priority,
        "source": source,
        "profile": r.profile,
        "storage_region": r.storage_region,
        "quota_bytes": r.quota_bytes,
        "auto_import": r.auto_import,
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(r.updated_at),
    })
}

pub async fn create_mapping(
    state: web::Data<AppState>,
    auth: AdminAuth,
    body: web::Json<NewMapping>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let (source_kind, group_id, attribute, value) = source(b.source)?;
    let v = validate(AzureMappingValues {
        name: b.name,
        priority: b.priority,
        source_kind,
        group_id,
        attribute,
        value,
        profile: b.profile,
        storage_region: b.storage_region,
        quota_bytes: b.quota_bytes,
        auto_import: b.auto_import,
    })?;
    let w = state
        .store
        .create_azure_mapping(&auth.org_id, &v, state.clock.now())
        .await?;
    state.activator.azure_changed(&auth.org_id);
    Ok(HttpResponse::Created().json(mapping_json(&written(w, v.priority)?)))
}

pub async fn list_mappings(
    state: web::Data<AppState>,
    auth: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let rows = state.store.azure_mappings(&auth.org_id).await?;
    let items: Vec<Value> = rows.iter().map(mapping_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": null })))
}

pub async fn get_mapping(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = state
        .store
        .azure_mapping(&auth.org_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("azure mapping"))?;
    Ok(HttpResponse::Ok().json(mapping_json(&row)))
}

pub async fn patch_mapping(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
    body: web::Json<MappingPatch>,
) -> Result<HttpResponse, ApiError> {
    let p = body.into_inner();
    let cur = state
        .store
        .azure_mapping(&auth.org_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("azure mapping"))?;
    let mut v = AzureMappingValues::of(&cur);
    if let Some(s) = p.source {
        (v.source_kind, v.group_id, v.attribute, v.value) = source(s)?;
    }
    v.name = p.name.unwrap_or(v.name);
    v.priority = p.priority.unwrap_or(v.priority);
    v.profile = p.profile.unwrap_or(v.profile);
    v.storage_region = p.storage_region.unwrap_or(v.storage_region);
    v.quota_bytes = p.quota_bytes.unwrap_or(v.quota_bytes);
    v.auto_import = p.auto_import.unwrap_or(v.auto_import);
    let v = validate(v)?;
    let w = state
        .store
        .update_azure_mapping(&auth.org_id, &id, &v, state.clock.now())
        .await?
        .ok_or_else(|| ApiError::not_found("azure mapping"))?;
    state.activator.azure_changed(&auth.org_id);
    Ok(HttpResponse::Ok().json(mapping_json(&written(w, v.priority)?)))
}

pub async fn delete_mapping(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if state.store.delete_azure_mapping(&auth.org_id, &id).await? {
        state.activator.azure_changed(&auth.org_id);
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found("azure mapping"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_attributes_are_spelled_as_graph_spells_them() {
        assert_eq!(
            mapping_attribute("companyname").as_deref(),
            Some("companyName")
        );
        assert_eq!(
            mapping_attribute(" Department ").as_deref(),
            Some("department")
        );
        assert_eq!(
            mapping_attribute("extension_0123456789ABCDEF0123456789abcdef_costCenter").as_deref(),
            Some("extension_0123456789abcdef0123456789abcdef_costCenter")
        );
        for bad in [
            "mail",
            "accountEnabled",
            "extension_123_x",
            "extension_",
            "",
        ] {
            assert_eq!(mapping_attribute(bad), None, "{bad}");
        }
    }

    #[test]
    fn tenants_are_guids_or_domains() {
        assert_eq!(
            tenant(" 4F6C1A2E-0B8E-4A47-9D7B-2F3C5E6A7B8C ").unwrap(),
            "4f6c1a2e-0b8e-4a47-9d7b-2f3c5e6a7b8c"
        );
        assert_eq!(
            tenant("Contoso.onmicrosoft.com").unwrap(),
            "contoso.onmicrosoft.com"
        );
        for bad in [
            "common",
            "organizations",
            "contoso",
            "-x.com",
            "a..b",
            "x/y.com",
            "",
        ] {
            assert!(tenant(bad).is_err(), "{bad}");
        }
    }
}
