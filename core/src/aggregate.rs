//! What one partner contributes to a round, as one vector of `u32` words, and how the sum of
//! those vectors is read back.
//!
//! Every round kind sums one vector per partner: a fixed-point *update* part (the weighted model
//! delta; empty outside training) followed by a wide-integer *statistics* part (weights, counts,
//! loss sums, histograms, feature moments). Both parts sum exactly in Z_(2^32) (see
//! [`crate::codec`]), so the same secure sum serves feature statistics, training and evaluation.
//! The coordinator only ever holds the running sum ([`RunningSum`]), never one partner's vector.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, FixedPoint, WideInt};
use crate::metrics::EvalStats;

/// Values the statistics round appends after the feature moments: the partner's usable rows
/// and how many of them carry the positive label, so a label that matches no row (or every
/// row) stops the job before training.
pub const LABEL_COUNTS: usize = 2;

/// What a round aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundKind {
    /// Per numeric feature: count, sum, sum of squares (for standardisation); then the
    /// usable rows and the positives among them ([`LABEL_COUNTS`]).
    Statistics,
    /// Weighted model delta, its weight, and evaluation statistics of the incoming model.
    Training,
    /// Evaluation statistics of the current model only.
    Evaluation,
}

impl RoundKind {
    /// The kind's name as records and logs write it (`statistics`, `training`, `evaluation`).
    pub fn as_str(self) -> &'static str {
        match self {
            RoundKind::Statistics => "statistics",
            RoundKind::Training => "training",
            RoundKind::Evaluation => "evaluation",
        }
    }
}

/// Layout of a round's vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VectorLayout {
    /// Words of the fixed-point update part.
    pub update_len: usize,
    /// Encoding of the update part (absent when `update_len` is 0).
    pub update_codec: Option<FixedPoint>,
    /// Number of statistics values.
    pub stats_len: usize,
    /// Encoding of each statistic.
    pub stats_codec: WideInt,
}

/// A decoded sum.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSum {
    /// Sum of the update parts.
    pub update: Vec<f64>,
    /// Sum of the statistics.
    pub stats: Vec<f64>,
}

impl VectorLayout {
    /// A layout for `parties` partners: an update of `update_len` values bounded by
    /// `update_bound` in absolute value, and `stats_len` statistics.
    pub fn new(
        parties: usize,
        update_len: usize,
        update_bound: f64,
        stats_len: usize,
    ) -> Result<Self, CodecError> {
        let update_codec = if update_len > 0 {
            Some(FixedPoint::for_sum(parties, update_bound)?)
        } else {
            None
        };
        Ok(Self {
            update_len,
            update_codec,
            stats_len,
            stats_codec: WideInt::for_sum(parties)?,
        })
    }

    /// Total words.
    pub fn len(&self) -> usize {
        self.update_len + self.stats_len * self.stats_codec.limbs
    }

    /// True when the vector has no words.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encodes one partner's contribution. `update` must have `update_len` values and `stats`
    /// `stats_len`.
    pub fn encode<R: Rng + ?Sized>(&self, update: &[f64], stats: &[f64], rng: &mut R) -> Vec<u32> {
        debug_assert_eq!(update.len(), self.update_len);
        debug_assert_eq!(stats.len(), self.stats_len);
        let mut out = Vec::with_capacity(self.len());
        if let Some(codec) = &self.update_codec {
            out.extend(update.iter().map(|&v| codec.encode(v, rng)));
        }
        for &s in stats {
            self.stats_codec.encode_into(s, &mut out);
        }
        out
    }

    /// Decodes a summed vector of `self.len()` words.
    pub fn decode(&self, sum: &[u32]) -> DecodedSum {
        let (upd, st) = sum.split_at(self.update_len.min(sum.len()));
        let update = match &self.update_codec {
            Some(codec) => upd.iter().map(|&w| codec.decode(w)).collect(),
            None => Vec::new(),
        };
        let stats = st
            .chunks(self.stats_codec.limbs)
            .map(|c| self.stats_codec.decode(c))
            .collect();
        DecodedSum { update, stats }
    }
}

