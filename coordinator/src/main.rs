//! `fedmark-coordinator`: runs a federated training job and writes its model and report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedmark_coordinator::admin::{AdminAuth, AdminToken};
use fedmark_coordinator::board::{Board, BoardFeed};
use fedmark_coordinator::config::CoordinatorConfig;
use fedmark_coordinator::dashboard::Dashboard;
use fedmark_coordinator::events::JobEvents;
use fedmark_coordinator::export::{self, write_json};
use fedmark_coordinator::job::RunSettings;
use fedmark_coordinator::round::PausePoint;
use fedmark_coordinator::store::Store;
use fedmark_core::accountant::{Bound, Method};
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
    /// Create the durable store in the config's `data_dir` (once; `serve` never creates it)
    /// and the admin token `DATA_DIR/admin.token` for the admin API and the dashboard.
    Init {
        /// Path of coordinator.toml.
        #[arg(long, env = "FEDMARK_COORDINATOR_CONFIG")]
        config: PathBuf,
    },
    /// Run the coordinator. Without `--job` it is a long-running service: partners connect
    /// and stay, jobs come in over the admin API (`fedmark job submit`) and run one at a time,
    /// unfinished jobs resume at start. With `--job` it runs that one job to its end (resuming
    /// it if the store holds it unfinished), writes model.json, model_card.json and
    /// report.json, and exits.
    Serve {
        /// Path of coordinator.toml.
        #[arg(long, env = "FEDMARK_COORDINATOR_CONFIG")]
        config: PathBuf,
        /// Path of a job spec (TOML) to run alone.
        #[arg(long)]
        job: Option<PathBuf>,
    },
    /// Privacy planning with the RDP accountant (Poisson-subsampled Gaussian mechanism).
    Privacy {
        #[command(subcommand)]
        command: PrivacyCommand,
    },
    /// Development setup: a consortium CA with certificates for the coordinator, each
    /// partner and an admin (in production, the consortium's own CA issues them).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// The audit chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Trained models in the store.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
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
        /// Accountant: `pld` (privacy loss distributions, the tightest; it reports the RDP
        /// bound instead if that is ever smaller) or `rdp` (Rényi DP).
        #[arg(long, default_value = "pld")]
        accountant: Method,
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
        /// Accountant the target is met under: `pld` (the tightest) or `rdp`.
        #[arg(long, default_value = "pld")]
        accountant: Method,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write DIR/ca.pem, DIR/coordinator.{pem,key}, DIR/<partner>.{pem,key} and
    /// DIR/admin.{pem,key}.
    Init {
        /// Partner ids (comma-separated), or a count N for partners p0..p(N-1).
        #[arg(long, value_delimiter = ',', required = true)]
        partners: Vec<String>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check an audit log (JSON lines, e.g. DATA_DIR/audit.jsonl): every record intact, in
    /// order, chained to the one before. Exits 1 naming the first bad line.
    Verify {
        /// The log.
        path: PathBuf,
        /// The head hash the log must end at (e.g. from a model card), to catch a cut tail.
        #[arg(long)]
        head: Option<String>,
    },
    /// Write one job's audit records (those whose `data.job` is the job, plus the store's
    /// own records) as JSON lines. The selection is NOT a verifiable chain on its own: records
    /// of other jobs are left out, so `audit verify` fails on it. The full chain's head hash
    /// is printed; check it against DATA_DIR/audit.jsonl with `audit verify --head`.
    Export {
        /// Path of coordinator.toml (its `data_dir` holds the store).
        #[arg(long, env = "FEDMARK_COORDINATOR_CONFIG")]
        config: PathBuf,
        /// Job id (e.g. from report.json or the model card).
        #[arg(long)]
        job: String,
        /// Output file (JSON lines).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Write a job's model for use without fedmark: DIR/weights.npy (float64 parameters),
    /// DIR/pipeline.json (CSV row to model input, layer layout) and, for a finished job,
    /// DIR/model_card.json. Run it while no coordinator holds the store open.
    Export {
        /// Path of coordinator.toml (its `data_dir` holds the store).
        #[arg(long, env = "FEDMARK_COORDINATOR_CONFIG")]
        config: PathBuf,
        /// Job id (e.g. from report.json or the model card).
        #[arg(long)]
        job: String,
        /// The committed round whose model to export (default: the last, i.e. the final
        /// model). Round 0 is the initial model.
        #[arg(long)]
        round: Option<u64>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
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
        // Colour only on a terminal: redirected logs stay plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Privacy { command } => report(privacy(command), EXIT_CONFIG),
        Command::Roster {
            command: RosterCommand::Init { partners, out },
        } => report(roster_init(&partners, &out), EXIT_CONFIG),
        Command::Certs {
            command: CertsCommand::Init { partners, out },
        } => report(certs_init(&partners, &out), EXIT_CONFIG),
        Command::Init { config } => report(init(&config), EXIT_CONFIG),
        Command::Audit {
            command: AuditCommand::Verify { path, head },
        } => report(audit_verify(&path, head.as_deref()), 1),
        Command::Audit {
            command: AuditCommand::Export { config, job, out },
        } => exit_of(audit_export(&config, &job, &out)),
        Command::Model {
            command:
                ModelCommand::Export {
                    config,
                    job,
                    round,
                    out,
                },
        } => exit_of(model_export(&config, &job, round, &out)),
        Command::Serve { config, job } => {
            let (cfg, spec) = match load(&config, job.as_deref()) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            report(serve(cfg, spec), 1)
        }
    }
}

/// Success, or the error on stderr and `code` (64 for bad configuration or arguments, 1 for
/// a failure while running).
fn report(result: anyhow::Result<()>, code: u8) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// The exit code of an export: 64 for a bad config or a job or round the store does not hold,
/// 1 for any other failure.
fn exit_of(result: anyhow::Result<()>) -> ExitCode {
    let usage = result.as_ref().is_err_and(|e| {
        e.chain().any(|c| {
            c.downcast_ref::<fedmark_coordinator::config::ConfigError>()
                .is_some()
                || c.downcast_ref::<fedmark_coordinator::store::StoreError>()
                    .is_some_and(|s| {
                        matches!(s, fedmark_coordinator::store::StoreError::Missing { .. })
                    })
                || c.downcast_ref::<export::ExportError>()
                    .is_some_and(export::ExportError::is_bad_request)
        })
    });
    report(result, if usage { EXIT_CONFIG } else { 1 })
}

fn model_export(config: &Path, job: &str, round: Option<u64>, out: &Path) -> anyhow::Result<()> {
    let cfg = CoordinatorConfig::load(config)?;
    let store = Store::open(&cfg.data_dir)?;
    let done = export::export_model(&store, job, round, out)
        .with_context(|| format!("exporting the model of {job}"))?;
    let latest = if done.round == done.last_round {
        " (the last committed round)"
    } else {
        ""
    };
    println!(
        "exported job {} round {}{latest}: {} parameters, sha256 {}, into {}",
        done.job_id,
        done.round,
        done.params,
        done.model_sha256,
        out.display()
    );
    for f in &done.files {
        println!("  {}", f.display());
    }
    Ok(())
}

fn audit_export(config: &Path, job: &str, out: &Path) -> anyhow::Result<()> {
    let cfg = CoordinatorConfig::load(config)?;
    let store = Store::open(&cfg.data_dir)?;
    if store.job(job)?.is_none() {
        anyhow::bail!(export::ExportError::UnknownJob { id: job.to_owned() });
    }
    let sel = export::job_audit_records(&store, job)?;
    let mut text = sel.lines.join("\n");
    text.push('\n');
    export::write_atomic(out, text.as_bytes())?;
    println!(
        "wrote {} of {} audit records (job {job} and the store's own) to {}",
        sel.lines.len(),
        sel.total,
        out.display()
    );
    println!(
        "a filtered export is not a verifiable chain on its own; the full chain's head is {}: check it with `fedmark-coordinator audit verify {} --head {}`",
        sel.head,
        cfg.data_dir
            .join(fedmark_coordinator::store::AUDIT_FILE)
            .display(),
        sel.head
    );
    Ok(())
}

/// The accountant that gave an ε, for the `privacy` commands' output: its name, and its JSON
/// detail (the discretisation interval of a PLD, the order of an RDP bound).
fn bound_fields(bound: Bound) -> (Method, serde_json::Value, String) {
    match bound {
        Bound::Pld { discretisation } => (
            Method::Pld,
            serde_json::json!({ "discretisation_interval": discretisation }),
            format!("PLD, discretisation interval {discretisation:.3e}"),
        ),
        Bound::Rdp { order } => (
            Method::Rdp,
            serde_json::json!({ "order": order }),
            format!("RDP, best order {order}"),
        ),
    }
}

fn privacy(command: PrivacyCommand) -> anyhow::Result<()> {
    use fedmark_core::accountant::{Accountant, calibrate_noise_multiplier_with};
    match command {
        PrivacyCommand::Epsilon {
            noise_multiplier,
            sampling_rate,
            steps,
            delta,
            accountant,
            json,
        } => {
            let mut acc = Accountant::new();
            acc.compose_subsampled_gaussian(sampling_rate, noise_multiplier, steps)?;
            let (epsilon, bound) = acc.epsilon_with(accountant, delta)?;
            let (method, detail, text) = bound_fields(bound);
            if json {
                let mut out = serde_json::json!({
                    "epsilon": epsilon, "delta": delta, "accountant": method.to_string(),
                    "noise_multiplier": noise_multiplier, "sampling_rate": sampling_rate, "steps": steps,
                });
                merge_json(&mut out, detail);
                println!("{out}");
            } else {
                println!("epsilon = {epsilon:.6} at delta = {delta:e} ({text})");
            }
        }
        PrivacyCommand::Calibrate {
            epsilon,
            delta,
            sampling_rate,
            steps,
            accountant,
            json,
        } => {
            let sigma =
                calibrate_noise_multiplier_with(accountant, epsilon, delta, sampling_rate, steps)?;
            let mut acc = Accountant::new();
            acc.compose_subsampled_gaussian(sampling_rate, sigma, steps)?;
            let (achieved, bound) = acc.epsilon_with(accountant, delta)?;
            let (method, detail, text) = bound_fields(bound);
            if json {
                let mut out = serde_json::json!({
                    "noise_multiplier": sigma, "epsilon": achieved, "target_epsilon": epsilon,
                    "delta": delta, "sampling_rate": sampling_rate, "steps": steps,
                    "accountant": method.to_string(),
                });
                merge_json(&mut out, detail);
                println!("{out}");
            } else {
                println!(
                    "noise multiplier = {sigma:.6} (epsilon {achieved:.6} <= {epsilon} at delta = {delta:e}; {text})"
                );
            }
        }
    }
    Ok(())
}

/// Adds the fields of the JSON object `extra` to the object `out`.
fn merge_json(out: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(out), serde_json::Value::Object(extra)) = (out.as_object_mut(), extra) {
        out.extend(extra);
    }
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
    fedmark_proto::durable::replace(&path, roster.to_toml()?.as_bytes())
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

fn certs_init(partners: &[String], out: &Path) -> anyhow::Result<()> {
    let ids: Vec<String> = match partners {
        [n] if n.parse::<usize>().is_ok() => {
            let n: usize = n.parse()?;
            (0..n).map(|i| format!("p{i}")).collect()
        }
        _ => partners.to_vec(),
    };
    let certs = fedmark_coordinator::tls::DevCerts::generate("fedmark development CA", &ids)?;
    certs.write(out)?;
    println!(
        "wrote a development CA, the coordinator's, an admin's and {} partner certificates in {}",
        ids.len(),
        out.display()
    );
    Ok(())
}

fn init(config: &Path) -> anyhow::Result<()> {
    let cfg = CoordinatorConfig::load(config)?;
    Store::init(&cfg.data_dir)?;
    let (_, token) = AdminToken::ensure(&cfg.data_dir)?;
    println!(
        "created the coordinator store in {}; the admin token is in {}",
        cfg.data_dir.display(),
        token.display()
    );
    Ok(())
}

fn audit_verify(path: &Path, head: Option<&str>) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v = fedmark_core::audit::verify(&text, head)
        .with_context(|| format!("{} does not verify", path.display()))?;
    println!(
        "{}: {} records, chain intact, head {}",
        path.display(),
        v.records,
        v.head
    );
    Ok(())
}

