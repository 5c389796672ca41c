//! The partner's node: runs sessions with the coordinator until the job (or, for a node that
//! keeps serving, the coordinator) ends, reconnecting after a session that broke
//! ([`run_until_finished`]). A session is [`crate::driver`]'s: tokio glue around the round
//! [`crate::participant::Participant`], which holds the protocol's checks and state without
//! I/O. Connection, identity, options and errors have modules of their own and are
//! re-exported here.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tracing::warn;

use crate::config::ClientConfig;
pub use crate::driver::ClientSummary;
use crate::driver::session;
pub use crate::error::ClientError;
pub use crate::identity::Identity;
pub use crate::options::{DropPoint, Dropout, NodeOptions, RoundHook};

/// Runs one session: from `Hello` to `JobFinished`. A session that ends early (the
/// coordinator restarted, the network broke) is an error; [`run_until_finished`] reconnects.
pub async fn run(cfg: &ClientConfig, options: NodeOptions) -> Result<ClientSummary, ClientError> {
    let mut summary = ClientSummary::default();
    let mut progressed = false;
    session(cfg, options, &mut summary, &mut progressed).await?;
    Ok(summary)
}

/// Whether a session that ended with `e` is worth dialling again: the coordinator went away
/// or the transport broke. A refusal of this partner (not in the roster, wrong protocol
/// version), a protocol violation or a local problem (identity, ledger, audit log) is not.
pub fn is_retryable(e: &ClientError) -> bool {
    use tonic::Code;
    match e {
        ClientError::Closed => true,
        ClientError::Session(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::Aborted
                | Code::Internal
                | Code::ResourceExhausted
        ),
        _ => false,
    }
}

/// Runs sessions until the job finishes or this partner refuses it. A session that ends
/// before `JobFinished` for a reason worth retrying (see [`is_retryable`]) is followed by a
/// new one: at once after a session that got going (the dial itself backs off while the
/// coordinator is unreachable), and after an exponential backoff with jitter after one that
/// did not; the new session answers the
/// coordinator's offer as usual. It gives up when `connect_timeout_secs` pass without a
/// session that got as far as the coordinator's welcome, returning the last error.
pub async fn run_until_finished(
    cfg: &ClientConfig,
    options: NodeOptions,
) -> Result<ClientSummary, ClientError> {
    let patience = Duration::from_secs(cfg.connect_timeout_secs);
    let mut summary = ClientSummary::default();
    let mut last_progress = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut sessions: u64 = 0;
    loop {
        let mut progressed = false;
        sessions += 1;
        match session(cfg, options.clone(), &mut summary, &mut progressed).await {
            Ok(()) => return Ok(summary),
            Err(e) if is_retryable(&e) => {
                let now = tokio::time::Instant::now();
                if progressed {
                    // A session that got going and then broke: dial again at once (a partner
                    // that drops out should be back for the next round); `connect` backs off
                    // if the coordinator is not there yet.
                    last_progress = now;
                    backoff = Duration::from_millis(50);
                    warn!(error = %e, sessions, "session ended before the job finished; reconnecting");
                    continue;
                }
                if now.duration_since(last_progress) >= patience {
                    return Err(e);
                }
                let wait = backoff.mul_f64(rng.random_range(0.5..1.5));
                warn!(
                    error = %e,
                    sessions,
                    wait_ms = wait.as_millis() as u64,
                    "session ended before the job finished; reconnecting"
                );
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}
