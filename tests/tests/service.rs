//! The data scientist's flow against the real binaries, as the README tells it: a long-running
//! coordinator (`serve` without a job) with mutual TLS, three partner nodes that stay
//! connected, and the `fedmark` CLI over the network: submit, watch to the end, list, export
//! the model and score the partners' holdout rows from the exported files to the AUC the
//! coordinator reported; then a second job on the same partners, cancelled mid-run, a third
//! that runs after it, the metrics moving (read over TLS without a client certificate), the
//! dashboard's API over TLS (for the admin certificate and token, not a partner's), the audit
//! export, and the admin credential refused when it is wrong or a partner's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::time::{Duration, Instant};

use fedmark_tests::https;
use fedmark_tests::procs::Deployment;
use fedmark_tests::scoring::{read_npy, score_from_files};
use fedmark_tests::sim::workspace_root;
use serde_json::Value;

fn job(rounds: u32, seed: u64) -> String {
    std::fs::read_to_string(workspace_root().join("examples/bank-job.toml"))
        .unwrap()
        .replace("rounds = 20", &format!("rounds = {rounds}"))
        .replace("seed = 7", &format!("seed = {seed}"))
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "fedmark failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `/metrics` over TLS (the coordinator runs with mutual TLS), without a client
/// certificate, as Prometheus scrapes it.
fn metrics(d: &Deployment, addr: std::net::SocketAddr) -> String {
    let ca = std::fs::read_to_string(d.path().join("certs/ca.pem")).unwrap();
    let config = https::client_config(&ca, None).unwrap();
    let (code, body) = https::get_blocking(addr, config, "/metrics", None).unwrap();
    assert_eq!(code, 200, "{body}");
    body
}

/// Polls `job list --json` (bounded) until `done` holds for job `id`.
fn wait_for(d: &Deployment, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = json_of(&ok(&d.fedmark(&["--json", "job", "list"]).unwrap()));
        let job = list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job_id"] == id)
            .cloned()
            .unwrap_or(Value::Null);
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never got to {what}: {job}\n{}",
            d.client_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn submit_watch_export_score_cancel_over_the_admin_api() {
    let d = Deployment::new(&job(5, 7)).unwrap();
    std::fs::write(d.path().join("job2.toml"), job(200, 8)).unwrap();
    std::fs::write(d.path().join("job3.toml"), job(2, 9)).unwrap();
    d.enable_metrics().unwrap();
    d.enable_tls().unwrap();
    let coordinator = d.start_service().unwrap();
    let metrics_at = coordinator.metrics.unwrap();
    let mut clients = d.start_serving_clients(coordinator.addr).unwrap();
    d.write_admin_config(coordinator.addr, "admin").unwrap();

    // A job whose model passes every per-field cap but not the coordinator's size budget is
    // refused at submit, saying what to shrink or which setting to raise; nothing is queued.
    let poison: String = job(1, 1)
        .replace(
            "[model]\nkind = \"logistic\"",
            "[model]\nkind = \"mlp\"\nhidden = 4096",
        )
        .replace("[features]\n", "[features]\nhash_buckets = 4194304\n")
        .lines()
        .filter(|l| !l.starts_with("job = [")) // `job` hashed, no vocabulary
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(d.path().join("poison.toml"), &poison).unwrap();
    let refused = d.fedmark(&["job", "submit", "poison.toml"]).unwrap();
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        text.contains("max_model_params") && text.contains("hash_buckets"),
        "{text}"
    );

    // Submit and watch to the end.
    let submitted = json_of(&ok(&d
        .fedmark(&["--json", "job", "submit", "job.toml"])
        .unwrap()));
    let id = submitted["job_id"].as_str().unwrap().to_owned();
    assert!(
        submitted["status"] == "queued" || submitted["status"] == "running",
        "{submitted}"
    );
    assert!(
        submitted["submitted_by"]
            .as_str()
            .unwrap()
            .starts_with("admin:")
    );
    let watched = ok(&d.fedmark(&["job", "watch", &id]).unwrap());
    for r in 1..=5 {
        assert!(
            watched.contains(&format!("round {r:>3}/5 [")),
            "round {r} missing from\n{watched}"
        );
    }
    assert!(watched.contains("####################"), "{watched}");
    assert!(watched.contains("finished"), "{watched}");
    // Each line's AUC is of the model the round starts from, and says so.
    assert!(
        watched.contains("score the model that round starts from"),
        "{watched}"
    );
    let first = watched
        .lines()
        .find(|l| l.starts_with("round   1/5"))
        .unwrap();
    assert!(first.contains("(initial model)"), "{first}");
    // A job is also addressed by its name (its latest submission); an unknown one is a
    // usage error that says where names are listed.
    let name = submitted["name"].as_str().unwrap().to_owned();
    let by_name = ok(&d.fedmark(&["job", "watch", &name]).unwrap());
    assert!(
        by_name.starts_with(&format!("job {id} ({name})")),
        "{by_name}"
    );
    let unknown = d.fedmark(&["job", "watch", "no-such-name"]).unwrap();
    assert_eq!(unknown.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("`fedmark job list` shows both"));

    let list = json_of(&ok(&d.fedmark(&["--json", "job", "list"]).unwrap()));
    let listed = &list["jobs"][0];
    assert_eq!(listed["job_id"], id.as_str());
    assert_eq!(listed["status"], "finished");
    assert_eq!(listed["rounds"].as_array().unwrap().len(), 5);
    let reported_auc = listed["final"]["auc"].as_f64().unwrap();
    let human = ok(&d.fedmark(&["job", "list"]).unwrap());
    assert!(human.contains(&id) && human.contains("finished") && human.contains("5/5"));

    // Export over the network and score the partners' holdout rows from the files alone.
    let exported = ok(&d
        .fedmark(&["model", "export", &id, "--out", "model"])
        .unwrap());
    assert!(
        exported.contains("round 5 (the last committed round)"),
        "{exported}"
    );
    let dir = d.path().join("model");
    let pipe: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pipeline.json")).unwrap()).unwrap();
    let w = read_npy(&dir.join("weights.npy")).unwrap();
    assert!(dir.join("model_card.json").exists());
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for csv in &d.data {
        // The clients run with the default split: fraction 0.2, seed 0.
        let (s, l) = score_from_files(&pipe, &w, csv, Some((0.2, 0))).unwrap();
        scores.extend(s);
        labels.extend(l);
    }
    let auc = fedmark_core::metrics::exact(&scores, &labels).auc;
    assert!(
        (auc - reported_auc).abs() <= 1e-3,
        "holdout AUC from the exported files {auc} vs the reported {reported_auc}"
    );
    eprintln!(
        "holdout AUC from the exported files {auc:.6}, reported by the coordinator {reported_auc:.6}"
    );
    // examples/score.py on the same files: tests/export.rs.
    let m = metrics(&d, metrics_at);
    assert!(
        m.contains(&format!("fedmark_rounds_completed_total{{job=\"{id}\"}} 5")),
        "{m}"
    );
    // The dashboard's API on the same TLS listener: the admin certificate and the token
    // read it; a partner's certificate with the token is refused.
    let ca = std::fs::read_to_string(d.path().join("certs/ca.pem")).unwrap();
    let token = std::fs::read_to_string(d.path().join("data/admin.token")).unwrap();
    let as_holder = |name: &str| {
        let cert = https::cert_from(&d.path().join("certs"), name).unwrap();
        let config = https::client_config(&ca, Some(&cert)).unwrap();
        https::get_blocking(metrics_at, config, "/api/jobs", Some(token.trim())).unwrap()
    };
    let (code, body) = as_holder("admin");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&id), "{body}");
    let (code, body) = as_holder("bank");
    assert_eq!(code, 403, "{body}");

    // The same partners take a second job; it is cancelled after its first rounds.
    let second = json_of(&ok(&d
        .fedmark(&["--json", "job", "submit", "job2.toml"])
        .unwrap()));
    let id2 = second["job_id"].as_str().unwrap().to_owned();
    assert_ne!(id2, id);
    wait_for(&d, &id2, "two committed rounds", |j| {
        j["rounds"].as_array().is_some_and(|r| r.len() >= 2)
    });
    let moving = metrics(&d, metrics_at);
    assert!(
        moving.contains(&format!("fedmark_rounds_completed_total{{job=\"{id2}\"}}")),
        "{moving}"
    );
    let cancelled = json_of(&ok(&d.fedmark(&["--json", "job", "cancel", &id2]).unwrap()));
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(
        cancelled["phase"]
            .as_str()
            .unwrap()
            .contains("cancelled by admin:")
    );
    let again = d.fedmark(&["job", "cancel", &id2]).unwrap();
    assert_eq!(again.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&again.stderr).contains("cannot be cancelled"));
    let watch_cancelled = d.fedmark(&["job", "watch", &id2]).unwrap();
    assert_eq!(watch_cancelled.status.code(), Some(1));

    // A third job runs on the same, still connected partners.
    let third = json_of(&ok(&d
        .fedmark(&["--json", "job", "submit", "job3.toml"])
        .unwrap()));
    let id3 = third["job_id"].as_str().unwrap().to_owned();
    let watched3 = ok(&d.fedmark(&["--json", "job", "watch", &id3]).unwrap());
    let last = json_of(watched3.lines().last().unwrap());
    assert_eq!(last["status"], "finished", "{watched3}");

    // Two runs side by side: their settings, with the ones that differ marked, and results.
    let compared = ok(&d.fedmark(&["job", "compare", &id, &id3]).unwrap());
    let row = |name: &str| {
        compared
            .lines()
            .find(|l| l[1..].trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{compared}"))
            .to_owned()
    };
    assert!(
        compared.lines().next().unwrap().contains(&id3),
        "{compared}"
    );
    assert!(row("rounds ").starts_with('*'), "{compared}");
    assert!(row("model").starts_with(' ') && row("model").contains("logistic"));
    assert!(row("final auc").contains("0."), "{compared}");
    let as_json = json_of(&ok(&d
        .fedmark(&["--json", "job", "compare", &id, &id3])
        .unwrap()));
    assert_eq!(
        as_json["jobs"][1]["settings"]["model"], "logistic",
        "{as_json}"
    );
    let listed = ok(&d.fedmark(&["job", "list"]).unwrap());
    assert!(
        listed.contains("SETTINGS") && listed.contains("logistic lr"),
        "{listed}"
    );
    for c in &mut clients {
        assert!(c.0.try_wait().unwrap().is_none(), "a partner node left");
    }

    // The audit export names who submitted and who cancelled.
    ok(&d
        .fedmark(&["audit", "export", &id2, "--out", "job2.audit.jsonl"])
        .unwrap());
    let audit = std::fs::read_to_string(d.path().join("job2.audit.jsonl")).unwrap();
    assert!(audit.contains("\"kind\":\"job_submitted\""), "{audit}");
    assert!(audit.contains("\"kind\":\"job_cancelled\""), "{audit}");
    assert!(
        !audit.contains(&id3),
        "another job's records leaked into the export"
    );

    // The same export to stdout.
    let piped = ok(&d.fedmark(&["audit", "export", &id2]).unwrap());
    assert_eq!(piped, audit);

    // A bad spec, unknown jobs, a wrong token and a partner's certificate are refused.
    std::fs::write(
        d.path().join("bad.toml"),
        job(2, 9).replace("rounds = 2", "rounds = -1"),
    )
    .unwrap();
    let bad = d.fedmark(&["job", "submit", "bad.toml"]).unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("the job spec is not valid"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let unknown = d.fedmark(&["job", "watch", "job-000000000000"]).unwrap();
    assert_eq!(unknown.status.code(), Some(64));
    d.write_admin_config(coordinator.addr, "bank").unwrap();
    let partner = d.fedmark(&["job", "list"]).unwrap();
    assert_eq!(partner.status.code(), Some(77));
    assert!(
        String::from_utf8_lossy(&partner.stderr).contains("not an administrator"),
        "{}",
        String::from_utf8_lossy(&partner.stderr)
    );
    d.write_admin_config(coordinator.addr, "admin").unwrap();
    std::fs::write(d.path().join("data/admin.token"), "0".repeat(64)).unwrap();
    let wrong = d.fedmark(&["job", "list"]).unwrap();
    assert_eq!(wrong.status.code(), Some(77));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("admin token is not valid"));
}

