//! Evaluation metrics: ROC AUC, log-loss, accuracy and lift at the top decile.
//!
//! Two forms. [`exact`] computes them from scores and labels (the simulator's baselines and
//! tests). [`EvalStats`] holds *sufficient statistics* — sums and score histograms of positives
//! and negatives — that add across partners, so the federated figures come from the secure sum
//! of every partner's statistics and no partner's own numbers are ever seen.

use serde::{Deserialize, Serialize};

use crate::model::bce_from_logit;

/// Metrics of one model on one set of rows.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// Area under the ROC curve.
    pub auc: f64,
    /// Mean binary cross-entropy.
    pub log_loss: f64,
    /// Share of rows classified right at threshold 0.5.
    pub accuracy: f64,
    /// Positive rate in the top-scored 10 % of rows over the overall positive rate.
    pub lift_top_decile: f64,
    /// Rows evaluated.
    pub count: u64,
}

impl Metrics {
    /// The metrics of a round or job that released no holdout statistics: NaN (shown as
    /// "–"), no rows.
    pub fn not_evaluated() -> Self {
        Self {
            auc: f64::NAN,
            log_loss: f64::NAN,
            accuracy: f64::NAN,
            lift_top_decile: f64::NAN,
            count: 0,
        }
    }
}

/// A metric for people: four decimals, or "–" where it is undefined (NaN: a round or job
/// that released no holdout statistics, or a one-class holdout).
pub fn show(v: f64) -> String {
    if v.is_nan() {
        "–".to_owned()
    } else {
        format!("{v:.4}")
    }
}

/// Clamp on a probability before taking its log, so one confident mistake cannot make the
/// loss infinite (it costs at most ~34.5).
const P_MIN: f64 = 1e-15;

fn logit_of(p: f64) -> f64 {
    let p = p.clamp(P_MIN, 1.0 - P_MIN);
    (p / (1.0 - p)).ln()
}

/// Metrics computed directly from probabilities and 0/1 labels.
pub fn exact(scores: &[f64], labels: &[f64]) -> Metrics {
    let n = scores.len();
    if n == 0 {
        return Metrics::default();
    }
    let log_loss = scores
        .iter()
        .zip(labels)
        .map(|(&p, &y)| bce_from_logit(logit_of(p), y))
        .sum::<f64>()
        / n as f64;
    let correct = scores
        .iter()
        .zip(labels)
        .filter(|&(&p, &y)| (p >= 0.5) == (y > 0.5))
        .count();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mann-Whitney U with tied scores sharing their average rank.
    let positives = labels.iter().filter(|&&y| y > 0.5).count();
    let negatives = n - positives;
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg_rank * order[i..=j].iter().filter(|&&k| labels[k] > 0.5).count() as f64;
        i = j + 1;
    }
    let auc = if positives == 0 || negatives == 0 {
        f64::NAN
    } else {
        let p = positives as f64;
        (rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64)
    };
    let top = n.div_ceil(10);
    let top_pos = order
        .iter()
        .rev()
        .take(top)
        .filter(|&&k| labels[k] > 0.5)
        .count();
    let base = positives as f64 / n as f64;
    let lift = if base > 0.0 {
        (top_pos as f64 / top as f64) / base
    } else {
        f64::NAN
    };
    Metrics {
        auc,
        log_loss,
        accuracy: correct as f64 / n as f64,
        lift_top_decile: lift,
        count: n as u64,
    }
}

/// Additive evaluation statistics of one partner (or, summed, of all).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EvalStats {
    /// Rows evaluated.
    pub count: u64,
    /// Rows classified right at threshold 0.5.
    pub correct: u64,
    /// Sum of per-row log-loss.
    pub loss_sum: f64,
    /// Histogram of positives' scores over `bins` equal-width bins of [0, 1].
    pub pos_hist: Vec<u64>,
    /// Histogram of negatives' scores.
    pub neg_hist: Vec<u64>,
}

impl EvalStats {
    /// Empty statistics with `bins` histogram bins.
    pub fn new(bins: usize) -> Self {
        Self {
            pos_hist: vec![0; bins],
            neg_hist: vec![0; bins],
            ..Self::default()
        }
    }

    /// Statistics of probabilities `scores` against `labels`.
    pub fn from_predictions(scores: &[f64], labels: &[f64], bins: usize) -> Self {
        Self::from_predictions_capped(scores, labels, bins, f64::INFINITY)
    }

    /// Like [`EvalStats::from_predictions`], with each row's log-loss capped at `loss_cap`
    /// (what bounds one row's share of a released loss sum).
    pub fn from_predictions_capped(
        scores: &[f64],
        labels: &[f64],
        bins: usize,
        loss_cap: f64,
    ) -> Self {
        let mut s = Self::new(bins);
        for (&p, &y) in scores.iter().zip(labels) {
            s.count += 1;
            let positive = y > 0.5;
            if (p >= 0.5) == positive {
                s.correct += 1;
            }
            s.loss_sum += bce_from_logit(logit_of(p), y).min(loss_cap);
            let b = ((p * bins as f64) as usize).min(bins - 1);
            if positive {
                s.pos_hist[b] += 1;
            } else {
                s.neg_hist[b] += 1;
            }
        }
        s
    }

