//! `imd doctor`: checks what a deployment needs before (or while) it serves, and prints what to
//! fix — the configuration, the database (reachable, migrations neither pending nor newer
//! than this imd), the master key file's permissions, the TLS certificate's expiry and the
//! clock against the database's. Read-only: it never migrates, creates or changes anything.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Settings;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was found, and for a warning or failure what to do.
    pub detail: String,
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// Warn when the certificate expires within this many days.
const CERT_WARN_DAYS: i64 = 30;
/// Clock skew against the database that breaks token expiry and leases.
const SKEW_WARN_SECS: i64 = 5;
const SKEW_FAIL_SECS: i64 = 60;

/// Runs every check; `now` is this host's clock.
pub async fn run_checks(s: &Settings, now: i64) -> Vec<Check> {
    let mut out = vec![check(
        "configuration",
        Verdict::Ok,
        format!(
            "loaded; database {}, data directory {}",
            crate::store::redact_url(&s.database_url()),
            s.data_dir.display()
        ),
    )];
    out.push(master_key(s));
    out.extend(tls(s, now));
    out.extend(database(s, now).await);
    out
}

fn master_key(s: &Settings) -> Check {
    if std::env::var("IMD_MASTER_KEY").is_ok() {
        return check(
            "master key",
            Verdict::Ok,
            "from IMD_MASTER_KEY (the key file is not used)",
        );
    }
    let path = s.master_key_path();
    key_file(
        "master key",
        &path,
        "it is created at the first `imd serve`",
    )
}

/// A secret file: present, readable by its owner only.
fn key_file(name: &'static str, path: &Path, when_missing: &str) -> Check {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return check(
                name,
                Verdict::Warn,
                format!("{} does not exist yet; {when_missing}", path.display()),
            );
        }
        Err(e) => {
            return check(name, Verdict::Fail, format!("{}: {e}", path.display()));
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return check(
                name,
                Verdict::Fail,
                format!(
                    "{} has permissions {mode:o}: others can read it; run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ),
            );
        }
    }
    let _ = meta;
    check(name, Verdict::Ok, format!("{} (0600)", path.display()))
}

fn tls(s: &Settings, now: i64) -> Vec<Check> {
    let (Some(cert), Some(key)) = (&s.tls.cert_file, &s.tls.key_file) else {
        return vec![check(
            "TLS",
            Verdict::Warn,
            "not configured: imd serves plain HTTP; terminate TLS in front of it or set tls.cert_file and tls.key_file",
        )];
    };
    vec![
        certificate(cert, now),
        key_file("TLS key", key, "set tls.key_file to the certificate's key"),
    ]
}

/// The first certificate of the PEM file (the server's own): its expiry.
pub fn certificate(path: &Path, now: i64) -> Check {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let first = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())
        .and_then(|mut it| {
            it.next()
                .ok_or_else(|| "no certificate in the file".to_string())?
                .map_err(|e| e.to_string())
        });
    let der = match first {
        Ok(d) => d,
        Err(e) => {
            return check(
                "TLS certificate",
                Verdict::Fail,
                format!("{}: {e}", path.display()),
            );
        }
    };
    let cert = match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, c)) => c,
        Err(e) => {
            return check(
                "TLS certificate",
                Verdict::Fail,
                format!("{}: not an X.509 certificate: {e}", path.display()),
            );
        }
    };
    let not_after = cert.validity().not_after.timestamp();
    let days = (not_after - now).div_euclid(86_400);
    let when = crate::clock::rfc3339(not_after);
    if not_after <= now {
        check(
            "TLS certificate",
            Verdict::Fail,
            format!(
                "{} expired on {when}: clients refuse it; install a renewed certificate",
                path.display()
            ),
        )
    } else if days < CERT_WARN_DAYS {
        check(
            "TLS certificate",
            Verdict::Warn,
            format!(
                "{} expires on {when} (in {days} days): renew it",
                path.display()
            ),
        )
    } else {
        check(
            "TLS certificate",
            Verdict::Ok,
            format!("{} valid until {when} ({days} days)", path.display()),
        )
    }
}

async fn database(s: &Settings, now: i64) -> Vec<Check> {
    // As it is: doctor never migrates (that is `imd migrate`'s job).
    let store = match crate::startup::open_store_unmigrated(s).await {
        Ok(st) => st,
        Err(e) => {
            let msg = format!("{e:#}");
            let fix = if msg.contains("pending") || msg.contains("migrat") {
                "; run `imd migrate` (or start `imd serve`, which migrates)"
            } else if msg.contains("newer") {
                "; run the newer imd that migrated it"
            } else {
                "; check database_url, the server and its credentials"
            };
            return vec![check(
                "database",
                Verdict::Fail,
                format!("{}{fix}", crate::store::scrub(&msg, &s.database_url())),
            )];
        }
    };
    let mut out = Vec::new();
    match store.ping().await {
        Ok(()) => out.push(check(
            "database",
            Verdict::Ok,
            format!("{:?} reachable, migrations up to date", store.kind()),
        )),
        Err(e) => out.push(check("database", Verdict::Fail, e.to_string())),
    }
    match store.database_time().await {
        Ok(t) => out.push(skew(now, t)),
        Err(e) => out.push(check(
            "clock",
            Verdict::Fail,
            format!("reading the database's clock: {e}"),
        )),
    }
    store.close().await;
    out
}

/// This host's clock against the database's.
pub fn skew(now: i64, db: i64) -> Check {
    let d = now - db;
    let detail = format!("this host's clock is {d:+} s from the database's");
    if d.abs() >= SKEW_FAIL_SECS {
        check(
            "clock",
            Verdict::Fail,
            format!(
                "{detail}: token expiry, rotation grace and sync leases go wrong; run NTP on both"
            ),
        )
    } else if d.abs() >= SKEW_WARN_SECS {
        check("clock", Verdict::Warn, format!("{detail}; run NTP on both"))
    } else {
        check("clock", Verdict::Ok, detail)
    }
}

/// Prints the checks; exit 1 when any failed.
pub fn report(checks: &[Check]) -> ExitCode {
    for c in checks {
        let tag = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        println!("{tag}  {:<16} {}", c.name, c.detail);
    }
    if checks.iter().any(|c| c.verdict == Verdict::Fail) {
        println!("\nimd doctor: something must be fixed (FAIL above)");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_thresholds() {
        assert_eq!(skew(1000, 1000).verdict, Verdict::Ok);
        assert_eq!(skew(1000, 994).verdict, Verdict::Warn);
        assert_eq!(skew(1000, 1070).verdict, Verdict::Fail);
    }

    #[test]
    fn certificate_expiry_is_read_from_the_pem() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["imd.test".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        let y2029 = crate::clock::parse_rfc3339("2029-06-01T00:00:00Z").unwrap();
        assert_eq!(certificate(&path, y2029).verdict, Verdict::Ok);
        let dec2029 = crate::clock::parse_rfc3339("2029-12-15T00:00:00Z").unwrap();
        assert_eq!(certificate(&path, dec2029).verdict, Verdict::Warn);
        let y2031 = crate::clock::parse_rfc3339("2031-01-01T00:00:00Z").unwrap();
        let c = certificate(&path, y2031);
        assert_eq!(c.verdict, Verdict::Fail, "{}", c.detail);
        assert!(c.detail.contains("expired"));
        std::fs::write(&path, "not a pem").unwrap();
        assert_eq!(certificate(&path, y2029).verdict, Verdict::Fail);
    }
}
