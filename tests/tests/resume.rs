//! Crash and resume with the real binaries: the coordinator is killed with SIGKILL in the
//! middle of rounds — after the key broadcast, with masked inputs half summed, and during
//! unmasking — restarted on the same store each time, and the job still completes with the
//! rounds and the ε of an uninterrupted run, every committed checkpoint intact.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::time::Duration;

use fedmark_coordinator::store::Store;
use fedmark_tests::procs::{Deployment, record_dp_job, uninterrupted_report};

const ROUNDS: u64 = 6;

fn dp_job() -> String {
    record_dp_job(ROUNDS, 4.0).unwrap()
}

fn run_to_end(d: &Deployment) -> serde_json::Value {
    let mut c = d.start_coordinator(&[]).unwrap();
    let status = c.process.wait(Duration::from_secs(300)).unwrap();
    // Its stderr is a pipe, not a terminal: plain text, no colour codes. (The reader thread
    // ends at the pipe's end, so this loop does too.)
    let mut lines = Vec::new();
    while let Ok(line) = c.stderr.recv_timeout(Duration::from_secs(10)) {
        lines.push(line);
    }
    assert!(lines.iter().any(|l| l.contains("INFO")), "{lines:?}");
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "colour codes in redirected logs: {:?}",
        lines.iter().find(|l| l.contains('\u{1b}'))
    );
    if !status.success() {
        panic!(
            "coordinator: {status}\n{}\n{}",
            lines[lines.len().saturating_sub(10)..].join("\n"),
            d.client_logs()
        );
    }
    d.report().unwrap()
}

#[test]
fn a_coordinator_killed_at_three_phases_resumes_to_the_same_result() {
    // The uninterrupted reference.
    let expected = uninterrupted_report(&dp_job()).unwrap();

    // The same job, killed three times.
    let d = Deployment::new(&dp_job()).unwrap();
    let first = d
        .start_coordinator(&[("FEDMARK_TEST_PAUSE_AT", "keys:2")])
        .unwrap();
    // Restarts listen where the partners already dial.
    d.write_coordinator_config(&first.addr.to_string()).unwrap();
    let mut clients = d.start_clients(first.addr).unwrap();
    let mut running = first;
    for next in ["input:4", "unmask:5"] {
        if let Err(e) = running.wait_for_line("FEDMARK_PAUSED", Duration::from_secs(120)) {
            panic!("{e:#}\n{}", d.client_logs());
        }
        running.process.kill9().unwrap();
        running = d
            .start_coordinator(&[("FEDMARK_TEST_PAUSE_AT", next)])
            .unwrap();
    }
    running
        .wait_for_line("FEDMARK_PAUSED", Duration::from_secs(120))
        .unwrap();
    running.process.kill9().unwrap();
    let report = run_to_end(&d);
    for client in &mut clients {
        assert!(client.wait(Duration::from_secs(60)).unwrap().success());
    }

    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), expected["rounds"].as_array().unwrap().len());
    assert_eq!(rounds.len() as u64, ROUNDS);
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"].as_u64().unwrap(), i as u64 + 1);
    }
    // The rounds killed mid-way count their attempts before the restart too.
    for killed in [2, 4, 5] {
        let attempts = rounds[killed - 1]["attempts"].as_u64().unwrap();
        assert!(
            attempts >= 2,
            "round {killed}: {attempts} attempts; {:?}",
            rounds
                .iter()
                .map(|r| r["attempts"].clone())
                .collect::<Vec<_>>()
        );
    }
    let eps = report["privacy"]["epsilon_spent"].as_f64().unwrap();
    let eps_ref = expected["privacy"]["epsilon_spent"].as_f64().unwrap();
    assert!(
        (eps - eps_ref).abs() < 1e-12,
        "resumed ε {eps} vs uninterrupted {eps_ref}"
    );
    assert!(report["final"]["auc"].as_f64().unwrap() > 0.70);

    // Every committed checkpoint loads with its hash intact; the audit chain verifies and
    // tells the story: three resumptions, and the interrupted rounds re-run under new attempt
    // numbers (no round id, hence no secure-aggregation key, used twice).
    let store = Store::open(&d.path().join("data")).unwrap();
    let job_id = report["job_id"].as_str().unwrap();
    let committed = store.checkpoint_rounds(job_id).unwrap();
    // A DP job has no statistics round 0 (it standardises with the declared ranges).
    assert_eq!(committed, (1..=ROUNDS).collect::<Vec<_>>());
    for r in committed {
        let cp = store.checkpoint(job_id, Some(r)).unwrap().unwrap();
        assert_eq!(cp.checkpoint.round, r);
        assert_eq!(cp.checkpoint.records.len() as u64, r);
    }
    let text = store.audit_text().unwrap();
    fedmark_core::audit::verify(&text, Some(&store.audit_head())).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "job_resumed")
            .count(),
        3
    );
    for round in [2u64, 4, 5] {
        let attempts: Vec<u64> = records
            .iter()
            .filter(|r| r["kind"] == "round_started" && r["data"]["round"] == round)
            .map(|r| r["data"]["attempt"].as_u64().unwrap())
            .collect();
        assert!(attempts.len() >= 2, "round {round}: {attempts:?}");
        let mut unique = attempts.clone();
        unique.dedup();
        assert_eq!(unique, attempts, "round {round} reused an attempt number");
        let committed_once = records
            .iter()
            .filter(|r| r["kind"] == "round_committed" && r["data"]["round"] == round)
            .count();
        assert_eq!(committed_once, 1, "round {round} committed once");
    }
}

