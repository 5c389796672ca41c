//! What a partner may be asked next in a job: the partner's own defence against a coordinator
//! that replays, reshapes or retries rounds to isolate one partner's contribution.
//!
//! Secure aggregation hides each partner's vector inside a sum, but a coordinator that obtains
//! two unmasked sums over cohorts S and S ∖ {C} of the *same* deterministic contribution learns
//! C's contribution exactly: the feature statistics of round 0, the evaluation statistics of
//! one model, or a retried round's update. So each partner keeps a [`RoundGuard`] per job and
//! checks every round start against it before it takes part:
//!
//! - **Kinds follow the plan.** Round 0 is the statistics round, rounds 1..=R (the spec's
//!   `job.rounds`, or a gbdt job's tree levels, [`JobSpec::planned_rounds`]) are training
//!   rounds, round R + 1 is the final evaluation; nothing else.
//! - **Round instances only move forward.** (round, attempt) strictly increases: an old
//!   instance is never answered again, and an earlier round never comes back.
//! - **Attempts are capped** at the spec's `aggregation.max_attempts` per round.
//! - **A secure round is unmasked once.** Once the partner has revealed its shares for one
//!   attempt of a round, it sits out every later attempt of that round (so one statistics
//!   round, one final evaluation, one update per training round). The exception is a training
//!   round of a `record` job, where every update is differentially private on its own: a
//!   later attempt gets the very same noised update again (the partner's ledger keeps it and
//!   charges it once), which tells the coordinator nothing new. Under `partner-distributed`
//!   noise a partner's share of the noise is sized for the whole cohort, so its update is not
//!   private alone, and it sits out like the others.
//!
//! Plain (non-secure) rounds show each vector to the coordinator anyway; only the order and
//! kind rules apply to them. The guard is pure state with no I/O; the node keeps one per job
//! across its sessions and restarts (`fedmark_client::rounds`).

use std::collections::{BTreeMap, BTreeSet};

use crate::aggregate::RoundKind;
use crate::spec::{JobSpec, PrivacyMode};

/// Why a partner will not take part in a round it was asked to join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardRefusal {
    /// The round number has no place in the job's plan.
    #[error("round {round} is outside the job's plan of {rounds} training rounds")]
    BeyondPlan {
        /// Asked round.
        round: u64,
        /// The spec's training rounds.
        rounds: u64,
    },
    /// The round's kind is not the one its number gives.
    #[error("round {round} must be a {expected} round, not {asked}")]
    WrongKind {
        /// Asked round.
        round: u64,
        /// Kind the plan gives.
        expected: &'static str,
        /// Kind asked.
        asked: &'static str,
    },
    /// A round instance at or before one already seen.
    #[error(
        "round {round} attempt {attempt} does not come after round {last_round} attempt {last_attempt}"
    )]
    NotAfter {
        /// Asked round.
        round: u64,
        /// Asked attempt.
        attempt: u32,
        /// Latest round seen.
        last_round: u64,
        /// Its attempt.
        last_attempt: u32,
    },
    /// More attempts at one round than the spec allows.
    #[error("round {round} asked for a {count}th attempt; the job allows {max}")]
    TooManyAttempts {
        /// Round.
        round: u64,
        /// This attempt's count.
        count: u32,
        /// The spec's cap.
        max: u32,
    },
    /// This partner already revealed its shares for an attempt of this round.
    #[error("this partner already helped unmask round {round}; it sits out its retries")]
    AlreadyUnmasked {
        /// Round.
        round: u64,
    },
    /// This partner already helped unmask another round that started from the same model.
    #[error(
        "this partner already helped unmask round {earlier}, which started from the same model as round {round}; it does not help unmask a second sum from one model"
    )]
    ModelAlreadyUnmasked {
        /// Round asked for.
        round: u64,
        /// The earlier round from the same model.
        earlier: u64,
    },
}

/// The name of a round kind in messages and audit records.
pub fn kind_name(kind: RoundKind) -> &'static str {
    match kind {
        RoundKind::Statistics => "statistics",
        RoundKind::Training => "training",
        RoundKind::Evaluation => "evaluation",
    }
}

/// The kind of round `round` in a job of `rounds` training rounds, or `None` outside the
/// plan: a statistics round 0 only if the job measures moments, an evaluation round
/// `rounds + 1` only if it has a final evaluation (see [`JobSpec::measures_moments`] and
/// [`JobSpec::final_evaluation`]: DP jobs have neither or only a noised one).
pub fn planned_kind(
    rounds: u64,
    round: u64,
    statistics: bool,
    evaluation: bool,
) -> Option<RoundKind> {
    match round {
        0 if statistics => Some(RoundKind::Statistics),
        0 => None,
        r if r <= rounds => Some(RoundKind::Training),
        r if r == rounds + 1 && evaluation => Some(RoundKind::Evaluation),
        _ => None,
    }
}

