//! The partner's privacy ledger across crashes, with the real binaries: a partner killed
//! (SIGKILL) after it charged a round and before its update left still has the charge when it
//! restarts; and a coordinator killed mid-job, twice, still finishes a job whose partners cap
//! their ε just above the job's own — the re-offer is charged only what is left of the plan,
//! and the round that was in flight is re-sent, not charged again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::collections::BTreeSet;
use std::time::Duration;

use fedmark_tests::procs::{Deployment, Guard, record_dp_job};

const ROUNDS: u64 = 6;
const EPSILON: f64 = 2.0;

fn dp_job() -> String {
    record_dp_job(ROUNDS, EPSILON).unwrap()
}

/// The job's record in a partner's ledger file: its charged rounds, the job's ε (the larger
/// of its training and holdout sides') and the purpose's, as the partner's ledger reads them.
fn charged(d: &Deployment, id: &str) -> (BTreeSet<u64>, f64, f64) {
    let raw = d.partner_ledger(id).unwrap();
    let jobs = raw["jobs"].as_object().unwrap();
    assert_eq!(jobs.len(), 1, "{id}: one job");
    let job_id = jobs.keys().next().unwrap();
    let path = d.path().join(format!("fedmark-state/{id}.ledger.json"));
    let ledger = fedmark_client::ledger::Ledger::open(Some(&path)).unwrap();
    let job = ledger.job(job_id).unwrap();
    (
        job.charged_rounds.clone(),
        job.spend().epsilon(1e-5).unwrap().0,
        ledger.spent("campaign_response", 1e-5).unwrap(),
    )
}

/// The rounds of partner `id`'s audit records of `kind` (its audit file is `<id>.audit.jsonl`).
fn audited_rounds(d: &Deployment, id: &str, kind: &str) -> Vec<u64> {
    let text =
        std::fs::read_to_string(d.path().join(format!("{id}.audit.jsonl"))).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == kind)
        .map(|r| r["data"]["round"].as_u64().unwrap_or(0))
        .collect()
}

fn audit_line(id: &str) -> String {
    format!("audit = \"{id}.audit.jsonl\"")
}

fn finish(d: &Deployment, coordinator: &mut Guard, clients: &mut [Guard]) -> serde_json::Value {
    let status = coordinator.wait(Duration::from_secs(300)).unwrap();
    assert!(
        status.success(),
        "coordinator: {status}\n{}",
        d.client_logs()
    );
    for client in clients.iter_mut() {
        let status = client.wait(Duration::from_secs(60)).unwrap();
        assert!(status.success(), "client: {status}\n{}", d.client_logs());
    }
    d.report().unwrap()
}

#[test]
fn a_partner_killed_between_its_charge_and_its_send_keeps_the_charge() {
    let d = Deployment::new(&dp_job()).unwrap();
    let c = d.start_coordinator(&[]).unwrap();
    let mut clients = Vec::new();
    for i in 0..d.partners.len() {
        let env: &[(&str, &str)] = if i == 0 {
            &[("FEDMARK_TEST_PAUSE_AFTER_CHARGE", "2")]
        } else {
            &[]
        };
        let audit = audit_line(&d.partners[i]);
        clients.push(d.start_client(i, c.addr, &audit, env, &["--once"]).unwrap());
    }
    let bank = d.partners[0].clone();
    d.wait_for_client_line(&bank, "FEDMARK_CLIENT_PAUSED", Duration::from_secs(180))
        .unwrap();
    clients[0].kill9().unwrap();
    // The charge for round 2 reached the disk before anything was handed to the upload.
    let (rounds, spent, _) = charged(&d, &bank);
    assert_eq!(rounds, [1, 2].into_iter().collect(), "{rounds:?}");
    assert!(spent > 0.0);
    assert!(
        !audited_rounds(&d, &bank, "input_sent").contains(&2),
        "killed before its round-2 input was sent"
    );

    // Restarted, the partner carries on from the same ledger and the job finishes.
    clients[0] = d
        .start_client(0, c.addr, &audit_line(&bank), &[], &["--once"])
        .unwrap();
    let (rounds_now, spent_now, _) = charged(&d, &bank);
    assert!(rounds_now.is_superset(&rounds) && spent_now >= spent);
    let mut process = c.process;
    let report = finish(&d, &mut process, &mut clients);
    assert_eq!(report["rounds"].as_array().unwrap().len() as u64, ROUNDS);
    let (rounds, spent, purpose) = charged(&d, &bank);
    assert!(rounds.contains(&2), "the round-2 charge is still there");
    // Training rounds, and the final evaluation (round ROUNDS + 1), whose noised holdout
    // statistics are charged too.
    assert!(
        rounds.iter().all(|r| (1..=ROUNDS + 1).contains(r)),
        "{rounds:?}"
    );
    assert!(spent <= EPSILON * (1.0 + 1e-9) && (purpose - spent).abs() < 1e-12);
    // Round 2 went out at most once, and only as the update that was charged.
    let sent = audited_rounds(&d, &bank, "input_sent");
    assert!(sent.iter().filter(|r| **r == 2).count() <= 1, "{sent:?}");
}

#[test]
fn a_coordinator_killed_mid_job_still_finishes_a_job_capped_just_above_its_epsilon() {
    let d = Deployment::new(&dp_job()).unwrap();
    let first = d
        .start_coordinator(&[("FEDMARK_TEST_PAUSE_AT", "keys:2")])
        .unwrap();
    d.write_coordinator_config(&first.addr.to_string()).unwrap();
    // Caps just above the job's ε: a re-offer that counted the whole plan again on top of
    // the rounds already spent would be refused by every partner.
    let cap = EPSILON + 0.05;
    let mut clients: Vec<Guard> = d
        .partners
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let extra = format!("max_epsilon = {cap}\n{}", audit_line(id));
            d.start_client(i, first.addr, &extra, &[], &["--once"])
                .unwrap()
        })
        .collect();
    // Killed before round 2's inputs, then with every round-4 input sent and unmasking
    // under way: round 4 is re-run, and each partner re-sends its round-4 update uncharged.
    let mut running = first;
    for next in [Some("unmask:4"), None] {
        if let Err(e) = running.wait_for_line("FEDMARK_PAUSED", Duration::from_secs(180)) {
            panic!("{e:#}\n{}", d.client_logs());
        }
        running.process.kill9().unwrap();
        let Some(next) = next else { break };
        running = d
            .start_coordinator(&[("FEDMARK_TEST_PAUSE_AT", next)])
            .unwrap();
    }
    let mut last = d.start_coordinator(&[]).unwrap();
    let report = finish(&d, &mut last.process, &mut clients);
    assert_eq!(
        report["rounds"].as_array().unwrap().len() as u64,
        ROUNDS,
        "{}",
        report["stop_reason"]
    );
    assert!(
        report["partners_refused"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{}",
        report["partners_refused"]
    );
    for id in &d.partners {
        let (rounds, spent, purpose) = charged(&d, id);
        assert_eq!(
            rounds,
            (1..=ROUNDS + 1).collect(),
            "{id}: training and evaluation"
        );
        assert!(spent <= EPSILON * (1.0 + 1e-9), "{id}: job ε {spent}");
        assert!(purpose <= cap, "{id}: purpose ε {purpose}");
        assert!(
            audited_rounds(&d, id, "offer_refused").is_empty(),
            "{id} refused a re-offer"
        );
        let replayed = audited_rounds(&d, id, "input_replayed");
        assert!(
            !replayed.is_empty() && replayed.iter().all(|r| *r == 4),
            "{id}: round 4 re-sent, not charged again: {replayed:?}"
        );
    }
}
