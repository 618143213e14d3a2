//! `imd client status`: is this machine activated (the state file), and does the server still
//! accept its credential (`GET /api/v1/device`)? One request, no retries: it is run by people
//! and monitoring, which want a prompt answer.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{StatusArgs, exit, state};

pub async fn run(args: StatusArgs) -> u8 {
    let dir = state::dir_or_default(args.state_dir.as_deref());
    let s = match state::load(&dir) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return report(
                args.json,
                exit::LOCAL,
                json!({"activated": false, "state_dir": dir}),
                &format!("not activated (no state in {})", dir.display()),
            );
        }
        Err(e) => {
            return report(
                args.json,
                exit::LOCAL,
                json!({"activated": false, "error": e}),
                &e,
            );
        }
    };
    let base = json!({"activated": true, "server": s.server, "device_id": s.device_id,
                      "user_id": s.user_id, "activated_at": crate::clock::rfc3339(s.activated_at)});
    let url = match super::endpoint(&s.server, "/api/v1/device") {
        Ok(u) => u,
        Err(e) => return report(args.json, exit::LOCAL, with(base, "error", json!(e)), &e),
    };
    let result = match super::http_client(Duration::from_secs(15)) {
        Ok(c) => c.get(&url).bearer_auth(&s.device_credential).send().await,
        Err(e) => Err(e),
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("cannot reach {}: {e}", s.server);
            return report(
                args.json,
                exit::GAVE_UP,
                with(base, "error", json!(msg)),
                &msg,
            );
        }
    };
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        let (d, u) = (&body["device"], &body["user"]);
        let text = format!(
            "activated: device {} ({}, {}) for user {} <{}>\nserver:    {}\nactivated: {}",
            d["id"].as_str().unwrap_or(&s.device_id),
            d["name"].as_str().unwrap_or("?"),
            d["status"].as_str().unwrap_or("?"),
            u["user_name"].as_str().unwrap_or("?"),
            u["email"].as_str().unwrap_or("?"),
            s.server,
            crate::clock::rfc3339(s.activated_at),
        );
        let mut v = with(base, "valid", json!(true));
        v["device"] = d.clone();
        v["user"] = u.clone();
        return report(args.json, exit::OK, v, &text);
    }
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no error message")
        .to_string();
    let v = with(
        with(base, "valid", json!(false)),
        "error",
        json!({"http_status": status.as_u16(), "code": body["error"]["code"], "message": message}),
    );
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        let text = format!(
            "the server rejects this machine's credential (device {}): {message}",
            s.device_id
        );
        return report(args.json, exit::REFUSED, v, &text);
    }
    let text = format!("the server did not confirm the credential ({status}): {message}");
    report(args.json, exit::GAVE_UP, v, &text)
}

fn with(mut v: Value, k: &str, x: Value) -> Value {
    v[k] = x;
    v
}

/// Prints JSON to stdout, or the text (to stdout on success, stderr otherwise).
fn report(as_json: bool, code: u8, v: Value, text: &str) -> u8 {
    if as_json {
        println!("{v}");
    } else if code == exit::OK {
        println!("{text}");
    } else {
        eprintln!("{text}");
    }
    code
}
