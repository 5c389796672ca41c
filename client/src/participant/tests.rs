//! The participant on its own, and whole rounds in memory: several participants and a
//! coordinator made of core's [`ServerRound`] and the round shape both sides derive, with
//! every message passed by hand — no sockets, no files, no threads — and dropouts at every
//! phase.

// Parallel per-partner arrays read clearest with an index.
#![allow(clippy::needless_range_loop)]

use super::*;
use fedmark_core::aggregate::RunningSum;
use fedmark_core::secagg::{GraphSpec, Roster, ServerRound, generate_identity};
use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::Arc;

const JOB: &str = "job-0123456789ab";

fn spec(extra: &str) -> JobSpec {
    JobSpec::from_toml(&format!(
        "[job]\nname = \"t\"\npurpose = \"campaign_response\"\nrounds = 3\n\
         [label]\ncolumn = \"y\"\npositive = \"yes\"\n\
         [features]\nnumeric = [\"age\"]\ncategorical = [\"job\"]\n\
         vocabulary = {{ job = [\"a\", \"b\"] }}\n[model]\nkind = \"logistic\"\n\
         [aggregation]\nsecure = true\nmin_participants = 2\n{extra}"
    ))
    .unwrap()
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("p{i}")).collect()
}

struct Party {
    id: String,
    participant: Participant,
    guards: RoundRecords,
    audit: Vec<(&'static str, serde_json::Value)>,
    /// The plain vector this partner computed in the current round.
    input: Vec<u32>,
    /// Its masked upload.
    upload: Option<Vec<u32>>,
}

fn parties(n: usize, spec: &JobSpec, rng: &mut StdRng) -> (Vec<Party>, Arc<Roster>) {
    let keys: Vec<_> = (0..n).map(|_| generate_identity(rng)).collect();
    let mut roster = Roster::new();
    for (id, k) in ids(n).iter().zip(&keys) {
        roster.insert(id.clone(), k.verifying_key()).unwrap();
    }
    let roster = Arc::new(roster);
    let num_params = spec_params(spec);
    let parties = ids(n)
        .into_iter()
        .zip(keys)
        .map(|(id, key)| {
            let identity = Identity {
                key,
                roster: Arc::clone(&roster),
            };
            let mut participant = Participant::new(id.clone(), Some(identity));
            participant.job_accepted(AcceptedJob {
                job_id: JOB.into(),
                spec: spec.clone(),
                num_params,
                cohort_floor: 2,
                threshold_floor: None,
            });
            let mut guards = RoundRecords::default();
            guards.accept(JOB, spec).unwrap();
            Party {
                id,
                participant,
                guards,
                audit: Vec::new(),
                input: Vec::new(),
                upload: None,
            }
        })
        .collect();
    (parties, roster)
}

fn spec_params(spec: &JobSpec) -> usize {
    usize::try_from(spec.model_params()).unwrap()
}

/// The round start the coordinator sends: built from the shape both sides derive.
fn round_start(spec: &JobSpec, round: u64, cohort: &[String]) -> (RoundStart, RoundShape) {
    let shape = RoundShape::derive(
        spec,
        RoundKind::Training,
        cohort.to_vec(),
        spec_params(spec),
    )
    .unwrap();
    let seed = shape.graph_seed(JOB, round, 0);
    let a = shape.announce(&seed);
    let mut start = RoundStart {
        round: Some(RoundRef {
            job_id: JOB.into(),
            round,
            attempt: 0,
        }),
        cohort: shape.cohort.clone(),
        threshold: a.threshold as u32,
        secure: a.secure,
        vector_len: a.vector_len,
        model_len: a.model_len,
        feature_mean: vec![0.0],
        feature_std: vec![1.0],
        graph_seed: a.graph_seed.to_vec(),
        graph_degree: a.graph_degree as u32,
        ..RoundStart::default()
    };
    start.set_kind(RoundKind::Training.into());
    (start, shape)
}

/// Performs a party's actions as its node would, with `model` as the round's download;
/// returns the messages it sent.
fn drive(p: &mut Party, model: &[f64], rng: &mut StdRng) -> Vec<client_message::Body> {
    let mut sent = Vec::new();
    while let Some(action) = p.participant.poll() {
        match action {
            Action::Send(body) => sent.push(body),
            Action::Audit(event) => p.audit.push((event.kind(), event.data())),
            Action::TakeConsent(r) => p
                .participant
                .consent_taken(&r, RoundConsent::Committed("commitment".into())),
            Action::Download { round, model_len } => {
                assert_eq!(model_len, model.len());
                p.participant
                    .model_received(&round, model.to_vec(), &p.guards);
            }
            Action::Compute(c) => {
                assert_eq!(c.model, model, "the computation gets the downloaded model");
                p.input = (0..c.layout.len()).map(|_| rng.random()).collect();
                p.participant.computed(&c.round, p.input.clone());
            }
            Action::ExpandMask { round, plan } => {
                p.participant.mask_expanded(&round, plan.expand());
            }
            Action::Contribute { round, words, .. } => {
                assert_eq!(words, p.input, "the ledger sees the plain vector");
                p.participant.contribution(&round, Decision::Send(words));
            }
            Action::Upload {
                words,
                consent_commitment,
                ..
            } => {
                assert_eq!(consent_commitment, "commitment");
                p.upload = Some(words);
            }
        }
    }
    sent
}

fn kinds(p: &Party) -> Vec<&'static str> {
    p.audit.iter().map(|(k, _)| *k).collect()
}

