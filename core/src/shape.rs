//! The shape of a round, derived once from the job spec and the cohort: the one rule both
//! sides follow.
//!
//! The coordinator builds the round start it sends from [`RoundShape::derive`]; each partner
//! derives the same shape from the spec it accepted and the cohort it was shown, and refuses a
//! start that announces anything else ([`RoundShape::check`]). So the coordinator cannot show
//! a partner a lower threshold, a larger vector, another graph or a cohort in its own order:
//! the partner needs nothing from it but the round number, the attempt, the kind and the
//! cohort's members — and, in a job whose clip is adaptive, the round's clip, which moves
//! with what earlier rounds released and which the partner can only bound ([`check_clip`]);
//! what it can do is bind the clip into the secure round ([`bind_clip`]), so that partners
//! shown different clips cannot complete a round together.
//!
//! | field | rule |
//! | --- | --- |
//! | cohort | canonical: sorted, each partner once |
//! | layout | [`RoundKind::layout`] for the cohort size |
//! | model length | the model's parameters in training and evaluation, none in statistics |
//! | graph degree, t | [`crate::budget::secure_shape`] (secure jobs) |
//! | graph seed | [`GraphSpec::for_cohort`] of the instance, the cohort and the degree |
//! | clip | none, or for an adaptive clip's training rounds one in the spec's `[max / 10⁶, max]` |
//! | survivor floor | the job's `min_participants`, t, and for distributed-noise training the survivors the noise was sized for ([`crate::budget::noise_threshold`]) |

use crate::aggregate::{LABEL_COUNTS, RoundKind, VectorLayout, eval_stats_len};
use crate::budget::{adaptive_sensitivity, noise_threshold, secure_shape};
use crate::codec::{CodecError, WideInt};
use crate::gbdt_plan;
use crate::secagg::{GraphSpec, RoundId, RoundParams};
use crate::spec::{JobSpec, PrivacyMode};

/// Why a round's shape cannot be derived, or why an announced round does not match it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// The cohort is empty.
    #[error("the round's cohort is empty")]
    EmptyCohort,
    /// The cohort is not sorted, or lists a partner twice.
    #[error("the round's cohort is not in canonical order (sorted, each partner once)")]
    CohortNotCanonical,
    /// The fixed-point layout cannot be built for this cohort.
    #[error("layout: {0}")]
    Layout(#[from] CodecError),
    /// An announced field differs from the derived one.
    #[error("the round announces {field} = {announced}; this job and cohort give {derived}")]
    Mismatch {
        /// The field.
        field: &'static str,
        /// What was announced.
        announced: String,
        /// What the partner derived.
        derived: String,
    },
}

/// The secure-aggregation part of a round's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecureShape {
    /// Neighbours per partner (cohort size − 1 for the complete graph).
    pub degree: usize,
    /// Shares needed in every closed neighbourhood.
    pub threshold: usize,
}

/// What a round start announces beyond its instance and cohort, as the wire carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced<'a> {
    /// Whether the round is secure.
    pub secure: bool,
    /// Words in every partner's vector.
    pub vector_len: u64,
    /// Parameters of the model to download.
    pub model_len: u64,
    /// Complete members needed for a result.
    pub threshold: u64,
    /// Neighbours per partner.
    pub graph_degree: u64,
    /// The neighbour graph's seed.
    pub graph_seed: &'a [u8],
}

/// A round's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundShape {
    /// What the round aggregates.
    pub kind: RoundKind,
    /// The canonical cohort.
    pub cohort: Vec<String>,
    /// Every member's vector.
    pub layout: VectorLayout,
    /// Parameters of the model members download (0 in the statistics round).
    pub model_len: usize,
    /// Secure aggregation, when the job has it.
    pub secure: Option<SecureShape>,
    /// Complete members without which the round's sum is not unmasked or used.
    pub min_survivors: usize,
}

/// What sizes a round besides its kind and cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundSize {
    /// A linear model's parameter count: the whole shape follows from the spec.
    Params(usize),
    /// A boosted-trees round: the words of its round state and the statistics it sums. Their
    /// exact values depend on the tree being grown, so a partner bounds the announced ones
    /// ([`trees_size`]) and checks them exactly against the state it downloads.
    Trees {
        /// Words of the round's [`crate::gbdt::RoundState`] (0 in the statistics round).
        model_len: usize,
        /// Statistics values of the round's vector.
        stats_len: usize,
    },
}

