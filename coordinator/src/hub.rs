//! The job task's view of the partners: the [`Hub`] multiplexes the sessions' events for the
//! one job that runs, offers it to every session that opens, records the answers (one per
//! offer, audited), and hands the round driver only the events of current sessions
//! ([`RoundEvent`]). It also keeps each partner's standing after missed deadlines
//! (its probation), which the cohort draw reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fedmark_proto::{JobFinished, JobOffer, client_message, server_message};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::events::{JobEvent, JobEvents};
use crate::service::{Event, Outbound, Sessions};
use crate::store::Store;
use crate::store::events::CoordinatorEvent;

/// A round-relevant event, after the hub has handled joins and offer replies.
#[derive(Debug)]
pub enum RoundEvent {
    /// A message from a partner's current session.
    Message {
        /// Partner id.
        partner: String,
        /// The message.
        body: client_message::Body,
    },
    /// A chunk of a partner's vector, from an upload bound to its current session.
    Input {
        /// Partner id.
        partner: String,
        /// The chunk.
        chunk: fedmark_proto::InputChunk,
    },
    /// A partner's upload stream ended.
    UploadEnded {
        /// Partner id.
        partner: String,
    },
    /// A partner's current session closed.
    Closed {
        /// Partner id.
        partner: String,
    },
    /// A partner answered the job offer (already recorded in the hub).
    OfferAnswered,
}

/// The sessions' events, shared by the jobs a long-running coordinator runs one after another;
/// the job that runs holds the lock, so the receiver outlives a job that is cancelled.
pub type SharedEvents = Arc<tokio::sync::Mutex<mpsc::Receiver<Event>>>;

/// The job task's view of the partners: sessions, offers and acceptances.
#[derive(Debug)]
pub struct Hub {
    /// Open sessions.
    pub sessions: Sessions,
    /// The sessions' events, held for this job.
    inbox: tokio::sync::OwnedMutexGuard<mpsc::Receiver<Event>>,
    pub(crate) job_id: String,
    pub(crate) spec_toml: String,
    /// Partners that accepted the job.
    pub accepted: BTreeSet<String>,
    /// Partners that refused, with their reasons.
    pub refused: BTreeMap<String, String>,
    /// The latest session of each partner that connected.
    sessions_seen: BTreeMap<String, u64>,
    pub(crate) stopped: bool,
    /// Where offer answers are audited.
    store: Option<Store>,
    /// Where the job and its rounds publish what happens.
    pub(crate) events: JobEvents,
    /// The session whose offer each partner has answered: one decision per offer.
    answered: BTreeMap<String, u64>,
    /// Partners that missed a phase deadline (or left) in a round: for the next rounds they
    /// are drawn only when the others fall short (see `attempts.rs`).
    pub(crate) probation: BTreeMap<String, Probation>,
}

/// A partner's standing after missing deadlines.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Probation {
    /// Rounds missed since it last completed one.
    strikes: u32,
    /// Rounds it is still left out of (while the others can do without it).
    pub(crate) sit_out: u32,
}

impl Probation {
    /// After another miss: left out of 1, 3, 7, 15, then 31 rounds.
    pub(crate) fn strike(&mut self) {
        self.strikes = self.strikes.saturating_add(1);
        self.sit_out = (1u32 << self.strikes.min(5)) - 1;
    }
}

impl Hub {
    /// A hub for one job, holding the sessions' events until it is dropped.
    pub async fn new(
        sessions: Sessions,
        events: SharedEvents,
        job_id: String,
        spec_toml: String,
    ) -> Self {
        Self {
            sessions,
            inbox: events.lock_owned().await,
            job_id,
            spec_toml,
            accepted: BTreeSet::new(),
            refused: BTreeMap::new(),
            sessions_seen: BTreeMap::new(),
            stopped: false,
            store: None,
            events: JobEvents::default(),
            probation: BTreeMap::new(),
            answered: BTreeMap::new(),
        }
    }

