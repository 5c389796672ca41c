//! The multi-party simulation: one coordinator and N partner clients in one process, talking
//! real gRPC over 127.0.0.1, plus the baselines a federated model should be judged against.
//!
//! The report's `final` metrics are exact, computed on the pooled test rows (the union of
//! every partner's holdout rows) with the final global model; `final_federated` is what the
//! coordinator derived from the secure sum of the partners' evaluation statistics. Baselines use
//! the same model family, features and trainer on the same pooled test rows: centralised
//! training on the pooled training rows, and each partner training alone.
//!
//! Governance: every partner keeps an audit file (`--audit-dir`). With `--consent-rate P` the
//! partner files get a user-id column and each partner a consent file in which each user
//! consents to the job's purpose with probability P; `--withdraw AT:FRACTION` withdraws that
//! fraction of each partner's consented users at the start of training round AT (through the
//! client's round hook, before its snapshot), so round AT is the first without them. The
//! report's `rounds[].usable_records` comes from the partners' audit files, never from the
//! coordinator, which does not learn per-partner counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fedmark_client::config::{ClientConfig, ClientTls};
use fedmark_client::consent::now_unix;
use fedmark_client::data::{HoldoutSplit, LocalData, load_csv, load_csv_keyed};
use fedmark_client::node::{self, DropPoint, Dropout, Identity, NodeOptions, RoundHook};
use fedmark_coordinator::job::{JobOutcome, RunSettings};
use fedmark_coordinator::report::{FinalMetrics, JobReport, RoundRecord};
use fedmark_coordinator::store::Store;
use fedmark_coordinator::tls::{DevCerts, server_config};
use fedmark_core::features::{FeatureSchema, RawRows, Standardizer};
use fedmark_core::matrix::Dataset;
use fedmark_core::metrics::{self, Metrics};
use fedmark_core::model::{Architecture, Model};
use fedmark_core::secagg::{Roster, generate_identity};
use fedmark_core::spec::JobSpec;
use fedmark_core::train::{LocalTraining, train_local};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::partition::{Split, partition_csv, partition_csv_keyed};
use crate::synthetic;

/// Everything a simulation run needs.
///
/// The defaults point into the source tree this crate was built from (for the tests); the
/// `fedmark-sim` binary resolves its own defaults from the working folder.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Source CSV (ignored with a synthetic workload).
    pub data: PathBuf,
    /// Job spec (ignored with a synthetic workload).
    pub spec: PathBuf,
    /// Write the final model into this folder as `model export` does (`weights.npy`,
    /// `pipeline.json`, `model_card.json`), with the coordinator's own export code.
    pub export: Option<PathBuf>,
    /// Number of partners.
    pub partners: usize,
    /// How rows are split among partners.
    pub split: Split,
    /// Overrides the spec's round count.
    pub rounds: Option<u32>,
    /// Seed of the split, the holdouts and local training.
    pub seed: u64,
    /// Share of each partner's rows held out for evaluation.
    pub holdout_fraction: f64,
    /// Overrides the spec's secure-aggregation switch.
    pub secure_agg: Option<bool>,
    /// Overrides the spec's privacy mode.
    pub dp_mode: Option<fedmark_core::spec::PrivacyMode>,
    /// Overrides the spec's ε budget.
    pub epsilon: Option<f64>,
    /// Overrides the spec's δ.
    pub delta: Option<f64>,
    /// Overrides the spec's DP clipping norm (or makes it adaptive).
    pub clip: Option<fedmark_core::spec::Clip>,
    /// Overrides the accountant σ is calibrated on.
    pub accountant: Option<fedmark_core::accountant::Method>,
    /// Overrides the model family (`gbdt` keeps the spec's `[model.gbdt]` or its defaults).
    pub model: Option<fedmark_core::spec::ModelKindName>,
    /// Synthetic workload: (dimension, rows per partner).
    pub synthetic: Option<(usize, usize)>,
    /// Scripted dropouts: (partner index, dropout).
    pub dropouts: Vec<(usize, Dropout)>,
    /// Each partner drops out of each training round with this probability.
    pub dropout_rate: f64,
    /// Where random dropouts happen (random phase when absent).
    pub dropout_phase: Option<DropPoint>,
    /// Deadline of each round's input phase.
    pub phase_timeout: Duration,
    /// Skip the baselines (scale runs).
    pub skip_baselines: bool,
    /// Print a line per round to stderr.
    pub show_progress: bool,
    /// Run the coordinator as this binary in its own process (so its memory is measured
    /// alone) instead of in this process.
    pub coordinator_binary: Option<PathBuf>,
    /// Each simulated user consents to the job's purpose with this probability (no consent
    /// source when absent).
    pub consent_rate: Option<f64>,
    /// (training round, fraction): withdraw that fraction of each partner's consented users
    /// at the start of that round.
    pub withdraw: Option<(u64, f64)>,
    /// Folder of the partners' audit files (`partner-<i>.audit.jsonl`); the discarded work
    /// folder when absent.
    pub audit_dir: Option<PathBuf>,
    /// Mutual TLS between the partners and the coordinator, with a throwaway development CA
    /// (on by default, as a deployment runs).
    pub tls: bool,
    /// Serve the coordinator's Prometheus metrics and health check on this address (none
    /// when absent).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Give each partner node its own `seed` (as the simulator does by default); without,
    /// the nodes run as a deployment's unseeded ones do.
    pub partner_seeds: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        let root = workspace_root();
        Self {
            data: root.join("data/bank_marketing.csv"),
            spec: root.join("examples/bank-job.toml"),
            export: None,
            partners: 5,
            split: Split::ByColumn("job".into()),
            rounds: None,
            seed: 42,
            holdout_fraction: 0.2,
            secure_agg: None,
            dp_mode: None,
            epsilon: None,
            delta: None,
            clip: None,
            accountant: None,
            model: None,
            synthetic: None,
            dropouts: Vec::new(),
            dropout_rate: 0.0,
            dropout_phase: None,
            phase_timeout: Duration::from_secs(120),
            skip_baselines: false,
            show_progress: true,
            coordinator_binary: None,
            consent_rate: None,
            withdraw: None,
            audit_dir: None,
            tls: true,
            metrics_listen: None,
            partner_seeds: true,
        }
    }
}

