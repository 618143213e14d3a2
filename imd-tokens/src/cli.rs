//! The `imd-tokens` command line: argument parsing, key-file loading and the
//! `inspect` report (text and JSON). `main.rs` only wires in the process's
//! stdio, clock and exit code, so everything here is testable in-process.

use std::ffi::OsString;
use std::io::{Read, Write};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{AUDIENCE, PublicKey, TokenError, Unverified, Verifier, decode_unverified};

/// Token fine (and verified, when a key was given).
pub const EXIT_OK: u8 = 0;
/// Verification failed, or the token has expired.
pub const EXIT_INVALID: u8 = 1;
/// Malformed token, unreadable key file, or bad usage.
pub const EXIT_USAGE: u8 = 2;

const DAY: i64 = 86_400;
/// Tokens sit on thousands of machines; a month is roughly the lead time
/// needed to push a replacement.
const WARN_WITHIN_DAYS: i64 = 30;

#[derive(Parser, Debug)]
#[command(
    name = "imd-tokens",
    version,
    about = "Inspect and verify imd mass-deployment tokens, and build deployment bundles"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Decode a token and show its header, claims and expiry; optionally verify it.
    Inspect(InspectArgs),
    /// Write a deployment bundle (ADMX/ADML, .reg, install scripts, macOS
    /// profile and plists) for a token.
    Bundle(BundleArgs),
}

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// The token, or `-` to read it from stdin.
    #[arg(long, value_name = "JWT|-")]
    pub token: String,
    /// Directory to write the bundle into (created if missing; must be empty
    /// or hold only an earlier bundle).
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
    /// File name of the Windows agent installer.
    #[arg(long, value_name = "NAME", default_value = "imd-agent.msi")]
    pub msi: String,
    /// File name of the macOS agent package.
    #[arg(long, value_name = "NAME", default_value = "imd-agent.pkg")]
    pub pkg: String,
    /// Registry/policy vendor name (letters and digits).
    #[arg(long, value_name = "NAME", default_value = "Imd")]
    pub vendor: String,
    /// Evaluate expiry at this unix time instead of the current time.
    #[arg(long, value_name = "UNIX", allow_hyphen_values = true)]
    pub now: Option<i64>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The token, or `-` to read it from stdin.
    pub token: String,
    /// Verify against this public key: a PEM file, a JWK or a JWKS (as served
    /// at GET /api/v1/keys). `-` reads it from stdin.
    #[arg(long, value_name = "PATH|-")]
    pub public_key: Option<String>,
    /// Also require this issuer (the service's public URL).
    #[arg(long, value_name = "URL", requires = "public_key")]
    pub issuer: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Evaluate expiry at this unix time instead of the current time.
    #[arg(long, value_name = "UNIX", allow_hyphen_values = true)]
    pub now: Option<i64>,
}

/// Runs the CLI. `now` is the current unix time, used unless `--now` is
/// given. Returns the process exit code.
pub fn run<I, T>(
    args: I,
    now: i64,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are successes and belong on stdout.
            let rendered = e.render().to_string();
            if e.use_stderr() {
                let _ = stderr.write_all(rendered.as_bytes());
                return EXIT_USAGE;
            }
            let _ = stdout.write_all(rendered.as_bytes());
            return EXIT_OK;
        }
    };
    let args = match cli.command {
        Command::Inspect(args) => args,
        Command::Bundle(args) => return bundle_command(&args, now, stdin, stdout, stderr),
    };
    match inspect_command(&args, now, stdin) {
        Ok(report) => {
            let text = if args.json {
                // Serializing a Value cannot fail.
                let mut s = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
                s.push('\n');
                s
            } else {
                report.to_text()
            };
            if stdout.write_all(text.as_bytes()).is_err() {
                return EXIT_USAGE;
            }
            report.exit_code()
        }
        Err(msg) => {
            let _ = writeln!(stderr, "imd-tokens: {msg}");
            EXIT_USAGE
        }
    }
}