/// Where a party stops answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    AtStart,
    AfterKeys,
    AfterShares,
    AfterInput,
    AfterSignature,
    Never,
}

/// The unmasked sum of one secure training round, or `None` if it could not be unmasked;
/// and the plain sum of the inputs in it.
fn secure_round(
    parties: &mut [Party],
    roster: &Roster,
    spec: &JobSpec,
    round: u64,
    model: &[f64],
    stops: &[Stop],
    rng: &mut StdRng,
) -> (Option<Vec<u32>>, Vec<u32>) {
    let cohort: Vec<String> = parties.iter().map(|p| p.id.clone()).collect();
    let (start, shape) = round_start(spec, round, &cohort);
    let secure = shape.secure.unwrap();
    let rid = RoundId::new(JOB, round, 0);
    let params = RoundParams::new(
        rid,
        shape.cohort.clone(),
        secure.threshold,
        secure.degree,
        shape.layout.len(),
    )
    .unwrap();
    assert_eq!(
        *params.graph_spec(),
        GraphSpec::for_cohort(&rid, &cohort, secure.degree)
    );
    let mut server = ServerRound::new(params);
    let live = |i: usize, after: Stop| stops[i] > after;
    let rref = start.round.clone().unwrap();

    // Start and keys.
    for i in 0..parties.len() {
        let p = &mut parties[i];
        p.upload = None;
        p.participant
            .on_round_start(start.clone(), &mut p.guards)
            .unwrap();
        let sent = drive(p, model, rng);
        if !live(i, Stop::AtStart) {
            continue;
        }
        for body in sent {
            if let client_message::Body::Keys(k) = body {
                let keys = SignedKeys {
                    partner_id: p.id.clone(),
                    keys: k.keys().unwrap(),
                };
                server.on_keys(keys, roster).unwrap();
            }
        }
    }
    if let Err(e) = server.close_keys() {
        eprintln!("close_keys: {e}");
        return (None, Vec::new());
    }
    // Shares.
    for i in 0..parties.len() {
        if !live(i, Stop::AtStart) {
            continue;
        }
        let p = &mut parties[i];
        let keys = server.keys_for(&p.id).unwrap();
        let msg = KeyBroadcast {
            round: Some(rref.clone()),
            keys: keys.into_iter().map(Into::into).collect(),
        };
        p.participant.on_keys(msg).unwrap();
        for body in drive(p, model, rng) {
            if let client_message::Body::Shares(sh) = body
                && live(i, Stop::AfterKeys)
            {
                server
                    .on_shares(&p.id, convert::all(sh.envelopes).unwrap())
                    .unwrap();
            }
        }
    }
    let u2 = match server.close_shares() {
        Ok(u2) => u2,
        Err(e) => {
            eprintln!("close_shares: {e}");
            return (None, Vec::new());
        }
    };
    // Masked input.
    let mut sum = RunningSum::new(shape.layout.len());
    let mut expected = vec![0u32; shape.layout.len()];
    let mut inputs = Vec::new();
    for i in 0..parties.len() {
        let p = &mut parties[i];
        if !u2.contains(&p.id) {
            continue;
        }
        let envelopes = server.envelopes_for(&p.id).unwrap();
        let msg = SharesDelivery {
            round: Some(rref.clone()),
            envelopes: envelopes.into_iter().map(Into::into).collect(),
        };
        p.participant.on_shares(msg).unwrap();
        drive(p, model, rng);
        if !live(i, Stop::AfterShares) {
            continue;
        }
        if let Some(masked) = &p.upload {
            assert_ne!(masked, &p.input, "the upload is masked");
            sum.add_all(masked);
            for (e, v) in expected.iter_mut().zip(&p.input) {
                *e = e.wrapping_add(*v);
            }
            inputs.push(p.id.clone());
        }
    }
    let Ok(u3) = server.close_inputs(&inputs) else {
        return (None, expected);
    };
    // Consistency check.
    for i in 0..parties.len() {
        let p = &mut parties[i];
        if !u3.contains(&p.id) {
            continue;
        }
        let check = SurvivorCheck {
            round: Some(rref.clone()),
            survivors: u3.clone(),
        };
        p.participant.on_survivor_check(check).unwrap();
        for body in drive(p, model, rng) {
            if let client_message::Body::SurvivorSignature(s) = body
                && live(i, Stop::AfterInput)
            {
                let signed =
                    fedmark_core::secagg::SurvivorSignature::new(p.id.clone(), &s.signature)
                        .unwrap();
                server.on_signature(signed, roster).unwrap();
            }
        }
    }
    let Ok(u4) = server.close_consistency() else {
        return (None, expected);
    };
    // Unmask.
    for i in 0..parties.len() {
        let p = &mut parties[i];
        if !u4.contains(&p.id) {
            continue;
        }
        let signatures = server.signatures_for(&p.id).unwrap();
        let request = UnmaskRequest {
            round: Some(rref.clone()),
            survivors: u3.clone(),
            signatures: signatures.into_iter().map(Into::into).collect(),
        };
        p.participant.on_unmask(request, &mut p.guards).unwrap();
        for body in drive(p, model, rng) {
            if let client_message::Body::Unmask(u) = body
                && live(i, Stop::AfterSignature)
            {
                server
                    .on_revealed(&p.id, convert::all(u.shares).unwrap())
                    .unwrap();
            }
        }
    }
    let mut words = sum.into_inner();
    match server.unmask(&mut words) {
        Ok(()) => (Some(words), expected),
        Err(_) => (None, expected),
    }
}

