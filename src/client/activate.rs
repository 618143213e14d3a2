//! `imd client activate`: resolve the token and server, collect identity, post the activation
//! and keep the credential. Transient failures (network errors, 429, 5xx) are retried with
//! exponential backoff and jitter until a deadline, so that thousands of machines starting at once
//! after a rollout spread out instead of hammering a busy server in lockstep; any other 4xx is a
//! decision by the server and retrying would not change it.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::identity::{self, Device, User};
use super::{ActivateArgs, exit, state};

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A server (or a proxy) asking for more than this is not taken literally.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before retry number `attempt + 1` (attempt 0 is the first failure).
/// The exponential step doubles from 1 s up to 60 s; the wait is half the step plus up to another
/// half chosen by `jitter` (in `[0, 1)`), and never less than the server's `Retry-After`, on top
/// of which the jitter still applies, so clients told "1 s" do not all come back together.
pub fn backoff(attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let step = INITIAL_BACKOFF
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF);
    let floor = retry_after
        .unwrap_or_default()
        .min(MAX_RETRY_AFTER)
        .max(step / 2);
    floor + (step / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

/// A uniform value in `[0, 1)` from the system RNG (0.5 if it is unavailable).
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    match aws_lc_rs::rand::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by imd and is ignored).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Token and server from the machine policy (`--token-from-policy`).
#[derive(Debug, Default)]
struct Policy {
    token: Option<String>,
    server: Option<String>,
}

#[cfg(windows)]
fn read_policy(vendor: &str) -> Policy {
    let key = format!(r"HKLM\Software\Policies\{vendor}\IMD");
    let query = |name: &str| {
        let out = std::process::Command::new("reg")
            .args(["query", &key, "/v", name])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| parse_reg_query(&String::from_utf8_lossy(&out.stdout), name))
            .flatten()
    };
    Policy {
        token: query("Token"),
        server: query("Server"),
    }
}

#[cfg(target_os = "macos")]
fn read_policy(vendor: &str) -> Policy {
    let domain = format!(
        "/Library/Managed Preferences/com.{}.imd",
        vendor.to_lowercase()
    );
    let query = |name: &str| {
        let out = std::process::Command::new("defaults")
            .args(["read", &domain, name])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    Policy {
        token: query("Token"),
        server: query("Server"),
    }
}

#[cfg(not(any(windows, target_os = "macos")))]
fn read_policy(_vendor: &str) -> Policy {
    // Configuration management drops the token in /etc/imd/token (and optionally the server
    // URL in /etc/imd/server); the vendor name plays no part here.
    let read = |p: &str| {
        std::fs::read_to_string(p).ok().and_then(|s| {
            s.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(String::from)
        })
    };
    Policy {
        token: read("/etc/imd/token"),
        server: read("/etc/imd/server"),
    }
}

/// The value of `name` in `reg query <key> /v <name>` output:
/// `    Token    REG_SZ    eyJ…`.
pub fn parse_reg_query(out: &str, name: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let l = l.trim_start();
        let rest = l
            .get(..name.len())
            .filter(|p| p.eq_ignore_ascii_case(name))?;
        let rest = l[rest.len()..].trim_start();
        let (ty, value) = rest.split_once(char::is_whitespace)?;
        if !ty.starts_with("REG_") {
            return None;
        }
        let v = value.trim();
        (!v.is_empty()).then(|| v.to_string())
    })
}

#[derive(Debug, Deserialize)]
struct Activated {
    device_id: String,
    user_id: String,
    #[serde(default)]
    device_created: bool,
    #[serde(default)]
    user_created: bool,
    device_credential: String,
    #[serde(default)]
    replaced_device_id: Option<String>,
    #[serde(default)]
    restore_data: Option<String>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    storage_region: Option<String>,
}

/// What one attempt came to.
enum Attempt {
    Done(StatusCode, Box<Activated>),
    Refused {
        status: StatusCode,
        code: String,
        message: String,
    },
    Transient {
        why: String,
        retry_after: Option<Duration>,
    },
}