    /// Adds another partner's statistics (histograms must have equal bins).
    pub fn add(&mut self, other: &EvalStats) {
        self.count += other.count;
        self.correct += other.correct;
        self.loss_sum += other.loss_sum;
        for (a, b) in self.pos_hist.iter_mut().zip(&other.pos_hist) {
            *a += b;
        }
        for (a, b) in self.neg_hist.iter_mut().zip(&other.neg_hist) {
            *a += b;
        }
    }

    /// Metrics derived from the statistics. Scores within one bin count as tied (AUC) and as
    /// evenly mixed (lift), so the histogram figures approach the exact ones as bins grow.
    pub fn metrics(&self) -> Metrics {
        if self.count == 0 {
            return Metrics::default();
        }
        let p: u64 = self.pos_hist.iter().sum();
        let n: u64 = self.neg_hist.iter().sum();
        let auc = if p == 0 || n == 0 {
            f64::NAN
        } else {
            let mut neg_below = 0u64;
            let mut area = 0.0;
            for (&pb, &nb) in self.pos_hist.iter().zip(&self.neg_hist) {
                area += pb as f64 * (neg_below as f64 + 0.5 * nb as f64);
                neg_below += nb;
            }
            area / (p as f64 * n as f64)
        };
        let total = (p + n) as f64;
        let top = (total / 10.0).ceil();
        let mut taken = 0.0;
        let mut top_pos = 0.0;
        for (&pb, &nb) in self.pos_hist.iter().zip(&self.neg_hist).rev() {
            let here = (pb + nb) as f64;
            if here == 0.0 {
                continue;
            }
            let take = (top - taken).min(here);
            top_pos += pb as f64 * take / here;
            taken += take;
            if taken >= top {
                break;
            }
        }
        let base = p as f64 / total;
        Metrics {
            auc,
            log_loss: self.loss_sum / self.count as f64,
            accuracy: self.correct as f64 / self.count as f64,
            lift_top_decile: if base > 0.0 && top > 0.0 {
                (top_pos / top) / base
            } else {
                f64::NAN
            },
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// AUC by brute force over every (positive, negative) pair.
    fn auc_pairs(scores: &[f64], labels: &[f64]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                if labels[i] > 0.5 && labels[j] < 0.5 {
                    pairs += 1.0;
                    wins += if scores[i] > scores[j] {
                        1.0
                    } else if scores[i] == scores[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn exact_auc_matches_pair_counting() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let n = rng.random_range(2..60);
            // coarse scores so ties happen
            let scores: Vec<f64> = (0..n)
                .map(|_| (rng.random_range(0..10) as f64) / 10.0)
                .collect();
            let mut labels: Vec<f64> = (0..n)
                .map(|_| if rng.random_bool(0.4) { 1.0 } else { 0.0 })
                .collect();
            labels[0] = 1.0;
            labels[1] = 0.0;
            let m = exact(&scores, &labels);
            assert!((m.auc - auc_pairs(&scores, &labels)).abs() < 1e-12);
        }
    }

    #[test]
    fn known_small_case() {
        // Hand-computed: positives at 0.9, 0.4; negatives at 0.6, 0.1 → 3 of 4 pairs ordered.
        let m = exact(&[0.9, 0.6, 0.4, 0.1], &[1.0, 0.0, 1.0, 0.0]);
        assert!((m.auc - 0.75).abs() < 1e-12);
        // 0.9 and 0.1 are right at threshold 0.5; 0.6 (negative) and 0.4 (positive) are wrong
        assert_eq!(m.accuracy, 0.5);
        // top decile = 1 row (0.9, positive): rate 1 over base 0.5 → lift 2
        assert_eq!(m.lift_top_decile, 2.0);
        let ll = -(0.9f64.ln() + 0.4f64.ln() + 0.4f64.ln() + 0.9f64.ln()) / 4.0;
        assert!((m.log_loss - ll).abs() < 1e-12);
    }

    #[test]
    fn histogram_metrics_approach_exact_and_add_up() {
        let mut rng = StdRng::seed_from_u64(5);
        let n = 5000;
        let labels: Vec<f64> = (0..n)
            .map(|_| if rng.random_bool(0.15) { 1.0 } else { 0.0 })
            .collect();
        let scores: Vec<f64> = labels
            .iter()
            .map(|&y| crate::model::sigmoid(rng.random_range(-3.0..1.0) + 1.5 * y))
            .collect();
        let ex = exact(&scores, &labels);
        // Split in two "partners", sum their statistics.
        let mut a = EvalStats::from_predictions(&scores[..2000], &labels[..2000], 1000);
        let b = EvalStats::from_predictions(&scores[2000..], &labels[2000..], 1000);
        a.add(&b);
        let whole = EvalStats::from_predictions(&scores, &labels, 1000);
        assert_eq!(
            (a.count, a.correct, &a.pos_hist, &a.neg_hist),
            (whole.count, whole.correct, &whole.pos_hist, &whole.neg_hist)
        );
        assert!((a.loss_sum - whole.loss_sum).abs() < 1e-9);
        let h = a.metrics();
        assert!((h.auc - ex.auc).abs() < 1e-3, "{} vs {}", h.auc, ex.auc);
        assert!((h.log_loss - ex.log_loss).abs() < 1e-9);
        assert_eq!(h.accuracy, ex.accuracy);
        assert!((h.lift_top_decile - ex.lift_top_decile).abs() < 0.05);
    }
}
