//! Deciles of scores, exact, in memory independent of the number of rows.
//!
//! **Definition.** Of `n` scored rows, a row whose score `s` is beaten by `H(s)` rows (scores
//! strictly higher) is in decile `1 + ⌊10·H(s)/n⌋`: decile 1 holds the highest scores, decile
//! 10 the lowest. Without ties this puts the rows ranked `1..=⌈n/10⌉` in decile 1, and so on;
//! tied rows share a decile, so the decile depends on the score alone and a file scored twice,
//! in any order, gets the same deciles (a decile then holds a little more or less than a tenth
//! of the rows where ties straddle its edge).
//!
//! **Cut points.** `decile(s) > d` exactly when `H(s) ≥ k_d = ⌈d·n/10⌉`, that is when `s` is
//! below the `k_d`-th highest score. So nine order statistics decide every row's decile, and
//! [`DecileCuts::select`] finds them exactly without holding the scores: a radix selection on
//! the scores' bit patterns, 16 bits a pass, four passes over the scores (which the caller
//! replays, e.g. from a spool file), in 9 × 65,536 counters (4.5 MiB) whatever `n` is.

/// Number of bits a pass of the radix selection resolves.
const BITS: u32 = 16;
/// Counters per target per pass.
const BUCKETS: usize = 1 << BITS;
/// Passes to resolve 64 bits.
const PASSES: u32 = 64 / BITS;

/// The nine cut points of the deciles of a set of scores.
#[derive(Debug, Clone, PartialEq)]
pub struct DecileCuts {
    /// Scores counted.
    n: u64,
    /// `cuts[d - 1]` is the `⌈d·n/10⌉`-th highest score, d = 1..=9 (empty when n = 0).
    cuts: Vec<f64>,
}

