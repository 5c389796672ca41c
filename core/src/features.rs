//! The feature pipeline: how a partner's raw declared columns become model inputs.
//!
//! Every partner builds the same [`FeatureSchema`] from the job spec, so a column lands at the
//! same input index everywhere. Numeric columns are standardised with federated statistics
//! ([`Standardizer`], computed from the secure sum of counts, sums and sums of squares);
//! categorical columns are one-hot encoded over a declared vocabulary (plus one "other" slot)
//! or, without a vocabulary, hashed with SHA-256 into a fixed number of slots.

use sha2::{Digest, Sha256};

use crate::matrix::CsrMatrix;
use crate::spec::JobSpec;

/// How one categorical column maps a value to a slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Categorical {
    /// Declared vocabulary: value `i` goes to slot `i`, anything else to the last slot.
    Vocabulary(Vec<String>),
    /// SHA-256 of the value, first 8 bytes little-endian, modulo `buckets`.
    Hashed {
        /// Number of slots.
        buckets: u32,
    },
}

impl Categorical {
    /// Number of input slots the column occupies.
    pub fn width(&self) -> usize {
        match self {
            Categorical::Vocabulary(v) => v.len() + 1,
            Categorical::Hashed { buckets } => *buckets as usize,
        }
    }

    /// Slot of `value` within the column.
    pub fn slot(&self, value: &str) -> usize {
        match self {
            Categorical::Vocabulary(v) => v.iter().position(|x| x == value).unwrap_or(v.len()),
            Categorical::Hashed { buckets } => {
                let digest = Sha256::digest(value.as_bytes());
                let mut first = [0u8; 8];
                first.copy_from_slice(&digest[..8]);
                (u64::from_le_bytes(first) % u64::from(*buckets)) as usize
            }
        }
    }
}

/// Parses a numeric field as every partner does: UTF-8, trimmed of surrounding whitespace, a
/// decimal number that is finite. `None` means the row is skipped, never imputed.
pub fn parse_numeric(field: &[u8]) -> Option<f64> {
    let v: f64 = std::str::from_utf8(field).ok()?.trim().parse().ok()?;
    v.is_finite().then_some(v)
}

/// A declared column a file's header lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lacks the declared column `{column}`")]
pub struct MissingColumn {
    /// The column's name.
    pub column: String,
}

/// Why a record's declared fields do not give a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// The record has no field at a declared column's position.
    #[error("a declared field is missing")]
    Missing,
    /// A numeric column (its position in [`FeatureSchema::numeric`]) did not hold a finite
    /// number.
    #[error("numeric column {column} is not a finite number")]
    NotANumber {
        /// Position of the column in [`FeatureSchema::numeric`].
        column: usize,
    },
}

/// Where a schema's declared columns sit in a file's records (field positions), found once
/// from the header by [`FeatureSchema::locate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPositions {
    /// Field position of each numeric column, in schema order.
    pub numeric: Vec<usize>,
    /// Field position of each categorical column, in schema order.
    pub categorical: Vec<usize>,
}

/// The input layout shared by every partner.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSchema {
    /// Numeric columns, occupying inputs `0..numeric.len()`.
    pub numeric: Vec<String>,
    /// Categorical columns with their encodings, in spec order after the numerics.
    pub categorical: Vec<(String, Categorical)>,
    /// Declared `[low, high]` of each numeric column, if any: values are clamped to it.
    pub ranges: Vec<Option<[f64; 2]>>,
}

impl FeatureSchema {
    /// Builds the schema a spec declares.
    pub fn from_spec(spec: &JobSpec) -> Self {
        let f = &spec.features;
        let categorical = f
            .categorical
            .iter()
            .map(|c| {
                let enc = match f.vocabulary.get(c) {
                    Some(v) => Categorical::Vocabulary(v.clone()),
                    None => Categorical::Hashed {
                        buckets: f.hash_buckets,
                    },
                };
                (c.clone(), enc)
            })
            .collect();
        Self {
            numeric: f.numeric.clone(),
            categorical,
            ranges: f.numeric.iter().map(|c| f.range.get(c).copied()).collect(),
        }
    }

