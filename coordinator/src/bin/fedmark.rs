//! `fedmark`: the data scientist's CLI for a long-running coordinator. It speaks the admin
//! gRPC API over the network: submit, list, watch and cancel jobs, export a model or a job's
//! audit records. Where the coordinator is and the admin credential come from `admin.toml`
//! (see `examples/admin.toml`). Human output by default, `--json` for scripts.
//!
//! `fedmark score` works offline, on an exported model's files, and needs no coordinator:
//! it scores a CSV of prospects into `id,score,decile` (see
//! [`fedmark_coordinator::scoring`]).

use fedmark_proto::durable::AtomicFile;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedmark_proto::admin_client::AdminClient;
use fedmark_proto::{
    ExportModelRequest, FileChunk, JobInfo, JobRequest, ListJobsRequest, SubmitJobRequest,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Exit code for bad arguments, configuration, or a job or round the coordinator does not hold.
const EXIT_USAGE: u8 = 64;
/// Exit code when the coordinator cannot be reached.
const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when the coordinator refuses the credential.
const EXIT_NOPERM: u8 = 77;
/// Largest exported file accepted (a model of 500 million parameters).
const MAX_FILE_BYTES: usize = 4 << 30;
use fedmark_proto::MAX_MESSAGE_BYTES;

#[derive(Debug, Parser)]
#[command(
    name = "fedmark",
    version,
    about = "Submit, watch and export fedmark training jobs"
)]
struct Cli {
    /// The admin config: where the coordinator is, the admin token file, TLS files.
    #[arg(
        long,
        env = "FEDMARK_ADMIN",
        default_value = "admin.toml",
        global = true
    )]
    admin: PathBuf,
    /// Machine-readable output (JSON; `job watch` writes one JSON object per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Training jobs.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Trained models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Audit records.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Score a CSV of prospects with an exported model (offline: no coordinator, no
    /// admin.toml). Writes `id,score,decile` — decile 1 holds the highest scores — one line
    /// per scored row in input order; the label column is not needed. Rows that cannot be
    /// scored are reported with their line, identifier and reason, never dropped silently.
    Score(ScoreArgs),
}

