//! `fedmark-client`: runs a partner node until the coordinator's job finishes, reconnecting
//! when a session ends early (coordinator restart, network error).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fedmark_client::config::ClientConfig;
use fedmark_client::node::{self, NodeOptions};
use tracing_subscriber::EnvFilter;

/// Exit code for a configuration that cannot be used (BSD EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "fedmark-client",
    version,
    about = "Run a fedmark partner node beside your own data"
)]
struct Cli {
    /// Path of client.toml.
    #[arg(long, env = "FEDMARK_CLIENT_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = match ClientConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: ClientConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let summary = rt
        .block_on(node::run_until_finished(&cfg, NodeOptions::default()))
        .with_context(|| format!("partner `{}`", cfg.partner_id))?;
    if let Some(reason) = &summary.refused {
        anyhow::bail!("refused the job: {reason}");
    }
    println!(
        "partner {}: contributed to {} rounds; job finished: {}",
        cfg.partner_id, summary.rounds_contributed, summary.finish_reason
    );
    Ok(())
}