/// The statistics of a training or evaluation round: an optional update weight followed by the
/// evaluation statistics.
pub fn eval_stats_len(bins: usize) -> usize {
    3 + 2 * bins
}

/// Flattens evaluation statistics for the statistics part.
pub fn eval_stats_to_vec(s: &EvalStats, out: &mut Vec<f64>) {
    out.push(s.count as f64);
    out.push(s.correct as f64);
    out.push(s.loss_sum);
    out.extend(s.pos_hist.iter().map(|&c| c as f64));
    out.extend(s.neg_hist.iter().map(|&c| c as f64));
}

/// Reads evaluation statistics back from a decoded statistics slice of `eval_stats_len(bins)`.
pub fn eval_stats_from_slice(v: &[f64], bins: usize) -> EvalStats {
    let count = |x: f64| x.round().max(0.0) as u64;
    EvalStats {
        count: count(v[0]),
        correct: count(v[1]),
        loss_sum: v[2],
        pos_hist: v[3..3 + bins].iter().map(|&x| count(x)).collect(),
        neg_hist: v[3 + bins..3 + 2 * bins]
            .iter()
            .map(|&x| count(x))
            .collect(),
    }
}

/// Why a chunk could not be added to a running sum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SumError {
    /// The chunk does not start where this partner's previous chunk ended.
    #[error("chunk at offset {got} out of order: expected offset {expected}")]
    OutOfOrder {
        /// Expected offset.
        expected: usize,
        /// Offset received.
        got: usize,
    },
    /// The chunk runs past the end of the vector.
    #[error("chunk of {len} words at offset {offset} runs past the vector length {total}")]
    TooLong {
        /// Chunk offset.
        offset: usize,
        /// Chunk length.
        len: usize,
        /// Vector length.
        total: usize,
    },
    /// The partner said its vector was complete before sending all of it.
    #[error("vector ended at {got} of {total} words")]
    Short {
        /// Words received.
        got: usize,
        /// Vector length.
        total: usize,
    },
}

/// Sums vectors chunk by chunk as they arrive: memory is one vector, whatever the number of
/// partners. Each partner's chunks must arrive in order; [`Progress`] tracks where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningSum {
    sum: Vec<u32>,
}

/// How much of one partner's vector has been added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Words added so far.
    pub received: usize,
    /// The partner sent its last chunk.
    pub complete: bool,
}

impl RunningSum {
    /// A zero sum of `len` words.
    pub fn new(len: usize) -> Self {
        Self { sum: vec![0; len] }
    }

    /// [`RunningSum::new`], or an error if `len` words do not fit in memory.
    pub fn try_new(len: usize) -> Result<Self, crate::alloc::AllocError> {
        Ok(Self {
            sum: crate::alloc::filled(len, 0, "a round's running sum")?,
        })
    }

    /// Adds a chunk of one partner's vector at `offset`, checking it continues `progress`.
    pub fn add(
        &mut self,
        progress: &mut Progress,
        offset: usize,
        chunk: &[u32],
        last: bool,
    ) -> Result<(), SumError> {
        let total = self.sum.len();
        if progress.complete || offset != progress.received {
            return Err(SumError::OutOfOrder {
                expected: progress.received,
                got: offset,
            });
        }
        let end = offset
            .checked_add(chunk.len())
            .filter(|&e| e <= total)
            .ok_or(SumError::TooLong {
                offset,
                len: chunk.len(),
                total,
            })?;
        if last && end != total {
            return Err(SumError::Short { got: end, total });
        }
        for (s, &w) in self.sum[offset..end].iter_mut().zip(chunk) {
            *s = s.wrapping_add(w);
        }
        progress.received = end;
        progress.complete = last;
        Ok(())
    }

    /// Adds a whole vector (e.g. a mask correction) at once.
    pub fn add_all(&mut self, v: &[u32]) {
        for (s, &w) in self.sum.iter_mut().zip(v) {
            *s = s.wrapping_add(w);
        }
    }

