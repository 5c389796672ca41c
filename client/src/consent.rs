//! The partner's consent source and the per-round consent snapshot.
//!
//! A consent source is a CSV file with the header `user_id,purpose,granted_at,withdrawn_at`.
//! Times are Unix seconds (whole numbers, UTC); an empty `withdrawn_at` means the consent was
//! never withdrawn. A user may have several rows (a consent granted, withdrawn and granted
//! again is two rows). A user's consent for a purpose is *active* at time `now` when one of
//! its rows for that purpose has `granted_at <= now` and no `withdrawn_at`, or one later than
//! `now`.
//!
//! At the start of every round the client re-reads the file and takes a [`ConsentSnapshot`]
//! for the job's purpose: the set of users with an active consent. Only their records are used
//! in that round, so a withdrawal written to the file takes effect from the next round. The
//! snapshot's hash and counts go into the audit log and the hash onto the round's last input
//! chunk; the user ids themselves stay in this process and are never logged or sent.

use ed25519_dalek::SigningKey;
use rand::Rng as _;
use std::collections::BTreeSet;
use std::path::Path;

use fedmark_core::audit::sha256_hex;

/// Domain-separation prefix of the snapshot hash (so it cannot collide with any other hash
/// fedmark computes).
const SNAPSHOT_DOMAIN: &[u8] = b"fedmark/consent-snapshot/v1\0";

/// Why a consent source could not be read. Messages name the file and the 1-based line (the
/// header is line 1); they never quote a user id.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentError {
    /// The file could not be read.
    #[error("cannot read consent file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The header is not `user_id,purpose,granted_at,withdrawn_at`.
    #[error(
        "consent file {path}: line 1: the header must be `user_id,purpose,granted_at,withdrawn_at`"
    )]
    Header {
        /// File path.
        path: String,
    },
    /// A row is not a valid consent record.
    #[error("consent file {path}: line {line}: {reason}")]
    Row {
        /// File path.
        path: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong (never the user id).
        reason: String,
    },
}

/// One consent row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    /// The user.
    pub user_id: String,
    /// The purpose consented to.
    pub purpose: String,
    /// Unix seconds when the consent was granted.
    pub granted_at: i64,
    /// Unix seconds when it was withdrawn, if it was.
    pub withdrawn_at: Option<i64>,
}

impl ConsentRecord {
    /// Whether this row gives an active consent for `purpose` at `now`.
    pub fn active(&self, purpose: &str, now: i64) -> bool {
        self.purpose == purpose
            && self.granted_at <= now
            && self.withdrawn_at.is_none_or(|w| w > now)
    }
}

/// A parsed consent source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsentSource {
    /// Every row, in file order.
    pub records: Vec<ConsentRecord>,
    /// The partner's secret key for snapshot hashes (see [`ConsentSource::with_key`]).
    key: Option<[u8; 32]>,
}

/// Who may be used for one purpose at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentSnapshot {
    /// The purpose.
    pub purpose: String,
    /// Users with an active consent (kept in memory only).
    pub users: BTreeSet<String>,
    /// SHA-256 (hex) of the domain prefix, the purpose and the sorted user ids, each
    /// length-prefixed — HMAC-SHA256 under the partner's key when the source has one (see
    /// [`ConsentSource::with_key`]): the same set gives the same hash whatever the file's row
    /// order.
    pub hash: String,
    /// Number of users in the snapshot.
    pub count: usize,
}

impl ConsentSnapshot {
    /// Whether `user_id` may be used.
    pub fn allows(&self, user_id: &str) -> bool {
        self.users.contains(user_id)
    }
}

