//! The phases of a boosted-trees job (`model.kind = "gbdt"`), on the same rounds, retries,
//! secure aggregation and store as every job.
//!
//! 1. **Statistics** (round 0): every partner's sketch of each numeric column over its
//!    declared range and its label counts, summed; the bin edges are the sum's quantiles and
//!    the base margin the pooled prior log-odds.
//! 2. **Trees** 1..=T (`job.rounds`): each tree grows a level per round (round numbers from
//!    [`fedmark_core::gbdt::plan`]); a round shows the partners the [`RoundState`] (model so far,
//!    tree being grown, nodes asked for) and sums their histograms of those nodes, and the
//!    coordinator's [`TreeGrower`] picks the splits from the sum. A tree's first level also
//!    sums the holdout statistics of the model it starts from (jobs without DP), which are the
//!    tree's record in the report. A finished tree is committed as the job's round `t`.
//! 3. **Final evaluation** of the whole model.

use std::sync::Arc;

use fedmark_core::aggregate::{RoundKind, eval_stats_from_slice, eval_stats_len};
use fedmark_core::budget::EVAL_LOSS_CAP;
use fedmark_core::features::{FeatureSchema, Standardizer};
use fedmark_core::gbdt::plan::{SKETCH_CELLS, level_round};
use fedmark_core::gbdt::train::{EarlyStopping, base_margin, column_sample};
use fedmark_core::gbdt::{Feature, GbdtModel, HistLayout, PartialTree, RoundState, TreeGrower};
use fedmark_core::metrics::Metrics;
use fedmark_core::model::{Architecture, Model};
use fedmark_core::shape::trees_statistics_len as statistics_len;
use fedmark_core::spec::SpecError;
use fedmark_core::train::ServerOptimizer;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Ended, JobError, JobOutcome, JobRun, check_labels};
use crate::attempts::{Done, RoundInputs, announce, run_with_retries};
use crate::events::JobEvent;
use crate::report::RoundRecord;
use crate::store::LevelRecord;
use crate::store::events::TrainingFigures;
use crate::store::jobs::{Committed, JobState, commit};

/// A round's result as a tree uses it: from this run of the coordinator, or kept by an
/// earlier one ([`crate::store::LevelRecord`]).
struct Level {
    stats: Vec<f64>,
    survivors: Vec<String>,
    dropped: Vec<String>,
    consent: std::collections::BTreeMap<String, String>,
    attempt: u32,
    attempts: u32,
    cohort: usize,
    again: bool,
}

impl Level {
    fn from_done(done: Done, again: bool) -> Self {
        Self {
            stats: done.sum.stats,
            survivors: done.output.survivors,
            dropped: done.output.dropped,
            consent: done.output.consent,
            attempt: done.attempt,
            attempts: done.attempts,
            cohort: done.cohort,
            again,
        }
    }

    fn kept(r: LevelRecord, stats: Vec<f64>) -> Self {
        Self {
            stats,
            survivors: r.survivors,
            dropped: r.dropped,
            consent: r.consent,
            attempt: r.attempt,
            attempts: 0,
            cohort: r.cohort,
            again: r.again,
        }
    }

    fn record(&self, tree: u32) -> LevelRecord {
        LevelRecord {
            tree,
            again: self.again,
            attempt: self.attempt,
            survivors: self.survivors.clone(),
            dropped: self.dropped.clone(),
            consent: self.consent.clone(),
            cohort: self.cohort,
            stats_sha256: fedmark_core::audit::f64s_sha256(&self.stats),
        }
    }
}

/// A level-0 round's federated evaluation of the model its tree started from.
struct Evaluated {
    metrics: Metrics,
    by: Vec<String>,
    consent: std::collections::BTreeMap<String, String>,
    attempt: u32,
}

/// The words of a state that shows `model` and asks for nothing.
fn model_words(model: &GbdtModel) -> Vec<f64> {
    RoundState {
        model: model.clone(),
        tree: PartialTree::root(),
        build: Vec::new(),
    }
    .to_words()
}

impl JobRun {
    async fn trees_round(
        &mut self,
        round: u64,
        kind: RoundKind,
        words: Option<Vec<f64>>,
        stats_len: usize,
        standardizer: &Standardizer,
    ) -> Result<Done, JobError> {
        run_with_retries(
            &mut self.hub,
            &self.spec,
            &self.settings,
            round,
            kind,
            RoundInputs {
                model: words.map(Arc::new),
                standardizer: Some(standardizer.clone()),
                clip: None,
                trees_stats: Some(stats_len),
            },
        )
        .await
    }

