//! The partner's side of a round's bulk streams: downloading the global model and uploading
//! its (masked) vector, each on a stream of its own bound to the session by its token.
//!
//! The coordinator admits a few transfers at a time, so either call may first wait for a
//! slot; the node runs them as tasks and keeps answering its session meanwhile. What is
//! received is checked here before the node uses it ([`ModelAssembly`]).

use std::sync::atomic::{AtomicBool, Ordering};

use fedmark_proto::coordinator_client::CoordinatorClient;
use fedmark_proto::{
    InputChunk, ModelChunk, ModelRequest, RoundRef, SESSION_METADATA, UploadState,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tracing::warn;

/// Words per `InputChunk`: 64 KiB, well under gRPC's 4 MiB message ceiling and small enough
/// that the coordinator's queue of pending chunks stays small.
pub const INPUT_CHUNK_WORDS: usize = 16 * 1024;

/// The session token as the bulk streams' metadata carries it.
#[derive(Debug, Clone)]
pub struct SessionToken(AsciiMetadataValue);

impl SessionToken {
    /// The token of a `Welcome`; it must be 32 bytes.
    pub fn from_welcome(token: &[u8]) -> Result<Self, String> {
        if token.len() != 32 {
            return Err(format!(
                "the welcome's session token has {} bytes, not 32",
                token.len()
            ));
        }
        AsciiMetadataValue::try_from(hex::encode(token))
            .map(Self)
            .map_err(|e| format!("session token: {e}"))
    }

    fn bind<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(SESSION_METADATA, self.0.clone());
        request
    }
}

/// A model arriving in chunks, checked as it comes: each chunk must be for the round, continue
/// exactly where the previous one ended, hold whole f64 values and not run past the announced
/// length; the last one must complete it.
#[derive(Debug)]
pub struct ModelAssembly {
    rref: RoundRef,
    expected: usize,
    values: Vec<f64>,
}

impl ModelAssembly {
    /// An empty model of `expected` parameters for round `rref`.
    pub fn new(rref: RoundRef, expected: usize) -> Self {
        Self {
            rref,
            // The announced length is the coordinator's word: grow as chunks arrive rather
            // than reserving whatever it claims.
            values: Vec::with_capacity(expected.min(1 << 20)),
            expected,
        }
    }

    /// Adds one chunk; true when the model is complete.
    pub fn push(&mut self, chunk: &ModelChunk) -> Result<bool, String> {
        if chunk.round.as_ref() != Some(&self.rref) {
            return Err("model chunk for another round".into());
        }
        if !chunk.values.len().is_multiple_of(8) {
            return Err("model chunk is not a whole number of f64 values".into());
        }
        let count = chunk.values.len() / 8;
        if usize::try_from(chunk.offset).ok() != Some(self.values.len())
            || self.values.len() + count > self.expected
        {
            return Err(format!(
                "model chunk at offset {} with {count} values does not continue {} of {} values",
                chunk.offset,
                self.values.len(),
                self.expected
            ));
        }
        fedmark_core::alloc::reserve(&mut self.values, count, "the downloaded model")
            .map_err(|e| e.to_string())?;
        self.values.extend(chunk.values.chunks_exact(8).map(|b| {
            let mut le = [0u8; 8];
            le.copy_from_slice(b);
            f64::from_le_bytes(le)
        }));
        if chunk.last && self.values.len() != self.expected {
            return Err(format!(
                "model ended after {} of {} values",
                self.values.len(),
                self.expected
            ));
        }
        Ok(chunk.last)
    }

    /// The complete model.
    pub fn into_values(self) -> Vec<f64> {
        self.values
    }
}

/// Downloads round `rref`'s model of `expected` parameters.
pub async fn download_model(
    mut client: CoordinatorClient<Channel>,
    token: SessionToken,
    rref: RoundRef,
    expected: usize,
) -> Result<Vec<f64>, String> {
    let request = token.bind(ModelRequest {
        round: Some(rref.clone()),
    });
    let mut stream = client
        .download_model(request)
        .await
        .map_err(|s| format!("model download refused: {}", s.message()))?
        .into_inner();
    let mut model = ModelAssembly::new(rref, expected);
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                if model.push(&chunk)? {
                    return Ok(model.into_values());
                }
            }
            Ok(None) => return Err("the model stream ended before its last chunk".into()),
            Err(s) => return Err(format!("model download failed: {}", s.message())),
        }
    }
}

/// How an upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// The coordinator read every chunk.
    Whole,
    /// A scripted dropout left after half the chunks (simulations).
    LeftMidway,
}

