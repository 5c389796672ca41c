//! `fedmark-sim`: a coordinator and N partners in one process over real gRPC on 127.0.0.1.
//! With no flags it runs the shipped bank-marketing job with 5 partners split by job group.
//!
//! The default job spec and data are `examples/bank-job.toml` and `data/bank_marketing.csv`
//! in the working folder, so an edited local copy is what runs; where the working folder has
//! no such file, the copy built into the binary is used, and the run says so on stderr.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use fedmark_tests::partition::Split;
use fedmark_tests::sim::{self, SimOptions};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "fedmark-sim",
    version,
    about = "Simulate a multi-party fedmark job on one machine",
    after_help = "Default inputs: examples/bank-job.toml and data/bank_marketing.csv are read from \
                  the working folder, so an edited local copy takes effect. Where the working \
                  folder has no such file, fedmark-sim uses the copy built into the binary \
                  (the repository's, as of the build) and says so on stderr."
)]
struct Cli {
    /// CSV to split among partners [default: data/bank_marketing.csv in the working folder,
    /// else the built-in copy].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Job spec [default: examples/bank-job.toml in the working folder, else the built-in
    /// copy].
    #[arg(long, visible_alias = "job")]
    spec: Option<PathBuf>,
    /// Also export the trained model into DIR, as `fedmark model export` does: weights.npy,
    /// pipeline.json and model_card.json (`fedmark score DIR …` scores with it).
    #[arg(long, value_name = "DIR", conflicts_with = "bench")]
    export: Option<PathBuf>,
    /// Number of partners.
    #[arg(long, default_value_t = 5)]
    partners: usize,
    /// Give each partner whole groups of this column's values (non-IID).
    #[arg(long, default_value = "job", conflicts_with = "split")]
    split_by: String,
    /// `iid`: deal rows out at random instead of --split-by.
    #[arg(long)]
    split: Option<String>,
    /// Model family (overrides the spec): logistic, mlp (16 hidden units unless the spec
    /// sets them) or gbdt (the spec's `[model.gbdt]` or its defaults; one tree per round).
    #[arg(long, value_parser = ["logistic", "mlp", "gbdt"])]
    model: Option<String>,
    /// Override the spec's number of rounds.
    #[arg(long)]
    rounds: Option<u32>,
    /// Seed of the split, holdouts and local training.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of each partner's rows held out for evaluation.
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// Secure aggregation on or off (overrides the spec).
    #[arg(long, value_parser = ["on", "off"])]
    secure_agg: Option<String>,
    /// Mutual TLS between partners and coordinator (a throwaway development CA).
    #[arg(long, value_parser = ["on", "off"], default_value = "on")]
    tls: String,
    /// Serve the coordinator's Prometheus metrics (`/metrics`), health check (`/healthz`)
    /// and dashboard (`/dashboard`, its address with a one-run admin token printed on stderr)
    /// on this address, e.g. 127.0.0.1:9464, over plain HTTP (the dashboard on a loopback
    /// address only).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// After the job, keep serving the metrics and dashboard until interrupted (Ctrl-C).
    #[arg(long, requires = "metrics_listen")]
    linger: bool,
    /// Differential privacy: none, record, partner-central or partner-distributed (overrides
    /// the spec).
    #[arg(long, value_parser = ["none", "record", "partner-central", "partner-distributed"])]
    dp: Option<String>,
    /// Total ε budget (overrides the spec; the noise is calibrated to it).
    #[arg(long)]
    epsilon: Option<f64>,
    /// δ of the guarantee (overrides the spec).
    #[arg(long)]
    delta: Option<f64>,
    /// DP clipping norm C, or `adaptive` (partner-central: the norm follows the median of
    /// the partners' update norms, as the spec's `[privacy.adaptive_clip]` sets) (overrides
    /// the spec).
    #[arg(long, value_parser = parse_clip)]
    clip: Option<fedmark_core::spec::Clip>,
    /// Accountant the noise is calibrated on (overrides the spec): `pld`, the tightest the
    /// mechanism has, or `rdp`, Rényi DP only.
    #[arg(long, value_parser = ["pld", "rdp"])]
    accountant: Option<String>,
    /// Synthetic workload of this many model inputs instead of --data.
    #[arg(long, requires = "rows_per_partner")]
    synthetic_dim: Option<usize>,
    /// Rows per partner of the synthetic workload.
    #[arg(long)]
    rows_per_partner: Option<usize>,
    /// Each partner drops out of each training round with this probability, at a random phase.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Force the phase of random dropouts: keys, shares, input, mid-input, consistency or unmask.
    #[arg(long)]
    dropout_phase: Option<String>,
    /// Skip the centralised and partner-alone baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Deadline of each round's input phase, in seconds.
    #[arg(long, default_value_t = 120)]
    phase_timeout: u64,
    /// Benchmark: run the job with plain and then with secure aggregation, the coordinator in
    /// its own process, and report seconds per round, their ratio, and the coordinator's peak
    /// memory. Implies --no-baselines.
    #[arg(long)]
    bench: bool,
    /// With --bench: how many plain/secure pairs to run, alternating, so that a noisy shared
    /// machine slows both alike; the ratio reported is that of the medians.
    #[arg(long, default_value_t = 1, requires = "bench", value_parser = clap::value_parser!(u32).range(1..=20))]
    bench_pairs: u32,
    /// Where to write the JSON report.
    #[arg(long, default_value = "fedmark-report.json")]
    report: PathBuf,
    /// Give each simulated user a consent for the job's purpose with this probability (adds a
    /// `user_id` column to the partner files and a consent file per partner).
    #[arg(long)]
    consent_rate: Option<f64>,
    /// ROUND:FRACTION: withdraw that fraction of each partner's consented users at the start
    /// of that training round (needs --consent-rate).
    #[arg(long)]
    withdraw: Option<String>,
    /// Folder of the partners' audit files [default: `fedmark-audit` beside the report].
    #[arg(long)]
    audit_dir: Option<PathBuf>,
}

