//! Admin API (organization-scoped by the admin key): organization settings, tokens, users,
//! devices and the activation audit trail.

use actix_web::{HttpResponse, web};
use imd_tokens::ImdVersion;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::AdminAuth;
use super::pagination::{PageQuery, Paged};
use super::{ApiError, AppState, Code};
use crate::clock::parse_rfc3339;
use crate::crypto::{ADMIN_KEY_PREFIX, random_secret, sha256_hex};
use crate::domain::normalize_email;
use crate::store::{DIRECTORY_OUTAGE_POLICIES, OrgSettingsPatch, StoreError, TokenRow};

const MAX_NAME: usize = 200;

fn not_found(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found(what),
        other => other.into(),
    }
}

/// A search term: empty means no filter; at most 200 printable characters.
fn search(v: Option<&str>) -> Result<Option<&str>, ApiError> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) if v.chars().count() > MAX_NAME || v.chars().any(char::is_control) => {
            Err(ApiError::invalid(format!(
                "search terms are at most {MAX_NAME} printable characters"
            )))
        }
        Some(v) => Ok(Some(v)),
    }
}

/// An RFC 3339 time in a query parameter.
fn time_param(field: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => parse_rfc3339(v)
            .map(Some)
            .map_err(|e| ApiError::invalid(format!("{field}: {e}"))),
    }
}

fn text(field: &str, v: &str, max: usize) -> Result<String, ApiError> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to {max} printable characters"
        )));
    }
    Ok(v.to_string())
}

