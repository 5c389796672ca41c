//! The partner's long-term identity for secure aggregation: its Ed25519 key, which signs its
//! round keys and its survivor-set signatures, and the roster of every partner's public key.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use fedmark_core::secagg::Roster;
use fedmark_core::secagg::keys::parse_signing_key;

use crate::config::ClientConfig;

/// Why the identity key or roster could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identity: {0}")]
pub struct IdentityError(pub String);

/// The partner's long-term identity for secure aggregation.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Ed25519 key that signs this partner's round keys.
    pub key: SigningKey,
    /// Every partner's public identity key.
    pub roster: Arc<Roster>,
}

impl Identity {
    /// Loads the key and roster files named in the config, if both are set.
    pub fn from_config(cfg: &ClientConfig) -> Result<Option<Self>, IdentityError> {
        let (Some(key_path), Some(roster_path)) = (&cfg.identity_key, &cfg.roster) else {
            return Ok(None);
        };
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map_err(|e| IdentityError(format!("cannot read {}: {e}", p.display())))
        };
        let key = parse_signing_key(read(key_path)?.trim())
            .map_err(|e| IdentityError(format!("{}: {e}", key_path.display())))?;
        let roster = Roster::from_toml(&read(roster_path)?)
            .map_err(|e| IdentityError(format!("{}: {e}", roster_path.display())))?;
        match roster.get(&cfg.partner_id) {
            Some(k) if *k == key.verifying_key() => {}
            Some(_) => {
                return Err(IdentityError(format!(
                    "the roster's key for `{}` is not the public half of {}",
                    cfg.partner_id,
                    key_path.display()
                )));
            }
            None => {
                return Err(IdentityError(format!(
                    "the roster does not list `{}`",
                    cfg.partner_id
                )));
            }
        }
        Ok(Some(Self {
            key,
            roster: Arc::new(roster),
        }))
    }
}
