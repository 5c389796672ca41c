//! The gRPC face of the coordinator: partner sessions in, events out.
//!
//! Each partner holds one bidirectional `Session` stream, and opens a short-lived stream for
//! each bulk transfer of a round (`DownloadModel`, `UploadInput`, see [`crate::bulk`]), bound to
//! the session by its token. This module only decodes and checks who is speaking; every
//! message and input chunk is forwarded as an [`Event`] to the single task that runs the job
//! ([`crate::job`]), and that task answers through [`Sessions`]. Keeping all protocol state in
//! one task means no locks are held across awaits and the round logic reads top to bottom.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmark_core::secagg::valid_partner_id;
use fedmark_proto::coordinator_server::{Coordinator, CoordinatorServer};
use fedmark_proto::{
    ClientMessage, InputChunk, ModelChunk, ModelRequest, PROTOCOL_VERSION, SESSION_METADATA,
    ServerMessage, UploadState, UploadStatus, Welcome, client_message, server_message,
};
use rand::RngExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::bulk::{Bulk, Transfer, TransferError};

use fedmark_proto::MAX_MESSAGE_BYTES;

/// How long a new session may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Outbound messages buffered per session before sending waits.
const OUTBOUND_BUFFER: usize = 4;

/// What the job task hears from the sessions.
#[derive(Debug)]
pub enum Event {
    /// A partner opened a session (replacing any older one of the same partner).
    Connected {
        /// Partner id.
        partner: String,
        /// Session number, unique for this coordinator process.
        session: u64,
    },
    /// A partner sent a message.
    Message {
        /// Partner id.
        partner: String,
        /// Session number.
        session: u64,
        /// The message.
        body: client_message::Body,
    },
    /// A chunk of a partner's vector arrived on its upload stream.
    Input {
        /// Partner id.
        partner: String,
        /// Session number the upload is bound to.
        session: u64,
        /// The chunk.
        chunk: InputChunk,
    },
    /// A partner's upload stream ended (whole, cut short or refused midway).
    UploadEnded {
        /// Partner id.
        partner: String,
        /// Session number the upload was bound to.
        session: u64,
    },
    /// A partner's session ended (closed, failed or replaced).
    Closed {
        /// Partner id.
        partner: String,
        /// Session number.
        session: u64,
    },
}

/// The sending half of a partner session's outbound stream.
pub type Outbound = mpsc::Sender<Result<ServerMessage, Status>>;

/// The open sessions, by partner id, and the transfers of the round running on them.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, (u64, Outbound)>>>,
    /// SHA-256 of each open session's token → partner and session number. Keyed by the hash,
    /// so a lookup's timing says nothing about how close a guessed token came.
    tokens: Arc<Mutex<Tokens>>,
    next: Arc<AtomicU64>,
    bulk: Arc<Bulk>,
}

/// SHA-256 of a session token → partner id and session number.
type Tokens = HashMap<[u8; 32], (String, u64)>;

