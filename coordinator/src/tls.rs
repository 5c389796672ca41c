//! Mutual TLS between partners and the coordinator.
//!
//! The consortium has one certificate authority. The coordinator presents a server
//! certificate from it and accepts only client certificates that chain to it (rustls checks the
//! chain during the handshake, before any gRPC byte); the session then checks that the
//! certificate's subject common name is the partner id the client says hello with, and that
//! this id is in the roster. A valid certificate of a partner outside the roster, a
//! certificate from another CA, or a plaintext client gets nothing.
//!
//! [`DevCerts`] makes a development CA with a coordinator certificate (valid for `localhost`
//! and `127.0.0.1`), one client certificate per partner and an admin certificate (common name
//! `admin:<name>`, which no partner id can take since `:` is not allowed in one). In
//! production each organisation's certificate comes from the consortium's own CA.
//! [`admin_name`] is the one rule for who is an administrator, for the admin API and the
//! dashboard alike.
//!
//! The operators' HTTP listener ([`crate::http`]) takes its rustls configuration from
//! [`http_server_config`]: the same CA and coordinator certificate, with the ring provider
//! tonic uses, client certificates verified against the CA but optional at the handshake
//! (Prometheus and load balancers scrape `/metrics` and `/healthz` without one).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Prefix of the common name of an admin certificate.
pub const ADMIN_PREFIX: &str = "admin:";

/// Why certificates could not be made, read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A name cannot go into a certificate.
    #[error("`{0}` cannot name a certificate holder")]
    BadName(String),
    /// A PEM text holds no usable certificate or key.
    #[error("{what}: {reason}")]
    Pem {
        /// Which of the CA, the certificate or the key.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the CA, the certificate or the key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built from the CA.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertKey {
    /// Common name of the subject.
    pub name: String,
    /// Certificate (PEM).
    pub cert_pem: String,
    /// Private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// A development CA and the certificates it issued.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The CA certificate (PEM) every party trusts.
    pub ca_pem: String,
    /// The coordinator's server certificate.
    pub coordinator: CertKey,
    /// One client certificate per partner, in the order given.
    pub partners: Vec<CertKey>,
    /// The data scientists' admin certificate.
    pub admin: CertKey,
}