fn yes() -> bool {
    true
}

/// A partner's record of the rounds of one job it was asked into and unmasked. Serialisable,
/// so a partner keeps it across restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundGuard {
    rounds: u64,
    max_attempts: u32,
    secure: bool,
    redo_training: bool,
    #[serde(default = "yes")]
    statistics: bool,
    #[serde(default = "yes")]
    evaluation: bool,
    /// Jobs without DP: help unmask at most one round per start model (see
    /// [`RoundGuard::may_unmask`]).
    #[serde(default)]
    model_once: bool,
    last: Option<(u64, u32)>,
    attempts: BTreeMap<u64, u32>,
    unmasked: BTreeSet<u64>,
    /// SHA-256 of each start model this partner helped unmask a round from, with the round.
    #[serde(default)]
    unmasked_models: BTreeMap<String, u64>,
}

impl RoundGuard {
    /// A guard for a job, from the spec the partner accepted.
    pub fn new(spec: &JobSpec) -> Self {
        Self {
            rounds: spec.planned_rounds(),
            max_attempts: spec.aggregation.max_attempts,
            secure: spec.aggregation.secure,
            redo_training: spec.privacy.mode == PrivacyMode::Record,
            statistics: spec.measures_moments(),
            evaluation: spec.final_evaluation(),
            model_once: spec.privacy.mode == PrivacyMode::None,
            last: None,
            attempts: BTreeMap::new(),
            unmasked: BTreeSet::new(),
            unmasked_models: BTreeMap::new(),
        }
    }

    /// Checks a round start and, when the partner may take part, records it. A refused start
    /// that is in order still moves the guard past it, so it cannot be replayed either.
    pub fn admit(&mut self, round: u64, attempt: u32, kind: RoundKind) -> Result<(), GuardRefusal> {
        let expected = planned_kind(self.rounds, round, self.statistics, self.evaluation).ok_or(
            GuardRefusal::BeyondPlan {
                round,
                rounds: self.rounds,
            },
        )?;
        if expected != kind {
            return Err(GuardRefusal::WrongKind {
                round,
                expected: kind_name(expected),
                asked: kind_name(kind),
            });
        }
        if let Some((last_round, last_attempt)) = self.last
            && (round, attempt) <= (last_round, last_attempt)
        {
            return Err(GuardRefusal::NotAfter {
                round,
                attempt,
                last_round,
                last_attempt,
            });
        }
        self.last = Some((round, attempt));
        let count = self.attempts.entry(round).or_insert(0);
        *count += 1;
        if *count > self.max_attempts {
            return Err(GuardRefusal::TooManyAttempts {
                round,
                count: *count,
                max: self.max_attempts,
            });
        }
        let redo_allowed = kind == RoundKind::Training && self.redo_training;
        if self.secure && self.unmasked.contains(&round) && !redo_allowed {
            return Err(GuardRefusal::AlreadyUnmasked { round });
        }
        Ok(())
    }

    /// Whether the job's rounds are secure (only then is a round's unmask the partner's to
    /// give).
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// Records that the partner revealed its shares for an attempt of `round`.
    pub fn unmasked(&mut self, round: u64) {
        self.unmasked.insert(round);
    }

    /// Whether the partner may help unmask `round`, which starts from the model whose
    /// SHA-256 is `model` (empty: no model, a statistics round). In a job without DP the
    /// statistics and updates computed from one model are (nearly) the same in any round, so
    /// two unmasked sums from one model over cohorts S and S∖{C} would give C's own: a
    /// partner helps unmask at most one round per start model, as it helps unmask each round
    /// at most once. (In DP jobs every release is noised afresh and charged.) Since each sum
    /// needs t reveals from its cohort, two sums from one model would need two disjoint sets
    /// of revealers — impossible for cohorts S and S∖{C} with t above half of each.
    pub fn may_unmask(&self, round: u64, model: &str) -> Result<(), GuardRefusal> {
        if self.model_once
            && !model.is_empty()
            && let Some(&earlier) = self.unmasked_models.get(model)
            && earlier != round
        {
            return Err(GuardRefusal::ModelAlreadyUnmasked { round, earlier });
        }
        Ok(())
    }

