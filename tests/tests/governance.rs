//! Consent, partner policy and audit, end to end over real gRPC on 127.0.0.1: withdrawals take
//! effect from the next round by exactly the withdrawn users' rows, jobs outside a partner's
//! policy are refused with the reason in its audit file and the coordinator's report, and no
//! user id or raw value reaches any log, audit file or report.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use fedmark_core::audit::{AuditRecord, verify};
use fedmark_tests::partition::Split;
use fedmark_tests::sim::{self, SimOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The records of an audit file, after checking its chain.
fn audit_records(path: &Path) -> Vec<AuditRecord> {
    let text = std::fs::read_to_string(path).unwrap();
    verify(&text, None).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, l)| AuditRecord::parse_line(l, i + 1).unwrap())
        .collect()
}

fn u(r: &AuditRecord, k: &str) -> u64 {
    r.data[k].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_shrinks_the_next_round_by_exactly_the_withdrawn_rows() {
    let audit_dir = tempfile::tempdir().unwrap();
    let opts = SimOptions {
        rounds: Some(4),
        partners: 3,
        split: Split::Iid,
        skip_baselines: true,
        show_progress: false,
        phase_timeout: Duration::from_secs(60),
        consent_rate: Some(0.7),
        withdraw: Some((3, 0.3)),
        audit_dir: Some(audit_dir.path().to_path_buf()),
        ..SimOptions::default()
    };
    let report = sim::run(&opts).await.unwrap();
    assert_eq!(report.rounds.len(), 4);
    for p in &report.partners {
        let consent = p.consent.as_ref().unwrap();
        assert!(consent.withdrawn_users > 0 && consent.withdrawn_rows > 0);
        let records = audit_records(&p.audit_file);
        // Round → (usable records, consented users, snapshot hash); 0 is the statistics
        // round, 5 the final evaluation.
        let snaps: BTreeMap<u64, (u64, u64, String)> = records
            .iter()
            .filter(|r| r.kind == "consent_snapshot")
            .map(|r| {
                (
                    u(r, "round"),
                    (
                        u(r, "usable_records"),
                        u(r, "consented_users"),
                        r.data["snapshot_sha256"].as_str().unwrap().to_owned(),
                    ),
                )
            })
            .collect();
        assert_eq!(
            snaps.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5]
        );
        // Before the withdrawal every round uses the same consented rows (one row per user).
        assert_eq!(snaps[&0].0, consent.consented_users);
        assert_eq!(snaps[&0], snaps[&2]);
        // Round 3 is the first without the withdrawn users: exactly their rows are gone.
        assert_eq!(
            snaps[&2].0 - snaps[&3].0,
            consent.withdrawn_rows,
            "{}",
            p.partner
        );
        assert_eq!(snaps[&2].1 - snaps[&3].1, consent.withdrawn_users);
        assert_ne!(snaps[&2].2, snaps[&3].2, "a new snapshot, a new hash");
        assert_eq!(snaps[&3], snaps[&5]);
        // What left the partner is a fresh commitment to each round's hash, which its audit
        // file opens; two rounds of one snapshot cannot be linked by the coordinator.
        let mut sent = BTreeSet::new();
        for r in records.iter().filter(|r| r.kind == "consent_snapshot") {
            let text = |k: &str| r.data[k].as_str().unwrap().to_owned();
            let salt = hex::decode(text("commitment_salt")).unwrap();
            let mut h = Sha256::new();
            h.update(b"fedmark consent commitment v1");
            h.update(&salt);
            h.update(text("snapshot_sha256").as_bytes());
            assert_eq!(hex::encode(h.finalize()), text("commitment"));
            assert!(sent.insert(text("commitment")), "a commitment was reused");
        }
        // The report's per-round counts are the partner's own.
        assert_eq!(report.rounds[2].usable_records[&p.partner], snaps[&3].0);
        assert_eq!(report.rounds[1].usable_records[&p.partner], snaps[&2].0);
        // The partner did contribute to round 3, from the reduced rows.
        assert!(
            records
                .iter()
                .any(|r| r.kind == "input_sent" && u(r, "round") == 3)
        );
    }
}