fn token_key(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Control messages a session may send per second, sustained; a burst of
/// [`CONTROL_BURST`] is allowed. An honest partner sends about five a round (offer answer,
/// keys, shares, signature, unmask), far below either; a session above them is flooding the
/// coordinator and is closed.
pub const CONTROL_RATE: u32 = 500;

/// Control messages a session may send at once before [`CONTROL_RATE`] applies.
pub const CONTROL_BURST: u32 = 2000;

/// A session's token bucket for control messages.
#[derive(Debug, Clone, Copy)]
struct ControlBudget {
    tokens: f64,
    at: std::time::Instant,
}

impl ControlBudget {
    fn new(now: std::time::Instant) -> Self {
        Self {
            tokens: f64::from(CONTROL_BURST),
            at: now,
        }
    }

    /// Spends one message's token at `now`; false when none is left.
    fn take(&mut self, now: std::time::Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(CONTROL_RATE);
        self.tokens = (self.tokens + refill).min(f64::from(CONTROL_BURST));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Sessions {
    /// Sessions whose transfers share `slots` slots and may stall for `idle` at most.
    pub fn with_transfers(slots: usize, idle: Duration) -> Self {
        Self {
            bulk: Arc::new(Bulk::new(slots, idle)),
            ..Self::default()
        }
    }

    /// Registers a session of `partner` whose messages go to `tx`: its number and its token.
    /// The partner service registers every session it opens; an in-memory driver (a test
    /// harness) registers its own.
    pub fn register(&self, partner: &str, tx: Outbound) -> (u64, [u8; 32]) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let token: [u8; 32] = rand::rng().random();
        if let Ok(mut map) = self.inner.lock() {
            map.insert(partner.to_owned(), (id, tx));
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(token_key(&token), (partner.to_owned(), id));
        }
        (id, token)
    }

    fn unregister(&self, partner: &str, session: u64) {
        if let Ok(mut map) = self.inner.lock()
            && map.get(partner).is_some_and(|(id, _)| *id == session)
        {
            map.remove(partner);
        }
        self.forget_token(partner, session);
    }

    fn forget_token(&self, partner: &str, session: u64) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, (p, id)| !(p == partner && *id == session));
        }
    }

    /// The partner and session a bulk stream's token names, if that session is still the
    /// partner's current one.
    fn by_token(&self, token: &[u8]) -> Option<(String, u64)> {
        let (partner, session) = self.tokens.lock().ok()?.get(&token_key(token)).cloned()?;
        self.is_current(&partner, session)
            .then_some((partner, session))
    }

    /// Whether `session` is `partner`'s current session (checked for every uploaded chunk,
    /// so it clones nothing).
    pub fn is_current(&self, partner: &str, session: u64) -> bool {
        self.inner
            .lock()
            .ok()
            .is_some_and(|m| m.get(partner).is_some_and(|(id, _)| *id == session))
    }

    /// The bulk transfers of the round running on these sessions.
    pub fn bulk(&self) -> &Arc<Bulk> {
        &self.bulk
    }

    /// The outbound channel of a partner's current session.
    pub fn sender(&self, partner: &str) -> Option<(u64, Outbound)> {
        self.inner.lock().ok()?.get(partner).cloned()
    }

    /// Every open session: partner id and session number.
    pub fn open(&self) -> Vec<(String, u64)> {
        self.inner
            .lock()
            .map(|m| m.iter().map(|(p, (id, _))| (p.clone(), *id)).collect())
            .unwrap_or_default()
    }

    /// Partners with an open session.
    pub fn connected(&self) -> BTreeSet<String> {
        self.inner
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends one message; false when the partner has no open session or it just closed.
    pub async fn send(&self, partner: &str, body: server_message::Body) -> bool {
        match self.sender(partner) {
            Some((_, tx)) => tx
                .send(Ok(ServerMessage { body: Some(body) }))
                .await
                .is_ok(),
            None => false,
        }
    }

    /// [`Sessions::send`] that gives up after `limit` (for a last word to a partner that may
    /// not be reading).
    pub async fn send_within(
        &self,
        partner: &str,
        body: server_message::Body,
        limit: Duration,
    ) -> bool {
        tokio::time::timeout(limit, self.send(partner, body))
            .await
            .unwrap_or(false)
    }

    /// Tells every connected partner that job `job_id` is over, so it gets ready for the next;
    /// each send gives up after `limit`, so a partner that does not read holds up no one.
    pub async fn finish_all(&self, job_id: &str, reason: &str, limit: Duration) {
        for partner in self.connected() {
            let fin = fedmark_proto::JobFinished {
                job_id: job_id.to_owned(),
                reason: reason.to_owned(),
            };
            self.send_within(&partner, server_message::Body::Finished(fin), limit)
                .await;
        }
    }

    /// Ends a partner's session with a status (used for protocol violations); its token
    /// stops working at once, which also ends its bulk streams.
    pub async fn kick(&self, partner: &str, status: Status) {
        let handle = self.inner.lock().ok().and_then(|mut m| m.remove(partner));
        if let Some((session, tx)) = handle {
            self.forget_token(partner, session);
            let _ = tx.send(Err(status)).await;
        }
    }
}

