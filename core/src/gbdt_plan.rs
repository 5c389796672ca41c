//! The round plan of a federated boosted-trees job (`gbdt::plan`; a module of its own, with
//! the settings in `gbdt_params`, so the spec can use them without importing the trees): which protocol round grows which level of
//! which tree, and the largest round the spec allows, so a partner can bound what a round asks
//! of it before it downloads anything.
//!
//! Tree `t` (0-based) of a job whose trees are at most `D = max_depth` deep grows level `ℓ`
//! (`0 … D − 1`; the deepest level needs no histogram: its leaves' weights come from their
//! parents' splits) in round `1 + 2(t·D + ℓ)`, and, when that round's survivors are not the
//! ones whose sums gave the level's parent histograms, once more in the next round number with
//! every node asked for: a sibling derived as parent − child is only right when both sums
//! come from the same partners. Unused numbers are skipped; numbers only move forward. Round
//! 0 is the statistics round (bin sketch and label counts) and round `2·T·D + 1` the final
//! evaluation.

use crate::gbdt_params::GbdtParams;

/// Words of a split node in a [`crate::gbdt::RoundState`] at most (a categorical rule's set
/// as eight 32-bit halves).
const SPLIT_WORDS: u128 = 2 + 1 + 8 + 4;

/// Cells of each numeric feature's sketch grid in the statistics round.
pub const SKETCH_CELLS: usize = 1024;

/// Round numbers per tree level: two (the level, and the level asked for again) where
/// siblings are derived, one in a job with noised sums ([`GbdtParams::noised`]), which asks
/// for every node at once.
fn per_level(params: &GbdtParams) -> u64 {
    if params.noised { 1 } else { 2 }
}

/// Training round numbers of the plan: `2 × trees × max_depth`, or `trees × max_depth` in a
/// job with noised sums (its releases: one per level).
pub fn planned_rounds(params: &GbdtParams) -> u64 {
    per_level(params) * u64::from(params.trees) * u64::from(params.max_depth)
}

/// The protocol round of level `level` of tree `tree` (both 0-based); `again` is the round
/// that asks for the level once more, every node built (none in a job with noised sums).
pub fn level_round(params: &GbdtParams, tree: u32, level: u32, again: bool) -> u64 {
    let i = u64::from(tree) * u64::from(params.max_depth) + u64::from(level);
    1 + per_level(params) * i + u64::from(again && !params.noised)
}

/// The (tree, level) a training round grows, or `None` outside `1..=planned_rounds`.
pub fn tree_and_level(params: &GbdtParams, round: u64) -> Option<(u32, u32)> {
    let depth = u64::from(params.max_depth.max(1));
    if round == 0 || round > planned_rounds(params) {
        return None;
    }
    let i = (round - 1) / per_level(params);
    Some(((i / depth) as u32, (i % depth) as u32))
}

/// Whether a training round is the one that asks for its level again (every node built).
/// The root level never asks again: it derives nothing, and a second sum of the root over
/// other partners would only tell their difference. A job with noised sums has no such
/// round.
pub fn asks_again(params: &GbdtParams, round: u64) -> bool {
    !params.noised && round >= 1 && (round - 1) % 2 == 1
}

/// The most nodes level `level` can ask for: `2^level`, and no more than the leaf budget.
pub fn max_level_nodes(params: &GbdtParams, level: u32) -> usize {
    let by_depth = 1usize.checked_shl(level).unwrap_or(usize::MAX);
    by_depth.min(params.leaf_budget())
}

/// The most nodes a tree can have.
pub fn max_tree_nodes(params: &GbdtParams) -> u128 {
    let by_depth = (1u128 << (params.max_depth + 1)) - 1;
    let by_leaves = 2 * params.leaf_budget() as u128 - 1;
    by_depth.min(by_leaves)
}