#[derive(Debug, clap::Args)]
struct ScoreArgs {
    /// The folder `fedmark model export` wrote (pipeline.json, and weights.npy or a boosted
    /// model's model.json).
    model: PathBuf,
    /// The CSV to score, with a header row (`-` reads standard input).
    input: PathBuf,
    /// The identifier column, copied into the output so each score joins back to its row.
    #[arg(long, value_name = "COLUMN")]
    id: String,
    /// Write the scores to FILE (through a temporary file, renamed when complete) instead of
    /// standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write every skipped row to FILE as CSV (`line,id,reason`); without it the first
    /// 10 are printed on standard error.
    #[arg(long, value_name = "FILE")]
    skipped: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Submit a job spec (TOML). The job id is derived from the spec, so submitting the same
    /// spec twice names one job; a cancelled or failed job resubmitted resumes.
    Submit {
        /// The job spec.
        spec: PathBuf,
        /// Watch the job after submitting it (as `job watch`).
        #[arg(long)]
        watch: bool,
    },
    /// List the coordinator's jobs.
    List,
    /// Show jobs side by side: their settings (a `*` marks those that differ) and their
    /// results. Each job is an id or a name (its latest submission).
    Compare {
        /// Two or more jobs.
        #[arg(num_args = 2.., required = true)]
        jobs: Vec<String>,
    },
    /// Follow a job round by round until it ends; exits 0 if it finished, 1 otherwise.
    Watch {
        /// Job id, or a job's name (its latest submission).
        id: String,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// Job id, or a job's name (its latest submission).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Write a job's model into DIR: weights.npy, pipeline.json and (finished jobs)
    /// model_card.json and model_card.md, loadable without fedmark (see examples/score.py).
    Export {
        /// Job id, or a job's name (its latest submission).
        id: String,
        /// The committed round to export (default: the last). Round 0 is the initial model.
        #[arg(long)]
        round: Option<u64>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Write a job's audit records (and the coordinator's own) as JSON lines, to FILE or,
    /// without `--out`, to stdout (the summary then goes to stderr).
    Export {
        /// Job id, or a job's name (its latest submission).
        id: String,
        /// Output file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `admin.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminConfig {
    /// The coordinator's URL, `https://host:port` (mutual TLS) or `http://host:port`.
    coordinator: String,
    /// The file holding the admin token (the coordinator's `DATA_DIR/admin.token`).
    token_file: PathBuf,
    /// Mutual TLS: the consortium CA and an administrator's certificate and key.
    tls: Option<AdminTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The name the coordinator's certificate carries, when not the URL's host.
    domain: Option<String>,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let code = match error
            .downcast_ref::<tonic::Status>()
            .map(tonic::Status::code)
        {
            Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => EXIT_NOPERM,
            Some(tonic::Code::NotFound | tonic::Code::InvalidArgument) => EXIT_USAGE,
            Some(tonic::Code::FailedPrecondition) => EXIT_USAGE,
            Some(tonic::Code::Unavailable) => EXIT_UNAVAILABLE,
            _ => 1,
        };
        Failure { code, error }
    }
}

fn usage(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Score(args) = &cli.command {
        return match score(args, cli.json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(f) => {
                eprintln!("error: {:#}", f.error);
                ExitCode::from(f.code)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            match f.error.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("error: {}", status.message()),
                None => eprintln!("error: {:#}", f.error),
            }
            ExitCode::from(f.code)
        }
    }
}

/// The admin config and the token, read relative to the config file's folder.
fn load_config(path: &Path) -> Result<(AdminConfig, String), Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| {
            format!(
                "reading the admin config {} (give --admin PATH or set FEDMARK_ADMIN)",
                path.display()
            )
        })
        .map_err(usage)?;
    let mut cfg: AdminConfig = toml::from_str(&text)
        .with_context(|| format!("in {}", path.display()))
        .map_err(usage)?;
    let base = path.parent().unwrap_or(Path::new(""));
    let at = |p: &Path| base.join(p);
    cfg.token_file = at(&cfg.token_file);
    if let Some(tls) = &mut cfg.tls {
        tls.ca = at(&tls.ca);
        tls.cert = at(&tls.cert);
        tls.key = at(&tls.key);
    }
    let token = std::fs::read_to_string(&cfg.token_file)
        .with_context(|| format!("reading the admin token {}", cfg.token_file.display()))
        .map_err(usage)?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "the admin token file {} is empty",
            cfg.token_file.display()
        )));
    }
    Ok((cfg, token))
}