/// The folder holding the workspace's `Cargo.toml`, from this crate's manifest location.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// One partner's baseline.
#[derive(Debug, Clone, Serialize)]
pub struct PartnerBaseline {
    /// Partner id.
    pub partner: String,
    /// Training rows.
    pub rows: usize,
    /// AUC on the pooled test rows.
    pub auc: f64,
}

/// Centralised baseline.
#[derive(Debug, Clone, Serialize)]
pub struct CentralBaseline {
    /// AUC on the pooled test rows.
    pub auc: f64,
    /// Log-loss on the pooled test rows.
    pub log_loss: f64,
}

/// Baselines.
#[derive(Debug, Clone, Serialize)]
pub struct Baselines {
    /// Training on all pooled training rows.
    pub centralized: CentralBaseline,
    /// Each partner alone.
    pub partners_alone: Vec<PartnerBaseline>,
}

/// Per-partner data facts.
#[derive(Debug, Clone, Serialize)]
pub struct PartnerInfo {
    /// Partner id.
    pub partner: String,
    /// Training rows.
    pub train_rows: usize,
    /// Holdout rows.
    pub holdout_rows: usize,
    /// Rows skipped as bad.
    pub skipped_rows: u64,
    /// Consent facts (with `--consent-rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent: Option<ConsentInfo>,
    /// The partner's audit file.
    pub audit_file: PathBuf,
}

/// A partner's simulated consents, as the simulator wrote them.
#[derive(Debug, Clone, Serialize)]
pub struct ConsentInfo {
    /// Users with a consent for the job's purpose.
    pub consented_users: u64,
    /// Of those, users withdrawn by `--withdraw`.
    pub withdrawn_users: u64,
    /// Rows of the withdrawn users in the partner's file.
    pub withdrawn_rows: u64,
}

/// One training round of the report: the coordinator's record and, from each partner's
/// audit file, the records it could use in that round.
#[derive(Debug, Clone, Serialize)]
pub struct SimRound {
    /// The coordinator's record of the round.
    #[serde(flatten)]
    pub record: RoundRecord,
    /// Per partner: training plus holdout rows of users with an active consent (all usable
    /// rows without a consent source), from the partner's `consent_snapshot` audit record.
    pub usable_records: BTreeMap<String, u64>,
}

impl std::ops::Deref for SimRound {
    type Target = RoundRecord;
    fn deref(&self) -> &RoundRecord {
        &self.record
    }
}

/// Final metrics of the simulation: exact, on the pooled test rows, with the privacy spent.
#[derive(Debug, Clone, Serialize)]
pub struct SimFinal {
    /// ROC AUC.
    pub auc: f64,
    /// Mean log-loss.
    pub log_loss: f64,
    /// Accuracy at 0.5.
    pub accuracy: f64,
    /// Lift at the top decile.
    pub lift_top_decile: f64,
    /// Rows evaluated.
    pub count: u64,
    /// ε spent (differentially private jobs).
    pub epsilon: Option<f64>,
    /// δ of the guarantee (differentially private jobs).
    pub delta: Option<f64>,
}

/// What `--export` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SimExport {
    /// The folder.
    pub dir: PathBuf,
    /// The committed round exported (the last).
    pub round: u64,
    /// SHA-256 of the weights, as the audit chain and the model card name them.
    pub model_sha256: String,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// The simulation report (`--report`).
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Exact metrics of the final model on the pooled test rows.
    #[serde(rename = "final")]
    pub final_metrics: SimFinal,
    /// The coordinator's federated metrics of the final model.
    pub final_federated: FinalMetrics,
    /// Training rounds.
    pub rounds: Vec<SimRound>,
    /// Baselines (absent with `--no-baselines`).
    pub baselines: Option<Baselines>,
    /// Partners.
    pub partners: Vec<PartnerInfo>,
    /// The coordinator's job report.
    pub job: JobReport,
    /// SHA-256 of the final model's parameters (little-endian f64).
    pub model_sha256: String,
    /// Seconds from start to the coordinator's last round.
    pub seconds: f64,
    /// The model export (`--export`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<SimExport>,
}