/// `bundle`: exit 0 when written, 1 for an invalid or expired token or
/// server URL, 2 for usage errors (bad option, unreadable stdin, I/O).
fn bundle_command(
    args: &BundleArgs,
    now: i64,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8 {
    use crate::bundle::{self, BundleError, BundleOptions};
    let token = if args.token == "-" {
        match read_stdin(stdin) {
            Ok(t) => t,
            Err(msg) => {
                let _ = writeln!(stderr, "imd-tokens: {msg}");
                return EXIT_USAGE;
            }
        }
    } else {
        args.token.clone()
    };
    let opts = BundleOptions {
        vendor: args.vendor.clone(),
        msi: args.msi.clone(),
        pkg: args.pkg.clone(),
        now: args.now.unwrap_or(now),
    };
    let result = bundle::build(token.trim(), &opts).and_then(|b| {
        bundle::write_dir(&b, &args.out)?;
        Ok(b)
    });
    match result {
        Ok(b) => {
            for w in &b.warnings {
                let _ = writeln!(stderr, "warning: {w}");
            }
            for f in &b.files {
                let path = args.out.join(&f.path);
                if writeln!(stdout, "{}", path.display()).is_err() {
                    return EXIT_USAGE;
                }
            }
            EXIT_OK
        }
        Err(e) => {
            let _ = writeln!(stderr, "imd-tokens: {e}");
            match e {
                BundleError::Token(_) | BundleError::Expired { .. } | BundleError::BadServer(_) => {
                    EXIT_INVALID
                }
                BundleError::BadOption(_) | BundleError::Io(_) => EXIT_USAGE,
            }
        }
    }
}

/// Gathers the inputs for `inspect`; every error here is exit code 2.
fn inspect_command(args: &InspectArgs, now: i64, stdin: &mut dyn Read) -> Result<Report, String> {
    if args.token == "-" && args.public_key.as_deref() == Some("-") {
        return Err("the token and the public key cannot both come from stdin".into());
    }
    let token = if args.token == "-" {
        read_stdin(stdin)?
    } else {
        args.token.clone()
    };
    // Tokens are often pasted or piped with a trailing newline.
    let token = token.trim();
    if token.is_empty() {
        return Err("no token given".into());
    }
    let unverified = decode_unverified(token).map_err(|e| e.to_string())?;

    let keys = match args.public_key.as_deref() {
        None => None,
        Some(source) => {
            let text = if source == "-" {
                read_stdin(stdin)?
            } else {
                std::fs::read_to_string(source)
                    .map_err(|e| format!("cannot read public key {source}: {e}"))?
            };
            let keys = parse_public_keys(&text, unverified.kid.as_deref())
                .map_err(|e| format!("public key {source}: {e}"))?;
            Some(keys)
        }
    };
    let now = args.now.unwrap_or(now);
    Ok(Report::build(
        token,
        unverified,
        keys.as_deref(),
        args.issuer.as_deref(),
        now,
    ))
}

fn read_stdin(stdin: &mut dyn Read) -> Result<String, String> {
    let mut s = String::new();
    stdin
        .read_to_string(&mut s)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    Ok(s)
}

/// Reads a public key file: a PEM SubjectPublicKeyInfo, a single JWK, or a
/// JWKS. PEM has no key id, so it is filed under `pem_kid` (the token's own
/// kid, when inspecting): the user chose that key explicitly.
pub fn parse_public_keys(text: &str, pem_kid: Option<&str>) -> Result<Vec<PublicKey>, TokenError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with("-----BEGIN") {
        return Ok(vec![PublicKey::from_pem(pem_kid.unwrap_or("pem"), text)?]);
    }
    if trimmed.starts_with('{') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| TokenError::Key(format!("invalid JSON: {e}")))?;
        return if v.get("keys").is_some() {
            PublicKey::from_jwks(&v)
        } else {
            Ok(vec![PublicKey::from_jwk(&v)?])
        };
    }
    Err(TokenError::Key(
        "unrecognized format; expected a PEM public key, a JWK or a JWKS".into(),
    ))
}

/// Overall verdict of an inspection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    ExpiringSoon,
    Expired,
    /// Verification was requested and failed for a reason other than expiry.
    Invalid,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::ExpiringSoon => "expiring_soon",
            Status::Expired => "expired",
            Status::Invalid => "invalid",
        }
    }
}

/// Everything `inspect` shows, computed once so text and JSON agree.
#[derive(Clone, Debug)]
pub struct Report {
    pub token: Unverified,
    pub now: i64,
    /// `None` when no key was given; otherwise the verification outcome.
    pub verification: Option<Result<(), TokenError>>,
}

