//! `imd client`: the reference activation client, i.e. what a vendor's agent does at first start
//! (and what IT can run by hand to test a rollout). `activate` collects this machine's identifiers
//! and the signed-in user, posts them with the mass-deployment token and keeps the returned device
//! credential; `status` checks that credential against the server. See docs/client.md.

pub mod activate;
pub mod identity;
pub mod state;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// Exit codes, shared by `activate` and `status` so scripts can branch on them.
pub mod exit {
    /// Activated (201 or an idempotent 200); for `status`: the credential is valid.
    pub const OK: u8 = 0;
    /// The server refused for good (a 4xx other than 429), or rejected the credential.
    pub const REFUSED: u8 = 2;
    /// Gave up: the server stayed unreachable or busy until the deadline.
    pub const GAVE_UP: u8 = 3;
    /// Local problem: no token, bad arguments, state directory not writable, not activated.
    pub const LOCAL: u8 = 4;
}

const EXIT_CODES_HELP: &str = "Exit codes:
  0  activated (new binding, or an idempotent repeat)
  2  permanent refusal (the server's error.code and error.message are printed)
  3  gave up: network errors, 429 or 5xx until --deadline-secs ran out
  4  local error: no token, bad arguments, state directory not writable
(Command-line syntax errors are reported by the argument parser with its own exit code 2.)";

const STATUS_EXIT_HELP: &str = "Exit codes:
  0  activated and the server accepts the credential
  2  the server rejects the credential (device revoked or unknown)
  3  the server cannot be reached (or answers 429/5xx)
  4  this machine is not activated (no state file) or the state file is unreadable";

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Activate this machine with a mass-deployment token (what an agent does at first start).
    #[command(after_help = EXIT_CODES_HELP)]
    Activate(Box<ActivateArgs>),
    /// Show whether this machine is activated and check the credential with the server.
    #[command(after_help = STATUS_EXIT_HELP)]
    Status(StatusArgs),
}

#[derive(Debug, Args, Clone, Default)]
pub struct ActivateArgs {
    /// Mass-deployment token (a JWT).
    #[arg(long, env = "IMD_TOKEN", hide_env_values = true, value_name = "JWT")]
    pub token: Option<String>,
    /// Read the token (and server) from the machine policy when neither --token nor IMD_TOKEN is
    /// set: the registry on Windows, managed preferences on macOS, /etc/imd/token on Linux.
    #[arg(long)]
    pub token_from_policy: bool,
    /// Vendor name used in the policy locations (HKLM\Software\Policies\<vendor>\IMD,
    /// com.<vendor>.imd).
    #[arg(long, default_value = "Imd")]
    pub vendor: String,
    /// Server URL, e.g. https://imd.example.com. Default: the policy's Server,
    /// else the token's issuer.
    #[arg(long, env = "IMD_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Where the install key and the credential are kept.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Stop retrying transient failures after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub deadline_secs: u64,
    /// Print the request that would be sent (token and install key redacted); send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON (for scripts).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub overrides: identity::Overrides,
}

#[derive(Debug, Args, Clone, Default)]
pub struct StatusArgs {
    /// Where `activate` stored the credential.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: ClientCommand) -> ExitCode {
    // reqwest's rustls needs a process-wide provider for https servers.
    crate::startup::install_crypto_provider();
    let code = match cmd {
        ClientCommand::Activate(args) => activate::run(*args).await,
        ClientCommand::Status(args) => status::run(args).await,
    };
    ExitCode::from(code)
}

/// A `reqwest` client for the client commands. `timeout` bounds each whole request.
fn http_client(timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("imd-client/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10).min(timeout))
        .timeout(timeout)
        .build()
}

/// `https://imd.example.com/` + `/api/v1/x` without a double slash; only http(s) URLs pass.
fn endpoint(server: &str, path: &str) -> Result<String, String> {
    let s = server.trim().trim_end_matches('/');
    if !(s.starts_with("http://") || s.starts_with("https://")) || s.len() <= "https://".len() {
        return Err(format!(
            "server must be an http:// or https:// URL, got {server:?}"
        ));
    }
    Ok(format!("{s}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_join_cleanly_and_reject_non_http() {
        assert_eq!(
            endpoint("https://imd.example.com/", "/api/v1/device").unwrap(),
            "https://imd.example.com/api/v1/device"
        );
        assert!(endpoint("imd.example.com", "/x").is_err());
        assert!(endpoint("ftp://x", "/x").is_err());
    }
}
