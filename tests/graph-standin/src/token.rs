//! `POST /{tenant}/oauth2/v2.0/token`: the client-credentials grant of the v2.0 endpoint, with
//! the identity platform's error bodies (§1 of the note).

use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::odata::aad_timestamp;
use crate::state::{Control, Directory, IssuedToken};

/// An identity-platform error, rendered as the §1 JSON body.
pub(crate) struct AadError {
    pub status: u16,
    pub error: &'static str,
    pub code: Option<u32>,
    pub description: String,
}

impl AadError {
    fn new(status: u16, error: &'static str, code: u32, description: String) -> AadError {
        AadError {
            status,
            error,
            code: Some(code),
            description: format!("AADSTS{code}: {description}"),
        }
    }

    pub fn into_response(
        self,
        authority: &str,
        correlation_id: &str,
        headers: &[(String, String)],
    ) -> HttpResponse {
        let trace_id = uuid::Uuid::new_v4().to_string();
        let ts = aad_timestamp(OffsetDateTime::now_utc());
        let mut body = json!({
            "error": self.error,
            "error_description": format!(
                "{}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {ts}",
                self.description
            ),
            "error_codes": self.code.map(|c| vec![c]).unwrap_or_default(),
            "timestamp": ts,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
        });
        if let Some(c) = self.code {
            body["error_uri"] = Value::from(format!("{authority}/error?code={c}"));
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut b = HttpResponse::build(status);
        b.insert_header(("x-ms-request-id", trace_id.as_str()));
        for (k, v) in headers {
            b.insert_header((k.as_str(), v.as_str()));
        }
        b.insert_header(("Cache-Control", "no-store, no-cache"))
            .insert_header(("Pragma", "no-cache"))
            .content_type("application/json; charset=utf-8")
            .body(body.to_string())
    }
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok() && s.len() == 36
}

fn is_dns_name(s: &str) -> bool {
    s.contains('.')
        && s.split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

/// Basic client authentication (RFC 6749 §2.3.1): `base64(urlenc(id):urlenc(secret))`.
fn basic_credentials(auth: Option<&str>) -> Option<(String, String)> {
    let b64 = auth?.strip_prefix("Basic ")?;
    let raw = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let dec = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((dec(id), dec(secret)))
}

pub(crate) struct TokenRequest<'a> {
    pub tenant: &'a str,
    pub content_type: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
}

/// Validates the request and issues a token, or says why not.
pub(crate) fn issue(
    req: &TokenRequest,
    dir: &Directory,
    ctl: &mut Control,
) -> Result<Value, AadError> {
    let tenant = req.tenant.to_lowercase();
    if tenant == "common" || tenant == "consumers" || tenant == "organizations" {
        return Err(AadError::new(
            400,
            "invalid_request",
            9001023,
            "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.".into(),
        ));
    }
    if !is_guid(&tenant) && !is_dns_name(&tenant) {
        return Err(AadError::new(
            400,
            "invalid_request",
            900023,
            format!(
                "Specified tenant identifier '{}' is neither a valid DNS name, nor a valid external domain.",
                req.tenant
            ),
        ));
    }
    if tenant != dir.tenant_id && !dir.domains.contains(&tenant) {
        return Err(AadError::new(
            400,
            "invalid_tenant",
            90002,
            format!(
                "Tenant '{}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.",
                req.tenant
            ),
        ));
    }
    let form_ok = req.content_type.is_some_and(|c| {
        c.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let mut fields: Vec<(String, String)> = if form_ok {
        form_urlencoded::parse(req.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    } else {
        Vec::new()
    };
    if let Some((id, secret)) = basic_credentials(req.authorization) {
        fields.push(("client_id".into(), id));
        fields.push(("client_secret".into(), secret));
    }
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let missing = |name: &str| {
        AadError::new(
            400,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    let grant = get("grant_type").ok_or_else(|| missing("grant_type"))?;
    if grant != "client_credentials" {
        return Err(AadError::new(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant}'."),
        ));
    }
    let client_id = get("client_id").ok_or_else(|| missing("client_id"))?;
    let scope = get("scope").ok_or_else(|| missing("scope"))?;
    let secret = get("client_secret").ok_or_else(|| missing("client_secret"))?;
    if !client_id.eq_ignore_ascii_case(&dir.client_id) {
        return Err(AadError::new(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                req.tenant
            ),
        ));
    }
    let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
    if scopes.len() != 1 || !scopes[0].ends_with("/.default") {
        return Err(AadError::new(
            400,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    }
    if secret != dir.client_secret {
        return Err(AadError::new(
            401,
            "invalid_client",
            7000215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                dir.client_id
            ),
        ));
    }
    if ctl.secret_expired {
        return Err(AadError::new(
            401,
            "invalid_client",
            7000222,
            format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                dir.client_id
            ),
        ));
    }
    let lifetime = ctl.token_lifetime;
    let perms = ctl.perms.clone();
    let token = mint(dir, scopes[0], lifetime, &perms);
    ctl.tokens.insert(
        token.clone(),
        IssuedToken {
            expires_at: Instant::now() + Duration::from_secs(lifetime),
            revoked: false,
            perms,
        },
    );
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    }))
}

/// A JWT-shaped access token (unsigned: the signature part is random). The payload carries the
/// usual app-only claims; `roles` lists the granted application permissions and is absent when
/// none are granted, as with a real token issued before admin consent.
fn mint(dir: &Directory, scope: &str, lifetime: u64, perms: &[String]) -> String {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let aud = scope.strip_suffix("/.default").unwrap_or(scope);
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "graph-standin"});
    let mut claims = json!({
        "aud": aud,
        "iss": format!("https://sts.windows.net/{}/", dir.tenant_id),
        "iat": now,
        "nbf": now,
        "exp": now + i64::try_from(lifetime).unwrap_or(i64::MAX / 2),
        "appid": dir.client_id,
        "idtyp": "app",
        "tid": dir.tenant_id,
        "oid": uuid::Uuid::new_v4().to_string(),
        "uti": uuid::Uuid::new_v4().simple().to_string(),
        "ver": "1.0",
    });
    if !perms.is_empty() {
        claims["roles"] = json!(perms);
    }
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
    )
}