/// A boosted-trees job of 3 trees of depth 3, without DP (so a run is deterministic).
fn gbdt_job() -> String {
    let text = std::fs::read_to_string(
        fedmark_tests::sim::workspace_root().join("examples/bank-job.toml"),
    )
    .unwrap();
    let start = text.find("[model]").unwrap();
    let end = text.find("[training]").unwrap();
    let model = "[model]\nkind = \"gbdt\"\n\n[model.gbdt]\nmax_depth = 3\nmax_bins = 32\n\n";
    format!("{}{model}{}", &text[..start], &text[end..]).replace("rounds = 20", "rounds = 3")
}

/// A boosted-trees job whose coordinator is killed in the middle of its second tree (at the
/// key broadcast of the tree's third level, round 1 + 2·(1·3 + 2) = 11) grows that tree on
/// from the level sums it kept — the partners are not asked for the levels already summed,
/// which without DP they would not unmask twice — and ends with the model of an
/// uninterrupted run, bit for bit (every tree's federated metrics and the final ones equal).
#[test]
fn a_boosted_trees_job_killed_mid_tree_grows_on_from_its_kept_levels() {
    let job = gbdt_job();
    let expected = uninterrupted_report(&job).unwrap();
    let d = Deployment::new(&job).unwrap();
    let mut first = d
        .start_coordinator(&[("FEDMARK_TEST_PAUSE_AT", "keys:11")])
        .unwrap();
    d.write_coordinator_config(&first.addr.to_string()).unwrap();
    let mut clients = d.start_clients(first.addr).unwrap();
    if let Err(e) = first.wait_for_line("FEDMARK_PAUSED", Duration::from_secs(120)) {
        panic!("{e:#}\n{}", d.client_logs());
    }
    first.process.kill9().unwrap();
    let mut second = d.start_coordinator(&[]).unwrap();
    let status = second.process.wait(Duration::from_secs(300)).unwrap();
    let mut lines = Vec::new();
    while let Ok(line) = second.stderr.recv_timeout(Duration::from_secs(10)) {
        lines.push(line);
    }
    assert!(
        status.success(),
        "coordinator: {status}\n{}",
        lines.join("\n")
    );
    for client in &mut clients {
        assert!(client.wait(Duration::from_secs(60)).unwrap().success());
    }
    let replayed = lines
        .iter()
        .filter(|l| l.contains("replaying a level round kept before the restart"))
        .count();
    assert_eq!(replayed, 2, "levels 0 and 1 of the second tree");

    let report = d.report().unwrap();
    let rounds = report["rounds"].as_array().unwrap();
    let want = expected["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for (r, w) in rounds.iter().zip(want) {
        assert_eq!(r["auc"], w["auc"], "{r} vs {w}");
        assert_eq!(r["log_loss"], w["log_loss"], "{r} vs {w}");
    }
    assert_eq!(report["final"]["auc"], expected["final"]["auc"]);
    assert_eq!(report["final"]["log_loss"], expected["final"]["log_loss"]);

    let store = Store::open(&d.path().join("data")).unwrap();
    let job_id = report["job_id"].as_str().unwrap();
    assert!(
        store.levels(job_id).unwrap().is_empty(),
        "kept levels dropped with their tree"
    );
    let text = store.audit_text().unwrap();
    fedmark_core::audit::verify(&text, Some(&store.audit_head())).unwrap();
    let started: Vec<(u64, u64)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "round_started")
        .map(|r| {
            (
                r["data"]["round"].as_u64().unwrap(),
                r["data"]["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    // Rounds 7 and 9 ran once (kept, then replayed); round 11 again under a new attempt.
    for round in [7, 9] {
        assert_eq!(
            started.iter().filter(|s| s.0 == round).count(),
            1,
            "{started:?}"
        );
    }
    let eleven: Vec<u64> = started.iter().filter(|s| s.0 == 11).map(|s| s.1).collect();
    assert_eq!(eleven, vec![0, 1], "{started:?}");
}
