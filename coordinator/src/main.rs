//! `fedmark-coordinator`: runs a federated training job and writes its model and report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedmark_coordinator::config::CoordinatorConfig;
use fedmark_coordinator::job::RunSettings;
use fedmark_core::spec::JobSpec;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Exit code for configuration or spec errors (BSD EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "fedmark-coordinator",
    version,
    about = "Coordinate fedmark federated training jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve partners and run one job to its end; writes model.json and report.json.
    Serve {
        /// Path of coordinator.toml.
        #[arg(long, env = "FEDMARK_COORDINATOR_CONFIG")]
        config: PathBuf,
        /// Path of the job spec (TOML).
        #[arg(long)]
        job: PathBuf,
    },
    /// Privacy planning with the RDP accountant (Poisson-subsampled Gaussian mechanism).
    Privacy {
        #[command(subcommand)]
        command: PrivacyCommand,
    },
    /// Development setup: make an identity key for each partner and the roster listing them.
    /// In production each partner makes its own key and sends only the public half.
    Roster {
        #[command(subcommand)]
        command: RosterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PrivacyCommand {
    /// ε of T steps of the Gaussian mechanism with noise multiplier σ at sampling rate q.
    Epsilon {
        /// Noise multiplier σ (noise standard deviation over the clipping norm).
        #[arg(long)]
        noise_multiplier: f64,
        /// Poisson sampling rate q per step (1 = no subsampling).
        #[arg(long)]
        sampling_rate: f64,
        /// Number of composed steps T.
        #[arg(long)]
        steps: u64,
        /// δ of the (ε, δ) guarantee.
        #[arg(long)]
        delta: f64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The smallest noise multiplier σ whose T steps at rate q stay within (ε, δ).
    Calibrate {
        /// Target ε.
        #[arg(long)]
        epsilon: f64,
        /// δ of the guarantee.
        #[arg(long)]
        delta: f64,
        /// Poisson sampling rate q per step.
        #[arg(long)]
        sampling_rate: f64,
        /// Number of composed steps T.
        #[arg(long)]
        steps: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RosterCommand {
    /// Write DIR/roster.toml and DIR/<partner>.key for the given partner ids.
    Init {
        /// Comma-separated partner ids.
        #[arg(long, value_delimiter = ',', required = true)]
        partners: Vec<String>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Privacy { command } => match privacy(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Roster {
            command: RosterCommand::Init { partners, out },
        } => match roster_init(&partners, &out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve { config, job } => {
            let (cfg, spec) = match load(&config, &job) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match serve(cfg, spec) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn privacy(command: PrivacyCommand) -> anyhow::Result<()> {
    use fedmark_core::accountant::{Accountant, calibrate_noise_multiplier};
    match command {
        PrivacyCommand::Epsilon {
            noise_multiplier,
            sampling_rate,
            steps,
            delta,
            json,
        } => {
            let mut acc = Accountant::new();
            acc.compose_subsampled_gaussian(sampling_rate, noise_multiplier, steps)?;
            let (epsilon, order) = acc.epsilon(delta)?;
            if json {
                let out = serde_json::json!({
                    "epsilon": epsilon, "delta": delta, "order": order,
                    "noise_multiplier": noise_multiplier, "sampling_rate": sampling_rate, "steps": steps,
                });
                println!("{out}");
            } else {
                println!("epsilon = {epsilon:.6} at delta = {delta:e} (best RDP order {order})");
            }
        }
        PrivacyCommand::Calibrate {
            epsilon,
            delta,
            sampling_rate,
            steps,
            json,
        } => {
            let sigma = calibrate_noise_multiplier(epsilon, delta, sampling_rate, steps)?;
            let mut acc = Accountant::new();
            acc.compose_subsampled_gaussian(sampling_rate, sigma, steps)?;
            let (achieved, _) = acc.epsilon(delta)?;
            if json {
                let out = serde_json::json!({
                    "noise_multiplier": sigma, "epsilon": achieved, "target_epsilon": epsilon,
                    "delta": delta, "sampling_rate": sampling_rate, "steps": steps,
                });
                println!("{out}");
            } else {
                println!(
                    "noise multiplier = {sigma:.6} (epsilon {achieved:.6} <= {epsilon} at delta = {delta:e})"
                );
            }
        }
    }
    Ok(())
}

fn roster_init(partners: &[String], out: &Path) -> anyhow::Result<()> {
    use fedmark_core::secagg::{Roster, generate_identity, keys::signing_key_hex};
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut roster = Roster::new();
    let mut rng = rand::rng();
    for id in partners {
        let key = generate_identity(&mut rng);
        roster
            .insert(id.clone(), key.verifying_key())
            .with_context(|| format!("partner `{id}`"))?;
        let path = out.join(format!("{id}.key"));
        write_secret(&path, &signing_key_hex(&key))?;
    }
    let path = out.join("roster.toml");
    std::fs::write(&path, roster.to_toml()?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {} and {} identity keys in {}",
        path.display(),
        partners.len(),
        out.display()
    );
    Ok(())
}

/// Writes a secret key readable by its owner only.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{text}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn load(config: &Path, job: &Path) -> anyhow::Result<(CoordinatorConfig, JobSpec)> {
    let cfg = CoordinatorConfig::load(config)?;
    cfg.load_roster()?;
    let text = std::fs::read_to_string(job)
        .with_context(|| format!("reading job spec {}", job.display()))?;
    let spec = JobSpec::from_toml(&text).with_context(|| format!("in {}", job.display()))?;
    Ok((cfg, spec))
}

fn serve(cfg: CoordinatorConfig, spec: JobSpec) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        std::fs::create_dir_all(&cfg.out_dir).with_context(|| format!("creating {}", cfg.out_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        // The first stdout line names the bound address, so `listen = "127.0.0.1:0"` works.
        println!("fedmark-coordinator listening on {}", listener.local_addr().context("reading the bound address")?);
        let roster = cfg.load_roster()?;
        let settings = RunSettings {
            expected_partners: roster.len(),
            join_timeout: cfg.join_timeout(),
            phase_timeout: cfg.phase_timeout(),
            roster: std::sync::Arc::new(roster),
        };
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let mut outcome = fedmark_coordinator::run(listener, spec, settings, None, shutdown)
            .await
            .context("running the job")?;
        outcome.report.peak_rss_bytes = fedmark_coordinator::report::peak_rss_bytes();
        let model = serde_json::json!({
            "model_kind": outcome.report.model_kind,
            "input_dim": outcome.model.dim,
            "params": outcome.model.params,
            "feature_mean": outcome.standardizer.mean,
            "feature_std": outcome.standardizer.std,
        });
        write_json(&cfg.out_dir.join("model.json"), &model)?;
        write_json(&cfg.out_dir.join("report.json"), &serde_json::to_value(&outcome.report)?)?;
        info!(out = %cfg.out_dir.display(), auc = outcome.report.final_metrics.auc, "wrote model.json and report.json");
        println!(
            "job {} finished: {} rounds, final AUC {:.4}, log-loss {:.4}; results in {}",
            outcome.report.job_id,
            outcome.report.rounds.len(),
            outcome.report.final_metrics.auc,
            outcome.report.final_metrics.log_loss,
            cfg.out_dir.display()
        );
        Ok(())
    })
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