fn local_error(as_json: bool, msg: &str) -> u8 {
    if as_json {
        println!("{}", json!({"status": "error", "message": msg}));
    }
    eprintln!("error: {msg}");
    exit::LOCAL
}

pub async fn run(args: ActivateArgs) -> u8 {
    let as_json = args.json;
    let policy = if args.token_from_policy {
        read_policy(&args.vendor)
    } else {
        Policy::default()
    };
    let token = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .or(policy.token);
    // A token that does not even decode is a local problem: fail before touching the network.
    let issuer = match &token {
        Some(t) => match imd_tokens::decode_unverified(t) {
            Ok(u) => Some(u.claims.iss),
            Err(e) => return local_error(as_json, &format!("the token is not a valid JWT: {e}")),
        },
        None => None,
    };
    let server = args
        .server
        .clone()
        .filter(|s| !s.trim().is_empty())
        .or(policy.server)
        .or(issuer);
    let (device, user) = identity::collect(&args.overrides);
    let dir = state::dir_or_default(args.state_dir.as_deref());

    if args.dry_run {
        return dry_run(
            &args,
            token.as_deref(),
            server.as_deref(),
            &device,
            &user,
            &dir,
        );
    }
    let Some(token) = token else {
        let hint = if args.token_from_policy {
            "no token: pass --token, set IMD_TOKEN, or deploy it by policy (see docs/client.md)"
        } else {
            "no token: pass --token, set IMD_TOKEN, or use --token-from-policy"
        };
        return local_error(as_json, hint);
    };
    let Some(server) = server else {
        return local_error(as_json, "no server: pass --server or set IMD_SERVER");
    };
    if user.login.is_none() && user.upn.is_none() && user.email.is_none() {
        // Typically a startup task running as SYSTEM before anyone has signed in: not a refusal,
        // just too early. The scheduled task tries again in a few minutes.
        let msg = "nobody is signed in yet, so there is no user to activate for; try again later (or pass --login)";
        if as_json {
            println!("{}", json!({"status": "gave_up", "message": msg}));
        }
        eprintln!("not activated: {msg}");
        return exit::GAVE_UP;
    }
    let url = match super::endpoint(&server, "/api/v1/activations") {
        Ok(u) => u,
        Err(e) => return local_error(as_json, &e),
    };
    // The install key is stored before anything is sent, so every retry and every later run
    // presents the same key.
    let install_key = match state::ensure_dir(&dir).and_then(|_| state::install_key(&dir)) {
        Ok(k) => k,
        Err(e) => {
            return local_error(
                as_json,
                &format!("cannot use state directory {}: {e}", dir.display()),
            );
        }
    };
    let body = request_body(&token, &install_key, &device, &user);

    let deadline = Instant::now() + Duration::from_secs(args.deadline_secs);
    let mut attempt: u32 = 0;
    let outcome = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let a = if remaining.is_zero() {
            Attempt::Transient {
                why: "deadline reached".into(),
                retry_after: None,
            }
        } else {
            send(&url, &body, remaining.min(REQUEST_TIMEOUT)).await
        };
        match a {
            Attempt::Transient { why, retry_after } => {
                let wait = backoff(attempt, retry_after, jitter());
                if Instant::now() + wait >= deadline {
                    break Err((exit::GAVE_UP, why, attempt + 1));
                }
                if !as_json {
                    eprintln!(
                        "attempt {} failed ({why}); retrying in {:.1}s",
                        attempt + 1,
                        wait.as_secs_f64()
                    );
                }
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Attempt::Refused {
                status,
                code,
                message,
            } => {
                if as_json {
                    println!(
                        "{}",
                        json!({"status": "refused", "http_status": status.as_u16(), "code": code, "message": message})
                    );
                }
                eprintln!("activation refused ({status}): {code}: {message}");
                return exit::REFUSED;
            }
            Attempt::Done(status, a) => break Ok((status, a)),
        }
    };
    let (status, a) = match outcome {
        Ok(v) => v,
        Err((code, why, attempts)) => {
            if as_json {
                println!(
                    "{}",
                    json!({"status": "gave_up", "attempts": attempts, "last_error": why})
                );
            }
            eprintln!(
                "gave up after {attempts} attempt(s) and {}s: {why}",
                args.deadline_secs
            );
            return code;
        }
    };
    let record = state::Activation {
        server: server.trim().trim_end_matches('/').to_string(),
        device_id: a.device_id.clone(),
        user_id: a.user_id.clone(),
        device_credential: a.device_credential.clone(),
        activated_at: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let state_file = dir.join(state::STATE_FILE);
    if let Err(e) = state::save(&dir, &record) {
        // The server has bound the device; a rerun with the same install key gets the same
        // credential back (200), so this is recoverable once the directory is writable.
        return local_error(
            as_json,
            &format!("activated, but cannot write {}: {e}", state_file.display()),
        );
    }
    if as_json {
        println!(
            "{}",
            json!({
                "status": "activated",
                "new_binding": status == StatusCode::CREATED,
                "device_id": a.device_id, "user_id": a.user_id,
                "device_created": a.device_created, "user_created": a.user_created,
                "replaced_device_id": a.replaced_device_id, "restore_data": a.restore_data,
                "profile": a.profile, "storage_region": a.storage_region,
                "server": record.server, "state_file": state_file,
            })
        );
    } else {
        let what = if status == StatusCode::CREATED {
            "activated"
        } else {
            "already activated"
        };
        println!("{what}: device {} for user {}", a.device_id, a.user_id);
        if let Some(r) = &a.replaced_device_id {
            println!(
                "replaces device {r} (restore: {})",
                a.restore_data.as_deref().unwrap_or("none")
            );
        }
        if let (Some(p), Some(s)) = (&a.profile, &a.storage_region) {
            println!("profile {p}, storage region {s}");
        }
        println!("server:  {}", record.server);
        println!("state:   {}", state_file.display());
    }
    exit::OK
}

fn request_body(token: &str, install_key: &str, d: &Device, u: &User) -> Value {
    json!({
        "token": token,
        "device": {
            "hostname": d.hostname, "serial": d.serial, "uuid": d.uuid, "os": d.os,
            "os_version": d.os_version, "client_version": d.client_version,
            "install_key": install_key,
        },
        "user": u,
    })
}

fn dry_run(
    args: &ActivateArgs,
    token: Option<&str>,
    server: Option<&str>,
    d: &Device,
    u: &User,
    dir: &Path,
) -> u8 {
    const REDACTED: &str = "<redacted>";
    let mut body = request_body(REDACTED, REDACTED, d, u);
    if token.is_none() {
        body["token"] = Value::Null;
    }
    // Whether a key exists is useful to know; its value is not shown.
    let key_state = match state::read_install_key(dir) {
        Ok(Some(_)) => "existing",
        _ => "new (generated on the first real run)",
    };
    let url = server.map(|s| super::endpoint(s, "/api/v1/activations").unwrap_or_else(|e| e));
    if args.json {
        println!(
            "{}",
            json!({"dry_run": true, "url": url, "install_key": key_state, "request": body})
        );
    } else {
        println!(
            "would POST to {}",
            url.as_deref().unwrap_or("(no server: pass --server)")
        );
        println!("install key: {key_state}");
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    }
    exit::OK
}

async fn send(url: &str, body: &Value, timeout: Duration) -> Attempt {
    let client = match super::http_client(timeout) {
        Ok(c) => c,
        Err(e) => {
            return Attempt::Transient {
                why: format!("HTTP client: {e}"),
                retry_after: None,
            };
        }
    };
    let resp = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return Attempt::Transient {
                why: format!("network error: {e}"),
                retry_after: None,
            };
        }
    };
    let status = resp.status();
    let ra = retry_after(resp.headers());
    let text = resp.text().await.unwrap_or_default();
    classify(status, ra, &text)
}

