//! `imd connector ...` subcommands owned by the directory side. Only `check` lives here; the
//! channel's `register` and `run` are added by the channel work.

use std::path::PathBuf;

use clap::Subcommand;

use crate::connector::config::ConnectorConfig;

#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Bind with the configured service account, read the root DSE and the first page of
    /// users, and print what was found.
    Check {
        /// Connector configuration (TOML); IMD_CONNECTOR_* variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    // TODO(channel): Register { .. } and Run { .. } (owned by the channel side).
}

/// Runs a directory-side subcommand; the report goes to stdout, errors are returned.
pub async fn run_command(cmd: ConnectorCommand) -> anyhow::Result<()> {
    match cmd {
        ConnectorCommand::Check { config } => {
            let cfg = ConnectorConfig::load(config.as_deref())?;
            let report = crate::connector::directory::check(&cfg)
                .await
                .map_err(|e| anyhow::anyhow!("{:?}: {}", e.code, e.message))?;
            print!("{report}");
            Ok(())
        }
    }
}