#[test]
fn a_secure_round_sums_the_inputs_in_memory_with_dropouts_at_every_phase() {
    let mut rng = StdRng::seed_from_u64(7);
    let s = spec("");
    let model: Vec<f64> = (0..spec_params(&s)).map(|i| i as f64 * 0.1).collect();
    let stops = [
        Stop::AtStart,
        Stop::AfterKeys,
        Stop::AfterShares,
        Stop::AfterInput,
        Stop::AfterSignature,
    ];
    // Everyone answers; then one partner of six leaves at each phase in turn.
    let mut cases = vec![vec![Stop::Never; 6]];
    for stop in stops {
        let mut c = vec![Stop::Never; 6];
        c[2] = stop;
        cases.push(c);
    }
    for case in &cases {
        let (mut parties, roster) = parties(6, &s, &mut rng);
        let (sum, expected) = secure_round(&mut parties, &roster, &s, 1, &model, case, &mut rng);
        assert_eq!(sum, Some(expected), "stops {case:?}");
        for p in &parties {
            let k = kinds(p);
            assert!(k.starts_with(&["round_started", "model_received"]), "{k:?}");
        }
    }
}

#[test]
fn a_round_that_loses_too_many_partners_is_not_unmasked() {
    let mut rng = StdRng::seed_from_u64(8);
    let s = spec("");
    let model = vec![0.5; spec_params(&s)];
    let (mut parties, roster) = parties(4, &s, &mut rng);
    let stops = [
        Stop::Never,
        Stop::AfterShares,
        Stop::AfterShares,
        Stop::AfterKeys,
    ];
    let (sum, _) = secure_round(&mut parties, &roster, &s, 1, &model, &stops, &mut rng);
    assert_eq!(sum, None);
    // The one partner whose input arrived was never asked to sign or reveal.
    assert_eq!(
        kinds(&parties[0]),
        ["round_started", "model_received", "input_sent"]
    );
}

