//! A round's bulk data: the global model going out and the partners' vectors coming in.
//!
//! Neither travels on a partner's session. Each moves on a short-lived stream of its own
//! (`DownloadModel`, `UploadInput`) that needs one of a few transfer slots, so what the
//! coordinator holds for transfers is bounded by the slots, whatever the number of partners:
//! the per-stream buffers of tonic and HTTP/2 grow to a chunk's size while a stream carries
//! chunks and are freed when it ends, instead of staying with every session for its life. It
//! also keeps the small phase messages on the session from queuing behind megabytes of model.
//!
//! The round task opens a round here ([`Bulk::open`]) with its cohort and model and keeps the
//! returned [`OpenRound`] for as long as the round runs; dropping it closes the round, which
//! ends every transfer of it, waiting or running. The gRPC handlers ([`crate::service`]) only
//! check who asks and move chunks: every chunk of a vector still goes to the job task, which
//! validates it and adds it to the round's running sum exactly as before.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fedmark_proto::{Bytes, ModelChunk, RoundRef};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Transfers (model downloads and input uploads together) running at once. Four keep two
/// cores busy on loopback and a WAN link full; each costs a few chunk-sized buffers.
pub const TRANSFER_SLOTS: usize = 4;

/// How long an admitted transfer may go without moving a chunk before it loses its slot: a
/// partner that stalls must not keep the others waiting until the phase deadline.
pub const TRANSFER_IDLE: Duration = Duration::from_secs(15);

/// Model values per `ModelChunk`: 64 KiB of f64.
pub const MODEL_CHUNK_VALUES: usize = 8 * 1024;

/// The transfer slots and the round whose data they move.
#[derive(Debug)]
pub struct Bulk {
    slots: Arc<Semaphore>,
    idle: Duration,
    round: Mutex<Option<Arc<RoundData>>>,
}

impl Default for Bulk {
    fn default() -> Self {
        Self::new(TRANSFER_SLOTS, TRANSFER_IDLE)
    }
}

/// What may be transferred for one round.
#[derive(Debug)]
struct RoundData {
    rref: RoundRef,
    cohort: BTreeSet<String>,
    /// The model as little-endian f64; every download's chunks are slices of it.
    model: Option<Bytes>,
    /// Members that may upload now: the cohort in a plain round, U2 once a secure round's
    /// shares are delivered.
    uploaders: Mutex<BTreeSet<String>>,
    /// Members that fetched the model (once each).
    downloaded: Mutex<BTreeSet<String>>,
    /// Members with an upload stream open (one at a time each, so no partner holds two slots).
    uploading: Mutex<BTreeSet<String>>,
    closed: watch::Sender<bool>,
}

/// Why a transfer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// No round is running, or another one.
    #[error("no round {0} is running")]
    NotRunning(String),
    /// The partner is not in the round's cohort.
    #[error("partner `{0}` is not in this round's cohort")]
    NotInCohort(String),
    /// The round has no model (a statistics round).
    #[error("this round has no model")]
    NoModel,
    /// The partner already fetched the model of this round.
    #[error("partner `{0}` already downloaded this round's model")]
    AlreadyDownloaded(String),
    /// The partner may not send its vector now.
    #[error("partner `{0}` may not upload in this phase of the round")]
    NotAdmitted(String),
    /// The partner already has an upload stream open.
    #[error("partner `{0}` already has an upload open")]
    AlreadyUploading(String),
    /// The round ended while the transfer waited or ran.
    #[error("the round is over")]
    RoundOver,
}

