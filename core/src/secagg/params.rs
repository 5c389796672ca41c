//! The public parameters of a round that the coordinator announces and every party checks:
//! round id, ordered cohort, threshold, neighbour graph and vector length.

use std::collections::HashMap;

use super::error::SecAggError;
use super::graph::{GraphSpec, NeighbourGraph};
use super::keys::RoundId;
use super::prg::MAX_WORDS;

/// Largest cohort: the fixed-point codec's limit ([`crate::codec::MAX_PARTIES`]).
pub const MAX_COHORT: usize = crate::codec::MAX_PARTIES;

/// Validated parameters of one round.
///
/// A partner's index is its position in the cohort; its Shamir evaluation point is index + 1.
/// The threshold t applies within each closed neighbourhood N⁺(i) (see
/// [`super::graph`]): secrets are shared t-of-|N⁺(i) ∩ U1| and every phase needs t partners of
/// each neighbourhood still present. With the complete graph this is the plain t-of-n.
#[derive(Debug, Clone)]
pub struct RoundParams {
    round: RoundId,
    cohort: Vec<String>,
    index: HashMap<String, usize>,
    threshold: usize,
    graph_spec: GraphSpec,
    graph: NeighbourGraph,
    vector_len: usize,
}

impl RoundParams {
    /// Checks and builds a round's parameters: a non-empty cohort of distinct non-empty ids,
    /// a graph that builds, a threshold of more than half and at most all of a closed
    /// neighbourhood, and a vector a mask can cover.
    pub fn new(
        round: RoundId,
        cohort: Vec<String>,
        threshold: usize,
        graph: GraphSpec,
        vector_len: usize,
    ) -> Result<Self, SecAggError> {
        if cohort.is_empty() {
            return Err(SecAggError::EmptyCohort);
        }
        if cohort.len() > MAX_COHORT {
            return Err(SecAggError::CohortTooLarge {
                got: cohort.len(),
                max: MAX_COHORT,
            });
        }
        if vector_len > MAX_WORDS {
            return Err(SecAggError::VectorTooLong {
                got: vector_len,
                max: MAX_WORDS,
            });
        }
        let mut index = HashMap::with_capacity(cohort.len());
        for (i, id) in cohort.iter().enumerate() {
            if id.is_empty() {
                return Err(SecAggError::EmptyPartnerId(i));
            }
            if index.insert(id.clone(), i).is_some() {
                return Err(SecAggError::DuplicateInCohort(id.clone()));
            }
        }
        let built = NeighbourGraph::new(&graph, cohort.len())?;
        let neighbourhood = built.degree() + 1;
        if threshold > neighbourhood || 2 * threshold <= neighbourhood {
            return Err(SecAggError::ThresholdOutOfRange {
                threshold,
                neighbourhood,
            });
        }
        Ok(Self {
            round,
            cohort,
            index,
            threshold,
            graph_spec: graph,
            graph: built,
            vector_len,
        })
    }

    /// The round id.
    pub fn round(&self) -> &RoundId {
        &self.round
    }

    /// The cohort, in index order.
    pub fn cohort(&self) -> &[String] {
        &self.cohort
    }

    /// Partners in the cohort.
    pub fn len(&self) -> usize {
        self.cohort.len()
    }

    /// Never true once built.
    pub fn is_empty(&self) -> bool {
        self.cohort.is_empty()
    }

    /// The per-neighbourhood threshold t.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The graph's seed and asked-for degree.
    pub fn graph_spec(&self) -> &GraphSpec {
        &self.graph_spec
    }

    /// The neighbour graph.
    pub fn graph(&self) -> &NeighbourGraph {
        &self.graph
    }

    /// Words in each partner's vector.
    pub fn vector_len(&self) -> usize {
        self.vector_len
    }

    /// A partner's cohort index.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// A partner's cohort index, or [`SecAggError::NotInCohort`].
    pub fn require_index(&self, id: &str) -> Result<usize, SecAggError> {
        self.index_of(id)
            .ok_or_else(|| SecAggError::NotInCohort(id.to_owned()))
    }

    /// The id at a cohort index (empty if out of range).
    pub(crate) fn id(&self, index: usize) -> &str {
        self.cohort.get(index).map_or("", String::as_str)
    }

    /// A partner's Shamir evaluation point.
    pub(crate) fn point(index: usize) -> u32 {
        // Indices are below MAX_COHORT, far below u32::MAX.
        u32::try_from(index + 1).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i}")).collect()
    }

    #[test]
    fn parameters_are_validated() {
        let round = RoundId::new("job", 1, 0);
        let full = |n| GraphSpec::complete(&round, n);
        assert!(RoundParams::new(round, ids(5), 3, full(5), 10).is_ok());
        assert!(RoundParams::new(round, ids(1), 1, full(1), 10).is_ok());
        assert_eq!(
            RoundParams::new(round, vec![], 1, full(0), 10).err(),
            Some(SecAggError::EmptyCohort)
        );
        let mut dup = ids(3);
        dup.push("p1".into());
        assert_eq!(
            RoundParams::new(round, dup, 3, full(4), 10).err(),
            Some(SecAggError::DuplicateInCohort("p1".into()))
        );
        assert_eq!(
            RoundParams::new(round, vec!["a".into(), String::new()], 2, full(2), 10).err(),
            Some(SecAggError::EmptyPartnerId(1))
        );
        for t in [0, 2, 6] {
            assert_eq!(
                RoundParams::new(round, ids(4), t, full(4), 10).err(),
                Some(SecAggError::ThresholdOutOfRange {
                    threshold: t,
                    neighbourhood: 4
                })
            );
        }
        // Sparse: t counts within the neighbourhood of degree 4 (5 partners).
        let sparse = GraphSpec::for_round(&round, 4);
        assert!(RoundParams::new(round, ids(20), 3, sparse, 10).is_ok());
        assert!(RoundParams::new(round, ids(20), 11, sparse, 10).is_err());
        assert!(RoundParams::new(round, ids(3), 2, full(3), MAX_WORDS + 1).is_err());
    }
}
