use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    imd::cli::run(imd::cli::Cli::parse()).await
}