/// The `Coordinator` gRPC service.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    id: String,
    sessions: Sessions,
    events: mpsc::Sender<Event>,
    roster: Option<Arc<BTreeSet<String>>>,
    /// With mutual TLS: a session's hello must name the partner its certificate names.
    bind_certificates: bool,
}

impl CoordinatorService {
    /// A service that forwards events to `events`. With a roster, partners outside it are
    /// refused.
    pub fn new(
        id: String,
        sessions: Sessions,
        events: mpsc::Sender<Event>,
        roster: Option<BTreeSet<String>>,
    ) -> Self {
        Self {
            id,
            sessions,
            events,
            roster: roster.map(Arc::new),
            bind_certificates: false,
        }
    }

    /// Requires every session's client certificate (checked against the CA by TLS) to name
    /// the partner its hello names.
    pub fn bind_certificates(mut self) -> Self {
        self.bind_certificates = true;
        self
    }

    /// The tonic server wrapper with fedmark's message limits.
    pub fn into_server(self) -> CoordinatorServer<Self> {
        CoordinatorServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

impl CoordinatorService {
    /// With mutual TLS, the name the caller's certificate gives (required); None without TLS.
    fn certified<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        if !self.bind_certificates {
            return Ok(None);
        }
        let name = request
            .peer_certs()
            .and_then(|chain| chain.first().and_then(|leaf| crate::tls::common_name(leaf)));
        match name {
            Some(n) => Ok(Some(n)),
            None => {
                warn!("refused a stream without a client certificate");
                Err(Status::unauthenticated(
                    "a client certificate from the consortium CA is required",
                ))
            }
        }
    }

    /// The partner and session a bulk stream belongs to: the token in its metadata must be
    /// a current session's, and under mutual TLS the certificate must name that partner.
    fn bulk_caller<T>(&self, request: &Request<T>) -> Result<(String, u64), Status> {
        let certified = self.certified(request)?;
        let token = request
            .metadata()
            .get(SESSION_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| hex::decode(v).ok())
            .filter(|t| t.len() == 32)
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "`{SESSION_METADATA}` must carry the session token of the welcome (64 hex digits)"
                ))
            })?;
        let (partner, session) = self
            .sessions
            .by_token(&token)
            .ok_or_else(|| Status::unauthenticated("the session token names no open session"))?;
        if let Some(name) = certified
            && name != partner
        {
            warn!(partner = %partner, certificate = %name, "refused a bulk stream under another partner's certificate");
            return Err(Status::permission_denied(
                "the session token is not for the partner the client certificate names",
            ));
        }
        Ok((partner, session))
    }
}

fn refused(e: TransferError) -> Status {
    match e {
        TransferError::RoundOver | TransferError::NotRunning(_) => {
            Status::failed_precondition(e.to_string())
        }
        _ => Status::permission_denied(e.to_string()),
    }
}

fn stalled(idle: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "no chunk moved for {} s; the transfer slot went to another partner",
        idle.as_secs_f64()
    ))
}

/// Streams `transfer`'s model once it holds a slot; stops when the round ends or the partner
/// stops reading.
async fn send_model(
    mut transfer: Transfer,
    tx: mpsc::Sender<Result<ModelChunk, Status>>,
    partner: String,
) {
    let _slot = match transfer.admit().await {
        Ok(slot) => slot,
        Err(e) => {
            let _ = tx.send(Err(refused(e))).await;
            return;
        }
    };
    for chunk in transfer.model_chunks() {
        if transfer.is_over() {
            let _ = tx.send(Err(refused(TransferError::RoundOver))).await;
            return;
        }
        match tokio::time::timeout(transfer.idle(), tx.send(Ok(chunk))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                debug!(partner = %partner, "model download cut off by the partner");
                return;
            }
            Err(_) => {
                warn!(partner = %partner, "model download stalled; freeing its slot");
                let _ = tx.try_send(Err(stalled(transfer.idle())));
                return;
            }
        }
    }
    debug!(partner = %partner, round = transfer.rref().round, "model sent");
}

