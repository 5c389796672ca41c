//! End to end with the real binaries: `fedmark-coordinator serve` and three `fedmark-client`
//! processes on loopback, each with its own config file, as a partner would run them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fedmark_tests::partition::{Split, partition_csv};
use fedmark_tests::sim::workspace_root;

/// The binaries sit next to this test's `deps` folder; `cargo test --workspace` builds them
/// (the coordinator and client crates have integration tests of their own).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` so it is built",
        path.display()
    );
    path
}

/// Kills the child if the test fails before it exits.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait(child: &mut Guard, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "process did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn coordinator_and_three_clients_complete_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let root = workspace_root();
    let ids = ["bank", "retailer", "platform"];
    let files = partition_csv(
        &root.join("data/bank_marketing.csv"),
        dir.path(),
        3,
        &Split::ByColumn("job".into()),
        7,
    )
    .unwrap();
    let job = std::fs::read_to_string(root.join("examples/bank-job.toml"))
        .unwrap()
        .replace("rounds = 20", "rounds = 5");
    std::fs::write(dir.path().join("job.toml"), job).unwrap();
    // Development keys: an identity per partner and the roster listing them.
    let status = Command::new(binary("fedmark-coordinator"))
        .args([
            "roster",
            "init",
            "--partners",
            "bank,retailer,platform",
            "--out",
            "keys",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(
        dir.path().join("coordinator.toml"),
        "listen = \"127.0.0.1:0\"\nout_dir = \"out\"\nroster = \"keys/roster.toml\"\njoin_timeout_secs = 60\nphase_timeout_secs = 60\n",
    )
    .unwrap();
    let mut coordinator = Guard(
        Command::new(binary("fedmark-coordinator"))
            .args(["serve", "--config", "coordinator.toml", "--job", "job.toml"])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(coordinator.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // Keep reading so the coordinator's later output never meets a closed pipe.
    let drain = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let addr = first
        .trim()
        .strip_prefix("fedmark-coordinator listening on ")
        .expect("address line")
        .to_string();
    let mut clients: Vec<Guard> = ids
        .iter()
        .zip(&files)
        .map(|(id, (path, _))| {
            let cfg = dir.path().join(format!("{id}.toml"));
            // Relative key paths resolve against the config file's folder.
            std::fs::write(
                &cfg,
                format!(
                    "coordinator = \"http://{addr}\"\npartner_id = \"{id}\"\ndata = \"{}\"\n\
                     identity_key = \"keys/{id}.key\"\nroster = \"keys/roster.toml\"\n",
                    path.display()
                ),
            )
            .unwrap();
            Guard(
                Command::new(binary("fedmark-client"))
                    .arg("--config")
                    .arg(&cfg)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    assert!(wait(&mut coordinator, Duration::from_secs(240)).success());
    let summary = drain.join().unwrap();
    assert!(summary.contains("finished: 5 rounds"), "{summary}");
    for c in &mut clients {
        assert!(wait(c, Duration::from_secs(30)).success());
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["rounds"].as_array().unwrap().len(), 5);
    let auc = report["final"]["auc"].as_f64().unwrap();
    assert!(auc > 0.72, "final auc {auc}");
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/model.json")).unwrap())
            .unwrap();
    assert_eq!(
        model["params"].as_array().unwrap().len(),
        report["model_params"].as_u64().unwrap() as usize
    );
}
