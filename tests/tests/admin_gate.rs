//! The admin API checks its credential before it reads a request's body (issue 16, item 6):
//! a caller without the token is refused on its metadata whatever it sends — an 8 MiB submit
//! is refused as unauthenticated, not read, decoded and then refused — and admin requests
//! have their own, smaller size limit, which a caller with the token meets first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::sync::Arc;
use std::time::Duration;

use fedmark_coordinator::admin::{AdminAuth, AdminToken, MAX_REQUEST_BYTES};
use fedmark_coordinator::board::{Board, BoardFeed};
use fedmark_coordinator::events::JobEvents;
use fedmark_coordinator::job::RunSettings;
use fedmark_coordinator::store::Store;
use fedmark_core::secagg::Roster;
use fedmark_proto::SubmitJobRequest;
use fedmark_proto::admin_client::AdminClient;
use tonic::Code;

const TOKEN: &str = "a-test-admin-token";

async fn serve() -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Store::in_memory().unwrap();
    let board = Board::default();
    let settings = RunSettings {
        max_model_params: fedmark_coordinator::job::DEFAULT_MAX_MODEL_PARAMS,
        expected_partners: 0,
        join_timeout: Duration::from_secs(5),
        phase_timeout: Duration::from_secs(5),
        transfer_slots: 2,
        transfer_idle: Duration::from_secs(5),
        roster: Arc::new(Roster::new()),
        store: store.clone(),
        submitted_by: "test".into(),
        pause_at: None,
        tls: None,
        events: JobEvents::default().with(BoardFeed {
            board: board.clone(),
            store,
        }),
    };
    let auth = AdminAuth {
        token: AdminToken::from_secret(TOKEN),
        require_admin_cert: false,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(fedmark_coordinator::server::serve_jobs(
        listener,
        settings,
        board,
        auth,
        async move {
            let _ = stopped.await;
        },
    ));
    (format!("http://{addr}"), stop)
}

async fn submit(url: &str, token: Option<&str>, spec_bytes: usize) -> tonic::Status {
    let mut client = AdminClient::connect(url.to_owned())
        .await
        .unwrap()
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut request = tonic::Request::new(SubmitJobRequest {
        spec_toml: "#".repeat(spec_bytes),
    });
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    client.submit_job(request).await.unwrap_err()
}

#[tokio::test]
async fn a_caller_without_the_token_is_refused_before_its_body_is_read() {
    let (url, stop) = serve().await;
    // Far above the admin limit: read first, this would fail on its size.
    let big = 8 * 1024 * 1024;
    for token in [None, Some("wrong")] {
        let status = submit(&url, token, big).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // With the token, the size limit applies before anything else.
    let status = submit(&url, Some(TOKEN), MAX_REQUEST_BYTES + 1).await;
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    // A small, authorised request reaches the service (and its spec check).
    let status = submit(&url, Some(TOKEN), 10).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let _ = stop.send(());
}
