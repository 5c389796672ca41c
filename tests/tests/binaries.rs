//! End to end with the real binaries: `fedmark-coordinator init` and `serve` and three
//! `fedmark-client` processes on loopback, each with its own config file, as a partner would
//! run them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::process::Command;
use std::time::Duration;

use fedmark_tests::procs::{Deployment, binary};
use fedmark_tests::sim::workspace_root;

fn five_round_job() -> String {
    std::fs::read_to_string(workspace_root().join("examples/bank-job.toml"))
        .unwrap()
        .replace("rounds = 20", "rounds = 5")
}

#[test]
fn coordinator_and_three_clients_complete_a_job() {
    let d = Deployment::new(&five_round_job()).unwrap();
    let mut coordinator = d.start_coordinator(&[]).unwrap();
    let mut clients = d.start_clients(coordinator.addr).unwrap();
    assert!(
        coordinator
            .process
            .wait(Duration::from_secs(240))
            .unwrap()
            .success()
    );
    let summary = coordinator.stdout.join().unwrap();
    assert!(summary.contains("finished: 5 rounds"), "{summary}");
    for c in &mut clients {
        assert!(c.wait(Duration::from_secs(30)).unwrap().success());
    }
    let report = d.report().unwrap();
    assert_eq!(report["rounds"].as_array().unwrap().len(), 5);
    let auc = report["final"]["auc"].as_f64().unwrap();
    assert!(auc > 0.72, "final auc {auc}");
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("out/model.json")).unwrap())
            .unwrap();
    assert_eq!(
        model["params"].as_array().unwrap().len(),
        report["model_params"].as_u64().unwrap() as usize
    );
    // The model card names the model, its metrics, the rounds and the audit head; the audit
    // mirror verifies against that head (plus the export record written after the card).
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("out/model_card.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(card["job_id"], report["job_id"]);
    assert_eq!(card["metrics"]["auc"], report["final"]["auc"]);
    assert_eq!(card["partners_per_round"].as_array().unwrap().len(), 5);
    assert_eq!(card["committed_rounds"].as_array().unwrap().len(), 6);
    let audit = d.path().join("data/audit.jsonl");
    let verified = d
        .coordinator_cli(&["audit", "verify", audit.to_str().unwrap()])
        .unwrap();
    assert!(verified.contains("chain intact"), "{verified}");
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let before_export: serde_json::Value = serde_json::from_str(lines[lines.len() - 2]).unwrap();
    assert_eq!(card["audit_head"], before_export["hash"]);
    for kind in [
        "job_submitted",
        "offer_accepted",
        "round_started",
        "round_committed",
        "job_finished",
        "model_exported",
    ] {
        assert!(text.contains(&format!("\"kind\":\"{kind}\"")), "no {kind}");
    }

    // Serving the finished job again writes its results from the store without a round.
    let again = d.start_coordinator(&[]).unwrap();
    let mut again_process = again.process;
    assert!(
        again_process
            .wait(Duration::from_secs(60))
            .unwrap()
            .success()
    );
    assert_eq!(d.report().unwrap()["final"], report["final"]);
}

#[test]
fn serve_refuses_to_start_without_its_store() {
    let d = Deployment::new(&five_round_job()).unwrap();
    std::fs::remove_dir_all(d.path().join("data")).unwrap();
    let out = Command::new(binary("fedmark-coordinator").unwrap())
        .args(["serve", "--config", "coordinator.toml", "--job", "job.toml"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no coordinator store"), "{err}");
    assert!(err.contains("fedmark-coordinator init"), "{err}");
    assert!(out.stdout.is_empty(), "no port was bound");
    // `init` makes it; a second `init` refuses to overwrite it.
    d.coordinator_cli(&["init", "--config", "coordinator.toml"])
        .unwrap();
    assert!(
        d.coordinator_cli(&["init", "--config", "coordinator.toml"])
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );
}
