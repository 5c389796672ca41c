//! Hostile input at the coordinator: a roster partner that speaks raw gRPC and misbehaves in
//! one way per test, next to two honest partners. Each misbehaviour is refused — with a gRPC
//! status that ends the offender's session where the message is malformed, or ignored and
//! logged where it is merely stale — and changes nothing it should not: the job completes,
//! the round keeps exactly the contributions it should, and the audit chain records no
//! acceptance or refusal that did not happen.
//!
//! Strangers, a first message that is not hello, a wrong protocol version and a chunk at a
//! wrong offset after part of a vector are covered in `protocol.rs`; certificates in `tls.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::time::Duration;

use fedmark_coordinator::job::JobOutcome;
use fedmark_proto::{
    ClientMessage, InputChunk, KeyAdvertisement, OfferReply, RoundStart, UnmaskReply,
    client_message, server_message,
};
use fedmark_tests::harness::{
    HandDriven, accept, hand_driven, hand_driven_with, upload, whole_input,
};

/// What the hostile partner does in round 1.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Misbehaviour {
    /// A vector longer than the round's.
    TooLong,
    /// Its whole (valid) vector, then the same vector again.
    Duplicate,
    /// One message over the 8 MiB limit.
    Oversized,
    /// A replay of its input under another attempt's round id, then its real input.
    Replay,
    /// Key and unmask messages in a plain round (wrong phase), then its real input.
    WrongPhase,
    /// An offer reply for another job before its real one; then honest.
    WrongJob,
    /// Its acceptance, then fifty more answers to the same offer, accepting and refusing in
    /// turn (each used to be an fsynced audit record and a change of mind).
    Flood,
    /// Its acceptance, then twenty thousand stale control messages as fast as it can.
    Burst,
}

fn msg(body: client_message::Body) -> ClientMessage {
    ClientMessage { body: Some(body) }
}