/// Adds the admin token to every call.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Whether `arg` has the shape of a job id (`job-` and 12 hex digits).
fn is_job_id(arg: &str) -> bool {
    arg.len() == 16 && arg.starts_with("job-") && arg[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The job an argument names: a job id as it is, else the latest submission of a job of
/// that name.
async fn resolve(client: &mut Client, arg: &str) -> Result<String, Failure> {
    if is_job_id(arg) {
        return Ok(arg.to_owned());
    }
    let list = client.list_jobs(ListJobsRequest {}).await?.into_inner();
    list.jobs
        .iter()
        .filter(|j| j.name == arg)
        .max_by_key(|j| j.submitted_ms)
        .map(|j| j.job_id.clone())
        .ok_or_else(|| {
            usage(anyhow::anyhow!(
                "no job id or job name `{}` on this coordinator (`fedmark job list` shows both)",
                arg.escape_debug()
            ))
        })
}

type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

async fn connect(cfg: &AdminConfig, token: &str) -> Result<Client, Failure> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))
            .map_err(usage)
    };
    let mut endpoint = Endpoint::from_shared(cfg.coordinator.clone())
        .with_context(|| format!("`coordinator = {:?}` is not a URL", cfg.coordinator))
        .map_err(usage)?
        .connect_timeout(Duration::from_secs(10));
    if let Some(tls) = &cfg.tls {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
            .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(config).map_err(|e| usage(e.into()))?;
    }
    let channel = endpoint.connect().await.map_err(|e| Failure {
        code: EXIT_UNAVAILABLE,
        error: anyhow::anyhow!("cannot reach the coordinator at {}: {e}", cfg.coordinator),
    })?;
    let header = format!("Bearer {token}").parse().map_err(|_| {
        usage(anyhow::anyhow!(
            "the admin token holds characters a header cannot carry"
        ))
    })?;
    let auth = Bearer(header);
    Ok(AdminClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let (cfg, token) = load_config(&cli.admin)?;
    let mut client = connect(&cfg, &token).await?;
    let json = cli.json;
    match cli.command {
        Command::Job { command } => match command {
            JobCommand::Submit { spec, watch } => {
                let text = std::fs::read_to_string(&spec)
                    .with_context(|| format!("reading job spec {}", spec.display()))
                    .map_err(usage)?;
                let info = client
                    .submit_job(SubmitJobRequest { spec_toml: text })
                    .await?
                    .into_inner();
                if json {
                    println!("{}", info_json(&info));
                } else {
                    println!(
                        "job {} ({}): {}",
                        info.job_id,
                        info.name,
                        status_line(&info)
                    );
                }
                if watch {
                    return watch_job(&mut client, &info.job_id, json).await;
                }
            }
            JobCommand::List => {
                let list = client.list_jobs(ListJobsRequest {}).await?.into_inner();
                if json {
                    let jobs: Vec<Value> = list.jobs.iter().map(info_json).collect();
                    println!("{}", json!({"jobs": jobs, "audit_head": list.audit_head}));
                } else if list.jobs.is_empty() {
                    println!("no jobs");
                } else {
                    println!(
                        "{:<19} {:<24} {:<10} {:>7} {:>8}  {:<30} NOW",
                        "JOB", "NAME", "STATUS", "ROUNDS", "AUC", "SETTINGS"
                    );
                    for j in &list.jobs {
                        let auc = j
                            .r#final
                            .as_ref()
                            .map(|f| f.auc)
                            .or_else(|| j.rounds.last().map(|r| r.auc));
                        println!(
                            "{:<19} {:<24} {:<10} {:>7} {:>8}  {:<30} {}",
                            j.job_id,
                            truncate(&j.name, 24),
                            j.status,
                            format!("{}/{}", j.rounds.len(), j.planned_rounds),
                            auc.map_or("-".into(), |a| format!("{a:.4}")),
                            truncate(&settings_summary(j), 30),
                            j.phase
                        );
                    }
                    println!("audit chain head {}", list.audit_head);
                }
            }
            JobCommand::Compare { jobs } => {
                let mut ids = Vec::new();
                for j in &jobs {
                    ids.push(resolve(&mut client, j).await?);
                }
                let list = client.list_jobs(ListJobsRequest {}).await?.into_inner();
                let infos: Vec<JobInfo> = ids
                    .iter()
                    .map(|id| {
                        list.jobs
                            .iter()
                            .find(|j| &j.job_id == id)
                            .cloned()
                            .ok_or_else(|| {
                                usage(anyhow::anyhow!("no job {id} on this coordinator"))
                            })
                    })
                    .collect::<Result<_, _>>()?;
                if json {
                    let jobs: Vec<Value> = infos.iter().map(info_json).collect();
                    println!("{}", json!({ "jobs": jobs }));
                } else {
                    let rows = compare_rows(&infos);
                    let width = |cells: &[String]| cells.iter().map(|c| c.chars().count()).max();
                    let mut col = vec![16usize; infos.len()];
                    for (i, c) in col.iter_mut().enumerate() {
                        *c = (*c).max(
                            width(&rows.iter().map(|r| r.1[i].clone()).collect::<Vec<_>>())
                                .unwrap_or(0),
                        );
                    }
                    let mut header = format!("  {:<20}", "");
                    for (i, info) in infos.iter().enumerate() {
                        header.push_str(&format!(" {:<w$}", info.job_id, w = col[i]));
                    }
                    println!("{}", header.trim_end());
                    for (name, cells) in &rows {
                        let differs = cells.iter().any(|c| c != &cells[0]);
                        let mut line = format!("{} {:<20}", if differs { '*' } else { ' ' }, name);
                        for (i, c) in cells.iter().enumerate() {
                            line.push_str(&format!(" {:<w$}", c, w = col[i]));
                        }
                        println!("{}", line.trim_end());
                    }
                }
            }
            JobCommand::Watch { id } => {
                let id = resolve(&mut client, &id).await?;
                return watch_job(&mut client, &id, json).await;
            }
            JobCommand::Cancel { id } => {
                let id = resolve(&mut client, &id).await?;
                let info = client
                    .cancel_job(JobRequest { job_id: id })
                    .await?
                    .into_inner();
                if json {
                    println!("{}", info_json(&info));
                } else {
                    println!("job {}: {}", info.job_id, status_line(&info));
                }
            }
        },
        Command::Model {
            command: ModelCommand::Export { id, round, out },
        } => {
            let id = resolve(&mut client, &id).await?;
            let stream = client
                .export_model(ExportModelRequest { job_id: id, round })
                .await?
                .into_inner();
            let (summary, files) = receive_files(stream, &out, None).await?;
            report_export(json, &summary, &files);
        }
        Command::Score(_) => {
            return Err(anyhow::anyhow!("`score` runs without a coordinator").into());
        }
        Command::Audit {
            command: AuditCommand::Export { id, out },
        } => {
            let id = resolve(&mut client, &id).await?;
            let mut stream = client
                .export_audit(JobRequest { job_id: id })
                .await?
                .into_inner();
            match out {
                Some(out) => {
                    let (summary, files) = receive_files(stream, &out, Some(&out)).await?;
                    report_export(json, &summary, &files);
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    while let Some(chunk) = stream.message().await? {
                        if !chunk.summary.is_empty() {
                            eprintln!("{}", chunk.summary);
                        }
                        stdout.write_all(&chunk.data)?;
                    }
                    stdout.flush()?;
                }
            }
        }
    }
    Ok(0)
}

