//! Dialling the coordinator: the endpoint (with mutual TLS from the config's PEM files), and
//! retries with exponential backoff and jitter until the configured timeout.

use std::time::Duration;

use fedmark_proto::coordinator_client::CoordinatorClient;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use tracing::debug;

use crate::config::ClientConfig;
use crate::error::ClientError;

/// The client side of mutual TLS from the config's PEM files.
fn tls_config(tls: &crate::config::ClientTls) -> Result<ClientTlsConfig, ClientError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| ClientError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
        .identity(TlsIdentity::from_pem(read(&tls.cert)?, read(&tls.key)?));
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(config)
}

/// Dials the coordinator, retrying with exponential backoff and jitter until the configured
/// timeout.
pub async fn connect(cfg: &ClientConfig) -> Result<CoordinatorClient<Channel>, ClientError> {
    let url = cfg.coordinator.clone();
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| ClientError::Connect {
            url: url.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let endpoint = match &cfg.tls {
        None => endpoint,
        Some(tls) => endpoint
            .tls_config(tls_config(tls)?)
            .map_err(|e| ClientError::Tls(e.to_string()))?,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.connect_timeout_secs);
    let mut backoff = Duration::from_millis(50);
    let mut rng = StdRng::from_rng(&mut rand::rng());
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                return Ok(CoordinatorClient::new(channel)
                    .max_decoding_message_size(fedmark_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(fedmark_proto::MAX_MESSAGE_BYTES));
            }
            Err(e) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(ClientError::Connect {
                        url,
                        reason: e.to_string(),
                    });
                }
                let jitter = rng.random_range(0.5..1.5);
                let wait = backoff.mul_f64(jitter).min(deadline - now);
                debug!(
                    wait_ms = wait.as_millis() as u64,
                    "coordinator not reachable yet; retrying"
                );
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