/// Partner id of partner `i`.
pub fn partner_id(i: usize) -> String {
    format!("partner-{i}")
}

/// Runs a simulation to its report.
pub async fn run(opts: &SimOptions) -> anyhow::Result<SimReport> {
    let started = Instant::now();
    let work = tempfile::tempdir().context("creating a work folder")?;
    if let Some(rate) = opts.consent_rate
        && !(0.0..=1.0).contains(&rate)
    {
        bail!("--consent-rate must be a probability in [0, 1], got {rate}");
    }
    if let Some((at, fraction)) = opts.withdraw {
        if opts.consent_rate.is_none() {
            bail!("--withdraw needs --consent-rate");
        }
        if at == 0 || !(0.0..=1.0).contains(&fraction) {
            bail!("--withdraw takes ROUND:FRACTION with ROUND >= 1 and FRACTION in [0, 1]");
        }
    }
    if opts.consent_rate.is_some() && opts.synthetic.is_some() {
        bail!("--consent-rate needs --data (synthetic workloads have no user ids)");
    }
    let (files, spec_text) = match opts.synthetic {
        Some((dim, rows)) => {
            let rounds = opts.rounds.unwrap_or(5);
            synthetic::generate(work.path(), dim, opts.partners, rows, rounds, opts.seed)?
        }
        None => {
            let spec_text = std::fs::read_to_string(&opts.spec)
                .with_context(|| format!("reading job spec {}", opts.spec.display()))?;
            let files = match opts.consent_rate {
                Some(_) => partition_csv_keyed(
                    &opts.data,
                    work.path(),
                    opts.partners,
                    &opts.split,
                    opts.seed,
                    USER_ID_COLUMN,
                )?,
                None => partition_csv(
                    &opts.data,
                    work.path(),
                    opts.partners,
                    &opts.split,
                    opts.seed,
                )?,
            };
            (files, spec_text)
        }
    };
    let mut spec = JobSpec::from_toml(&spec_text).context("in the job spec")?;
    if let Some(r) = opts.rounds {
        spec.job.rounds = r;
    }
    if let Some(s) = opts.secure_agg {
        spec.aggregation.secure = s;
    }
    if let Some(kind) = opts.model {
        use fedmark_core::spec::ModelKindName;
        spec.model.kind = kind;
        if kind != ModelKindName::Mlp {
            spec.model.hidden = None;
        } else if spec.model.hidden.is_none() {
            spec.model.hidden = Some(16);
        }
        if kind != ModelKindName::Gbdt {
            spec.model.gbdt = None;
        }
    }
    if let Some(m) = opts.dp_mode {
        spec.privacy.mode = m;
    }
    if let Some(e) = opts.epsilon {
        spec.privacy.epsilon = e;
        spec.privacy.noise_multiplier = None;
    }
    if let Some(d) = opts.delta {
        spec.privacy.delta = d;
    }
    if let Some(c) = opts.clip {
        spec.privacy.clip = c;
    }
    if let Some(a) = opts.accountant {
        spec.privacy.accountant = a;
        spec.privacy.noise_multiplier = None;
    }
    spec.validate()
        .context("in the job spec after command-line overrides")?;
    if opts.partners < spec.aggregation.min_participants as usize {
        bail!(
            "--partners {} is below the spec's aggregation.min_participants ({})",
            opts.partners,
            spec.aggregation.min_participants
        );
    }

    // Each simulated partner gets its identity key; the roster lists their public halves.
    let mut key_rng = rand::rng();
    let keys: Vec<_> = (0..opts.partners)
        .map(|_| generate_identity(&mut key_rng))
        .collect();
    let mut roster = Roster::new();
    for (i, k) in keys.iter().enumerate() {
        roster
            .insert(partner_id(i), k.verifying_key())
            .context("building the roster")?;
    }
    let roster = std::sync::Arc::new(roster);
    // A throwaway consortium CA: the coordinator's certificate and one per partner.
    let certs = if opts.tls {
        let ids: Vec<String> = (0..opts.partners).map(partner_id).collect();
        let certs = DevCerts::generate("fedmark-sim CA", &ids)?;
        certs.write(&work.path().join("certs"))?;
        Some(certs)
    } else {
        None
    };
    let scheme = if opts.tls { "https" } else { "http" };
    let mut dropouts = scheduled_dropouts(opts, spec.planned_rounds());
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let coordinator_store = Store::in_memory()?;
    let (addr, coordinator) = match &opts.coordinator_binary {
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding 127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let metrics = fedmark_coordinator::metrics::Metrics::default();
            let board = fedmark_coordinator::board::Board::default();
            let settings = RunSettings {
                max_model_params: fedmark_coordinator::job::DEFAULT_MAX_MODEL_PARAMS,
                expected_partners: opts.partners,
                join_timeout: Duration::from_secs(60),
                phase_timeout: opts.phase_timeout,
                transfer_slots: fedmark_coordinator::bulk::TRANSFER_SLOTS,
                transfer_idle: fedmark_coordinator::bulk::TRANSFER_IDLE,
                roster: std::sync::Arc::clone(&roster),
                store: coordinator_store.clone(),
                submitted_by: "fedmark-sim".into(),
                pause_at: None,
                tls: certs.as_ref().map(|c| {
                    server_config(&c.ca_pem, &c.coordinator.cert_pem, &c.coordinator.key_pem)
                }),
                events: fedmark_coordinator::events::JobEvents::default()
                    .with(metrics.clone())
                    .with(fedmark_coordinator::board::BoardFeed {
                        board: board.clone(),
                        store: coordinator_store.clone(),
                    }),
            };
            if let Some(at) = opts.metrics_listen {
                let listener = fedmark_coordinator::http::bind(at)
                    .await
                    .with_context(|| format!("binding the metrics address {at}"))?;
                let bound = listener.local_addr()?;
                // A fresh admin token per run; the fragment carries it to the page only.
                let secret = fedmark_coordinator::admin::AdminToken::generate_secret();
                eprintln!("coordinator metrics on http://{bound}/metrics");
                // Plain HTTP (the browser test reads it without a client certificate):
                // `serve` drops the dashboard on a non-loopback address (and says so).
                if fedmark_coordinator::http::serves_dashboard_on(&bound, false) {
                    eprintln!("coordinator dashboard on http://{bound}/dashboard#token={secret}");
                }
                let dashboard = fedmark_coordinator::dashboard::Dashboard {
                    board,
                    store: coordinator_store.clone(),
                    token: fedmark_coordinator::admin::AdminToken::from_secret(&secret),
                };
                tokio::spawn(fedmark_coordinator::http::serve(
                    listener,
                    metrics,
                    Some(dashboard),
                    None,
                    std::future::pending(),
                ));
            }
            let task = tokio::spawn(fedmark_coordinator::run(
                listener,
                spec.clone(),
                settings,
                Some(progress_tx),
                std::future::pending(),
            ));
            (addr, CoordinatorRun::InProcess(task))
        }
        Some(binary) => {
            drop(progress_tx);
            external_coordinator(
                binary,
                work.path(),
                &spec,
                &roster,
                opts.phase_timeout,
                opts.tls,
                opts.metrics_listen,
            )?
        }
    };

    let audit_dir = opts
        .audit_dir
        .clone()
        .unwrap_or_else(|| work.path().join("audit"));
    std::fs::create_dir_all(&audit_dir)
        .with_context(|| format!("creating {}", audit_dir.display()))?;
    let mut consents = Vec::new();
    let mut audits = Vec::new();
    let mut clients = Vec::new();
    for (i, (path, _)) in files.iter().enumerate() {
        let mut cfg = ClientConfig::new(format!("{scheme}://{addr}"), partner_id(i), path.clone());
        if opts.tls {
            let dir = work.path().join("certs");
            cfg.tls = Some(ClientTls {
                ca: dir.join("ca.pem"),
                cert: dir.join(format!("{}.pem", partner_id(i))),
                key: dir.join(format!("{}.key", partner_id(i))),
                domain: None,
            });
        }
        let audit = audit_dir.join(format!("{}.audit.jsonl", partner_id(i)));
        // Earlier runs' records stay; this run's start after them.
        let lines_before = std::fs::read_to_string(&audit)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        audits.push((audit.clone(), lines_before));
        cfg.audit = Some(audit);
        let mut round_hook = None;
        if let Some(rate) = opts.consent_rate {
            let consent = simulate_consent(
                path,
                &work.path().join(format!("{}.consent.csv", partner_id(i))),
                &spec.job.purpose,
                rate,
                opts.withdraw.map(|w| w.1),
                opts.seed.wrapping_add(1000 + i as u64),
            )?;
            cfg.consent = Some(consent.path.clone());
            cfg.user_id_column = Some(USER_ID_COLUMN.to_owned());
            if let Some((at, _)) = opts.withdraw {
                round_hook = Some(consent.withdraw_hook(at));
            }
            consents.push(Some(consent.info.clone()));
        } else {
            consents.push(None);
        }
        cfg.holdout_fraction = opts.holdout_fraction;
        cfg.holdout_seed = opts.seed + i as u64;
        cfg.seed = opts
            .partner_seeds
            .then(|| opts.seed.wrapping_mul(31).wrapping_add(i as u64));
        cfg.connect_timeout_secs = 30;
        let identity = Identity {
            key: keys[i].clone(),
            roster: std::sync::Arc::clone(&roster),
        };
        let options = NodeOptions {
            dropouts: std::sync::Arc::new(std::sync::Mutex::new(std::mem::take(&mut dropouts[i]))),
            identity: Some(identity),
            round_hook,
            keep_serving: false,
            guards: Default::default(),
        };
        clients.push(tokio::spawn(run_partner(cfg, options)));
    }

    let total = spec.job.rounds;
    let show = opts.show_progress;
    let printer = tokio::spawn(async move {
        while let Some(r) = progress_rx.recv().await {
            if show {
                eprintln!(
                    "round {:>3}/{total}  auc {}  log-loss {}  participants {}  dropped {}  {:.2}s",
                    r.round,
                    metrics::show(r.auc),
                    metrics::show(r.log_loss),
                    r.participants,
                    r.dropped,
                    r.seconds
                );
            }
        }
    });
    let in_process = matches!(coordinator, CoordinatorRun::InProcess(_));
    let outcome = coordinator.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    // The coordinator's store: in this process, or the finished coordinator process's.
    let store = match (in_process, &opts.export) {
        (true, _) => Some(coordinator_store.clone()),
        (false, Some(_)) => Some(
            Store::open(&work.path().join("data")).context("opening the coordinator's store")?,
        ),
        (false, None) => None,
    };
    let export = match (&opts.export, &store) {
        (Some(dir), Some(store)) => {
            let done =
                fedmark_coordinator::export::export_model(store, &outcome.report.job_id, None, dir)
                    .with_context(|| format!("exporting the model into {}", dir.display()))?;
            Some(SimExport {
                dir: dir.clone(),
                round: done.round,
                model_sha256: done.model_sha256,
                files: done.files,
            })
        }
        _ => None,
    };
    // The coordinator's audit chain beside the partners' (`audit verify` checks it too), the
    // export's record included.
    let coordinator_audit = audit_dir.join("coordinator.audit.jsonl");
    match &store {
        Some(store) => {
            fedmark_proto::durable::replace(&coordinator_audit, store.audit_text()?.as_bytes())
        }
        None => std::fs::copy(work.path().join("data/audit.jsonl"), &coordinator_audit).map(|_| ()),
    }
    .with_context(|| format!("writing {}", coordinator_audit.display()))?;
    drop(store);
    for c in clients {
        if let Err(e) = c.await.context("client task")? {
            warn!(error = %format!("{e:#}"), "a partner ended with an error");
        }
    }
    let _ = printer.await;

    // Pooled test rows and baselines from the same files and splits the partners used.
    let mut locals = Vec::new();
    for (i, (path, _)) in files.iter().enumerate() {
        let split = HoldoutSplit {
            fraction: opts.holdout_fraction,
            seed: opts.seed + i as u64,
        };
        // The same rows and split the partner used (keyed by user with a consent source).
        let local = match opts.consent_rate {
            Some(_) => load_csv_keyed(path, &spec, split, USER_ID_COLUMN).map(|k| k.all),
            None => load_csv(path, &spec, split),
        };
        locals.push(local.with_context(|| format!("reloading {}", path.display()))?);
    }
    let schema = FeatureSchema::from_spec(&spec);
    let test_rows = concat(locals.iter().map(|l| &l.holdout), &schema);
    let exact: Metrics = if spec.is_gbdt() {
        let state = fedmark_core::gbdt::RoundState::from_words(&outcome.model.params, &schema)
            .context("reading the boosted model back")?;
        let scores = state
            .model
            .predict_proba(&test_rows)
            .context("scoring the pooled test rows")?;
        metrics::exact(&scores, &test_rows.labels)
    } else {
        let test = encode(&schema, &test_rows, &outcome.standardizer);
        metrics::exact(&outcome.model.predict_all(&test.x), &test.y)
    };
    let final_metrics = SimFinal {
        auc: exact.auc,
        log_loss: exact.log_loss,
        accuracy: exact.accuracy,
        lift_top_decile: exact.lift_top_decile,
        count: exact.count,
        epsilon: outcome.report.privacy.as_ref().map(|p| p.epsilon_spent),
        delta: outcome.report.privacy.as_ref().map(|p| p.delta),
    };
    let baselines = if opts.skip_baselines {
        None
    } else {
        Some(baselines(&spec, &schema, &locals, &test_rows, opts.seed))
    };
    let partners = locals
        .iter()
        .enumerate()
        .map(|(i, l)| PartnerInfo {
            partner: partner_id(i),
            train_rows: l.train.len(),
            holdout_rows: l.holdout.len(),
            skipped_rows: l.skipped_total(),
            consent: consents.get(i).cloned().flatten(),
            audit_file: audits[i].0.clone(),
        })
        .collect();
    let mut usable: Vec<(String, BTreeMap<u64, u64>)> = Vec::new();
    for (i, (path, from_line)) in audits.iter().enumerate() {
        usable.push((partner_id(i), usable_records_from_audit(path, *from_line)?));
    }
    let rounds = outcome
        .report
        .rounds
        .iter()
        .map(|r| SimRound {
            record: r.clone(),
            usable_records: usable
                .iter()
                .filter_map(|(p, by_round)| by_round.get(&r.round).map(|n| (p.clone(), *n)))
                .collect(),
        })
        .collect();
    info!(auc = final_metrics.auc, "simulation finished");
    Ok(SimReport {
        final_metrics,
        final_federated: outcome.report.final_metrics.clone(),
        rounds,
        baselines,
        partners,
        model_sha256: fedmark_core::audit::f64s_sha256(&outcome.model.params),
        job: outcome.report,
        seconds,
        export,
    })
}