    fn commit_trees(
        &self,
        state: &JobState,
        kind: RoundKind,
        done: &Level,
        eval: &Metrics,
        epsilon: Option<f64>,
    ) -> Result<(), JobError> {
        commit(
            &self.store,
            &self.job_id,
            state,
            Committed {
                kind,
                attempt: done.attempt,
                participants: done.survivors.clone(),
                dropped: done.dropped.clone(),
                consent_snapshots: done.consent.clone(),
                training: (kind == RoundKind::Training).then_some(TrainingFigures {
                    epsilon,
                    auc: eval.auc,
                    log_loss: eval.log_loss,
                }),
            },
        )?;
        Ok(())
    }

    /// Ends a job whose best model is its first `keep` trees (early stopping): commits that
    /// model as the job's last checkpoint (round = trees grown + 1, recorded as the
    /// evaluation that chose it) and reports the federated metrics measured on it when the
    /// tree after it started.
    async fn keep_trees(
        self,
        mut state: JobState,
        model: GbdtModel,
        keep: usize,
        evals: &[Evaluated],
        started: Instant,
        stop_reason: String,
    ) -> Result<JobOutcome, JobError> {
        let Some(chosen) = evals.get(keep) else {
            return Err(JobError::Preflight(format!(
                "early stopping keeps {keep} trees, whose model was never evaluated"
            )));
        };
        let trees = model.trees().get(..keep).unwrap_or_default().to_vec();
        let kept = GbdtModel::from_parts(model.features().to_vec(), model.base_margin(), trees)?;
        state.model.params = model_words(&kept);
        state.next_round = model.trees().len() as u64 + 2;
        commit(
            &self.store,
            &self.job_id,
            &state,
            Committed {
                kind: RoundKind::Evaluation,
                attempt: chosen.attempt,
                participants: chosen.by.clone(),
                dropped: Vec::new(),
                consent_snapshots: chosen.consent.clone(),
                training: None,
            },
        )?;
        // The abandoned tree's first level is not needed by anyone now.
        self.store.clear_levels(&self.job_id)?;
        info!(job = %self.job_id, kept = keep, grown = model.trees().len(), "early stopping");
        let ended = Ended {
            started,
            stop_reason,
            lost: Vec::new(),
            final_metrics: chosen.metrics,
            evaluated_by: chosen.by.clone(),
        };
        self.finish(state, ended).await
    }

    /// Why tree `tree` (0-based) must not be grown: its levels would pass the privacy
    /// budget (each level is one release; a tree is not left half grown).
    fn tree_over_budget(
        &self,
        state: &JobState,
        params: &fedmark_core::gbdt::GbdtParams,
        tree: u32,
    ) -> Result<Option<String>, JobError> {
        let Some(plan) = &self.privacy else {
            return Ok(None);
        };
        let mut next = state.ledger.clone();
        plan.charge_rounds(&mut next.training, u64::from(params.max_depth))?;
        let epsilon = next.epsilon(plan.delta)?.0;
        Ok((epsilon > plan.epsilon).then(|| {
            format!(
                "privacy budget exhausted: tree {} would bring epsilon to {epsilon:.4}, above the budget of {}",
                tree + 1,
                plan.epsilon
            )
        }))
    }