    /// Audits offer answers to `store` from now on.
    pub fn audit_to(&mut self, store: Store) {
        self.store = Some(store);
    }

    fn audit_offer(&self, partner: &str, accepted: bool, reason: &str) {
        let Some(store) = &self.store else {
            return;
        };
        let (job, partner) = (self.job_id.clone(), partner.to_owned());
        let event = if accepted {
            CoordinatorEvent::OfferAccepted { job, partner }
        } else {
            let reason = reason.to_owned();
            CoordinatorEvent::OfferRefused {
                job,
                partner,
                reason,
            }
        };
        // The audit write failing must not hide the answer; the error is logged and the
        // job's commits (which do fail hard) follow.
        if let Err(e) = store.audit(vec![event.into()]) {
            warn!(error = %e, "could not audit an offer answer");
        }
    }

    /// Offers the job on every session open now (a long-running coordinator's partners are
    /// connected before a job is submitted); sessions that open later are offered it as their
    /// `Connected` event arrives.
    pub async fn offer_connected(&mut self) {
        for (partner, session) in self.sessions.open() {
            if self.sessions_seen.get(&partner) == Some(&session) {
                continue;
            }
            self.sessions_seen.insert(partner.clone(), session);
            self.offer(&partner).await;
        }
    }

    async fn offer(&self, partner: &str) {
        let offer = JobOffer {
            job_id: self.job_id.clone(),
            spec_toml: self.spec_toml.clone(),
        };
        self.sessions
            .send(partner, server_message::Body::Offer(offer))
            .await;
    }

    fn is_current(&self, partner: &str, session: u64) -> bool {
        self.sessions.is_current(partner, session)
    }