const BANK_COLUMNS: &str = r#"["age", "balance", "day", "campaign", "pdays", "previous", "job", "marital", "education", "default", "housing", "loan", "contact", "month", "poutcome", "y"]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_outside_a_partners_policy_are_refused_with_the_reason_on_both_sides() {
    use fedmark_client::node;
    use fedmark_tests::harness::{
        bank_spec, client_config, consortium, start_coordinator, with_identity,
    };
    use fedmark_tests::partition::partition_csv;

    let dir = tempfile::tempdir().unwrap();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 2, &Split::Iid, 3).unwrap();
    let mut spec = bank_spec(1).unwrap();
    spec.privacy.mode = fedmark_core::spec::PrivacyMode::PartnerCentral;
    spec.privacy.epsilon = 4.0;
    let ok = format!(
        "allowed_purposes = [\"campaign_response\"]\nallowed_features = {BANK_COLUMNS}\n\
         [purposes.campaign_response]\nmin_dp_mode = \"partner-central\"\nmax_epsilon = 8.0\n"
    );
    let policies: Vec<(&str, String, &str)> = vec![
        ("bank", ok.clone(), ""),
        ("retailer", ok.clone(), ""),
        (
            "no-balance",
            ok.replace("\"balance\", ", ""),
            "column `balance` is not in this partner's allowed features",
        ),
        (
            "churn-only",
            ok.replace(
                "allowed_purposes = [\"campaign_response\"]",
                "allowed_purposes = [\"churn\"]",
            )
            .replace("[purposes.campaign_response]", "[purposes.churn]"),
            "purpose `campaign_response` is not in this partner's allowed purposes",
        ),
        (
            "distributed-only",
            ok.replace("\"partner-central\"", "\"partner-distributed\""),
            "privacy mode `partner-central` is weaker than the `partner-distributed` this partner's policy requires for purpose `campaign_response`",
        ),
        (
            "eps-2",
            ok.replace("max_epsilon = 8.0", "max_epsilon = 2.0"),
            "epsilon 4 exceeds this partner's policy cap of 2 for purpose `campaign_response`",
        ),
    ];
    let ids: Vec<&str> = policies.iter().map(|p| p.0).collect();
    let (roster, identities) = consortium(&ids).unwrap();
    let coordinator = start_coordinator(spec, roster, Duration::from_secs(60))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for (i, (id, policy, _)) in policies.iter().enumerate() {
        let policy_path = dir.path().join(format!("{id}.policy.toml"));
        std::fs::write(&policy_path, policy).unwrap();
        let mut cfg = client_config(coordinator.addr, id, files[i % 2].0.clone(), i as u64);
        cfg.policy = Some(policy_path);
        cfg.audit = Some(dir.path().join(format!("{id}.audit.jsonl")));
        let options = with_identity(&identities[i]);
        clients.push(tokio::spawn(async move { node::run(&cfg, options).await }));
    }
    let outcome = coordinator.job.await.unwrap().unwrap();
    let report = &outcome.report;
    let audit_text = coordinator.store.audit_text().unwrap();
    fedmark_core::audit::verify(&audit_text, Some(&coordinator.store.audit_head())).unwrap();
    let coordinator_audit: Vec<Value> = audit_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        report.partners_accepted,
        vec!["bank".to_string(), "retailer".to_string()]
    );
    assert!(report.rounds.iter().all(|r| r.participants == 2));
    for c in clients {
        c.await.unwrap().unwrap();
    }
    for (id, _, reason) in &policies {
        let records = audit_records(&dir.path().join(format!("{id}.audit.jsonl")));
        assert_eq!(records[0].kind, "offer_received");
        assert_eq!(records[0].data["purpose"], Value::from("campaign_response"));
        if reason.is_empty() {
            assert_eq!(records[1].kind, "offer_accepted");
            assert!(records.iter().any(|r| r.kind == "input_sent"));
            assert_eq!(records.last().unwrap().kind, "job_finished");
            continue;
        }
        assert_eq!(records[1].kind, "offer_refused", "{id}");
        assert_eq!(records[1].data["reason"], Value::from(*reason), "{id}");
        assert_eq!(&report.partners_refused[*id], reason, "{id}");
        let on_coordinator = coordinator_audit.iter().any(|r| {
            r["kind"] == "offer_refused"
                && r["data"]["partner"] == *id
                && r["data"]["reason"] == *reason
        });
        assert!(
            on_coordinator,
            "{id}: the coordinator's audit chain records the refusal"
        );
        assert!(
            !records
                .iter()
                .any(|r| r.kind == "consent_snapshot" || r.kind == "input_sent"),
            "{id} refused and used nothing"
        );
    }
}

