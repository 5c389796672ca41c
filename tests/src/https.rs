//! HTTPS for the tests: one GET to the coordinator's operators' listener over TLS (as under
//! mutual TLS it serves), trusting the consortium CA, with or without a client certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fedmark_coordinator::tls::CertKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types};

/// How long one exchange may take, handshake included.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client configuration trusting `ca_pem` and presenting `cert` when given (ring, as the
/// coordinator uses; HTTP/1.1).
pub fn client_config(
    ca_pem: &str,
    cert: Option<&CertKey>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use pki_types::pem::PemObject;
    use pki_types::{CertificateDer, PrivateKeyDer};
    let pem_certs = |pem: &str| {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("a PEM certificate: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem_certs(ca_pem)? {
        roots.add(ca)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("a PEM key: {e}"))?;
            builder.with_client_auth_cert(pem_certs(&c.cert_pem)?, key)?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `GET path` over TLS to `addr` (whose certificate must name its IP address), with the
/// admin `token` as a bearer header when given: (status code, body). Fails when the
/// handshake fails or no answer comes within 10 s.
pub async fn get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = pki_types::ServerName::from(addr.ip());
        let mut tls = TlsConnector::from(config).connect(name, tcp).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        // The server closes after its one answer.
        if let Err(e) = tls.read_to_end(&mut reply).await
            && (e.kind() != std::io::ErrorKind::UnexpectedEof || reply.is_empty())
        {
            return Err(anyhow::Error::from(e).context("reading the answer"));
        }
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not an HTTP answer: {head:?}"))?;
        Ok((code, body.to_owned()))
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .with_context(|| format!("GET {path} over TLS to {addr} timed out"))?
}

/// [`get`] from synchronous code (the process-level tests), on a runtime of its own.
pub fn get_blocking(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(get(addr, config, path, token))
}

/// The certificate `certs/<name>.{pem,key}` that `certs init` wrote into `dir`.
pub fn cert_from(dir: &std::path::Path, name: &str) -> anyhow::Result<CertKey> {
    let read = |ext: &str| {
        let path = dir.join(format!("{name}.{ext}"));
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(CertKey {
        name: name.to_owned(),
        cert_pem: read("pem")?,
        key_pem: read("key")?,
    })
}
