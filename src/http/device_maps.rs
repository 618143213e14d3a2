//! Device maps (IMD v4): CSV upload (`POST /admin/device-maps`) and the same mappings as JSON for
//! MDM automation (`/admin/device-mappings`).

use std::collections::HashSet;

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::auth::AdminAuth;
use super::media;
use super::pagination::{PageQuery, Paged};
use super::{ApiError, AppState, Code};
use crate::devicemap::import::{self, ImportError, ImportOptions, Mode};
use crate::devicemap::{MAX_RECORD_BYTES, MappingInput, MappingRow};
use crate::domain::{IdentifierType, normalize_email};
use crate::store::{MappingFilter, MappingsOutcome, StoreError};

const MAX_LISTED_ERRORS: usize = 1000;
const MAX_JSON_MAPPINGS: usize = 10_000;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    mode: Option<String>,
    dry_run: Option<String>,
}

fn flag(name: &str, v: Option<&str>) -> Result<bool, ApiError> {
    match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::invalid(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

fn wants_csv(req: &HttpRequest) -> bool {
    media::accepts(req, "text/csv")
}

/// Streams a spooled file back as the response body.
fn csv_body(status: actix_web::http::StatusCode, file: std::fs::File) -> HttpResponse {
    let file = tokio::fs::File::from_std(file);
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(web::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    HttpResponse::build(status)
        .content_type("text/csv; charset=utf-8")
        .streaming(stream)
}

pub async fn upload(
    state: web::Data<AppState>,
    auth: AdminAuth,
    req: HttpRequest,
    mut payload: web::Payload,
    q: web::Query<UploadQuery>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let mode = match q.mode.as_deref() {
        None | Some("all") => Mode::AllOrNothing,
        Some("partial") => Mode::Partial,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "mode must be \"all\" or \"partial\", got {other:?}"
            )));
        }
    };
    let dry_run = flag("dry_run", q.dry_run.as_deref())?;
    if media::content_type_is(&req, &["text/csv", "application/csv"]) != Some(true) {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "upload the device map with Content-Type: text/csv",
        ));
    }
    let limit = state.limits.device_map_bytes;
    let too_large = || {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("device map is larger than {limit} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        return Err(too_large());
    }

    // Spool to disk: bounded memory, and the database is not touched while bytes trickle in.
    std::fs::create_dir_all(&state.spool_dir).map_err(ApiError::internal)?;
    let spool = tempfile::NamedTempFile::new_in(&state.spool_dir).map_err(ApiError::internal)?;
    let mut file = tokio::fs::File::from_std(spool.reopen().map_err(ApiError::internal)?);
    let mut size = 0u64;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("error reading upload: {e}")))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large());
        }
        file.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    file.flush().await.map_err(ApiError::internal)?;
    drop(file);

    let csv = wants_csv(&req);
    let opts = ImportOptions {
        mode,
        dry_run,
        failures_csv: csv,
        max_listed_errors: MAX_LISTED_ERRORS,
    };
    let path = spool.path().to_path_buf();
    let result = import::import(state.store.clone(), auth.org_id.clone(), path, opts, now).await;
    drop(spool);
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::DEVICE_MAP_UPLOADS.inc(&["error"]);
            return Err(match e {
                ImportError::Header(h) => ApiError::new(Code::DeviceMapInvalid, h.to_string()),
                ImportError::Store(s) => s.into(),
                e => ApiError::internal(e),
            });
        }
    };
    // A file that could not be read to its end is refused in either mode.
    let refused =
        report.stopped_at_line.is_some() || (mode == Mode::AllOrNothing && report.rows_invalid > 0);
    let m = &crate::metrics::DEVICE_MAP_ROWS;
    if report.applied {
        m.add(&["created"], report.created);
        m.add(&["updated"], report.updated);
    }
    m.add(&["invalid"], report.rows_invalid);
    crate::metrics::DEVICE_MAP_UPLOADS.inc(&[if refused {
        "refused"
    } else if report.dry_run {
        "dry_run"
    } else {
        "applied"
    }]);
    tracing::info!(
        org_id = %auth.org_id, rows = report.rows_total, invalid = report.rows_invalid,
        created = report.created, updated = report.updated, dry_run, refused, "device map upload"
    );
    let status = if refused {
        actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        actix_web::http::StatusCode::OK
    };
    if let Some(f) = report.failures_csv.take() {
        // The body is the failing rows; the summary travels in headers.
        let mut resp = csv_body(status, f);
        let h = resp.headers_mut();
        for (name, value) in [
            ("x-imd-rows-total", report.rows_total),
            ("x-imd-rows-invalid", report.rows_invalid),
            ("x-imd-created", report.created),
            ("x-imd-updated", report.updated),
            ("x-imd-applied", u64::from(report.applied)),
        ] {
            h.insert(
                actix_web::http::header::HeaderName::from_static(name),
                actix_web::http::header::HeaderValue::from(value),
            );
        }
        return Ok(resp);
    }
    if refused {
        let message = match report.stopped_at_line {
            Some(line) => format!(
                "the file cannot be read past line {line}: the record starting there is longer than \
                 {MAX_RECORD_BYTES} bytes (a quote that is never closed?); nothing was applied"
            ),
            None => format!(
                "{} of {} rows are invalid; nothing was applied (fix them, or upload with ?mode=partial)",
                report.rows_invalid, report.rows_total
            ),
        };
        let mut err = ApiError::new(Code::DeviceMapInvalid, message);
        if let Some(line) = report.stopped_at_line {
            err = err.with_detail("stopped_at_line", json!(line));
        }
        return Err(err
            .with_detail("rows_total", json!(report.rows_total))
            .with_detail("rows_invalid", json!(report.rows_invalid))
            .with_detail("errors", json!(report.errors))
            .with_detail("errors_truncated", json!(report.errors_truncated)));
    }
    Ok(HttpResponse::Ok().json(report))
}