pub async fn get_org(
    state: web::Data<AppState>,
    auth: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.org(&auth.org_id).await?))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgPatch {
    name: Option<String>,
    default_profile: Option<String>,
    default_storage_region: Option<String>,
    /// `null` = unlimited; absent = unchanged.
    #[serde(default, deserialize_with = "double_option")]
    default_quota_bytes: Option<Option<i64>>,
    require_install_key: Option<bool>,
    /// `null` clears the slug; absent = unchanged.
    #[serde(default, deserialize_with = "double_option")]
    slug: Option<Option<String>>,
    directory_outage: Option<String>,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
pub(super) fn double_option<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// An organization slug: lower-cased, 2–63 of `[a-z0-9-]`, not starting or ending with `-`,
/// and not shaped like an organization id (ids are UUIDs), so a reference is never ambiguous.
fn slug(v: &str) -> Result<String, ApiError> {
    let s = v.trim().to_ascii_lowercase();
    let ok = (2..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        return Err(ApiError::invalid(
            "slug must be 2 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
        ));
    }
    if uuid::Uuid::parse_str(&s).is_ok() {
        return Err(ApiError::invalid(
            "slug must not look like an organization id (a UUID)",
        ));
    }
    Ok(s)
}

pub async fn patch_org(
    state: web::Data<AppState>,
    auth: AdminAuth,
    body: web::Json<OrgPatch>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    if let Some(Some(q)) = b.default_quota_bytes
        && q < 0
    {
        return Err(ApiError::invalid(
            "default_quota_bytes must be >= 0 or null",
        ));
    }
    let patch = OrgSettingsPatch {
        name: b
            .name
            .as_deref()
            .map(|v| text("name", v, MAX_NAME))
            .transpose()?,
        default_profile: b
            .default_profile
            .as_deref()
            .map(|v| text("default_profile", v, MAX_NAME))
            .transpose()?,
        default_storage_region: b
            .default_storage_region
            .as_deref()
            .map(|v| text("default_storage_region", v, MAX_NAME))
            .transpose()?,
        default_quota_bytes: b.default_quota_bytes,
        require_install_key: b.require_install_key,
        slug: b
            .slug
            .map(|v| v.as_deref().map(slug).transpose())
            .transpose()?,
        directory_outage: match b.directory_outage {
            Some(p) if DIRECTORY_OUTAGE_POLICIES.contains(&p.as_str()) => Some(p),
            Some(_) => {
                return Err(ApiError::invalid(
                    "directory_outage must be \"refuse\" or \"allow_known_users\"",
                ));
            }
            None => None,
        },
    };
    match state.store.update_org(&auth.org_id, &patch).await {
        Ok(org) => {
            state.activator.org_changed(&auth.org_id);
            Ok(HttpResponse::Ok().json(org))
        }
        Err(StoreError::Conflict) if matches!(patch.slug, Some(Some(_))) => Err(ApiError::new(
            Code::Conflict,
            "this slug is taken by another organization",
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    version: String,
    name: String,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    max_uses: Option<i64>,
}

/// The public view of a token row (never the token string), with days to expiry for rollouts.
fn token_view(t: &TokenRow, now: i64) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("org_id");
        o.insert(
            "days_to_expiry".into(),
            json!(
                t.expires_at
                    .map(|e| if e > now { (e - now) / 86_400 } else { 0 })
            ),
        );
        o.insert(
            "expired".into(),
            json!(t.expires_at.is_some_and(|e| e <= now)),
        );
    }
    v
}

pub async fn mint_token(
    state: web::Data<AppState>,
    auth: AdminAuth,
    body: web::Json<MintRequest>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let b = body.into_inner();
    let version = ImdVersion::parse(&b.version)
        .map_err(|_| ApiError::invalid("version must be \"v2\", \"v4\" or \"v5\""))?;
    if !state.activator.supports(version) {
        return Err(ApiError::invalid(format!(
            "IMD {} is not enabled on this server; use \"v4\" (device map)",
            version.as_str()
        )));
    }
    let name = text("name", &b.name, MAX_NAME)?;
    let expires_at = b
        .expires_at
        .as_deref()
        .map(parse_rfc3339)
        .transpose()
        .map_err(ApiError::invalid)?;
    if expires_at.is_some_and(|e| e <= now) {
        return Err(ApiError::invalid("expires_at must be in the future"));
    }
    if let Some(m) = b.max_uses
        && !(1..=1_000_000_000).contains(&m)
    {
        return Err(ApiError::invalid(
            "max_uses must be between 1 and 1000000000, or null",
        ));
    }
    let (row, token) = state
        .tokens
        .mint(&auth.org_id, version, &name, expires_at, b.max_uses, now)
        .await?;
    let mut v = token_view(&row, now);
    if let Some(o) = v.as_object_mut() {
        o.insert("token".into(), json!(token));
    }
    Ok(HttpResponse::Created().json(v))
}

pub async fn list_tokens(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let page = q.page()?;
    let rows = state.store.list_tokens(&auth.org_id, &page).await?;
    let paged = Paged::new(rows, &page, |t| t.id.as_str());
    Ok(HttpResponse::Ok().json(json!({
        "items": paged.items.iter().map(|t| token_view(t, now)).collect::<Vec<_>>(),
        "next_cursor": paged.next_cursor,
    })))
}

pub async fn get_token(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let t = state
        .store
        .token(&auth.org_id, &id)
        .await
        .map_err(not_found("token"))?;
    Ok(HttpResponse::Ok().json(token_view(&t, state.clock.now())))
}

pub async fn revoke_token(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let t = state
        .store
        .revoke_token(&auth.org_id, &id, now)
        .await
        .map_err(not_found("token"))?;
    state.activator.org_changed(&auth.org_id);
    Ok(HttpResponse::Ok().json(token_view(&t, now)))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct UserQuery {
    email: Option<String>,
    status: Option<String>,
    source: Option<String>,
    q: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

pub async fn list_users(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<UserQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = q.page.page()?;
    let email = q.email.as_deref().map(|e| normalize_email(e).into_owned());
    if let Some(s) = q.status.as_deref()
        && crate::store::UserStatus::parse(s).is_none()
    {
        return Err(ApiError::invalid(
            "status must be active, preserved or deleted",
        ));
    }
    let filter = crate::store::UserFilter {
        email: email.as_deref(),
        status: q.status.as_deref(),
        source: q.source.as_deref(),
        q: search(q.q.as_deref())?,
    };
    let rows = state.store.list_users(&auth.org_id, &filter, &page).await?;
    Ok(HttpResponse::Ok().json(Paged::new(rows, &page, |u| u.id.as_str())))
}

pub async fn get_user(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(
        state
            .store
            .user(&auth.org_id, &id)
            .await
            .map_err(not_found("user"))?,
    ))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DeviceQuery {
    user_id: Option<String>,
    status: Option<String>,
    os: Option<String>,
    source: Option<String>,
    q: Option<String>,
    seen_after: Option<String>,
    seen_before: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

pub async fn list_devices(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<DeviceQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = q.page.page()?;
    if let Some(s) = &q.status
        && !matches!(s.as_str(), "active" | "replaced" | "revoked")
    {
        return Err(ApiError::invalid(
            "status must be active, replaced or revoked",
        ));
    }
    let filter = crate::store::DeviceFilter {
        user_id: q.user_id.as_deref(),
        status: q.status.as_deref(),
        os: search(q.os.as_deref())?,
        source: q.source.as_deref(),
        q: search(q.q.as_deref())?,
        seen_after: time_param("seen_after", q.seen_after.as_deref())?,
        seen_before: time_param("seen_before", q.seen_before.as_deref())?,
    };
    let rows = state
        .store
        .list_devices(&auth.org_id, &filter, &page)
        .await?;
    Ok(HttpResponse::Ok().json(Paged::new(rows, &page, |d| d.id.as_str())))
}

pub async fn get_device(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(
        state
            .store
            .device(&auth.org_id, &id)
            .await
            .map_err(not_found("device"))?,
    ))
}

pub async fn revoke_device(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let d = state
        .store
        .revoke_device(&auth.org_id, &id, now)
        .await
        .map_err(not_found("device"))?;
    Ok(HttpResponse::Ok().json(d))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ActivationQuery {
    outcome: Option<String>,
    device_id: Option<String>,
    token_id: Option<String>,
    user_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

pub async fn list_activations(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<ActivationQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = q.page.page()?;
    let filter = crate::store::ActivationFilter {
        outcome: q.outcome.as_deref(),
        device_id: q.device_id.as_deref(),
        token_id: q.token_id.as_deref(),
        user_id: q.user_id.as_deref(),
        since: time_param("since", q.since.as_deref())?,
        until: time_param("until", q.until.as_deref())?,
    };
    let rows = state
        .store
        .list_activations(&auth.org_id, &filter, &page)
        .await?;
    Ok(HttpResponse::Ok().json(Paged::new(rows, &page, |a| a.id.as_str())))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAdminKey {
    name: String,
}

/// A further admin key (for rotation or another automation); shown once, stored as a hash.
pub async fn create_admin_key(
    state: web::Data<AppState>,
    auth: AdminAuth,
    body: web::Json<NewAdminKey>,
) -> Result<HttpResponse, ApiError> {
    let name = text("name", &body.name, MAX_NAME)?;
    let key = random_secret(ADMIN_KEY_PREFIX).map_err(ApiError::internal)?;
    let row = state
        .store
        .add_admin_key(&auth.org_id, &name, &sha256_hex(&key), state.clock.now())
        .await?;
    let mut v = serde_json::to_value(&row).map_err(ApiError::internal)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("key".into(), json!(key));
    }
    Ok(HttpResponse::Created().json(v))
}

pub async fn list_admin_keys(
    state: web::Data<AppState>,
    auth: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let rows = state.store.list_admin_keys(&auth.org_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": rows, "next_cursor": null })))
}

pub async fn revoke_admin_key(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    match state
        .store
        .revoke_admin_key(&auth.org_id, &id, state.clock.now())
        .await
    {
        Ok(true) => Ok(HttpResponse::NoContent().finish()),
        Ok(false) => Err(ApiError::new(
            Code::Conflict,
            "this is the organization's last admin key; create another before revoking it",
        )),
        Err(StoreError::NotFound) => Err(ApiError::not_found("admin key")),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old token keeps working, in days (default 7).
    grace_days: Option<i64>,
}

pub const DEFAULT_GRACE_DAYS: i64 = 7;
const MAX_GRACE_DAYS: i64 = 365;

/// Rotation without breaking deployed scripts: a successor with the same settings now, the old
/// token until the grace period ends (or its own expiry, whichever comes first).
pub async fn rotate_token(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if id.as_str() == crate::activation::password_token_id(&auth.org_id) {
        return Err(ApiError::invalid(
            "the password-activation token is never signed; revoke it to turn password activation off",
        ));
    }
    let now = state.clock.now();
    // The body is optional; when present it must be valid.
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))?
    };
    let grace_days = req.grace_days.unwrap_or(DEFAULT_GRACE_DAYS);
    if !(0..=MAX_GRACE_DAYS).contains(&grace_days) {
        return Err(ApiError::invalid(format!(
            "grace_days must be between 0 and {MAX_GRACE_DAYS}"
        )));
    }
    let rotated = match state
        .tokens
        .rotate(&auth.org_id, &id, grace_days * 86_400, now)
        .await
    {
        Ok(r) => r,
        Err(crate::tokens::KeyError::Store(StoreError::NotFound)) => {
            return Err(ApiError::not_found("token"));
        }
        Err(e) => return Err(e.into()),
    };
    let Some((rotation, token)) = rotated else {
        return Err(ApiError::new(
            Code::Conflict,
            "this token is revoked or was already rotated",
        ));
    };
    let mut v = token_view(&rotation.successor, now);
    if let Some(o) = v.as_object_mut() {
        o.insert("token".into(), json!(token));
        o.insert("previous".into(), token_view(&rotation.previous, now));
    }
    Ok(HttpResponse::Created().json(v))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleQuery {
    vendor: Option<String>,
    msi: Option<String>,
    pkg: Option<String>,
}

/// The deployment bundle (GPO and MDM files) for an existing token, as a zip: the token string is
/// re-derived from its row, so admins never have to keep it around.
pub async fn token_bundle(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
    q: web::Query<BundleQuery>,
) -> Result<HttpResponse, ApiError> {
    use imd_tokens::bundle::{self, BundleError, BundleOptions};
    if id.as_str() == crate::activation::password_token_id(&auth.org_id) {
        return Err(ApiError::invalid(
            "the password-activation token is never signed; revoke it to turn password activation off",
        ));
    }
    let now = state.clock.now();
    let row = state
        .store
        .token(&auth.org_id, &id)
        .await
        .map_err(not_found("token"))?;
    if row.revoked_at.is_some() {
        return Err(ApiError::new(
            Code::Conflict,
            "this token is revoked; mint or rotate a new one",
        ));
    }
    if row.expires_at.is_some_and(|e| e <= now) {
        return Err(ApiError::new(
            Code::Conflict,
            "this token has expired; mint or rotate a new one",
        ));
    }
    let token = state
        .tokens
        .token_string_fresh(&row, state.clock.now())
        .await?;
    let defaults = BundleOptions::default();
    let q = q.into_inner();
    let opts = BundleOptions {
        vendor: q.vendor.unwrap_or(defaults.vendor),
        msi: q.msi.unwrap_or(defaults.msi),
        pkg: q.pkg.unwrap_or(defaults.pkg),
        now,
    };
    let built = bundle::build(&token, &opts).map_err(|e| match e {
        BundleError::BadOption(m) => ApiError::invalid(m),
        BundleError::Expired { .. } => ApiError::new(Code::Conflict, "this token has expired"),
        other => ApiError::internal(other),
    })?;
    let zip = bundle::to_zip(&built).map_err(ApiError::internal)?;
    let mut resp = HttpResponse::Ok();
    resp.content_type("application/zip").insert_header((
        "Content-Disposition",
        format!("attachment; filename=\"imd-bundle-{}.zip\"", row.id),
    ));
    // Warnings (plain http, expiry within 30 days) travel in a header, one per line folded with "; ".
    if !built.warnings.is_empty() {
        let w: String = built
            .warnings
            .join("; ")
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        resp.insert_header(("x-imd-warnings", w));
    }
    Ok(resp.body(zip))
}
