//! The admin token: the bearer secret every admin call and the dashboard present. It lives
//! in the store's folder ([`TOKEN_FILE`], readable by its owner only); the coordinator keeps
//! only its SHA-256 and compares digests, so a wrong token takes the same time to refuse
//! whatever its prefix.

use std::path::{Path, PathBuf};

use rand::RngExt;
use sha2::{Digest, Sha256};

/// The admin token's file in the coordinator's data folder.
pub const TOKEN_FILE: &str = "admin.token";
/// Why the admin credential could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The token file could not be read or written.
    #[error("admin token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds something else than a token.
    #[error("admin token file {path} must hold 64 hexadecimal digits (it holds {found})")]
    Malformed {
        /// The file.
        path: String,
        /// What it holds instead, described without revealing it.
        found: String,
    },
}

/// The admin token, kept as its digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token whose secret is `secret`.
    pub fn from_secret(secret: &str) -> Self {
        Self {
            digest: Sha256::digest(secret.trim().as_bytes()).into(),
        }
    }

    /// A fresh secret: 32 random bytes in hex.
    pub fn generate_secret() -> String {
        let bytes: [u8; 32] = rand::rng().random();
        hex::encode(bytes)
    }

    /// Reads the token of `path` (64 hex digits, surrounding whitespace ignored).
    pub fn read(path: &Path) -> Result<(Self, String), AdminError> {
        let text = std::fs::read_to_string(path).map_err(|source| AdminError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let secret = text.trim();
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AdminError::Malformed {
                path: path.display().to_string(),
                found: format!("{} characters", secret.chars().count()),
            });
        }
        Ok((Self::from_secret(secret), secret.to_owned()))
    }

    /// The token of `dir`/[`TOKEN_FILE`], created (owner-only) if missing. Returns the token
    /// and the file's path.
    pub fn ensure(dir: &Path) -> Result<(Self, PathBuf), AdminError> {
        let path = dir.join(TOKEN_FILE);
        if !path.exists() {
            let io = |source| AdminError::Io {
                path: path.display().to_string(),
                source,
            };
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&path).map_err(io)?;
            std::io::Write::write_all(&mut f, format!("{}\n", Self::generate_secret()).as_bytes())
                .map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        let (token, _) = Self::read(&path)?;
        Ok((token, path))
    }

    /// Whether `presented` is the token.
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        // Comparing digests: how long a mismatch takes says nothing about the token.
        digest == self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_created_once_and_checked_by_digest() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (token, path) = AdminToken::ensure(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let secret = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(secret.trim().len(), 64);
        assert!(token.verify(&secret));
        assert!(!token.verify(&secret.trim()[..63]));
        assert!(!token.verify(""));
        // A second call keeps the same token.
        let (again, _) = AdminToken::ensure(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(again.verify(&secret));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        std::fs::write(&path, "not a token\n").unwrap_or_else(|e| panic!("{e}"));
        let err = AdminToken::read(&path).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("64 hexadecimal")),
            "{err:?}"
        );
    }
}