    /// The first state of a job that starts from the beginning: bins and prior from the
    /// sketch round (committed), or from the declared ranges in a DP job.
    async fn fresh_trees(
        &mut self,
        schema: &FeatureSchema,
        standardizer: &Standardizer,
        params: &fedmark_core::gbdt::GbdtParams,
    ) -> Result<(GbdtModel, JobState), JobError> {
        let spec = self.spec.clone();
        let (features, base, training_rows, sketch) = if spec.is_dp() {
            // A DP job measures nothing before training: fixed-width bins over the declared
            // ranges and a prior of ½ (margin 0), as its linear models standardise with the
            // declared ranges.
            let features = Feature::from_ranges(schema, params.max_bins as usize)?;
            info!(job = %self.job_id, "bins from the declared ranges");
            (features, 0.0, f64::NAN, None)
        } else {
            let (features, base, rows, done) =
                self.sketch_round(schema, standardizer, params).await?;
            (features, base, rows, Some(done))
        };
        let layout = HistLayout::new(&features);
        let model = GbdtModel::from_parts(features.clone(), base, Vec::new())?;
        let state = JobState {
            model: Model {
                arch: Architecture::Logistic,
                dim: schema.dim(),
                params: model_words(&model),
            },
            optimizer: ServerOptimizer::try_from_spec(&spec, 0)?,
            standardizer: standardizer.clone(),
            training_rows,
            ledger: Default::default(),
            records: Vec::new(),
            next_round: 1,
        };
        if let Some(done) = sketch {
            let done = Level::from_done(done, false);
            self.commit_trees(
                &state,
                RoundKind::Statistics,
                &done,
                &Metrics::default(),
                None,
            )?;
            announce(
                &self.hub,
                &self.job_id,
                (0, done.attempt),
                &done.survivors,
                &Metrics::default(),
            )
            .await;
            info!(job = %self.job_id, bins = layout.node_len() / 3, "bin edges agreed");
        }

        Ok((model, state))
    }

    /// Round 0 of a job without DP: every partner's sketch of each numeric column and its
    /// label counts; returns the bin edges from the sketches' sum, the base margin, the
    /// usable rows and the round (committed by the caller with the job's first state).
    async fn sketch_round(
        &mut self,
        schema: &FeatureSchema,
        standardizer: &Standardizer,
        params: &fedmark_core::gbdt::GbdtParams,
    ) -> Result<(Vec<Feature>, f64, f64, Done), JobError> {
        self.phase("round 0: bin sketch");
        let done = self
            .trees_round(
                0,
                RoundKind::Statistics,
                None,
                statistics_len(&self.spec),
                standardizer,
            )
            .await?;
        let stats = &done.sum.stats;
        let cells = schema.numeric.len() * SKETCH_CELLS;
        let (rows, positives) = (stats[cells], stats[cells + 1]);
        check_labels(&self.spec, rows, positives)?;
        let grids = Feature::sketch_grids(schema, SKETCH_CELLS)?;
        let features =
            Feature::from_sketch(schema, &grids, &stats[..cells], params.max_bins as usize)?;
        Ok((features, base_margin(positives, rows), rows, done))
    }