fn describe(rref: &RoundRef) -> String {
    format!("{}/{}/{}", rref.job_id, rref.round, rref.attempt)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a set insert or remove: a poisoned lock holds a
    // consistent set.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bulk {
    /// A `Bulk` with `slots` transfer slots (at least one) whose transfers may stall for
    /// `idle` at most.
    pub fn new(slots: usize, idle: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            idle,
            round: Mutex::new(None),
        }
    }

    /// Opens `rref` for transfers, replacing (and closing) any round still open. With
    /// `uploads_open` every member may upload at once (plain rounds); otherwise only those
    /// later passed to [`OpenRound::allow_uploads`].
    pub fn open(
        self: &Arc<Self>,
        rref: RoundRef,
        cohort: &[String],
        model: Option<Bytes>,
        uploads_open: bool,
    ) -> OpenRound {
        let cohort: BTreeSet<String> = cohort.iter().cloned().collect();
        let uploaders = if uploads_open {
            cohort.clone()
        } else {
            BTreeSet::new()
        };
        let data = Arc::new(RoundData {
            rref,
            cohort,
            model,
            uploaders: Mutex::new(uploaders),
            downloaded: Mutex::new(BTreeSet::new()),
            uploading: Mutex::new(BTreeSet::new()),
            closed: watch::Sender::new(false),
        });
        if let Some(old) = lock(&self.round).replace(Arc::clone(&data)) {
            old.closed.send_replace(true);
        }
        OpenRound {
            bulk: Arc::clone(self),
            data,
        }
    }

    fn current(&self, rref: Option<&RoundRef>) -> Result<Arc<RoundData>, TransferError> {
        let round = lock(&self.round).clone();
        match (round, rref) {
            (Some(r), Some(want)) if r.rref == *want => Ok(r),
            (Some(r), None) => Ok(r),
            (_, want) => Err(TransferError::NotRunning(
                want.map(describe).unwrap_or_default(),
            )),
        }
    }

    /// Starts `partner`'s download of the model of round `rref`: checks it may have it and
    /// marks it as served (a model goes to each member once a round).
    pub fn download(
        &self,
        partner: &str,
        rref: Option<&RoundRef>,
    ) -> Result<Transfer, TransferError> {
        let round = self.current(rref)?;
        if !round.cohort.contains(partner) {
            return Err(TransferError::NotInCohort(partner.to_owned()));
        }
        if round.model.is_none() {
            return Err(TransferError::NoModel);
        }
        if !lock(&round.downloaded).insert(partner.to_owned()) {
            return Err(TransferError::AlreadyDownloaded(partner.to_owned()));
        }
        Ok(self.transfer(round, partner, false))
    }

    /// Starts `partner`'s upload into the round running now, if it may send its vector.
    pub fn upload(&self, partner: &str) -> Result<Transfer, TransferError> {
        let round = self.current(None)?;
        if !lock(&round.uploaders).contains(partner) {
            return Err(TransferError::NotAdmitted(partner.to_owned()));
        }
        if !lock(&round.uploading).insert(partner.to_owned()) {
            return Err(TransferError::AlreadyUploading(partner.to_owned()));
        }
        Ok(self.transfer(round, partner, true))
    }

    fn transfer(&self, round: Arc<RoundData>, partner: &str, upload: bool) -> Transfer {
        Transfer {
            slots: Arc::clone(&self.slots),
            idle: self.idle,
            closed: round.closed.subscribe(),
            round,
            partner: partner.to_owned(),
            upload,
        }
    }
}

/// A round open for transfers; dropping it closes the round.
#[derive(Debug)]
pub struct OpenRound {
    bulk: Arc<Bulk>,
    data: Arc<RoundData>,
}

impl OpenRound {
    /// From now on exactly `members` may upload (a secure round's U2).
    pub fn allow_uploads(&self, members: &BTreeSet<String>) {
        *lock(&self.data.uploaders) = members.clone();
    }
}

impl Drop for OpenRound {
    fn drop(&mut self) {
        self.data.closed.send_replace(true);
        let mut current = lock(&self.bulk.round);
        if current.as_ref().is_some_and(|r| Arc::ptr_eq(r, &self.data)) {
            *current = None;
        }
    }
}

/// One admitted-to-queue transfer of one partner; it holds a slot from [`Transfer::admit`]
/// until it is dropped.
#[derive(Debug)]
pub struct Transfer {
    slots: Arc<Semaphore>,
    idle: Duration,
    closed: watch::Receiver<bool>,
    round: Arc<RoundData>,
    partner: String,
    upload: bool,
}

impl Transfer {
    /// The round this transfer belongs to.
    pub fn rref(&self) -> &RoundRef {
        &self.round.rref
    }

    /// How long the transfer may go without moving a chunk.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Waits for a transfer slot; fails if the round ends first.
    pub async fn admit(&mut self) -> Result<OwnedSemaphorePermit, TransferError> {
        let slots = Arc::clone(&self.slots);
        tokio::select! {
            permit = slots.acquire_owned() => permit.map_err(|_| TransferError::RoundOver),
            () = self.round_over() => Err(TransferError::RoundOver),
        }
    }

    /// Completes when the round is over (immediately if it already is).
    pub async fn round_over(&mut self) {
        // An error means the sender is gone, which also ends the round.
        let _ = self.closed.wait_for(|closed| *closed).await;
    }

    /// Whether the round is over.
    pub fn is_over(&self) -> bool {
        *self.closed.borrow()
    }

    /// The model's chunks, in order.
    pub fn model_chunks(&self) -> impl Iterator<Item = ModelChunk> + Send + 'static {
        let model = self.round.model.clone().unwrap_or_default();
        let rref = self.round.rref.clone();
        let values = model.len() / 8;
        let chunks = values.div_ceil(MODEL_CHUNK_VALUES).max(1);
        (0..chunks).map(move |i| {
            let a = i * MODEL_CHUNK_VALUES;
            let b = (a + MODEL_CHUNK_VALUES).min(values);
            ModelChunk {
                round: Some(rref.clone()),
                offset: a as u64,
                values: model.slice(a * 8..b * 8),
                last: i + 1 == chunks,
            }
        })
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if self.upload {
            lock(&self.round.uploading).remove(&self.partner);
        }
    }
}

