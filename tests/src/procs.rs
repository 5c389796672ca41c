//! Running the real binaries in end-to-end tests: a deployment folder with partner data,
//! development keys and config files, a coordinator and clients as child processes, and
//! bounded waits. Everything listens on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::partition::{Split, partition_csv};
use crate::sim::workspace_root;

/// A built binary of the workspace. Test executables sit in `target/<profile>/deps`, the
/// binaries one folder up; `cargo test --workspace` builds them. `FEDMARK_BIN_DIR` names
/// another folder (binaries built from a work tree that shares its target folder with
/// another one, whose builds replace them).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("FEDMARK_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe()?;
            exe.parent()
                .and_then(Path::parent)
                .context("test executable has no grandparent folder")?
                .to_owned()
        }
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo test --workspace` so it is built",
            path.display()
        );
    }
    Ok(path)
}

/// The shipped bank job (`examples/bank-job.toml`) with `rounds` rounds and record-level DP
/// at (`epsilon`, 1e-5): the job the crash tests kill and resume.
pub fn record_dp_job(rounds: u64, epsilon: f64) -> anyhow::Result<String> {
    let mut job = std::fs::read_to_string(workspace_root().join("examples/bank-job.toml"))?
        .replace("rounds = 20", &format!("rounds = {rounds}"));
    job.push_str(&format!(
        "\n[privacy]\nmode = \"record\"\nepsilon = {epsilon:?}\ndelta = 1e-5\n"
    ));
    Ok(job)
}

/// Runs `job_toml` on a fresh [`Deployment`] without interruption (its partners leave after
/// it) and returns the report: the reference a crash test compares a resumed run with.
pub fn uninterrupted_report(job_toml: &str) -> anyhow::Result<serde_json::Value> {
    let d = Deployment::new(job_toml)?;
    let c = d.start_coordinator(&[])?;
    let mut clients = d.start_clients(c.addr)?;
    let mut process = c.process;
    let status = process.wait(Duration::from_secs(300))?;
    if !status.success() {
        bail!(
            "the uninterrupted coordinator: {status}\n{}",
            d.client_logs()
        );
    }
    for client in &mut clients {
        let status = client.wait(Duration::from_secs(60))?;
        if !status.success() {
            bail!("a partner of the uninterrupted run: {status}");
        }
    }
    d.report()
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves nothing
/// running.
#[derive(Debug)]
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// Waits up to `limit` for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > limit {
                bail!("process did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }
}

/// A folder laid out as a small consortium: three partners' CSVs from the shipped data (split
/// by job group), development keys, the job spec and the coordinator's config.
#[derive(Debug)]
pub struct Deployment {
    /// The folder (deleted on drop).
    pub dir: tempfile::TempDir,
    /// Partner ids.
    pub partners: Vec<String>,
    /// Each partner's CSV.
    pub data: Vec<PathBuf>,
}

/// A running coordinator.
#[derive(Debug)]
pub struct RunningCoordinator {
    /// The process.
    pub process: Guard,
    /// The address it bound.
    pub addr: std::net::SocketAddr,
    /// The address of its metrics endpoint, when the config has `metrics_listen`.
    pub metrics: Option<std::net::SocketAddr>,
    /// Its stdout after the address line, once it exits.
    pub stdout: std::thread::JoinHandle<String>,
    /// Its stderr lines as they come.
    pub stderr: mpsc::Receiver<String>,
}

impl Deployment {
    /// Lays out the folder with `job_toml` as the job spec; runs `roster init` and `init`.
    pub fn new(job_toml: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = workspace_root();
        let partners: Vec<String> = ["bank", "retailer", "platform"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let data = partition_csv(
            &root.join("data/bank_marketing.csv"),
            dir.path(),
            partners.len(),
            &Split::ByColumn("job".into()),
            7,
        )?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
        std::fs::write(dir.path().join("job.toml"), job_toml)?;
        let d = Self {
            dir,
            partners,
            data,
        };
        d.coordinator_cli(&[
            "roster",
            "init",
            "--partners",
            &d.partners.join(","),
            "--out",
            "keys",
        ])?;
        d.write_coordinator_config("127.0.0.1:0")?;
        d.coordinator_cli(&["init", "--config", "coordinator.toml"])?;
        Ok(d)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `coordinator.toml` listening on `listen`.
    pub fn write_coordinator_config(&self, listen: &str) -> anyhow::Result<()> {
        std::fs::write(
            self.path().join("coordinator.toml"),
            format!(
                "listen = \"{listen}\"\nout_dir = \"out\"\ndata_dir = \"data\"\nroster = \"keys/roster.toml\"\n\
                 join_timeout_secs = 60\nphase_timeout_secs = 30\n"
            ),
        )?;
        Ok(())
    }

    /// Adds `metrics_listen = "127.0.0.1:0"` to `coordinator.toml`.
    pub fn enable_metrics(&self) -> anyhow::Result<()> {
        let path = self.path().join("coordinator.toml");
        let text = std::fs::read_to_string(&path)?;
        // First, so that it never lands inside a `[tls]` table.
        std::fs::write(path, format!("metrics_listen = \"127.0.0.1:0\"\n{text}"))?;
        Ok(())
    }

    /// Makes a development CA with certificates (`certs init --out certs`) and turns on
    /// mutual TLS in `coordinator.toml`; clients started afterwards use it too.
    pub fn enable_tls(&self) -> anyhow::Result<()> {
        self.coordinator_cli(&[
            "certs",
            "init",
            "--partners",
            &self.partners.join(","),
            "--out",
            "certs",
        ])?;
        let path = self.path().join("coordinator.toml");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(
            "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/coordinator.pem\"\nkey = \"certs/coordinator.key\"\n",
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    fn tls_enabled(&self) -> bool {
        self.path().join("certs/ca.pem").exists()
    }

    /// Writes `admin.toml` for the `fedmark` CLI against the coordinator at `addr`, with the
    /// coordinator's admin token and, under TLS, the admin certificate `certs/<cert>.pem`.
    pub fn write_admin_config(
        &self,
        addr: std::net::SocketAddr,
        cert: &str,
    ) -> anyhow::Result<PathBuf> {
        let path = self.path().join("admin.toml");
        let text = if self.tls_enabled() {
            format!(
                "coordinator = \"https://{addr}\"\ntoken_file = \"data/admin.token\"\n\
                 [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{cert}.pem\"\nkey = \"certs/{cert}.key\"\n"
            )
        } else {
            format!("coordinator = \"http://{addr}\"\ntoken_file = \"data/admin.token\"\n")
        };
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Runs the `fedmark` CLI with `--admin admin.toml` in the folder; returns its output
    /// whatever its exit status.
    pub fn fedmark(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(Command::new(binary("fedmark")?)
            .arg("--admin")
            .arg("admin.toml")
            .args(args)
            .current_dir(self.path())
            .output()?)
    }

    /// Runs a coordinator subcommand to completion; fails unless it succeeds.
    pub fn coordinator_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(binary("fedmark-coordinator")?)
            .args(args)
            .current_dir(self.path())
            .output()?;
        if !out.status.success() {
            bail!(
                "fedmark-coordinator {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `fedmark-coordinator serve --job job.toml` with extra environment variables and
    /// waits for its address line.
    pub fn start_coordinator(&self, env: &[(&str, &str)]) -> anyhow::Result<RunningCoordinator> {
        self.start_serve(&["--job", "job.toml"], env)
    }

    /// Starts the long-running coordinator (`fedmark-coordinator serve` without a job) and
    /// waits for its address line.
    pub fn start_service(&self) -> anyhow::Result<RunningCoordinator> {
        self.start_serve(&[], &[])
    }

    /// [`Deployment::start_service`] with extra environment (e.g. `FEDMARK_TEST_PAUSE_AT`).
    pub fn start_service_with(&self, env: &[(&str, &str)]) -> anyhow::Result<RunningCoordinator> {
        self.start_serve(&[], env)
    }

    fn start_serve(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<RunningCoordinator> {
        let mut cmd = Command::new(binary("fedmark-coordinator")?);
        cmd.args(["serve", "--config", "coordinator.toml"])
            .args(args)
            .current_dir(self.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut process = Guard(cmd.spawn()?);
        let stdout = process.0.stdout.take().context("coordinator stdout")?;
        let stderr = process.0.stderr.take().context("coordinator stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        reader.read_line(&mut first)?;
        let config = std::fs::read_to_string(self.path().join("coordinator.toml"))?;
        let metrics = if config.contains("metrics_listen") {
            let mut second = String::new();
            reader.read_line(&mut second)?;
            Some(
                second
                    .trim()
                    .strip_prefix("fedmark-coordinator metrics on ")
                    .with_context(|| {
                        format!("unexpected second line from the coordinator: {second:?}")
                    })?
                    .parse()?,
            )
        } else {
            None
        };
        // Keep reading so the coordinator's later output never meets a closed pipe.
        let stdout =
            std::thread::spawn(move || std::io::read_to_string(reader).unwrap_or_default());
        let addr = first
            .trim()
            .strip_prefix("fedmark-coordinator listening on ")
            .with_context(|| format!("unexpected first line from the coordinator: {first:?}"))?
            .parse()?;
        Ok(RunningCoordinator {
            process,
            addr,
            metrics,
            stdout,
            stderr: rx,
        })
    }

    /// Writes each partner's `client.toml` for the coordinator at `addr` and starts the
    /// clients; each leaves after its first job (`--once`).
    pub fn start_clients(&self, addr: std::net::SocketAddr) -> anyhow::Result<Vec<Guard>> {
        self.launch_clients(addr, &["--once"])
    }

    /// As [`Deployment::start_clients`], but the clients stay for every job, as partner nodes
    /// beside a long-running coordinator do.
    pub fn start_serving_clients(&self, addr: std::net::SocketAddr) -> anyhow::Result<Vec<Guard>> {
        self.launch_clients(addr, &[])
    }

    fn launch_clients(
        &self,
        addr: std::net::SocketAddr,
        args: &[&str],
    ) -> anyhow::Result<Vec<Guard>> {
        (0..self.partners.len())
            .map(|i| self.start_client(i, addr, "", &[], args))
            .collect()
    }

    /// Writes partner `index`'s `client.toml` for the coordinator at `addr`, with `extra`
    /// config lines, and starts its client with `args` and extra environment variables. Its
    /// stderr is appended to `<id>.log`, so a restarted client's log follows the first one's.
    pub fn start_client(
        &self,
        index: usize,
        addr: std::net::SocketAddr,
        extra: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<Guard> {
        let (id, data) = self
            .partners
            .get(index)
            .zip(self.data.get(index))
            .context("no such partner")?;
        let (scheme, tls) = if self.tls_enabled() {
            (
                "https",
                format!(
                    "[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{id}.pem\"\nkey = \"certs/{id}.key\"\n"
                ),
            )
        } else {
            ("http", String::new())
        };
        let cfg = self.path().join(format!("{id}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "coordinator = \"{scheme}://{addr}\"\npartner_id = \"{id}\"\ndata = \"{}\"\n\
                 identity_key = \"keys/{id}.key\"\nroster = \"keys/roster.toml\"\n\
                 connect_timeout_secs = 120\n{extra}\n{tls}",
                data.display()
            ),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("{id}.log")))?;
        let mut cmd = Command::new(binary("fedmark-client")?);
        cmd.arg("--config")
            .arg(&cfg)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(Guard(cmd.spawn()?))
    }

    /// Waits (up to `limit`, polling) for a line containing `needle` in partner `id`'s log.
    pub fn wait_for_client_line(
        &self,
        id: &str,
        needle: &str,
        limit: Duration,
    ) -> anyhow::Result<String> {
        let path = self.path().join(format!("{id}.log"));
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "no line containing {needle:?} in {id}'s log within {limit:?}\n{}",
                    self.client_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Partner `id`'s privacy ledger where a node keeps it by default
    /// (`fedmark-state/<id>.ledger.json` beside its `client.toml`).
    pub fn partner_ledger(&self, id: &str) -> anyhow::Result<serde_json::Value> {
        let path = self.path().join(format!("fedmark-state/{id}.ledger.json"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The last lines of every client's log (`<id>.log` in the folder), for a failing test's
    /// message.
    pub fn client_logs(&self) -> String {
        let mut out = String::new();
        for id in &self.partners {
            let text =
                std::fs::read_to_string(self.path().join(format!("{id}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {id}\n"));
            for l in &lines[lines.len().saturating_sub(8)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The finished job's report.
    pub fn report(&self) -> anyhow::Result<serde_json::Value> {
        let path = self.path().join("out/report.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

impl RunningCoordinator {
    /// Waits (up to `limit`) for a stderr line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        let mut seen = std::collections::VecDeque::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no coordinator log line containing {needle:?} within {limit:?}; last lines:\n{}",
                    Vec::from(seen).join("\n")
                );
            }
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(line) => {
                    if seen.len() == 20 {
                        seen.pop_front();
                    }
                    seen.push_back(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the coordinator exited before logging {needle:?}; last lines:\n{}",
                    Vec::from(seen).join("\n")
                ),
            }
        }
    }
}