/// The default job spec, relative to the working folder.
const DEFAULT_SPEC: &str = "examples/bank-job.toml";
/// The default data, relative to the working folder.
const DEFAULT_DATA: &str = "data/bank_marketing.csv";
/// The repository's job spec as of the build, for runs outside a checkout.
const BUILTIN_SPEC: &str = include_str!("../../../examples/bank-job.toml");
/// The repository's data as of the build (UCI Bank Marketing, CC BY 4.0, see data/README.md).
const BUILTIN_DATA: &[u8] = include_bytes!("../../../data/bank_marketing.csv");

/// A default input: `relative` in the working folder when it is there, else the built-in copy
/// written into `scratch`, which the run announces on stderr.
fn default_input(relative: &str, builtin: &[u8], scratch: &Path) -> anyhow::Result<PathBuf> {
    let local = PathBuf::from(relative);
    if local.is_file() {
        return Ok(local);
    }
    let name = local.file_name().context("a default input names a file")?;
    let copy = scratch.join(name);
    std::fs::write(&copy, builtin).with_context(|| format!("writing {}", copy.display()))?;
    eprintln!(
        "no {relative} in the working folder ({}): using the copy built into fedmark-sim",
        std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "unknown".into())
    );
    Ok(copy)
}

/// Parses `--withdraw ROUND:FRACTION`.
fn parse_withdraw(text: &str) -> anyhow::Result<(u64, f64)> {
    let (round, fraction) = text
        .split_once(':')
        .with_context(|| format!("--withdraw takes ROUND:FRACTION, e.g. 3:0.25, not `{text}`"))?;
    let round: u64 = round
        .trim()
        .parse()
        .with_context(|| format!("--withdraw: `{round}` is not a round number"))?;
    let fraction: f64 = fraction
        .trim()
        .parse()
        .with_context(|| format!("--withdraw: `{fraction}` is not a fraction"))?;
    if round == 0 || !(0.0..=1.0).contains(&fraction) {
        bail!("--withdraw takes ROUND >= 1 and FRACTION in [0, 1], got `{text}`");
    }
    Ok((round, fraction))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: redirected logs stay plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut opts = SimOptions::default();
    // Holds the built-in inputs, when they are used, for the run.
    let scratch = tempfile::tempdir().context("creating a scratch folder")?;
    let synthetic = cli.synthetic_dim.is_some();
    opts.data = match cli.data {
        Some(d) => d,
        None if synthetic => PathBuf::new(),
        None => default_input(DEFAULT_DATA, BUILTIN_DATA, scratch.path())?,
    };
    opts.spec = match cli.spec {
        Some(s) => s,
        None if synthetic => PathBuf::new(),
        None => default_input(DEFAULT_SPEC, BUILTIN_SPEC.as_bytes(), scratch.path())?,
    };
    opts.export = cli.export;
    opts.partners = cli.partners;
    opts.split = match cli.split.as_deref() {
        None => Split::ByColumn(cli.split_by),
        Some("iid") => Split::Iid,
        Some(other) => {
            bail!("--split takes `iid`, not `{other}` (use --split-by COLUMN for groups)")
        }
    };
    opts.rounds = cli.rounds;
    opts.model = cli.model.as_deref().map(|m| match m {
        "mlp" => fedmark_core::spec::ModelKindName::Mlp,
        "gbdt" => fedmark_core::spec::ModelKindName::Gbdt,
        _ => fedmark_core::spec::ModelKindName::Logistic,
    });
    opts.seed = cli.seed;
    opts.holdout_fraction = cli.holdout;
    opts.secure_agg = cli.secure_agg.map(|s| s == "on");
    opts.tls = cli.tls == "on";
    opts.metrics_listen = cli.metrics_listen;
    opts.dp_mode = cli.dp.as_deref().map(|m| match m {
        "record" => fedmark_core::spec::PrivacyMode::Record,
        "partner-central" => fedmark_core::spec::PrivacyMode::PartnerCentral,
        "partner-distributed" => fedmark_core::spec::PrivacyMode::PartnerDistributed,
        _ => fedmark_core::spec::PrivacyMode::None,
    });
    opts.epsilon = cli.epsilon;
    opts.delta = cli.delta;
    opts.clip = cli.clip;
    opts.accountant = cli
        .accountant
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    opts.synthetic = cli.synthetic_dim.zip(cli.rows_per_partner);
    opts.skip_baselines = cli.no_baselines;
    if !(0.0..=1.0).contains(&cli.dropout) {
        bail!(
            "--dropout must be a probability in [0, 1], got {}",
            cli.dropout
        );
    }
    opts.dropout_rate = cli.dropout;
    opts.dropout_phase = match cli.dropout_phase.as_deref() {
        None => None,
        Some(name) => Some(
            fedmark_client::node::DropPoint::from_phase(name).with_context(|| {
                format!(
                    "--dropout-phase takes keys, shares, input, mid-input, consistency or unmask, not `{name}`"
                )
            })?,
        ),
    };
    opts.phase_timeout = Duration::from_secs(cli.phase_timeout);
    opts.consent_rate = cli.consent_rate;
    opts.withdraw = cli.withdraw.as_deref().map(parse_withdraw).transpose()?;
    opts.audit_dir = Some(cli.audit_dir.clone().unwrap_or_else(|| {
        cli.report
            .parent()
            .unwrap_or(std::path::Path::new(""))
            .join("fedmark-audit")
    }));
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    if cli.bench {
        return bench(&rt, opts, cli.bench_pairs, &cli.report);
    }
    let report = rt.block_on(sim::run(&opts))?;
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&cli.report, json)
        .with_context(|| format!("writing {}", cli.report.display()))?;
    let f = &report.final_metrics;
    println!(
        "final (pooled test rows): auc {:.4}  log-loss {:.4}  accuracy {:.4}  lift@10% {:.2}",
        f.auc, f.log_loss, f.accuracy, f.lift_top_decile
    );
    if let Some(b) = &report.baselines {
        let alone: Vec<String> = b
            .partners_alone
            .iter()
            .map(|p| format!("{:.3}", p.auc))
            .collect();
        println!(
            "baselines: centralized auc {:.4}; partners alone auc [{}]",
            b.centralized.auc,
            alone.join(", ")
        );
    }
    if let (Some(e), Some(d)) = (f.epsilon, f.delta) {
        println!("privacy: ({e:.4}, {d:e})-DP; {}", report.job.stop_reason);
    }
    if let Some(x) = &report.export {
        let names: Vec<String> = x
            .files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        println!(
            "model of round {} exported to {}: {}",
            x.round,
            x.dir.display(),
            names.join(", ")
        );
    }
    if opts.consent_rate.is_some() {
        for r in &report.rounds {
            let counts: Vec<String> = r
                .usable_records
                .iter()
                .map(|(p, n)| format!("{p} {n}"))
                .collect();
            println!("round {:>3} usable records: {}", r.round, counts.join(", "));
        }
    }
    if let Some(dir) = &opts.audit_dir {
        println!("partner audit files in {}", dir.display());
    }
    println!(
        "{} rounds in {:.1}s; report written to {}",
        report.rounds.len(),
        report.seconds,
        cli.report.display()
    );
    if cli.linger {
        println!("still serving the metrics and dashboard; Ctrl-C to stop");
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    Ok(())
}

