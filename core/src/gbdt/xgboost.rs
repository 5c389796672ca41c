//! The model in XGBoost's JSON model format, so the `xgboost` package (Python, R, JVM, C)
//! loads and scores it: `xgboost.Booster(model_file="model.xgb.json")`.
//!
//! The input XGBoost expects is the raw row: numeric columns as their values, categorical
//! columns (declared with feature type `c`) as their slot codes — a vocabulary value's index,
//! anything else the vocabulary's length (the "other" slot) — or, for a hashed column, its
//! bucket. The translation of the rules:
//!
//! - a numeric rule "value ≤ t" (bin ≤ k) becomes XGBoost's "value < c" with `c` the smallest
//!   `f32` above the largest `f32` not above `t`. XGBoost compares in `f32`, so a value whose
//!   `f32` rounding crosses `t` (only possible when neither it nor `t` is an `f32`) may go the
//!   other way; values and thresholds that are `f32` (integers below 2²⁴, short decimals on a
//!   binary grid) route exactly as here. A missing value (NaN) goes left, as bin 0 does here;
//! - a categorical rule "slot in L goes left" becomes a partition split listing the slots that
//!   go right (XGBoost sends the listed categories right), with missing values going where
//!   slot 0 goes;
//! - leaf values (learning rate included) are stored as they are; XGBoost keeps them as `f32`,
//!   and the base margin as the `f32` probability `base_score`, so its margins agree with
//!   fedmark's to about 1e-6 relative, not bit for bit.

use serde_json::{Value, json};

use super::bins::BinEdges;
use super::split::SplitRule;
use super::tree::{GbdtModel, Node, Tree};
use crate::model::sigmoid;

/// XGBoost's "no parent" for the root.
const NO_PARENT: i64 = 2_147_483_647;

/// The XGBoost version the document claims to be written by.
const WRITTEN_AS: [u32; 3] = [2, 1, 0];

/// The smallest `f32` `c` with `v < c` ⟺ `v ≤ t` for every `f32` `v`.
fn xgb_condition(t: f64) -> f32 {
    let mut down = t as f32;
    if f64::from(down) > t {
        down = down.next_down();
    }
    down.next_up()
}

fn tree_json(tree: &Tree, id: usize, n_features: usize, edges: &[BinEdges]) -> Value {
    let nodes = tree.nodes();
    let n = nodes.len();
    let mut left = vec![-1i64; n];
    let mut right = vec![-1i64; n];
    let mut parents = vec![NO_PARENT; n];
    let mut split_indices = vec![0u32; n];
    let mut conditions = vec![0.0f32; n];
    let mut split_type = vec![0u8; n];
    let mut default_left = vec![0u8; n];
    let mut base_weights = vec![0.0f32; n];
    let mut loss_changes = vec![0.0f32; n];
    let mut sum_hessian = vec![0.0f32; n];
    let (mut categories, mut cat_nodes, mut cat_segments, mut cat_sizes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, node) in nodes.iter().enumerate() {
        match node {
            Node::Split {
                feature,
                rule,
                left: l,
                right: r,
                gain,
                cover,
            } => {
                left[i] = i64::from(*l);
                right[i] = i64::from(*r);
                parents[*l as usize] = i as i64;
                parents[*r as usize] = i as i64;
                split_indices[i] = *feature;
                loss_changes[i] = *gain as f32;
                sum_hessian[i] = *cover as f32;
                match rule {
                    SplitRule::Numeric { threshold, .. } => {
                        conditions[i] = xgb_condition(*threshold);
                        default_left[i] = 1;
                    }
                    SplitRule::Categorical { left: set } => {
                        split_type[i] = 1;
                        default_left[i] = u8::from(set.contains(0));
                        let slots = edges
                            .get(*feature as usize)
                            .map_or(0, BinEdges::n_bins)
                            .min(256);
                        let goes_right: Vec<u32> = (0..slots)
                            .filter(|&s| !set.contains(s as u8))
                            .map(|s| s as u32)
                            .collect();
                        cat_nodes.push(i);
                        cat_segments.push(categories.len());
                        cat_sizes.push(goes_right.len());
                        categories.extend(goes_right);
                    }
                }
            }
            Node::Leaf { value, cover } => {
                conditions[i] = *value as f32;
                base_weights[i] = *value as f32;
                sum_hessian[i] = *cover as f32;
            }
        }
    }
    json!({
        "base_weights": base_weights,
        "categories": categories,
        "categories_nodes": cat_nodes,
        "categories_segments": cat_segments,
        "categories_sizes": cat_sizes,
        "default_left": default_left,
        "id": id,
        "left_children": left,
        "loss_changes": loss_changes,
        "parents": parents,
        "right_children": right,
        "split_conditions": conditions,
        "split_indices": split_indices,
        "split_type": split_type,
        "sum_hessian": sum_hessian,
        "tree_param": {
            "num_deleted": "0",
            "num_feature": n_features.to_string(),
            "num_nodes": n.to_string(),
            "size_leaf_vector": "1"
        }
    })
}

impl GbdtModel {
    /// The model as an XGBoost JSON model document (see the module doc for the input it
    /// expects and how closely it agrees).
    pub fn to_xgboost_json(&self) -> Value {
        let features = self.features();
        let n_features = features.len();
        let edges: Vec<BinEdges> = features.iter().map(|f| f.edges.clone()).collect();
        let trees: Vec<Value> = self
            .trees()
            .iter()
            .enumerate()
            .map(|(id, t)| tree_json(t, id, n_features, &edges))
            .collect();
        let n_trees = trees.len();
        let base_score = sigmoid(self.base_margin());
        json!({
            "learner": {
                "attributes": {},
                "feature_names": features.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
                "feature_types": features
                    .iter()
                    .map(|f| if f.edges.is_categorical() { "c" } else { "float" })
                    .collect::<Vec<_>>(),
                "gradient_booster": {
                    "model": {
                        "gbtree_model_param": {
                            "num_parallel_tree": "1",
                            "num_trees": n_trees.to_string()
                        },
                        "iteration_indptr": (0..=n_trees).collect::<Vec<_>>(),
                        "tree_info": vec![0; n_trees],
                        "trees": trees
                    },
                    "name": "gbtree"
                },
                "learner_model_param": {
                    "base_score": format!("[{base_score:E}]"),
                    "boost_from_average": "1",
                    "num_class": "0",
                    "num_feature": n_features.to_string(),
                    "num_target": "1"
                },
                "objective": {
                    "name": "binary:logistic",
                    "reg_loss_param": { "scale_pos_weight": "1" }
                }
            },
            "version": WRITTEN_AS
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The condition routes every f32 as "≤ t" does, around thresholds that are and are not
    /// f32 (checked against the neighbouring f32 values, an independent recomputation).
    #[test]
    fn conditions_keep_less_or_equal_for_every_f32() {
        for t in [
            0.5,
            1.0,
            17.0,
            -3.0,
            0.1,
            1.0 / 3.0,
            -0.7,
            123_456.789,
            0.0,
            -0.0,
        ] {
            let c = xgb_condition(t);
            let mut v = (t as f32).next_down().next_down().next_down();
            for _ in 0..7 {
                assert_eq!(v < c, f64::from(v) <= t, "t = {t}, v = {v}, c = {c}");
                v = v.next_up();
            }
        }
    }
}