/// The user-id column the simulator adds to partner files for consent simulations.
pub const USER_ID_COLUMN: &str = "user_id";

/// A partner's simulated consent file.
struct SimConsent {
    path: PathBuf,
    purpose: String,
    consented: Vec<String>,
    withdrawn: BTreeSet<String>,
    info: ConsentInfo,
}

/// The consent CSV: every consented user granted at time 0; the withdrawn ones withdrawn at
/// `withdrawn_at` when given.
fn consent_csv(
    purpose: &str,
    consented: &[String],
    withdrawn: &BTreeSet<String>,
    withdrawn_at: Option<i64>,
) -> String {
    let mut text = String::from("user_id,purpose,granted_at,withdrawn_at\n");
    for user in consented {
        let w = match withdrawn_at {
            Some(t) if withdrawn.contains(user) => t.to_string(),
            _ => String::new(),
        };
        text.push_str(&format!("{user},{purpose},0,{w}\n"));
    }
    text
}

/// Replaces `path` with `text` ([`fedmark_proto::durable`]): a reader never sees half a file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    fedmark_proto::durable::replace(path, text.as_bytes())
}

/// Draws each user of the partner file `data` a consent with probability `rate`, picks the
/// `withdraw` fraction of them to withdraw later, and writes the consent file.
fn simulate_consent(
    data: &Path,
    path: &Path,
    purpose: &str,
    rate: f64,
    withdraw: Option<f64>,
    seed: u64,
) -> anyhow::Result<SimConsent> {
    let mut reader =
        csv::Reader::from_path(data).with_context(|| format!("reading {}", data.display()))?;
    let at = reader
        .headers()?
        .iter()
        .position(|h| h == USER_ID_COLUMN)
        .with_context(|| format!("{} has no `{USER_ID_COLUMN}` column", data.display()))?;
    let mut rows_of: BTreeMap<String, u64> = BTreeMap::new();
    let mut order = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("reading {}", data.display()))?;
        let user = record.get(at).unwrap_or("").to_owned();
        let n = rows_of.entry(user.clone()).or_default();
        if *n == 0 {
            order.push(user);
        }
        *n += 1;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let consented: Vec<String> = order
        .into_iter()
        .filter(|_| rng.random_bool(rate))
        .collect();
    let mut pick = consented.clone();
    rand::seq::SliceRandom::shuffle(pick.as_mut_slice(), &mut rng);
    let n_withdrawn = withdraw.map_or(0, |f| (f * consented.len() as f64).round() as usize);
    let withdrawn: BTreeSet<String> = pick.into_iter().take(n_withdrawn).collect();
    let withdrawn_rows = withdrawn
        .iter()
        .map(|u| rows_of.get(u).copied().unwrap_or(0))
        .sum();
    write_atomically(path, &consent_csv(purpose, &consented, &withdrawn, None))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(SimConsent {
        path: path.to_path_buf(),
        purpose: purpose.to_owned(),
        info: ConsentInfo {
            consented_users: consented.len() as u64,
            withdrawn_users: withdrawn.len() as u64,
            withdrawn_rows,
        },
        consented,
        withdrawn,
    })
}

