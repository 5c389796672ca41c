//! What the coordinator shows the parties in a round of a boosted-trees job, as the flat
//! vector of `f64` a round's model travels as.
//!
//! A round of such a job grows one level of a tree: every party needs the model so far (the
//! features' bin edges, the base margin and the finished trees, for its margins), the tree
//! being grown (to route its rows) and the nodes asked for. [`RoundState`] holds the three and
//! encodes them as words so that the one model download, its hash in the round's records and
//! the partners' one-unmask-per-model guard serve trees as they serve weights. Every count,
//! index and tag is an integer below 2³² and so exact in an `f64`; [`RoundState::from_words`]
//! checks each one and the whole result (edges, trees, routing, the nodes asked for) before a
//! party uses it, so a damaged or hostile vector is an error, never a panic or a huge
//! allocation.
//!
//! Layout, in order:
//!
//! | words | content |
//! | --- | --- |
//! | 2 | [`MAGIC`], [`WIRE_VERSION`] |
//! | 1 + … | features: their count, then per feature a kind (0 numeric, 1 categorical) and a count (thresholds, or slots), then a numeric feature's thresholds |
//! | 1 | the base margin |
//! | 1 + … | finished trees: their count, then per tree its node count and nodes |
//! | 1 + … | the tree being grown: its node count and nodes |
//! | 1 + … | the nodes asked for: their count and ids |
//!
//! A node is a tag and its fields: a split (0) `feature, rule, left, right, gain, cover`, where
//! a rule is 0 `bin, threshold` or 1 and the category set as eight 32-bit halves; a leaf (1)
//! `value, cover`; an open node (2, in the tree being grown only). In the tree being grown a
//! split's gain and cover, and a leaf's value and cover, are not needed for routing and are
//! sent as 0.

use super::bins::{BinEdges, Feature};
use super::error::GbdtError;
use super::grow::{PartialNode, PartialTree, check_build};
use super::split::{CategorySet, SplitRule};
use super::tree::{GbdtModel, Node, Tree};
use crate::features::FeatureSchema;

/// First word: "gbdt" in ASCII.
pub const MAGIC: f64 = 1_734_501_492.0;
/// The layout version this code writes and reads.
pub const WIRE_VERSION: f64 = 1.0;

const SPLIT: u32 = 0;
const LEAF: u32 = 1;
const OPEN: u32 = 2;
const NUMERIC: u32 = 0;
const CATEGORICAL: u32 = 1;

/// What a round of a boosted-trees job shows the parties.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundState {
    /// The features, the base margin and the finished trees.
    pub model: GbdtModel,
    /// The tree being grown (a lone open root in an evaluation round).
    pub tree: PartialTree,
    /// The nodes whose histograms the round asks for (ascending; empty in an evaluation).
    pub build: Vec<u32>,
}

fn push_rule(out: &mut Vec<f64>, rule: &SplitRule) {
    match rule {
        SplitRule::Numeric { bin, threshold } => {
            out.extend([f64::from(NUMERIC), f64::from(*bin), *threshold]);
        }
        SplitRule::Categorical { left } => {
            out.push(f64::from(CATEGORICAL));
            for word in left.words() {
                out.extend([f64::from(word as u32), f64::from((word >> 32) as u32)]);
            }
        }
    }
}