/// Skipped rows shown on standard error without `--skipped`.
const SKIPPED_SHOWN: u64 = 10;

/// An output file replaced durably once scoring finished ([`AtomicFile`]); dropped
/// uncommitted, the temporary file is removed, so an interrupted run leaves no half file.
struct Staged(AtomicFile);

impl Staged {
    fn create(path: &Path) -> anyhow::Result<Self> {
        AtomicFile::create(path)
            .map(Self)
            .with_context(|| format!("creating a temporary file beside {}", path.display()))
    }

    fn writer(&mut self) -> &mut dyn Write {
        &mut self.0
    }

    fn commit(self) -> anyhow::Result<()> {
        let path = self.0.path().to_owned();
        self.0
            .commit()
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// `fedmark score`: reads the export, streams the input through
/// [`fedmark_coordinator::scoring::score_csv`], reports progress and skipped rows on stderr
/// (or the skipped rows to `--skipped`).
fn score(args: &ScoreArgs, json: bool) -> Result<(), Failure> {
    use fedmark_coordinator::scoring::{self, Progress, Skipped};
    use fedmark_core::pipeline::Pipeline;

    let read = |p: &Path| {
        std::fs::read(p)
            .with_context(|| format!("reading {} (is it a `model export` folder?)", p.display()))
            .map_err(usage)
    };
    let pipeline_path = args.model.join("pipeline.json");
    let text = String::from_utf8(read(&pipeline_path)?)
        .with_context(|| format!("{} is not UTF-8 text", pipeline_path.display()))
        .map_err(usage)?;
    let pipeline = Pipeline::from_json(&text)
        .with_context(|| format!("in {}", args.model.display()))
        .map_err(usage)?;
    let weights_path = args.model.join(pipeline.weights_file());
    let model = pipeline
        .with_weights(&read(&weights_path)?)
        .with_context(|| format!("in {}", weights_path.display()))
        .map_err(usage)?;

    let stdin = args.input.as_os_str() == "-";
    let input: Box<dyn std::io::Read> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.input)
                .with_context(|| format!("opening {}", args.input.display()))
                .map_err(usage)?,
        )
    };
    // The spool beside the output, so a large audience does not fill a small /tmp.
    let spool_dir = args
        .out
        .as_deref()
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty());
    let spool = match spool_dir {
        Some(dir) => tempfile::tempfile_in(dir),
        None => tempfile::tempfile(),
    }
    .context("creating the spool file")?;
    let mut out = args.out.as_deref().map(Staged::create).transpose()?;
    let mut report = match &args.skipped {
        Some(path) => {
            let mut staged = Staged::create(path)?;
            staged
                .writer()
                .write_all(b"line,id,reason\n")
                .with_context(|| format!("writing {}", path.display()))?;
            Some(staged)
        }
        None => None,
    };
    let mut stdout = std::io::stdout().lock();
    let output: &mut dyn Write = match &mut out {
        Some(staged) => staged.writer(),
        None => &mut stdout,
    };
    let mut shown = 0u64;
    let on_skip = |s: Skipped<'_>| -> std::io::Result<()> {
        let id = String::from_utf8_lossy(s.id);
        match &mut report {
            Some(staged) => {
                let mut row = csv::Writer::from_writer(Vec::new());
                row.write_record([s.line.to_string(), id.into_owned(), s.reason.to_string()])?;
                let bytes = row.into_inner().map_err(|e| e.into_error())?;
                staged.writer().write_all(&bytes)
            }
            None => {
                if shown < SKIPPED_SHOWN {
                    eprintln!("skipped line {}, id {id:?}: {}", s.line, s.reason);
                }
                shown += 1;
                Ok(())
            }
        }
    };
    let tty = std::io::stderr().is_terminal();
    let on_progress = |p: Progress| match p {
        Progress::Read { rows } => eprintln!("… {rows} rows read"),
        Progress::Ranking { scored } if tty || scored >= scoring::PROGRESS_EVERY => {
            eprintln!("… {scored} rows scored; ranking them into deciles")
        }
        Progress::Ranking { .. } | Progress::Writing => {}
    };
    let scored = scoring::score_csv(&model, input, &args.id, spool, output, on_skip, on_progress);
    if let Err(scoring::ScoreError::Write(e)) = &scored
        && let csv::ErrorKind::Io(io) = e.kind()
        && io.kind() == std::io::ErrorKind::BrokenPipe
        && args.out.is_none()
    {
        // Whoever read standard output stopped early (`fedmark score … | head`).
        return Ok(());
    }
    let summary = scored.map_err(|e| {
        let code = if e.is_bad_input() { EXIT_USAGE } else { 1 };
        let input = args.input.display();
        Failure {
            code,
            error: anyhow::Error::new(e).context(format!("scoring {input}")),
        }
    })?;
    if let Some(staged) = out {
        staged.commit()?;
    }
    if let Some(staged) = report {
        staged.commit()?;
    }
    let p = &model.pipeline;
    let skipped = summary.skipped_total();
    if json {
        let reasons: serde_json::Map<String, Value> = summary
            .skipped
            .iter()
            .map(|(r, n)| (r.to_string(), json!(n)))
            .collect();
        eprintln!(
            "{}",
            json!({
                "job_id": p.job_id, "round": p.round, "rows": summary.rows,
                "scored": summary.scored, "skipped": skipped, "skipped_by_reason": reasons,
                "decile_cuts": summary.cuts.cuts(),
                "out": args.out.as_ref().map(|o| o.display().to_string()),
                "skipped_file": args.skipped.as_ref().map(|o| o.display().to_string()),
            })
        );
        return Ok(());
    }
    if args.skipped.is_none() && skipped > SKIPPED_SHOWN {
        eprintln!(
            "… and {} more skipped rows (--skipped FILE lists them all)",
            skipped - SKIPPED_SHOWN
        );
    }
    let reasons: Vec<String> = summary
        .skipped
        .iter()
        .map(|(r, n)| format!("{r} in {n}"))
        .collect();
    eprintln!(
        "scored {} of {} rows with {} ({}) round {}{}",
        summary.scored,
        summary.rows,
        p.job_id,
        p.name,
        p.round,
        if skipped == 0 {
            String::new()
        } else {
            format!("; {skipped} skipped: {}", reasons.join(", "))
        }
    );
    if let Some(o) = &args.out {
        eprintln!("  scores: {}", o.display());
    }
    if let Some(s) = &args.skipped {
        eprintln!("  skipped rows: {}", s.display());
    }
    Ok(())
}