impl SimConsent {
    /// A round hook that, at the start of round `at` (or the first round after it that this
    /// partner sees), rewrites the consent file with the withdrawals, once.
    fn withdraw_hook(&self, at: u64) -> RoundHook {
        let done = AtomicBool::new(false);
        let path = self.path.clone();
        let purpose = self.purpose.clone();
        let consented = self.consented.clone();
        let withdrawn = self.withdrawn.clone();
        RoundHook(Arc::new(move |round| {
            if round >= at && !done.swap(true, Ordering::SeqCst) {
                let text = consent_csv(&purpose, &consented, &withdrawn, Some(now_unix()));
                if let Err(e) = write_atomically(&path, &text) {
                    warn!(error = %e, "could not write the withdrawals to the consent file");
                }
            }
        }))
    }
}

/// Usable records per round from a partner's audit file (its `consent_snapshot` records from
/// line `from_line` on; a retried round keeps its last attempt).
pub fn usable_records_from_audit(
    path: &Path,
    from_line: usize,
) -> anyhow::Result<BTreeMap<u64, u64>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate().skip(from_line) {
        let record = fedmark_core::audit::AuditRecord::parse_line(line, i + 1)
            .with_context(|| format!("in {}", path.display()))?;
        if record.kind != "consent_snapshot" {
            continue;
        }
        let field = |k: &str| record.data.get(k).and_then(serde_json::Value::as_u64);
        if let (Some(round), Some(n)) = (field("round"), field("usable_records")) {
            out.insert(round, n);
        }
    }
    Ok(out)
}