/// The model as the little-endian f64 bytes its chunks carry.
pub fn model_bytes(model: &[f64]) -> Bytes {
    let mut bytes = Vec::with_capacity(model.len() * 8);
    for v in model {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn rref(attempt: u32) -> RoundRef {
        RoundRef {
            job_id: "job".into(),
            round: 3,
            attempt,
        }
    }

    fn cohort() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn downloads_are_for_cohort_members_of_the_running_round_once_each() {
        let bulk = Arc::new(Bulk::new(2, TRANSFER_IDLE));
        let model = model_bytes(&[1.0, 2.0]);
        let _open = bulk.open(rref(0), &cohort(), Some(model), true);
        assert!(bulk.download("a", Some(&rref(0))).is_ok());
        assert_eq!(
            bulk.download("a", Some(&rref(0))).unwrap_err(),
            TransferError::AlreadyDownloaded("a".into())
        );
        assert_eq!(
            bulk.download("z", Some(&rref(0))).unwrap_err(),
            TransferError::NotInCohort("z".into())
        );
        assert!(matches!(
            bulk.download("b", Some(&rref(1))).unwrap_err(),
            TransferError::NotRunning(_)
        ));
    }

    #[test]
    fn a_statistics_round_has_no_model_to_download() {
        let bulk = Arc::new(Bulk::default());
        let _open = bulk.open(rref(0), &cohort(), None, true);
        assert_eq!(
            bulk.download("a", Some(&rref(0))).unwrap_err(),
            TransferError::NoModel
        );
    }

    #[test]
    fn uploads_wait_for_admission_and_one_stream_per_partner() {
        let bulk = Arc::new(Bulk::default());
        let open = bulk.open(rref(0), &cohort(), None, false);
        assert_eq!(
            bulk.upload("a").unwrap_err(),
            TransferError::NotAdmitted("a".into())
        );
        open.allow_uploads(&["a".to_owned()].into_iter().collect());
        let first = bulk.upload("a").unwrap();
        assert_eq!(
            bulk.upload("a").unwrap_err(),
            TransferError::AlreadyUploading("a".into())
        );
        drop(first);
        assert!(
            bulk.upload("a").is_ok(),
            "a finished stream frees the partner"
        );
        assert!(bulk.upload("b").is_err(), "b is not in U2");
    }

    #[test]
    fn closing_the_round_ends_its_transfers_and_refuses_new_ones() {
        let bulk = Arc::new(Bulk::default());
        let open = bulk.open(rref(0), &cohort(), None, true);
        let transfer = bulk.upload("a").unwrap();
        assert!(!transfer.is_over());
        drop(open);
        assert!(transfer.is_over());
        assert!(matches!(
            bulk.upload("b").unwrap_err(),
            TransferError::NotRunning(_)
        ));
    }

    #[test]
    fn a_newer_round_closes_the_older_and_the_older_guard_leaves_it_open() {
        let bulk = Arc::new(Bulk::default());
        let old = bulk.open(rref(0), &cohort(), None, true);
        let stale = bulk.upload("a").unwrap();
        let _new = bulk.open(rref(1), &cohort(), None, true);
        assert!(stale.is_over());
        drop(old);
        assert!(bulk.upload("b").is_ok(), "the newer round is still open");
    }

    #[tokio::test]
    async fn slots_bound_the_transfers_running_at_once() {
        let bulk = Arc::new(Bulk::new(2, TRANSFER_IDLE));
        let _open = bulk.open(rref(0), &cohort(), None, true);
        let mut a = bulk.upload("a").unwrap();
        let mut b = bulk.upload("b").unwrap();
        let mut c = bulk.upload("c").unwrap();
        let pa = a.admit().await.unwrap();
        let _pb = b.admit().await.unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), c.admit()).await;
        assert!(waiting.is_err(), "a third transfer waits for a slot");
        drop(pa);
        assert!(c.admit().await.is_ok(), "a freed slot admits the next");
    }

    #[tokio::test]
    async fn a_transfer_waiting_for_a_slot_ends_with_its_round() {
        let bulk = Arc::new(Bulk::new(1, TRANSFER_IDLE));
        let open = bulk.open(rref(0), &cohort(), None, true);
        let mut a = bulk.upload("a").unwrap();
        let mut b = bulk.upload("b").unwrap();
        let _held = a.admit().await.unwrap();
        drop(open);
        assert_eq!(b.admit().await.unwrap_err(), TransferError::RoundOver);
    }

    #[test]
    fn model_chunks_cover_the_model_in_order_and_end_with_last() {
        let values: Vec<f64> = (0..(2 * MODEL_CHUNK_VALUES + 3))
            .map(|i| i as f64)
            .collect();
        let bulk = Arc::new(Bulk::default());
        let _open = bulk.open(rref(0), &cohort(), Some(model_bytes(&values)), true);
        let t = bulk.download("a", Some(&rref(0))).unwrap();
        let chunks: Vec<ModelChunk> = t.model_chunks().collect();
        assert_eq!(chunks.len(), 3);
        let mut back = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset as usize, back.len());
            assert_eq!(c.last, i == 2);
            back.extend(
                c.values
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap())),
            );
        }
        assert_eq!(back, values);
    }
}