fn load(config: &Path, job: Option<&Path>) -> anyhow::Result<(CoordinatorConfig, Option<JobSpec>)> {
    let cfg = CoordinatorConfig::load(config)?;
    cfg.load_roster()?;
    let spec = match job {
        Some(job) => {
            let text = std::fs::read_to_string(job)
                .with_context(|| format!("reading job spec {}", job.display()))?;
            Some(JobSpec::from_toml(&text).with_context(|| format!("in {}", job.display()))?)
        }
        None => None,
    };
    // Checked before any port is bound: a coordinator without its store does not start.
    if !cfg
        .data_dir
        .join(fedmark_coordinator::store::STORE_FILE)
        .is_file()
    {
        anyhow::bail!(fedmark_coordinator::store::StoreError::Missing {
            dir: cfg.data_dir.display().to_string()
        });
    }
    Ok((cfg, spec))
}

fn serve(cfg: CoordinatorConfig, spec: Option<JobSpec>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        // The first stdout line names the bound address, so `listen = "127.0.0.1:0"` works.
        println!("fedmark-coordinator listening on {}", listener.local_addr().context("reading the bound address")?);
        let roster = cfg.load_roster()?;
        let store = Store::open(&cfg.data_dir)?;
        let (token, token_path) = AdminToken::ensure(&cfg.data_dir)?;
        let board = Board::from_store(&store)?;
        let metrics = fedmark_coordinator::metrics::Metrics::default();
        if let Some(at) = cfg.metrics_listen {
            let listener = fedmark_coordinator::http::bind(at)
                .await
                .with_context(|| format!("binding the metrics address {at}"))?;
            let bound = listener.local_addr().context("reading the bound metrics address")?;
            // Under mutual TLS the listener is TLS too, with the same CA and certificate.
            let tls = cfg.tls.as_ref().map(|t| t.load_http()).transpose()?;
            // The second stdout line names it, so `metrics_listen = "127.0.0.1:0"` works.
            println!("fedmark-coordinator metrics on {bound}");
            // `serve` drops the dashboard from a plain non-loopback listener (and says so).
            if fedmark_coordinator::http::serves_dashboard_on(&bound, tls.is_some()) {
                let (scheme, credential) = if tls.is_some() {
                    ("https", "an admin client certificate and the admin token")
                } else {
                    ("http", "the admin token")
                };
                println!("fedmark-coordinator dashboard on {scheme}://{bound}/dashboard (needs {credential} in {})", token_path.display());
            }
            let dashboard = Dashboard { board: board.clone(), store: store.clone(), token: token.clone() };
            tokio::spawn(fedmark_coordinator::http::serve(listener, metrics.clone(), Some(dashboard), tls, std::future::pending()));
        }
        let pause_at = match std::env::var("FEDMARK_TEST_PAUSE_AT") {
            Ok(v) => Some(PausePoint::parse(&v).with_context(|| {
                format!("FEDMARK_TEST_PAUSE_AT={v}: expected PHASE:ROUND with PHASE keys|shares|input|unmask")
            })?),
            Err(_) => None,
        };
        let settings = RunSettings {
            max_model_params: cfg.max_model_params,
            expected_partners: roster.len(),
            join_timeout: cfg.join_timeout(),
            phase_timeout: cfg.phase_timeout(),
            transfer_slots: cfg.transfer_slots,
            transfer_idle: fedmark_coordinator::bulk::TRANSFER_IDLE,
            roster: std::sync::Arc::new(roster),
            store: store.clone(),
            submitted_by: std::env::var("USER").unwrap_or_else(|_| "operator".into()),
            pause_at,
            tls: cfg.tls.as_ref().map(|t| t.load()).transpose()?,
            events: JobEvents::default()
                .with(metrics)
                .with(BoardFeed { board: board.clone(), store: store.clone() }),
        };
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let Some(spec) = spec else {
            let auth = AdminAuth { token, require_admin_cert: settings.tls.is_some() };
            info!("serving jobs; submit them with `fedmark job submit`");
            fedmark_coordinator::server::serve_jobs(listener, settings, board, auth, shutdown)
                .await
                .context("serving jobs")?;
            println!("fedmark-coordinator stopped");
            return Ok(());
        };
        run_one(&cfg, listener, spec, settings, shutdown).await
    })
}

