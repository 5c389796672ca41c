//! The coordinator against hand-driven partners speaking raw gRPC: who may connect (sessions
//! and bulk streams), what happens to a round when a partner's input breaks off after part of
//! it was summed, and a secure round that a partner leaves in the middle of unmasking.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::time::Duration;

use fedmark_client::node::{self, DropPoint, Dropout};
use fedmark_proto::coordinator_client::CoordinatorClient;
use fedmark_proto::{
    ClientMessage, Hello, InputChunk, OfferReply, PROTOCOL_VERSION, client_message, server_message,
};
use fedmark_tests::harness::{
    HandDriven, accept, bank_spec, bind, client_config, consortium, hand_driven, start_coordinator,
    upload, whole_input, with_identity,
};
use fedmark_tests::partition::{Split, partition_csv};
use fedmark_tests::sim::SimOptions;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn msg(body: client_message::Body) -> ClientMessage {
    ClientMessage { body: Some(body) }
}

fn hello(id: &str) -> ClientMessage {
    msg(client_message::Body::Hello(Hello {
        partner_id: id.into(),
        protocol_version: PROTOCOL_VERSION,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_bad_openings_are_refused() {
    let (roster, _) = consortium(&["a", "b"]).unwrap();
    let coordinator = start_coordinator(bank_spec(1).unwrap(), roster, Duration::from_secs(30))
        .await
        .unwrap();
    let mut client = CoordinatorClient::connect(format!("http://{}", coordinator.addr))
        .await
        .unwrap();
    // not in the roster
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello("mallory")).await.unwrap();
    let status = client.session(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // first message is not hello
    let (tx, rx) = mpsc::channel(4);
    let reply = OfferReply {
        job_id: "x".into(),
        accept: true,
        reason: String::new(),
    };
    tx.send(msg(client_message::Body::OfferReply(reply)))
        .await
        .unwrap();
    let status = client.session(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // wrong protocol version
    let (tx, rx) = mpsc::channel(4);
    tx.send(msg(client_message::Body::Hello(Hello {
        partner_id: "a".into(),
        protocol_version: 99,
    })))
    .await
    .unwrap();
    let status = client.session(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    coordinator.job.abort();
}

/// Opens a session as `id` and returns its stream and the welcome's token.
async fn session_of(
    client: &mut CoordinatorClient<tonic::transport::Channel>,
    id: &str,
) -> (
    tonic::Streaming<fedmark_proto::ServerMessage>,
    mpsc::Sender<ClientMessage>,
    Vec<u8>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello(id)).await.unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = inbound.message().await.unwrap().unwrap();
    let Some(server_message::Body::Welcome(w)) = first.body else {
        panic!("the first message is the welcome: {first:?}");
    };
    assert_eq!(w.session_token.len(), 32);
    (inbound, tx, w.session_token)
}

fn model_request(token: Option<&[u8]>) -> tonic::Request<fedmark_proto::ModelRequest> {
    let message = fedmark_proto::ModelRequest {
        round: Some(fedmark_proto::RoundRef {
            job_id: "any".into(),
            round: 1,
            attempt: 0,
        }),
    };
    match token {
        Some(t) => bind(message, t),
        None => tonic::Request::new(message),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_streams_need_the_token_of_the_partners_current_session() {
    let (roster, _) = consortium(&["a", "b"]).unwrap();
    let coordinator = start_coordinator(bank_spec(1).unwrap(), roster, Duration::from_secs(30))
        .await
        .unwrap();
    let mut client = CoordinatorClient::connect(format!("http://{}", coordinator.addr))
        .await
        .unwrap();
    fn code<T>(r: Result<T, tonic::Status>) -> tonic::Code {
        r.map(|_| ()).unwrap_err().code()
    }
    // No token, a malformed one, a guessed one.
    assert_eq!(
        code(client.download_model(model_request(None)).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(client.download_model(model_request(Some(&[1; 7]))).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(client.download_model(model_request(Some(&[9; 32]))).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(upload(&client, &[9; 32], Vec::new()).await),
        tonic::Code::Unauthenticated
    );
    // A real session's token, while no round runs (the job waits for `b`).
    let (_inbound, _tx, token) = session_of(&mut client, "a").await;
    assert_eq!(
        code(client.download_model(model_request(Some(&token))).await),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        code(upload(&client, &token, Vec::new()).await),
        tonic::Code::FailedPrecondition
    );
    // A new session of the same partner replaces the old one, and with it the old token.
    let (_inbound2, _tx2, token2) = session_of(&mut client, "a").await;
    assert_ne!(token, token2);
    assert_eq!(
        code(upload(&client, &token, Vec::new()).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(upload(&client, &token2, Vec::new()).await),
        tonic::Code::FailedPrecondition
    );
    coordinator.job.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_breaking_off_mid_input_makes_the_round_retry_without_it() {
    // The flaky partner: accepts, then in round 1 sends a stale chunk (ignored), half a
    // vector, and a chunk at a wrong offset, which gets its session closed.
    let HandDriven {
        dir: _dir,
        coordinator,
        honest,
        tx,
        mut inbound,
        client,
    } = hand_driven("flaky", 2, Duration::from_secs(60))
        .await
        .unwrap();
    let flaky = tokio::spawn(async move {
        let mut token = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(60), inbound.message()).await;
            let Ok(Ok(Some(m))) = next else {
                return next.ok().and_then(|r| r.err());
            };
            match m.body {
                Some(server_message::Body::Welcome(w)) => token = w.session_token,
                Some(server_message::Body::Offer(o)) => tx.send(accept(&o.job_id)).await.unwrap(),
                Some(server_message::Body::RoundStart(s))
                    if s.round.as_ref().is_some_and(|r| r.round == 0) =>
                {
                    // Statistics: zeros are a valid encoding of "no rows".
                    let zeros = whole_input(&s.round.unwrap(), vec![0; s.vector_len as usize]);
                    upload(&client, &token, vec![zeros]).await.unwrap();
                }
                Some(server_message::Body::RoundStart(s))
                    if s.round.as_ref().is_some_and(|r| r.round == 1) =>
                {
                    let rref = s.round.clone().unwrap();
                    let mut stale = rref.clone();
                    stale.attempt += 7;
                    let chunk = |round, offset, last| InputChunk {
                        round: Some(round),
                        offset,
                        values: vec![1; 10],
                        last,
                        consent_snapshot: String::new(),
                    };
                    // One upload: the stale chunk is ignored, the first real one summed, and
                    // the one at a wrong offset closes the session. What the upload itself
                    // answers depends on how far the coordinator read before the close.
                    let chunks = vec![
                        chunk(stale, 0, false),
                        chunk(rref.clone(), 0, false),
                        chunk(rref, 999, false),
                    ];
                    let _ = upload(&client, &token, chunks).await;
                }
                _ => {}
            }
        }
    });
    let outcome = coordinator.job.await.unwrap().unwrap();
    let r1 = &outcome.report.rounds[0];
    assert_eq!(
        r1.attempts, 2,
        "the partial sum was discarded and the round retried: {r1:?}"
    );
    assert_eq!(r1.participants, 2);
    assert_eq!(outcome.report.rounds[1].participants, 2);
    for p in honest {
        p.await.unwrap().unwrap();
    }
    let status = flaky
        .await
        .unwrap()
        .expect("the flaky session ends with an error status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_round_survives_dropouts_at_every_phase() {
    // Seven partners (threshold 5 of the complete graph): in round 1 one partner leaves after
    // advertising keys and another after sending its input, before unmasking; in round 2 one
    // leaves after sharing keys; in round 3 one leaves after the consistency check's
    // signature. Every round must still produce the survivors' exact sum,
    // which shows in the metrics being those of a model that keeps learning.
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 7, &Split::Iid, 5).unwrap();
    let (roster, identities) = consortium(&id_refs).unwrap();
    let coordinator = start_coordinator(bank_spec(3).unwrap(), roster, Duration::from_secs(20))
        .await
        .unwrap();
    let drops = [
        (
            1,
            Dropout {
                round: 1,
                point: DropPoint::AfterKeys,
            },
        ),
        (
            2,
            Dropout {
                round: 1,
                point: DropPoint::AfterInput,
            },
        ),
        (
            3,
            Dropout {
                round: 2,
                point: DropPoint::AfterShares,
            },
        ),
        (
            4,
            Dropout {
                round: 3,
                point: DropPoint::AfterSignature,
            },
        ),
    ];
    let mut partners = Vec::new();
    let mut p0_rounds = None;
    for (i, id) in ids.iter().enumerate() {
        let cfg = client_config(coordinator.addr, id, files[i].0.clone(), i as u64);
        if i == 0 {
            p0_rounds = cfg.rounds_path();
        }
        let options = with_identity(&identities[i]);
        if let Some((_, d)) = drops.iter().find(|(p, _)| *p == i) {
            options.dropouts.lock().unwrap().push(*d);
        }
        partners.push(tokio::spawn(async move { node::run(&cfg, options).await }));
    }
    let outcome = coordinator.job.await.unwrap().unwrap();
    assert!(outcome.report.secure_aggregation);
    let r = &outcome.report.rounds;
    // Round 1: p1 left before sharing (not in the sum); p2 left after its input was summed:
    // its input counts and its mask is removed with the others' shares. Round 3: p4 left
    // after signing the survivor set, before unmasking: the same.
    assert_eq!((r[0].participants, r[0].attempts), (6, 1), "{:?}", r[0]);
    assert_eq!((r[1].participants, r[1].attempts), (4, 1), "{:?}", r[1]);
    assert_eq!(r[2].attempts, 1, "{:?}", r[2]);
    assert!(
        r[2].auc > 0.6,
        "a correctly unmasked sum trains a useful model: {:?}",
        r[2]
    );
    assert!(outcome.report.final_metrics.auc > 0.65);
    for (i, p) in partners.into_iter().enumerate() {
        let result = p.await.unwrap();
        if drops.iter().any(|(d, _)| *d == i) {
            assert!(
                matches!(result, Err(node::ClientError::Closed)),
                "p{i}: {result:?}"
            );
        } else {
            assert!(result.is_ok(), "p{i}: {result:?}");
        }
    }
    // The partner's durable round record names the start model of every round it helped
    // unmask (training rounds 1-3 and the final evaluation, each from its own model), which
    // is what stops it helping unmask a second round from one model.
    let text = std::fs::read_to_string(p0_rounds.expect("a durable round record")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    let models = record[outcome.report.job_id.as_str()]["unmasked_models"]
        .as_object()
        .expect("unmasked_models recorded");
    let mut rounds: Vec<u64> = models.values().map(|r| r.as_u64().unwrap()).collect();
    rounds.sort_unstable();
    assert_eq!(rounds, vec![1, 2, 3, 4], "{models:?}");
}

/// Two of five partners leave round 2 after signing the survivor set, when asked to help
/// unmask: the three that reveal are fewer than t = 4, so the unmask fails, and they sit the
/// round's retry out (a partner's input is unmasked at most once). The two come back only
/// after the coordinator has aborted the attempt. The coordinator must wait for them and
/// complete the round with them; counting the three sitting out as available, it gave the
/// round up at once, which in a job without DP failed the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_unmask_waits_for_the_partners_that_did_not_reveal() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 5, &Split::Iid, 9).unwrap();
    let (roster, identities) = consortium(&id_refs).unwrap();
    let spec = bank_spec(3).unwrap();
    assert!(spec.aggregation.secure && !spec.is_dp());
    let coordinator = start_coordinator(spec, roster, Duration::from_secs(20))
        .await
        .unwrap();
    let start = |i: usize, drop: Option<Dropout>| {
        let cfg = client_config(coordinator.addr, &ids[i], files[i].0.clone(), i as u64);
        let options = with_identity(&identities[i]);
        if let Some(d) = drop {
            options.dropouts.lock().unwrap().push(d);
        }
        tokio::spawn(async move { node::run(&cfg, options).await })
    };
    let leave = Dropout {
        round: 2,
        point: DropPoint::AfterSignature,
    };
    let stayers: Vec<_> = (0..3).map(|i| start(i, None)).collect();
    let leavers: Vec<_> = (3..5).map(|i| start(i, Some(leave))).collect();
    for l in leavers {
        let result = l.await.unwrap();
        assert!(
            matches!(result, Err(node::ClientError::Closed)),
            "{result:?}"
        );
    }
    // Bounded: the attempt is aborted within a phase timeout of the two leaving.
    let mut aborted = false;
    for _ in 0..1200 {
        if coordinator
            .store
            .audit_text()
            .unwrap()
            .contains("round_aborted")
        {
            aborted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(aborted, "round 2's first attempt was aborted");
    let back: Vec<_> = (3..5).map(|i| start(i, None)).collect();
    let outcome = coordinator.job.await.unwrap().unwrap();
    let r = &outcome.report.rounds;
    assert!(
        outcome.report.rounds_lost.is_empty(),
        "{:?}",
        outcome.report
    );
    assert_eq!(r.len(), 3);
    assert_eq!((r[1].participants, r[1].attempts), (2, 2), "{:?}", r[1]);
    // The revealers are back for round 3, which starts from another model.
    assert_eq!(r[2].participants, 5, "{:?}", r[2]);
    for p in stayers.into_iter().chain(back) {
        p.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_loses_its_slot_and_the_round_goes_on() {
    // The harness gives the coordinator 2 transfer slots and 5 s of allowed stall. The
    // staller is admitted twice in round 1 and sends nothing: were a stalled upload to keep
    // its slot, both slots would be gone and no one could upload. Then it sends its real
    // (empty) vector, and the round completes with all three, on its first attempt.
    let HandDriven {
        dir: _dir,
        coordinator,
        honest,
        tx,
        mut inbound,
        client,
    } = hand_driven("staller", 2, Duration::from_secs(60))
        .await
        .unwrap();
    let staller = tokio::spawn(async move {
        let mut token = Vec::new();
        let mut stalls = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(60), inbound.message()).await;
            let Ok(Ok(Some(m))) = next else {
                return stalls;
            };
            match m.body {
                Some(server_message::Body::Welcome(w)) => token = w.session_token,
                Some(server_message::Body::Offer(o)) => tx.send(accept(&o.job_id)).await.unwrap(),
                Some(server_message::Body::RoundStart(s)) => {
                    let rref = s.round.clone().unwrap();
                    if rref.round == 1 {
                        for _ in 0..2 {
                            stalls.push(stall(&client, &token).await);
                        }
                    }
                    let zeros = whole_input(&rref, vec![0; s.vector_len as usize]);
                    upload(&client, &token, vec![zeros]).await.unwrap();
                }
                Some(server_message::Body::Finished(_)) => return stalls,
                _ => {}
            }
        }
    });
    let outcome = coordinator.job.await.unwrap().unwrap();
    let r1 = &outcome.report.rounds[0];
    assert_eq!((r1.attempts, r1.participants), (1, 3), "{r1:?}");
    for p in honest {
        p.await.unwrap().unwrap();
    }
    let stalls = staller.await.unwrap();
    assert_eq!(stalls.len(), 2);
    for s in stalls {
        assert_eq!(s, tonic::Code::DeadlineExceeded);
    }
}

/// Opens an upload, waits to be admitted, sends nothing: the coordinator's last word.
async fn stall(client: &CoordinatorClient<tonic::transport::Channel>, token: &[u8]) -> tonic::Code {
    let (_tx, rx) = mpsc::channel::<InputChunk>(1);
    let mut replies = client
        .clone()
        .upload_input(bind(ReceiverStream::new(rx), token))
        .await
        .unwrap()
        .into_inner();
    let admitted = replies.message().await.unwrap().unwrap();
    assert_eq!(admitted.state(), fedmark_proto::UploadState::Admitted);
    // Bounded: the coordinator ends a stalled upload after 5 s.
    match tokio::time::timeout(Duration::from_secs(30), replies.message()).await {
        Ok(Err(status)) => status.code(),
        other => panic!("a stalled upload ends with a status: {other:?}"),
    }
}