    /// A numeric value clamped to its column's declared range (unchanged without one).
    pub fn clamp(&self, j: usize, x: f64) -> f64 {
        match self.ranges.get(j).copied().flatten() {
            Some([low, high]) => x.clamp(low, high),
            None => x,
        }
    }

    /// Finds each declared column with `find` (the field position of a header name, by exact
    /// name); the first one missing is the error.
    pub fn locate(
        &self,
        mut find: impl FnMut(&str) -> Option<usize>,
    ) -> Result<ColumnPositions, MissingColumn> {
        let mut at = |name: &str| {
            find(name).ok_or_else(|| MissingColumn {
                column: name.to_owned(),
            })
        };
        Ok(ColumnPositions {
            numeric: self
                .numeric
                .iter()
                .map(|c| at(c))
                .collect::<Result<_, _>>()?,
            categorical: self
                .categorical
                .iter()
                .map(|(c, _)| at(c))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Parses one record's declared fields into `numeric` (raw values, standardised later by
    /// [`FeatureSchema::encode`]) and `slots` (each categorical column's slot), with the rules
    /// every partner trains with and every scorer applies: numerics by [`parse_numeric`], the
    /// first bad one making the error; categoricals decoded as UTF-8 (invalid bytes replaced),
    /// trimmed and mapped by [`Categorical::slot`]. `field(i)` gives the record's field at
    /// position `i`; `numeric` and `slots` must have the schema's column counts.
    pub fn parse_record<'r>(
        &self,
        at: &ColumnPositions,
        field: impl Fn(usize) -> Option<&'r [u8]>,
        numeric: &mut [f64],
        slots: &mut [u32],
    ) -> Result<(), FieldError> {
        for (j, (out, &i)) in numeric.iter_mut().zip(&at.numeric).enumerate() {
            let text = field(i).ok_or(FieldError::Missing)?;
            *out = parse_numeric(text).ok_or(FieldError::NotANumber { column: j })?;
        }
        for ((out, &i), (_, enc)) in slots.iter_mut().zip(&at.categorical).zip(&self.categorical) {
            let text = String::from_utf8_lossy(field(i).ok_or(FieldError::Missing)?);
            *out = enc.slot(text.trim()) as u32;
        }
        Ok(())
    }

    /// Total number of model inputs.
    pub fn dim(&self) -> usize {
        self.numeric.len()
            + self
                .categorical
                .iter()
                .map(|(_, c)| c.width())
                .sum::<usize>()
    }

    /// First input index of each categorical column.
    fn categorical_offsets(&self) -> Vec<usize> {
        let mut at = self.numeric.len();
        self.categorical
            .iter()
            .map(|(_, c)| {
                let start = at;
                at += c.width();
                start
            })
            .collect()
    }

    /// Encodes parsed rows into a sparse matrix with standardised numerics.
    pub fn encode(&self, rows: &RawRows, standardizer: &Standardizer) -> CsrMatrix {
        let offsets = self.categorical_offsets();
        let mut m =
            CsrMatrix::with_capacity(self.dim(), rows.len(), rows.len() * self.nnz_per_row());
        let mut entries = Vec::with_capacity(self.nnz_per_row());
        for r in 0..rows.len() {
            entries.clear();
            for (j, &x) in rows.numeric_row(r).iter().enumerate() {
                entries.push((j as u32, standardizer.apply(j, self.clamp(j, x))));
            }
            for (k, &slot) in rows.slot_row(r).iter().enumerate() {
                entries.push(((offsets[k] + slot as usize) as u32, 1.0));
            }
            m.push_row(&entries);
        }
        m
    }

    fn nnz_per_row(&self) -> usize {
        self.numeric.len() + self.categorical.len()
    }
}

/// Parsed rows of the declared columns: numerics as `f64`, categoricals already mapped to their
/// slot within the column, labels as 0/1. Raw strings are not kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawRows {
    n_numeric: usize,
    n_categorical: usize,
    numeric: Vec<f64>,
    slots: Vec<u32>,
    /// 1.0 for a positive example, 0.0 otherwise.
    pub labels: Vec<f64>,
}

impl RawRows {
    /// Empty rows for a schema.
    pub fn new(schema: &FeatureSchema) -> Self {
        Self {
            n_numeric: schema.numeric.len(),
            n_categorical: schema.categorical.len(),
            ..Self::default()
        }
    }

