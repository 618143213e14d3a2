//! `imd bench` (to be written).
use std::process::ExitCode;
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}
pub async fn run(_a: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bench not written yet")
}