/// The most words a round's [`crate::gbdt::RoundState`] can take for this job: its features (at most
/// 256 bins each), every tree full, and the tree being grown.
pub fn max_state_words(params: &GbdtParams, n_numeric: usize, n_categorical: usize) -> u128 {
    let features = 1 + n_numeric as u128 * (2 + 255) + n_categorical as u128 * 2;
    let tree = 1 + max_tree_nodes(params) * SPLIT_WORDS;
    let build = 1 + max_tree_nodes(params);
    2 + features + 1 + 1 + u128::from(params.trees) * tree + tree + build
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_enumerate_trees_and_levels_in_order() {
        let p = GbdtParams {
            trees: 3,
            max_depth: 4,
            ..Default::default()
        };
        assert_eq!(planned_rounds(&p), 24);
        let mut expected = 1;
        for t in 0..3 {
            for l in 0..4 {
                for again in [false, true] {
                    assert_eq!(level_round(&p, t, l, again), expected);
                    assert_eq!(tree_and_level(&p, expected), Some((t, l)));
                    expected += 1;
                }
            }
        }
        assert_eq!(tree_and_level(&p, 0), None);
        assert_eq!(tree_and_level(&p, 25), None);
        assert_eq!(max_level_nodes(&p, 0), 1);
        assert_eq!(max_level_nodes(&p, 3), 8);
        let leaves = GbdtParams {
            max_leaves: Some(5),
            ..p.clone()
        };
        assert_eq!(max_level_nodes(&leaves, 3), 5);
        assert_eq!(max_tree_nodes(&p), 31);
        assert_eq!(max_tree_nodes(&leaves), 9);
    }

    /// With noised sums every level is one round, numbered in order, and no round asks again.
    #[test]
    fn a_noised_plan_has_a_round_per_level() {
        let p = GbdtParams {
            trees: 3,
            max_depth: 4,
            noised: true,
            ..Default::default()
        };
        assert_eq!(planned_rounds(&p), 12);
        let mut expected = 1;
        for t in 0..3 {
            for l in 0..4 {
                assert_eq!(level_round(&p, t, l, false), expected);
                assert_eq!(level_round(&p, t, l, true), expected);
                assert_eq!(tree_and_level(&p, expected), Some((t, l)));
                assert!(!asks_again(&p, expected));
                expected += 1;
            }
        }
        assert_eq!(tree_and_level(&p, 13), None);
        let plain = GbdtParams { noised: false, ..p };
        assert!(asks_again(&plain, 2) && !asks_again(&plain, 3));
    }

    /// The bound holds for a real state: a model of full trees plus a tree being grown.
    #[test]
    fn the_state_bound_covers_full_trees() {
        use crate::features::{Categorical, FeatureSchema, RawRows};
        use crate::gbdt::bins::{BinnedRows, Feature};
        use crate::gbdt::grow::PartialTree;
        use crate::gbdt::train::train;
        use crate::gbdt::wire::RoundState;
        let schema = FeatureSchema {
            numeric: vec!["a".into()],
            categorical: vec![(
                "c".into(),
                Categorical::Vocabulary((0..9).map(|v| format!("v{v}")).collect()),
            )],
            ranges: vec![Some([0.0, 1.0])],
        };
        let features = Feature::from_ranges(&schema, 256).unwrap();
        let mut rows = RawRows::new(&schema);
        for i in 0..4000u32 {
            let a = f64::from(i % 997) / 997.0;
            rows.push(&[a], &[i % 10], (i * 7919) % 13 < 6);
        }
        let binned = BinnedRows::from_raw(&rows, &features).unwrap();
        let params = GbdtParams {
            trees: 5,
            max_depth: 3,
            min_child_weight: 0.0,
            ..Default::default()
        };
        let (model, _) = train(&params, &features, &binned, None).unwrap();
        let state = RoundState {
            model,
            tree: PartialTree::root(),
            build: vec![0],
        };
        let words = state.to_words().len() as u128;
        assert!(words <= max_state_words(&params, 1, 1), "{words}");
    }
}