impl RoundState {
    /// The words of this state (see the module doc).
    pub fn to_words(&self) -> Vec<f64> {
        let mut out = vec![MAGIC, WIRE_VERSION];
        let features = self.model.features();
        out.push(features.len() as f64);
        for f in features {
            match &f.edges {
                BinEdges::Numeric { thresholds } => {
                    out.extend([f64::from(NUMERIC), thresholds.len() as f64]);
                    out.extend(thresholds);
                }
                BinEdges::Categorical { slots } => {
                    out.extend([f64::from(CATEGORICAL), *slots as f64]);
                }
            }
        }
        out.push(self.model.base_margin());
        out.push(self.model.trees().len() as f64);
        for tree in self.model.trees() {
            out.push(tree.nodes().len() as f64);
            for node in tree.nodes() {
                match node {
                    Node::Split {
                        feature,
                        rule,
                        left,
                        right,
                        gain,
                        cover,
                    } => {
                        out.extend([f64::from(SPLIT), f64::from(*feature)]);
                        push_rule(&mut out, rule);
                        out.extend([f64::from(*left), f64::from(*right), *gain, *cover]);
                    }
                    Node::Leaf { value, cover } => out.extend([f64::from(LEAF), *value, *cover]),
                }
            }
        }
        out.push(self.tree.nodes().len() as f64);
        for node in self.tree.nodes() {
            match node {
                PartialNode::Split {
                    feature,
                    rule,
                    left,
                    right,
                } => {
                    out.extend([f64::from(SPLIT), f64::from(*feature)]);
                    push_rule(&mut out, rule);
                    out.extend([f64::from(*left), f64::from(*right), 0.0, 0.0]);
                }
                PartialNode::Leaf => out.extend([f64::from(LEAF), 0.0, 0.0]),
                PartialNode::Open => out.push(f64::from(OPEN)),
            }
        }
        out.push(self.build.len() as f64);
        out.extend(self.build.iter().map(|&n| f64::from(n)));
        out
    }

    /// Reads a state from its words, naming the features after `schema`'s columns (numeric
    /// first, then categorical) and checking that the features are the schema's: a numeric
    /// feature per numeric column, and each categorical column's slots.
    pub fn from_words(words: &[f64], schema: &FeatureSchema) -> Result<Self, GbdtError> {
        let mut r = Reader { words, at: 0 };
        if r.next("magic")? != MAGIC || r.next("version")? != WIRE_VERSION {
            return Err(bad("not a boosted-trees round state of version 1"));
        }
        let names: Vec<&str> = schema
            .numeric
            .iter()
            .map(String::as_str)
            .chain(schema.categorical.iter().map(|(n, _)| n.as_str()))
            .collect();
        let n_features = r.count("features")?;
        if n_features != names.len() {
            return Err(bad(&format!(
                "{n_features} features; the job's schema has {}",
                names.len()
            )));
        }
        let mut features = Vec::with_capacity(n_features);
        for (f, name) in names.iter().enumerate() {
            let kind = r.int("feature kind", CATEGORICAL)?;
            let numeric = f < schema.numeric.len();
            let edges = match (kind, numeric) {
                (NUMERIC, true) => {
                    let count = r.count("thresholds")?;
                    BinEdges::Numeric {
                        thresholds: r.take(count, "thresholds")?.to_vec(),
                    }
                }
                (CATEGORICAL, false) => {
                    let count = r.int("slots", 256)? as usize;
                    let expected = schema.categorical[f - schema.numeric.len()].1.width();
                    if count != expected {
                        return Err(bad(&format!(
                            "feature `{name}` has {count} slots; the schema gives {expected}"
                        )));
                    }
                    BinEdges::Categorical { slots: count }
                }
                _ => {
                    return Err(bad(&format!(
                        "feature `{name}` is not of its column's kind"
                    )));
                }
            };
            edges
                .check()
                .map_err(|e| bad(&format!("feature `{name}`: {e}")))?;
            features.push(Feature {
                name: (*name).to_owned(),
                edges,
            });
        }
        let base = r.next("base margin")?;
        let n_trees = r.count("trees")?;
        let mut trees = Vec::with_capacity(n_trees.min(r.left()));
        for _ in 0..n_trees {
            let n_nodes = r.count("nodes")?;
            let mut nodes = Vec::with_capacity(n_nodes.min(r.left()));
            for _ in 0..n_nodes {
                nodes.push(match r.int("node tag", LEAF)? {
                    SPLIT => {
                        let (feature, rule, left, right) = r.split()?;
                        Node::Split {
                            feature,
                            rule,
                            left,
                            right,
                            gain: r.next("gain")?,
                            cover: r.next("cover")?,
                        }
                    }
                    _ => Node::Leaf {
                        value: r.next("leaf value")?,
                        cover: r.next("cover")?,
                    },
                });
            }
            trees.push(Tree::from_nodes(nodes));
        }
        let model = GbdtModel::checked(features, base, trees)?;
        let n_nodes = r.count("nodes")?;
        let mut nodes = Vec::with_capacity(n_nodes.min(r.left()));
        for _ in 0..n_nodes {
            nodes.push(match r.int("node tag", OPEN)? {
                SPLIT => {
                    let (feature, rule, left, right) = r.split()?;
                    r.next("gain")?;
                    r.next("cover")?;
                    PartialNode::Split {
                        feature,
                        rule,
                        left,
                        right,
                    }
                }
                LEAF => {
                    r.next("leaf value")?;
                    r.next("cover")?;
                    PartialNode::Leaf
                }
                _ => PartialNode::Open,
            });
        }
        let tree = PartialTree::from_nodes(nodes, model.features())?;
        let n_build = r.count("nodes asked for")?;
        let mut build = Vec::with_capacity(n_build.min(r.left()));
        for _ in 0..n_build {
            build.push(r.int("node id", u32::MAX)?);
        }
        check_build(&tree, &build)?;
        if r.left() != 0 {
            return Err(bad(&format!("{} words after the end", r.left())));
        }
        Ok(Self { model, tree, build })
    }
}