    /// The next round-relevant event before `deadline` (None at the deadline or when the
    /// server stopped). Joins are offered the job and offer replies recorded on the way.
    pub async fn next(&mut self, deadline: Instant) -> Option<RoundEvent> {
        loop {
            let event = match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) => {
                    self.stopped = true;
                    return None;
                }
                Err(_) => return None,
            };
            match event {
                Event::Connected { partner, session } => {
                    if self.sessions_seen.get(&partner) == Some(&session) {
                        // Already offered by `offer_connected`.
                        continue;
                    }
                    self.offer(&partner).await;
                    // A new session replaces the old one: whatever the old one was doing in a
                    // round is over, even if its close has not been seen yet.
                    if self
                        .sessions_seen
                        .insert(partner.clone(), session)
                        .is_some()
                    {
                        return Some(RoundEvent::Closed { partner });
                    }
                }
                Event::Message {
                    partner,
                    session,
                    body,
                } => {
                    if !self.is_current(&partner, session) {
                        continue;
                    }
                    if let client_message::Body::OfferReply(mut r) = body {
                        r.reason = bounded_reason(&r.reason);
                        if r.job_id == self.job_id && self.answered.get(&partner) == Some(&session)
                        {
                            // One decision per offer: a second answer on the session is a
                            // protocol violation, counted and ended, never audited again.
                            warn!(partner = %partner, "second answer to one job offer; closing the session");
                            self.events
                                .publish(JobEvent::ProtocolViolation { job: &self.job_id });
                            self.sessions
                                .kick(
                                    &partner,
                                    tonic::Status::failed_precondition(
                                        "a job offer is answered once; this session answered it already",
                                    ),
                                )
                                .await;
                            continue;
                        }
                        if r.job_id != self.job_id {
                            warn!(partner = %partner, "offer reply for another job; ignored");
                        } else if r.accept {
                            self.answered.insert(partner.clone(), session);
                            info!(partner = %partner, "partner accepted the job");
                            self.audit_offer(&partner, true, "");
                            self.refused.remove(&partner);
                            self.accepted.insert(partner);
                        } else {
                            self.answered.insert(partner.clone(), session);
                            warn!(partner = %partner, reason = %r.reason, "partner refused the job");
                            self.audit_offer(&partner, false, &r.reason);
                            self.accepted.remove(&partner);
                            let fin = JobFinished {
                                job_id: self.job_id.clone(),
                                reason: "refused by the partner".into(),
                            };
                            self.sessions
                                .send(&partner, server_message::Body::Finished(fin))
                                .await;
                            self.refused.insert(partner, r.reason);
                        }
                        return Some(RoundEvent::OfferAnswered);
                    }
                    return Some(RoundEvent::Message { partner, body });
                }
                Event::Input {
                    partner,
                    session,
                    chunk,
                } => {
                    if self.is_current(&partner, session) {
                        return Some(RoundEvent::Input { partner, chunk });
                    }
                }
                Event::UploadEnded { partner, session } => {
                    if self.is_current(&partner, session) {
                        return Some(RoundEvent::UploadEnded { partner });
                    }
                }
                Event::Closed { partner, session } => {
                    // A close of a replaced session says nothing about the partner's presence.
                    if self
                        .sessions
                        .sender(&partner)
                        .is_some_and(|(id, _)| id != session)
                    {
                        continue;
                    }
                    return Some(RoundEvent::Closed { partner });
                }
            }
        }
    }

    /// Waits until `expected` partners have answered the offer, or `deadline`; false if the
    /// server stopped meanwhile.
    pub async fn await_answers(&mut self, expected: usize, deadline: Instant) -> bool {
        while self.accepted.len() + self.refused.len() < expected {
            if self.next(deadline).await.is_none() {
                return !self.stopped;
            }
        }
        true
    }

    /// The refusals so far, `partner: reason; …`.
    pub fn refusals(&self) -> String {
        self.refused
            .iter()
            .map(|(p, r)| format!("{p}: {r}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The outbound channel of a partner's current session, if this job has offered itself
    /// on that session. A session the service registered but whose `Connected` the hub has not
    /// handled yet has had no offer, so no round message may reach it before one.
    pub fn offered_sender(&self, partner: &str) -> Option<Outbound> {
        let (id, tx) = self.sessions.sender(partner)?;
        (self.sessions_seen.get(partner) == Some(&id)).then_some(tx)
    }

    /// Sends a round message to a partner's current session, if the job has offered itself on
    /// it (see [`Hub::offered_sender`]); false otherwise or if the session just closed.
    pub async fn send(&self, partner: &str, body: server_message::Body) -> bool {
        match self.offered_sender(partner) {
            Some(tx) => tx
                .send(Ok(fedmark_proto::ServerMessage { body: Some(body) }))
                .await
                .is_ok(),
            None => false,
        }
    }

    /// Accepted partners whose current session has been offered the job.
    pub fn available(&self) -> Vec<String> {
        self.accepted
            .iter()
            .filter(|p| self.offered_sender(p).is_some())
            .cloned()
            .collect()
    }
}

/// How long telling one partner that a job ended may take: a partner that does not read its
/// session must not hold up the coordinator.
pub const FINISH_SEND_LIMIT: Duration = Duration::from_secs(2);

/// Longest refusal reason kept from a partner, in characters.
pub const MAX_REASON_CHARS: usize = 512;

/// A partner's refusal reason as the coordinator keeps and shows it: at most
/// [`MAX_REASON_CHARS`] characters, control characters (terminal escapes included) replaced,
/// so one partner cannot bloat every job listing or write into an operator's terminal.
pub fn bounded_reason(reason: &str) -> String {
    let mut out: String = reason
        .chars()
        .take(MAX_REASON_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if reason.chars().count() > MAX_REASON_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_reasons_are_bounded_and_printable() {
        assert_eq!(bounded_reason("ε above the cap"), "ε above the cap");
        assert_eq!(bounded_reason("a\x1b[2Jb\nc"), "a [2Jb c");
        let long = "x".repeat(10 * MAX_REASON_CHARS);
        let cut = bounded_reason(&long);
        assert_eq!(cut.chars().count(), MAX_REASON_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
