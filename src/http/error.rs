//! The one place where errors become HTTP responses. Every error body is
//! `{"error":{"code","message","retryable", ...details}}` with a stable `code` (docs/api.md lists
//! them). A 5xx never carries internal text: the cause is logged, the client gets a generic message.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value, json};

use crate::activation::ActivationError;
use crate::store::StoreError;
use crate::tokens::KeyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    UnsupportedMediaType,
    TokenInvalid,
    TokenExpired,
    TokenRevoked,
    TokenExhausted,
    UserNotMapped,
    DeviceNotMapped,
    DeviceConflict,
    UserPreserved,
    UserDeleted,
    DirectoryUnavailable,
    ConnectorUnavailable,
    UserNotFound,
    UserDisabled,
    InvalidCredentials,
    DirectoryError,
    ProtocolVersionUnsupported,
    ConnectorCredentialInvalid,
    Conflict,
    DeviceMapInvalid,
    /// A connector registration key that is used, expired or unknown (not told apart).
    RegistrationKeyInvalid,
    /// An LDAP or Azure AD mapping field failed validation (the body names the field).
    MappingInvalid,
    /// An Azure AD call (test, group search) before `PUT /api/v1/admin/azure`.
    AzureNotConfigured,
    /// A sync setting or profile policy out of range (the body names the field).
    InvalidSetting,
    /// Another sync run of the organization holds the lease.
    SyncInProgress,
    /// No directory mappings to sync.
    SyncNotConfigured,
    /// Approve / reject on a run that is not awaiting approval.
    SyncRunNotPending,
    /// A console request that changes state without the session's CSRF token (or from
    /// another site).
    CsrfFailed,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    /// Keep last: `Code::ALL` is sized by it.
    Internal,
}

impl Code {
    /// Every code, in declaration order (the API description lists them). A new variant must be
    /// added here and to the exhaustive `index`; a unit test checks that the two agree.
    pub const ALL: [Code; Code::Internal as usize + 1] = [
        Code::InvalidRequest,
        Code::Unauthorized,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::UnsupportedMediaType,
        Code::TokenInvalid,
        Code::TokenExpired,
        Code::TokenRevoked,
        Code::TokenExhausted,
        Code::UserNotMapped,
        Code::DeviceNotMapped,
        Code::DeviceConflict,
        Code::UserPreserved,
        Code::UserDeleted,
        Code::DirectoryUnavailable,
        Code::ConnectorUnavailable,
        Code::UserNotFound,
        Code::UserDisabled,
        Code::InvalidCredentials,
        Code::DirectoryError,
        Code::ProtocolVersionUnsupported,
        Code::ConnectorCredentialInvalid,
        Code::Conflict,
        Code::DeviceMapInvalid,
        Code::RegistrationKeyInvalid,
        Code::MappingInvalid,
        Code::AzureNotConfigured,
        Code::InvalidSetting,
        Code::SyncInProgress,
        Code::SyncNotConfigured,
        Code::SyncRunNotPending,
        Code::CsrfFailed,
        Code::PayloadTooLarge,
        Code::RateLimited,
        Code::Unavailable,
        Code::Internal,
    ];

