//! The coordinator's round driver (`fedmark_coordinator::round::run_round`, with its hub and
//! sessions) and several partners' round participants (`fedmark_client::participant`) in one
//! process, with every message passed through in-memory channels — no sockets, no TLS, no
//! files — like quinn-proto's `Pair::drive`. A partner leaves at every phase of a secure
//! round in turn; the round either produces exactly the sum of the inputs it holds or fails,
//! and never unmasks anything else.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmark_client::identity::Identity;
use fedmark_client::participant::{AcceptedJob, Action, Decision, Participant, RoundConsent};
use fedmark_client::rounds::RoundRecords;
use fedmark_coordinator::hub::Hub;
use fedmark_coordinator::round::{RoundError, RoundOutput, RoundPlan, SecureSetup, run_round};
use fedmark_coordinator::service::{Event, Sessions};
use fedmark_core::aggregate::RoundKind;
use fedmark_core::features::Standardizer;
use fedmark_core::secagg::{Roster, generate_identity};
use fedmark_core::shape::RoundShape;
use fedmark_core::spec::JobSpec;
use fedmark_proto::{InputChunk, RoundRef, server_message};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

const JOB: &str = "job-0123456789ab";

/// Where a partner stops answering: it closes its session when the message of that phase
/// arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    AtStart,
    AtKeys,
    AtShares,
    AtSurvivorCheck,
    AtUnmask,
    Never,
}

fn spec() -> JobSpec {
    JobSpec::from_toml(
        "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 3\n\
         [label]\ncolumn = \"y\"\npositive = \"yes\"\n\
         [features]\nnumeric = [\"age\"]\n[model]\nkind = \"logistic\"\n\
         [aggregation]\nsecure = true\nmin_participants = 3\n",
    )
    .unwrap()
}

/// One partner: its participant driven by the coordinator's messages, until the round ends
/// or it leaves at `stop`. Records the vector it computed in `inputs`.
#[allow(clippy::too_many_arguments)]
async fn partner(
    id: String,
    session: u64,
    mut inbox: mpsc::Receiver<Result<fedmark_proto::ServerMessage, tonic::Status>>,
    events: mpsc::Sender<Event>,
    mut participant: Participant,
    mut guards: RoundRecords,
    model: Vec<f64>,
    stop: Stop,
    inputs: Arc<Mutex<BTreeMap<String, Vec<u32>>>>,
    seed: u64,
) -> (Participant, RoundRecords) {
    use server_message::Body;
    let mut rng = StdRng::seed_from_u64(seed);
    let leave = |events: mpsc::Sender<Event>, id: String| async move {
        let _ = events
            .send(Event::Closed {
                partner: id,
                session,
            })
            .await;
    };
    while let Some(Ok(msg)) = inbox.recv().await {
        let Some(body) = msg.body else { continue };
        let step = match body {
            Body::RoundStart(_) if stop == Stop::AtStart => break,
            Body::Keys(_) if stop == Stop::AtKeys => break,
            Body::Shares(_) if stop == Stop::AtShares => break,
            Body::SurvivorCheck(_) if stop == Stop::AtSurvivorCheck => break,
            Body::Unmask(_) if stop == Stop::AtUnmask => break,
            Body::RoundStart(s) => participant.on_round_start(s, &mut guards),
            Body::Keys(k) => participant.on_keys(k),
            Body::Shares(d) => participant.on_shares(d),
            Body::SurvivorCheck(c) => participant.on_survivor_check(c),
            Body::Unmask(u) => participant.on_unmask(u, &mut guards),
            Body::RoundResult(_) | Body::RoundAbort(_) => return (participant, guards),
            Body::Welcome(_) | Body::Offer(_) | Body::Finished(_) => Ok(()),
        };
        step.unwrap();
        while let Some(action) = participant.poll() {
            match action {
                Action::Send(body) => {
                    let message = Event::Message {
                        partner: id.clone(),
                        session,
                        body,
                    };
                    if events.send(message).await.is_err() {
                        return (participant, guards);
                    }
                }
                Action::Audit(_) => {}
                Action::TakeConsent(r) => {
                    participant.consent_taken(&r, RoundConsent::Committed(String::new()));
                }
                Action::Download { round, .. } => {
                    participant.model_received(&round, model.clone(), &guards);
                }
                Action::Compute(c) => {
                    let words: Vec<u32> = (0..c.layout.len()).map(|_| rng.random()).collect();
                    inputs.lock().unwrap().insert(id.clone(), words.clone());
                    participant.computed(&c.round, words);
                }
                Action::ExpandMask { round, plan } => {
                    participant.mask_expanded(&round, plan.expand());
                }
                Action::Contribute { round, words, .. } => {
                    participant.contribution(&round, Decision::Send(words));
                }
                Action::Upload {
                    round,
                    words,
                    consent_commitment,
                } => {
                    let chunk = InputChunk {
                        round: Some(round),
                        offset: 0,
                        values: words,
                        last: true,
                        consent_snapshot: consent_commitment,
                    };
                    let input = Event::Input {
                        partner: id.clone(),
                        session,
                        chunk,
                    };
                    let ended = Event::UploadEnded {
                        partner: id.clone(),
                        session,
                    };
                    if events.send(input).await.is_err() || events.send(ended).await.is_err() {
                        return (participant, guards);
                    }
                }
            }
        }
    }
    leave(events, id).await;
    (participant, guards)
}