/// Values of a gbdt job's statistics round: every numeric feature's sketch over its declared
/// range ([`gbdt_plan::SKETCH_CELLS`] cells), then the usable rows and the positives among
/// them ([`LABEL_COUNTS`]).
pub fn trees_statistics_len(spec: &JobSpec) -> usize {
    spec.features.numeric.len() * gbdt_plan::SKETCH_CELLS + LABEL_COUNTS
}

/// The longest node block a job's features can give: `max_bins` bins per numeric feature and
/// each categorical column's slots, three values per bin.
fn max_node_len(spec: &JobSpec, params: &crate::gbdt_params::GbdtParams) -> usize {
    let schema = crate::features::FeatureSchema::from_spec(spec);
    let numeric = schema.numeric.len() * params.max_bins as usize;
    let categorical: usize = schema.categorical.iter().map(|(_, c)| c.width()).sum();
    crate::gbdt::histogram::STRIDE * (numeric + categorical)
}

/// The size a partner takes a boosted-trees round start to announce, once it is within what
/// the spec allows for that round: the statistics round's sketch and label counts exactly;
/// a training round's level of at most `2^level` nodes (and the leaf budget) of at most
/// `max_bins` bins per numeric feature, with the incoming model's evaluation on the tree's
/// first level (jobs without DP); the final evaluation's statistics exactly; and a round state
/// no larger than the spec's largest.
pub fn trees_size(
    spec: &JobSpec,
    kind: RoundKind,
    round: u64,
    parties: usize,
    announced: &Announced<'_>,
) -> Result<RoundSize, ShapeError> {
    let params = spec.gbdt_params().ok_or(ShapeError::Mismatch {
        field: "model",
        announced: "a boosted-trees round".into(),
        derived: format!("a {} model", spec.model.kind.as_str()),
    })?;
    let limbs = WideInt::for_sum(parties)?.limbs as u64;
    let mismatch = |field: &'static str, a: u64, d: String| ShapeError::Mismatch {
        field,
        announced: a.to_string(),
        derived: d,
    };
    if !announced.vector_len.is_multiple_of(limbs) {
        return Err(mismatch(
            "vector_len",
            announced.vector_len,
            format!("a multiple of {limbs} words"),
        ));
    }
    let stats_len = (announced.vector_len / limbs) as usize;
    let bins = spec.histogram_bins() as usize;
    let cap = spec.model_params();
    let model_len = announced.model_len;
    let state_within = |min: u64| {
        if u128::from(model_len) >= u128::from(min) && u128::from(model_len) <= cap {
            Ok(())
        } else {
            Err(mismatch(
                "model_len",
                model_len,
                format!("{min}..={cap} words"),
            ))
        }
    };
    match kind {
        RoundKind::Statistics => {
            let expected = trees_statistics_len(spec);
            if stats_len != expected || model_len != 0 {
                return Err(mismatch(
                    "vector_len",
                    announced.vector_len,
                    format!("{} words and no model", expected as u64 * limbs),
                ));
            }
        }
        RoundKind::Training => {
            let (_, level) = gbdt_plan::tree_and_level(&params, round).ok_or(mismatch(
                "round",
                round,
                format!(
                    "a level round in 1..={}",
                    gbdt_plan::planned_rounds(&params)
                ),
            ))?;
            if level == 0 && gbdt_plan::asks_again(&params, round) {
                return Err(mismatch(
                    "round",
                    round,
                    "no second round of a tree's root level".into(),
                ));
            }
            let eval = if level == 0 && spec.evaluates_in_training() {
                eval_stats_len(bins)
            } else {
                0
            };
            let most =
                eval + gbdt_plan::max_level_nodes(&params, level) * max_node_len(spec, &params);
            if stats_len <= eval || stats_len > most {
                return Err(mismatch(
                    "vector_len",
                    announced.vector_len,
                    format!(
                        "more than {} and at most {} words for level {level}",
                        eval as u64 * limbs,
                        most as u64 * limbs
                    ),
                ));
            }
            state_within(1)?;
        }
        RoundKind::Evaluation => {
            if stats_len != eval_stats_len(bins) {
                return Err(mismatch(
                    "vector_len",
                    announced.vector_len,
                    format!("{} words", eval_stats_len(bins) as u64 * limbs),
                ));
            }
            state_within(1)?;
        }
    }
    Ok(RoundSize::Trees {
        model_len: model_len as usize,
        stats_len,
    })
}

