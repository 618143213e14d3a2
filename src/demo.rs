//! `imd demo` (to be written).
use std::process::ExitCode;
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}
pub async fn run(_a: DemoArgs, _f: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("demo not written yet")
}