impl Report {
    /// `keys` is `Some` when verification was asked for.
    pub fn build(
        token: &str,
        unverified: Unverified,
        keys: Option<&[PublicKey]>,
        issuer: Option<&str>,
        now: i64,
    ) -> Report {
        let verification = keys.map(|keys| {
            let mut verifier = Verifier::new(keys.iter().cloned());
            if let Some(iss) = issuer {
                verifier = verifier.with_issuer(iss);
            }
            verifier.verify(token, now).map(|_| ())
        });
        Report {
            token: unverified,
            now,
            verification,
        }
    }

    fn seconds_left(&self) -> Option<i64> {
        self.token
            .claims
            .exp
            .map(|exp| exp.saturating_sub(self.now))
    }

    /// Whole days until expiry, rounded down (negative once expired).
    pub fn expires_in_days(&self) -> Option<i64> {
        self.seconds_left().map(|s| s.div_euclid(DAY))
    }

    /// Past `exp`, without leeway: this is the date an operator plans by.
    pub fn is_expired(&self) -> bool {
        self.seconds_left().is_some_and(|s| s <= 0)
    }

    pub fn expires_soon(&self) -> bool {
        self.seconds_left()
            .is_some_and(|s| s > 0 && s < WARN_WITHIN_DAYS * DAY)
    }

    pub fn status(&self) -> Status {
        match &self.verification {
            Some(Err(TokenError::Expired { .. })) => Status::Expired,
            Some(Err(_)) => Status::Invalid,
            _ if self.is_expired() => Status::Expired,
            _ if self.expires_soon() => Status::ExpiringSoon,
            _ => Status::Ok,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self.status() {
            Status::Ok | Status::ExpiringSoon => EXIT_OK,
            Status::Expired | Status::Invalid => EXIT_INVALID,
        }
    }

    /// "expires in N days on DATE" / "expired N days ago on DATE" / "never expires".
    pub fn expiry_text(&self) -> String {
        let (Some(exp), Some(left)) = (self.token.claims.exp, self.seconds_left()) else {
            return "never expires".into();
        };
        let date = rfc3339(exp);
        if left > 0 {
            match left / DAY {
                0 => format!("expires in less than a day, on {date}"),
                d => format!("expires in {} on {date}", days(d)),
            }
        } else {
            match left.saturating_neg() / DAY {
                0 => format!("expired less than a day ago, on {date}"),
                d => format!("expired {} ago, on {date}", days(d)),
            }
        }
    }

    pub fn to_text(&self) -> String {
        let t = &self.token;
        let c = &t.claims;
        let mut out = String::new();
        let mut line = |label: &str, value: &str| {
            out.push_str(&format!("{label:<11}{value}\n"));
        };
        line("alg:", &t.alg);
        line("kid:", t.kid.as_deref().unwrap_or("(none)"));
        line("server:", &format!("{} (iss)", c.iss));
        line("org:", &format!("{} (sub)", c.sub));
        line("token id:", &format!("{} (jti)", c.jti));
        line("imd:", c.imd.as_str());
        line("audience:", &c.aud);
        line("issued:", &format!("{} (iat {})", rfc3339(c.iat), c.iat));
        match c.exp {
            Some(exp) => line("expires:", &format!("{} (exp {exp})", rfc3339(exp))),
            None => line("expires:", "never"),
        }
        line("expiry:", &self.expiry_text());
        for w in self.warnings() {
            out.push_str(&format!("warning: {w}\n"));
        }
        match &self.verification {
            None => out.push_str("signature: not checked (pass --public-key to verify)\n"),
            Some(Ok(())) => out.push_str("signature: valid\n"),
            Some(Err(e)) if signature_was_valid(e) => {
                // Our verifier only checks claims after the signature passed.
                out.push_str("signature: valid\n");
                out.push_str(&format!("rejected: {} ({e})\n", e.kind()));
            }
            Some(Err(e)) => out.push_str(&format!("signature: {} ({e})\n", e.kind())),
        }
        out.push_str(&format!("status: {}\n", self.status().as_str()));
        out
    }

    fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.expires_soon() {
            w.push(format!("token expires within {WARN_WITHIN_DAYS} days"));
        }
        if self.token.alg != "EdDSA" {
            w.push(format!(
                "algorithm {:?}: imd only accepts EdDSA",
                self.token.alg
            ));
        }
        if self.token.claims.aud != AUDIENCE {
            w.push(format!("audience is not {AUDIENCE:?}: imd will reject it"));
        }
        if self.token.claims.iat > self.now.saturating_add(60) {
            w.push("issued in the future (clock skew?)".into());
        }
        w
    }

