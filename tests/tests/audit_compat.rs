//! Audit files written before the audit records were typed still verify, and every partner
//! record parses into today's `PartnerEvent` and serialises back to exactly its `kind` and
//! `data`: the types describe the records partners have on disk, not a new format.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use fedmark_client::audit::{PartnerEvent, verify_file};
use fedmark_tests::sim::workspace_root;
use serde_json::Value;

fn fixture(name: &str) -> std::path::PathBuf {
    workspace_root().join("tests/fixtures/audit-v0").join(name)
}

#[test]
fn audit_files_of_the_previous_version_still_verify() {
    for name in [
        "partner-0.audit.jsonl",
        "partner-1.audit.jsonl",
        "partner-2.audit.jsonl",
    ] {
        let lines = std::fs::read_to_string(fixture(name))
            .unwrap()
            .lines()
            .count();
        let verified = verify_file(&fixture(name), None).unwrap();
        assert_eq!(verified.records as usize, lines, "{name}");
    }
    let text = std::fs::read_to_string(fixture("coordinator.audit.jsonl")).unwrap();
    let verified = fedmark_core::audit::verify(&text, None).unwrap();
    assert_eq!(verified.records as usize, text.lines().count());
}

#[test]
fn every_old_partner_record_is_a_typed_event_that_writes_it_back_unchanged() {
    let mut kinds = std::collections::BTreeSet::new();
    for name in [
        "partner-0.audit.jsonl",
        "partner-1.audit.jsonl",
        "partner-2.audit.jsonl",
    ] {
        let text = std::fs::read_to_string(fixture(name)).unwrap();
        for line in text.lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            let kind = record["kind"].as_str().unwrap();
            let typed = serde_json::json!({"kind": kind, "data": record["data"]});
            let event: PartnerEvent = serde_json::from_value(typed)
                .unwrap_or_else(|e| panic!("{name}: a `{kind}` record is no PartnerEvent: {e}"));
            assert_eq!(event.kind(), kind);
            assert_eq!(event.data(), record["data"], "{name}: {kind}");
            kinds.insert(kind.to_owned());
        }
    }
    for kind in [
        "offer_received",
        "offer_accepted",
        "round_started",
        "consent_snapshot",
        "model_received",
        "privacy_charged",
        "input_sent",
        "job_finished",
    ] {
        assert!(kinds.contains(kind), "the fixture holds no `{kind}` record");
    }
}