fn leaf(
    name: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
    issuer: &CertifiedIssuer<'_, KeyPair>,
) -> Result<CertKey, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, issuer)?;
    Ok(CertKey {
        name: name.to_owned(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl DevCerts {
    /// A new CA named `ca_name` with certificates for the coordinator, `partners` and an admin.
    pub fn generate(ca_name: &str, partners: &[String]) -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(ca, ca_key)?;
        let coordinator = leaf(
            "fedmark-coordinator",
            vec![
                SanType::DnsName("localhost".try_into()?),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        )?;
        let mut issued = Vec::with_capacity(partners.len());
        for id in partners {
            if !fedmark_core::secagg::valid_partner_id(id) {
                return Err(TlsError::BadName(id.clone()));
            }
            issued.push(leaf(
                id,
                vec![SanType::DnsName(id.as_str().try_into()?)],
                ExtendedKeyUsagePurpose::ClientAuth,
                &issuer,
            )?);
        }
        let admin = leaf(
            &format!("{ADMIN_PREFIX}data-scientist"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        )?;
        Ok(Self {
            ca_pem: issuer.pem(),
            coordinator,
            partners: issued,
            admin,
        })
    }

    /// Writes `ca.pem`, `coordinator.{pem,key}`, `<partner>.{pem,key}` and `admin.{pem,key}`
    /// into `dir` (keys readable by their owner only). The CA's private key is not kept: a
    /// development CA issues once.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| TlsError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &self.ca_pem).map_err(io(&ca))?;
        let named = [("coordinator", &self.coordinator), ("admin", &self.admin)];
        let all = named
            .iter()
            .map(|(n, c)| ((*n).to_owned(), *c))
            .chain(self.partners.iter().map(|c| (c.name.clone(), c)));
        for (file, ck) in all {
            let cert = dir.join(format!("{file}.pem"));
            std::fs::write(&cert, &ck.cert_pem).map_err(io(&cert))?;
            let key = dir.join(format!("{file}.key"));
            write_private(&key, &ck.key_pem).map_err(io(&key))?;
        }
        Ok(())
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// The server side of mutual TLS: present `cert`/`key`, require client certificates from `ca`.
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(ca_pem))
}

/// The subject common name of a DER certificate (the partner id of a partner certificate).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Why a caller's client certificate does not make it an administrator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotAdmin {
    /// No client certificate was presented (or it names no one).
    #[error("no administrator's client certificate (`{ADMIN_PREFIX}…`) was presented")]
    NoCertificate,
    /// The certificate names someone else, e.g. a partner.
    #[error("the client certificate names `{0}`, not an administrator (`{ADMIN_PREFIX}…`)")]
    Named(String),
}

/// The administrator a verified client certificate names (its common name starts with
/// [`ADMIN_PREFIX`]), given the leaf of the chain the TLS layer verified; the one rule for
/// the admin API and the dashboard.
pub fn admin_name(leaf_der: Option<&[u8]>) -> Result<String, NotAdmin> {
    match leaf_der.and_then(common_name) {
        Some(n) if n.starts_with(ADMIN_PREFIX) => Ok(n),
        Some(n) => Err(NotAdmin::Named(n)),
        None => Err(NotAdmin::NoCertificate),
    }
}

/// The rustls server configuration of the operators' HTTP listener under mutual TLS:
/// presents `cert`/`key`, verifies any client certificate against `ca` (a certificate from
/// another CA fails the handshake) but lets a client without one in, since `/metrics` and
/// `/healthz` need none; the dashboard asks for an admin certificate per request
/// ([`admin_name`]). HTTP/1.1 only, with the ring provider tonic uses.
pub fn http_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |what: &'static str, pem: &str| {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what,
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                what,
                reason: "no PEM certificate in it".into(),
            });
        }
        Ok(certs)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs("the CA", ca_pem)? {
        roots.add(ca)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .allow_unauthenticated()
            .build()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "the coordinator's key",
        reason: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs("the coordinator's certificate", cert_pem)?, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_name_their_holders() {
        let certs =
            DevCerts::generate("test CA", &["bank".to_owned(), "retailer".to_owned()]).unwrap();
        let der = |pem: &str| {
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            p.contents
        };
        assert_eq!(
            common_name(&der(&certs.partners[0].cert_pem)).unwrap(),
            "bank"
        );
        assert_eq!(
            common_name(&der(&certs.coordinator.cert_pem)).unwrap(),
            "fedmark-coordinator"
        );
        let admin = common_name(&der(&certs.admin.cert_pem)).unwrap();
        assert!(admin.starts_with(ADMIN_PREFIX));
        assert!(
            !fedmark_core::secagg::valid_partner_id(&admin),
            "no partner can hold an admin name"
        );
        // Leaves are signed by the CA, not self-signed.
        let ca = der(&certs.ca_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        let leaf = der(&certs.partners[1].cert_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(leaf.issuer(), ca.subject());
        assert!(
            DevCerts::generate("x", &["has space".to_owned()]).is_err(),
            "ids are checked"
        );
        // Only the admin certificate names an administrator.
        assert_eq!(
            admin_name(Some(der(&certs.admin.cert_pem).as_slice())),
            Ok(admin)
        );
        assert_eq!(
            admin_name(Some(der(&certs.partners[0].cert_pem).as_slice())),
            Err(NotAdmin::Named("bank".into()))
        );
        assert_eq!(admin_name(None), Err(NotAdmin::NoCertificate));
        assert_eq!(
            admin_name(Some(&b"not DER"[..])),
            Err(NotAdmin::NoCertificate)
        );
    }

    #[test]
    fn the_http_config_needs_real_pem() {
        let certs = DevCerts::generate("test CA", &[]).unwrap();
        let c = &certs.coordinator;
        let config = http_server_config(&certs.ca_pem, &c.cert_pem, &c.key_pem).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        for (ca, cert, key, what) in [
            ("", c.cert_pem.as_str(), c.key_pem.as_str(), "the CA"),
            (
                &certs.ca_pem,
                "garbage",
                &c.key_pem,
                "the coordinator's certificate",
            ),
            (&certs.ca_pem, &c.cert_pem, "", "the coordinator's key"),
        ] {
            let e = http_server_config(ca, cert, key).unwrap_err().to_string();
            assert!(e.starts_with(what), "{e}");
        }
        // A key that is not the certificate's.
        let other = &certs.admin.key_pem;
        assert!(http_server_config(&certs.ca_pem, &c.cert_pem, other).is_err());
    }
}
