//! The coordinator against a hand-driven partner speaking raw gRPC: who may connect, and what
//! happens to a round when a partner's input breaks off after part of it was summed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::collections::BTreeSet;
use std::time::Duration;

use fedmark_client::config::ClientConfig;
use fedmark_client::node::{self, NodeOptions};
use fedmark_coordinator::job::RunSettings;
use fedmark_proto::coordinator_client::CoordinatorClient;
use fedmark_proto::{
    ClientMessage, Hello, InputChunk, OfferReply, PROTOCOL_VERSION, client_message, server_message,
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

async fn start(
    roster: &[&str],
    rounds: u32,
    phase_timeout: Duration,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<
        Result<fedmark_coordinator::job::JobOutcome, fedmark_coordinator::job::JobError>,
    >,
) {
    let defaults = SimOptions::default();
    let mut spec =
        fedmark_core::spec::JobSpec::from_toml(&std::fs::read_to_string(&defaults.spec).unwrap())
            .unwrap();
    spec.job.rounds = rounds;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let roster: BTreeSet<String> = roster.iter().map(|s| s.to_string()).collect();
    let settings = RunSettings {
        expected_partners: roster.len(),
        join_timeout: Duration::from_secs(30),
        phase_timeout,
    };
    (
        addr,
        tokio::spawn(fedmark_coordinator::run(
            listener,
            spec,
            roster,
            settings,
            None,
            std::future::pending(),
        )),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_bad_openings_are_refused() {
    let (addr, job) = start(&["a", "b"], 1, Duration::from_secs(30)).await;
    let mut client = CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // not in the roster
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello("mallory")).await.unwrap();
    let status = client.session(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // first message is not hello
    let (tx, rx) = mpsc::channel(4);
    tx.send(msg(client_message::Body::OfferReply(OfferReply {
        job_id: "x".into(),
        accept: true,
        reason: String::new(),
    })))
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
    job.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_breaking_off_mid_input_makes_the_round_retry_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = SimOptions::default();
    let files = partition_csv(&defaults.data, dir.path(), 2, &Split::Iid, 3).unwrap();
    // The flaky partner ignores round 0 (statistics), so that round ends at its deadline
    // without it; keep the deadline short.
    let (addr, job) = start(&["good-0", "good-1", "flaky"], 2, Duration::from_secs(3)).await;

    // The flaky partner: accepts, sends a stale chunk (ignored), then half a vector, then a
    // chunk at a wrong offset, which gets its session closed.
    let mut client = CoordinatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(hello("flaky")).await.unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let flaky = tokio::spawn(async move {
        let mut ended_with = None;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(60), inbound.message())
            .await
            .unwrap_or(Ok(None))
        {
            match m.body {
                Some(server_message::Body::Offer(o)) => {
                    let reply = OfferReply {
                        job_id: o.job_id,
                        accept: true,
                        reason: String::new(),
                    };
                    tx.send(msg(client_message::Body::OfferReply(reply)))
                        .await
                        .unwrap();
                }
                Some(server_message::Body::RoundStart(s))
                    if s.round.as_ref().is_some_and(|r| r.round == 1) =>
                {
                    let mut stale = s.round.clone().unwrap();
                    stale.attempt += 7;
                    let chunk = |round, offset, n: usize, last| {
                        msg(client_message::Body::Input(InputChunk {
                            round: Some(round),
                            offset,
                            values: vec![1; n],
                            last,
                        }))
                    };
                    tx.send(chunk(stale, 0, 10, false)).await.unwrap();
                    let rref = s.round.clone().unwrap();
                    tx.send(chunk(rref.clone(), 0, 10, false)).await.unwrap();
                    tx.send(chunk(rref, 999, 10, false)).await.unwrap();
                }
                _ => {}
            }
        }
        if let Err(status) = inbound.message().await {
            ended_with = Some(status);
        }
        ended_with
    });
    let mut partners = Vec::new();
    for (i, (path, _)) in files.iter().enumerate() {
        let cfg = ClientConfig {
            coordinator: format!("http://{addr}"),
            partner_id: format!("good-{i}"),
            data: path.clone(),
            holdout_fraction: 0.2,
            holdout_seed: 0,
            seed: Some(1),
            connect_timeout_secs: 10,
        };
        partners.push(tokio::spawn(async move {
            node::run(&cfg, NodeOptions::default()).await
        }));
    }
    let outcome = job.await.unwrap().unwrap();
    let r1 = &outcome.report.rounds[0];
    assert_eq!(
        r1.attempts, 2,
        "the partial sum was discarded and the round retried: {r1:?}"
    );
    assert_eq!(r1.participants, 2);
    assert_eq!(outcome.report.rounds[1].participants, 2);
    for p in partners {
        p.await.unwrap().unwrap();
    }
    let _ = flaky.await.unwrap();
}