impl RoundShape {
    /// The shape of a `kind` round over `cohort` in a job whose model has `num_params`
    /// parameters.
    pub fn derive(
        spec: &JobSpec,
        kind: RoundKind,
        cohort: Vec<String>,
        num_params: usize,
    ) -> Result<Self, ShapeError> {
        Self::derive_sized(spec, kind, cohort, RoundSize::Params(num_params))
    }

    /// The shape of a `kind` round over `cohort` of the given size (a linear model's
    /// parameters, or a boosted-trees round's words).
    pub fn derive_sized(
        spec: &JobSpec,
        kind: RoundKind,
        cohort: Vec<String>,
        size: RoundSize,
    ) -> Result<Self, ShapeError> {
        if cohort.is_empty() {
            return Err(ShapeError::EmptyCohort);
        }
        if cohort.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ShapeError::CohortNotCanonical);
        }
        let n = cohort.len();
        let (layout, model_len) = match (spec.is_gbdt(), size) {
            (false, RoundSize::Params(num_params)) => {
                let model_len = match kind {
                    RoundKind::Statistics => 0,
                    RoundKind::Training | RoundKind::Evaluation => num_params,
                };
                (kind.layout(spec, num_params, n)?, model_len)
            }
            (
                true,
                RoundSize::Trees {
                    model_len,
                    stats_len,
                },
            ) => (VectorLayout::new(n, 0, 0.0, stats_len)?, model_len),
            (gbdt, _) => {
                return Err(ShapeError::Mismatch {
                    field: "model",
                    announced: if gbdt { "parameters" } else { "a round state" }.into(),
                    derived: format!("a {} model", spec.model.kind.as_str()),
                });
            }
        };
        let secure = spec.aggregation.secure.then(|| {
            let (degree, threshold) = secure_shape(spec, n);
            SecureShape { degree, threshold }
        });
        let mut min_survivors = spec.aggregation.min_participants as usize;
        if let Some(s) = &secure {
            min_survivors = min_survivors.max(s.threshold);
        }
        if kind == RoundKind::Training && spec.privacy.mode == PrivacyMode::PartnerDistributed {
            min_survivors = min_survivors.max(noise_threshold(spec, n));
        }
        Ok(Self {
            kind,
            cohort,
            layout,
            model_len,
            secure,
            min_survivors: min_survivors.min(n),
        })
    }

    /// The neighbour graph's seed for the instance (job, round, attempt); empty for a plain
    /// round.
    pub fn graph_seed(&self, job_id: &str, round: u64, attempt: u32) -> Vec<u8> {
        self.secure.map_or_else(Vec::new, |s| {
            GraphSpec::for_cohort(
                &RoundId::new(job_id, round, attempt),
                &self.cohort,
                s.degree,
            )
            .seed
            .to_vec()
        })
    }

    /// What an honest coordinator announces for this shape.
    pub fn announce<'a>(&self, graph_seed: &'a [u8]) -> Announced<'a> {
        Announced {
            secure: self.secure.is_some(),
            vector_len: self.layout.len() as u64,
            model_len: self.model_len as u64,
            threshold: self.min_survivors as u64,
            graph_degree: self.secure.map_or(0, |s| s.degree as u64),
            graph_seed,
        }
    }

    /// Checks an announced round against this shape, field by field; the first difference is
    /// the error.
    pub fn check(
        &self,
        announced: &Announced<'_>,
        job_id: &str,
        round: u64,
        attempt: u32,
    ) -> Result<(), ShapeError> {
        let seed = self.graph_seed(job_id, round, attempt);
        let derived = self.announce(&seed);
        let mismatch = |field: &'static str, a: String, d: String| {
            Err(ShapeError::Mismatch {
                field,
                announced: a,
                derived: d,
            })
        };
        if announced.secure != derived.secure {
            return mismatch(
                "secure",
                announced.secure.to_string(),
                derived.secure.to_string(),
            );
        }
        for (field, a, d) in [
            ("vector_len", announced.vector_len, derived.vector_len),
            ("model_len", announced.model_len, derived.model_len),
            ("threshold", announced.threshold, derived.threshold),
            ("graph_degree", announced.graph_degree, derived.graph_degree),
        ] {
            if a != d {
                return mismatch(field, a.to_string(), d.to_string());
            }
        }
        if announced.graph_seed != derived.graph_seed {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            return mismatch(
                "graph_seed",
                hex(announced.graph_seed),
                hex(derived.graph_seed),
            );
        }
        Ok(())
    }
}

