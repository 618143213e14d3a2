//! Logging setup. Filter from `IMD_LOG` (or `RUST_LOG`), default `info`; text or JSON lines.
//!
//! Third-party crates that see request and response bytes (HTTP/2 frames, WebSocket frames —
//! the connector channel carries directory answers and LDAP passwords to check —, TLS records,
//! LDAP operations) are capped at `info` whatever the filter says, so `RUST_LOG=trace` shows
//! imd's own trace lines without payloads. Naming such a crate in the filter (`h2=trace`)
//! lifts its cap, for debugging on a test system only.

use tracing_subscriber::EnvFilter;

/// Crates capped at `info` unless the filter names them.
const CAPPED: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "reqwest",
    "rustls",
    "tungstenite",
    "tokio_tungstenite",
    "actix_http",
    "actix_ws",
    "actix_server",
    "ldap3",
    "lber",
];

/// The filter directives: the operator's, then a cap for every payload-carrying crate they
/// did not name. The cap only ever lowers what the operator's default level lets through
/// (`warn` or `off` stay as quiet as asked).
pub fn filter_directives(user: &str) -> String {
    let named = |krate: &str| {
        user.split(',').any(|d| {
            let target = d.split(['=', '[']).next().unwrap_or("").trim();
            target == krate || target.starts_with(&format!("{krate}::"))
        })
    };
    // The bare level (`debug` in `debug,sqlx=warn`) is what an unnamed crate gets; without one,
    // unnamed crates log nothing.
    let verbose = user
        .split(',')
        .map(str::trim)
        .any(|d| d.eq_ignore_ascii_case("debug") || d.eq_ignore_ascii_case("trace"));
    let mut out = user.to_string();
    if verbose {
        for krate in CAPPED.iter().filter(|k| !named(k)) {
            out.push_str(&format!(",{krate}=info"));
        }
    }
    out
}

pub fn init(json: bool) {
    let filter = std::env::var("IMD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter_directives(&filter)))
        .with_writer(std::io::stderr);
    // try_init: a second call (tests, demo inside a process that already logs) is harmless.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::filter_directives;

    #[test]
    fn payload_crates_are_capped_unless_named() {
        let f = filter_directives("trace");
        assert!(
            f.starts_with("trace,") && f.contains(",h2=info") && f.contains(",tungstenite=info")
        );
        let f = filter_directives("debug,h2=trace,hyper::proto=debug");
        assert!(!f.contains("h2=info") && !f.contains("hyper=info"), "{f}");
        assert!(f.contains("reqwest=info"));
        // A quieter default is left alone: the cap never turns a crate on.
        for quiet in ["info,sqlx=warn", "warn", "off", "imd=debug"] {
            assert_eq!(filter_directives(quiet), quiet);
        }
        // The result is a filter tracing accepts.
        tracing_subscriber::EnvFilter::try_new(filter_directives("info,sqlx=warn")).unwrap();
    }
}
