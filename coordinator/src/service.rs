//! The gRPC face of the coordinator: partner sessions in, events out.
//!
//! Each partner holds one bidirectional `Session` stream. This module only decodes and checks
//! who is speaking; every message is forwarded as an [`Event`] to the single task that runs the
//! job ([`crate::job`]), and that task answers through [`Sessions`]. Keeping all protocol state
//! in one task means no locks are held across awaits and the round logic reads top to bottom.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmark_core::secagg::valid_partner_id;
use fedmark_proto::coordinator_server::{Coordinator, CoordinatorServer};
use fedmark_proto::{
    ClientMessage, PROTOCOL_VERSION, ServerMessage, Welcome, client_message, server_message,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

/// Largest message accepted from a partner: input chunks are 1 MiB.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How long a new session may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 receive window per stream and per connection (eight 64 KiB input chunks).
const RECEIVE_WINDOW: u32 = 512 * 1024;
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

/// The open sessions, by partner id.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, (u64, Outbound)>>>,
    next: Arc<AtomicU64>,
}

impl Sessions {
    fn register(&self, partner: &str, tx: Outbound) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut map) = self.inner.lock() {
            map.insert(partner.to_owned(), (id, tx));
        }
        id
    }

    fn unregister(&self, partner: &str, session: u64) {
        if let Ok(mut map) = self.inner.lock()
            && map.get(partner).is_some_and(|(id, _)| *id == session)
        {
            map.remove(partner);
        }
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

    /// Ends a partner's session with a status (used for protocol violations).
    pub async fn kick(&self, partner: &str, status: Status) {
        let handle = self.inner.lock().ok().and_then(|mut m| m.remove(partner));
        if let Some((_, tx)) = handle {
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

/// Serves `service` (and the admin API, when given) on an already-bound listener until
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: CoordinatorService,
    admin: Option<crate::admin::AdminService>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(addr = ?addr, tls = tls.is_some(), "coordinator listening");
    let mut builder = tonic::transport::Server::builder();
    let mut service = service;
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
        // With TLS every session is bound to its certificate's name; no caller can forget it.
        service = service.bind_certificates();
    }
    builder
        // Small HTTP/2 receive windows bound what a partner can have in flight unread, so the
        // coordinator's memory stays one vector plus a small constant per partner.
        .initial_stream_window_size(RECEIVE_WINDOW)
        .initial_connection_window_size(RECEIVE_WINDOW)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(service.into_server())
        .add_optional_service(admin.map(crate::admin::AdminService::into_server))
        // `tcp_nodelay` above does not reach sockets from our own listener; without it Nagle
        // holds each small phase message for the peer's delayed ACK (40 ms a round trip).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let certified = if self.bind_certificates {
            let name = request
                .peer_certs()
                .and_then(|chain| chain.first().and_then(|leaf| crate::tls::common_name(leaf)));
            match name {
                Some(n) => Some(n),
                None => {
                    warn!("refused a session without a client certificate");
                    return Err(Status::unauthenticated(
                        "a client certificate from the consortium CA is required",
                    ));
                }
            }
        } else {
            None
        };
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
        let welcome = ServerMessage {
            body: Some(server_message::Body::Welcome(Welcome {
                coordinator_id: self.id.clone(),
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::unavailable("session closed"))?;
        let session = self.sessions.register(&partner, tx);
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
            loop {
                match inbound.message().await {
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
