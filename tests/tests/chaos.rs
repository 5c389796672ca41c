//! Chaos: the real binaries, a secure record-DP job, and SIGKILL at random moments — the
//! coordinator at least five times and a partner once — each restarted on its own state. The
//! finished job must have the rounds and the per-round ε of an uninterrupted run, and every
//! audit chain (the coordinator's and each partner's) must verify.
//!
//! The kill times come from a seeded generator: `FEDMARK_CHAOS_SEED=N` replays a run, and the
//! test prints the seed and every kill it made. Each kill strikes after a random delay from
//! the restart, anywhere in the offer, a round's phases or a commit; after a kill that came
//! before any commit, the next one waits for a commit first, so the job always progresses (a
//! job started three times without committing is failed by design, see the restart cap).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::time::{Duration, Instant};

use fedmark_coordinator::store::Store;
use fedmark_tests::procs::{Deployment, record_dp_job, uninterrupted_report};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const ROUNDS: u64 = 8;
const COORDINATOR_KILLS: usize = 5;
/// The whole chaos run (after the reference run) must end within this.
const LIMIT: Duration = Duration::from_secs(120);

fn dp_job() -> String {
    record_dp_job(ROUNDS, 4.0).unwrap()
}

fn per_round_epsilon(report: &serde_json::Value) -> Vec<f64> {
    report["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["epsilon"].as_f64().unwrap())
        .collect()
}

#[test]
fn random_kills_of_the_coordinator_and_a_partner_leave_the_job_as_an_uninterrupted_run() {
    let seed: u64 = std::env::var("FEDMARK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_206);
    println!("chaos seed {seed} (replay with FEDMARK_CHAOS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    // The uninterrupted reference.
    let expected = uninterrupted_report(&dp_job()).unwrap();
    assert_eq!(expected["rounds"].as_array().unwrap().len() as u64, ROUNDS);

    let d = Deployment::new(&dp_job()).unwrap();
    let started = Instant::now();
    let mut running = d.start_coordinator(&[]).unwrap();
    let addr = running.addr;
    // Restarts listen where the partners already dial.
    d.write_coordinator_config(&addr.to_string()).unwrap();
    let start_partner = |i: usize| {
        let audit = format!("audit = \"{}.audit.jsonl\"", d.partners[i]);
        d.start_client(i, addr, &audit, &[], &["--once"]).unwrap()
    };
    let mut clients: Vec<_> = (0..d.partners.len()).map(start_partner).collect();
    let partner_kill_at = rng.random_range(0..COORDINATOR_KILLS);
    let mut kills = Vec::new();
    let mut committed_before = true;
    for k in 0..COORDINATOR_KILLS {
        assert!(
            started.elapsed() < LIMIT,
            "chaos run over {LIMIT:?} after {kills:?}"
        );
        // Two starts in a row without a commit would approach the restart cap (a job started
        // three times without committing fails): after one, wait for progress first.
        let mut committed = false;
        if !committed_before {
            if let Err(e) = running.wait_for_line("round complete", Duration::from_secs(60)) {
                panic!(
                    "kill {k}: {e:#}\nkills so far: {kills:?}\n{}",
                    d.client_logs()
                );
            }
            committed = true;
        }
        if k == partner_kill_at {
            let victim = rng.random_range(0..d.partners.len());
            let delay = Duration::from_millis(rng.random_range(0..1_500));
            std::thread::sleep(delay);
            clients[victim].kill9().unwrap();
            kills.push(format!("partner {} after {delay:?}", d.partners[victim]));
            println!("chaos: {}", kills.last().unwrap());
            clients[victim] = start_partner(victim);
        }
        let delay = Duration::from_millis(rng.random_range(0..2_500));
        std::thread::sleep(delay);
        committed |= running
            .stderr
            .try_iter()
            .any(|line| line.contains("round complete"));
        assert!(
            running.process.0.try_wait().unwrap().is_none(),
            "the job ended before kill {k} ({kills:?}): lower the delays or raise ROUNDS"
        );
        running.process.kill9().unwrap();
        kills.push(format!(
            "coordinator {} after {delay:?} ({})",
            k + 1,
            if committed {
                "after a commit"
            } else {
                "before any commit"
            }
        ));
        println!(
            "chaos: {} at {:?}",
            kills.last().unwrap(),
            started.elapsed()
        );
        committed_before = committed;
        running = d.start_coordinator(&[]).unwrap();
    }
    let status = running
        .process
        .wait(LIMIT.saturating_sub(started.elapsed()));
    let status = match status {
        Ok(s) => s,
        Err(e) => panic!("{e:#} (kills: {kills:?})\n{}", d.client_logs()),
    };
    if !status.success() {
        let log: Vec<String> = running.stderr.try_iter().collect();
        panic!(
            "coordinator: {status} (kills: {kills:?})\n{}\n{}",
            log[log.len().saturating_sub(15)..].join("\n"),
            d.client_logs()
        );
    }
    for client in &mut clients {
        assert!(client.wait(Duration::from_secs(60)).unwrap().success());
    }
    println!("chaos: {} kills in {:?}", kills.len(), started.elapsed());

    let report = d.report().unwrap();
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len() as u64, ROUNDS, "kills: {kills:?}");
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"].as_u64().unwrap(), i as u64 + 1);
    }
    assert_eq!(
        per_round_epsilon(&report),
        per_round_epsilon(&expected),
        "per-round ε differs from the uninterrupted run (kills: {kills:?})"
    );
    assert_eq!(
        report["privacy"]["epsilon_spent"],
        expected["privacy"]["epsilon_spent"]
    );

    // Every audit chain verifies: the coordinator's against its stored head, and each
    // partner's file, across the restarts that appended to them.
    let store = Store::open(&d.path().join("data")).unwrap();
    let text = store.audit_text().unwrap();
    fedmark_core::audit::verify(&text, Some(&store.audit_head())).unwrap();
    let resumed = text
        .lines()
        .filter(|l| l.contains("\"job_resumed\""))
        .count();
    assert!(resumed >= COORDINATOR_KILLS, "{resumed} resumptions");
    for id in &d.partners {
        let path = d.path().join(format!("{id}.audit.jsonl"));
        fedmark_client::audit::verify_file(&path, None)
            .unwrap_or_else(|e| panic!("{id}'s audit chain: {e}"));
    }
}
