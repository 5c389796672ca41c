//! `fedmark-client audit verify`: passes on an untouched log and, for each kind of tampering,
//! fails naming the line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::path::Path;
use std::process::Command;

use fedmark_client::audit::AuditLog;
use serde_json::json;

fn verify(path: &Path, head: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fedmark-client"));
    cmd.args(["audit", "verify"]).arg(path);
    if let Some(h) = head {
        cmd.args(["--head", h]);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => (true, text),
        Some(1) => (false, text),
        other => panic!("unexpected exit {other:?}: {text}"),
    }
}

#[test]
fn verify_passes_untouched_logs_and_names_the_line_of_each_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, "bank").unwrap();
    for (kind, data) in [
        ("offer_received", json!({"job_id": "j", "purpose": "ads"})),
        ("offer_accepted", json!({"job_id": "j", "train_rows": 10})),
        ("round_started", json!({"job_id": "j", "round": 1})),
        (
            "consent_snapshot",
            json!({"job_id": "j", "round": 1, "usable_records": 9}),
        ),
        (
            "input_sent",
            json!({"job_id": "j", "round": 1, "words": 12}),
        ),
        ("job_finished", json!({"job_id": "j", "reason": "done"})),
    ] {
        log.append(kind, data).unwrap();
    }
    let head = log.head().to_owned();
    drop(log);
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();

    let (ok, out) = verify(&path, Some(&head));
    assert!(ok, "{out}");
    assert!(out.contains("6 records") && out.contains(&head), "{out}");

    let tampered = dir.path().join("tampered.jsonl");
    let check = |text: String, needle: &str| {
        std::fs::write(&tampered, text).unwrap();
        let (ok, out) = verify(&tampered, None);
        assert!(!ok, "tampering not detected ({needle})");
        assert!(out.contains(needle), "want `{needle}` in: {out}");
    };

    // One byte changed: `9` usable records becomes `8` on line 4.
    check(
        original.replacen("\"usable_records\":9", "\"usable_records\":8", 1),
        "line 4: the record was edited",
    );
    // A record removed: line 3 goes; the old line 4 is now line 3 and out of sequence.
    let mut removed = lines.clone();
    removed.remove(2);
    check(
        removed.join("\n") + "\n",
        "line 3: sequence number 3 where 2",
    );
    // Two records swapped.
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    check(
        swapped.join("\n") + "\n",
        "line 2: sequence number 2 where 1",
    );
    // A record appended without the chain: a well-formed record that does not name the
    // previous record's hash (here, a copy of the first record with the next seq number).
    let mut forged_chain = fedmark_core::audit::AuditChain::new("bank");
    for _ in 0..6 {
        forged_chain.append(0, "filler", json!({})).unwrap();
    }
    let forged = forged_chain
        .append(1, "input_sent", json!({"job_id": "j", "round": 2}))
        .unwrap()
        .to_line();
    check(
        format!("{original}{forged}\n"),
        "line 7: the chain is broken",
    );
    // Records removed from the end show only against a head kept elsewhere.
    std::fs::write(&tampered, lines[..5].join("\n") + "\n").unwrap();
    let (ok, out) = verify(&tampered, None);
    assert!(ok, "{out}");
    let (ok, out) = verify(&tampered, Some(&head));
    assert!(
        !ok && out.contains("records were removed from its end"),
        "{out}"
    );
}