/// An order-preserving map of a non-NaN `f64` onto `u64` (−0 and +0 onto one key).
fn key(x: f64) -> u64 {
    let x = if x == 0.0 { 0.0 } else { x };
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// The inverse of [`key`].
fn from_key(k: u64) -> f64 {
    if k >> 63 == 1 {
        f64::from_bits(k & !(1 << 63))
    } else {
        f64::from_bits(!k)
    }
}

impl DecileCuts {
    /// Finds the cut points of the scores that `replay` feeds to its sink. `replay` is called
    /// four times and must feed the same scores each time (in any order); scores must not be
    /// NaN. The first error `replay` returns is returned.
    pub fn select<E>(
        mut replay: impl FnMut(&mut dyn FnMut(f64)) -> Result<(), E>,
    ) -> Result<Self, E> {
        // Pass 0's histogram is the same for every target: count it once and derive n.
        let mut first = vec![0u64; BUCKETS];
        replay(&mut |s| first[(key(s) >> (64 - BITS)) as usize] += 1)?;
        let n: u64 = first.iter().sum();
        if n == 0 {
            return Ok(Self {
                n,
                cuts: Vec::new(),
            });
        }
        // Target d: ascending rank (0-based) n - k_d of the k_d-th highest score.
        let ranks: Vec<u64> = (1..=9u64).map(|d| n - (d * n).div_ceil(10)).collect();
        // Per target: the key bits resolved so far and the rank left within them.
        let mut prefix = vec![0u64; ranks.len()];
        let mut rank = ranks;
        for (p, r) in prefix.iter_mut().zip(rank.iter_mut()) {
            let (bucket, left) = locate(&first, *r);
            *p = bucket;
            *r = left;
        }
        drop(first);
        let mut counts = vec![0u64; prefix.len() * BUCKETS];
        for pass in 1..PASSES {
            counts.iter_mut().for_each(|c| *c = 0);
            let shift = 64 - BITS * (pass + 1);
            let known = 64 - BITS * pass;
            replay(&mut |s| {
                let k = key(s);
                for (t, p) in prefix.iter().enumerate() {
                    if k >> known == *p {
                        counts[t * BUCKETS + ((k >> shift) as usize & (BUCKETS - 1))] += 1;
                    }
                }
            })?;
            for (t, (p, r)) in prefix.iter_mut().zip(rank.iter_mut()).enumerate() {
                let (bucket, left) = locate(&counts[t * BUCKETS..(t + 1) * BUCKETS], *r);
                *p = (*p << BITS) | bucket;
                *r = left;
            }
        }
        Ok(Self {
            n,
            cuts: prefix.into_iter().map(from_key).collect(),
        })
    }

    /// The cut points from scores held in memory (for tests and small inputs).
    pub fn from_scores(scores: &[f64]) -> Self {
        let mut sorted = scores.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as u64;
        let cuts = if n == 0 {
            Vec::new()
        } else {
            (1..=9u64)
                .map(|d| sorted[(n - (d * n).div_ceil(10)) as usize])
                .collect()
        };
        Self { n, cuts }
    }

    /// Scores the cut points were found among.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// The cut points: the `⌈d·n/10⌉`-th highest score for d = 1..=9 (empty for no scores).
    pub fn cuts(&self) -> &[f64] {
        &self.cuts
    }

    /// The decile (1 = highest scores … 10) of a score among those counted.
    pub fn decile(&self, score: f64) -> u8 {
        1 + self.cuts.iter().filter(|&&cut| score < cut).count() as u8
    }
}

/// The bucket of `histogram` holding ascending rank `rank`, and the rank within it. A rank
/// beyond the histogram's total (replays that disagree) gives the last non-empty bucket.
fn locate(histogram: &[u64], rank: u64) -> (u64, u64) {
    let mut below = 0u64;
    let mut last = (0, 0);
    for (b, &c) in histogram.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if rank < below + c {
            return (b as u64, rank - below);
        }
        last = (b as u64, c - 1);
        below += c;
    }
    last
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The definition, by brute force.
    fn by_definition(scores: &[f64]) -> Vec<u8> {
        let n = scores.len();
        scores
            .iter()
            .map(|s| {
                let higher = scores.iter().filter(|t| *t > s).count();
                (1 + 10 * higher / n) as u8
            })
            .collect()
    }

    fn selected(scores: &[f64]) -> DecileCuts {
        let r: Result<_, ()> = DecileCuts::select(|sink| {
            scores.iter().for_each(|&s| sink(s));
            Ok(())
        });
        r.unwrap()
    }

    #[test]
    fn keys_keep_the_order() {
        let xs = [
            f64::NEG_INFINITY,
            -1e300,
            -1.0,
            -f64::MIN_POSITIVE,
            0.0,
            f64::MIN_POSITIVE,
            1e-300,
            0.5,
            1.0,
            f64::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(key(w[0]) < key(w[1]), "{} < {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(from_key(key(x)), x);
        }
        assert_eq!(key(-0.0), key(0.0));
    }

    #[test]
    fn a_hundred_distinct_scores_make_ten_rows_a_decile() {
        let scores: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        let cuts = selected(&scores);
        assert_eq!(cuts.count(), 100);
        for (i, s) in scores.iter().enumerate() {
            assert_eq!(cuts.decile(*s) as usize, 10 - i / 10, "score {s}");
        }
        assert_eq!(cuts.cuts()[0], 0.9);
    }

    #[test]
    fn few_rows_and_ties() {
        assert_eq!(selected(&[]).cuts(), &[] as &[f64]);
        let one = selected(&[0.3]);
        assert_eq!(one.decile(0.3), 1);
        // Three rows: the top one in decile 1, the second in 4, the third in 7.
        let three = [0.9, 0.5, 0.1];
        let cuts = selected(&three);
        let got: Vec<u8> = three.iter().map(|s| cuts.decile(*s)).collect();
        assert_eq!(got, vec![1, 4, 7]);
        assert_eq!(got, by_definition(&three));
        // All tied: everyone in decile 1.
        let same = [0.25; 7];
        assert!(same.iter().all(|s| selected(&same).decile(*s) == 1));
    }

    #[test]
    fn replay_errors_are_returned() {
        let mut calls = 0;
        let r = DecileCuts::select(|sink| {
            calls += 1;
            sink(0.5);
            if calls == 2 { Err("disk") } else { Ok(()) }
        });
        assert_eq!(r, Err("disk"));
    }

    proptest! {
        #[test]
        fn selection_matches_the_definition(
            raw in prop::collection::vec((0u32..40, any::<bool>(), -1e6f64..1e6), 1..300)
        ) {
            // Many ties (few distinct values), some wide-ranged values.
            let scores: Vec<f64> = raw
                .iter()
                .map(|&(tie, wide, x)| if wide { x } else { f64::from(tie) / 40.0 })
                .collect();
            let cuts = selected(&scores);
            prop_assert_eq!(&cuts, &DecileCuts::from_scores(&scores));
            let got: Vec<u8> = scores.iter().map(|s| cuts.decile(*s)).collect();
            prop_assert_eq!(got, by_definition(&scores));
        }
    }
}