    /// Runs a boosted-trees job from its statistics round to its end.
    pub(super) async fn run_trees(
        mut self,
        started: Instant,
        resumed: Option<JobState>,
    ) -> Result<JobOutcome, JobError> {
        let spec = self.spec.clone();
        let params = spec.gbdt_params().ok_or_else(|| SpecError::Invalid {
            field: "model.kind".into(),
            reason: "not a gbdt job".into(),
        })?;
        let schema = FeatureSchema::from_spec(&spec);
        // The partners check the standardisation's shape; trees do not use it.
        let standardizer =
            Standardizer::from_ranges(&schema).ok_or_else(|| SpecError::Invalid {
                field: "features.range".into(),
                reason: "a gbdt job needs a declared range for every numeric column".into(),
            })?;
        let bins = spec.histogram_bins() as usize;

        let (mut model, mut state) = match resumed {
            Some(state) => {
                let model = RoundState::from_words(&state.model.params, &schema)
                    .map_err(|e| {
                        JobError::Preflight(format!("the stored model does not read back: {e}"))
                    })?
                    .model;
                info!(job = %self.job_id, trees = model.trees().len(), "resuming after the last committed tree");
                (model, state)
            }
            None => {
                // Level rounds kept from a start that committed nothing are not replayed: a
                // fresh start draws its bins again.
                self.store.clear_levels(&self.job_id)?;
                self.fresh_trees(&schema, &standardizer, &params).await?
            }
        };
        let features = model.features().to_vec();
        let layout = HistLayout::new(&features);
        let first_tree = model.trees().len() as u32;
        // The level rounds of the tree being grown when the coordinator stopped, by round.
        let mut kept: std::collections::BTreeMap<u64, Level> = self
            .store
            .levels(&self.job_id)?
            .into_iter()
            .filter(|(_, r, _)| r.tree == first_tree)
            .map(|(round, r, stats)| (round, Level::kept(r, stats)))
            .collect();

        // Each level-0 evaluation, by the trees of the model it evaluated: what early stopping
        // keeps is a model already evaluated, so no round evaluates a model twice.
        let mut evals: Vec<Evaluated> = Vec::new();
        let mut stopping = params.early_stopping_rounds.map(EarlyStopping::new);
        // A resumed job's earlier evaluations, from its records (who evaluated is not kept).
        for (j, r) in state.records.iter().enumerate() {
            let metrics = Metrics {
                auc: r.auc,
                log_loss: r.log_loss,
                accuracy: r.accuracy,
                lift_top_decile: r.lift_top_decile,
                count: 0,
            };
            evals.push(Evaluated {
                metrics,
                by: Vec::new(),
                consent: Default::default(),
                attempt: 0,
            });
            if let Some(s) = &mut stopping
                && j > 0
            {
                s.observe(j, r.log_loss);
            }
        }
        let mut stopped_at = None;
        // Trees, a level per round.
        let mut stop_reason = None;
        'trees: for t in first_tree..params.trees {
            if let Some(reason) = self.tree_over_budget(&state, &params, t)? {
                warn!(job = %self.job_id, tree = t + 1, reason = %reason, "stopping early");
                stop_reason = Some(reason);
                break;
            }
            self.phase(&format!("tree {} of {}", t + 1, params.trees));
            let t0 = Instant::now();
            let mut grower = TreeGrower::new(
                &params,
                &features,
                column_sample(&params, t as usize, features.len()),
            )?;
            let mut eval = Metrics::not_evaluated();
            let mut level = 0;
            let mut last = None;
            let mut attempts = 0;
            // Whoever dropped out of any of the tree's level rounds: the tree's record counts
            // them, as a training round's counts the partners that left it.
            let mut dropped = std::collections::BTreeSet::new();
            // The partners whose sums gave the current parent histograms.
            let mut parents_from: Option<Vec<String>> = None;
            while grower.request().is_some() {
                let mut again = false;
                let done = loop {
                    let Some(build) = grower.request() else {
                        return Err(JobError::Preflight("a level without nodes".into()));
                    };
                    let round = level_round(&params, t, level, again);
                    let eval_len = if level == 0 && spec.evaluates_in_training() {
                        eval_stats_len(bins)
                    } else {
                        0
                    };
                    let words = RoundState {
                        model: model.clone(),
                        tree: grower.partial(),
                        build: build.to_vec(),
                    }
                    .to_words();
                    let stats_len = eval_len + build.len() * layout.node_len();
                    let done = match kept.remove(&round) {
                        Some(level) if level.stats.len() == stats_len && level.again == again => {
                            info!(job = %self.job_id, round, "replaying a level round kept before the restart");
                            level
                        }
                        Some(_) => {
                            return Err(JobError::Preflight(format!(
                                "the level round {round} kept before the restart does not fit the tree grown from the rounds before it"
                            )));
                        }
                        None => {
                            let done = self
                                .trees_round(
                                    round,
                                    RoundKind::Training,
                                    Some(words),
                                    stats_len,
                                    &standardizer,
                                )
                                .await?;
                            announce(
                                &self.hub,
                                &self.job_id,
                                (round, done.attempt),
                                &done.output.survivors,
                                &eval,
                            )
                            .await;
                            let level = Level::from_done(done, again);
                            // Kept before it is used: a restarted coordinator grows the tree
                            // on from the same sums.
                            self.store.save_level(
                                &self.job_id,
                                round,
                                &level.record(t),
                                &level.stats,
                            )?;
                            level
                        }
                    };
                    attempts += done.attempts;
                    dropped.extend(done.dropped.iter().cloned());
                    if let Some(plan) = &self.privacy {
                        // Released with this round's result (charged again when a kept round
                        // is replayed: the ledger that charged it was not committed).
                        plan.charge_round(&mut state.ledger.training)?;
                    }
                    // A sibling derived as parent − child is right only when both sums come
                    // from the same partners; otherwise the level is asked for again, whole.
                    let same = parents_from.as_ref() == Some(&done.survivors);
                    if grower.derives() && !same && !again {
                        info!(
                            tree = t + 1,
                            level, "the level's partners changed; asking for every node"
                        );
                        grower.ask_for_all();
                        again = true;
                        continue;
                    }
                    if eval_len > 0 {
                        eval = eval_stats_from_slice(&done.stats[..eval_len], bins).metrics();
                        evals.push(Evaluated {
                            metrics: eval,
                            by: done.survivors.clone(),
                            consent: done.consent.clone(),
                            attempt: done.attempt,
                        });
                        if t > 0
                            && let Some(s) = &mut stopping
                            && let Some(keep) = s.observe(t as usize, eval.log_loss)
                        {
                            // This tree is not grown: the model has not improved for the set
                            // number of trees.
                            stopped_at = Some(keep);
                            break 'trees;
                        }
                    }
                    grower.absorb(&done.stats[eval_len..])?;
                    break done;
                };
                parents_from = Some(done.survivors.clone());
                level += 1;
                last = Some(done);
            }
            let tree = grower.finish()?;
            let mut trees = model.trees().to_vec();
            trees.push(tree);
            model = GbdtModel::from_parts(features.clone(), model.base_margin(), trees)?;
            state.model.params = model_words(&model);
            let Some(done) = last else {
                // The root asks for its histogram, so a tree always has a level.
                continue;
            };
            let counts = (done.survivors.len(), dropped.len());
            let mut record = RoundRecord::new(
                u64::from(t) + 1,
                attempts,
                counts,
                &eval,
                t0.elapsed().as_secs_f64(),
            );
            let epsilon = match &self.privacy {
                Some(plan) => Some(state.ledger.epsilon(plan.delta)?.0),
                None => None,
            };
            record.epsilon = epsilon;
            state.records.push(record.clone());
            state.next_round = u64::from(t) + 2;
            self.commit_trees(&state, RoundKind::Training, &done, &eval, epsilon)?;
            self.store.clear_levels(&self.job_id)?;
            self.events.publish(JobEvent::RoundCommitted {
                job: &self.job_id,
                record: &record,
            });
            info!(
                tree = t + 1,
                levels = level,
                auc = eval.auc,
                seconds = record.seconds,
                "tree complete"
            );
        }