/// Without DP a partner helps unmask one round per start model: a second round from the
/// same model is sat out as soon as the model arrives (the coordinator would otherwise get
/// two sums whose difference isolates whoever is missing from the second).
#[test]
fn a_second_round_from_the_same_model_is_sat_out() {
    let mut rng = StdRng::seed_from_u64(9);
    let s = spec("");
    let model = vec![0.25; spec_params(&s)];
    let (mut parties, roster) = parties(3, &s, &mut rng);
    let all = [Stop::Never; 3];
    let (first, expected) = secure_round(&mut parties, &roster, &s, 1, &model, &all, &mut rng);
    assert_eq!(first, Some(expected));
    let (second, _) = secure_round(&mut parties, &roster, &s, 2, &model, &all, &mut rng);
    assert_eq!(second, None);
    for p in &parties {
        let (kind, data) = p.audit.last().unwrap();
        assert_eq!(*kind, "round_abandoned");
        assert!(data["reason"].as_str().unwrap().contains("model"), "{data}");
        assert!(p.participant.round().is_none());
    }
    // From a new model the next round goes through.
    let new_model = vec![0.75; spec_params(&s)];
    let (third, expected) = secure_round(&mut parties, &roster, &s, 3, &new_model, &all, &mut rng);
    assert_eq!(third, Some(expected));
}

fn one(spec: &JobSpec) -> Party {
    let mut rng = StdRng::seed_from_u64(1);
    parties(3, spec, &mut rng).0.remove(0)
}

