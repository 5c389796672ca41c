//! The partner's client configuration (`client.toml`), loaded once and validated before the
//! client dials anyone.

use std::path::{Path, PathBuf};

use fedmark_core::secagg::valid_partner_id;
use serde::Deserialize;

/// Why a client configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read client config {path}: {source}")]
    Io {
        /// Path of the file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Not valid TOML for a client config.
    #[error("client config {path}: {reason}")]
    Parse {
        /// Path of the file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of range.
    #[error("client config: `{field}` {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// `client.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Coordinator URL, e.g. `http://127.0.0.1:7070`.
    pub coordinator: String,
    /// This partner's id, as listed in the coordinator's roster.
    pub partner_id: String,
    /// The partner's CSV file (relative paths are relative to the config file).
    pub data: PathBuf,
    /// Share of rows held out for federated evaluation.
    #[serde(default = "default_holdout")]
    pub holdout_fraction: f64,
    /// Seed of the holdout split.
    #[serde(default)]
    pub holdout_seed: u64,
    /// Seed of local training randomness (batch order, stochastic rounding); random if absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// How long to keep trying to reach the coordinator.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// This partner's Ed25519 identity key (hex), for secure aggregation.
    #[serde(default)]
    pub identity_key: Option<PathBuf>,
    /// The consortium roster (`[[partner]] id, public_key`), for checking the other
    /// partners' key signatures.
    #[serde(default)]
    pub roster: Option<PathBuf>,
    /// Fewest partners this partner will aggregate with (cohort and survivors).
    #[serde(default = "default_min_cohort")]
    pub min_cohort: usize,
    /// Cap on the ε this partner's records may spend per purpose, across jobs.
    #[serde(default)]
    pub max_epsilon: Option<f64>,
    /// Largest model (parameters) this partner accepts a job for: it holds the model, its
    /// update and their encodings in memory each round.
    #[serde(default = "default_max_model_params")]
    pub max_model_params: u64,
    /// The node's own state folder (its privacy ledger lives there). Default: `fedmark-state`
    /// beside the config file (beside the data file for a config built in code).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The partner's privacy ledger file (per purpose across jobs, per job against its plan).
    /// Default: `<data_dir>/<partner_id>.ledger.json`, see [`ClientConfig::ledger_path`].
    #[serde(default)]
    pub ledger: Option<PathBuf>,
    /// Keep the privacy ledger in memory only: it is forgotten when a session ends. For tests;
    /// never the default, and not allowed together with `ledger`.
    #[serde(default)]
    pub ledger_in_memory: bool,
    /// The consent source (CSV `user_id,purpose,granted_at,withdrawn_at`, see
    /// [`crate::consent`]); re-read at the start of every round. Needs `user_id_column`.
    #[serde(default)]
    pub consent: Option<PathBuf>,
    /// The data's user-id column, read only to join rows with the consent snapshot.
    #[serde(default)]
    pub user_id_column: Option<String>,
    /// The partner's policy (see [`crate::policy`]); every offer is checked against it.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// The partner's audit file (JSON lines, hash-chained, see [`crate::audit`]); none when
    /// absent.
    #[serde(default)]
    pub audit: Option<PathBuf>,
    /// Mutual TLS with the coordinator (needs an `https://` coordinator URL).
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// `[tls]`: the consortium CA that the coordinator's certificate must chain to, and this
/// partner's client certificate (whose common name is its partner id) and key. PEM files,
/// relative to the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The consortium CA certificate.
    pub ca: PathBuf,
    /// This partner's certificate.
    pub cert: PathBuf,
    /// This partner's private key.
    pub key: PathBuf,
    /// The name the coordinator's certificate must carry, when not the URL's host.
    #[serde(default)]
    pub domain: Option<String>,
}

/// The node's state folder when `data_dir` is not set, beside the config file.
pub const STATE_DIR: &str = "fedmark-state";

/// Default of `max_model_params`: 2^24 parameters, the coordinator's default too.
pub const DEFAULT_MAX_MODEL_PARAMS: u64 = 1 << 24;

fn default_max_model_params() -> u64 {
    DEFAULT_MAX_MODEL_PARAMS
}

fn default_min_cohort() -> usize {
    2
}

fn default_holdout() -> f64 {
    0.2
}
fn default_connect_timeout() -> u64 {
    60
}

impl ClientConfig {
    /// A config with the defaults for everything but the three required fields; its data
    /// directory is `fedmark-state` beside the data file.
    pub fn new(coordinator: String, partner_id: String, data: PathBuf) -> Self {
        let data_dir = data
            .parent()
            .map_or_else(|| PathBuf::from(STATE_DIR), |d| d.join(STATE_DIR));
        Self {
            coordinator,
            partner_id,
            data,
            holdout_fraction: default_holdout(),
            holdout_seed: 0,
            seed: None,
            connect_timeout_secs: default_connect_timeout(),
            identity_key: None,
            roster: None,
            min_cohort: default_min_cohort(),
            max_epsilon: None,
            max_model_params: DEFAULT_MAX_MODEL_PARAMS,
            data_dir: Some(data_dir),
            ledger: None,
            ledger_in_memory: false,
            consent: None,
            user_id_column: None,
            policy: None,
            audit: None,
            tls: None,
        }
    }

    /// Where the privacy ledger is kept: `ledger` if set, else `<partner_id>.ledger.json` in
    /// the data directory (the partner id in the name, so partners whose configs share a
    /// folder never share a ledger); `None` only when `ledger_in_memory` asks for it.
    pub fn ledger_path(&self) -> Option<PathBuf> {
        if self.ledger_in_memory {
            return None;
        }
        if let Some(path) = &self.ledger {
            return Some(path.clone());
        }
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(STATE_DIR));
        Some(dir.join(format!("{}.ledger.json", self.partner_id)))
    }

    /// Where the node keeps what each job asked of it (its round guards): beside the ledger,
    /// `<partner_id>.rounds.json`; `None` (in memory) when the ledger is.
    pub fn rounds_path(&self) -> Option<PathBuf> {
        self.ledger_path()
            .map(|l| l.with_file_name(format!("{}.rounds.json", self.partner_id)))
    }

    /// Reads and validates a config file; relative paths (data, keys, policy, audit, ledger,
    /// data directory …) are resolved against its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut cfg: ClientConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown,
            reason: e.to_string(),
        })?;
        let mut paths: Vec<&mut PathBuf> = [
            &mut cfg.identity_key,
            &mut cfg.roster,
            &mut cfg.consent,
            &mut cfg.policy,
            &mut cfg.audit,
            &mut cfg.ledger,
            &mut cfg.data_dir,
        ]
        .into_iter()
        .flatten()
        .collect();
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
        if cfg.data.is_relative()
            && let Some(dir) = path.parent()
        {
            cfg.data = dir.join(&cfg.data);
        }
        if cfg.data_dir.is_none() {
            let dir = path.parent().unwrap_or(Path::new(""));
            cfg.data_dir = Some(dir.join(STATE_DIR));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.coordinator.starts_with("http://") || self.coordinator.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                field: "coordinator",
                reason: format!("`{}` must be an http:// or https:// URL", self.coordinator),
            });
        }
        let https = self.coordinator.starts_with("https://");
        if https != self.tls.is_some() {
            return Err(ConfigError::Invalid {
                field: "tls",
                reason: if https {
                    "an https:// coordinator needs a [tls] section (ca, cert, key)".into()
                } else {
                    "a [tls] section needs an https:// coordinator URL".into()
                },
            });
        }
        if !valid_partner_id(&self.partner_id) {
            return Err(ConfigError::Invalid {
                field: "partner_id",
                reason: format!(
                    "`{}` must be 1-64 characters of letters, digits, `_`, `-`, `.`",
                    self.partner_id
                ),
            });
        }
        if !(0.0..1.0).contains(&self.holdout_fraction) {
            return Err(ConfigError::Invalid {
                field: "holdout_fraction",
                reason: format!("must be in [0, 1), got {}", self.holdout_fraction),
            });
        }
        if let Some(cap) = self.max_epsilon
            && !(cap.is_finite() && cap > 0.0)
        {
            return Err(ConfigError::Invalid {
                field: "max_epsilon",
                reason: format!("must be a positive number, got {cap}"),
            });
        }
        if self.ledger_in_memory && self.ledger.is_some() {
            return Err(ConfigError::Invalid {
                field: "ledger_in_memory",
                reason: "cannot be set together with `ledger` (a file)".into(),
            });
        }
        if self.min_cohort == 0 {
            return Err(ConfigError::Invalid {
                field: "min_cohort",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_model_params == 0 {
            return Err(ConfigError::Invalid {
                field: "max_model_params",
                reason: "must be at least 1".into(),
            });
        }
        match (&self.consent, &self.user_id_column) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    field: "user_id_column",
                    reason: "is required with `consent` (the data's column to join on)".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    field: "consent",
                    reason: "is required with `user_id_column`".into(),
                });
            }
            (_, Some(col)) if col.trim().is_empty() => {
                return Err(ConfigError::Invalid {
                    field: "user_id_column",
                    reason: "must name a column".into(),
                });
            }
            _ => {}
        }
        if self.connect_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "connect_timeout_secs",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_resolves_relative_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("client.toml");
        std::fs::write(
            &p,
            "coordinator = \"http://127.0.0.1:1\"\npartner_id = \"bank\"\ndata = \"d.csv\"\n",
        )
        .unwrap();
        let c = ClientConfig::load(&p).unwrap();
        assert_eq!(c.data, dir.path().join("d.csv"));
        assert_eq!(c.holdout_fraction, 0.2);
        // The ledger is durable by default, in the data directory beside the config.
        assert_eq!(
            c.ledger_path(),
            Some(dir.path().join("fedmark-state/bank.ledger.json"))
        );
    }

    #[test]
    fn ledger_and_data_dir_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("client.toml");
        let base =
            "coordinator = \"http://127.0.0.1:1\"\npartner_id = \"bank\"\ndata = \"d.csv\"\n";
        std::fs::write(&p, format!("{base}ledger = \"state/l.json\"\n")).unwrap();
        let c = ClientConfig::load(&p).unwrap();
        assert_eq!(c.ledger_path(), Some(dir.path().join("state/l.json")));
        std::fs::write(&p, format!("{base}data_dir = \"var\"\n")).unwrap();
        let c = ClientConfig::load(&p).unwrap();
        assert_eq!(
            c.ledger_path(),
            Some(dir.path().join("var/bank.ledger.json"))
        );
        std::fs::write(&p, format!("{base}ledger_in_memory = true\n")).unwrap();
        assert_eq!(ClientConfig::load(&p).unwrap().ledger_path(), None);
        let built = ClientConfig::new("http://x".into(), "a".into(), dir.path().join("d.csv"));
        assert_eq!(
            built.ledger_path(),
            Some(dir.path().join("fedmark-state/a.ledger.json"))
        );
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("client.toml");
        for (text, needle) in [
            (
                "coordinator = \"127.0.0.1:1\"\npartner_id = \"b\"\ndata = \"d\"\n",
                "`coordinator`",
            ),
            (
                "coordinator = \"http://x\"\npartner_id = \"a b\"\ndata = \"d\"\n",
                "`partner_id`",
            ),
            (
                "coordinator = \"http://x\"\npartner_id = \"b\"\ndata = \"d\"\nholdout_fraction = 1.5\n",
                "`holdout_fraction`",
            ),
            (
                "coordinator = \"http://x\"\npartner_id = \"b\"\ndata = \"d\"\nport = 3\n",
                "unknown field `port`",
            ),
            (
                "coordinator = \"http://x\"\npartner_id = \"b\"\ndata = \"d\"\nconsent = \"c.csv\"\n",
                "`user_id_column` is required with `consent`",
            ),
            (
                "coordinator = \"http://x\"\npartner_id = \"b\"\ndata = \"d\"\nuser_id_column = \"id\"\n",
                "`consent` is required",
            ),
            (
                "coordinator = \"http://x\"\npartner_id = \"b\"\ndata = \"d\"\nledger = \"l.json\"\nledger_in_memory = true\n",
                "`ledger_in_memory` cannot be set together with `ledger`",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = ClientConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