fn length_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl ConsentSource {
    /// Reads a consent CSV.
    pub fn load(path: &Path) -> Result<Self, ConsentError> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| ConsentError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::from_reader(file, &shown)
    }

    /// Reads consent CSV from any reader (`name` is used in messages).
    pub fn from_reader<R: std::io::Read>(reader: R, name: &str) -> Result<Self, ConsentError> {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(reader);
        let header = csv
            .headers()
            .map_err(|_| ConsentError::Header {
                path: name.to_owned(),
            })?
            .clone();
        let expected = ["user_id", "purpose", "granted_at", "withdrawn_at"];
        if header.len() != expected.len() || header.iter().zip(expected).any(|(h, e)| h.trim() != e)
        {
            return Err(ConsentError::Header {
                path: name.to_owned(),
            });
        }
        let mut records = Vec::new();
        let mut record = csv::StringRecord::new();
        loop {
            let more = csv
                .read_record(&mut record)
                .map_err(|e| ConsentError::Row {
                    path: name.to_owned(),
                    line: e.position().map_or(0, |p| p.line()),
                    reason: "not valid CSV (or not UTF-8)".into(),
                })?;
            if !more {
                break;
            }
            let line = record.position().map_or(0, |p| p.line());
            let bad = |reason: String| ConsentError::Row {
                path: name.to_owned(),
                line,
                reason,
            };
            if record.len() != 4 {
                return Err(bad(format!("expected 4 fields, found {}", record.len())));
            }
            let field = |i: usize| record.get(i).unwrap_or("").trim();
            let user_id = field(0);
            if user_id.is_empty() {
                return Err(bad("`user_id` is empty".into()));
            }
            let purpose = field(1);
            if purpose.is_empty() {
                return Err(bad("`purpose` is empty".into()));
            }
            let time = |col: &str, text: &str| {
                text.parse::<i64>().map_err(|_| {
                    bad(format!(
                        "`{col}` must be Unix seconds (a whole number), got `{text}`"
                    ))
                })
            };
            let granted_at = time("granted_at", field(2))?;
            let withdrawn_at = match field(3) {
                "" => None,
                text => Some(time("withdrawn_at", text)?),
            };
            if let Some(w) = withdrawn_at
                && w < granted_at
            {
                return Err(bad("`withdrawn_at` is before `granted_at`".into()));
            }
            records.push(ConsentRecord {
                user_id: user_id.to_owned(),
                purpose: purpose.to_owned(),
                granted_at,
                withdrawn_at,
            });
        }
        Ok(Self { records, key: None })
    }

    /// Keys the snapshot hashes with a secret only this partner holds: the hash then is
    /// HMAC-SHA256 under that key, so the coordinator (which sees it on the last input chunk,
    /// in its audit chain and in the model card) cannot test a guessed set of user ids against
    /// it, while the partner can still show an auditor which snapshot a round used.
    pub fn with_key(mut self, key: [u8; 32]) -> Self {
        self.key = Some(key);
        self
    }

    /// The users with an active consent for `purpose` at `now` (Unix seconds).
    pub fn snapshot(&self, purpose: &str, now: i64) -> ConsentSnapshot {
        let users: BTreeSet<String> = self
            .records
            .iter()
            .filter(|r| r.active(purpose, now))
            .map(|r| r.user_id.clone())
            .collect();
        let mut bytes = SNAPSHOT_DOMAIN.to_vec();
        length_prefixed(&mut bytes, purpose.as_bytes());
        bytes.extend_from_slice(&(users.len() as u64).to_le_bytes());
        for u in &users {
            length_prefixed(&mut bytes, u.as_bytes());
        }
        ConsentSnapshot {
            purpose: purpose.to_owned(),
            count: users.len(),
            hash: match &self.key {
                // HKDF-Extract is HMAC(salt, ikm): HMAC-SHA256 keyed by the partner's secret.
                Some(key) => {
                    let (mac, _) = hkdf::Hkdf::<sha2::Sha256>::extract(Some(key), &bytes);
                    fedmark_core::audit::hex_lower(&mac)
                }
                None => sha256_hex(&bytes),
            },
            users,
        }
    }
}

/// The current time in Unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The partner's secret key for consent-snapshot hashes, derived (HKDF-SHA256) from its
/// identity key, so it needs no file of its own and no one else can recompute the hashes.
pub(crate) fn consent_key(identity: &SigningKey) -> [u8; 32] {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, identity.as_bytes());
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    let _ = hk.expand(b"fedmark consent-snapshot key v1", &mut key);
    key
}