/// Uploads `words` for round `rref` once the coordinator admits it; the last chunk carries
/// `consent_snapshot`, and `sent` is set as it is handed to the stream. With `leave_midway`
/// it stops after half the chunks, as a partner that crashed mid-stream would.
pub async fn upload_input(
    mut client: CoordinatorClient<Channel>,
    token: SessionToken,
    rref: RoundRef,
    words: Vec<u32>,
    consent_snapshot: String,
    leave_midway: bool,
    sent: &AtomicBool,
) -> Result<Uploaded, String> {
    let (tx, rx) = mpsc::channel::<InputChunk>(2);
    let mut replies = client
        .upload_input(token.bind(ReceiverStream::new(rx)))
        .await
        .map_err(|s| format!("upload refused: {}", s.message()))?
        .into_inner();
    let state = |reply: Result<Option<fedmark_proto::UploadStatus>, tonic::Status>| match reply {
        Ok(Some(s)) => Ok(s.state()),
        Ok(None) => Err("the coordinator ended the upload without a word".to_owned()),
        Err(s) => Err(format!("upload failed: {}", s.message())),
    };
    // Nothing is sent before the coordinator has a slot for this partner.
    match state(replies.message().await)? {
        UploadState::Admitted => {}
        other => return Err(format!("upload answered {other:?} before admitting it")),
    }
    // A scripted mid-input dropout needs at least two chunks to leave between them.
    let chunk_words = if leave_midway {
        words.len().div_ceil(2).max(1)
    } else {
        INPUT_CHUNK_WORDS
    };
    let chunks = words.len().div_ceil(chunk_words).max(1);
    for i in 0..chunks {
        if leave_midway && i == chunks / 2 && i > 0 {
            warn!(round = rref.round, "injected dropout: leaving mid-input");
            return Ok(Uploaded::LeftMidway);
        }
        let a = (i * chunk_words).min(words.len());
        let b = (a + chunk_words).min(words.len());
        let last = i + 1 == chunks;
        let chunk = InputChunk {
            round: Some(rref.clone()),
            offset: a as u64,
            values: words[a..b].to_vec(),
            last,
            consent_snapshot: if last {
                consent_snapshot.clone()
            } else {
                String::new()
            },
        };
        if last {
            // Before the send: the round may complete (and say so on the session) as soon as
            // the coordinator has this chunk. Should the send fail, the vector is partial and
            // the round is aborted, so it is never counted.
            sent.store(true, Ordering::Release);
        }
        if tx.send(chunk).await.is_err() {
            // The request stream is gone: the coordinator ended the call; its status says why.
            state(replies.message().await)?;
            return Err("the coordinator closed the upload early".into());
        }
    }
    drop(tx);
    match state(replies.message().await)? {
        UploadState::Received => Ok(Uploaded::Whole),
        other => Err(format!("upload ended with {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn rref() -> RoundRef {
        RoundRef {
            job_id: "j".into(),
            round: 1,
            attempt: 0,
        }
    }

    fn chunk(offset: u64, values: &[f64], last: bool) -> ModelChunk {
        ModelChunk {
            round: Some(rref()),
            offset,
            values: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            last,
        }
    }

    #[test]
    fn a_model_in_order_assembles_bit_for_bit() {
        let mut m = ModelAssembly::new(rref(), 3);
        assert!(!m.push(&chunk(0, &[1.5, -2.0], false)).unwrap());
        assert!(m.push(&chunk(2, &[f64::MIN_POSITIVE], true)).unwrap());
        assert_eq!(m.into_values(), vec![1.5, -2.0, f64::MIN_POSITIVE]);
    }

    #[test]
    fn gaps_overruns_short_models_and_other_rounds_are_refused() {
        let mut m = ModelAssembly::new(rref(), 3);
        assert!(m.push(&chunk(1, &[1.0], false)).is_err(), "gap");
        let mut m = ModelAssembly::new(rref(), 1);
        assert!(m.push(&chunk(0, &[1.0, 2.0], true)).is_err(), "overrun");
        let mut m = ModelAssembly::new(rref(), 3);
        assert!(m.push(&chunk(0, &[1.0], true)).is_err(), "ends early");
        let mut m = ModelAssembly::new(rref(), 1);
        let mut other = chunk(0, &[1.0], true);
        other.round = Some(RoundRef {
            attempt: 1,
            ..rref()
        });
        assert!(m.push(&other).is_err(), "another attempt");
        let mut m = ModelAssembly::new(rref(), 1);
        let mut ragged = chunk(0, &[1.0], true);
        ragged.values = ragged.values.slice(..7);
        assert!(m.push(&ragged).is_err(), "not whole f64s");
    }

    #[test]
    fn a_session_token_must_be_32_bytes() {
        assert!(SessionToken::from_welcome(&[7; 32]).is_ok());
        assert!(SessionToken::from_welcome(&[7; 31]).is_err());
        assert!(SessionToken::from_welcome(&[]).is_err());
    }
}