/// A partner's state that outlives one round: its participant and its round records.
struct Party {
    id: String,
    participant: Participant,
    guards: RoundRecords,
}

/// `n` partners that accepted the job, with their roster.
fn parties(n: usize, seed: u64) -> (Vec<Party>, Arc<Roster>) {
    let spec = spec();
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let keys: Vec<_> = (0..n).map(|_| generate_identity(&mut rng)).collect();
    let mut roster = Roster::new();
    for (id, k) in ids.iter().zip(&keys) {
        roster.insert(id.clone(), k.verifying_key()).unwrap();
    }
    let roster = Arc::new(roster);
    let num_params = usize::try_from(spec.model_params()).unwrap();
    let parties = ids
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
                cohort_floor: 1,
                threshold_floor: None,
            });
            let mut guards = RoundRecords::default();
            guards.accept(JOB, &spec).unwrap();
            Party {
                id,
                participant,
                guards,
            }
        })
        .collect();
    (parties, roster)
}

/// What one round through the coordinator's driver gave.
struct Ran {
    result: Result<RoundOutput, RoundError>,
    /// Each member's computed vector.
    inputs: BTreeMap<String, Vec<u32>>,
    /// The members, for the next round.
    parties: Vec<Party>,
}

/// Runs secure training round `round` from `model` over `parties` (member `i` leaves at
/// `stops[i]`) through the coordinator's round driver, as the job task would start it.
async fn run(
    parties: Vec<Party>,
    roster: &Arc<Roster>,
    round: u64,
    model: &[f64],
    stops: &[Stop],
    phase_timeout: Duration,
) -> Ran {
    let spec = spec();
    let num_params = model.len();
    let sessions = Sessions::with_transfers(4, Duration::from_secs(5));
    let (events_tx, events_rx) = mpsc::channel(256);
    let inputs = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    let ids: Vec<String> = parties.iter().map(|p| p.id.clone()).collect();
    for (i, party) in parties.into_iter().enumerate() {
        let (out_tx, out_rx) = mpsc::channel(64);
        let (session, _token) = sessions.register(&party.id, out_tx);
        events_tx
            .send(Event::Connected {
                partner: party.id.clone(),
                session,
            })
            .await
            .unwrap();
        tasks.push(tokio::spawn(partner(
            party.id,
            session,
            out_rx,
            events_tx.clone(),
            party.participant,
            party.guards,
            model.to_vec(),
            stops[i],
            Arc::clone(&inputs),
            round * 100 + i as u64,
        )));
    }
    drop(events_tx);
    let shared = Arc::new(tokio::sync::Mutex::new(events_rx));
    let mut hub = Hub::new(sessions, shared, JOB.into(), spec.to_toml().unwrap()).await;
    // Every session is offered the job (the partners ignore offers here: the participant's
    // job is accepted above), as the job task does before its first round.
    hub.offer_connected().await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    while hub.next(deadline).await.is_some() {}

    // The plan the coordinator's cohort draw builds, from the shape both sides derive.
    let shape = RoundShape::derive(&spec, RoundKind::Training, ids.clone(), num_params).unwrap();
    let secure = shape.secure.unwrap();
    let plan = RoundPlan {
        rref: RoundRef {
            job_id: JOB.into(),
            round,
            attempt: 0,
        },
        kind: RoundKind::Training,
        cohort: shape.cohort.clone(),
        threshold: shape.min_survivors,
        layout: shape.layout,
        model: Some(Arc::new(model.to_vec())),
        standardizer: Some(Standardizer {
            mean: vec![0.0],
            std: vec![1.0],
        }),
        phase_timeout,
        secure: Some(SecureSetup {
            roster: Arc::clone(roster),
            degree: secure.degree,
            threshold: secure.threshold,
        }),
        pause_at: None,
        clip: None,
    };
    let mut missed = BTreeSet::new();
    let result = run_round(&mut hub, &plan, &mut missed).await;
    drop(hub);
    let mut parties = Vec::new();
    for (t, id) in tasks.into_iter().zip(ids) {
        let (participant, guards) = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap();
        parties.push(Party {
            id,
            participant,
            guards,
        });
    }
    let inputs = inputs.lock().unwrap().clone();
    Ran {
        result,
        inputs,
        parties,
    }
}

