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
