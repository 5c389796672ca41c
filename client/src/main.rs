//! `fedmark-client`: runs a partner node: it stays connected to the coordinator and answers
//! every job offered (or, with `--once`, leaves after the first job ends), reconnecting when a
//! session ends early (coordinator restart, network error); `fedmark-client audit verify PATH`
//! checks a partner's audit file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedmark_client::audit::verify_file;
use fedmark_client::config::ClientConfig;
use fedmark_client::ledger::Ledger;
use fedmark_client::node::{self, NodeOptions};
use fedmark_client::policy::PartnerPolicy;
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
    /// Path of client.toml (runs the node).
    #[arg(long, env = "FEDMARK_CLIENT_CONFIG")]
    config: Option<PathBuf>,
    /// Leave after the first job ends (by default the node stays for the next jobs).
    #[arg(long)]
    once: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node (the same as `--config` without a subcommand).
    Run {
        /// Path of client.toml.
        #[arg(long, env = "FEDMARK_CLIENT_CONFIG")]
        config: PathBuf,
        /// Leave after the first job ends.
        #[arg(long)]
        once: bool,
    },
    /// The partner's audit file.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check that an audit file is an unbroken hash chain; on failure, say which line.
    Verify {
        /// The audit file (JSON lines).
        path: PathBuf,
        /// The hash its last record must have (kept elsewhere: catches records removed from
        /// the end).
        #[arg(long)]
        head: Option<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: redirected logs stay plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let cli = Cli::parse();
    let (config, once) = match cli.command {
        Some(Command::Audit {
            command: AuditCommand::Verify { path, head },
        }) => return verify(&path, head.as_deref()),
        Some(Command::Run { config, once }) => (config, once || cli.once),
        None => match cli.config {
            Some(c) => (c, cli.once),
            None => {
                eprintln!(
                    "error: give --config PATH to run the node, or a subcommand (see --help)"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let cfg = match ClientConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // A policy that does not load is a configuration error, found before dialling anyone.
    if let Some(policy) = &cfg.policy
        && let Err(e) = PartnerPolicy::load(policy)
    {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // The privacy ledger must be usable before dialling anyone: its folder is made now, and a
    // damaged ledger is refused, never started over.
    if let Err(e) = check_ledger(&cfg) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match run(cfg, once) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_ledger(cfg: &ClientConfig) -> anyhow::Result<()> {
    let Some(path) = cfg.ledger_path() else {
        tracing::warn!(
            "the privacy ledger is kept in memory only (`ledger_in_memory`): it is forgotten when a session ends"
        );
        return Ok(());
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the ledger's folder {}", dir.display()))?;
    }
    Ledger::open(Some(&path))?;
    tracing::info!(ledger = %path.display(), "privacy ledger");
    Ok(())
}

fn verify(path: &std::path::Path, head: Option<&str>) -> ExitCode {
    match verify_file(path, head) {
        Ok(v) => {
            println!("{}: {} records, head {}", path.display(), v.records, v.head);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: ClientConfig, once: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let options = NodeOptions {
        keep_serving: !once,
        ..NodeOptions::default()
    };
    let summary = rt
        .block_on(node::run_until_finished(&cfg, options))
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
