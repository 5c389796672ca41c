//! The public parameters of a round that the coordinator announces and every party checks:
//! round id, canonical cohort, threshold, neighbour graph and vector length.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::error::SecAggError;
use super::graph::{GraphSpec, NeighbourGraph};
use super::keys::RoundId;
use super::prg::MAX_WORDS;

/// Largest cohort: the fixed-point codec's limit ([`crate::codec::MAX_PARTIES`]).
pub const MAX_COHORT: usize = crate::codec::MAX_PARTIES;

/// Validated parameters of one round.
///
/// A partner's index is its position in the cohort; its Shamir evaluation point is index + 1.
/// The cohort is canonical (sorted, each partner once), so a coordinator cannot show two
/// partners the same cohort in two orders, and the neighbour graph's seed derives from the
/// round instance, the cohort and the degree ([`GraphSpec::for_cohort`]), so it cannot choose
/// the neighbourhoods. The threshold t applies within each closed neighbourhood N⁺(i) (see
/// [`super::graph`]): secrets are shared t-of-|N⁺(i) ∩ U1| and every phase needs t partners of
/// each neighbourhood still present. With the complete graph this is the plain t-of-n.
///
/// Everything a round signs, derives or encrypts is bound to [`RoundParams::round`], a hash of
/// the instance id and the whole shape, so a partner shown another cohort, degree, threshold
/// or vector length than its peers shares no key, signature or envelope with them.
#[derive(Debug, Clone)]
pub struct RoundParams {
    instance: RoundId,
    round: RoundId,
    cohort: Vec<String>,
    index: HashMap<String, usize>,
    threshold: usize,
    graph_spec: GraphSpec,
    graph: NeighbourGraph,
    vector_len: usize,
}

impl RoundParams {
    /// Checks and builds a round's parameters: a non-empty canonical cohort of distinct
    /// non-empty ids, a graph that builds, a threshold of more than half and at most all of a
    /// closed neighbourhood, and a vector a mask can cover.
    pub fn new(
        instance: RoundId,
        cohort: Vec<String>,
        threshold: usize,
        degree: usize,
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
        if cohort.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SecAggError::CohortNotCanonical);
        }
        let graph = GraphSpec::for_cohort(&instance, &cohort, degree);
        let built = NeighbourGraph::new(&graph, cohort.len())?;
        let neighbourhood = built.degree() + 1;
        if threshold > neighbourhood || 2 * threshold <= neighbourhood {
            return Err(SecAggError::ThresholdOutOfRange {
                threshold,
                neighbourhood,
            });
        }
        let round = context_id(&instance, &cohort, threshold, &graph, vector_len);
        Ok(Self {
            instance,
            round,
            cohort,
            index,
            threshold,
            graph_spec: graph,
            graph: built,
            vector_len,
        })
    }

    /// These parameters with a round setting the protocol does not otherwise carry
    /// (`label`, `value`) bound into the context id ([`Self::round`]): every signature, key
    /// derivation and envelope then holds only among members shown the same value. The
    /// neighbour graph stays the instance's, so a value the coordinator chooses cannot choose
    /// the graph.
    pub fn bound_to(mut self, label: &str, value: &[u8]) -> Self {
        self.round = self.round.bound_to(label, value);
        self
    }

    /// The round instance (job, round, attempt) these parameters were built for.
    pub fn instance(&self) -> &RoundId {
        &self.instance
    }

    /// The id every signature, key derivation and envelope of the round is bound to: a hash
    /// of the instance, the cohort, the threshold, the graph (seed and degree) and the vector
    /// length.
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

/// SHA-256 over the whole shape of a round, domain-separated and length-prefixed.
fn context_id(
    instance: &RoundId,
    cohort: &[String],
    threshold: usize,
    graph: &GraphSpec,
    vector_len: usize,
) -> RoundId {
    let mut h = Sha256::new();
    h.update(b"fedmark/secagg/round-context/v1");
    h.update(instance.as_bytes());
    h.update((cohort.len() as u64).to_le_bytes());
    for id in cohort {
        h.update((id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
    }
    h.update((threshold as u64).to_le_bytes());
    h.update(graph.seed);
    h.update((graph.degree as u64).to_le_bytes());
    h.update((vector_len as u64).to_le_bytes());
    RoundId::from_bytes(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        let mut ids: Vec<String> = (0..n).map(|i| format!("p{i:04}")).collect();
        ids.sort();
        ids
    }

    #[test]
    fn parameters_are_validated() {
        let round = RoundId::new("job", 1, 0);
        assert!(RoundParams::new(round, ids(5), 3, 4, 10).is_ok());
        assert!(RoundParams::new(round, ids(1), 1, 0, 10).is_ok());
        assert_eq!(
            RoundParams::new(round, vec![], 1, 0, 10).err(),
            Some(SecAggError::EmptyCohort)
        );
        let mut dup = ids(3);
        dup.push("p0001".into());
        assert_eq!(
            RoundParams::new(round, dup, 3, 3, 10).err(),
            Some(SecAggError::DuplicateInCohort("p0001".into()))
        );
        assert_eq!(
            RoundParams::new(round, vec!["a".into(), String::new()], 2, 1, 10).err(),
            Some(SecAggError::EmptyPartnerId(1))
        );
        let mut reordered = ids(4);
        reordered.swap(1, 2);
        assert_eq!(
            RoundParams::new(round, reordered, 3, 3, 10).err(),
            Some(SecAggError::CohortNotCanonical)
        );
        for t in [0, 2, 6] {
            assert_eq!(
                RoundParams::new(round, ids(4), t, 3, 10).err(),
                Some(SecAggError::ThresholdOutOfRange {
                    threshold: t,
                    neighbourhood: 4
                })
            );
        }
        // Sparse: t counts within the neighbourhood of degree 4 (5 partners).
        assert!(RoundParams::new(round, ids(20), 3, 4, 10).is_ok());
        assert!(RoundParams::new(round, ids(20), 11, 4, 10).is_err());
        assert!(RoundParams::new(round, ids(3), 2, 2, MAX_WORDS + 1).is_err());
    }

    #[test]
    fn the_round_id_binds_the_whole_shape() {
        let instance = RoundId::new("job", 1, 0);
        let id = |cohort: Vec<String>, t, degree, len| {
            *RoundParams::new(instance, cohort, t, degree, len)
                .unwrap()
                .round()
        };
        let base = id(ids(20), 3, 4, 10);
        assert_eq!(base, id(ids(20), 3, 4, 10));
        assert_ne!(base, *instance_params(RoundId::new("job", 1, 1)).round());
        assert_ne!(base, id(ids(21), 3, 4, 10));
        assert_ne!(base, id(ids(20), 4, 4, 10));
        assert_ne!(base, id(ids(20), 4, 6, 10));
        assert_ne!(base, id(ids(20), 3, 4, 11));
        let mut other = ids(20);
        other[0] = "q".into();
        other.sort();
        assert_ne!(base, id(other, 3, 4, 10));
    }

    fn instance_params(instance: RoundId) -> RoundParams {
        RoundParams::new(instance, ids(20), 3, 4, 10).unwrap()
    }
}