/// Admits `transfer` to a slot, then hands every chunk of the stream to the job task; tells the
/// job task when the stream ends, however it ends.
async fn receive_input(
    mut transfer: Transfer,
    mut inbound: Streaming<InputChunk>,
    tx: mpsc::Sender<Result<UploadStatus, Status>>,
    events: mpsc::Sender<Event>,
    sessions: Sessions,
    (partner, session): (String, u64),
) {
    let status = |state: UploadState| UploadStatus {
        state: state as i32,
    };
    let outcome: Result<(), Status> = async {
        let _slot = transfer.admit().await.map_err(refused)?;
        tx.send(Ok(status(UploadState::Admitted)))
            .await
            .map_err(|_| Status::cancelled("the partner left"))?;
        loop {
            let idle = transfer.idle();
            let next = tokio::select! {
                next = tokio::time::timeout(idle, inbound.message()) => match next {
                    Ok(next) => next,
                    Err(_) => {
                        warn!(partner = %partner, "upload stalled; freeing its slot");
                        return Err(stalled(idle));
                    }
                },
                () = transfer.round_over() => return Err(refused(TransferError::RoundOver)),
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(()),
                Err(status) => {
                    // A message over the limit or not protobuf: malformed, like one on the
                    // session, so it ends the session too.
                    if matches!(
                        status.code(),
                        Code::Internal | Code::OutOfRange | Code::ResourceExhausted
                    ) {
                        warn!(partner = %partner, %status, "malformed upload; closing the partner's session");
                        let kick = Status::invalid_argument(format!(
                            "malformed upload: {}",
                            status.message()
                        ));
                        sessions.kick(&partner, kick).await;
                    }
                    return Err(status);
                }
            };
            // A kicked or replaced session takes its uploads with it.
            if !sessions.is_current(&partner, session) {
                return Err(Status::cancelled("the session this upload belongs to ended"));
            }
            // A chunk of another round goes on too: the job task ignores it as stale, like
            // any message of another round; only this round's last chunk ends the upload.
            let last = chunk.last && chunk.round.as_ref() == Some(transfer.rref());
            let event = Event::Input {
                partner: partner.clone(),
                session,
                chunk,
            };
            if events.send(event).await.is_err() {
                return Err(Status::unavailable("coordinator is shutting down"));
            }
            // The vector is complete: the round may end now, before the client's half-close
            // arrives, and that must not turn a whole upload into a failed one.
            if last {
                return Ok(());
            }
        }
    }
    .await;
    let _ = events
        .send(Event::UploadEnded {
            partner: partner.clone(),
            session,
        })
        .await;
    let last = match outcome {
        Ok(()) => Ok(status(UploadState::Received)),
        Err(s) => {
            debug!(partner = %partner, status = %s, "upload ended early");
            Err(s)
        }
    };
    let _ = tx.send(last).await;
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;
    type DownloadModelStream = ReceiverStream<Result<ModelChunk, Status>>;
    type UploadInputStream = ReceiverStream<Result<UploadStatus, Status>>;

    async fn download_model(
        &self,
        request: Request<ModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let (partner, _) = self.bulk_caller(&request)?;
        let rref = request.into_inner().round;
        let transfer = self
            .sessions
            .bulk()
            .download(&partner, rref.as_ref())
            .map_err(refused)?;
        // Two chunks buffered: the slot is what bounds memory, not this channel.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(send_model(transfer, tx, partner));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn upload_input(
        &self,
        request: Request<Streaming<InputChunk>>,
    ) -> Result<Response<Self::UploadInputStream>, Status> {
        let caller = self.bulk_caller(&request)?;
        let transfer = self.sessions.bulk().upload(&caller.0).map_err(refused)?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(receive_input(
            transfer,
            request.into_inner(),
            tx,
            self.events.clone(),
            self.sessions.clone(),
            caller,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let certified = self.certified(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 30 s"))??;
        let hello = match first.and_then(|m| m.body) {
            Some(client_message::Body::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be hello",
                ));
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not supported (this coordinator speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            )));
        }
        if !valid_partner_id(&hello.partner_id) {
            return Err(Status::invalid_argument(
                "partner_id must be 1-64 characters of letters, digits, `_`, `-`, `.`",
            ));
        }
        if let Some(name) = &certified
            && *name != hello.partner_id
        {
            warn!(partner = %hello.partner_id, certificate = %name, "refused a hello that does not match its certificate");
            return Err(Status::permission_denied(
                "the hello's partner id is not the one the client certificate names",
            ));
        }
        if let Some(roster) = &self.roster
            && !roster.contains(&hello.partner_id)
        {
            warn!(partner = %hello.partner_id, "refused a partner outside the roster");
            return Err(Status::permission_denied("partner is not in the roster"));
        }
        let partner = hello.partner_id;
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let (session, token) = self.sessions.register(&partner, tx.clone());
        let welcome = ServerMessage {
            body: Some(server_message::Body::Welcome(Welcome {
                coordinator_id: self.id.clone(),
                session_token: token.to_vec(),
            })),
        };
        if tx.send(Ok(welcome)).await.is_err() {
            self.sessions.unregister(&partner, session);
            return Err(Status::unavailable("session closed"));
        }
        drop(tx);
        info!(partner = %partner, session, "partner connected");
        let events = self.events.clone();
        let sessions = self.sessions.clone();
        if events
            .send(Event::Connected {
                partner: partner.clone(),
                session,
            })
            .await
            .is_err()
        {
            return Err(Status::unavailable("coordinator is shutting down"));
        }
        tokio::spawn(async move {
            let mut budget = ControlBudget::new(std::time::Instant::now());
            loop {
                match inbound.message().await {
                    Ok(Some(ClientMessage { body: Some(_) }))
                        if !budget.take(std::time::Instant::now()) =>
                    {
                        warn!(partner = %partner, "control messages above the session's rate; closing the session");
                        let status = Status::resource_exhausted(format!(
                            "more than {CONTROL_RATE} control messages a second on one session; closing it"
                        ));
                        sessions.kick(&partner, status).await;
                        break;
                    }
                    Ok(Some(ClientMessage { body: Some(body) })) => {
                        if events
                            .send(Event::Message {
                                partner: partner.clone(),
                                session,
                                body,
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(Some(ClientMessage { body: None })) => {
                        warn!(partner = %partner, "empty message; closing session");
                        break;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        debug!(partner = %partner, %status, "session stream error");
                        break;
                    }
                }
            }
            sessions.unregister(&partner, session);
            info!(partner = %partner, session, "partner disconnected");
            let _ = events.send(Event::Closed { partner, session }).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_budget_allows_a_burst_then_the_rate() {
        let t0 = std::time::Instant::now();
        let mut b = ControlBudget::new(t0);
        for _ in 0..CONTROL_BURST {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0), "the burst is spent");
        // A tenth of a second later, a tenth of the rate is back.
        let later = t0 + std::time::Duration::from_millis(100);
        for _ in 0..CONTROL_RATE / 10 {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
        // Idle time refills no more than the burst.
        let much_later = t0 + std::time::Duration::from_secs(3600);
        let taken = (0..10 * CONTROL_BURST)
            .filter(|_| b.take(much_later))
            .count();
        assert_eq!(taken, CONTROL_BURST as usize);
    }
}