    /// Position in [`Code::ALL`]: the discriminant. `ALL` is sized by `Internal`, which stays
    /// the last variant, so a variant missing from it does not compile; the order is tested.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::Unauthorized => "unauthorized",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::TokenInvalid => "token_invalid",
            Code::TokenExpired => "token_expired",
            Code::TokenRevoked => "token_revoked",
            Code::TokenExhausted => "token_exhausted",
            Code::UserNotMapped => "user_not_mapped",
            Code::DeviceNotMapped => "device_not_mapped",
            Code::DeviceConflict => "device_conflict",
            Code::UserPreserved => "user_preserved",
            Code::UserDeleted => "user_deleted",
            Code::DirectoryUnavailable => "directory_unavailable",
            Code::ConnectorUnavailable => "connector_unavailable",
            Code::UserNotFound => "user_not_found",
            Code::UserDisabled => "user_disabled",
            Code::InvalidCredentials => "invalid_credentials",
            Code::DirectoryError => "directory_error",
            Code::ProtocolVersionUnsupported => "protocol_version_unsupported",
            Code::ConnectorCredentialInvalid => "connector_credential_invalid",
            Code::Conflict => "conflict",
            Code::DeviceMapInvalid => "device_map_invalid",
            Code::RegistrationKeyInvalid => "registration_key_invalid",
            Code::MappingInvalid => "mapping_invalid",
            Code::AzureNotConfigured => "azure_not_configured",
            Code::InvalidSetting => "invalid_setting",
            Code::SyncInProgress => "sync_in_progress",
            Code::SyncNotConfigured => "sync_not_configured",
            Code::SyncRunNotPending => "sync_run_not_pending",
            Code::CsrfFailed => "csrf_failed",
            Code::PayloadTooLarge => "payload_too_large",
            Code::RateLimited => "rate_limited",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized
            | Code::TokenInvalid
            | Code::TokenExpired
            | Code::TokenRevoked
            | Code::InvalidCredentials
            | Code::ConnectorCredentialInvalid
            | Code::RegistrationKeyInvalid => StatusCode::UNAUTHORIZED,
            Code::UserNotFound | Code::UserDisabled | Code::CsrfFailed => StatusCode::FORBIDDEN,
            Code::DirectoryError => StatusCode::BAD_GATEWAY,
            Code::ProtocolVersionUnsupported => StatusCode::UPGRADE_REQUIRED,
            Code::TokenExhausted
            | Code::UserNotMapped
            | Code::DeviceNotMapped
            | Code::UserPreserved
            | Code::UserDeleted => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::DeviceConflict | Code::Conflict | Code::AzureNotConfigured => {
                StatusCode::CONFLICT
            }
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::DeviceMapInvalid | Code::MappingInvalid | Code::InvalidSetting => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Code::SyncInProgress | Code::SyncNotConfigured | Code::SyncRunNotPending => {
                StatusCode::CONFLICT
            }
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable | Code::DirectoryUnavailable | Code::ConnectorUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the same request may succeed later without change.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Code::RateLimited
                | Code::Unavailable
                | Code::DirectoryUnavailable
                | Code::ConnectorUnavailable
                | Code::Internal
        )
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub retry_after: Option<u64>,
    pub details: Map<String, Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let retry_after = match code {
            Code::Unavailable => Some(1),
            Code::DirectoryUnavailable | Code::ConnectorUnavailable => Some(5),
            Code::Internal => Some(5),
            _ => None,
        };
        ApiError {
            code,
            message: message.into(),
            retry_after,
            details: Map::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidRequest, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(Code::NotFound, format!("{what} not found"))
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_detail(mut self, key: &str, value: Value) -> Self {
        self.details.insert(key.into(), value);
        self
    }

    /// An unexpected failure: logged in full here, reported to the client without internals.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(Code::Internal, "internal error; the cause has been logged")
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = Map::new();
        body.insert("code".into(), json!(self.code.as_str()));
        body.insert("message".into(), json!(self.message));
        body.insert("retryable".into(), json!(self.code.retryable()));
        if let Some(id) = super::request_id::current() {
            body.insert("request_id".into(), json!(id));
        }
        for (k, v) in &self.details {
            body.insert(k.clone(), v.clone());
        }
        let mut resp = HttpResponse::build(self.status_code());
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.insert_header((RETRY_AFTER, v));
        }
        resp.json(json!({ "error": body }))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::Unavailable(m) => {
                tracing::warn!(cause = %m, "database unavailable");
                ApiError::new(Code::Unavailable, "the database is busy; retry shortly")
            }
            StoreError::Conflict | StoreError::Retry(_) => ApiError::new(
                Code::Unavailable,
                "a concurrent change got in the way; retry",
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => s.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<ActivationError> for ApiError {
    fn from(e: ActivationError) -> Self {
        let code = match &e {
            ActivationError::InvalidRequest(_) => Code::InvalidRequest,
            ActivationError::TokenInvalid(_) => Code::TokenInvalid,
            ActivationError::TokenExpired => Code::TokenExpired,
            ActivationError::TokenRevoked => Code::TokenRevoked,
            ActivationError::TokenExhausted => Code::TokenExhausted,
            ActivationError::UserNotMapped(_) => Code::UserNotMapped,
            ActivationError::DeviceNotMapped => Code::DeviceNotMapped,
            ActivationError::DeviceConflict(_) => Code::DeviceConflict,
            ActivationError::UserPreserved => Code::UserPreserved,
            ActivationError::UserDeleted => Code::UserDeleted,
            ActivationError::DirectoryUnavailable(m) => {
                tracing::warn!(cause = %m, "directory unavailable");
                Code::DirectoryUnavailable
            }
            ActivationError::UserNotFound(_) => Code::UserNotFound,
            ActivationError::UserDisabled(_) => Code::UserDisabled,
            ActivationError::InvalidCredentials => {
                return ApiError::new(
                    Code::InvalidCredentials,
                    "the login or the password is wrong",
                );
            }
            ActivationError::ConnectorUnavailable(m) => {
                tracing::warn!(cause = %m, "connector unavailable");
                return ApiError::new(
                    Code::ConnectorUnavailable,
                    format!(
                        "the directory connector could not answer: {m}; nothing was written, retry later"
                    ),
                );
            }
            ActivationError::DirectoryError(_) => Code::DirectoryError,
            ActivationError::Unavailable(m) | ActivationError::Contention(m) => {
                tracing::warn!(cause = %m, "activation unavailable");
                return ApiError::new(Code::Unavailable, "the service is busy; retry shortly");
            }
            ActivationError::Internal(m) => return ApiError::internal(m),
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<crate::sync::SyncError> for ApiError {
    fn from(e: crate::sync::SyncError) -> Self {
        use crate::sync::SyncError as S;
        let message = e.to_string();
        match e {
            S::InProgress(id) => {
                ApiError::new(Code::SyncInProgress, message).with_detail("running_id", json!(id))
            }
            S::NotConfigured => ApiError::new(Code::SyncNotConfigured, message),
            S::NotPending(_, _) => ApiError::new(Code::SyncRunNotPending, message),
            S::Invalid(m) => {
                ApiError::new(Code::InvalidSetting, m).with_detail("field", json!("as_of"))
            }
            S::Store(s) => s.into(),
        }
    }
}

/// A directory-mapping write (LDAP or Azure AD): the row, or a 409 naming the mapping that
/// holds the priority or the name.
pub fn mapping_written<T>(w: crate::store::MappingWrite<T>, priority: i64) -> Result<T, ApiError> {
    use crate::store::MappingWrite;
    match w {
        MappingWrite::Written(row) => Ok(*row),
        MappingWrite::PriorityTaken { id, name } => Err(ApiError::new(
            Code::Conflict,
            format!("priority {priority} is already used by mapping {name:?} ({id}); priorities are unique per organization"),
        )
        .with_detail("field", json!("priority"))
        .with_detail("conflicting_mapping_id", json!(id))),
        MappingWrite::NameTaken { id } => Err(ApiError::new(
            Code::Conflict,
            format!("another mapping ({id}) already has this name"),
        )
        .with_detail("field", json!("name"))
        .with_detail("conflicting_mapping_id", json!(id))),
    }
}

/// actix's own extractor failures (bad JSON, oversized body, bad query) in our error shape.
pub fn json_error(err: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as J;
    match err {
        J::OverflowKnownLength { .. } | J::Overflow { .. } => {
            ApiError::new(Code::PayloadTooLarge, "request body is too large")
        }
        J::ContentType => ApiError::new(
            Code::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ),
        other => ApiError::invalid(format!("malformed JSON body: {other}")),
    }
}

pub fn query_error(err: actix_web::error::QueryPayloadError) -> ApiError {
    ApiError::invalid(format!("bad query string: {err}"))
}

pub fn path_error(err: actix_web::error::PathError) -> ApiError {
    ApiError::invalid(format!("bad path: {err}"))
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn all_codes_listed_once_in_order() {
        for (i, c) in Code::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{}", c.as_str());
        }
    }
}
