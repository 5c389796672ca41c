//! Why a partner's node stopped ([`ClientError`]).

use crate::audit::AuditLogError;
use crate::identity::IdentityError;
use crate::ledger::LedgerError;
use crate::participant::{ParticipantError, ProtocolViolation};
use crate::policy::PolicyError;
use crate::rounds::RoundsError;

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The coordinator could not be reached in time.
    #[error("cannot reach coordinator at {url}: {reason}")]
    Connect {
        /// Coordinator URL.
        url: String,
        /// Last error seen.
        reason: String,
    },
    /// The session failed.
    #[error("session with coordinator failed: {0}")]
    Session(#[from] tonic::Status),
    /// The coordinator sent something that breaks the protocol.
    #[error("protocol violation by coordinator: {0}")]
    Protocol(#[from] ProtocolViolation),
    /// A lock was poisoned by a panic elsewhere.
    #[error("internal state poisoned: {0}")]
    Poisoned(&'static str),
    /// The coordinator closed the session before the job finished.
    #[error("coordinator closed the session before the job finished")]
    Closed,
    /// The identity key or roster could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The TLS files could not be loaded or used.
    #[error("tls: {0}")]
    Tls(String),
    /// The privacy ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The partner's policy could not be loaded.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The audit file could not be opened or written.
    #[error(transparent)]
    Audit(#[from] AuditLogError),
    /// The partner's record of what each job asked of it could not be read or written.
    #[error(transparent)]
    Rounds(#[from] RoundsError),
}

impl From<ParticipantError> for ClientError {
    fn from(e: ParticipantError) -> Self {
        match e {
            ParticipantError::Protocol(v) => ClientError::Protocol(v),
            ParticipantError::Rounds(r) => ClientError::Rounds(r),
        }
    }
}
