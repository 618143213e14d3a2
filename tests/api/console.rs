//! The admin console: sessions, CSRF and expiry over plain HTTP, and a walk through every page in
//! real headless Chromium (tests/api/browser.rs), which also takes docs/console.md's screenshots.

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use imd::clock::Clock;

use crate::browser::Browser;
use crate::helpers::{HEADER, TestApp, activation, error_code, spawn_app};

/// An `application/x-www-form-urlencoded` body, as a browser's form sends it.
fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

trait FormExt {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormExt for reqwest::RequestBuilder {
    fn form_body(self, pairs: &[(&str, &str)]) -> Self {
        self.header("Content-Type", "application/x-www-form-urlencoded")
            .body(form(pairs))
    }
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A GET carrying `cookie`, redirects not followed.
async fn get_with_cookie(url: impl reqwest::IntoUrl, cookie: impl AsRef<str>) -> reqwest::Response {
    no_redirects()
        .get(url)
        .header(COOKIE, cookie.as_ref())
        .send()
        .await
        .unwrap()
}

/// Signs in through the form; returns the `imd_session=...` cookie pair.
async fn sign_in(app: &TestApp, key: &str) -> reqwest::Response {
    no_redirects()
        .post(app.url("/console/session"))
        .form_body(&[("key", key)])
        .send()
        .await
        .unwrap()
}

async fn session_cookie(app: &TestApp) -> String {
    let r = sign_in(app, &app.admin_key).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/console");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    set.split(';').next().unwrap().to_string()
}

/// The CSRF token the console page of this session carries.
async fn csrf_of(app: &TestApp, cookie: &str) -> String {
    let html = get_with_cookie(app.url("/console"), cookie)
        .await
        .text()
        .await
        .unwrap();
    csrf_in(&html)
}

/// The CSRF token in a console page's `<meta name="csrf-token">`.
pub fn csrf_in(html: &str) -> String {
    let marker = "name=\"csrf-token\" content=\"";
    let at = html.find(marker).expect("csrf meta") + marker.len();
    let len = html[at..].find('"').unwrap();
    html[at..at + len].to_string()
}

async fn with_cookie(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = no_redirects()
        .request(method, app.url(path))
        .header(COOKIE, cookie);
    if let Some(t) = csrf {
        r = r.header("X-CSRF-Token", t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn console_session_cookie_is_http_only_strict_and_keeps_no_key() {
    let app = spawn_app().await;
    let r = sign_in(&app, &app.admin_key).await;
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(set.starts_with("imd_session=imds_"), "{set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    // Plain HTTP here: Secure would make the browser drop the cookie.
    assert!(!set.contains("Secure"), "{set}");
    assert!(!set.contains(&app.admin_key));
    let cookie = set.split(';').next().unwrap().to_string();
    let page = get_with_cookie(app.url("/console"), &cookie).await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    assert!(!html.contains(&app.admin_key));
    assert!(html.contains("Test Org"));
    // The stored session is a hash, never the cookie's secret.
    let secret = cookie.trim_start_matches("imd_session=");
    assert!(app.store.console_session(secret).await.unwrap().is_none());
    assert!(
        app.store
            .console_session(&imd::crypto::sha256_hex(secret))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn console_with_tls_sets_secure_cookies() {
    let app = crate::helpers::spawn_app_with(&[("public_url", "https://imd.example.com")]).await;
    let r = sign_in(&app, &app.admin_key).await;
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    // `__Host-`: only this host can set it, so a sibling domain cannot plant a session.
    assert!(set.starts_with("__Host-imd_session=imds_"), "{set}");
    assert!(set.ends_with("; Secure"), "{set}");
    let pair = set.split(';').next().unwrap().to_string();
    let r = get_with_cookie(app.url("/api/v1/admin/org"), &pair).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The plain name is not read on a TLS deployment.
    let plain = pair.replace("__Host-", "");
    let r = get_with_cookie(app.url("/api/v1/admin/org"), &plain).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn console_sign_in_from_another_site_is_refused() {
    let app = spawn_app().await;
    for (header, value) in [
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Site", "same-site"),
        ("Origin", "https://evil.example"),
    ] {
        let r = no_redirects()
            .post(app.url("/console/session"))
            .header(header, value)
            .form_body(&[("key", &app.admin_key)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{header}: {value}");
        assert!(!r.headers().contains_key(SET_COOKIE), "{header}: {value}");
    }
    // The console's own form: same origin.
    let host = app.addr.trim_start_matches("http://").to_string();
    for (header, value) in [
        ("Sec-Fetch-Site", "same-origin".to_string()),
        ("Origin", app.addr.clone()),
    ] {
        let r = no_redirects()
            .post(app.url("/console/session"))
            .header(header, &value)
            .header("Host", &host)
            .form_body(&[("key", &app.admin_key)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{header}: {value}");
    }
}

#[tokio::test]
async fn console_session_edge_cases() {
    let app = spawn_app().await;
    let get = |cookie: String, background: bool| {
        let app = &app;
        async move {
            let mut r = no_redirects()
                .get(app.url("/api/v1/admin/org"))
                .header(COOKIE, cookie);
            if background {
                r = r.header("X-Imd-Background", "1");
            }
            r.send().await.unwrap().status()
        }
    };
    // A new sign-in ends the browser's previous session.
    let first = session_cookie(&app).await;
    let r = no_redirects()
        .post(app.url("/console/session"))
        .header(COOKIE, &first)
        .form_body(&[("key", &app.admin_key)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(get(first.clone(), false).await, StatusCode::UNAUTHORIZED);

    // The page's own refreshes do not keep a session alive.
    let idle = session_cookie(&app).await;
    for _ in 0..3 {
        app.clock.advance(9 * 60);
        assert_eq!(get(idle.clone(), true).await, StatusCode::OK);
    }
    app.clock.advance(4 * 60);
    assert_eq!(get(idle, true).await, StatusCode::UNAUTHORIZED);

    // Two different session cookies in one request authenticate nothing.
    let a = session_cookie(&app).await;
    let b = session_cookie(&app).await;
    assert_eq!(
        get(format!("{a}; {b}"), false).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(format!("{a}; {a}"), false).await, StatusCode::OK);

    // Same-site (a sibling subdomain) is another site for state changes.
    let csrf = csrf_of(&app, &a).await;
    let r = no_redirects()
        .post(app.url("/api/v1/admin/tokens"))
        .header(COOKIE, &a)
        .header("X-CSRF-Token", &csrf)
        .header("Sec-Fetch-Site", "same-site")
        .json(&json!({"version": "v4", "name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "csrf_failed");
}

#[tokio::test]
async fn a_disabled_console_serves_nothing_and_honours_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::spawn_app_in(dir, &[]).await;
    let cookie = session_cookie(&app).await;
    assert_eq!(
        with_cookie(
            &app,
            reqwest::Method::GET,
            "/api/v1/admin/org",
            &cookie,
            None,
            None
        )
        .await
        .status(),
        StatusCode::OK
    );
    // The same database, served with the console turned off.
    let mut settings = app.settings.clone();
    settings.console.enabled = false;
    let off = imd::startup::Application::build(settings, std::sync::Arc::new(app.clock.clone()))
        .await
        .unwrap();
    let base = format!("http://{}", off.addr());
    tokio::spawn(off.run_until_stopped());
    let r = get_with_cookie(format!("{base}/api/v1/admin/org"), &cookie).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = no_redirects()
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn console_requests_that_change_state_need_the_csrf_token() {
    let app = spawn_app().await;
    let cookie = session_cookie(&app).await;
    let csrf = csrf_of(&app, &cookie).await;
    let mint = json!({"version": "v4", "name": "console"});
    use reqwest::Method;

    // Reads work with the cookie alone.
    let r = get_with_cookie(app.url("/api/v1/admin/tokens"), &cookie).await;
    assert_eq!(r.status(), StatusCode::OK);

    for bad in [None, Some("0".repeat(64)), Some(csrf[..63].to_string())] {
        let r = with_cookie(
            &app,
            Method::POST,
            "/api/v1/admin/tokens",
            &cookie,
            bad.as_deref(),
            Some(mint.clone()),
        )
        .await;
        let (status, code, _) = error_code(r).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "csrf_failed")
        );
    }
    // A cross-site request is refused even with the right token.
    let r = no_redirects()
        .post(app.url("/api/v1/admin/tokens"))
        .header(COOKIE, &cookie)
        .header("X-CSRF-Token", &csrf)
        .header("Sec-Fetch-Site", "cross-site")
        .json(&mint)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "csrf_failed");
    assert!(
        app.list("/api/v1/admin/tokens").await.is_empty(),
        "nothing was minted"
    );

    let r = with_cookie(
        &app,
        Method::POST,
        "/api/v1/admin/tokens",
        &cookie,
        Some(&csrf),
        Some(mint.clone()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // Another session's token does not fit this one.
    let other = session_cookie(&app).await;
    let r = with_cookie(
        &app,
        Method::POST,
        "/api/v1/admin/tokens",
        &other,
        Some(&csrf),
        Some(mint),
    )
    .await;
    assert_eq!(error_code(r).await.1, "csrf_failed");

    // Sign-out is a state change too.
    let r = no_redirects()
        .post(app.url("/console/signout"))
        .header(COOKIE, &cookie)
        .form_body(&[("csrf", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = get_with_cookie(app.url("/api/v1/admin/tokens"), &cookie).await;
    assert_eq!(r.status(), StatusCode::OK, "the session survived");
    let r = no_redirects()
        .post(app.url("/console/signout"))
        .header(COOKIE, &cookie)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = get_with_cookie(app.url("/api/v1/admin/tokens"), &cookie).await;
    assert_eq!(error_code(r).await.1, "unauthorized");
}

#[tokio::test]
async fn console_sessions_expire_when_idle_at_their_limit_and_with_their_key() {
    let app = spawn_app().await;
    let get = |cookie: String| {
        let app = &app;
        async move {
            get_with_cookie(app.url("/api/v1/admin/org"), &cookie)
                .await
                .status()
        }
    };

    // Idle: 30 minutes without a request.
    let idle = session_cookie(&app).await;
    app.clock.advance(29 * 60);
    assert_eq!(get(idle.clone()).await, StatusCode::OK);
    app.clock.advance(29 * 60);
    assert_eq!(
        get(idle.clone()).await,
        StatusCode::OK,
        "use moved the idle clock"
    );
    app.clock.advance(31 * 60);
    assert_eq!(get(idle.clone()).await, StatusCode::UNAUTHORIZED);
    let r = get_with_cookie(app.url("/console"), &idle).await;
    assert_eq!(r.headers()[LOCATION], "/console/login?expired=1");

    // Absolute: 12 hours after sign-in, however busy.
    let busy = session_cookie(&app).await;
    for _ in 0..((12 * 60) / 20 - 1) {
        app.clock.advance(20 * 60);
        assert_eq!(get(busy.clone()).await, StatusCode::OK);
    }
    app.clock.advance(21 * 60);
    assert_eq!(get(busy).await, StatusCode::UNAUTHORIZED);

    // Revoking the admin key ends the sessions it opened.
    let r = app
        .admin_post("/api/v1/admin/admin-keys", &json!({"name": "second"}))
        .await;
    let second: Value = r.json().await.unwrap();
    let key2 = second["key"].as_str().unwrap();
    let r = sign_in(&app, key2).await;
    let cookie = r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(get(cookie.clone()).await, StatusCode::OK);
    let id = second["id"].as_str().unwrap();
    let r = app
        .post_as(
            &format!("/api/v1/admin/admin-keys/{id}/revoke"),
            &app.admin_key,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(cookie).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn wrong_admin_keys_are_rate_limited_on_the_api_and_the_console_alike() {
    let app =
        crate::helpers::spawn_app_with(&[("limits.admin_auth_failures_per_minute", "5")]).await;
    // Pin the clock inside one minute window.
    let now = app.clock.now();
    app.clock.advance(60 - now.rem_euclid(60) + 1);
    for _ in 0..3 {
        let r = app.get_as("/api/v1/admin/org", "imd_adm_wrong").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    for _ in 0..2 {
        let r = sign_in(&app, "imd_adm_wrong").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.text().await.unwrap().contains("unknown or revoked"));
    }
    // Both kinds count against one budget per address.
    let r = sign_in(&app, "imd_adm_wrong").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let (status, code, _) =
        error_code(app.get_as("/api/v1/admin/org", "imd_adm_wrong").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    // The right key is never locked out by someone else's wrong ones from the same address.
    assert_eq!(
        sign_in(&app, &app.admin_key).await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        app.admin_get("/api/v1/admin/org").await.status(),
        StatusCode::OK
    );
    // The next minute starts afresh.
    app.clock.advance(60);
    let r = app.get_as("/api/v1/admin/org", "imd_adm_wrong").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn overview_counts_rollout_activity_and_failures() {
    let app = spawn_app().await;
    let token = app
        .token_with(json!({"version": "v4", "name": "Berlin"}))
        .await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-A,serial-number,SER-A,,\nb@corp.example.com,b,WS-B,serial-number,SER-B,,\n"
    ))
    .await;
    app.activate_ok(&activation(&token, "SER-A", "WS-A", "a"))
        .await;
    let r = app
        .activate(&activation(&token, "SER-NOPE", "WS-Z", "z"))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .activate(&activation("not-a-token", "S", "H", "x"))
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Failed attempts are written in batches; wait for them.
    let mut o = Value::Null;
    for _ in 0..50 {
        o = app
            .admin_get("/api/v1/admin/overview")
            .await
            .json()
            .await
            .unwrap();
        if o["activity"]["totals"]["failed"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let t = &o["rollout"]["tokens"][0];
    assert_eq!(t["name"], "Berlin");
    assert_eq!(
        (t["activated"].as_i64(), t["expected"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(o["rollout"]["pending"]["device_map"], 1);
    let totals = &o["activity"]["totals"];
    assert_eq!(
        (totals["activated"].as_i64(), totals["failed"].as_i64()),
        (Some(1), Some(1)),
        "{o}"
    );
    assert_eq!(o["activity"]["buckets"].as_array().unwrap().len(), 24);
    // It landed in the last bucket: the current hour.
    let buckets = o["activity"]["buckets"].as_array().unwrap();
    let last = buckets.last().unwrap();
    assert_eq!(last["activated"], 1, "{last}");
    let start = imd::clock::parse_rfc3339(last["start"].as_str().unwrap()).unwrap();
    let now = app.clock.now();
    assert!(start <= now && now < start + 3_600, "{last}");
    // The unknown token has no organization: it is not this admin's failure.
    let f = &o["top_failures"][0];
    assert_eq!(f["code"], "device_not_mapped", "{o}");
    assert_eq!(f["count"], 1);
    assert_eq!(f["recent_devices"][0]["serial"], "SER-NOPE");
    let month: Value = app
        .admin_get("/api/v1/admin/overview?window=30d")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(month["activity"]["buckets"].as_array().unwrap().len(), 30);
    assert_eq!(month["activity"]["totals"]["activated"], 1);
    let (status, code, _) =
        error_code(app.admin_get("/api/v1/admin/overview?window=1y").await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // A day later the hour view is empty; the month view still counts it.
    app.clock.advance(86_400 + 3_600);
    let o: Value = app
        .admin_get("/api/v1/admin/overview")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(o["activity"]["totals"]["activated"], 0);
}

#[tokio::test]
async fn device_user_and_audit_lists_filter() {
    let app = spawn_app().await;
    let token = app.token().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,Alice,WS-A,serial-number,SER-A,,\nb@corp.example.com,Bob,LAPTOP-B,serial-number,SER-B,,\n"
    ))
    .await;
    let (_, a) = app
        .activate_ok(&activation(&token, "SER-A", "WS-A", "a"))
        .await;
    let mut mac = activation(&token, "SER-B", "LAPTOP-B", "b");
    mac["device"]["os"] = json!("macos");
    app.activate_ok(&mac).await;
    app.clock.advance(3_600);

    let names = |items: Vec<Value>| -> Vec<String> {
        items
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(app.list("/api/v1/admin/devices?q=lap").await),
        ["LAPTOP-B"]
    );
    assert_eq!(
        names(app.list("/api/v1/admin/devices?q=ser-a").await),
        ["WS-A"]
    );
    assert_eq!(
        names(app.list("/api/v1/admin/devices?os=MacOS").await),
        ["LAPTOP-B"]
    );
    assert_eq!(
        app.list("/api/v1/admin/devices?source=device_map")
            .await
            .len(),
        2
    );
    assert!(
        app.list("/api/v1/admin/devices?source=ldap")
            .await
            .is_empty()
    );
    // Wildcards in a search term are literal characters.
    assert!(app.list("/api/v1/admin/devices?q=%25").await.is_empty());
    assert!(
        app.list("/api/v1/admin/devices?q=ws_").await.is_empty(),
        "_ is not a wildcard"
    );
    assert_eq!(
        names(app.list("/api/v1/admin/devices?q=ws-").await),
        ["WS-A"]
    );
    let later = imd::clock::rfc3339(app.clock.now());
    assert!(
        app.list(&format!("/api/v1/admin/devices?seen_after={later}"))
            .await
            .is_empty()
    );
    assert_eq!(
        app.list(&format!("/api/v1/admin/devices?seen_before={later}"))
            .await
            .len(),
        2
    );
    let (status, code, _) = error_code(
        app.admin_get("/api/v1/admin/devices?seen_after=yesterday")
            .await,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );

    let users = app.list("/api/v1/admin/users?q=ali").await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["email"], "a@corp.example.com");

    let r = app
        .activate(&activation(&token, "SER-X", "WS-X", "x"))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let mut failed = Vec::new();
    for _ in 0..50 {
        failed = app.list("/api/v1/admin/activations?outcome=failed").await;
        if !failed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["serial"], "SER-X");
    let uid = a["user_id"].as_str().unwrap();
    let mine = app
        .list(&format!("/api/v1/admin/activations?user_id={uid}"))
        .await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["outcome"], "activated");
    // The two activations happened an hour before the failure.
    let cut = imd::clock::rfc3339(app.clock.now() - 60);
    let early = app
        .list(&format!("/api/v1/admin/activations?until={cut}"))
        .await;
    assert_eq!(early.len(), 2);
    assert!(early.iter().all(|a| a["outcome"] == "activated"));
    let late = app
        .list(&format!("/api/v1/admin/activations?since={cut}"))
        .await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["serial"], "SER-X");
    let tid = failed[0]["token_id"].as_str().unwrap();
    assert_eq!(
        app.list(&format!("/api/v1/admin/activations?token_id={tid}"))
            .await
            .len(),
        3
    );
}

/// Every form control on the page has a label a screen reader announces, and every button a name.
async fn assert_labelled(b: &Browser) {
    let unlabelled = b
        .exec(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
               .filter((e) => e.offsetParent !== null || e.type === 'file')
               .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                              && !(e.tagName === 'BUTTON' && e.textContent.trim()))
               .map((e) => e.outerHTML.slice(0, 120))",
            json!([]),
        )
        .await;
    assert_eq!(
        unlabelled,
        json!([]),
        "controls without a label on {}",
        b.url().await
    );
}

/// A screenshot for docs/console.md, and the labels check, of the page as it is now.
async fn shot(b: &Browser, name: &str) {
    b.screenshot(name).await;
    assert_labelled(b).await;
}

/// Signs the browser in through the form and waits for the overview.
async fn browser_sign_in(b: &Browser, app: &TestApp) {
    b.goto(&app.url("/console/login")).await;
    b.type_into("#key", &app.admin_key).await;
    b.click("#sign-in").await;
    b.wait_text("main h1", "Overview").await;
}

/// The walk an admin takes: sign in, mint a token, upload a CSV with a bad row and see the error
/// table, watch the overview count an activation, revoke a device, sign out.
#[tokio::test]
async fn console_in_a_real_browser() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    b.goto(&app.url("/console")).await;
    b.find("#key").await;
    assert!(
        b.url().await.ends_with("/console/login"),
        "{}",
        b.url().await
    );
    shot(&b, "sign-in").await;

    // A wrong key: an error, still on the sign-in page.
    b.type_into("#key", "imd_adm_wrong").await;
    b.click("#sign-in").await;
    b.wait_text(".notice.error", "unknown or revoked").await;

    b.type_into("#key", &app.admin_key).await;
    b.click("#sign-in").await;
    b.wait_text("main h1", "Overview").await;
    b.wait_text("main", "No tokens yet").await;
    // The key is nowhere the page's scripts can read, and the cookie is not readable either.
    let stored = b
        .exec(
            "return JSON.stringify([document.cookie, Object.entries(localStorage), Object.entries(sessionStorage), document.documentElement.outerHTML.length])",
            json!([]),
        )
        .await;
    assert!(!stored.as_str().unwrap().contains("imd_adm_"), "{stored}");
    assert!(
        !stored.as_str().unwrap().contains("imd_session"),
        "{stored}"
    );
    let html = b
        .exec("return document.documentElement.outerHTML", json!([]))
        .await;
    assert!(!html.as_str().unwrap().contains(&app.admin_key));
    let cookies = b.cookies().await;
    let c = cookies
        .iter()
        .find(|c| c["name"] == "imd_session")
        .expect("session cookie");
    assert_eq!(c["httpOnly"], true);
    assert_eq!(c["sameSite"], "Strict");

    // Tokens: mint, and the copy-once dialog.
    b.click("a[data-page=tokens]").await;
    b.wait_text("main h1", "Tokens").await;
    b.type_into("#mint-name", "Berlin laptops").await;
    b.click("#mint-submit").await;
    let token = {
        b.find("dialog #secret-value").await;
        b.value("dialog #secret-value").await
    };
    assert!(token.starts_with("eyJ"), "{token}");
    b.wait_text("dialog", "only time the token is shown").await;
    b.screenshot("tokens-minted").await;
    b.click_button("dialog", "Done").await;
    b.wait_text("main table", "Berlin laptops").await;
    shot(&b, "tokens").await;
    let listed = app.list("/api/v1/admin/tokens").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "Berlin laptops");

    // Device maps: a file with a bad row; the error table names it; apply the good rows.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("berlin.csv");
    std::fs::write(
        &csv,
        format!(
            "{HEADER}alice@corp.example.com,Alice,WS-ALICE,serial-number,SER-ALICE,,\nnot-an-email,Bob,WS-BOB,serial-number,SER-BOB,,\ncarol@corp.example.com,Carol,WS-CAROL,serial-number,SER-CAROL,,\n"
        ),
    )
    .unwrap();
    b.click("a[data-page=device-maps]").await;
    b.wait_text("main h1", "Device maps").await;
    b.choose_file("#csv-file", &csv).await;
    b.wait_text("#upload-summary", "3 rows, 2 valid, 1 invalid")
        .await;
    let errors = b.text("#row-errors").await;
    assert!(
        errors.contains("3") && errors.contains("emailID"),
        "{errors}"
    );
    assert!(b.exists("#download-failures").await);
    shot(&b, "device-maps-errors").await;
    assert!(
        app.list("/api/v1/admin/device-mappings").await.is_empty(),
        "the dry run wrote nothing"
    );
    b.click("#apply").await;
    b.wait_text("#applied", "2 new").await;
    b.wait_text("main .list table", "alice@corp.example.com")
        .await;
    assert_eq!(app.list("/api/v1/admin/device-mappings").await.len(), 2);

    // Overview: an activation shows up without reloading the page.
    b.click("a[data-page=overview]").await;
    b.wait_text("#activity-totals", "0 activated").await;
    b.wait_text("#rollout", "0 of 2 activated").await;
    app.activate_ok(&activation(&token, "SER-ALICE", "WS-ALICE", "alice"))
        .await;
    b.wait_text("#activity-totals", "1 activated").await;
    b.wait_text("#rollout", "1 of 2 activated").await;
    shot(&b, "overview").await;

    // Devices: the list, the detail page with its history, revoke.
    b.click("a[data-page=devices]").await;
    b.wait_text("main table", "WS-ALICE").await;
    shot(&b, "devices").await;
    b.click("main table a").await;
    b.wait_text("main h1", "WS-ALICE").await;
    b.wait_text("main", "Activation history").await;
    b.wait_text("main section:last-of-type table", "activated")
        .await;
    shot(&b, "device-detail").await;
    b.click("#revoke-device").await;
    b.click_button("dialog", "Revoke").await;
    b.wait_text("#banner", "revoked").await;
    let devices = app.list("/api/v1/admin/devices").await;
    assert_eq!(devices[0]["status"], "revoked");

    b.click("a[data-page=users]").await;
    b.wait_text("main table", "alice@corp.example.com").await;
    shot(&b, "users").await;
    b.click("a[data-page=audit]").await;
    b.wait_text("main table", "activated").await;
    shot(&b, "audit").await;
    b.click("a[data-page=directories]").await;
    b.wait_text("main", "Directory sync").await;
    shot(&b, "directories").await;

    // Sign out: back at sign-in, and the session is gone for the API too.
    let session = b
        .cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == "imd_session")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    b.click("#sign-out").await;
    b.wait_text(".notice", "signed out").await;
    let r = get_with_cookie(
        app.url("/api/v1/admin/org"),
        format!("imd_session={session}"),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the server ended the session"
    );
    b.goto(&app.url("/console")).await;
    b.find("#key").await;
    b.quit().await;
}

#[tokio::test]
async fn console_session_expiry_sends_the_browser_back_to_sign_in() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    browser_sign_in(&b, &app).await;
    app.clock.advance(31 * 60);
    b.click("a[data-page=users]").await;
    b.wait_text(".notice", "Your session ended").await;
    assert!(b.url().await.contains("/console/login?expired=1"));
    b.quit().await;
}

#[tokio::test]
async fn console_fits_a_phone() {
    let Some(b) = Browser::start_sized(390, 844).await else {
        return;
    };
    let app = spawn_app().await;
    app.token().await;
    browser_sign_in(&b, &app).await;
    // The menu folds behind a button and opens with it.
    let shown =
        "const n = document.getElementById('nav'); return getComputedStyle(n).display !== 'none';";
    assert_eq!(b.exec(shown, json!([])).await, json!(false));
    b.click(".menu-toggle").await;
    assert_eq!(b.exec(shown, json!([])).await, json!(true));
    b.click("a[data-page=tokens]").await;
    b.wait_text("main table", "test").await;
    let wide = b
        .exec(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            json!([]),
        )
        .await;
    assert_eq!(wide, json!(true), "no sideways scrolling on a phone");
    b.screenshot("phone-tokens").await;
    b.quit().await;
}

/// The directories page against a real OpenLDAP through a real connector: the connector shows
/// connected, the directory browser walks the OUs and fills in the base DN, the mapping is added,
/// and a dry-run sync shows up among the runs.
#[tokio::test]
async fn console_directories_page_browses_a_real_directory() {
    use crate::imd_v2::{Kind, dir, start_connector};
    let Some(d) = dir(Kind::OpenLdap) else {
        return;
    };
    let Some(b) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    let _c = start_connector(&app, &d, "hq-dc01").await;
    browser_sign_in(&b, &app).await;
    b.wait_text("main", "hq-dc01").await;
    b.click("a[data-page=directories]").await;
    b.wait_text("main table", "connected").await;

    b.click("#browse-directory").await;
    b.wait_text("#dir-browser", &d.base).await;
    b.click("#dir-browser .tree button[aria-expanded]").await;
    // The first OU below the base: pick it for the mapping.
    b.find("#dir-browser .tree .tree button.link").await;
    let ou = b
        .exec(
            "const b = document.querySelector('#dir-browser .tree .tree button.link'); b.click(); return b.textContent",
            json!([]),
        )
        .await
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ou.to_lowercase().ends_with(&d.base.to_lowercase()) && ou.len() > d.base.len(),
        "{ou} below {}",
        d.base
    );
    assert_eq!(b.value("#ldap-base_dn").await, ou);
    b.type_into("#ldap-name", "staff").await;
    b.type_into("#ldap-priority", "10").await;
    b.click_button("main form", "Add mapping").await;
    b.wait_text("main", "staff").await;
    let mappings = app.list("/api/v1/admin/ldap-mappings").await;
    assert_eq!(mappings.len(), 1, "{mappings:?}");
    assert_eq!(mappings[0]["base_dn"], ou.as_str());
    assert_labelled(&b).await;

    // A dry-run sync from the page.
    b.click("#sync-dry-run").await;
    b.click("#sync-now").await;
    b.wait_text("#banner", "dry run").await;
    let mut runs = Vec::new();
    for _ in 0..100 {
        runs = app.list("/api/v1/admin/sync-runs").await;
        if runs.first().is_some_and(|r| r["status"] != "running") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["dry_run"], true);
    b.click("a[data-page=overview]").await;
    b.click("a[data-page=directories]").await;
    b.wait_text("main", "(dry run)").await;
    b.screenshot("directories-ldap").await;
    b.quit().await;
}