    pub fn to_json(&self) -> Value {
        let c = &self.token.claims;
        let (verified, error) = match &self.verification {
            None => (Value::Null, Value::Null),
            Some(Ok(())) => (json!(true), Value::Null),
            Some(Err(e)) => (
                json!(false),
                json!({"kind": e.kind(), "message": e.to_string()}),
            ),
        };
        json!({
            "header": {"alg": self.token.alg, "kid": self.token.kid},
            "claims": c,
            "issued_at": rfc3339(c.iat),
            "expires_at": c.exp.map(rfc3339),
            "expires_in_days": self.expires_in_days(),
            "expiry": self.expiry_text(),
            "warnings": self.warnings(),
            "status": self.status().as_str(),
            "verified": verified,
            "error": error,
        })
    }
}

fn signature_was_valid(e: &TokenError) -> bool {
    matches!(
        e,
        TokenError::WrongAudience
            | TokenError::WrongIssuer
            | TokenError::Expired { .. }
            | TokenError::NotYetValid
    )
}

fn days(n: i64) -> String {
    if n == 1 {
        "1 day".into()
    } else {
        format!("{n} days")
    }
}

/// UTC RFC 3339, or a plain note for instants outside years 0..=9999.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("unix {unix} (out of range)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Claims, ImdVersion, SigningKey, jwks};

    const NOW: i64 = 1_750_000_000; // 2025-06-15T15:06:40Z
    const ISS: &str = "https://imd.example.com";

    struct Out {
        code: u8,
        stdout: String,
        stderr: String,
    }

    fn run_with(args: &[&str], stdin: &str) -> Out {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut argv = vec!["imd-tokens"];
        argv.extend_from_slice(args);
        let code = run(argv, NOW, &mut stdin.as_bytes(), &mut stdout, &mut stderr);
        Out {
            code,
            stdout: String::from_utf8(stdout).unwrap(),
            stderr: String::from_utf8(stderr).unwrap(),
        }
    }

    fn token(key: &SigningKey, exp: Option<i64>) -> String {
        key.sign(&Claims::new(
            ISS,
            "org-42",
            "tok-1",
            ImdVersion::V4,
            NOW - 100,
            exp,
        ))
        .unwrap()
    }

    fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("imd-tokens-cli-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn dates_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(NOW), "2025-06-15T15:06:40Z");
        assert!(rfc3339(i64::MAX).contains("out of range"));
    }

    #[test]
    fn text_report_without_key() {
        let key = SigningKey::generate("k1").unwrap();
        let out = run_with(&["inspect", &token(&key, Some(NOW + 90 * DAY))], "");
        assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
        let s = &out.stdout;
        for needle in [
            "alg:       EdDSA\n",
            "kid:       k1\n",
            "server:    https://imd.example.com (iss)\n",
            "org:       org-42 (sub)\n",
            "token id:  tok-1 (jti)\n",
            "imd:       v4\n",
            "issued:    2025-06-15T15:05:00Z (iat 1749999900)\n",
            "expiry:    expires in 90 days on 2025-09-13T15:06:40Z\n",
            "signature: not checked",
            "status: ok\n",
        ] {
            assert!(s.contains(needle), "missing {needle:?} in\n{s}");
        }
        assert!(!s.contains("warning"), "{s}");
    }

    #[test]
    fn expiry_wording() {
        let key = SigningKey::generate("k1").unwrap();
        let cases = [
            (None, "never expires", EXIT_OK),
            (Some(NOW + DAY + 5), "expires in 1 day on", EXIT_OK),
            (Some(NOW + 5), "expires in less than a day, on", EXIT_OK),
            (Some(NOW), "expired less than a day ago, on", EXIT_INVALID),
            (
                Some(NOW - 3 * DAY),
                "expired 3 days ago, on 2025-06-12T15:06:40Z",
                EXIT_INVALID,
            ),
        ];
        for (exp, text, code) in cases {
            let out = run_with(&["inspect", &token(&key, exp)], "");
            assert!(out.stdout.contains(text), "{exp:?}: {}", out.stdout);
            assert_eq!(out.code, code, "{exp:?}");
        }
    }

    #[test]
    fn warns_within_thirty_days() {
        let key = SigningKey::generate("k1").unwrap();
        let out = run_with(&["inspect", &token(&key, Some(NOW + 29 * DAY))], "");
        assert_eq!(out.code, EXIT_OK);
        assert!(
            out.stdout
                .contains("warning: token expires within 30 days\n")
        );
        assert!(out.stdout.contains("status: expiring_soon\n"));
        let out = run_with(&["inspect", &token(&key, Some(NOW + 30 * DAY))], "");
        assert!(!out.stdout.contains("warning"), "{}", out.stdout);
    }

    #[test]
    fn now_flag_overrides_clock() {
        let key = SigningKey::generate("k1").unwrap();
        let t = token(&key, Some(NOW + DAY));
        let later = (NOW + 2 * DAY).to_string();
        let out = run_with(&["inspect", &t, "--now", &later], "");
        assert_eq!(out.code, EXIT_INVALID);
        assert!(out.stdout.contains("expired 1 day ago"), "{}", out.stdout);
        let out = run_with(&["inspect", &t, "--now", "-5"], "");
        assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
    }

    #[test]
    fn verifies_with_pem_jwk_and_jwks_files() {
        let key = SigningKey::generate("k1").unwrap();
        let other = SigningKey::generate("k0").unwrap();
        let pk = key.public_key();
        let t = token(&key, Some(NOW + 90 * DAY));
        let files = [
            temp_file("k.pem", &pk.to_pem()),
            temp_file("k.jwk", &pk.to_jwk().to_string()),
            temp_file("k.jwks", &jwks([&other.public_key(), &pk]).to_string()),
        ];
        for f in &files {
            let path = f.to_str().unwrap();
            let out = run_with(&["inspect", &t, "--public-key", path], "");
            assert_eq!(out.code, EXIT_OK, "{path}: {}{}", out.stdout, out.stderr);
            assert!(out.stdout.contains("signature: valid\n"), "{}", out.stdout);
            std::fs::remove_file(f).unwrap();
        }
    }

    #[test]
    fn verification_failures_exit_1() {
        let key = SigningKey::generate("k1").unwrap();
        let impostor = SigningKey::generate("k1").unwrap();
        let t = token(&key, Some(NOW + 90 * DAY));
        let jwk = impostor.public_key().to_jwk().to_string();

        let path = temp_file("impostor.jwk", &jwk);
        let p = path.to_str().unwrap();
        let out = run_with(&["inspect", &t, "--public-key", p], "");
        assert_eq!(out.code, EXIT_INVALID);
        assert!(
            out.stdout.contains("signature: bad_signature ("),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("status: invalid\n"));
        std::fs::remove_file(&path).unwrap();

        // Right key, wrong issuer: the signature line still says valid.
        let out = run_with(
            &["inspect", &t, "--public-key", "-", "--issuer", "https://x"],
            &key.public_key().to_jwk().to_string(),
        );
        assert_eq!(out.code, EXIT_INVALID);
        assert!(
            out.stdout
                .contains("signature: valid\nrejected: wrong_issuer"),
            "{}",
            out.stdout
        );

        // Unknown kid.
        let stranger = SigningKey::generate("zz").unwrap();
        let out = run_with(
            &["inspect", &t, "--public-key", "-"],
            &stranger.public_key().to_jwk().to_string(),
        );
        assert_eq!(out.code, EXIT_INVALID);
        assert!(
            out.stdout.contains("signature: unknown_key"),
            "{}",
            out.stdout
        );
    }

    #[test]
    fn expired_and_verified_is_exit_1() {
        let key = SigningKey::generate("k1").unwrap();
        let t = token(&key, Some(NOW - 10 * DAY));
        let out = run_with(
            &["inspect", &t, "--public-key", "-", "--json"],
            &key.public_key().to_pem(),
        );
        assert_eq!(out.code, EXIT_INVALID);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["status"], "expired");
        assert_eq!(v["verified"], false);
        assert_eq!(v["error"]["kind"], "expired");
        assert_eq!(v["expires_in_days"], -10);
    }

    #[test]
    fn json_report_shape() {
        let key = SigningKey::generate("k1").unwrap();
        let t = token(&key, Some(NOW + 10 * DAY + 3600));
        let out = run_with(
            &["inspect", "-", "--json"],
            &format!("{t}\n"), // trailing newline from a pipe is fine
        );
        assert_eq!(out.code, EXIT_OK, "{}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["header"], json!({"alg": "EdDSA", "kid": "k1"}));
        assert_eq!(v["claims"]["iss"], ISS);
        assert_eq!(v["claims"]["aud"], AUDIENCE);
        assert_eq!(v["claims"]["imd"], "v4");
        assert_eq!(v["claims"]["exp"], NOW + 10 * DAY + 3600);
        assert_eq!(v["expires_in_days"], 10);
        assert_eq!(v["expires_at"], "2025-06-25T16:06:40Z");
        assert_eq!(v["status"], "expiring_soon");
        assert_eq!(v["verified"], Value::Null);
        assert_eq!(v["error"], Value::Null);
        assert_eq!(v["warnings"], json!(["token expires within 30 days"]));

        let never = token(&key, None);
        let out = run_with(
            &["inspect", &never, "--json", "--public-key", "-"],
            &key.public_key().to_pem(),
        );
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["expires_in_days"], Value::Null);
        assert_eq!(v["expires_at"], Value::Null);
        assert!(v["claims"].get("exp").is_none());
        assert_eq!(v["status"], "ok");
        assert_eq!(v["verified"], true);
    }

    #[test]
    fn malformed_and_usage_errors_exit_2() {
        for (args, stdin) in [
            (vec!["inspect", "not-a-token"], ""),
            (vec!["inspect", "-"], "   \n"),
            (vec!["inspect", "-", "--public-key", "-"], "x"),
            (vec!["inspect"], ""),
            (vec!["frobnicate"], ""),
            (vec![], ""),
            (vec!["inspect", "a.b.c", "--issuer", "https://x"], ""),
            (vec!["inspect", "a.b.c", "--now", "yesterday"], ""),
        ] {
            let out = run_with(&args, stdin);
            assert_eq!(out.code, EXIT_USAGE, "{args:?}");
            assert!(out.stdout.is_empty(), "{args:?}");
            assert!(!out.stderr.is_empty(), "{args:?}");
        }
    }

    #[test]
    fn bad_key_files_exit_2() {
        let key = SigningKey::generate("k1").unwrap();
        let t = token(&key, None);
        for bad in [
            "",
            "hello",
            "{not json",
            "{\"keys\": []}",
            "{\"kty\":\"RSA\"}",
        ] {
            let out = run_with(&["inspect", &t, "--public-key", "-"], bad);
            assert_eq!(out.code, EXIT_USAGE, "{bad:?}");
            assert!(out.stderr.contains("public key"), "{}", out.stderr);
        }
        let out = run_with(&["inspect", &t, "--public-key", "/nonexistent/imd.pem"], "");
        assert_eq!(out.code, EXIT_USAGE);
        assert!(out.stderr.contains("cannot read public key"));
    }

    #[test]
    fn help_goes_to_stdout_with_exit_0() {
        let out = run_with(&["inspect", "--help"], "");
        assert_eq!(out.code, EXIT_OK);
        assert!(out.stdout.contains("--public-key"));
        let out = run_with(&["--version"], "");
        assert_eq!(out.code, EXIT_OK);
        assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn warns_about_foreign_tokens() {
        let key = SigningKey::generate("k1").unwrap();
        let mut c = Claims::new(ISS, "o", "j", ImdVersion::V2, NOW + 3600, None);
        c.aud = "something-else".into();
        let out = run_with(&["inspect", &key.sign(&c).unwrap()], "");
        assert!(
            out.stdout.contains("warning: audience is not"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("warning: issued in the future"),
            "{}",
            out.stdout
        );
    }

    #[test]
    fn pem_key_takes_the_token_kid() {
        let key = SigningKey::generate("whatever").unwrap();
        let keys = parse_public_keys(&key.public_key().to_pem(), Some("whatever")).unwrap();
        assert_eq!(keys, vec![key.public_key()]);
        let keys = parse_public_keys(&key.public_key().to_pem(), None).unwrap();
        assert_eq!(keys[0].kid(), "pem");
    }
}