    /// Appends one parsed row. The slices must match the schema's column counts.
    pub fn push(&mut self, numeric: &[f64], slots: &[u32], label: bool) {
        debug_assert_eq!(numeric.len(), self.n_numeric);
        debug_assert_eq!(slots.len(), self.n_categorical);
        self.numeric.extend_from_slice(numeric);
        self.slots.extend_from_slice(slots);
        self.labels.push(if label { 1.0 } else { 0.0 });
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Removes every row, keeping the allocations (for batches).
    pub fn clear(&mut self) {
        self.numeric.clear();
        self.slots.clear();
        self.labels.clear();
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Numeric values of row `r`.
    pub fn numeric_row(&self, r: usize) -> &[f64] {
        &self.numeric[r * self.n_numeric..(r + 1) * self.n_numeric]
    }

    /// Categorical slots of row `r`.
    pub fn slot_row(&self, r: usize) -> &[u32] {
        &self.slots[r * self.n_categorical..(r + 1) * self.n_categorical]
    }

    /// Per numeric column: (count, sum, sum of squares) — this partner's share of the
    /// federated statistics.
    pub fn moments(&self) -> Vec<[f64; 3]> {
        let mut m = vec![[0.0; 3]; self.n_numeric];
        for r in 0..self.len() {
            for (acc, &x) in m.iter_mut().zip(self.numeric_row(r)) {
                acc[0] += 1.0;
                acc[1] += x;
                acc[2] += x * x;
            }
        }
        m
    }
}

/// Means and standard deviations of the numeric columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    /// Mean per numeric column.
    pub mean: Vec<f64>,
    /// Standard deviation per numeric column (1 where the column is constant).
    pub std: Vec<f64>,
}

impl Standardizer {
    /// From the declared ranges of a schema whose every numeric column has one: centre
    /// `(low + high)/2`, scale `(high − low)/2`, so clamped values land in [−1, 1]. Fixed by
    /// the spec, so nothing is measured on any partner's data. `None` if a range is missing.
    pub fn from_ranges(schema: &FeatureSchema) -> Option<Self> {
        schema
            .ranges
            .iter()
            .map(|r| r.map(|[low, high]| (0.5 * (low + high), 0.5 * (high - low))))
            .collect::<Option<Vec<_>>>()
            .map(|pairs| {
                let (mean, std) = pairs.into_iter().unzip();
                Self { mean, std }
            })
    }

    /// From summed (count, sum, sum of squares) per column.
    pub fn from_moments(moments: &[[f64; 3]]) -> Self {
        let (mean, std) = moments
            .iter()
            .map(|&[n, s, ss]| {
                if n < 1.0 {
                    return (0.0, 1.0);
                }
                let mean = s / n;
                let var = (ss / n - mean * mean).max(0.0);
                let std = var.sqrt();
                (mean, if std > 1e-12 { std } else { 1.0 })
            })
            .unzip();
        Self { mean, std }
    }