/// Sorts a response into done / refused / retry. 2xx that is not the documented body (a captive
/// portal, a misrouted proxy) is treated as transient rather than as success.
fn classify(status: StatusCode, ra: Option<Duration>, text: &str) -> Attempt {
    let err = || {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let s = |k: &str| v["error"][k].as_str().map(String::from);
        (
            s("code").unwrap_or_else(|| format!("http_{}", status.as_u16())),
            s("message").unwrap_or_else(|| text.chars().take(200).collect()),
        )
    };
    if status.is_success() {
        return match serde_json::from_str::<Activated>(text) {
            Ok(a) => Attempt::Done(status, Box::new(a)),
            Err(e) => Attempt::Transient {
                why: format!("{status} with an unexpected body: {e}"),
                retry_after: ra,
            },
        };
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let (code, message) = err();
        return Attempt::Transient {
            why: format!("{} {code}: {message}", status.as_u16()),
            retry_after: ra,
        };
    }
    let (code, message) = err();
    Attempt::Refused {
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn backoff_doubles_with_jitter_up_to_a_cap() {
        assert_eq!(backoff(0, None, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(0, None, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(1, None, 0.0), S(1));
        assert_eq!(backoff(3, None, 0.5), S(6));
        assert_eq!(backoff(10, None, 0.0), S(30));
        assert_eq!(backoff(10, None, 1.0), S(60));
        assert_eq!(backoff(u32::MAX, None, 1.0), S(60), "no overflow");
    }

    #[test]
    fn backoff_honours_retry_after_as_a_floor_and_still_jitters() {
        assert_eq!(backoff(0, Some(S(1)), 0.0), S(1));
        assert_eq!(backoff(0, Some(S(1)), 0.5), Duration::from_millis(1250));
        assert_eq!(backoff(0, Some(S(30)), 0.0), S(30));
        // Later attempts back off further than a short Retry-After.
        assert_eq!(backoff(4, Some(S(1)), 0.0), S(8));
        assert_eq!(backoff(0, Some(S(100_000)), 0.0), MAX_RETRY_AFTER);
        assert_eq!(backoff(0, None, 7.0), S(1), "jitter is clamped");
    }

    #[test]
    fn jitter_is_in_the_unit_interval() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn reg_query_output_gives_the_value() {
        let out = "\r\nHKEY_LOCAL_MACHINE\\Software\\Policies\\Imd\\IMD\r\n    Token    REG_SZ    eyJhbGciOi.eyJpc3Mi.sig\r\n    Server    REG_SZ    https://imd.example.com\r\n\r\n";
        assert_eq!(
            parse_reg_query(out, "Token").as_deref(),
            Some("eyJhbGciOi.eyJpc3Mi.sig")
        );
        assert_eq!(
            parse_reg_query(out, "server").as_deref(),
            Some("https://imd.example.com")
        );
        assert_eq!(parse_reg_query(out, "Missing"), None);
        assert_eq!(parse_reg_query("    TokenX    REG_SZ    v", "Token"), None);
    }

    #[test]
    fn responses_are_classified() {
        let refused = classify(
            StatusCode::FORBIDDEN,
            None,
            r#"{"error":{"code":"device_not_mapped","message":"no","retryable":false}}"#,
        );
        assert!(matches!(refused, Attempt::Refused { code, .. } if code == "device_not_mapped"));
        for s in [429, 500, 502, 503] {
            let a = classify(StatusCode::from_u16(s).unwrap(), Some(S(1)), "{}");
            assert!(
                matches!(
                    a,
                    Attempt::Transient {
                        retry_after: Some(_),
                        ..
                    }
                ),
                "{s}"
            );
        }
        assert!(matches!(
            classify(StatusCode::OK, None, "<html>"),
            Attempt::Transient { .. }
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, None, "nope"),
            Attempt::Refused { code, .. } if code == "http_404"
        ));
    }
}