        let grown = model.trees().len();
        if let Some(keep) = stopped_at {
            let n = params.early_stopping_rounds.unwrap_or_default();
            let reason = format!(
                "early stopping: the federated validation log-loss last improved with {keep} \
                 trees, {n} trees ago; kept the first {keep} of {grown} trees"
            );
            return self
                .keep_trees(state, model, keep, &evals, started, reason)
                .await;
        }

        let mut stop_reason =
            stop_reason.unwrap_or_else(|| format!("completed {} trees", params.trees));
        if let Some(why) = self.evaluation_over_budget(&state)? {
            stop_reason.push_str(&why);
            let ended = Ended {
                started,
                stop_reason,
                lost: Vec::new(),
                final_metrics: Metrics::not_evaluated(),
                evaluated_by: Vec::new(),
            };
            return self.finish(state, ended).await;
        }

        // Final evaluation.
        self.phase("final evaluation");
        let round = spec.planned_rounds() + 1;
        let done = self
            .trees_round(
                round,
                RoundKind::Evaluation,
                Some(model_words(&model)),
                eval_stats_len(bins),
                &standardizer,
            )
            .await?;
        let mut stats = done.sum.stats.clone();
        if let Some(plan) = &self.privacy {
            // Released noised, each row's loss divided by the cap (see the client).
            stats[2] *= EVAL_LOSS_CAP;
            plan.charge_final_evaluation(&mut state.ledger)?;
        }
        let final_metrics = eval_stats_from_slice(&stats, bins).metrics();
        if let Some(s) = &mut stopping {
            s.observe(grown, final_metrics.log_loss);
            if let Some((_, keep)) = s.best()
                && keep < grown
            {
                let reason = format!(
                    "completed {grown} trees; kept the first {keep}, whose federated \
                     validation log-loss was the lowest"
                );
                return self
                    .keep_trees(state, model, keep, &evals, started, reason)
                    .await;
            }
        }
        let survivors = done.output.survivors;
        announce(
            &self.hub,
            &self.job_id,
            (round, done.attempt),
            &survivors,
            &final_metrics,
        )
        .await;
        let ended = Ended {
            started,
            stop_reason,
            lost: Vec::new(),
            final_metrics,
            evaluated_by: survivors,
        };
        self.finish(state, ended).await
    }
}