/// One mapping or an array of them; all are validated before any is stored.
pub async fn create_mappings(
    state: web::Data<AppState>,
    auth: AdminAuth,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let body = body.into_inner();
    let single = body.is_object();
    let items: Vec<Value> = match body {
        Value::Array(a) => a,
        o @ Value::Object(_) => vec![o],
        _ => {
            return Err(ApiError::invalid(
                "expected a mapping object or an array of them",
            ));
        }
    };
    if items.is_empty() || items.len() > MAX_JSON_MAPPINGS {
        return Err(ApiError::invalid(format!(
            "send 1 to {MAX_JSON_MAPPINGS} mappings per request"
        )));
    }
    let mut rows: Vec<(usize, MappingRow)> = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (index, item) in items.into_iter().enumerate() {
        let input: MappingInput = match serde_json::from_value(item) {
            Ok(i) => i,
            Err(e) => {
                errors.push(
                    json!({"index": index, "errors": [{"field": null, "message": e.to_string()}]}),
                );
                continue;
            }
        };
        match input.validate() {
            Ok(row) => {
                if !seen.insert((row.identifier_type, row.identifier_norm.clone())) {
                    errors.push(json!({"index": index, "errors": [{"field": "deviceIdentifier", "message": "duplicate identifier in this request"}]}));
                    continue;
                }
                rows.push((index, row));
            }
            Err(fe) => errors.push(json!({
                "index": index,
                "errors": fe.iter().map(|e| json!({"field": e.field, "message": e.message})).collect::<Vec<_>>(),
            })),
        }
    }
    // `oldDeviceName` is checked against the database in the same job that writes.
    let outcome = state
        .store
        .upsert_mappings(auth.org_id.clone(), rows, errors.is_empty(), now)
        .await?;
    let stored = match outcome {
        MappingsOutcome::Stored(stored) => stored,
        MappingsOutcome::Rejected(rejected) => {
            for (index, msg) in rejected {
                errors.push(
                    json!({"index": index, "errors": [{"field": "oldDeviceName", "message": msg}]}),
                );
            }
            errors.sort_by_key(|e| e["index"].as_u64());
            return Err(ApiError::new(
                Code::DeviceMapInvalid,
                format!(
                    "{} mapping(s) are invalid; nothing was stored",
                    errors.len()
                ),
            )
            .with_detail("errors", json!(errors)));
        }
    };
    if single {
        return Ok(HttpResponse::Created().json(&stored[0]));
    }
    Ok(HttpResponse::Created().json(json!({ "items": stored })))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "DeviceMappingQuery")]
pub struct MappingQuery {
    #[serde(rename = "emailID")]
    email_id: Option<String>,
    #[serde(rename = "deviceIdentifierType")]
    identifier_type: Option<String>,
    #[serde(rename = "deviceIdentifier")]
    identifier: Option<String>,
    status: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

pub async fn list_mappings(
    state: web::Data<AppState>,
    auth: AdminAuth,
    q: web::Query<MappingQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = q.page.page()?;
    let identifier_type = q
        .identifier_type
        .as_deref()
        .map(IdentifierType::parse)
        .transpose()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let identifier_norm = match (&q.identifier, identifier_type) {
        (Some(v), Some(t)) => Some(
            t.normalize(v)
                .map_err(|e| ApiError::invalid(e.to_string()))?,
        ),
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "deviceIdentifier needs deviceIdentifierType",
            ));
        }
        _ => None,
    };
    if let Some(s) = &q.status
        && !matches!(s.as_str(), "pending" | "consumed")
    {
        return Err(ApiError::invalid("status must be pending or consumed"));
    }
    let filter = MappingFilter {
        email: q
            .email_id
            .as_deref()
            .map(|e| normalize_email(e).into_owned()),
        identifier_type: identifier_type.map(|t| t.as_str().to_string()),
        identifier_norm,
        status: q.status.clone(),
    };
    let rows = state
        .store
        .list_mappings(&auth.org_id, &filter, &page)
        .await?;
    Ok(HttpResponse::Ok().json(Paged::new(rows, &page, |m| m.id.as_str())))
}

pub async fn get_mapping(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    match state.store.mapping(&auth.org_id, &id).await {
        Ok(m) => Ok(HttpResponse::Ok().json(m)),
        Err(StoreError::NotFound) => Err(ApiError::not_found("device mapping")),
        Err(e) => Err(e.into()),
    }
}

pub async fn delete_mapping(
    state: web::Data<AppState>,
    auth: AdminAuth,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let m = state
        .store
        .mapping(&auth.org_id, &id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("device mapping"),
            other => other.into(),
        })?;
    if m.consumed_at.is_some() {
        return Err(ApiError::new(
            Code::Conflict,
            "this mapping was consumed by an activation and is kept for audit",
        ));
    }
    match state.store.delete_mapping(&auth.org_id, &id).await {
        Ok(()) => Ok(HttpResponse::NoContent().finish()),
        Err(StoreError::NotFound) => Err(ApiError::not_found("device mapping")),
        Err(e) => Err(e.into()),
    }
}