/// Runs one round of `stops.len()` fresh partners.
async fn round(
    stops: &[Stop],
    seed: u64,
) -> (Result<RoundOutput, RoundError>, BTreeMap<String, Vec<u32>>) {
    let (parties, roster) = parties(stops.len(), seed);
    let num_params = usize::try_from(spec().model_params()).unwrap();
    let model: Vec<f64> = (0..num_params).map(|i| 0.1 * i as f64).collect();
    let ran = run(parties, &roster, 1, &model, stops, Duration::from_secs(10)).await;
    (ran.result, ran.inputs)
}

fn wrapping_sum<'a>(vectors: impl Iterator<Item = &'a Vec<u32>>) -> Vec<u32> {
    let mut sum: Vec<u32> = Vec::new();
    for v in vectors {
        if sum.is_empty() {
            sum = vec![0; v.len()];
        }
        for (s, x) in sum.iter_mut().zip(v) {
            *s = s.wrapping_add(*x);
        }
    }
    sum
}

#[tokio::test]
async fn the_round_driver_sums_exactly_the_inputs_it_holds_with_a_partner_leaving_at_each_phase() {
    let stops = [
        Stop::Never,
        Stop::AtStart,
        Stop::AtKeys,
        Stop::AtShares,
        Stop::AtSurvivorCheck,
        Stop::AtUnmask,
    ];
    for (case, stop) in stops.into_iter().enumerate() {
        let mut plan = vec![Stop::Never; 6];
        plan[2] = stop;
        let (result, inputs) = round(&plan, case as u64 + 1).await;
        let output = result.unwrap_or_else(|e| panic!("partner p2 leaving {stop:?}: {e}"));
        // Whose input is in the sum: everyone who sent it (left at the survivor check or
        // later, or never).
        let summed: BTreeSet<String> = match stop {
            Stop::AtStart | Stop::AtKeys | Stop::AtShares => (0..6)
                .filter(|&i| i != 2)
                .map(|i| format!("p{i}"))
                .collect(),
            _ => (0..6).map(|i| format!("p{i}")).collect(),
        };
        let survivors: BTreeSet<String> = output.survivors.iter().cloned().collect();
        assert_eq!(survivors, summed, "{stop:?}");
        let expected = wrapping_sum(
            inputs
                .iter()
                .filter(|(p, _)| summed.contains(*p))
                .map(|(_, v)| v),
        );
        assert_eq!(
            output.sum, expected,
            "{stop:?}: the unmasked sum is the plain sum"
        );
    }
}

#[tokio::test]
async fn a_round_that_loses_too_many_partners_fails_and_unmasks_nothing() {
    let plan = [
        Stop::Never,
        Stop::AtShares,
        Stop::AtShares,
        Stop::AtKeys,
        Stop::AtStart,
    ];
    let (result, _) = round(&plan, 99).await;
    assert!(
        matches!(
            result,
            Err(RoundError::BelowThreshold { .. }) | Err(RoundError::SecAgg(_))
        ),
        "{result:?}"
    );
}

/// The differencing attack of the privacy issue, by a coordinator that drives honest
/// participants: it sums cohort S from model M, then asks S∖{C} for a round from the same
/// model, hoping to subtract the sums and isolate C's input. Every member of S∖{C} refuses to
/// help unmask a second round from M (the round is sat out as soon as M arrives), so no
/// second sum exists. The same members take a round from a new model.
#[tokio::test]
async fn a_coordinator_that_repeats_a_round_without_one_partner_gets_no_second_sum() {
    let (parties, roster) = parties(5, 7);
    let num_params = usize::try_from(spec().model_params()).unwrap();
    let model: Vec<f64> = (0..num_params).map(|i| 0.2 * i as f64).collect();
    let everyone = [Stop::Never; 5];
    let first = run(
        parties,
        &roster,
        1,
        &model,
        &everyone,
        Duration::from_secs(10),
    )
    .await;
    let sum = first.result.unwrap().sum;
    assert_eq!(sum, wrapping_sum(first.inputs.values()));

    // S∖{p4}, same model: a short phase deadline, since the members fall silent.
    let mut parties = first.parties;
    let target = parties.pop().unwrap();
    assert_eq!(target.id, "p4");
    let second = run(
        parties,
        &roster,
        2,
        &model,
        &[Stop::Never; 4],
        Duration::from_secs(1),
    )
    .await;
    assert!(second.result.is_err(), "a second sum from the same model");

    // From a new model the same members take part again.
    let new_model: Vec<f64> = model.iter().map(|w| w + 1.0).collect();
    let third = run(
        second.parties,
        &roster,
        3,
        &new_model,
        &[Stop::Never; 4],
        Duration::from_secs(10),
    )
    .await;
    let output = third.result.unwrap();
    assert_eq!(output.sum, wrapping_sum(third.inputs.values()));
}
