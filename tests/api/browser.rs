//! A small W3C WebDriver client for the console tests: real headless Chromium through
//! chromedriver (Debian's `chromium` and `chromium-driver`). scripts/test.sh starts one
//! chromedriver for the suite and names it in TEST_WEBDRIVER_URL; without it a test starts its
//! own when /usr/bin/chromedriver exists, and otherwise skips (fails with REQUIRE_BROWSER=1).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const WAIT: Duration = Duration::from_secs(20);

pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: Option<tokio::process::Child>,
    _profile: tempfile::TempDir,
}

/// Where screenshots go: `IMD_SCREENSHOTS` (docs/console.md's pictures are taken with
/// `IMD_SCREENSHOTS=docs/console`), else nowhere.
fn screenshot_dir() -> Option<PathBuf> {
    let d = std::env::var("IMD_SCREENSHOTS").ok()?;
    let p = PathBuf::from(d);
    Some(if p.is_absolute() {
        p
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
    })
}

impl Browser {
    /// A fresh browser session at 1280×800, or `None` when no browser can run here.
    pub async fn start() -> Option<Browser> {
        Self::start_sized(1280, 800).await
    }

    pub async fn start_sized(width: u32, height: u32) -> Option<Browser> {
        let http = reqwest::Client::new();
        let (base, driver) = match std::env::var("TEST_WEBDRIVER_URL") {
            Ok(u) => (u.trim_end_matches('/').to_string(), None),
            Err(_) if std::path::Path::new("/usr/bin/chromedriver").exists() => {
                let port = {
                    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    l.local_addr().unwrap().port()
                };
                let child = tokio::process::Command::new("/usr/bin/chromedriver")
                    .arg(format!("--port={port}"))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("chromedriver starts");
                let base = format!("http://127.0.0.1:{port}");
                for _ in 0..100 {
                    if http.get(format!("{base}/status")).send().await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (base, Some(child))
            }
            Err(_) => {
                assert!(
                    std::env::var("REQUIRE_BROWSER").is_err(),
                    "REQUIRE_BROWSER is set but there is no chromedriver (install chromium and chromium-driver)"
                );
                eprintln!("skipping: no chromedriver (install chromium and chromium-driver)");
                return None;
            }
        };
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    "--lang=en-US", format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {"intl.accept_languages": "en-US"},
            },
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        let b = Browser {
            http,
            base,
            session,
            _driver: driver,
            _profile: profile,
        };
        b.cmd(
            "POST",
            "/timeouts",
            json!({"implicit": 0, "pageLoad": 30000, "script": 30000}),
        )
        .await;
        Some(b)
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        match self.try_cmd(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    async fn try_cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let r: Value = req
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if let Some(err) = r["value"]["error"].as_str() {
            return Err(format!("{err}: {}", r["value"]["message"]));
        }
        Ok(r["value"].clone())
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn find_now(&self, css: &str) -> Option<String> {
        let v = self
            .try_cmd(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await
            .ok()?;
        v[ELEMENT].as_str().map(str::to_string)
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.find_now(css).await {
                return e;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no element {css:?} on {} after {WAIT:?}; page text: {}",
                    self.url().await,
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn exists(&self, css: &str) -> bool {
        self.find_now(css).await.is_some()
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/click"), json!({}))
            .await;
    }

    /// Clicks the button whose text is exactly `label` (inside `scope`, a CSS selector).
    pub async fn click_button(&self, scope: &str, label: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = self
                .exec(
                    "const [scope, label] = arguments; \
                     const b = [...document.querySelectorAll(scope + ' button')].find((b) => b.textContent.trim() === label); \
                     if (b) { b.click(); return true; } return false;",
                    json!([scope, label]),
                )
                .await;
            if found == json!(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no button {label:?} in {scope:?}; page text: {}",
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd("POST", &format!("/element/{e}/clear"), json!({}))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Hands a local file to an `<input type=file>`.
    pub async fn choose_file(&self, css: &str, path: &std::path::Path) {
        let e = self.find(css).await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": path.display().to_string() }),
        )
        .await;
    }

    pub async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.cmd("GET", &format!("/element/{e}/text"), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn value(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.cmd("GET", &format!("/element/{e}/property/value"), Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the text of `css` contains `want`; returns the text.
    pub async fn wait_text(&self, css: &str, want: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.find_now(css).await
                && let Ok(v) = self
                    .try_cmd("GET", &format!("/element/{e}/text"), Value::Null)
                    .await
            {
                let t = v.as_str().unwrap_or_default().to_string();
                if t.contains(want) {
                    return t;
                }
                if tokio::time::Instant::now() > deadline {
                    panic!("{css:?} says {t:?}, never {want:?}");
                }
            } else if tokio::time::Instant::now() > deadline {
                panic!(
                    "no element {css:?} (waiting for {want:?}); page text: {}",
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    pub async fn page_text(&self) -> String {
        self.try_cmd(
            "POST",
            "/execute/sync",
            json!({"script": "return document.body ? document.body.innerText : ''", "args": []}),
        )
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
    }

    pub async fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    pub async fn cookies(&self) -> Vec<Value> {
        self.cmd("GET", "/cookie", Value::Null)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves a PNG of the viewport as `<IMD_SCREENSHOTS>/<name>.png` when that is set.
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = screenshot_dir() else {
            return;
        };
        use base64::Engine;
        let v = self.cmd("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}