/// The coordinator of a simulation: a task here, or a child process.
enum CoordinatorRun {
    InProcess(tokio::task::JoinHandle<Result<JobOutcome, fedmark_coordinator::job::JobError>>),
    Process {
        child: std::process::Child,
        out: PathBuf,
    },
}

impl CoordinatorRun {
    async fn finish(self) -> anyhow::Result<JobOutcome> {
        match self {
            CoordinatorRun::InProcess(task) => Ok(task
                .await
                .context("coordinator task")?
                .context("running the job")?),
            CoordinatorRun::Process { mut child, out } => {
                let status = tokio::task::spawn_blocking(move || child.wait()).await??;
                if !status.success() {
                    bail!("the coordinator process failed ({status})");
                }
                let report: JobReport =
                    serde_json::from_str(&std::fs::read_to_string(out.join("report.json"))?)
                        .context("reading the coordinator's report.json")?;
                let model: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(out.join("model.json"))?)
                        .context("reading the coordinator's model.json")?;
                let floats = |key: &str| -> anyhow::Result<Vec<f64>> {
                    model[key]
                        .as_array()
                        .with_context(|| format!("model.json lacks `{key}`"))?
                        .iter()
                        .map(|v| {
                            v.as_f64()
                                .with_context(|| format!("model.json: `{key}` holds a non-number"))
                        })
                        .collect()
                };
                let params = floats("params")?;
                let dim = model["input_dim"]
                    .as_u64()
                    .context("model.json lacks `input_dim`")? as usize;
                let arch = if params.len() == dim + 1 {
                    Architecture::Logistic
                } else {
                    Architecture::Mlp {
                        hidden: (params.len() - 1) / (dim + 2),
                    }
                };
                let standardizer = Standardizer {
                    mean: floats("feature_mean")?,
                    std: floats("feature_std")?,
                };
                Ok(JobOutcome {
                    report,
                    model: Model { arch, dim, params },
                    standardizer,
                })
            }
        }
    }
}

