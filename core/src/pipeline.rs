//! An exported model read back: `pipeline.json` and the model file it names (`weights.npy`
//! for a linear model or an MLP, `model.json` for boosted trees), as `model export` writes
//! them (format [`PIPELINE_FORMAT`]), turned into fedmark's own [`FeatureSchema`],
//! [`Standardizer`] and [`Model`] or [`GbdtModel`]. Scoring an exported model then runs the
//! very code the partners trained and evaluated with — [`FeatureSchema::parse_record`],
//! [`FeatureSchema::encode`], [`Model::predict_all`], the trees' own binning and
//! [`Scorer`] — not a second reading of the files.
//!
//! Reading checks the two files against each other and against the layout fedmark itself
//! would build: numeric columns at inputs `0..n` in order (with their declared range, if any,
//! to which values are clamped), categorical and hashed columns
//! packed after them, each with the width its vocabulary or bucket count gives; the layers
//! where the architecture puts them; weights of the stated length and SHA-256, all finite. A
//! file that passes describes a model fedmark would score exactly as it trained it.
//!
//! No I/O: the caller reads the files ([`Pipeline::weights_file`] names the second one).

use serde::Deserialize;

use crate::features::{Categorical, FeatureSchema, RawRows, Standardizer};
use crate::gbdt::{BinnedRows, GbdtModel, Scorer};
use crate::model::{Architecture, Model};

/// Format tag of `pipeline.json` that this module reads.
pub const PIPELINE_FORMAT: &str = "fedmark-pipeline/1";