    fn apply(&self, j: usize, x: f64) -> f64 {
        (x - self.mean[j]) / self.std[j]
    }
}

/// Deterministic holdout membership of a row: every party that knows the seed and fraction
/// agrees which rows are held out, without exchanging row lists.
pub fn is_holdout(row: u64, fraction: f64, seed: u64) -> bool {
    // SplitMix64 finaliser: a well-mixed 64-bit hash of (seed, row).
    let mut z = seed ^ row.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_and_other_slot() {
        let c = Categorical::Vocabulary(vec!["a".into(), "b".into()]);
        assert_eq!(c.width(), 3);
        assert_eq!(c.slot("b"), 1);
        assert_eq!(c.slot("zzz"), 2);
    }

    #[test]
    fn hashing_matches_sha256_by_hand() {
        // sha256("admin.") computed independently with Python's hashlib:
        // first 8 bytes little-endian = 0x... mod 32; recomputed here from the digest bytes.
        let digest = Sha256::digest(b"admin.");
        let v = u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]));
        let c = Categorical::Hashed { buckets: 32 };
        assert_eq!(c.slot("admin."), (v % 32) as usize);
        assert!(c.slot("x") < 32);
    }

    #[test]
    fn standardizer_from_moments() {
        // values 1, 2, 3 → mean 2, population std sqrt(2/3)
        let s = Standardizer::from_moments(&[[3.0, 6.0, 14.0], [2.0, 10.0, 50.0]]);
        assert!((s.mean[0] - 2.0).abs() < 1e-12);
        assert!((s.std[0] - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.std[1], 1.0, "a constant column keeps unit scale");
    }

    #[test]
    fn encode_places_columns() {
        let schema = FeatureSchema {
            numeric: vec!["x".into()],
            categorical: vec![
                (
                    "c".into(),
                    Categorical::Vocabulary(vec!["a".into(), "b".into()]),
                ),
                ("h".into(), Categorical::Hashed { buckets: 4 }),
            ],
            ranges: vec![None],
        };
        assert_eq!(schema.dim(), 1 + 3 + 4);
        let mut rows = RawRows::new(&schema);
        rows.push(&[5.0], &[1, 3], true);
        let m = schema.encode(
            &rows,
            &Standardizer {
                mean: vec![1.0],
                std: vec![2.0],
            },
        );
        let (idx, val) = m.row(0);
        assert_eq!(idx, &[0, 2, 7]);
        assert_eq!(val, &[2.0, 1.0, 1.0]);
    }

    #[test]
    fn records_parse_with_the_partner_rules() {
        let schema = FeatureSchema {
            numeric: vec!["x".into(), "z".into()],
            categorical: vec![(
                "c".into(),
                Categorical::Vocabulary(vec!["a".into(), "b".into()]),
            )],
            ranges: vec![None, Some([0.0, 1.0])],
        };
        let header = ["c", "z", "x", "extra"];
        let at = schema
            .locate(|name| header.iter().position(|h| *h == name))
            .unwrap();
        assert_eq!(at.numeric, vec![2, 1]);
        assert_eq!(at.categorical, vec![0]);
        let missing = FeatureSchema {
            numeric: vec!["w".into()],
            categorical: Vec::new(),
            ranges: vec![None],
        }
        .locate(|name| header.iter().position(|h| *h == name))
        .unwrap_err();
        assert_eq!(missing.to_string(), "lacks the declared column `w`");

        let parse = |fields: &[&'static str]| {
            let (mut numeric, mut slots) = ([0.0; 2], [0u32; 1]);
            schema
                .parse_record(
                    &at,
                    |i| fields.get(i).map(|f| f.as_bytes()),
                    &mut numeric,
                    &mut slots,
                )
                .map(|()| (numeric, slots))
        };
        assert_eq!(parse(&[" b ", "2", " 1.5 ", "junk"]), Ok(([1.5, 2.0], [1])));
        assert_eq!(parse(&["zz", "-0", "1e3", ""]), Ok(([1000.0, -0.0], [2])));
        assert_eq!(
            parse(&["a", "2", "forty", ""]),
            Err(FieldError::NotANumber { column: 0 })
        );
        assert_eq!(
            parse(&["a", "inf", "1", ""]),
            Err(FieldError::NotANumber { column: 1 })
        );
        assert_eq!(parse(&["a", "2"]), Err(FieldError::Missing));
        assert_eq!(parse_numeric(b"NaN"), None);
        assert_eq!(parse_numeric(b"\xff1"), None);
        assert_eq!(parse_numeric(b" +7 "), Some(7.0));
    }

    #[test]
    fn holdout_fraction_is_respected() {
        let n = 100_000;
        let held = (0..n).filter(|&r| is_holdout(r, 0.2, 7)).count();
        assert!((held as f64 / n as f64 - 0.2).abs() < 0.01, "{held}");
        // different seeds pick different rows
        let same = (0..1000)
            .filter(|&r| is_holdout(r, 0.5, 1) == is_holdout(r, 0.5, 2))
            .count();
        assert!(same < 600);
    }
}