/// Starts `fedmark-coordinator serve` in its own process with a roster of the simulated
/// partners, and reads the address it bound from its first line of output.
fn external_coordinator(
    binary: &Path,
    work: &Path,
    spec: &JobSpec,
    roster: &Roster,
    phase_timeout: Duration,
    tls: bool,
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<(std::net::SocketAddr, CoordinatorRun)> {
    use std::io::BufRead;
    std::fs::write(work.join("roster.toml"), roster.to_toml()?)?;
    std::fs::write(work.join("job.toml"), spec.to_toml()?)?;
    let tls_section = if tls {
        "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/coordinator.pem\"\nkey = \"certs/coordinator.key\"\n"
    } else {
        ""
    };
    std::fs::write(
        work.join("coordinator.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nout_dir = \"out\"\nroster = \"roster.toml\"\njoin_timeout_secs = 60\nphase_timeout_secs = {}\n{metrics}{tls_section}",
            phase_timeout.as_secs().max(1),
            metrics =
                metrics_listen.map_or_else(String::new, |a| format!("metrics_listen = \"{a}\"\n")),
        ),
    )?;
    let init = std::process::Command::new(binary)
        .args(["init", "--config", "coordinator.toml"])
        .current_dir(work)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("starting {}", binary.display()))?;
    if !init.success() {
        bail!("`{} init` failed: {init}", binary.display());
    }
    let mut child = std::process::Command::new(binary)
        .args(["serve", "--config", "coordinator.toml", "--job", "job.toml"])
        .current_dir(work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("coordinator stdout")?;
    let mut reader = std::io::BufReader::new(stdout);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    // Keep draining so the coordinator never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let addr = first
        .trim()
        .strip_prefix("fedmark-coordinator listening on ")
        .with_context(|| format!("unexpected first line from the coordinator: {first:?}"))?
        .parse()?;
    Ok((
        addr,
        CoordinatorRun::Process {
            child,
            out: work.join("out"),
        },
    ))
}

/// The dropouts of each partner: the scripted ones plus, with `dropout_rate`, a random draw
/// per partner and training round (at `dropout_phase`, or a phase drawn at random).
fn scheduled_dropouts(opts: &SimOptions, rounds: u64) -> Vec<Vec<Dropout>> {
    let mut per_partner = vec![Vec::new(); opts.partners];
    for (p, d) in &opts.dropouts {
        if let Some(list) = per_partner.get_mut(*p) {
            list.push(*d);
        }
    }
    if opts.dropout_rate > 0.0 {
        let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xD80F);
        let phases = [
            DropPoint::Start,
            DropPoint::AfterKeys,
            DropPoint::AfterShares,
            DropPoint::AfterInput,
            DropPoint::AfterSignature,
        ];
        for round in 1..=rounds {
            for list in per_partner.iter_mut() {
                if rng.random_bool(opts.dropout_rate.clamp(0.0, 1.0)) {
                    let point = opts
                        .dropout_phase
                        .unwrap_or_else(|| phases[rng.random_range(0..phases.len())]);
                    list.push(Dropout { round, point });
                }
            }
        }
    }
    per_partner
}