    /// Records that the partner revealed its shares for an attempt of `round`, which started
    /// from the model whose SHA-256 is `model` (empty: none).
    pub fn unmasked_from(&mut self, round: u64, model: &str) {
        self.unmasked.insert(round);
        if !model.is_empty() {
            self.unmasked_models
                .entry(model.to_owned())
                .or_insert(round);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> JobSpec {
        JobSpec::from_toml(&format!(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 3\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\nrange = {{ a = [-10.0, 10.0] }}\n[model]\nkind = \"logistic\"\n\
             [aggregation]\nmax_attempts = 2\n{extra}"
        ))
        .unwrap()
    }

    use RoundKind::{Evaluation as E, Statistics as S, Training as T};

    #[test]
    fn an_honest_job_passes_with_retries_before_any_unmask() {
        let mut g = RoundGuard::new(&spec(""));
        for (round, attempt, kind) in [(0, 0, S), (1, 3, T), (1, 4, T), (2, 5, T), (3, 6, T)] {
            g.admit(round, attempt, kind).unwrap();
        }
        g.admit(4, 7, E).unwrap();
    }

    #[test]
    fn kinds_follow_the_plan_and_rounds_only_move_forward() {
        let mut g = RoundGuard::new(&spec(""));
        assert_eq!(
            g.admit(0, 0, T),
            Err(GuardRefusal::WrongKind {
                round: 0,
                expected: "statistics",
                asked: "training"
            })
        );
        assert!(matches!(
            g.admit(2, 0, E),
            Err(GuardRefusal::WrongKind { .. })
        ));
        assert_eq!(
            g.admit(5, 0, E),
            Err(GuardRefusal::BeyondPlan {
                round: 5,
                rounds: 3
            })
        );
        g.admit(2, 4, T).unwrap();
        // The same instance, an older attempt, an earlier round.
        for (round, attempt, kind) in [(2, 4, T), (2, 3, T), (1, 9, T), (0, 9, S)] {
            assert!(
                matches!(
                    g.admit(round, attempt, kind),
                    Err(GuardRefusal::NotAfter { .. })
                ),
                "{round}/{attempt}"
            );
        }
    }

    #[test]
    fn attempts_are_capped_by_the_spec() {
        let mut g = RoundGuard::new(&spec(""));
        g.admit(1, 0, T).unwrap();
        g.admit(1, 1, T).unwrap();
        assert_eq!(
            g.admit(1, 2, T),
            Err(GuardRefusal::TooManyAttempts {
                round: 1,
                count: 3,
                max: 2
            })
        );
    }

    /// The S then S ∖ {C} pattern: a coordinator that unmasked a round over S retries it to
    /// unmask it again over a cohort without C. Every partner that helped unmask the first
    /// time sits the retry out, so no second sum of the same contributions exists.
    #[test]
    fn a_round_unmasked_once_is_never_unmasked_again() {
        for (round, kind) in [(0, S), (2, T), (4, E)] {
            let mut g = RoundGuard::new(&spec(""));
            g.admit(round, 0, kind).unwrap();
            g.unmasked(round);
            assert_eq!(
                g.admit(round, 1, kind),
                Err(GuardRefusal::AlreadyUnmasked { round })
            );
        }
    }

    #[test]
    fn record_dp_training_rounds_may_be_retried() {
        let mut g = RoundGuard::new(&spec("[privacy]\nmode = \"record\"\nepsilon = 4.0\n"));
        g.admit(1, 0, T).unwrap();
        g.unmasked(1);
        g.admit(1, 1, T).unwrap();
        // Not the deterministic rounds.
        g.admit(4, 2, E).unwrap();
        g.unmasked(4);
        assert!(g.admit(4, 3, E).is_err());
        // Central noise is added after the unmask, and a distributed noise share is sized for
        // the cohort: the partner's own update is not private alone.
        for mode in ["partner-central", "partner-distributed"] {
            let mut g = RoundGuard::new(&spec(&format!(
                "[privacy]\nmode = \"{mode}\"\nepsilon = 4.0\n"
            )));
            g.admit(1, 0, T).unwrap();
            g.unmasked(1);
            assert!(g.admit(1, 1, T).is_err(), "{mode}");
        }
    }

    #[test]
    fn plain_rounds_only_keep_order() {
        let mut plain = spec("");
        plain.aggregation.secure = false;
        let mut g = RoundGuard::new(&plain);
        g.admit(1, 0, T).unwrap();
        g.unmasked(1);
        g.admit(1, 1, T).unwrap();
    }

    /// DP jobs have no statistics round (declared ranges instead), and under partner-level
    /// DP no evaluation round: a coordinator that asks for either is refused.
    #[test]
    fn dp_jobs_plan_no_statistics_round_and_partner_level_no_evaluation() {
        let mut g = RoundGuard::new(&spec("[privacy]\nmode = \"record\"\n"));
        assert!(matches!(
            g.admit(0, 1, S),
            Err(GuardRefusal::BeyondPlan { round: 0, .. })
        ));
        assert_eq!(g.admit(1, 1, T), Ok(()));
        assert_eq!(g.admit(4, 1, E), Ok(()));
        for mode in ["partner-central", "partner-distributed"] {
            let mut g = RoundGuard::new(&spec(&format!("[privacy]\nmode = \"{mode}\"\n")));
            assert!(matches!(
                g.admit(0, 1, S),
                Err(GuardRefusal::BeyondPlan { .. })
            ));
            assert_eq!(g.admit(3, 1, T), Ok(()));
            assert!(
                matches!(
                    g.admit(4, 1, E),
                    Err(GuardRefusal::BeyondPlan { round: 4, .. })
                ),
                "{mode}"
            );
        }
    }

    /// Honest partners' guards against a coordinator that chooses every round's number,
    /// attempt, cohort and start model: which sums can it unmask? A sum over the inputs a
    /// cohort sent is unmasked when at least t of the cohort (the secure-aggregation
    /// threshold for its size) help, and a partner helps when its guard lets it. Returns
    /// (model, contributors) per unmasked sum.
    fn unmasked_sums(
        requests: &[(u64, u32, u8, u8)],
        partners: usize,
        model_rule: bool,
    ) -> Vec<(u8, BTreeSet<usize>)> {
        let spec = spec("");
        let mut guards: Vec<RoundGuard> = (0..partners).map(|_| RoundGuard::new(&spec)).collect();
        let mut sums = Vec::new();
        for &(round, attempt, members, model) in requests {
            let cohort: Vec<usize> = (0..partners).filter(|p| members & (1 << p) != 0).collect();
            if cohort.len() < 2 {
                continue;
            }
            let Some(kind) = planned_kind(3, round, true, true) else {
                continue;
            };
            let hash = if kind == S {
                String::new()
            } else {
                format!("model-{model}")
            };
            let contributors: BTreeSet<usize> = cohort
                .iter()
                .copied()
                .filter(|&p| guards[p].admit(round, attempt, kind).is_ok())
                .collect();
            let t = crate::secagg::recommended_threshold(cohort.len() - 1);
            let helpers: Vec<usize> = contributors
                .iter()
                .copied()
                .filter(|&p| !model_rule || guards[p].may_unmask(round, &hash).is_ok())
                .collect();
            if contributors.len() >= t && helpers.len() >= t {
                for &p in &helpers {
                    guards[p].unmasked_from(round, &hash);
                }
                sums.push((if kind == S { u8::MAX } else { model }, contributors));
            }
        }
        sums
    }

    /// Two unmasked sums from one model whose contributors differ by one partner.
    fn isolates_one(sums: &[(u8, BTreeSet<usize>)]) -> bool {
        sums.iter().enumerate().any(|(i, (m, a))| {
            sums[i + 1..]
                .iter()
                .any(|(n, b)| m == n && a.symmetric_difference(b).count() == 1)
        })
    }

    /// The S then S∖{C} pattern across two rounds from the same model: without the model
    /// rule it isolates C (the attack works); with it, the second sum is never unmasked.
    #[test]
    fn the_same_model_in_two_rounds_cannot_isolate_a_partner() {
        let script = [(1, 1, 0b11111, 0), (2, 1, 0b01111, 0)];
        assert!(isolates_one(&unmasked_sums(&script, 5, false)));
        let sums = unmasked_sums(&script, 5, true);
        assert_eq!(sums.len(), 1, "{sums:?}");
    }

    proptest::proptest! {
        /// Whatever sequence of rounds, attempts, cohorts and models the coordinator tries,
        /// no two unmasked sums from one model differ by a single partner.
        #[test]
        fn no_request_sequence_isolates_a_partner(
            requests in proptest::collection::vec(
                (0u64..6, 0u32..3, 0u8..32, 0u8..3),
                1..14,
            )
        ) {
            let sums = unmasked_sums(&requests, 5, true);
            proptest::prop_assert!(!isolates_one(&sums), "{sums:?}");
        }
    }
}