fn bad(what: &str) -> GbdtError {
    GbdtError::Model(format!("round state: {what}"))
}

struct Reader<'w> {
    words: &'w [f64],
    at: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.words.len() - self.at
    }

    fn next(&mut self, what: &str) -> Result<f64, GbdtError> {
        let w = self
            .words
            .get(self.at)
            .copied()
            .ok_or_else(|| bad(&format!("ends before its {what}")))?;
        self.at += 1;
        Ok(w)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[f64], GbdtError> {
        if n > self.left() {
            return Err(bad(&format!("ends before its {n} {what}")));
        }
        let out = &self.words[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    /// An integer word in 0..=max.
    fn int(&mut self, what: &str, max: u32) -> Result<u32, GbdtError> {
        let w = self.next(what)?;
        if w.fract() != 0.0 || !(0.0..=f64::from(max)).contains(&w) {
            return Err(bad(&format!("{what} {w} is not an integer in 0..={max}")));
        }
        Ok(w as u32)
    }

    /// A count, which cannot exceed the words left (every counted item takes a word).
    fn count(&mut self, what: &str) -> Result<usize, GbdtError> {
        let n = self.int(what, u32::MAX)? as usize;
        if n > self.left() {
            return Err(bad(&format!("{n} {what} but {} words left", self.left())));
        }
        Ok(n)
    }

    fn split(&mut self) -> Result<(u32, SplitRule, u32, u32), GbdtError> {
        let feature = self.int("feature", u32::MAX)?;
        let rule = match self.int("rule kind", CATEGORICAL)? {
            NUMERIC => SplitRule::Numeric {
                bin: self.int("bin", u32::from(u8::MAX))? as u8,
                threshold: self.next("threshold")?,
            },
            _ => {
                let mut words = [0u64; 4];
                for w in &mut words {
                    let low = u64::from(self.int("category word", u32::MAX)?);
                    let high = u64::from(self.int("category word", u32::MAX)?);
                    *w = low | high << 32;
                }
                SplitRule::Categorical {
                    left: CategorySet::from_words(words),
                }
            }
        };
        let left = self.int("child", u32::MAX)?;
        let right = self.int("child", u32::MAX)?;
        Ok((feature, rule, left, right))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Categorical;
    use crate::gbdt::bins::BinnedRows;
    use crate::gbdt::params::GbdtParams;
    use crate::gbdt::train::train;

    fn schema() -> FeatureSchema {
        FeatureSchema {
            numeric: vec!["x".into()],
            categorical: vec![(
                "c".into(),
                Categorical::Vocabulary(vec!["a".into(), "b".into(), "d".into()]),
            )],
            ranges: vec![Some([0.0, 1.0])],
        }
    }

    /// A trained model of two trees, and a third tree half grown: its root split, its
    /// children open and asked for.
    fn state() -> RoundState {
        let s = schema();
        let features = Feature::from_ranges(&s, 8).unwrap();
        let mut rows = crate::features::RawRows::new(&s);
        for i in 0..200 {
            let x = f64::from(i % 10) / 10.0;
            rows.push(
                &[x],
                &[(i % 4) as u32],
                x + if i % 4 == 1 { 0.5 } else { 0.0 } > 0.6,
            );
        }
        let binned = BinnedRows::from_raw(&rows, &features).unwrap();
        let params = GbdtParams {
            trees: 2,
            max_depth: 2,
            ..Default::default()
        };
        let (model, _) = train(&params, &features, &binned, None).unwrap();
        assert!(model.trees().iter().any(|t| t.leaves() > 1));
        let tree = PartialTree::from_nodes(
            vec![
                PartialNode::Split {
                    feature: 1,
                    rule: SplitRule::Categorical {
                        left: CategorySet::from(vec![1, 3]),
                    },
                    left: 1,
                    right: 2,
                },
                PartialNode::Open,
                PartialNode::Open,
            ],
            model.features(),
        )
        .unwrap();
        RoundState {
            model,
            tree,
            build: vec![2],
        }
    }

    #[test]
    fn a_state_round_trips_through_its_words() {
        let st = state();
        let words = st.to_words();
        assert_eq!(words[..2], [MAGIC, WIRE_VERSION]);
        // "gbdt" in ASCII, big-endian.
        assert_eq!(MAGIC, f64::from(u32::from_be_bytes(*b"gbdt")));
        let back = RoundState::from_words(&words, &schema()).unwrap();
        assert_eq!(back, st);
        // The first round's state: no tree yet, so few words follow the categorical slots.
        let first = RoundState {
            model: GbdtModel::new(st.model.features().to_vec(), 0.5, Vec::new()),
            tree: PartialTree::root(),
            build: vec![0],
        };
        let back = RoundState::from_words(&first.to_words(), &schema()).unwrap();
        assert_eq!(back, first);
    }

    /// Every truncation is refused, and so is every single word replaced by a value no
    /// encoder writes there (a fraction, a negative count, a huge count, NaN) — except where
    /// that value is a legal float field — without a panic.
    #[test]
    fn damaged_words_are_refused_without_a_panic() {
        let s = schema();
        let words = state().to_words();
        for n in 0..words.len() {
            assert!(
                RoundState::from_words(&words[..n], &s).is_err(),
                "cut at {n}"
            );
        }
        let mut longer = words.clone();
        longer.push(0.0);
        assert!(RoundState::from_words(&longer, &s).is_err());
        for i in 0..words.len() {
            for v in [0.5, -1.0, 4.0e9, f64::NAN, 1e300] {
                let mut w = words.clone();
                w[i] = v;
                // Must not panic; may be accepted only where any float is legal.
                let _ = RoundState::from_words(&w, &s);
            }
        }
        // A huge count up front is refused before anything is allocated for it.
        let mut w = words.clone();
        w[2] = f64::from(u32::MAX);
        assert!(RoundState::from_words(&w, &s).is_err());
    }

    #[test]
    fn a_state_for_another_schema_or_with_bad_parts_is_refused() {
        let st = state();
        let words = st.to_words();
        let mut other = schema();
        other.categorical[0].1 = Categorical::Vocabulary(vec!["a".into()]);
        assert!(
            RoundState::from_words(&words, &other).is_err(),
            "slots differ"
        );
        let mut two = schema();
        two.numeric.push("y".into());
        two.ranges.push(None);
        assert!(
            RoundState::from_words(&words, &two).is_err(),
            "feature count"
        );
        // Asking for a node that is not open.
        let mut asks_split = st.clone();
        asks_split.build = vec![0];
        let w = asks_split.to_words();
        assert!(RoundState::from_words(&w, &schema()).is_err());
    }
}
