//! Mutual TLS at the coordinator's door: only a client certificate from the consortium CA,
//! naming the partner id the client says hello with, for a partner in the roster, gets a
//! session. A certificate from another CA, a valid certificate of a partner outside the
//! roster, a certificate naming someone else, and a plaintext client get nothing; a bulk
//! stream must come under the certificate of the partner whose session token it carries. The
//! simulation tests run whole jobs over TLS (the simulator's default).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::time::Duration;

use fedmark_coordinator::tls::{CertKey, DevCerts, server_config};
use fedmark_proto::coordinator_client::CoordinatorClient;
use fedmark_proto::{ClientMessage, Hello, PROTOCOL_VERSION, client_message, server_message};
use fedmark_tests::harness::{
    Coordinator, bank_spec, consortium, start_coordinator_with_tls, upload,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn hello(id: &str) -> ClientMessage {
    ClientMessage {
        body: Some(client_message::Body::Hello(Hello {
            partner_id: id.into(),
            protocol_version: PROTOCOL_VERSION,
        })),
    }
}

/// Dials `addr` over TLS trusting `ca`, presenting `cert`.
async fn dial(
    addr: std::net::SocketAddr,
    ca: &str,
    cert: Option<&CertKey>,
) -> Result<CoordinatorClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(c) = cert {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(CoordinatorClient::new(channel))
}

/// Opens a session saying hello as `id`: Ok(first server message kind) or the refusal.
async fn session(
    client: &mut CoordinatorClient<Channel>,
    id: &str,
) -> Result<&'static str, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello(id)).await.unwrap();
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no first message"))??;
    Ok(match first.and_then(|m| m.body) {
        Some(server_message::Body::Welcome(_)) => "welcome",
        _ => "other",
    })
}

/// Certificates from one consortium CA for `ids`, and a mutual-TLS coordinator whose roster
/// holds `bank` and `retailer` only.
async fn tls_coordinator(ids: &[String]) -> (DevCerts, Coordinator) {
    let certs = DevCerts::generate("consortium CA", ids).unwrap();
    let (roster, _) = consortium(&["bank", "retailer"]).unwrap();
    let tls = server_config(
        &certs.ca_pem,
        &certs.coordinator.cert_pem,
        &certs.coordinator.key_pem,
    );
    let coordinator = start_coordinator_with_tls(
        bank_spec(1).unwrap(),
        roster,
        Duration::from_secs(30),
        Some(tls),
    )
    .await
    .unwrap();
    (certs, coordinator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_roster_partners_with_consortium_certificates_get_a_session() {
    let ids = [
        "bank".to_owned(),
        "retailer".to_owned(),
        "mallory".to_owned(),
    ];
    // The consortium CA issued mallory a certificate too, but the roster does not list her.
    let (certs, coordinator) = tls_coordinator(&ids).await;
    let other_ca = DevCerts::generate("another CA", &ids[..1]).unwrap();
    let addr = coordinator.addr;

    // The right certificate for the right partner: welcomed.
    let mut bank = dial(addr, &certs.ca_pem, Some(&certs.partners[0]))
        .await
        .unwrap();
    assert_eq!(session(&mut bank, "bank").await.unwrap(), "welcome");

    // A consortium certificate naming bank, saying hello as retailer: refused.
    let status = session(&mut bank, "retailer").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");

    // A valid consortium certificate of a partner outside the roster: refused.
    let mut mallory = dial(addr, &certs.ca_pem, Some(&certs.partners[2]))
        .await
        .unwrap();
    let status = session(&mut mallory, "mallory").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");

    // A certificate for "bank" from another CA: the handshake fails, no session.
    let forged = match dial(addr, &certs.ca_pem, Some(&other_ca.partners[0])).await {
        Err(_) => None,
        Ok(mut c) => Some(session(&mut c, "bank").await),
    };
    assert!(
        forged.is_none() || forged.as_ref().is_some_and(Result::is_err),
        "a certificate from another CA got {forged:?}"
    );

    // No client certificate at all: refused.
    let anonymous = match dial(addr, &certs.ca_pem, None).await {
        Err(_) => None,
        Ok(mut c) => Some(session(&mut c, "bank").await),
    };
    assert!(
        anonymous.is_none() || anonymous.as_ref().is_some_and(Result::is_err),
        "a client without a certificate got {anonymous:?}"
    );

    // A coordinator whose certificate does not chain to the client's CA is not trusted.
    assert!(
        match dial(addr, &other_ca.ca_pem, Some(&other_ca.partners[0])).await {
            Err(_) => true,
            Ok(mut c) => session(&mut c, "bank").await.is_err(),
        },
        "the client must verify the coordinator"
    );

    // Plaintext to a TLS coordinator: no session.
    let plaintext = match CoordinatorClient::connect(format!("http://{addr}")).await {
        Err(_) => None,
        Ok(mut c) => Some(session(&mut c, "bank").await),
    };
    assert!(
        plaintext.is_none() || plaintext.as_ref().is_some_and(Result::is_err),
        "a plaintext client got {plaintext:?}"
    );
    coordinator.job.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_works_only_under_its_partners_certificate() {
    let ids = ["bank".to_owned(), "retailer".to_owned()];
    let (certs, coordinator) = tls_coordinator(&ids).await;
    let addr = coordinator.addr;
    let mut bank = dial(addr, &certs.ca_pem, Some(&certs.partners[0]))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello("bank")).await.unwrap();
    let mut inbound = bank
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = inbound.message().await.unwrap().and_then(|m| m.body);
    let Some(server_message::Body::Welcome(w)) = first else {
        panic!("expected the welcome, got {first:?}");
    };
    // Retailer's own (valid) certificate with bank's token: refused.
    let retailer = dial(addr, &certs.ca_pem, Some(&certs.partners[1]))
        .await
        .unwrap();
    let status = upload(&retailer, &w.session_token, Vec::new())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    // Bank's certificate with bank's token gets past the door (no round runs yet).
    let status = upload(&bank, &w.session_token, Vec::new())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
    drop(tx);
    coordinator.job.abort();
}