#[test]
fn a_killed_service_resumes_its_running_job_and_keeps_the_queue() {
    let d = Deployment::new(&job(300, 11)).unwrap();
    std::fs::write(d.path().join("job2.toml"), job(3, 12)).unwrap();
    // Killed at a fixed point (round 4's key broadcast, after three committed rounds): a
    // kill between a round's unmask and its commit loses a job without DP, since its
    // partners help unmask one round per start model (see the README's threat model).
    let first = d
        .start_service_with(&[("FEDMARK_TEST_PAUSE_AT", "keys:4")])
        .unwrap();
    // The restart listens where the partners already dial.
    d.write_coordinator_config(&first.addr.to_string()).unwrap();
    let mut clients = d.start_serving_clients(first.addr).unwrap();
    d.write_admin_config(first.addr, "admin").unwrap();
    let id = json_of(&ok(&d
        .fedmark(&["--json", "job", "submit", "job.toml"])
        .unwrap()))["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id2 = json_of(&ok(&d
        .fedmark(&["--json", "job", "submit", "job2.toml"])
        .unwrap()))["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut first = first;
    if let Err(e) = first.wait_for_line("FEDMARK_PAUSED", Duration::from_secs(180)) {
        panic!("{e:#}\n{}", d.client_logs());
    }
    let before = wait_for(&d, &id, "three committed rounds", |j| {
        j["rounds"].as_array().is_some_and(|r| r.len() >= 3)
    });
    first.process.kill9().unwrap();
    let queued = d.start_service().unwrap();
    assert_eq!(queued.addr, first.addr);
    // The running job resumes after its last committed round (a round commits after the
    // `job_resumed` record); the queued one still waits.
    let audit = d.path().join("data/audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = std::fs::read_to_string(&audit).unwrap_or_default();
        let ours: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
        let resumed = ours
            .iter()
            .position(|l| l.contains("\"kind\":\"job_resumed\""));
        if resumed.is_some_and(|at| {
            ours[at..]
                .iter()
                .any(|l| l.contains("\"kind\":\"round_committed\""))
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no round committed after the restart\n{}",
            d.client_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = wait_for(&d, &id, "running after the restart", |j| {
        j["status"] == "running"
    });
    assert!(
        after["rounds"].as_array().unwrap().len() >= before["rounds"].as_array().unwrap().len()
    );
    assert_eq!(after["rounds"][0]["round"], 1, "{after}");
    let list = json_of(&ok(&d.fedmark(&["--json", "job", "list"]).unwrap()));
    let second = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == id2.as_str())
        .unwrap();
    assert_eq!(second["status"], "queued", "{second}");
    // Cancelling the resumed job lets the queued one run, on the same partner nodes.
    ok(&d.fedmark(&["job", "cancel", &id]).unwrap());
    let watched = ok(&d.fedmark(&["job", "watch", &id2]).unwrap());
    assert!(watched.contains("finished"), "{watched}");
    for c in &mut clients {
        assert!(c.0.try_wait().unwrap().is_none(), "a partner node left");
    }
}