/// Runs a job with two honest partners and one that misbehaves as told. Returns the outcome,
/// the status (if any) that ended the hostile session, and the coordinator's audit records.
async fn run(bad: Misbehaviour) -> (JobOutcome, Option<tonic::Status>, Vec<serde_json::Value>) {
    let HandDriven {
        dir: _dir,
        coordinator,
        honest,
        tx,
        mut inbound,
        client,
    } = hand_driven("hostile", 2, Duration::from_secs(20))
        .await
        .unwrap();
    let hostile = tokio::spawn(async move {
        let mut token = Vec::new();
        // Bounded: each wait ends within 60 s, and the job has four rounds.
        loop {
            let next = tokio::time::timeout(Duration::from_secs(60), inbound.message()).await;
            let m = match next {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) | Err(_) => return None,
                Ok(Err(status)) => return Some(status),
            };
            let send = |m| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(m).await;
                }
            };
            // The coordinator's refusal shows on the session; the upload's own status is not
            // what these tests check.
            let send_input = |chunks: Vec<InputChunk>| {
                let (client, token) = (client.clone(), token.clone());
                async move {
                    let _ = upload(&client, &token, chunks).await;
                }
            };
            match m.body {
                Some(server_message::Body::Welcome(w)) => token = w.session_token,
                Some(server_message::Body::Offer(o)) => {
                    if bad == Misbehaviour::WrongJob {
                        send(msg(client_message::Body::OfferReply(OfferReply {
                            job_id: "job-somebody-else".into(),
                            accept: false,
                            reason: "forged".into(),
                        })))
                        .await;
                    }
                    send(accept(&o.job_id)).await;
                    if bad == Misbehaviour::Burst {
                        for _ in 0..20_000 {
                            send(msg(client_message::Body::Keys(KeyAdvertisement::default())))
                                .await;
                        }
                    }
                    if bad == Misbehaviour::Flood {
                        for i in 0..50 {
                            send(msg(client_message::Body::OfferReply(OfferReply {
                                job_id: o.job_id.clone(),
                                accept: i % 2 == 1,
                                reason: "changed my mind".into(),
                            })))
                            .await;
                        }
                    }
                }
                Some(server_message::Body::RoundStart(RoundStart {
                    round: Some(rref),
                    vector_len,
                    ..
                })) => {
                    let n = vector_len as usize;
                    // Zeros are a valid encoding of "no rows": they change no sum.
                    if rref.round != 1 {
                        send_input(vec![whole_input(&rref, vec![0; n])]).await;
                        continue;
                    }
                    match bad {
                        Misbehaviour::TooLong => {
                            send_input(vec![whole_input(&rref, vec![0; n + 5])]).await
                        }
                        Misbehaviour::Duplicate => {
                            send_input(vec![whole_input(&rref, vec![0; n])]).await;
                            send_input(vec![whole_input(&rref, vec![0; n])]).await;
                        }
                        Misbehaviour::Oversized => {
                            send_input(vec![whole_input(&rref, vec![0; 3 * 1024 * 1024])]).await;
                        }
                        Misbehaviour::Replay => {
                            let mut old = rref.clone();
                            old.attempt += 5;
                            send_input(vec![whole_input(&old, vec![7; n])]).await;
                            send_input(vec![whole_input(&rref, vec![0; n])]).await;
                        }
                        Misbehaviour::WrongPhase => {
                            send(msg(client_message::Body::Keys(KeyAdvertisement {
                                round: Some(rref.clone()),
                                cipher_public: vec![1; 32],
                                mask_public: vec![2; 32],
                                signature: vec![3; 64],
                            })))
                            .await;
                            send(msg(client_message::Body::Unmask(UnmaskReply {
                                round: Some(rref.clone()),
                                shares: Vec::new(),
                            })))
                            .await;
                            send_input(vec![whole_input(&rref, vec![0; n])]).await;
                        }
                        Misbehaviour::WrongJob | Misbehaviour::Flood | Misbehaviour::Burst => {
                            send_input(vec![whole_input(&rref, vec![0; n])]).await
                        }
                    }
                }
                Some(server_message::Body::Finished(_)) => return None,
                _ => {}
            }
        }
    });
    let outcome = coordinator.job.await.unwrap().unwrap();
    for p in honest {
        p.await.unwrap().unwrap();
    }
    let status = hostile.await.unwrap();
    let audit = coordinator
        .store
        .audit_text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (outcome, status, audit)
}