/// Seconds per round (mean over the rounds) and the coordinator's peak memory of `pairs`
/// plain and secure runs, alternating; the ratio reported is that of the median seconds.
fn bench(
    rt: &tokio::runtime::Runtime,
    mut opts: SimOptions,
    pairs: u32,
    report_path: &std::path::Path,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating fedmark-sim")?;
    let binary = exe.with_file_name(format!(
        "fedmark-coordinator{}",
        std::env::consts::EXE_SUFFIX
    ));
    if !binary.exists() {
        bail!(
            "--bench runs {} as its own process: build it first (cargo build --release)",
            binary.display()
        );
    }
    opts.coordinator_binary = Some(binary);
    opts.skip_baselines = true;
    opts.show_progress = false;
    let mut runs = Vec::new();
    let mut seconds: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for pair in 1..=pairs {
        for secure in [false, true] {
            opts.secure_agg = Some(secure);
            let report = rt.block_on(sim::run(&opts))?;
            let round_seconds: Vec<f64> = report.rounds.iter().map(|r| r.seconds).collect();
            let per_round = round_seconds.iter().sum::<f64>() / round_seconds.len().max(1) as f64;
            seconds[usize::from(secure)].push(per_round);
            let rss = report
                .job
                .peak_rss_bytes
                .map(|b| b as f64 / (1024.0 * 1024.0));
            println!(
                "{:<6} partners {}  params {}  rounds {}  s/round {:.3}  coordinator peak RSS {}  final auc {:.4}",
                if secure { "secure" } else { "plain" },
                opts.partners,
                report.job.model_params,
                report.rounds.len(),
                per_round,
                rss.map_or("n/a".to_string(), |m| format!("{m:.1} MiB")),
                report.final_metrics.auc
            );
            runs.push(serde_json::json!({
                "pair": pair,
                "secure_aggregation": secure,
                "partners": opts.partners,
                "model_params": report.job.model_params,
                "rounds": report.rounds.len(),
                "seconds_per_round": per_round,
                "round_seconds": round_seconds,
                "coordinator_peak_rss_bytes": report.job.peak_rss_bytes,
                "final_auc": report.final_metrics.auc,
            }));
        }
        if let (true, [Some(plain), Some(secure)]) =
            (pairs > 1, seconds.each_ref().map(|s| s.last()))
        {
            println!("pair {pair}: secure/plain {:.3}", secure / plain);
        }
    }
    let [plain, secure] = seconds.map(median);
    let ratio = secure / plain;
    if pairs > 1 {
        println!("median s/round over {pairs} pairs: plain {plain:.3}  secure {secure:.3}");
    }
    println!("secure/plain seconds per round: {ratio:.3}");
    let json = serde_json::json!({
        "bench": runs,
        "median_seconds_per_round": { "plain": plain, "secure": secure },
        "secure_over_plain": ratio,
    });
    std::fs::write(report_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    Ok(())
}

/// The median of some values (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `--clip`: a positive norm or `adaptive`.
fn parse_clip(s: &str) -> Result<fedmark_core::spec::Clip, String> {
    if s == "adaptive" {
        return Ok(fedmark_core::spec::Clip::Adaptive);
    }
    s.parse::<f64>()
        .map(fedmark_core::spec::Clip::Norm)
        .map_err(|_| format!("`{s}` is neither a clipping norm nor `adaptive`"))
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![0.5, 0.1, 0.3]), 0.3);
        assert_eq!(median(vec![0.4, 0.1, 0.3, 0.2]), 0.25);
        assert_eq!(median(vec![2.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
    }
}