/// `serve --job`: runs one job and writes its results into the config's `out_dir`.
async fn run_one(
    cfg: &CoordinatorConfig,
    listener: tokio::net::TcpListener,
    spec: JobSpec,
    settings: RunSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.out_dir)
        .with_context(|| format!("creating {}", cfg.out_dir.display()))?;
    let store = settings.store.clone();
    let mut outcome = fedmark_coordinator::run(listener, spec, settings, None, shutdown)
        .await
        .context("running the job")?;
    outcome.report.peak_rss_bytes = fedmark_coordinator::report::peak_rss_bytes();
    // Streamed from the model itself: a `serde_json::Value` of a million parameters would
    // take several times the model's own memory. Fields in the order a `Value` sorts them.
    #[derive(serde::Serialize)]
    struct ModelFile<'a> {
        feature_mean: &'a [f64],
        feature_std: &'a [f64],
        input_dim: usize,
        model_kind: &'a str,
        params: &'a [f64],
    }
    let model = ModelFile {
        feature_mean: &outcome.standardizer.mean,
        feature_std: &outcome.standardizer.std,
        input_dim: outcome.model.dim,
        model_kind: &outcome.report.model_kind,
        params: &outcome.model.params,
    };
    export::write_json_streamed(&cfg.out_dir.join("model.json"), &model)?;
    write_json(
        &cfg.out_dir.join("report.json"),
        &serde_json::to_value(&outcome.report)?,
    )?;
    let card = export::model_card(&store, &outcome)?;
    let card_bytes = write_json(&cfg.out_dir.join(export::CARD_FILE), &card)?;
    export::write_atomic(
        &cfg.out_dir
            .join(fedmark_coordinator::card::CARD_MARKDOWN_FILE),
        fedmark_coordinator::card::markdown(&card).as_bytes(),
    )?;
    store.audit(vec![(
        "model_exported",
        serde_json::json!({
            "job": outcome.report.job_id,
            "model_sha256": fedmark_core::audit::f64s_sha256(&outcome.model.params),
            "card_sha256": fedmark_core::audit::sha256_hex(&card_bytes),
            "out_dir": cfg.out_dir.display().to_string(),
        }),
    )])?;
    info!(out = %cfg.out_dir.display(), auc = outcome.report.final_metrics.auc, "wrote model.json, model_card.json, model_card.md and report.json");
    println!(
        "job {} finished: {} rounds, final AUC {}, log-loss {}; results in {}",
        outcome.report.job_id,
        outcome.report.rounds.len(),
        fedmark_core::metrics::show(outcome.report.final_metrics.auc),
        fedmark_core::metrics::show(outcome.report.final_metrics.log_loss),
        cfg.out_dir.display()
    );
    Ok(())
}