/// Why exported files cannot be read back as a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// `pipeline.json` is not JSON of the documented shape.
    #[error("pipeline.json: {0}")]
    Json(serde_json::Error),
    /// `pipeline.json` is of another format (a newer fedmark's, or not fedmark's).
    #[error("pipeline.json: format `{found}`, this fedmark reads `{PIPELINE_FORMAT}`")]
    Format {
        /// The format the file states.
        found: String,
    },
    /// A field of `pipeline.json` does not fit the layout fedmark builds.
    #[error("pipeline.json: {field}: {reason}")]
    Invalid {
        /// The offending field (a JSON path such as `columns[3].offset`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `weights.npy` is not a one-dimensional little-endian float64 NPY array.
    #[error("weights: not a one-dimensional little-endian float64 .npy array: {reason}")]
    Npy {
        /// What is wrong.
        reason: String,
    },
    /// The weights disagree with `pipeline.json` (length, SHA-256) or are not finite.
    #[error("weights: {reason}")]
    Weights {
        /// What is wrong.
        reason: String,
    },
    /// A boosted model's `model.json` does not read back, or does not fit `pipeline.json`'s
    /// columns.
    #[error("model.json: {reason}")]
    Trees {
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PipelineError {
    PipelineError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
struct FormatOnly {
    format: String,
}

#[derive(Deserialize)]
struct PipelineFile {
    job_id: String,
    name: String,
    round: u64,
    weights: WeightsInfo,
    input_dim: usize,
    label: LabelInfo,
    columns: Vec<Column>,
    model: ModelInfo,
}

#[derive(Deserialize)]
struct WeightsInfo {
    file: String,
    length: usize,
    sha256: String,
}

#[derive(Deserialize)]
struct LabelInfo {
    column: String,
    positive: String,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Column {
    Numeric {
        name: String,
        index: usize,
        mean: f64,
        std: f64,
        #[serde(default)]
        range: Option<[f64; 2]>,
    },
    Categorical {
        name: String,
        offset: usize,
        width: usize,
        vocabulary: Vec<String>,
        other_slot: usize,
    },
    Hashed {
        name: String,
        offset: usize,
        width: usize,
        buckets: u32,
        hash: String,
    },
}

#[derive(Deserialize)]
struct ModelInfo {
    kind: String,
    hidden: Option<usize>,
    /// A network's layers; a boosted model has none.
    #[serde(default)]
    layers: Vec<Layer>,
}

/// What kind of model an export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// A linear model or an MLP: parameters in `weights.npy`.
    Network(Architecture),
    /// Boosted trees: `model.json` in fedmark's own format.
    Trees,
}

/// The model of an export, ready to score.
#[derive(Debug, Clone)]
pub enum ScoringModel {
    /// A linear model or an MLP with its weights.
    Network(Model),
    /// Boosted trees, with the compiled scorer.
    Trees {
        /// The model as read.
        model: GbdtModel,
        /// The model compiled for scoring.
        scorer: Scorer,
    },
}

#[derive(Deserialize, PartialEq, Debug)]
struct Layer {
    name: String,
    offset: usize,
    shape: Vec<usize>,
}

/// `pipeline.json` read and checked, waiting for its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// The job the model comes from.
    pub job_id: String,
    /// The job's name.
    pub name: String,
    /// The committed round whose model was exported.
    pub round: u64,
    /// The label column the model was trained on (a scorer does not need it).
    pub label_column: String,
    /// The label's positive value.
    pub positive: String,
    /// The input layout.
    pub schema: FeatureSchema,
    /// The standardisation of the numeric columns the partners trained with.
    pub standardizer: Standardizer,
    /// Family and shape.
    pub family: ModelFamily,
    weights_file: String,
    weights_length: usize,
    weights_sha256: String,
}

/// A model exported by `model export`, ready to score rows.
#[derive(Debug, Clone)]
pub struct ExportedModel {
    /// What `pipeline.json` says.
    pub pipeline: Pipeline,
    /// The model with its weights or trees.
    pub model: ScoringModel,
}

impl Pipeline {
    /// Reads and checks `pipeline.json`.
    pub fn from_json(text: &str) -> Result<Self, PipelineError> {
        let format: FormatOnly = serde_json::from_str(text).map_err(PipelineError::Json)?;
        if format.format != PIPELINE_FORMAT {
            return Err(PipelineError::Format {
                found: format.format,
            });
        }
        let file: PipelineFile = serde_json::from_str(text).map_err(PipelineError::Json)?;
        let mut numeric = Vec::new();
        let mut ranges = Vec::new();
        let mut mean = Vec::new();
        let mut std = Vec::new();
        let mut categorical = Vec::new();
        let mut next_offset = None;
        for (i, col) in file.columns.into_iter().enumerate() {
            let at = |key: &str| format!("columns[{i}].{key}");
            match col {
                Column::Numeric {
                    name,
                    index,
                    mean: m,
                    std: s,
                    range,
                } => {
                    if next_offset.is_some() || index != numeric.len() {
                        return Err(invalid(
                            at("index"),
                            format!(
                                "numeric column `{name}` at input {index}; numeric columns come first, at inputs 0, 1, … in order"
                            ),
                        ));
                    }
                    if !m.is_finite() {
                        return Err(invalid(at("mean"), format!("{m} is not a finite number")));
                    }
                    if !(s.is_finite() && s > 0.0) {
                        return Err(invalid(at("std"), format!("{s} is not a positive number")));
                    }
                    if let Some([low, high]) = range
                        && !(low.is_finite() && high.is_finite() && low < high)
                    {
                        return Err(invalid(
                            at("range"),
                            format!("[{low}, {high}] is not a range of finite numbers, low < high"),
                        ));
                    }
                    numeric.push(name);
                    ranges.push(range);
                    mean.push(m);
                    std.push(s);
                }
                Column::Categorical {
                    name,
                    offset,
                    width,
                    vocabulary,
                    other_slot,
                } => {
                    if other_slot != vocabulary.len() {
                        return Err(invalid(
                            at("other_slot"),
                            format!(
                                "{other_slot}, not the vocabulary's length {}",
                                vocabulary.len()
                            ),
                        ));
                    }
                    let enc = Categorical::Vocabulary(vocabulary);
                    check_packed(&at, offset, width, &enc, &mut next_offset, numeric.len())?;
                    categorical.push((name, enc));
                }
                Column::Hashed {
                    name,
                    offset,
                    width,
                    buckets,
                    hash,
                } => {
                    if hash != "sha256" {
                        return Err(invalid(at("hash"), format!("`{hash}`, not `sha256`")));
                    }
                    if buckets == 0 {
                        return Err(invalid(at("buckets"), "0 buckets"));
                    }
                    let enc = Categorical::Hashed { buckets };
                    check_packed(&at, offset, width, &enc, &mut next_offset, numeric.len())?;
                    categorical.push((name, enc));
                }
            }
        }
        let schema = FeatureSchema {
            numeric,
            categorical,
            ranges,
        };
        let d = schema.dim();
        if file.input_dim != d {
            return Err(invalid(
                "input_dim",
                format!("{}, the columns give {d}", file.input_dim),
            ));
        }
        let family = match (file.model.kind.as_str(), file.model.hidden) {
            ("logistic", _) => ModelFamily::Network(Architecture::Logistic),
            ("mlp", Some(hidden)) if hidden > 0 => {
                ModelFamily::Network(Architecture::Mlp { hidden })
            }
            ("mlp", _) => return Err(invalid("model.hidden", "an MLP needs hidden > 0")),
            ("gbdt", _) => ModelFamily::Trees,
            (other, _) => {
                return Err(invalid(
                    "model.kind",
                    format!("`{other}`, not `logistic`, `mlp` or `gbdt`"),
                ));
            }
        };
        let expected = match family {
            ModelFamily::Network(arch) => layers(arch, d),
            ModelFamily::Trees => Vec::new(),
        };
        if file.model.layers != expected {
            return Err(invalid(
                "model.layers",
                format!(
                    "{:?}, fedmark lays this model out as {expected:?}",
                    file.model.layers
                ),
            ));
        }
        match family {
            ModelFamily::Network(arch) if file.weights.length != arch.num_params(d) => {
                return Err(invalid(
                    "weights.length",
                    format!(
                        "{}, the model has {} parameters",
                        file.weights.length,
                        arch.num_params(d)
                    ),
                ));
            }
            // Trees bin the clamped values themselves: the inputs must be unstandardised.
            ModelFamily::Trees => {
                if let Some(j) = (0..mean.len()).find(|&j| mean[j] != 0.0 || std[j] != 1.0) {
                    return Err(invalid(
                        format!("columns[{j}]"),
                        "a boosted model's numeric inputs are the values themselves: mean 0, std 1",
                    ));
                }
            }
            ModelFamily::Network(_) => {}
        }
        let weights_file = file.weights.file;
        if weights_file.is_empty()
            || weights_file.contains(['/', '\\', ':'])
            || weights_file == "."
            || weights_file == ".."
        {
            return Err(invalid(
                "weights.file",
                format!("{weights_file:?} is not a plain file name"),
            ));
        }
        Ok(Self {
            job_id: file.job_id,
            name: file.name,
            round: file.round,
            label_column: file.label.column,
            positive: file.label.positive,
            schema,
            standardizer: Standardizer { mean, std },
            family,
            weights_file,
            weights_length: file.weights.length,
            weights_sha256: file.weights.sha256,
        })
    }

    /// The weights' file name, in the same folder as `pipeline.json` (a plain name, checked).
    pub fn weights_file(&self) -> &str {
        &self.weights_file
    }

    /// Adds the model file [`Self::weights_file`] names (the bytes of `weights.npy`, or of a
    /// boosted model's `model.json`) and checks it against the pipeline.
    pub fn with_weights(self, bytes: &[u8]) -> Result<ExportedModel, PipelineError> {
        let arch = match self.family {
            ModelFamily::Network(arch) => arch,
            ModelFamily::Trees => return self.with_trees(bytes),
        };
        let params = read_npy_f64(bytes)?;
        let weights = |reason: String| PipelineError::Weights { reason };
        if params.len() != self.weights_length {
            return Err(weights(format!(
                "{} values, pipeline.json states {}",
                params.len(),
                self.weights_length
            )));
        }
        if let Some(i) = params.iter().position(|p| !p.is_finite()) {
            return Err(weights(format!("value {i} is not a finite number")));
        }
        let sha = crate::audit::f64s_sha256(&params);
        if sha != self.weights_sha256 {
            return Err(weights(format!(
                "SHA-256 {sha}, pipeline.json states {}",
                self.weights_sha256
            )));
        }
        let model = Model {
            arch,
            dim: self.schema.dim(),
            params,
        };
        Ok(ExportedModel {
            pipeline: self,
            model: ScoringModel::Network(model),
        })
    }

    /// A boosted model's `model.json`: its SHA-256 and tree count as stated, and its features
    /// the pipeline's columns in order (numeric ones with edges, categorical ones with a bin
    /// per slot), so rows parsed by the pipeline bin as the trees expect.
    fn with_trees(self, bytes: &[u8]) -> Result<ExportedModel, PipelineError> {
        let bad = |reason: String| PipelineError::Trees { reason };
        let sha = crate::audit::sha256_hex(bytes);
        if sha != self.weights_sha256 {
            return Err(bad(format!(
                "SHA-256 {sha}, pipeline.json states {}",
                self.weights_sha256
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
        let model = GbdtModel::from_json(text).map_err(|e| bad(e.to_string()))?;
        if model.trees().len() != self.weights_length {
            return Err(bad(format!(
                "{} trees, pipeline.json states {}",
                model.trees().len(),
                self.weights_length
            )));
        }
        let columns: Vec<(&str, Option<usize>)> = self
            .schema
            .numeric
            .iter()
            .map(|n| (n.as_str(), None))
            .chain(
                self.schema
                    .categorical
                    .iter()
                    .map(|(n, enc)| (n.as_str(), Some(enc.width()))),
            )
            .collect();
        let features: Vec<(&str, Option<usize>)> = model
            .features()
            .iter()
            .map(|f| {
                let slots = f.edges.is_categorical().then(|| f.edges.n_bins());
                (f.name.as_str(), slots)
            })
            .collect();
        if features != columns {
            return Err(bad(format!(
                "features {features:?} (name, categorical slots), pipeline.json's columns give {columns:?}"
            )));
        }
        let scorer = Scorer::new(&model);
        Ok(ExportedModel {
            pipeline: self,
            model: ScoringModel::Trees { model, scorer },
        })
    }
}

impl ExportedModel {
    /// Scores parsed rows (labels ignored): the probability of the positive class per row, as
    /// the partners' evaluation computes it.
    pub fn score(&self, rows: &RawRows) -> Result<Vec<f64>, PipelineError> {
        match &self.model {
            ScoringModel::Network(model) => {
                let x = self
                    .pipeline
                    .schema
                    .encode(rows, &self.pipeline.standardizer);
                Ok(model.predict_all(&x))
            }
            ScoringModel::Trees { model, scorer } => {
                let bad = |e: crate::gbdt::GbdtError| PipelineError::Trees {
                    reason: e.to_string(),
                };
                let binned = BinnedRows::from_raw(rows, model.features()).map_err(bad)?;
                let margins = scorer.margins(&binned).map_err(bad)?;
                Ok(margins.into_iter().map(crate::model::sigmoid).collect())
            }
        }
    }
}

/// A categorical column must start where the previous one ended (the first right after the
/// numerics) and be as wide as its encoding.
fn check_packed(
    at: &dyn Fn(&str) -> String,
    offset: usize,
    width: usize,
    enc: &Categorical,
    next_offset: &mut Option<usize>,
    n_numeric: usize,
) -> Result<(), PipelineError> {
    let expected = next_offset.unwrap_or(n_numeric);
    if offset != expected {
        return Err(invalid(
            at("offset"),
            format!("{offset}, fedmark packs this column at input {expected}"),
        ));
    }
    if width != enc.width() {
        return Err(invalid(
            at("width"),
            format!("{width}, the encoding has {} slots", enc.width()),
        ));
    }
    *next_offset = Some(expected + width);
    Ok(())
}

/// The layers `pipeline.json` lists for an architecture (see [`crate::model`]'s layouts).
fn layers(arch: Architecture, d: usize) -> Vec<Layer> {
    let layer = |name: &str, offset: usize, shape: &[usize]| Layer {
        name: name.to_owned(),
        offset,
        shape: shape.to_vec(),
    };
    match arch {
        Architecture::Logistic => vec![layer("w", 0, &[d]), layer("b", d, &[])],
        Architecture::Mlp { hidden: h } => vec![
            layer("W1", 0, &[d, h]),
            layer("b1", d * h, &[h]),
            layer("w2", d * h + h, &[h]),
            layer("b2", d * h + 2 * h, &[]),
        ],
    }
}

/// The values of a one-dimensional little-endian float64 `.npy` array (format 1.0, 2.0 or
/// 3.0), C or Fortran order (the same for one dimension).
pub fn read_npy_f64(bytes: &[u8]) -> Result<Vec<f64>, PipelineError> {
    let bad = |reason: &str| PipelineError::Npy {
        reason: reason.to_owned(),
    };
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or_else(|| bad("no NPY magic"))?;
    let (header_len, rest) = match rest {
        [1, _, a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        [2 | 3, _, a, b, c, d, rest @ ..] => (
            usize::try_from(u32::from_le_bytes([*a, *b, *c, *d])).unwrap_or(usize::MAX),
            rest,
        ),
        _ => return Err(bad("an unknown NPY version")),
    };
    if rest.len() < header_len {
        return Err(bad("the header is cut short"));
    }
    let (header, data) = rest.split_at(header_len);
    let header = std::str::from_utf8(header).map_err(|_| bad("the header is not text"))?;
    let value_of = |key: &str| -> Option<&str> {
        let start = header.find(&format!("'{key}'"))? + key.len() + 2;
        let after = header[start..].trim_start().strip_prefix(':')?.trim_start();
        Some(after)
    };
    let descr = value_of("descr").ok_or_else(|| bad("no descr"))?;
    if !(descr.starts_with("'<f8'") || descr.starts_with("'float64'")) {
        return Err(bad("the values are not little-endian float64 ('<f8')"));
    }
    let shape = value_of("shape").ok_or_else(|| bad("no shape"))?;
    let inside = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("the shape is not a tuple"))?;
    let dims: Vec<&str> = inside
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let [n] = dims[..] else {
        return Err(bad("the array is not one-dimensional"));
    };
    let n: usize = n.parse().map_err(|_| bad("the shape is not a number"))?;
    if Some(data.len()) != n.checked_mul(8) {
        return Err(bad(&format!(
            "{} data bytes for {n} values of 8 bytes",
            data.len()
        )));
    }
    Ok(data
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            f64::from_le_bytes(a)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipeline.json as `model export` writes it (abridged: the keys fedmark reads, plus
    /// some it does not).
    fn pipeline_json(kind: &str) -> String {
        let model = match kind {
            "logistic" => r#"{"kind": "logistic", "layers": [
                {"name": "w", "offset": 0, "shape": [9]}, {"name": "b", "offset": 9, "shape": []}],
                "score": "sigmoid(x . w + b)"}"#
                .to_owned(),
            _ => r#"{"kind": "mlp", "hidden": 2, "activation": "relu", "layers": [
                {"name": "W1", "offset": 0, "shape": [9, 2], "order": "C"},
                {"name": "b1", "offset": 18, "shape": [2]},
                {"name": "w2", "offset": 20, "shape": [2]},
                {"name": "b2", "offset": 22, "shape": []}]}"#
                .to_owned(),
        };
        let length = if kind == "logistic" { 10 } else { 23 };
        let sha = crate::audit::f64s_sha256(&weights(length));
        format!(
            r#"{{"format": "fedmark-pipeline/1", "job_id": "job-1", "name": "t", "purpose": "p",
            "round": 4, "input_dim": 9,
            "weights": {{"file": "weights.npy", "dtype": "<f8", "length": {length}, "sha256": "{sha}"}},
            "label": {{"column": "y", "positive": "yes"}},
            "columns": [
              {{"name": "age", "type": "numeric", "index": 0, "mean": 40.5, "std": 10.25, "range": [18, 60]}},
              {{"name": "c", "type": "categorical", "offset": 1, "width": 3, "vocabulary": ["a", "b"], "other_slot": 2}},
              {{"name": "h", "type": "hashed", "offset": 4, "width": 5, "buckets": 5, "hash": "sha256"}}
            ],
            "model": {model},
            "rules": {{"numeric": "…"}}}}"#
        )
    }

    fn weights(n: usize) -> Vec<f64> {
        (0..n).map(|i| (i as f64 - 4.0) * 0.125).collect()
    }

    /// The NPY bytes numpy.save writes for a float64 vector (v1.0, header padded to 64).
    fn npy(values: &[f64]) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '<f8', 'fortran_order': False, 'shape': ({},), }}",
            values.len()
        );
        npy_with(&dict, values)
    }

    /// NPY v1.0 bytes with this header dictionary.
    fn npy_with(dict: &str, values: &[f64]) -> Vec<u8> {
        let mut header = dict.as_bytes().to_vec();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(b' ');
        }
        header.push(b'\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(&header);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    #[test]
    fn reads_a_logistic_and_an_mlp_export() {
        for (kind, arch, n) in [
            ("logistic", Architecture::Logistic, 10),
            ("mlp", Architecture::Mlp { hidden: 2 }, 23),
        ] {
            let p = Pipeline::from_json(&pipeline_json(kind)).unwrap();
            assert_eq!(p.weights_file(), "weights.npy");
            assert_eq!(p.family, ModelFamily::Network(arch));
            assert_eq!(p.round, 4);
            assert_eq!(p.schema.numeric, vec!["age".to_owned()]);
            assert_eq!(
                p.schema.categorical,
                vec![
                    (
                        "c".to_owned(),
                        Categorical::Vocabulary(vec!["a".into(), "b".into()])
                    ),
                    ("h".to_owned(), Categorical::Hashed { buckets: 5 }),
                ]
            );
            assert_eq!(p.schema.ranges, vec![Some([18.0, 60.0])]);
            assert_eq!(p.standardizer.mean, vec![40.5]);
            assert_eq!(p.standardizer.std, vec![10.25]);
            let m = p.with_weights(&npy(&weights(n))).unwrap();
            let ScoringModel::Network(model) = &m.model else {
                panic!("a network export reads as a network");
            };
            assert_eq!(model.params, weights(n));
            let mut rows = RawRows::new(&m.pipeline.schema);
            rows.push(&[50.75], &[1, 3], false);
            let s = m.score(&rows).unwrap();
            assert_eq!(s.len(), 1);
            if kind == "logistic" {
                // x = [1, 0, 1, 0, 0, 0, 0, 1, 0]; w = (i - 4) / 8, b = w[9].
                let z = -0.5 + -0.25 + 0.375 + 0.625;
                assert!((s[0] - crate::model::sigmoid(z)).abs() < 1e-15);
                // An age above the declared range is clamped to 60: x[0] = (60 - 40.5) / 10.25.
                let mut old = RawRows::new(&m.pipeline.schema);
                old.push(&[95.0], &[1, 3], false);
                let z = -0.5 * (19.5 / 10.25) + -0.25 + 0.375 + 0.625;
                assert!((m.score(&old).unwrap()[0] - crate::model::sigmoid(z)).abs() < 1e-15);
            }
        }
    }

    #[test]
    fn refuses_files_that_do_not_fit_together() {
        let err = |text: String| Pipeline::from_json(&text).unwrap_err().to_string();
        let good = pipeline_json("logistic");
        assert!(err(good.replace("pipeline/1", "pipeline/9")).contains("format"));
        assert!(
            err(good.replace(r#""offset": 4"#, r#""offset": 5"#)).contains("columns[2].offset")
        );
        assert!(
            err(good.replace(r#""other_slot": 2"#, r#""other_slot": 1"#)).contains("other_slot")
        );
        assert!(err(good.replace(r#""std": 10.25"#, r#""std": 0"#)).contains("columns[0].std"));
        assert!(err(good.replace("[18, 60]", "[60, 18]")).contains("columns[0].range"));
        assert!(Pipeline::from_json(&good.replace(r#", "range": [18, 60]"#, "")).is_ok());
        assert!(Pipeline::from_json(&good.replace("[18, 60]", "null")).is_ok());
        assert!(err(good.replace(r#""input_dim": 9"#, r#""input_dim": 8"#)).contains("input_dim"));
        assert!(err(good.replace(r#""offset": 9"#, r#""offset": 8"#)).contains("model.layers"));
        assert!(err(good.replace("weights.npy", "../w.npy")).contains("weights.file"));
        assert!(err(good.replace(r#""kind": "logistic""#, r#""kind": "tree""#)).contains("tree"));
        assert!(err("[1, 2]".to_owned()).starts_with("pipeline.json"));

        let p = || Pipeline::from_json(&good).unwrap();
        let werr = |bytes: &[u8]| p().with_weights(bytes).unwrap_err().to_string();
        assert!(werr(&npy(&weights(9))).contains("9 values"));
        let mut changed = weights(10);
        changed[3] = 1.0;
        assert!(werr(&npy(&changed)).contains("SHA-256"));
        let mut nan = weights(10);
        nan[2] = f64::NAN;
        assert!(werr(&npy(&nan)).contains("value 2"));
        assert!(werr(b"not an npy").contains("magic"));
        let mut cut = npy(&weights(10));
        cut.pop();
        assert!(werr(&cut).contains("data bytes"));
        let two_d = npy_with(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (5, 2), }",
            &weights(10),
        );
        assert!(werr(&two_d).contains("one-dimensional"));
    }

    /// A boosted model trained on the pipeline's columns, as `model export` writes it.
    fn trees_export() -> (String, Vec<u8>, GbdtModel, FeatureSchema) {
        use crate::gbdt::{Feature, GbdtParams, train};
        let linear = Pipeline::from_json(&pipeline_json("logistic")).unwrap();
        let schema = linear.schema.clone();
        let mut rows = RawRows::new(&schema);
        for i in 0..400u32 {
            let age = 18.0 + f64::from(i % 43);
            rows.push(&[age], &[i % 3, (i / 7) % 5], age > 40.0 && i % 3 != 1);
        }
        let features = Feature::from_ranges(&schema, 16).unwrap();
        let binned = crate::gbdt::BinnedRows::from_raw(&rows, &features).unwrap();
        let params = GbdtParams {
            trees: 3,
            max_depth: 2,
            ..GbdtParams::default()
        };
        let (model, _) = train(&params, &features, &binned, None).unwrap();
        let bytes = model.to_json().unwrap().into_bytes();
        let text = pipeline_json("logistic")
            .replace(r#""mean": 40.5, "std": 10.25"#, r#""mean": 0, "std": 1"#)
            .replace(
                r#""file": "weights.npy", "dtype": "<f8", "length": 10"#,
                r#""file": "model.json", "dtype": "fedmark-gbdt JSON", "length": 3"#,
            )
            .replace(
                &crate::audit::f64s_sha256(&weights(10)),
                &crate::audit::sha256_hex(&bytes),
            );
        let model_start = text.find(r#""model": "#).unwrap();
        let model_end = text.find(r#""rules""#).unwrap();
        let text = format!(
            "{}\"model\": {{\"kind\": \"gbdt\"}},\n{}",
            &text[..model_start],
            &text[model_end..]
        );
        (text, bytes, model, schema)
    }

    /// A boosted model's export scores rows as the model itself does, bit for bit; a
    /// `model.json` that is not the one the pipeline states, or whose features are not its
    /// columns, is refused, and so are standardised inputs.
    #[test]
    fn reads_a_boosted_trees_export() {
        let (text, bytes, model, schema) = trees_export();
        let p = Pipeline::from_json(&text).unwrap();
        assert_eq!(p.family, ModelFamily::Trees);
        assert_eq!(p.weights_file(), "model.json");
        let m = p.clone().with_weights(&bytes).unwrap();
        let mut rows = RawRows::new(&schema);
        for (age, c, h) in [(20.0, 0, 1), (44.5, 1, 4), (59.0, 2, 0), (90.0, 0, 3)] {
            rows.push(&[age], &[c, h], false);
        }
        let scores = m.score(&rows).unwrap();
        assert_eq!(scores, model.predict_proba(&rows).unwrap());
        assert!(scores.iter().any(|&s| s != scores[0]), "{scores:?}");

        let err = |bytes: &[u8]| p.clone().with_weights(bytes).unwrap_err().to_string();
        let other = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"age\"", "\"agf\"");
        assert!(err(other.as_bytes()).contains("SHA-256"));
        let renamed = text.replace(
            &crate::audit::sha256_hex(&bytes),
            &crate::audit::sha256_hex(other.as_bytes()),
        );
        let renamed = Pipeline::from_json(&renamed).unwrap();
        let e = renamed
            .with_weights(other.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("features") && e.contains("agf"), "{e}");
        assert!(err(b"{").starts_with("model.json"));
        let standardised = text.replace(r#""mean": 0, "std": 1"#, r#""mean": 40.5, "std": 10.25"#);
        let e = Pipeline::from_json(&standardised).unwrap_err().to_string();
        assert!(
            e.contains("columns[0]") && e.contains("mean 0, std 1"),
            "{e}"
        );
    }

    #[test]
    fn npy_reader_takes_numpys_layouts() {
        let v = vec![1.5, -0.0, 3e-300];
        assert_eq!(read_npy_f64(&npy(&v)).unwrap(), v);
        assert_eq!(read_npy_f64(&npy(&[])).unwrap(), Vec::<f64>::new());
        // Version 2.0: a four-byte header length.
        let one = npy(&v);
        let header_len = u16::from_le_bytes([one[8], one[9]]) as u32;
        let mut two = b"\x93NUMPY\x02\x00".to_vec();
        two.extend_from_slice(&header_len.to_le_bytes());
        two.extend_from_slice(&one[10..]);
        assert_eq!(read_npy_f64(&two).unwrap(), v);
        let big_endian = npy_with(
            "{'descr': '>f8', 'fortran_order': False, 'shape': (3,), }",
            &v,
        );
        assert!(
            read_npy_f64(&big_endian)
                .unwrap_err()
                .to_string()
                .contains("little-endian")
        );
    }
}