    /// The current sum.
    pub fn as_slice(&self) -> &[u32] {
        &self.sum
    }

    /// The sum, by value.
    pub fn into_inner(self) -> Vec<u32> {
        self.sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn round_kinds_are_spelled_as_the_records_write_them() {
        // Audit records, the partner's round guards and the report store these names; another
        // spelling would make older records unreadable.
        assert_eq!(RoundKind::Statistics.as_str(), "statistics");
        assert_eq!(RoundKind::Training.as_str(), "training");
        assert_eq!(RoundKind::Evaluation.as_str(), "evaluation");
    }

    #[test]
    fn a_layout_is_empty_only_without_words() {
        let empty = VectorLayout::new(3, 0, 0.0, 0).unwrap();
        assert_eq!(empty.len(), 0);
        assert!(empty.is_empty());
        let update_only = VectorLayout::new(3, 1, 1.0, 0).unwrap();
        assert_eq!(update_only.len(), 1);
        assert!(!update_only.is_empty());
        let stats_only = VectorLayout::new(3, 0, 0.0, 1).unwrap();
        assert_eq!(stats_only.len(), stats_only.stats_codec.limbs);
        assert!(!stats_only.is_empty());
    }

    #[test]
    fn layout_round_trip_of_a_sum() -> Result<(), CodecError> {
        let parties = 3;
        let layout = VectorLayout::new(parties, 4, 10.0, 2)?;
        let mut rng = StdRng::seed_from_u64(1);
        let updates = [
            [1.0, -2.0, 0.5, 9.9],
            [0.25, 3.0, -0.5, -9.9],
            [0.0, 0.0, 1.0, 1.0],
        ];
        let stats = [[5.0, 1e12], [7.0, -2.5], [1.0, 0.125]];
        let mut sum = RunningSum::new(layout.len());
        for (u, s) in updates.iter().zip(&stats) {
            let v = layout.encode(u, s, &mut rng);
            let mut p = Progress::default();
            // two chunks
            sum.add(&mut p, 0, &v[..3], false)
                .map_err(|_| CodecError::Parties(0))?;
            sum.add(&mut p, 3, &v[3..], true)
                .map_err(|_| CodecError::Parties(0))?;
            assert!(p.complete);
        }
        let d = layout.decode(sum.as_slice());
        for j in 0..4 {
            let exact: f64 = updates.iter().map(|u| u[j]).sum();
            assert!(
                (d.update[j] - exact).abs() <= 3.0 / layout.update_codec.map_or(1.0, |c| c.scale)
            );
        }
        assert_eq!(d.stats, vec![13.0, 1e12 - 2.5 + 0.125]);
        Ok(())
    }

    #[test]
    fn running_sum_refuses_bad_chunks() {
        let mut s = RunningSum::new(4);
        let mut p = Progress::default();
        assert_eq!(
            s.add(&mut p, 1, &[1], false),
            Err(SumError::OutOfOrder {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            s.add(&mut p, 0, &[1; 5], false),
            Err(SumError::TooLong {
                offset: 0,
                len: 5,
                total: 4
            })
        );
        assert_eq!(
            s.add(&mut p, 0, &[1; 2], true),
            Err(SumError::Short { got: 2, total: 4 })
        );
        assert_eq!(s.as_slice(), &[0; 4], "refused chunks change nothing");
        assert!(s.add(&mut p, 0, &[1; 4], true).is_ok());
        assert!(
            s.add(&mut p, 4, &[], true).is_err(),
            "nothing after the last chunk"
        );
    }

    #[test]
    fn eval_stats_round_trip() {
        let s = EvalStats::from_predictions(&[0.1, 0.8, 0.6], &[0.0, 1.0, 0.0], 4);
        let mut v = Vec::new();
        eval_stats_to_vec(&s, &mut v);
        assert_eq!(v.len(), eval_stats_len(4));
        assert_eq!(eval_stats_from_slice(&v, 4), s);
    }
}