/// What the coordinator gets of a round's consent snapshot: a hiding commitment to its
/// (keyed) hash, `SHA-256("fedmark consent commitment v1" ‖ salt ‖ hash)` with 16 fresh
/// random bytes of salt, hex. The partner's audit file keeps the hash and the salt, so the
/// partner can open every commitment the model card lists to a regulator; the coordinator
/// learns nothing from it, not even whether two rounds used the same snapshot (a bare hash
/// would show each consent change). Empty without a consent source.
pub(crate) fn commit_snapshot(hash: &str) -> (String, String) {
    if hash.is_empty() {
        return (String::new(), String::new());
    }
    let mut salt = [0u8; 16];
    crate::participant::secret_rng().fill_bytes(&mut salt);
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"fedmark consent commitment v1");
    h.update(salt);
    h.update(hash.as_bytes());
    (hex::encode(h.finalize()), hex::encode(salt))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CSV: &str = "user_id,purpose,granted_at,withdrawn_at\n\
        u1,ads,100,\n\
        u2,ads,100,150\n\
        u3,churn,100,\n\
        u4,ads,300,\n\
        u5,ads,100,500\n";

    fn source(text: &str) -> ConsentSource {
        ConsentSource::from_reader(text.as_bytes(), "c.csv").unwrap()
    }

    fn users(s: &ConsentSnapshot) -> Vec<&str> {
        s.users.iter().map(String::as_str).collect()
    }

    #[test]
    fn active_withdrawn_and_other_purpose() {
        let s = source(CSV).snapshot("ads", 200);
        // u2 withdrew at 150; u3 consented to another purpose; u4 not yet granted.
        assert_eq!(users(&s), vec!["u1", "u5"]);
        assert_eq!(s.count, 2);
        assert!(s.allows("u1") && !s.allows("u2") && !s.allows("u3"));
        assert_eq!(
            users(&source(CSV).snapshot("ads", 120)),
            vec!["u1", "u2", "u5"]
        );
        assert_eq!(users(&source(CSV).snapshot("ads", 600)), vec!["u1", "u4"]);
        assert_eq!(users(&source(CSV).snapshot("churn", 200)), vec!["u3"]);
        // A consent granted again after a withdrawal is a second row.
        let again = format!("{CSV}u2,ads,400,\n");
        assert_eq!(
            users(&source(&again).snapshot("ads", 450)),
            vec!["u1", "u2", "u4", "u5"]
        );
    }

    #[test]
    fn a_keyed_snapshot_hash_is_the_hmac_of_the_same_bytes() {
        let key = [7u8; 32];
        let plain = source(CSV).snapshot("ads", 120);
        let keyed = source(CSV).with_key(key).snapshot("ads", 120);
        assert_eq!(plain.users, keyed.users);
        assert_ne!(
            plain.hash, keyed.hash,
            "without the key the hash cannot be recomputed"
        );
        assert_ne!(
            keyed.hash,
            source(CSV).with_key([8u8; 32]).snapshot("ads", 120).hash
        );
        // RFC 4231 test case 2: HMAC-SHA256(key = "Jefe", "what do ya want for nothing?"),
        // computed the same way the snapshot is keyed.
        let (mac, _) = hkdf::Hkdf::<sha2::Sha256>::extract(
            Some(b"Jefe".as_slice()),
            b"what do ya want for nothing?",
        );
        assert_eq!(
            fedmark_core::audit::hex_lower(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn snapshot_hash_is_stable_under_row_order_and_depends_on_set_and_purpose() {
        let mut lines: Vec<&str> = CSV.lines().skip(1).collect();
        let a = source(CSV).snapshot("ads", 200);
        lines.reverse();
        let reversed = format!(
            "user_id,purpose,granted_at,withdrawn_at\n{}\n",
            lines.join("\n")
        );
        let b = source(&reversed).snapshot("ads", 200);
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.hash.len(), 64);
        assert_ne!(a.hash, source(CSV).snapshot("ads", 120).hash);
        // Same (empty) set, other purpose: another hash.
        assert_ne!(
            source(CSV).snapshot("x", 0).hash,
            source(CSV).snapshot("y", 0).hash
        );
    }

    #[test]
    fn bad_rows_name_the_line_and_never_the_user() {
        for (text, needle) in [
            (
                "user,purpose,granted_at,withdrawn_at\n",
                "line 1: the header",
            ),
            (
                "user_id,purpose,granted_at,withdrawn_at\nsecret-id,ads,yesterday,\n",
                "line 2: `granted_at` must be Unix seconds",
            ),
            (
                "user_id,purpose,granted_at,withdrawn_at\nu1,ads,1,\nsecret-id,ads,5,2\n",
                "line 3: `withdrawn_at` is before",
            ),
            (
                "user_id,purpose,granted_at,withdrawn_at\nu1,ads,1,\n,ads,1,\n",
                "line 3: `user_id` is empty",
            ),
            (
                "user_id,purpose,granted_at,withdrawn_at\nsecret-id,ads\n",
                "line 2: expected 4 fields",
            ),
        ] {
            let e = ConsentSource::from_reader(text.as_bytes(), "c.csv")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(!e.contains("secret-id"), "{e}");
        }
    }
}