/// A secure round's parameters for a start that announced `clip`: unchanged, or for an
/// adaptive clip bound to the clip's bits ([`RoundParams::bound_to`]), so that members shown
/// different clips cannot verify each other's key advertisements and the round stops before
/// any input is sent. Under distributed noise each partner's noise is scaled to the clip it
/// was shown: this is what keeps a coordinator from showing one partner another clip than the
/// rest.
pub fn bind_clip(params: RoundParams, clip: Option<f64>) -> RoundParams {
    match clip {
        Some(c) => params.bound_to("clip", &c.to_bits().to_le_bytes()),
        None => params,
    }
}

/// The clip norm a round start announces (`announced`, 0 for none), checked against the job:
/// a training round of a job with an adaptive clip must announce one in the spec's
/// `[max / 10⁶, max]` (the coordinator moves it from round to round, so the partner can only
/// bound it), and every other round none.
pub fn check_clip(
    spec: &JobSpec,
    kind: RoundKind,
    announced: f64,
) -> Result<Option<f64>, ShapeError> {
    let adaptive = spec.privacy.clip.is_adaptive() && kind == RoundKind::Training;
    if !adaptive {
        return if announced == 0.0 {
            Ok(None)
        } else {
            Err(ShapeError::Mismatch {
                field: "clip",
                announced: announced.to_string(),
                derived: "none (the job's clip is fixed)".into(),
            })
        };
    }
    let a = &spec.privacy.adaptive_clip;
    if announced.is_finite() && announced >= a.min() && announced <= a.max {
        Ok(Some(announced))
    } else {
        Err(ShapeError::Mismatch {
            field: "clip",
            announced: announced.to_string(),
            derived: format!("a clip in [{}, {}]", a.min(), a.max),
        })
    }
}