fn report_export(json: bool, summary: &str, files: &[PathBuf]) {
    if json {
        let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        println!("{}", json!({"summary": summary, "files": files}));
    } else {
        println!("exported {summary}");
        for f in files {
            println!("  {}", f.display());
        }
    }
}

/// Writes streamed files into `dir` (or, for a single-file export, to `single`), each through
/// a temporary file renamed at its last chunk, so an interrupted export leaves no half file.
async fn receive_files(
    mut stream: tonic::Streaming<FileChunk>,
    dir: &Path,
    single: Option<&Path>,
) -> Result<(String, Vec<PathBuf>), Failure> {
    if single.is_none() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut summary = String::new();
    let mut written = Vec::new();
    let mut current: Option<(String, Vec<u8>)> = None;
    while let Some(chunk) = stream.message().await? {
        if summary.is_empty() && !chunk.summary.is_empty() {
            summary = chunk.summary.clone();
        }
        // Only a plain file name: the coordinator must not be able to write elsewhere.
        let name = &chunk.name;
        if name.is_empty() || name.contains(['/', '\\', ':']) || name == "." || name == ".." {
            return Err(
                anyhow::anyhow!("the coordinator sent a file named {name:?}; refusing it").into(),
            );
        }
        let (open, mut bytes) = current.take().unwrap_or_else(|| (name.clone(), Vec::new()));
        if open != *name {
            return Err(anyhow::anyhow!(
                "the coordinator interleaved the files {open:?} and {name:?}"
            )
            .into());
        }
        if bytes.len() + chunk.data.len() > MAX_FILE_BYTES {
            return Err(anyhow::anyhow!(
                "the coordinator sent more than {MAX_FILE_BYTES} bytes for {name}; refusing it"
            )
            .into());
        }
        bytes.extend_from_slice(&chunk.data);
        if chunk.last {
            let path = match single {
                Some(p) => p.to_path_buf(),
                None => dir.join(name),
            };
            fedmark_proto::durable::replace(&path, &bytes)
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        } else {
            current = Some((open, bytes));
        }
    }
    if let Some((name, _)) = current {
        return Err(anyhow::anyhow!("the export stream ended in the middle of {name}").into());
    }
    Ok((summary, written))
}