#[test]
fn no_user_id_or_raw_value_reaches_logs_audit_files_or_the_report() {
    const PLANTED_USER: &str = "PLANTED-USER-c0ffee";
    const PLANTED_VALUE: &str = "918273645";
    let dir = tempfile::tempdir().unwrap();
    // 3000 rows of the bank data with a user-id column; row 10 is the planted customer, with
    // a balance no other row has.
    let source =
        std::fs::read_to_string(sim::workspace_root().join("data/bank_marketing.csv")).unwrap();
    let mut lines = source.lines();
    let header = lines.next().unwrap();
    let balance = header.split(',').position(|h| h == "balance").unwrap();
    let mut planted = format!("user_id,{header}\n");
    for (r, line) in lines.take(3000).enumerate() {
        let (user, line) = if r == 10 {
            let mut fields: Vec<&str> = line.split(',').collect();
            fields[balance] = PLANTED_VALUE;
            (PLANTED_USER.to_owned(), fields.join(","))
        } else {
            (format!("cust-{r:05}"), line.to_owned())
        };
        planted.push_str(&format!("{user},{line}\n"));
    }
    assert!(!source.contains(PLANTED_VALUE));
    let data = dir.path().join("planted.csv");
    std::fs::write(&data, planted).unwrap();
    let audit_dir = dir.path().join("audit");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedmark-sim"))
        .arg("--data")
        .arg(&data)
        .args([
            "--partners",
            "3",
            "--split",
            "iid",
            "--rounds",
            "3",
            "--consent-rate",
            "1.0",
            "--withdraw",
            "2:0.5",
            "--phase-timeout",
            "60",
        ])
        .arg("--report")
        .arg(dir.path().join("report.json"))
        .arg("--audit-dir")
        .arg(&audit_dir)
        .env(
            "RUST_LOG",
            "debug,fedmark_client=trace,fedmark_coordinator=trace,fedmark_tests=trace,fedmark_core=trace",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The tracing output is really captured (the clients log their snapshots' counts).
    assert!(stderr.contains("consent snapshot taken"), "{stderr}");
    let mut texts = vec![
        ("stdout".to_owned(), stdout.into_owned()),
        ("stderr".to_owned(), stderr.into_owned()),
        (
            "report".to_owned(),
            std::fs::read_to_string(dir.path().join("report.json")).unwrap(),
        ),
    ];
    let mut audit_files = 0;
    for entry in std::fs::read_dir(&audit_dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        verify(&text, None).unwrap();
        if path.ends_with("coordinator.audit.jsonl") {
            // The coordinator's chain holds the consent-snapshot hashes the partners reported.
            assert!(text.contains("consent_snapshots") && text.contains("round_committed"));
        } else {
            assert!(text.contains("consent_snapshot") && text.contains("input_sent"));
            audit_files += 1;
        }
        texts.push((path.display().to_string(), text));
    }
    assert_eq!(audit_files, 3);
    assert_eq!(
        texts.len(),
        3 + 4,
        "three partners' audit files and the coordinator's"
    );
    for (name, text) in &texts {
        for needle in [PLANTED_USER, PLANTED_VALUE, "cust-0"] {
            assert!(!text.contains(needle), "`{needle}` appears in {name}");
        }
    }
}
