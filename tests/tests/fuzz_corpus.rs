//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`: the seed corpus and any
//! crash reproducer kept as a regression input) through the matching
//! `fedmark_tests::fuzzing` function, so stable CI checks them without cargo-fuzz.

use std::path::PathBuf;

use fedmark_tests::fuzzing::TARGETS;

/// Inputs larger than this are refused: the corpus is meant to stay small.
const MAX_INPUT: u64 = 256 * 1024;

#[test]
fn every_corpus_file_replays_without_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    for d in &dirs {
        assert!(
            names.contains(&d.as_str()),
            "corpus folder {d} has no target"
        );
    }
    for (name, run) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("target {name} has no corpus folder {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "target {name} has an empty seed corpus");
        for file in files {
            let len = file.metadata().unwrap().len();
            assert!(len <= MAX_INPUT, "{} is {len} bytes", file.display());
            let data = std::fs::read(&file).unwrap();
            eprintln!("{name}: {}", file.display());
            run(&data);
        }
    }
}

/// The protocol seeds reach the deep paths: the fixture round's own messages from `p0` are
/// accepted by the server state they are fed to (a seed that bounced at the first check would
/// give the fuzzer nothing worth mutating).
#[test]
fn client_message_seeds_are_accepted_by_the_fixture_round() {
    use fedmark_core::secagg::{Envelope, RevealedShare, SignedKeys};
    use fedmark_proto::client_message::Body;
    use fedmark_proto::convert;
    use prost::Message;
    let fx = fedmark_tests::fuzzing::Fixture::get();
    let mut accepted = 0;
    for (name, bytes) in fedmark_tests::fuzzing::client_message_seeds() {
        let msg = fedmark_proto::ClientMessage::decode(bytes.as_slice()).unwrap();
        match msg.body.unwrap() {
            Body::Keys(k) => {
                let keys = k.keys().unwrap();
                let signed = SignedKeys {
                    partner_id: "p0".into(),
                    keys,
                };
                fx.server_keys.clone().on_keys(signed, &fx.roster).unwrap();
                accepted += 1;
            }
            Body::Shares(sh) => {
                let envelopes: Vec<Envelope> = convert::all(sh.envelopes).unwrap();
                fx.server_shares.clone().on_shares("p0", envelopes).unwrap();
                accepted += 1;
            }
            Body::Unmask(u) => {
                let shares: Vec<RevealedShare> = convert::all(u.shares).unwrap();
                let mut server = fx.server_reveals.clone();
                server.on_revealed("p0", shares).unwrap();
                let mut words = fx.masked_sum.clone();
                server.unmask(&mut words).unwrap();
                accepted += 1;
            }
            other => eprintln!("{name}: {other:?} not checked here"),
        }
    }
    assert_eq!(accepted, 3, "keys, shares and unmask seeds");
}

/// The operators' seeds reach the handlers, not only the decoders: the admin seeds submit and
/// list a job (and look up exports and cancels of an unknown one), and the HTTP seeds get the
/// answers the listener gives each caller.
#[test]
fn admin_and_http_seeds_reach_their_handlers() {
    use fedmark_tests::fuzzing::{
        admin_outcome, admin_request_seeds, http_answer, http_request_seeds,
    };
    use tonic::Code;
    let admin: std::collections::BTreeMap<_, _> = admin_request_seeds()
        .into_iter()
        .map(|(name, bytes)| (name, admin_outcome(&bytes)))
        .collect();
    assert_eq!(admin["submit"], Some(Code::Ok));
    assert_eq!(admin["list"], Some(Code::Ok));
    assert_eq!(admin["cancel"], Some(Code::NotFound));
    assert_eq!(admin["export_model"], Some(Code::NotFound));
    assert_eq!(admin["export_audit"], Some(Code::NotFound));
    for (name, bytes) in http_request_seeds() {
        let (_, answer) = http_answer(&bytes).unwrap();
        let status = String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let expected = match name {
            "healthz" | "metrics_tls" | "api_plain" | "api_admin" | "page_admin" => "200",
            "api_partner" => "403",
            "post" => "405",
            other => panic!("unknown seed {other}"),
        };
        assert!(
            status.starts_with(&format!("HTTP/1.1 {expected}")),
            "{name}: {status}"
        );
        if name.starts_with("api_") && expected == "200" {
            assert!(String::from_utf8_lossy(&answer).contains("\"audit_head\""));
        }
    }
}

/// The round-state seeds are states a partner accepts (so the fuzzer starts from the deep
/// paths: trees, partial trees and nodes asked for), and their byte encoding keeps the words.
#[test]
fn round_state_seeds_read_back() {
    use fedmark_core::gbdt::RoundState;
    use fedmark_tests::fuzzing::{round_state_bytes, round_state_seeds, round_state_words};
    let seeds = round_state_seeds();
    assert_eq!(seeds.len(), 2);
    let schema = fedmark_core::features::FeatureSchema {
        numeric: vec!["a".into()],
        categorical: vec![(
            "c".into(),
            fedmark_core::features::Categorical::Vocabulary(vec![
                "u".into(),
                "v".into(),
                "w".into(),
            ]),
        )],
        ranges: vec![Some([0.0, 1.0])],
    };
    for (name, bytes) in seeds {
        let words = round_state_words(&bytes);
        assert_eq!(round_state_bytes(&words), bytes, "{name}");
        let state = RoundState::from_words(&words, &schema);
        assert!(state.is_ok(), "{name}: {state:?}");
    }
}