impl RoundKind {
    /// The vector layout of this round kind for a job, a model of `num_params` parameters and
    /// a cohort of `parties`. Coordinator and partners compute it independently and compare.
    pub fn layout(
        self,
        spec: &JobSpec,
        num_params: usize,
        parties: usize,
    ) -> Result<VectorLayout, CodecError> {
        let bins = spec.histogram_bins() as usize;
        match self {
            RoundKind::Statistics => VectorLayout::new(
                parties,
                0,
                0.0,
                3 * spec.features.numeric.len() + LABEL_COUNTS,
            ),
            RoundKind::Training => {
                // Partner-level DP bounds each partner's whole contribution: unit weight and
                // the privacy clipping norm.
                let clip = spec.privacy.clip;
                // An adaptive clip's vector carries its count coordinate too, within the
                // largest clip's sensitivity.
                let largest = spec.privacy.largest_clip();
                let partner_bound = if clip.is_adaptive() {
                    adaptive_sensitivity(largest)
                } else {
                    largest
                };
                let bound = match spec.privacy.mode {
                    PrivacyMode::PartnerCentral => partner_bound,
                    PrivacyMode::PartnerDistributed => {
                        // Leave room for the noise the partners add after encoding.
                        let t = noise_threshold(spec, parties);
                        let headroom = crate::budget::PrivacyPlan::from_spec(spec)
                            .ok()
                            .flatten()
                            .map_or(1.0, |plan| plan.headroom(parties, t));
                        partner_bound * headroom
                    }
                    // Record DP: unit weight (spec-fixed), the delta clipped to clip_norm.
                    PrivacyMode::Record => spec.training.clip_norm,
                    PrivacyMode::None => {
                        f64::from(spec.training.max_weight) * spec.training.clip_norm
                    }
                };
                let eval = if spec.evaluates_in_training() {
                    eval_stats_len(bins)
                } else {
                    0
                };
                let count = usize::from(clip.is_adaptive());
                VectorLayout::new(parties, num_params + count, bound, 1 + eval)
            }
            RoundKind::Evaluation => VectorLayout::new(parties, 0, 0.0, eval_stats_len(bins)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> JobSpec {
        JobSpec::from_toml(&format!(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 3\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\", \"b\"]\nrange = {{ a = [-10.0, 10.0], b = [-10.0, 10.0] }}\n[model]\nkind = \"logistic\"\n{extra}"
        ))
        .unwrap()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i:03}")).collect()
    }

    /// A boosted-trees round: the partner takes the size from the announcement only within
    /// the spec's bounds for that round, and the coordinator's honest start checks.
    #[test]
    fn trees_rounds_are_sized_within_the_specs_bounds() {
        let s = JobSpec::from_toml(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 3\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\ncategorical = [\"c\"]\nrange = { a = [0.0, 1.0] }\n\
             vocabulary = { c = [\"u\", \"v\"] }\n[model]\nkind = \"gbdt\"\n[model.gbdt]\nmax_depth = 3\nmax_bins = 16\n",
        )
        .unwrap();
        let n = 4;
        let limbs = WideInt::for_sum(n).unwrap().limbs as u64;
        let eval = eval_stats_len(s.histogram_bins() as usize) as u64;
        // 16 numeric bins and 3 slots, three values each.
        let node = 3 * (16 + 3);
        let cap = s.model_params() as u64;
        let ask = |kind, round, model_len: u64, stats: u64| {
            let a = Announced {
                secure: true,
                vector_len: stats * limbs,
                model_len,
                threshold: 0,
                graph_degree: 0,
                graph_seed: &[],
            };
            trees_size(&s, kind, round, n, &a)
        };
        let sketch = (1024 + LABEL_COUNTS) as u64;
        assert!(ask(RoundKind::Statistics, 0, 0, sketch).is_ok());
        assert!(ask(RoundKind::Statistics, 0, 0, sketch + 1).is_err());
        assert!(ask(RoundKind::Statistics, 0, 5, sketch).is_err());
        // Level 0 (round 1): the incoming model's evaluation and one node.
        assert!(ask(RoundKind::Training, 1, 100, eval + node).is_ok());
        assert!(
            ask(RoundKind::Training, 2, 100, eval + node).is_err(),
            "the root again"
        );
        assert!(
            ask(RoundKind::Training, 2, 100, node).is_err(),
            "the root again"
        );
        assert!(ask(RoundKind::Training, 1, 100, eval).is_err(), "no node");
        assert!(
            ask(RoundKind::Training, 1, 100, eval + node + 1).is_err(),
            "two nodes' worth"
        );
        assert!(
            ask(RoundKind::Training, 1, 0, eval + node).is_err(),
            "no state"
        );
        assert!(
            ask(RoundKind::Training, 1, cap + 1, eval + node).is_err(),
            "state too large"
        );
        // Level 1 (round 3, and 4 asking again): no evaluation, at most two nodes.
        assert!(ask(RoundKind::Training, 3, 100, 2 * node).is_ok());
        assert!(ask(RoundKind::Training, 4, 100, 2 * node).is_ok());
        assert!(ask(RoundKind::Training, 3, 100, 2 * node + 1).is_err());
        // Tree 3's last level is rounds 17 and 18; there is no round 19.
        assert!(ask(RoundKind::Training, 18, 100, 4 * node).is_ok());
        assert!(ask(RoundKind::Training, 19, 100, node).is_err());
        assert!(ask(RoundKind::Evaluation, 19, 100, eval).is_ok());
        assert!(ask(RoundKind::Evaluation, 19, 100, eval + 1).is_err());
        let mut odd = Announced {
            secure: true,
            vector_len: (eval + node) * limbs + 1,
            model_len: 100,
            threshold: 0,
            graph_degree: 0,
            graph_seed: &[],
        };
        assert!(trees_size(&s, RoundKind::Training, 1, n, &odd).is_err());

        // The coordinator's honest start passes the partner's derivation and check.
        let size = RoundSize::Trees {
            model_len: 100,
            stats_len: (eval + node) as usize,
        };
        let shape = RoundShape::derive_sized(&s, RoundKind::Training, ids(n), size).unwrap();
        let seed = shape.graph_seed("j", 1, 1);
        let start = shape.announce(&seed);
        let taken = trees_size(&s, RoundKind::Training, 1, n, &start).unwrap();
        assert_eq!(taken, size);
        let mine = RoundShape::derive_sized(&s, RoundKind::Training, ids(n), taken).unwrap();
        mine.check(&start, "j", 1, 1).unwrap();
        odd.vector_len = start.vector_len;
        assert!(
            mine.check(&odd, "j", 1, 1).is_err(),
            "the graph seed is still checked"
        );
        // Sizes of the other family are refused both ways.
        assert!(RoundShape::derive(&s, RoundKind::Training, ids(n), 3).is_err());
        assert!(RoundShape::derive_sized(&spec(""), RoundKind::Training, ids(n), size).is_err());
        assert!(trees_size(&spec(""), RoundKind::Training, 1, n, &start).is_err());
    }

    #[test]
    fn an_honest_announcement_checks_and_every_changed_field_is_named() {
        let s = spec("");
        let shape = RoundShape::derive(&s, RoundKind::Training, ids(5), 3).unwrap();
        let seed = shape.graph_seed("j", 2, 1);
        let honest = shape.announce(&seed);
        shape.check(&honest, "j", 2, 1).unwrap();
        // The complete graph over 5 with t = recommended_threshold(4) = 4.
        assert_eq!(
            shape.secure,
            Some(SecureShape {
                degree: 4,
                threshold: 4
            })
        );
        let other_seed = shape.graph_seed("j", 2, 2);
        let cases: Vec<(&str, Announced<'_>)> = vec![
            (
                "secure",
                Announced {
                    secure: false,
                    ..honest.clone()
                },
            ),
            (
                "vector_len",
                Announced {
                    vector_len: honest.vector_len + 1,
                    ..honest.clone()
                },
            ),
            (
                "model_len",
                Announced {
                    model_len: 4,
                    ..honest.clone()
                },
            ),
            (
                "threshold",
                Announced {
                    threshold: 3,
                    ..honest.clone()
                },
            ),
            (
                "graph_degree",
                Announced {
                    graph_degree: 2,
                    ..honest.clone()
                },
            ),
            (
                "graph_seed",
                Announced {
                    graph_seed: &other_seed,
                    ..honest.clone()
                },
            ),
        ];
        for (field, announced) in cases {
            match shape.check(&announced, "j", 2, 1) {
                Err(ShapeError::Mismatch { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        // The same announcement for another attempt carries the wrong seed.
        assert!(shape.check(&honest, "j", 2, 2).is_err());
    }

    #[test]
    fn the_cohort_must_be_canonical() {
        let s = spec("");
        let mut cohort = ids(4);
        cohort.swap(0, 1);
        assert_eq!(
            RoundShape::derive(&s, RoundKind::Evaluation, cohort, 3),
            Err(ShapeError::CohortNotCanonical)
        );
        let mut twice = ids(3);
        twice.push(twice[2].clone());
        assert_eq!(
            RoundShape::derive(&s, RoundKind::Evaluation, twice, 3),
            Err(ShapeError::CohortNotCanonical)
        );
    }

    #[test]
    fn the_survivor_floor_takes_the_strictest_rule() {
        // min_participants alone (plain), then t, then the distributed-noise floor.
        let plain = spec("[aggregation]\nsecure = false\nmin_participants = 3\n");
        let shape = RoundShape::derive(&plain, RoundKind::Training, ids(10), 3).unwrap();
        assert_eq!((shape.secure, shape.min_survivors), (None, 3));
        let secure = spec("[aggregation]\nmin_participants = 3\n");
        let shape = RoundShape::derive(&secure, RoundKind::Training, ids(10), 3).unwrap();
        // Complete graph over 10: t = 2·10/3 + 1 = 7.
        assert_eq!(shape.min_survivors, 7);
        let sparse = RoundShape::derive(&secure, RoundKind::Training, ids(200), 3).unwrap();
        let t = sparse.secure.unwrap().threshold;
        assert_eq!(sparse.min_survivors, t.max(3));
        let noised = spec(
            "[aggregation]\nmin_participants = 3\n[privacy]\nmode = \"partner-distributed\"\nepsilon = 4.0\n",
        );
        let shape = RoundShape::derive(&noised, RoundKind::Training, ids(200), 3).unwrap();
        assert_eq!(shape.min_survivors, 2 * 200 / 3 + 1);
        let eval = RoundShape::derive(&noised, RoundKind::Evaluation, ids(200), 3).unwrap();
        assert_eq!(eval.min_survivors, t);
    }
}