#[test]
fn round_starts_the_partner_must_not_serve_are_errors_or_refusals() {
    let s = spec("");
    let cohort = ids(3);
    let (start, _) = round_start(&s, 1, &cohort);

    // Before any job: a protocol violation.
    let mut fresh = Participant::new("p0".into(), None);
    let err = fresh
        .on_round_start(start.clone(), &mut RoundRecords::default())
        .unwrap_err();
    assert!(matches!(
        err,
        ParticipantError::Protocol(ProtocolViolation::RoundBeforeJob)
    ));

    let mut p = one(&s);
    // Another job, a cohort without this partner, no reference, no kind: violations.
    let mut other = start.clone();
    other.round.as_mut().unwrap().job_id = "job-other".into();
    let mut without = start.clone();
    without.cohort = vec!["p1".into(), "p2".into()];
    let mut unreferenced = start.clone();
    unreferenced.round = None;
    let mut kindless = start.clone();
    kindless.kind = 0;
    for (bad, expected) in [
        (other, ProtocolViolation::RoundForUnknownJob),
        (without, ProtocolViolation::CohortWithoutThisPartner),
        (unreferenced, ProtocolViolation::RoundWithoutReference),
        (kindless, ProtocolViolation::UnspecifiedRoundKind),
    ] {
        match p.participant.on_round_start(bad, &mut p.guards) {
            Err(ParticipantError::Protocol(v)) => assert_eq!(v, expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
    }
    assert!(
        p.participant.poll().is_none(),
        "nothing to do after a violation"
    );

    // A shape that is not the partner's own derivation: refused and audited, nothing sent.
    let mut reshaped = start.clone();
    reshaped.vector_len += 1;
    p.participant
        .on_round_start(reshaped, &mut p.guards)
        .unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let sent = drive(&mut p, &[], &mut rng);
    assert!(sent.is_empty());
    assert_eq!(kinds(&p), ["round_refused"]);
    assert!(
        p.audit[0].1["reason"]
            .as_str()
            .unwrap()
            .contains("vector_len")
    );

    // The same round instance twice: the guard refuses the second. (The refused start above
    // used round 1 up: the guard admits an instance before the shape is checked.)
    let (start, _) = round_start(&s, 2, &cohort);
    p.participant
        .on_round_start(start.clone(), &mut p.guards)
        .unwrap();
    assert!(p.participant.round().is_some());
    p.participant.on_round_start(start, &mut p.guards).unwrap();
    assert!(p.participant.round().is_none());
    assert_eq!(p.audit.len(), 1);
    let mut rng = StdRng::seed_from_u64(3);
    drive(&mut p, &[], &mut rng);
    assert_eq!(kinds(&p).last(), Some(&"round_refused"));
}

#[test]
fn a_cohort_below_the_floor_and_a_standardisation_of_the_wrong_length_are_refused() {
    let s = spec("");
    let mut p = one(&s);
    if let Some(job) = p.participant.job.as_mut() {
        job.cohort_floor = 4;
    }
    let (start, _) = round_start(&s, 1, &ids(3));
    p.participant
        .on_round_start(start.clone(), &mut p.guards)
        .unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    assert!(drive(&mut p, &[], &mut rng).is_empty());
    assert_eq!(kinds(&p), ["round_refused"]);
    assert!(
        p.audit[0].1["reason"]
            .as_str()
            .unwrap()
            .contains("minimum of 4")
    );

    let mut q = one(&s);
    let mut wrong = start;
    wrong.feature_mean.push(1.0);
    assert!(matches!(
        q.participant.on_round_start(wrong, &mut q.guards),
        Err(ParticipantError::Protocol(
            ProtocolViolation::StandardisationMismatch
        ))
    ));
}

#[test]
fn no_consent_snapshot_means_the_round_is_sat_out_and_stale_results_are_ignored() {
    let s = spec("");
    let mut p = one(&s);
    let (start, _) = round_start(&s, 1, &ids(3));
    let rref = start.round.clone().unwrap();
    p.participant.on_round_start(start, &mut p.guards).unwrap();
    let mut took = false;
    while let Some(action) = p.participant.poll() {
        match action {
            Action::TakeConsent(r) => {
                took = true;
                p.participant
                    .consent_taken(&r, RoundConsent::Unavailable("unreadable".into()));
            }
            Action::Audit(event) => p.audit.push((event.kind(), event.data())),
            other => panic!("nothing else may happen without consent: {other:?}"),
        }
    }
    assert!(took);
    assert_eq!(kinds(&p), ["round_started", "round_abandoned"]);
    // A late result for the abandoned round changes nothing.
    p.participant.computed(&rref, vec![1, 2, 3]);
    p.participant.model_received(&rref, vec![0.0], &p.guards);
    assert!(p.participant.poll().is_none());
    // Secure-aggregation messages for a round not in progress are ignored.
    let keys = KeyBroadcast {
        round: Some(rref),
        keys: Vec::new(),
    };
    p.participant.on_keys(keys).unwrap();
    assert!(p.participant.poll().is_none());
}

#[test]
fn a_plain_round_uploads_the_computed_vector_unmasked() {
    let s = spec("");
    let mut plain = s.clone();
    plain.aggregation.secure = false;
    let mut rng = StdRng::seed_from_u64(5);
    let (mut ps, _) = parties(3, &plain, &mut rng);
    let p = &mut ps[0];
    let (start, _) = round_start(&plain, 1, &ids(3));
    p.participant.on_round_start(start, &mut p.guards).unwrap();
    let model = vec![0.0; spec_params(&plain)];
    let sent = drive(p, &model, &mut rng);
    assert!(sent.is_empty(), "no keys in a plain round");
    assert_eq!(p.upload.as_ref(), Some(&p.input));
    assert_eq!(kinds(p), ["round_started", "model_received", "input_sent"]);
}

/// A lying coordinator cannot make a partner clip at more than the spec's largest adaptive
/// clip (which the encoding and the noise are sized for), nor announce a clip in a job whose
/// clip is fixed: the start is refused and audited, and nothing is computed or sent.
#[test]
fn an_adaptive_clip_outside_the_spec_is_refused() {
    let s = spec(
        "[privacy]\nmode = \"partner-central\"\nepsilon = 8.0\nclip = \"adaptive\"\n\
         [privacy.adaptive_clip]\nmax = 2.0\n[features.range]\nage = [18, 90]\n",
    );
    for (seed, bad) in [
        (1, 2.5),
        (2, f64::NAN),
        (3, f64::INFINITY),
        (4, 0.0),
        (5, -1.0),
    ] {
        let mut p = one(&s);
        let (mut start, _) = round_start(&s, 1, &ids(3));
        start.clip = bad;
        p.participant.on_round_start(start, &mut p.guards).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        assert!(drive(&mut p, &[], &mut rng).is_empty(), "clip {bad}");
        assert_eq!(kinds(&p), ["round_refused"], "clip {bad}");
        let reason = p.audit[0].1["reason"].as_str().unwrap().to_owned();
        assert!(
            reason.contains("clip") && reason.contains("[0.000002, 2]"),
            "{reason}"
        );
    }
    // In range: the round goes ahead with that clip.
    let mut p = one(&s);
    let (mut start, _) = round_start(&s, 1, &ids(3));
    start.clip = 2.0;
    p.participant.on_round_start(start, &mut p.guards).unwrap();
    assert!(p.participant.round().is_some());
    assert_eq!(p.participant.round.as_ref().and_then(|r| r.clip), Some(2.0));

    // A fixed clip: any announced clip is refused.
    let fixed = spec("");
    let mut p = one(&fixed);
    let (mut start, _) = round_start(&fixed, 1, &ids(3));
    start.clip = 0.5;
    p.participant.on_round_start(start, &mut p.guards).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    assert!(drive(&mut p, &[], &mut rng).is_empty());
    assert_eq!(kinds(&p), ["round_refused"]);
}

/// The keys a partner advertises in an adaptive-clip round are signed for the clip it was
/// shown: a member shown another clip (or none) cannot verify them, so a coordinator cannot
/// show partners different clips and still run the round (under distributed noise each
/// partner's noise is scaled to its clip).
#[test]
fn keys_of_an_adaptive_round_hold_only_for_the_clip_shown() {
    let s = spec(
        "[privacy]\nmode = \"partner-distributed\"\nepsilon = 8.0\nclip = \"adaptive\"\n\
         [privacy.adaptive_clip]\nmax = 2.0\n[features.range]\nage = [18, 90]\n",
    );
    let mut rng = StdRng::seed_from_u64(12);
    let (mut ps, roster) = parties(3, &s, &mut rng);
    let cohort = ids(3);
    let (mut start, shape) = round_start(&s, 1, &cohort);
    start.clip = 1.5;
    let p = &mut ps[0];
    p.participant.on_round_start(start, &mut p.guards).unwrap();
    let model = vec![0.0; spec_params(&s)];
    let sent = drive(p, &model, &mut rng);
    let advert = sent
        .iter()
        .find_map(|b| match b {
            client_message::Body::Keys(k) => Some(k.keys().unwrap()),
            _ => None,
        })
        .expect("the partner advertised keys");
    let signed = fedmark_core::secagg::SignedKeys {
        partner_id: "p0".into(),
        keys: advert,
    };
    let secure = shape.secure.unwrap();
    let params = |clip: Option<f64>| {
        let plain = RoundParams::new(
            RoundId::new(JOB, 1, 0),
            cohort.clone(),
            secure.threshold,
            secure.degree,
            shape.layout.len(),
        )
        .unwrap();
        fedmark_core::shape::bind_clip(plain, clip)
    };
    let verify = |clip: Option<f64>| {
        fedmark_core::secagg::keys::verify_keys(&roster, params(clip).round(), &signed)
    };
    assert!(verify(Some(1.5)).is_ok());
    for other in [Some(1.4999), Some(2.0), None] {
        assert!(
            matches!(verify(other), Err(SecAggError::BadSignature(_))),
            "{other:?}"
        );
    }
}
