//! The client's reconnection loop (`node::run_until_finished`): a partner that leaves mid-job
//! comes back and finishes; a refusal of the partner is final; an unreachable coordinator is
//! given up on after `connect_timeout_secs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmark_client::node::{self, ClientError, DropPoint, Dropout, NodeOptions};
use fedmark_tests::harness::{
    bank_spec, client_config, consortium, start_coordinator, with_identity,
};
use fedmark_tests::partition::{Split, partition_csv};
use fedmark_tests::sim::SimOptions;

/// Every test is bounded: a loop that never ends fails here instead of hanging.
const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_that_leaves_mid_job_reconnects_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 3, &Split::Iid, 4).unwrap();
    let ids = ["a", "b", "c"];
    let (roster, identities) = consortium(&ids).unwrap();
    let coordinator = start_coordinator(bank_spec(3).unwrap(), roster, Duration::from_secs(60))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let cfg = client_config(coordinator.addr, id, files[i].0.clone(), i as u64);
        let mut options = with_identity(&identities[i]);
        if *id == "c" {
            // Leaves (its session breaks) when round 1 starts; the loop dials again.
            options = NodeOptions {
                dropouts: Arc::new(Mutex::new(vec![Dropout {
                    round: 1,
                    point: DropPoint::Start,
                }])),
                ..options
            };
        }
        clients.push(tokio::spawn(async move {
            tokio::time::timeout(LIMIT, node::run_until_finished(&cfg, options)).await
        }));
    }
    let outcome = tokio::time::timeout(LIMIT, coordinator.job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.report.rounds.len(), 3);
    // With three partners the threshold is three: round 1 either went on without `c` or was
    // retried with `c` back.
    let r1 = &outcome.report.rounds[0];
    assert!(r1.participants == 2 || r1.attempts >= 2, "{r1:?}");
    for (id, c) in ids.iter().zip(clients) {
        let summary = c.await.unwrap().unwrap().unwrap();
        assert!(!summary.finish_reason.is_empty(), "{id}: {summary:?}");
        if *id == "c" {
            // It missed round 1 and came back for the later rounds and the evaluation.
            assert!(summary.rounds_contributed >= 2, "{summary:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_the_coordinator_refuses_is_not_retried() {
    let (roster, _) = consortium(&["a", "b"]).unwrap();
    let coordinator = start_coordinator(bank_spec(1).unwrap(), roster, Duration::from_secs(30))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = client_config(coordinator.addr, "stranger", dir.path().join("d.csv"), 1);
    cfg.connect_timeout_secs = 60;
    let result = tokio::time::timeout(
        LIMIT,
        node::run_until_finished(&cfg, NodeOptions::default()),
    )
    .await
    .unwrap();
    match result {
        Err(ClientError::Session(status)) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}")
        }
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
    coordinator.job.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_coordinator_is_given_up_after_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = client_config(addr, "a", dir.path().join("d.csv"), 1);
    cfg.connect_timeout_secs = 1;
    let result = tokio::time::timeout(
        LIMIT,
        node::run_until_finished(&cfg, NodeOptions::default()),
    )
    .await
    .unwrap();
    assert!(
        matches!(result, Err(ClientError::Connect { .. })),
        "{result:?}"
    );
}
