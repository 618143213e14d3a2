//! Media types in `Content-Type` and `Accept`. Type and subtype are case-insensitive (RFC 9110
//! §8.3.1), so `Text/CSV` and `application/json; charset=UTF-8` name the same types as their
//! lowercase forms; parameters other than `q` in `Accept` are ignored.

use actix_web::HttpRequest;
use actix_web::http::header::{ACCEPT, CONTENT_TYPE};

/// The `type/subtype` of a media type, without parameters or surrounding whitespace.
fn essence(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or_default().trim()
}

/// Whether `media_type` (a `Content-Type` value, parameters allowed) is one of `types`, each
/// given as `type/subtype`.
pub fn is_one_of(media_type: &str, types: &[&str]) -> bool {
    let essence = essence(media_type);
    types.iter().any(|t| essence.eq_ignore_ascii_case(t))
}

/// The request's `Content-Type` checked against `types`: `None` when there is no such header,
/// `Some(false)` when it names another type (or is not visible ASCII).
pub fn content_type_is(req: &HttpRequest, types: &[&str]) -> Option<bool> {
    let value = req.headers().get(CONTENT_TYPE)?;
    Some(value.to_str().is_ok_and(|v| is_one_of(v, types)))
}

/// Whether an `Accept` value lists `media_type` itself (not a wildcard) with a non-zero quality.
pub fn accept_lists(accept: &str, media_type: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let named = parts
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(media_type));
        let refused = parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q")
                    && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            })
        });
        named && !refused
    })
}

/// Whether any of the request's `Accept` headers lists `media_type` (see `accept_lists`).
pub fn accepts(req: &HttpRequest, media_type: &str) -> bool {
    req.headers()
        .get_all(ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .any(|v| accept_lists(v, media_type))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn media_types_compare_case_insensitively_with_parameters_ignored() {
        for ct in [
            "application/json",
            "Application/JSON",
            "APPLICATION/JSON",
            "application/json; charset=UTF-8",
            "Application/Json;Charset=utf-8",
            "  application/json  ",
        ] {
            assert!(is_one_of(ct, &["application/json"]), "{ct}");
        }
        for ct in ["Text/CSV", "text/csv; charset=utf-8", "APPLICATION/CSV"] {
            assert!(is_one_of(ct, &["text/csv", "application/csv"]), "{ct}");
        }
        for ct in [
            "",
            "text/plain",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "text/csvfoo",
            "text",
        ] {
            assert!(!is_one_of(ct, &["application/json", "text/csv"]), "{ct:?}");
        }
    }

    #[test]
    fn content_type_is_none_only_without_the_header() {
        let req = TestRequest::default().to_http_request();
        assert_eq!(content_type_is(&req, &["application/json"]), None);
        let req = TestRequest::default()
            .insert_header((CONTENT_TYPE, "Application/JSON; Charset=UTF-8"))
            .to_http_request();
        assert_eq!(content_type_is(&req, &["application/json"]), Some(true));
        let req = TestRequest::default()
            .insert_header((CONTENT_TYPE, "text/plain"))
            .to_http_request();
        assert_eq!(content_type_is(&req, &["application/json"]), Some(false));
    }

    #[test]
    fn accept_lists_the_type_in_any_case_unless_its_quality_is_zero() {
        assert!(accept_lists("text/csv", "text/csv"));
        assert!(accept_lists("Text/CSV", "text/csv"));
        assert!(accept_lists(
            "application/json;q=0.5, TEXT/csv;q=0.9",
            "text/csv"
        ));
        assert!(!accept_lists("application/json", "text/csv"));
        assert!(!accept_lists("*/*", "text/csv"));
        assert!(!accept_lists("text/csv;q=0", "text/csv"));
        assert!(!accept_lists("text/csv; Q=0.0", "text/csv"));
        let req = TestRequest::default()
            .insert_header((ACCEPT, "application/json"))
            .append_header((ACCEPT, "Text/Csv"))
            .to_http_request();
        assert!(accepts(&req, "text/csv"));
    }
}