fn round1(outcome: &JobOutcome) -> (u32, u32) {
    let r = &outcome.report.rounds[0];
    (r.attempts, r.participants)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_of_the_wrong_length_is_refused_and_the_round_goes_on_without_it() {
    let (outcome, status, _) = run(Misbehaviour::TooLong).await;
    let status = status.expect("the session ends with a status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("bad input chunk"), "{status}");
    assert_eq!(
        round1(&outcome),
        (1, 2),
        "no retry, the two honest partners"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_submission_is_refused_and_the_first_one_stands() {
    let (outcome, status, _) = run(Misbehaviour::Duplicate).await;
    let status = status.expect("the session ends with a status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert_eq!(
        round1(&outcome),
        (1, 3),
        "the complete first vector stays in the sum; the duplicate is not added and aborts nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_ends_the_session_and_is_never_summed() {
    let (outcome, status, _) = run(Misbehaviour::Oversized).await;
    if let Some(status) = &status {
        assert_ne!(status.code(), tonic::Code::Ok, "{status}");
    }
    assert_eq!(round1(&outcome), (1, 2));
    assert_eq!(
        outcome.report.rounds[1].participants, 2,
        "it does not come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_input_under_another_round_id_is_ignored() {
    let (outcome, status, _) = run(Misbehaviour::Replay).await;
    assert!(status.is_none(), "stale input is not an error: {status:?}");
    // Had the replayed vector of sevens been summed, the round's counts and metrics would be
    // garbage; it is ignored and the partner's real (empty) input counts.
    assert_eq!(round1(&outcome), (1, 3));
    assert!(outcome.report.final_metrics.auc > 0.7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_the_wrong_phase_are_ignored() {
    let (outcome, status, _) = run(Misbehaviour::WrongPhase).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(round1(&outcome), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_reply_for_another_job_changes_nothing() {
    let (outcome, status, audit) = run(Misbehaviour::WrongJob).await;
    assert!(status.is_none(), "{status:?}");
    assert!(outcome.report.partners_refused.is_empty());
    assert!(
        outcome
            .report
            .partners_accepted
            .contains(&"hostile".to_owned())
    );
    let about_hostile: Vec<&str> = audit
        .iter()
        .filter(|r| r["data"]["partner"] == "hostile")
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        about_hostile,
        vec!["offer_accepted"],
        "no refusal was recorded"
    );
}

/// A partner that accepts the job and then answers nothing, keeping its session open, in a
/// secure job of three partners (threshold 3 with it, 2 without): it is left out of the
/// failed round's next attempt, and of the following rounds for longer after each miss, so
/// the job finishes with the two that answer instead of failing every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partner_is_left_out_of_retries_and_later_rounds() {
    let HandDriven {
        dir: _dir,
        coordinator,
        honest,
        tx,
        mut inbound,
        client: _client,
    } = hand_driven_with("silent", 3, Duration::from_secs(2), true)
        .await
        .unwrap();
    let silent = tokio::spawn(async move {
        // Bounded: every wait ends within 60 s, and the session ends with the job.
        while let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_secs(60), inbound.message()).await
        {
            match m.body {
                Some(server_message::Body::Offer(o)) => {
                    let _ = tx.send(accept(&o.job_id)).await;
                }
                Some(server_message::Body::Finished(_)) => return,
                _ => {} // reads everything, answers nothing
            }
        }
    });
    let outcome = coordinator.job.await.unwrap().unwrap();
    for p in honest {
        p.await.unwrap().unwrap();
    }
    silent.abort();
    let rounds = &outcome.report.rounds;
    assert_eq!(rounds.len(), 3, "{}", outcome.report.stop_reason);
    assert!(rounds.iter().all(|r| r.participants == 2));
    // Round 0 (statistics) lost one attempt to it; round 1 goes without it; round 2 draws it
    // again and loses one attempt; round 3 goes without it (left out for three rounds now).
    let attempts: Vec<u32> = rounds.iter().map(|r| r.attempts).collect();
    assert_eq!(attempts, vec![1, 2, 1], "{attempts:?}");
}

/// One decision per offer: a partner that answers the same offer again and again (accepting
/// and refusing in turn) has its session closed at the second answer, which is counted and
/// never audited; the job goes on with the others, and the audit holds its one acceptance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answering_one_offer_twice_closes_the_session_without_flooding_the_audit() {
    let (outcome, status, audit) = run(Misbehaviour::Flood).await;
    let status = status.expect("the session ends with a status");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
    assert!(status.message().contains("answered once"), "{status}");
    let offers: Vec<&str> = audit
        .iter()
        .filter(|r| r["data"]["partner"] == "hostile")
        .map(|r| r["kind"].as_str().unwrap())
        .filter(|k| k.starts_with("offer_"))
        .collect();
    assert_eq!(offers, vec!["offer_accepted"]);
    assert!(outcome.report.partners_refused.is_empty());
    assert_eq!(outcome.report.rounds.len(), 2);
    assert!(outcome.report.rounds.iter().all(|r| r.participants == 2));
}

/// A session that sends control messages far above any honest rate is closed with
/// `ResourceExhausted` (issue 16, item 5), before its flood costs the coordinator more than a
/// bounded burst; the job goes on with the honest partners.
#[tokio::test]
async fn a_session_flooding_control_messages_is_closed() {
    let (outcome, status, _) = run(Misbehaviour::Burst).await;
    let status = status.expect("the session ends with a status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("control messages"), "{status}");
    assert_eq!(outcome.report.rounds.len(), 2);
    assert!(outcome.report.rounds.iter().all(|r| r.participants == 2));
}
