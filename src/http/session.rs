//! Console sessions: an admin key traded once for a random cookie secret. The database keeps
//! only the secret's SHA-256; the CSRF token is derived from the secret, so nothing else needs
//! storing and a page can only know it if it was served to the session's holder.

use crate::config::ConsoleSettings;
use crate::crypto::{ct_eq, random_secret, sha256_hex};
use crate::store::{Store, StoreError};

/// The cookie's name over plain HTTP; behind TLS it is `__Host-imd_session`, which browsers
/// accept only from this host itself (Secure, `Path=/`, no `Domain`), so a sibling or parent
/// domain cannot plant one.
pub const COOKIE: &str = "imd_session";
const HOST_COOKIE: &str = "__Host-imd_session";

pub fn cookie_name(secure: bool) -> &'static str {
    if secure { HOST_COOKIE } else { COOKIE }
}
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Session secrets start with this, so a leaked one is recognisable.
const SECRET_PREFIX: &str = "imds_";
/// The idle clock is written at most this often per session (not on every request).
const TOUCH_EVERY_SECS: i64 = 60;

/// A session just opened: the cookie value goes to the browser once.
pub struct Opened {
    pub secret: String,
    pub expires_at: i64,
}

/// A request's live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub org_id: String,
    pub csrf: String,
}

/// Why a cookie does not authenticate.
#[derive(Debug)]
pub enum Refused {
    /// Unknown, signed out, or its admin key was revoked.
    Unknown,
    Expired,
    Store(StoreError),
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Store(e)
    }
}

/// The CSRF token of the session whose cookie secret is `secret`.
pub fn csrf_for(secret: &str) -> String {
    sha256_hex(&format!("imd-console-csrf:{secret}"))
}

/// Whether `presented` is the session's CSRF token (constant time).
pub fn csrf_ok(session: &Session, presented: &str) -> bool {
    ct_eq(&session.csrf, presented)
}

/// Opens a session for a live admin key; `None` when the key is unknown or revoked.
#[tracing::instrument(skip_all)]
pub async fn sign_in(
    store: &Store,
    settings: &ConsoleSettings,
    admin_key: &str,
    now: i64,
) -> Result<Option<Opened>, StoreError> {
    let Some((key_id, org_id)) = store.live_admin_key(&sha256_hex(admin_key)).await? else {
        return Ok(None);
    };
    let secret = random_secret(SECRET_PREFIX).map_err(|e| StoreError::Internal(e.to_string()))?;
    let expires_at = now + settings.absolute_timeout_secs as i64;
    store
        .create_console_session(&sha256_hex(&secret), &org_id, &key_id, now, expires_at)
        .await?;
    Ok(Some(Opened { secret, expires_at }))
}

/// The live session a cookie secret names, moving its idle clock on when the request is a use
/// (`used`; the page's own background refreshes are not). The idle clock is written at most
/// once a minute, so a session may end up to a minute before `idle_timeout_secs` of real idleness.
#[tracing::instrument(skip_all)]
pub async fn authenticate(
    store: &Store,
    settings: &ConsoleSettings,
    secret: &str,
    now: i64,
    used: bool,
) -> Result<Session, Refused> {
    if !secret.starts_with(SECRET_PREFIX) || secret.len() > 128 {
        return Err(Refused::Unknown);
    }
    let hash = sha256_hex(secret);
    let row = store
        .console_session(&hash)
        .await?
        .ok_or(Refused::Unknown)?;
    let idle = settings.idle_timeout_secs as i64;
    if now >= row.expires_at || now >= row.last_seen_at + idle {
        // Gone for good: the next sign-in starts afresh.
        store.delete_console_session(&hash).await?;
        return Err(Refused::Expired);
    }
    if used && now - row.last_seen_at >= TOUCH_EVERY_SECS.min(idle / 2) {
        store.touch_console_session(&hash, now).await?;
    }
    Ok(Session {
        org_id: row.org_id,
        csrf: csrf_for(secret),
    })
}

/// Ends the session (sign out); unknown secrets are ignored.
pub async fn sign_out(store: &Store, secret: &str) -> Result<(), StoreError> {
    store.delete_console_session(&sha256_hex(secret)).await
}

/// The `Set-Cookie` value that hands the browser its session (or, with `None`, removes it).
/// `Path=/`: the console's pages call the JSON API under `/api/v1`.
pub fn set_cookie(secret: Option<&str>, secure: bool, max_age: i64) -> String {
    let name = cookie_name(secure);
    let flag = if secure { "; Secure" } else { "" };
    match secret {
        Some(s) => {
            format!("{name}={s}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{flag}")
        }
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{flag}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_token_is_bound_to_its_session() {
        let a = csrf_for("imds_a");
        assert_eq!(a, csrf_for("imds_a"));
        assert_ne!(a, csrf_for("imds_b"));
        assert!(!a.contains("imds_a"));
    }

    #[test]
    fn cookie_is_http_only_strict_and_secure_only_with_tls() {
        let c = set_cookie(Some("imds_x"), false, 60);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        let tls = set_cookie(Some("imds_x"), true, 60);
        assert!(tls.starts_with("__Host-imd_session=") && tls.ends_with("; Secure"));
        assert!(set_cookie(None, true, 0).contains("Max-Age=0"));
    }
}