async fn watch_job(client: &mut Client, id: &str, json: bool) -> Result<u8, Failure> {
    let mut stream = client
        .watch_job(JobRequest {
            job_id: id.to_owned(),
        })
        .await?
        .into_inner();
    let tty = std::io::stdout().is_terminal();
    let mut shown_rounds = 0usize;
    let mut last: Option<JobInfo> = None;
    let mut phase_line = false;
    while let Some(info) = stream.message().await? {
        if json {
            println!("{}", info_json(&info));
        } else {
            if phase_line {
                // Clear the transient phase line before printing rounds over it.
                print!("\r\x1b[2K");
            }
            if last.is_none() {
                println!(
                    "job {} ({}): {} rounds planned{}",
                    info.job_id,
                    info.name,
                    info.planned_rounds,
                    info.epsilon_budget
                        .map_or(String::new(), |e| format!(", privacy budget ε = {e}"))
                );
                println!(
                    "  (AUC and loss on each line score the model that round starts from, on the partners' holdouts; the final evaluation scores the last model)"
                );
            }
            for r in info.rounds.iter().skip(shown_rounds) {
                println!(
                    "{}",
                    round_line(r, info.planned_rounds, info.epsilon_budget)
                );
            }
            shown_rounds = info.rounds.len();
            if tty && (info.status == "queued" || info.status == "running") {
                print!("  … {}", info.phase);
                phase_line = true;
            } else {
                phase_line = false;
            }
            let _ = std::io::stdout().flush();
        }
        last = Some(info);
    }
    let Some(info) = last else {
        return Err(anyhow::anyhow!("the coordinator sent nothing about job {id}").into());
    };
    if !json {
        if phase_line {
            println!();
        }
        match (&info.status[..], &info.r#final) {
            ("finished", Some(f)) if f.rows == 0 => println!(
                "job {} finished: {} — no federated evaluation; audit head {}",
                info.job_id, info.phase, info.audit_head
            ),
            ("finished", Some(f)) => println!(
                "job {} finished: {} — final AUC {}, log-loss {}, accuracy {} on {} holdout rows; audit head {}",
                info.job_id,
                info.phase,
                fedmark_core::metrics::show(f.auc),
                fedmark_core::metrics::show(f.log_loss),
                fedmark_core::metrics::show(f.accuracy),
                f.rows,
                info.audit_head
            ),
            (status, _) => println!("job {} {status}: {}", info.job_id, info.phase),
        }
    }
    Ok(match info.status.as_str() {
        "finished" => 0,
        "queued" | "running" => {
            return Err(anyhow::anyhow!(
                "the coordinator stopped sending updates while job {id} was {}",
                info.status
            )
            .into());
        }
        _ => 1,
    })
}

