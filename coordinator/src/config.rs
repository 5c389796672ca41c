//! The coordinator's configuration (`coordinator.toml`), validated before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedmark_core::secagg::Roster;
use serde::Deserialize;

/// Why a coordinator configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read coordinator config {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Not valid TOML for a coordinator config.
    #[error("coordinator config {path}: {reason}")]
    Parse {
        /// Path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of range.
    #[error("coordinator config: `{field}` {reason}")]
    Invalid {
        /// Field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The `[tls]` files hold no usable CA, certificate or key.
    #[error("coordinator config [tls]: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// `coordinator.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address to listen on, e.g. `127.0.0.1:7070`.
    pub listen: SocketAddr,
    /// Folder for the model and report (relative to the config file).
    #[serde(default = "default_out")]
    pub out_dir: PathBuf,
    /// The durable store's folder (relative to the config file); made by
    /// `fedmark-coordinator init`, only opened by `serve`.
    #[serde(default = "default_data")]
    pub data_dir: PathBuf,
    /// The roster file (`[[partner]] id, public_key`): the partners allowed to join, with their
    /// Ed25519 identity keys. The job waits for all of them. Relative to the config file.
    pub roster: PathBuf,
    /// How long to wait for the partners to join and answer the offer.
    #[serde(default = "default_join")]
    pub join_timeout_secs: u64,
    /// Deadline of each round's input phase (covers local training).
    #[serde(default = "default_phase")]
    pub phase_timeout_secs: u64,
    /// Model downloads and vector uploads running at once (the rest wait their turn). What
    /// the coordinator holds for transfers grows with this, not with the number of partners;
    /// raise it for many partners on slow links.
    #[serde(default = "default_slots")]
    pub transfer_slots: usize,
    /// Mutual TLS; plaintext when absent (development only). It covers the partners' and
    /// admin port and the metrics listener alike.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Address of the Prometheus metrics and health endpoint (`GET /metrics`,
    /// `GET /healthz`) and the dashboard, e.g. `127.0.0.1:9464`; no endpoint when absent.
    /// Over TLS when `tls` is set (the dashboard then on any address, for an admin
    /// certificate and the admin token); plain HTTP otherwise (the dashboard on loopback
    /// only).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Largest model (in parameters) a job may ask for. A round holds about six copies of
    /// it (the model, its download copy, the running sum, the optimiser state, the
    /// checkpoint), so the default of 2^24 parameters costs up to about 1 GiB.
    #[serde(default = "default_max_model_params")]
    pub max_model_params: u64,
}

fn default_max_model_params() -> u64 {
    crate::job::DEFAULT_MAX_MODEL_PARAMS
}

/// `[tls]`: the consortium CA and the coordinator's certificate (PEM files, relative to the
/// config file). Clients must present a certificate from `ca` naming their partner id.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The consortium CA certificate.
    pub ca: PathBuf,
    /// The coordinator's certificate.
    pub cert: PathBuf,
    /// The coordinator's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads the three PEM files into a server TLS configuration.
    pub fn load(&self) -> Result<tonic::transport::ServerTlsConfig, ConfigError> {
        let (ca, cert, key) = self.read()?;
        Ok(crate::tls::server_config(&ca, &cert, &key))
    }

    /// Reads the three PEM files into the TLS of the operators' HTTP listener (metrics,
    /// health, dashboard): the same CA and coordinator certificate as the partners' port.
    pub fn load_http(&self) -> Result<crate::http::HttpTls, ConfigError> {
        let (ca, cert, key) = self.read()?;
        Ok(crate::http::HttpTls::new(&ca, &cert, &key)?)
    }

    /// The CA, certificate and key PEM texts.
    fn read(&self) -> Result<(String, String, String), ConfigError> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                path: p.display().to_string(),
                source,
            })
        };
        Ok((read(&self.ca)?, read(&self.cert)?, read(&self.key)?))
    }
}

fn default_out() -> PathBuf {
    PathBuf::from("out")
}
fn default_data() -> PathBuf {
    PathBuf::from("data")
}
fn default_join() -> u64 {
    120
}
fn default_phase() -> u64 {
    120
}
fn default_slots() -> usize {
    crate::bulk::TRANSFER_SLOTS
}

impl CoordinatorConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut cfg: CoordinatorConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown,
            reason: e.to_string(),
        })?;
        let mut paths = vec![&mut cfg.roster, &mut cfg.out_dir, &mut cfg.data_dir];
        if let Some(tls) = &mut cfg.tls {
            paths.extend([&mut tls.ca, &mut tls.cert, &mut tls.key]);
        }
        for p in paths {
            if p.is_relative()
                && let Some(dir) = path.parent()
            {
                *p = dir.join(&*p);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("join_timeout_secs", self.join_timeout_secs),
            ("phase_timeout_secs", self.phase_timeout_secs),
        ] {
            if v == 0 || v > 86_400 {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("must be 1..=86400, got {v}"),
                });
            }
        }
        if !(1..=1024).contains(&self.transfer_slots) {
            return Err(ConfigError::Invalid {
                field: "transfer_slots",
                reason: format!("must be 1..=1024, got {}", self.transfer_slots),
            });
        }
        Ok(())
    }

    /// Reads the roster file.
    pub fn load_roster(&self) -> Result<Roster, ConfigError> {
        let shown = self.roster.display().to_string();
        let text = std::fs::read_to_string(&self.roster).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        let roster = Roster::from_toml(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        if roster.is_empty() {
            return Err(ConfigError::Parse {
                path: shown,
                reason: "lists no partner".into(),
            });
        }
        Ok(roster)
    }

    /// The join deadline.
    pub fn join_timeout(&self) -> Duration {
        Duration::from_secs(self.join_timeout_secs)
    }

    /// The per-phase deadline.
    pub fn phase_timeout(&self) -> Duration {
        Duration::from_secs(self.phase_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn load(extra: &str) -> Result<CoordinatorConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        let text = format!("listen = \"127.0.0.1:7070\"\nroster = \"roster.toml\"\n{extra}");
        std::fs::write(&path, text).unwrap();
        CoordinatorConfig::load(&path)
    }

    #[test]
    fn transfer_slots_default_to_four_and_must_be_1_to_1024() {
        assert_eq!(load("").unwrap().transfer_slots, 4);
        assert_eq!(load("transfer_slots = 16").unwrap().transfer_slots, 16);
        for bad in ["transfer_slots = 0", "transfer_slots = 5000"] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains("transfer_slots"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coordinator.toml");
        let cfg = CoordinatorConfig::load(&path).unwrap();
        assert_eq!(cfg.transfer_slots, 4);
    }
}