/// Runs one partner with the client's own reconnection loop: after an injected dropout (or
/// anything else that ends a session early) it dials again, as a restarted client would.
async fn run_partner(cfg: ClientConfig, options: NodeOptions) -> anyhow::Result<()> {
    node::run_until_finished(&cfg, options)
        .await
        .with_context(|| format!("partner {}", cfg.partner_id))?;
    Ok(())
}

fn concat<'a>(parts: impl Iterator<Item = &'a RawRows>, schema: &FeatureSchema) -> RawRows {
    let mut all = RawRows::new(schema);
    for p in parts {
        for r in 0..p.len() {
            all.push(p.numeric_row(r), p.slot_row(r), p.labels[r] > 0.5);
        }
    }
    all
}

fn encode(schema: &FeatureSchema, rows: &RawRows, s: &Standardizer) -> Dataset {
    Dataset {
        x: schema.encode(rows, s),
        y: rows.labels.clone(),
    }
}

/// Trains a model the way a single party would: standardised with its own statistics, for as
/// many epochs as the federated job ran local epochs in total.
fn train_alone(
    spec: &JobSpec,
    schema: &FeatureSchema,
    rows: &RawRows,
    seed: u64,
) -> (Model, Standardizer) {
    let standardizer = Standardizer::from_moments(&rows.moments());
    let data = encode(schema, rows, &standardizer);
    let mut rng = StdRng::seed_from_u64(spec.job.seed);
    let mut model = Model::init(Architecture::from_spec(spec), schema.dim(), &mut rng);
    let mut cfg = LocalTraining::from_spec(spec);
    cfg.epochs = spec.job.rounds * spec.training.local_epochs;
    cfg.prox_mu = 0.0;
    train_local(&mut model, &data, &cfg, &mut StdRng::seed_from_u64(seed));
    (model, standardizer)
}

/// fedmark's own booster with the job's settings on `rows` alone (bins sketched from them as
/// the federation sketches its own; early stopping on the test rows, as the federation's
/// evaluation rows are the pooled test rows), scored on the test rows; NaN metrics when it
/// cannot train (no rows, or edges that cannot be made).
fn gbdt_alone(
    params: &fedmark_core::gbdt::GbdtParams,
    schema: &FeatureSchema,
    rows: &RawRows,
    test_rows: &RawRows,
) -> Metrics {
    use fedmark_core::gbdt::{BinnedRows, Feature, plan::SKETCH_CELLS, train};
    let fit = || -> Result<Vec<f64>, fedmark_core::gbdt::GbdtError> {
        let grids = Feature::sketch_grids(schema, SKETCH_CELLS)?;
        let sketch = Feature::sketch(rows, &grids);
        let features = Feature::from_sketch(schema, &grids, &sketch, params.max_bins as usize)?;
        let binned = BinnedRows::from_raw(rows, &features)?;
        // Early stopping watches the loss on the rows the federation evaluates on.
        let valid = match params.early_stopping_rounds {
            Some(_) => Some(BinnedRows::from_raw(test_rows, &features)?),
            None => None,
        };
        let (model, _) = train(params, &features, &binned, valid.as_ref())?;
        model.predict_proba(test_rows)
    };
    match fit() {
        Ok(scores) => metrics::exact(&scores, &test_rows.labels),
        Err(_) => metrics::exact(&[], &[]),
    }
}

fn baselines(
    spec: &JobSpec,
    schema: &FeatureSchema,
    locals: &[LocalData],
    test_rows: &RawRows,
    seed: u64,
) -> Baselines {
    let pooled = concat(locals.iter().map(|l| &l.train), schema);
    let score = |rows: &RawRows| match spec.gbdt_params() {
        Some(params) => gbdt_alone(&params, schema, rows, test_rows),
        None => {
            let (model, s) = train_alone(spec, schema, rows, seed);
            let test = encode(schema, test_rows, &s);
            metrics::exact(&model.predict_all(&test.x), &test.y)
        }
    };
    let central = score(&pooled);
    let partners_alone = locals
        .iter()
        .enumerate()
        .map(|(i, l)| PartnerBaseline {
            partner: partner_id(i),
            rows: l.train.len(),
            auc: score(&l.train).auc,
        })
        .collect();
    Baselines {
        centralized: CentralBaseline {
            auc: central.auc,
            log_loss: central.log_loss,
        },
        partners_alone,
    }
}
