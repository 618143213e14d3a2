//! End-to-end checks of the built `imd-tokens` binary: exit codes, stdin
//! handling and key files, as an operator would use it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use imd_tokens::{Claims, ImdVersion, SigningKey, jwks};

const NOW: i64 = 1_750_000_000;

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imd-tokens"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn imd-tokens");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn token(key: &SigningKey) -> String {
    let claims = Claims::new(
        "https://imd.example.com",
        "org-7",
        "tok-9",
        ImdVersion::V5,
        NOW - 60,
        Some(NOW + 400 * 86_400),
    );
    key.sign(&claims).unwrap()
}

#[test]
fn binary_verifies_token_from_stdin_against_jwks_file() {
    let key = SigningKey::generate("2025-06").unwrap();
    let jwks_path =
        std::env::temp_dir().join(format!("imd-tokens-bin-{}.jwks", std::process::id()));
    std::fs::write(&jwks_path, jwks([&key.public_key()]).to_string()).unwrap();
    let path = jwks_path.to_str().unwrap();
    let now = NOW.to_string();

    let out = run(
        &[
            "inspect",
            "-",
            "--public-key",
            path,
            "--json",
            "--now",
            &now,
        ],
        &format!("{}\n", token(&key)),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["claims"]["sub"], "org-7");
    assert_eq!(v["expires_in_days"], 400);

    // Same kid, different key: exit 1 and the error kind in the text output.
    let impostor = SigningKey::generate("2025-06").unwrap();
    let out = run(
        &[
            "inspect",
            &token(&impostor),
            "--public-key",
            path,
            "--now",
            &now,
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("signature: bad_signature"));

    std::fs::remove_file(&jwks_path).unwrap();
}

#[test]
fn binary_exit_codes_for_bad_input() {
    let out = run(&["inspect", "garbage"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed token"));

    let out = run(&["inspect"], "");
    assert_eq!(out.status.code(), Some(2));

    let out = run(&["--help"], "");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("inspect"));
}

#[test]
fn binary_text_output_without_key() {
    let key = SigningKey::generate("k").unwrap();
    let out = run(&["inspect", &token(&key), "--now", &NOW.to_string()], "");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("server:    https://imd.example.com (iss)"),
        "{text}"
    );
    assert!(text.contains("imd:       v5"), "{text}");
    assert!(
        text.contains("expiry:    expires in 400 days on 2026-07-20T15:06:40Z"),
        "{text}"
    );
    assert!(text.contains("signature: not checked"), "{text}");
}
