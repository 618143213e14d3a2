//! The admin console at `/console`: sign-in and sign-out, the page shell and its assets (one
//! stylesheet and one script of our own, embedded in the binary; nothing is fetched from
//! anywhere). The pages are drawn in the browser from the same JSON admin API scripts use, with
//! the session cookie instead of a bearer key (`http::auth::AdminAuth`), so every console action
//! is an API call with the API's validation and errors. docs/console.md.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use crate::http::auth;
use crate::http::session;
use crate::http::{ApiError, AppState};

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const SHELL: &str = include_str!("assets/shell.html");
const LOGIN: &str = include_str!("assets/login.html");

/// Scripts and styles only from here, no inline code, no framing, forms only to here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .app_data(
                web::FormConfig::default()
                    .limit(4096)
                    .error_handler(|e, _| ApiError::invalid(e.to_string()).into()),
            )
            .route("", web::get().to(shell))
            .route("/", web::get().to(shell))
            .route("/login", web::get().to(login_page))
            .route("/session", web::post().to(sign_in))
            .route("/signout", web::post().to(sign_out))
            .route("/assets/{name}", web::get().to(asset)),
    );
}

/// Every console response: no caching of pages, the CSP, no sniffing or framing.
fn page(status: StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut r = HttpResponse::build(status);
    r.insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    r.body(body)
}

fn redirect(to: &str) -> HttpResponse {
    let mut r = page(
        StatusCode::SEE_OTHER,
        "text/plain; charset=utf-8",
        String::new(),
    );
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Text for HTML (element content and quoted attribute values).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn login_html(notice: Option<(&str, &str)>) -> String {
    let notice = notice
        .map(|(kind, text)| {
            format!(
                r#"<p class="notice {kind}" role="{}">{}</p>"#,
                if kind == "error" { "alert" } else { "status" },
                esc(text)
            )
        })
        .unwrap_or_default();
    LOGIN.replace("{{notice}}", &notice)
}

async fn login_page(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Ok(Some(_)) = auth::console_session(&state, &req).await {
        return redirect("/console");
    }
    let q = req.query_string();
    let notice = if q.contains("expired") {
        Some(("info", "Your session ended. Sign in again."))
    } else if q.contains("signed_out") {
        Some(("info", "You are signed out."))
    } else {
        None
    };
    page(
        StatusCode::OK,
        "text/html; charset=utf-8",
        login_html(notice),
    )
}

async fn shell(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let s = match auth::console_session(&state, &req).await {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(redirect("/console/login")),
        Err(e) if e.code == crate::http::Code::Unauthorized => {
            return Ok(redirect("/console/login?expired=1"));
        }
        Err(e) => return Err(e),
    };
    let org = state.store.org(&s.org_id).await?;
    let body = SHELL
        .replace("{{csrf}}", &esc(&s.csrf))
        .replace("{{org}}", &esc(&org.name))
        .replace("{{org_id}}", &esc(&org.id));
    Ok(page(StatusCode::OK, "text/html; charset=utf-8", body))
}

#[derive(Deserialize)]
pub struct SignIn {
    key: String,
}

async fn sign_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<SignIn>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    // Login CSRF: another site must not sign a browser in (into the attacker's organisation).
    if auth::cross_site(&req) {
        return Ok(page(
            StatusCode::FORBIDDEN,
            "text/html; charset=utf-8",
            login_html(Some((
                "error",
                "Sign in from this page, not from another site.",
            ))),
        ));
    }
    let key = form.key.trim();
    let opened = if key.is_empty() || key.len() > 512 {
        None
    } else {
        session::sign_in(&state.store, &state.console, key, now).await?
    };
    let Some(opened) = opened else {
        let e = auth::wrong_admin_key(&state, &req, now);
        tracing::info!(
            code = e.code.as_str(),
            "console sign-in with an unknown or revoked admin key"
        );
        let (status, text) = if e.code == crate::http::Code::RateLimited {
            (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many wrong keys from this address. Wait a minute and try again.",
            )
        } else {
            (
                StatusCode::UNAUTHORIZED,
                "That admin key is unknown or revoked.",
            )
        };
        let mut r = page(
            status,
            "text/html; charset=utf-8",
            login_html(Some(("error", text))),
        );
        if let Some(secs) = e.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return Ok(r);
    };
    // A new sign-in replaces the browser's previous session for good.
    if let Ok(Some(old)) = auth::session_secret(&state, &req) {
        session::sign_out(&state.store, old).await?;
    }
    let mut r = redirect("/console");
    let c = session::set_cookie(
        Some(&opened.secret),
        state.secure_cookies,
        opened.expires_at - now,
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&c).map_err(ApiError::internal)?,
    );
    Ok(r)
}

#[derive(Deserialize)]
pub struct SignOut {
    csrf: String,
}

async fn sign_out(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<SignOut>,
) -> Result<HttpResponse, ApiError> {
    if let Some(secret) = auth::session_secret(&state, &req)? {
        // Only the page that holds the session's token can end it (no drive-by sign-outs).
        if auth::cross_site(&req)
            || !crate::crypto::ct_eq(&session::csrf_for(secret), form.csrf.trim())
        {
            return Err(ApiError::new(
                crate::http::Code::CsrfFailed,
                "missing or wrong CSRF token for this console session; reload the page",
            ));
        }
        session::sign_out(&state.store, secret).await?;
    }
    let mut r = redirect("/console/login?signed_out=1");
    let c = session::set_cookie(None, state.secure_cookies, 0);
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&c).map_err(ApiError::internal)?,
    );
    Ok(r)
}

async fn asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (ct, body) = match name.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        _ => return Err(ApiError::not_found("console asset")),
    };
    let mut r = page(StatusCode::OK, ct, body.to_string());
    // Assets change only with the binary; revalidating keeps an upgrade from showing stale code.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn html_text_is_escaped() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