/// One line per committed round: a progress bar and the round's figures.
fn round_line(r: &fedmark_proto::RoundProgress, planned: u64, budget: Option<f64>) -> String {
    const WIDTH: u64 = 20;
    let filled = (r.round.min(planned) * WIDTH)
        .checked_div(planned)
        .unwrap_or(WIDTH) as usize;
    let bar = format!(
        "{}{}",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled)
    );
    let eps = match (r.epsilon, budget) {
        (Some(e), Some(b)) => format!("  ε {e:.3}/{b}"),
        (Some(e), None) => format!("  ε {e:.3}"),
        _ => String::new(),
    };
    let retry = if r.attempts > 1 {
        format!("  ({} attempts)", r.attempts)
    } else {
        String::new()
    };
    let start = if r.round == 1 { " (initial model)" } else { "" };
    format!(
        "round {:>3}/{planned} [{bar}]  AUC {:.4}  loss {:.4}{start}{eps}  participants {} (dropped {})  {:.2} s{retry}",
        r.round, r.auc, r.log_loss, r.participants, r.dropped, r.seconds
    )
}

/// The status, and the phase when it says more.
fn status_line(info: &JobInfo) -> String {
    if info.phase.is_empty() || info.phase == info.status {
        info.status.clone()
    } else {
        format!("{} — {}", info.status, info.phase)
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn info_json(info: &JobInfo) -> Value {
    let rounds: Vec<Value> = info
        .rounds
        .iter()
        .map(|r| {
            json!({
                "round": r.round, "participants": r.participants, "dropped": r.dropped,
                "auc": r.auc, "log_loss": r.log_loss, "accuracy": r.accuracy,
                "seconds": r.seconds, "epsilon": r.epsilon, "attempts": r.attempts,
            })
        })
        .collect();
    json!({
        "job_id": info.job_id,
        "name": info.name,
        "purpose": info.purpose,
        "status": info.status,
        "phase": info.phase,
        "planned_rounds": info.planned_rounds,
        "rounds": rounds,
        "epsilon_budget": info.epsilon_budget,
        "final": info.r#final.as_ref().map(|f| json!({
            "auc": f.auc, "log_loss": f.log_loss, "accuracy": f.accuracy, "rows": f.rows,
        })),
        "submitted_by": info.submitted_by,
        "submitted_ms": info.submitted_ms,
        "audit_head": info.audit_head,
        "settings": info
            .settings
            .iter()
            .map(|s| (s.name.clone(), Value::from(s.value.clone())))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// The key settings of a job in a few words: model, learning rate, privacy (and ε).
fn settings_summary(info: &JobInfo) -> String {
    let get = |name: &str| {
        info.settings
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value.as_str())
    };
    let mut out = format!(
        "{} lr {} {}",
        get("model").unwrap_or("-"),
        get("learning_rate").unwrap_or("-"),
        get("privacy").unwrap_or("-")
    );
    if let Some(e) = get("epsilon") {
        out.push_str(&format!(" ε {e}"));
    }
    out
}

/// The rows of `job compare`: each setting (in the order they first appear), then the
/// results; a row's first cell is `*` where the jobs differ.
fn compare_rows(infos: &[JobInfo]) -> Vec<(String, Vec<String>)> {
    let mut names: Vec<&str> = Vec::new();
    for info in infos {
        for s in &info.settings {
            if !names.contains(&s.name.as_str()) {
                names.push(&s.name);
            }
        }
    }
    let mut rows: Vec<(String, Vec<String>)> = vec![
        (
            "name".into(),
            infos.iter().map(|i| i.name.clone()).collect(),
        ),
        (
            "status".into(),
            infos.iter().map(|i| i.status.clone()).collect(),
        ),
    ];
    for name in names {
        let cells = infos
            .iter()
            .map(|i| {
                i.settings
                    .iter()
                    .find(|s| s.name == name)
                    .map_or_else(|| "-".to_owned(), |s| s.value.clone())
            })
            .collect();
        rows.push((name.to_owned(), cells));
    }
    let metric = |f: &dyn Fn(&JobInfo) -> Option<f64>, digits: usize| -> Vec<String> {
        infos
            .iter()
            .map(|i| {
                f(i).filter(|x| x.is_finite())
                    .map_or("-".into(), |x| format!("{x:.digits$}"))
            })
            .collect()
    };
    rows.push((
        "rounds done".into(),
        infos
            .iter()
            .map(|i| format!("{}/{}", i.rounds.len(), i.planned_rounds))
            .collect(),
    ));
    rows.push((
        "final auc".into(),
        metric(&|i| i.r#final.as_ref().map(|f| f.auc), 4),
    ));
    rows.push((
        "final log_loss".into(),
        metric(&|i| i.r#final.as_ref().map(|f| f.log_loss), 4),
    ));
    rows.push((
        "final accuracy".into(),
        metric(&|i| i.r#final.as_ref().map(|f| f.accuracy), 4),
    ));
    rows.push((
        "epsilon spent".into(),
        metric(&|i| i.rounds.last().and_then(|r| r.epsilon), 4),
    ));
    rows.push((
        "seconds".into(),
        metric(&|i| Some(i.rounds.iter().map(|r| r.seconds).sum()), 1),
    ));
    rows
}
