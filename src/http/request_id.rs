//! Request ids: every request gets one — the caller's `X-Request-Id` when it is a sane token,
//! a fresh one otherwise. It is returned in the `X-Request-Id` response header, carried by a
//! tracing span around the request (so every log line the request causes names it), and put
//! in every error body (`error.request_id`), so a user's report can be found in the logs.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being handled, when called from inside one.
pub fn current() -> Option<String> {
    CURRENT.try_with(|id| id.clone()).ok()
}

/// The caller's id if it is 1–128 characters of `[A-Za-z0-9._:-]` (anything else could forge
/// log lines or bloat them), otherwise a new UUID.
pub fn accept(presented: Option<&str>) -> String {
    match presented.map(str::trim) {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_LEN
                && id.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
                }) =>
        {
            id.to_string()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = accept(req.headers().get(HEADER).and_then(|v| v.to_str().ok()));
    let span = tracing::info_span!("request", request_id = %id);
    let mut res = CURRENT
        .scope(id.clone(), next.call(req).instrument(span))
        .await?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HeaderName::from_static(HEADER), v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::accept;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        assert_eq!(accept(Some("abc-123_x.y:z")), "abc-123_x.y:z");
        for bad in ["", "   ", "a b", "a\nb", "évènement", &"x".repeat(129)] {
            let got = accept(Some(bad));
            assert!(uuid::Uuid::parse_str(&got).is_ok(), "{bad:?} → {got}");
        }
        assert!(uuid::Uuid::parse_str(&accept(None)).is_ok());
    }
}
