//! The job spec: what a data scientist submits and every partner checks before taking part.
//!
//! A spec is TOML. Parsing rejects unknown keys (a typo must not silently fall back to a
//! default), and [`JobSpec::validate`] rejects values that parse but make no sense, naming the
//! offending field. The coordinator and every client parse the same text with the same code, so
//! they agree on the model, the features and the aggregation layout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The text is not valid TOML for a spec (syntax, unknown key, missing key, wrong type).
    #[error("job spec: {0}")]
    Parse(String),
    /// A field parsed but its value is not acceptable.
    #[error("job spec: `{field}` {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `training.learning_rate`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.to_owned(),
        reason: printable(&reason.into()),
    }
}

/// `text` with control characters other than newlines escaped (`\u{1b}`), so an error that
/// quotes a hostile spec cannot drive the terminal it is printed on.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A complete job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Name, purpose and length of the job.
    pub job: JobSection,
    /// Which column is the label and which value is the positive class.
    pub label: LabelSection,
    /// The declared feature columns: nothing else is read from a partner's data.
    pub features: FeatureSection,
    /// Model family and size.
    pub model: ModelSection,
    /// Local training and the server optimiser.
    #[serde(default)]
    pub training: TrainingSection,
    /// Cohort, threshold and secure aggregation.
    #[serde(default)]
    pub aggregation: AggregationSection,
    /// Federated evaluation settings.
    #[serde(default)]
    pub evaluation: EvaluationSection,
    /// Differential privacy: the guarantee and its budget.
    #[serde(default)]
    pub privacy: PrivacySection,
}

/// Which differential-privacy guarantee a job gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrivacyMode {
    /// No formal guarantee (secure aggregation still hides each partner's update).
    #[default]
    None,
    /// Each customer record: DP-SGD on every partner (per-example clipping, Gaussian noise,
    /// Poisson-sampled batches).
    Record,
    /// Each partner's whole contribution: updates clipped by the partners, Gaussian noise
    /// added by the coordinator to the unmasked sum.
    PartnerCentral,
    /// Each partner's whole contribution, trusting no one: every partner adds integer Skellam
    /// noise to its fixed-point update before masking, scaled so that any `t` survivors
    /// together carry the target noise; the coordinator only ever sees the noised sum.
    PartnerDistributed,
}

impl PrivacyMode {
    /// The mode as the spec spells it (`none`, `record`, `partner-central`,
    /// `partner-distributed`).
    pub fn as_str(self) -> &'static str {
        match self {
            PrivacyMode::None => "none",
            PrivacyMode::Record => "record",
            PrivacyMode::PartnerCentral => "partner-central",
            PrivacyMode::PartnerDistributed => "partner-distributed",
        }
    }

    /// What one (ε, δ) of the mode protects.
    pub fn protected_unit(self) -> &'static str {
        match self {
            PrivacyMode::None => "nothing",
            PrivacyMode::Record => "one record",
            PrivacyMode::PartnerCentral | PrivacyMode::PartnerDistributed => {
                "one partner (all its records)"
            }
        }
    }
}

/// `[privacy]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    /// The guarantee.
    #[serde(default)]
    pub mode: PrivacyMode,
    /// Total ε budget of the job.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// δ of the guarantee.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Clipping norm C: of each example's gradient (record) or each partner's update
    /// (partner modes); or `"adaptive"` (partner modes), following a quantile of the
    /// partners' update norms as `[privacy.adaptive_clip]` sets.
    #[serde(default)]
    pub clip: Clip,
    /// How an adaptive clip moves (used when `clip = "adaptive"`).
    #[serde(default, skip_serializing_if = "AdaptiveClip::is_default")]
    pub adaptive_clip: AdaptiveClip,
    /// Noise multiplier σ (noise std = σ·C). When absent, the smallest σ that fits the whole
    /// job's plan in the budget is calibrated and recorded in the report.
    #[serde(default)]
    pub noise_multiplier: Option<f64>,
    /// Record mode: Poisson sampling rate q of each local step (expected batch = q × rows).
    #[serde(default = "default_sampling_rate")]
    pub sampling_rate: f64,
    /// Record mode: noise multiplier of the one release of holdout statistics (the final
    /// evaluation), charged to the same budget as training.
    #[serde(default = "default_evaluation_noise")]
    pub evaluation_noise_multiplier: f64,
    /// The accountant that calibrates σ and reports ε: `pld` (the default) is the tightest
    /// available for the mechanism (privacy loss distributions for `record`'s subsampled
    /// Gaussian, Rényi DP where no PLD exists); `rdp` is Rényi DP only, looser, for comparing
    /// with systems that use it. Partners re-derive the plan with the same one.
    #[serde(default, skip_serializing_if = "is_default_accountant")]
    pub accountant: crate::accountant::Method,
}

/// `privacy.clip`: a fixed norm, or `"adaptive"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clip {
    /// Every update (or example gradient) clipped to this L2 norm.
    Norm(f64),
    /// The norm follows a quantile of the partners' update norms (Andrew, Thakkar, McMahan
    /// and Ramaswamy, "Differentially Private Learning with Adaptive Clipping", NeurIPS
    /// 2021), estimated each round from a noised count released with the update.
    Adaptive,
}

impl Default for Clip {
    fn default() -> Self {
        Clip::Norm(default_dp_clip())
    }
}

impl Clip {
    /// The fixed norm, or `None` when adaptive.
    pub fn norm(self) -> Option<f64> {
        match self {
            Clip::Norm(c) => Some(c),
            Clip::Adaptive => None,
        }
    }

    /// Whether the clip is adaptive.
    pub fn is_adaptive(self) -> bool {
        self == Clip::Adaptive
    }
}

impl Serialize for Clip {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Clip::Norm(c) => s.serialize_f64(*c),
            Clip::Adaptive => s.serialize_str("adaptive"),
        }
    }
}

impl<'de> Deserialize<'de> for Clip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Clip;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a clipping norm (a number) or \"adaptive\"")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Clip, E> {
                Ok(Clip::Norm(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Clip, E> {
                Ok(Clip::Norm(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Clip, E> {
                Ok(Clip::Norm(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Clip, E> {
                match v {
                    "adaptive" => Ok(Clip::Adaptive),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[privacy.adaptive_clip]`: the clip norm C starts at `initial` and after each round moves
/// geometrically toward the `quantile` of the partners' update norms,
/// `C ← C·exp(−learning_rate·(b − quantile))`, where b is the noised share of partners whose
/// update was within C; it stays in `[max / 10⁶, max]`. The fixed-point encoding is sized
/// for `max`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveClip {
    /// The clip of the first training round.
    #[serde(default = "default_adaptive_initial")]
    pub initial: f64,
    /// The target quantile γ of the update norms (0.5: the median).
    #[serde(default = "default_adaptive_quantile")]
    pub quantile: f64,
    /// The geometric learning rate η.
    #[serde(default = "default_adaptive_learning_rate")]
    pub learning_rate: f64,
    /// The largest clip (and the bound the encoding is sized for).
    #[serde(default = "default_adaptive_max")]
    pub max: f64,
}

fn default_adaptive_initial() -> f64 {
    0.1
}
fn default_adaptive_quantile() -> f64 {
    0.5
}
fn default_adaptive_learning_rate() -> f64 {
    0.2
}
fn default_adaptive_max() -> f64 {
    10.0
}

impl Default for AdaptiveClip {
    fn default() -> Self {
        Self {
            initial: default_adaptive_initial(),
            quantile: default_adaptive_quantile(),
            learning_rate: default_adaptive_learning_rate(),
            max: default_adaptive_max(),
        }
    }
}

impl AdaptiveClip {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The smallest clip the norm may reach.
    pub fn min(&self) -> f64 {
        self.max * 1e-6
    }

    /// The next round's clip after a round at `clip` in which a noised share
    /// `unclipped_share` of the partners had updates within it.
    pub fn next(&self, clip: f64, unclipped_share: f64) -> f64 {
        let share = if unclipped_share.is_finite() {
            unclipped_share
        } else {
            self.quantile
        };
        (clip * (-self.learning_rate * (share - self.quantile)).exp()).clamp(self.min(), self.max)
    }
}

fn is_default_accountant(m: &crate::accountant::Method) -> bool {
    *m == crate::accountant::Method::default()
}

fn default_evaluation_noise() -> f64 {
    8.0
}

fn default_epsilon() -> f64 {
    1.0
}
fn default_delta() -> f64 {
    1e-5
}
fn default_dp_clip() -> f64 {
    1.0
}
fn default_sampling_rate() -> f64 {
    0.01
}

impl PrivacySection {
    /// The largest clip any round uses: the fixed norm, or an adaptive clip's `max` (what the
    /// encoding is sized for).
    pub fn largest_clip(&self) -> f64 {
        match self.clip {
            Clip::Norm(c) => c,
            Clip::Adaptive => self.adaptive_clip.max,
        }
    }
}

impl Default for PrivacySection {
    fn default() -> Self {
        Self {
            mode: PrivacyMode::None,
            epsilon: default_epsilon(),
            delta: default_delta(),
            clip: Clip::default(),
            adaptive_clip: AdaptiveClip::default(),
            noise_multiplier: None,
            sampling_rate: default_sampling_rate(),
            evaluation_noise_multiplier: default_evaluation_noise(),
            accountant: crate::accountant::Method::default(),
        }
    }
}

/// `[job]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// Human-readable job name.
    pub name: String,
    /// The processing purpose partners consent to, e.g. `campaign_response`.
    pub purpose: String,
    /// Number of training rounds.
    pub rounds: u32,
    /// Seed for model initialisation and cohort sampling.
    #[serde(default)]
    pub seed: u64,
}

/// `[label]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSection {
    /// Column holding the label.
    pub column: String,
    /// Value of that column that marks a positive example; every other value is negative.
    pub positive: String,
}

/// `[features]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSection {
    /// Numeric columns, standardised with federated means and standard deviations.
    #[serde(default)]
    pub numeric: Vec<String>,
    /// Categorical columns, one-hot encoded.
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Declared vocabularies of categorical columns. A value outside the vocabulary goes to
    /// one extra "other" slot. A categorical column without a vocabulary is hashed (SHA-256 of
    /// the value) into `hash_buckets` slots, so no partner reveals which values it holds.
    #[serde(default)]
    pub vocabulary: BTreeMap<String, Vec<String>>,
    /// Slots for a hashed categorical column.
    #[serde(default = "default_hash_buckets")]
    pub hash_buckets: u32,
    /// Declared ranges `[low, high]` of numeric columns: values outside are clamped to the
    /// range. Differentially private jobs need one for every numeric column and standardise
    /// with them (centre and half-width) instead of measured means and deviations, which
    /// would leave the partners un-noised.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub range: BTreeMap<String, [f64; 2]>,
}

fn default_hash_buckets() -> u32 {
    32
}

/// Model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKindName {
    /// L2-regularised logistic regression.
    Logistic,
    /// One hidden ReLU layer, sigmoid output.
    Mlp,
    /// Gradient-boosted trees (second-order, histogram-based), grown through the secure sum.
    Gbdt,
}

impl ModelKindName {
    /// The name as the spec writes it (`logistic`, `mlp`).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKindName::Logistic => "logistic",
            ModelKindName::Mlp => "mlp",
            ModelKindName::Gbdt => "gbdt",
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// `logistic` or `mlp`.
    pub kind: ModelKindName,
    /// Hidden units of the MLP.
    #[serde(default)]
    pub hidden: Option<u32>,
    /// L2 regularisation strength (on weights, not biases).
    #[serde(default = "default_l2")]
    pub l2: f64,
    /// The boosting settings of `kind = "gbdt"` (`[model.gbdt]`; every field has a default).
    /// The number of trees is `job.rounds`: a tree is a round of the job's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbdt: Option<crate::gbdt_params::GbdtParams>,
}

fn default_l2() -> f64 {
    1e-4
}

/// Server optimisers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerOptimizerName {
    /// Example-weighted average of the partners' model deltas.
    Fedavg,
    /// Adam on the averaged delta (Reddi et al., "Adaptive Federated Optimization").
    Fedadam,
}

impl ServerOptimizerName {
    /// The optimiser as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerOptimizerName::Fedavg => "fedavg",
            ServerOptimizerName::Fedadam => "fedadam",
        }
    }
}

/// `[training]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// Passes over the local training rows per round.
    #[serde(default = "one")]
    pub local_epochs: u32,
    /// Minibatch size of local SGD.
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// Local SGD step size.
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// `fedavg` or `fedadam`.
    #[serde(default = "default_server_optimizer")]
    pub server_optimizer: ServerOptimizerName,
    /// Server step size (1.0 for FedAvg reproduces plain averaging).
    #[serde(default)]
    pub server_learning_rate: Option<f64>,
    /// FedProx proximal coefficient μ (0 disables it).
    #[serde(default)]
    pub fedprox_mu: f64,
    /// L2 bound on each partner's model delta; it also bounds the fixed-point range.
    #[serde(default = "default_clip")]
    pub clip_norm: f64,
    /// A partner's update is weighted by its training rows, capped at this many.
    #[serde(default = "default_max_weight")]
    pub max_weight: u32,
}

fn one() -> u32 {
    1
}
fn default_batch() -> u32 {
    64
}
fn default_lr() -> f64 {
    0.1
}
fn default_server_optimizer() -> ServerOptimizerName {
    ServerOptimizerName::Fedavg
}
fn default_clip() -> f64 {
    10.0
}
fn default_max_weight() -> u32 {
    65_536
}

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            local_epochs: one(),
            batch_size: default_batch(),
            learning_rate: default_lr(),
            server_optimizer: default_server_optimizer(),
            server_learning_rate: None,
            fedprox_mu: 0.0,
            clip_norm: default_clip(),
            max_weight: default_max_weight(),
        }
    }
}

impl TrainingSection {
    /// The server step size, defaulting by optimiser (1.0 for FedAvg, 0.05 for FedAdam).
    pub fn server_lr(&self) -> f64 {
        self.server_learning_rate
            .unwrap_or(match self.server_optimizer {
                ServerOptimizerName::Fedavg => 1.0,
                ServerOptimizerName::Fedadam => 0.05,
            })
    }
}

/// `[aggregation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationSection {
    /// Partners sampled per round; 0 means every partner that accepted the job.
    #[serde(default)]
    pub cohort_size: u32,
    /// Minimum number of partners whose input must arrive for a round to count.
    #[serde(default = "default_min_participants")]
    pub min_participants: u32,
    /// Mask every partner's input (secure aggregation).
    #[serde(default = "yes")]
    pub secure: bool,
    /// Attempts per round before the job fails (a failed attempt is retried with a new cohort).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Cohorts larger than this mask over a sparse random graph of O(log n) neighbours
    /// (SecAgg+) instead of the complete graph.
    #[serde(default = "default_sparse_above")]
    pub sparse_graph_above: u32,
}

fn default_sparse_above() -> u32 {
    64
}

fn default_min_participants() -> u32 {
    2
}
fn yes() -> bool {
    true
}
fn default_attempts() -> u32 {
    5
}

impl Default for AggregationSection {
    fn default() -> Self {
        Self {
            cohort_size: 0,
            min_participants: default_min_participants(),
            secure: true,
            max_attempts: default_attempts(),
            sparse_graph_above: default_sparse_above(),
        }
    }
}

/// `[evaluation]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSection {
    /// Bins of the score histograms from which AUC and lift are derived (default 1,000;
    /// 20 in differentially private jobs, where every bin carries noise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histogram_bins: Option<u32>,
}

/// Default histogram bins without and with differential privacy.
const DEFAULT_BINS: u32 = 1000;
const DEFAULT_DP_BINS: u32 = 20;

/// Upper bounds that keep a hostile or mistaken spec from exhausting memory.
const MAX_ROUNDS: u32 = 100_000;
const MAX_COLUMNS: usize = 10_000;
const MAX_VOCAB: usize = 100_000;
const MAX_HASH_BUCKETS: u32 = 1 << 22;
const MAX_HIDDEN: u32 = 4096;
const MAX_BINS: u32 = 100_000;

impl JobSpec {
    /// Parses and validates a spec from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: JobSpec =
            toml::from_str(text).map_err(|e| SpecError::Parse(printable(&e.to_string())))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Serialises the spec back to TOML (what the coordinator offers to partners).
    pub fn to_toml(&self) -> Result<String, SpecError> {
        toml::to_string(self).map_err(|e| SpecError::Parse(e.to_string()))
    }

    /// Checks every value; the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("job.name", &self.job.name)?;
        check_name("job.purpose", &self.job.purpose)?;
        if self.job.rounds == 0 || self.job.rounds > MAX_ROUNDS {
            return Err(invalid("job.rounds", format!("must be 1..={MAX_ROUNDS}")));
        }
        if self.label.column.trim().is_empty() {
            return Err(invalid("label.column", "must name a column"));
        }
        if self.label.positive.is_empty() {
            return Err(invalid("label.positive", "must not be empty"));
        }
        let f = &self.features;
        if f.numeric.is_empty() && f.categorical.is_empty() {
            return Err(invalid(
                "features",
                "declares no feature: list at least one numeric or categorical column",
            ));
        }
        if f.numeric.len() + f.categorical.len() > MAX_COLUMNS {
            return Err(invalid(
                "features",
                format!("declares more than {MAX_COLUMNS} columns"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (field, col) in f
            .numeric
            .iter()
            .map(|c| ("features.numeric", c))
            .chain(f.categorical.iter().map(|c| ("features.categorical", c)))
        {
            if col.trim().is_empty() {
                return Err(invalid(field, "contains an empty column name"));
            }
            if col == &self.label.column {
                return Err(invalid(
                    field,
                    format!("lists the label column `{col}` as a feature"),
                ));
            }
            if !seen.insert(col.as_str()) {
                return Err(invalid(field, format!("lists column `{col}` twice")));
            }
        }
        for (col, vocab) in &f.vocabulary {
            let field = format!("features.vocabulary.{col}");
            if !f.categorical.contains(col) {
                return Err(invalid(&field, "is not a declared categorical column"));
            }
            if vocab.is_empty() || vocab.len() > MAX_VOCAB {
                return Err(invalid(&field, format!("must hold 1..={MAX_VOCAB} values")));
            }
            let distinct: std::collections::BTreeSet<_> = vocab.iter().collect();
            if distinct.len() != vocab.len() {
                return Err(invalid(&field, "lists a value twice"));
            }
        }
        if f.hash_buckets == 0 || f.hash_buckets > MAX_HASH_BUCKETS {
            return Err(invalid(
                "features.hash_buckets",
                format!("must be 1..={MAX_HASH_BUCKETS}"),
            ));
        }
        match (self.model.kind, self.model.hidden) {
            (ModelKindName::Mlp, None) => {
                return Err(invalid("model.hidden", "is required for kind = \"mlp\""));
            }
            (ModelKindName::Mlp, Some(h)) if h == 0 || h > MAX_HIDDEN => {
                return Err(invalid("model.hidden", format!("must be 1..={MAX_HIDDEN}")));
            }
            (ModelKindName::Logistic | ModelKindName::Gbdt, Some(_)) => {
                return Err(invalid("model.hidden", "only applies to kind = \"mlp\""));
            }
            _ => {}
        }
        self.validate_gbdt()?;
        check_range("model.l2", self.model.l2, 0.0, 10.0)?;
        let t = &self.training;
        if t.local_epochs == 0 || t.local_epochs > 1000 {
            return Err(invalid("training.local_epochs", "must be 1..=1000"));
        }
        if t.batch_size == 0 || t.batch_size > 1_000_000 {
            return Err(invalid("training.batch_size", "must be 1..=1000000"));
        }
        check_positive("training.learning_rate", t.learning_rate, 100.0)?;
        if let Some(lr) = t.server_learning_rate {
            check_positive("training.server_learning_rate", lr, 100.0)?;
        }
        check_range("training.fedprox_mu", t.fedprox_mu, 0.0, 1000.0)?;
        check_positive("training.clip_norm", t.clip_norm, 1e6)?;
        if t.max_weight == 0 || t.max_weight > 1 << 24 {
            return Err(invalid("training.max_weight", "must be 1..=16777216"));
        }
        let a = &self.aggregation;
        if a.min_participants == 0 {
            return Err(invalid(
                "aggregation.min_participants",
                "must be at least 1",
            ));
        }
        if a.cohort_size != 0 && a.cohort_size < a.min_participants {
            return Err(invalid(
                "aggregation.cohort_size",
                format!(
                    "({}) is below aggregation.min_participants ({})",
                    a.cohort_size, a.min_participants
                ),
            ));
        }
        if a.max_attempts == 0 || a.max_attempts > 100 {
            return Err(invalid("aggregation.max_attempts", "must be 1..=100"));
        }
        let p = &self.privacy;
        check_positive("privacy.epsilon", p.epsilon, 1e6)?;
        if !(p.delta > 0.0 && p.delta < 1.0) {
            return Err(invalid(
                "privacy.delta",
                format!("must be in (0, 1), got {}", p.delta),
            ));
        }
        match p.clip {
            Clip::Norm(c) => check_positive("privacy.clip", c, 1e6)?,
            Clip::Adaptive => {
                if !matches!(
                    p.mode,
                    PrivacyMode::PartnerCentral | PrivacyMode::PartnerDistributed
                ) {
                    return Err(invalid(
                        "privacy.clip",
                        "\"adaptive\" is for the partner-level modes (\"partner-central\" or \"partner-distributed\"): it follows the partners' update norms",
                    ));
                }
                let a = &p.adaptive_clip;
                check_positive("privacy.adaptive_clip.max", a.max, 1e6)?;
                if !(a.initial >= a.min() && a.initial <= a.max) {
                    return Err(invalid(
                        "privacy.adaptive_clip.initial",
                        format!(
                            "must be in [max / 1e6, max] = [{}, {}], got {}",
                            a.min(),
                            a.max,
                            a.initial
                        ),
                    ));
                }
                if !(a.quantile > 0.0 && a.quantile < 1.0) {
                    return Err(invalid(
                        "privacy.adaptive_clip.quantile",
                        format!("must be in (0, 1), got {}", a.quantile),
                    ));
                }
                check_positive("privacy.adaptive_clip.learning_rate", a.learning_rate, 10.0)?;
            }
        }
        if let Some(sigma) = p.noise_multiplier {
            check_positive("privacy.noise_multiplier", sigma, 1e6)?;
        }
        if !(p.sampling_rate > 0.0 && p.sampling_rate <= 1.0) {
            return Err(invalid(
                "privacy.sampling_rate",
                format!("must be in (0, 1], got {}", p.sampling_rate),
            ));
        }
        if p.mode == PrivacyMode::PartnerDistributed && !self.aggregation.secure {
            return Err(invalid(
                "privacy.mode",
                "\"partner-distributed\" needs aggregation.secure = true (each partner's noise alone is too small to hide its update)",
            ));
        }
        check_positive(
            "privacy.evaluation_noise_multiplier",
            p.evaluation_noise_multiplier,
            1e6,
        )?;
        let bins = self.histogram_bins();
        if !(2..=MAX_BINS).contains(&bins) {
            return Err(invalid(
                "evaluation.histogram_bins",
                format!("must be 2..={MAX_BINS}"),
            ));
        }
        for (column, &[low, high]) in &self.features.range {
            if !self.features.numeric.contains(column) {
                return Err(invalid(
                    "features.range",
                    format!("`{column}` is not a declared numeric column"),
                ));
            }
            if !(low.is_finite() && high.is_finite() && low < high) {
                return Err(invalid(
                    "features.range",
                    format!("`{column}` must be [low, high] with finite low < high"),
                ));
            }
        }
        if self.is_dp() {
            let missing: Vec<&str> = self
                .features
                .numeric
                .iter()
                .filter(|c| !self.features.range.contains_key(*c))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(invalid(
                    "features.range",
                    format!(
                        "a differentially private job needs a declared [low, high] for every numeric column (missing: {}); measured means and deviations would leave the partners un-noised",
                        missing.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The settings that tell two runs apart, as (name, value) pairs in a fixed order: what
    /// `fedmark job list` and `job compare` show. Values are spelled as the spec spells them;
    /// settings that do not apply (ε without DP, hidden units of a linear model) are left out.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let t = &self.training;
        let mut out = vec![
            ("model", self.model.kind.as_str().to_owned()),
            ("rounds", self.job.rounds.to_string()),
            ("local_epochs", t.local_epochs.to_string()),
            ("batch_size", t.batch_size.to_string()),
            ("learning_rate", t.learning_rate.to_string()),
            ("server_optimizer", t.server_optimizer.as_str().to_owned()),
            (
                "server_learning_rate",
                self.training.server_lr().to_string(),
            ),
            ("l2", self.model.l2.to_string()),
        ];
        if let Some(h) = self
            .model
            .hidden
            .filter(|_| self.model.kind == ModelKindName::Mlp)
        {
            out.insert(1, ("hidden", h.to_string()));
        }
        if t.fedprox_mu > 0.0 {
            out.push(("fedprox_mu", t.fedprox_mu.to_string()));
        }
        out.push((
            "features",
            (self.features.numeric.len() + self.features.categorical.len()).to_string(),
        ));
        out.push(("secure", self.aggregation.secure.to_string()));
        out.push(("privacy", self.privacy.mode.as_str().to_owned()));
        if self.privacy.mode != PrivacyMode::None {
            out.push(("epsilon", self.privacy.epsilon.to_string()));
            out.push(("delta", self.privacy.delta.to_string()));
            if self.privacy.clip.is_adaptive() {
                let a = &self.privacy.adaptive_clip;
                out.push((
                    "clip",
                    format!(
                        "adaptive (quantile {}, rate {})",
                        a.quantile, a.learning_rate
                    ),
                ));
            }
            if self.privacy.accountant != crate::accountant::Method::default() {
                out.push(("accountant", self.privacy.accountant.to_string()));
            }
        }
        out
    }

    /// Model parameters the job asks for, computed without overflow (a spec can ask for more
    /// than memory holds: a hashed column of 2^22 slots under an MLP of 4,096 units is 1.7e10
    /// parameters, so the coordinator checks this against its budget before accepting it).
    pub fn model_params(&self) -> u128 {
        let f = &self.features;
        let dim: u128 = f.numeric.len() as u128
            + f.categorical
                .iter()
                .map(|c| match f.vocabulary.get(c) {
                    Some(v) => v.len() as u128 + 1,
                    None => u128::from(f.hash_buckets),
                })
                .sum::<u128>();
        match self.model.kind {
            ModelKindName::Logistic => dim + 1,
            ModelKindName::Mlp => {
                let hidden = u128::from(self.model.hidden.unwrap_or(0));
                dim * hidden + 2 * hidden + 1
            }
            // The words of the largest round state the plan allows.
            ModelKindName::Gbdt => self.gbdt_params().map_or(0, |p| {
                crate::gbdt_plan::max_state_words(&p, f.numeric.len(), f.categorical.len())
            }),
        }
    }

    /// The `[model.gbdt]` table's checks: only under `kind = "gbdt"`, every setting in its
    /// range, the number of trees given by `job.rounds`, a declared range for every numeric
    /// column (the bin sketch is taken over it), and no DP yet.
    fn validate_gbdt(&self) -> Result<(), SpecError> {
        if self.model.kind != ModelKindName::Gbdt {
            return match self.model.gbdt {
                Some(_) => Err(invalid("model.gbdt", "only applies to kind = \"gbdt\"")),
                None => Ok(()),
            };
        }
        let params = self.gbdt_params().unwrap_or_default();
        params
            .validate()
            .map_err(|e| invalid(&format!("model.gbdt.{}", e.field), e.to_string()))?;
        let declared = self.model.gbdt.as_ref().map(|g| g.trees);
        if declared.is_some_and(|t| {
            t != crate::gbdt_params::GbdtParams::default().trees && t != self.job.rounds
        }) {
            return Err(invalid(
                "model.gbdt.trees",
                "the number of trees is job.rounds (one tree per round); leave trees out",
            ));
        }
        if let Some(col) = self
            .features
            .numeric
            .iter()
            .find(|c| !self.features.range.contains_key(*c))
        {
            return Err(invalid(
                &format!("features.range.{col}"),
                "a gbdt job needs a declared range for every numeric column (its bins are \
                 sketched over it)",
            ));
        }
        match self.privacy.mode {
            PrivacyMode::None | PrivacyMode::Record => {}
            PrivacyMode::PartnerCentral | PrivacyMode::PartnerDistributed => {
                return Err(invalid(
                    "privacy.mode",
                    "partner-level DP is not available for gbdt jobs yet; use \"record\" \
                     (each record's histogram contributions noised) or \"none\"",
                ));
            }
        }
        if self.is_dp() && params.early_stopping_rounds.is_some() {
            return Err(invalid(
                "model.gbdt.early_stopping_rounds",
                "a DP job releases no validation loss while it trains (only the noised final \
                 evaluation); leave it out",
            ));
        }
        Ok(())
    }

    /// A gbdt job's boosting settings: the `[model.gbdt]` table (or its defaults) with the
    /// number of trees set to `job.rounds` and the draws seeded by `job.seed`.
    pub fn gbdt_params(&self) -> Option<crate::gbdt_params::GbdtParams> {
        (self.model.kind == ModelKindName::Gbdt).then(|| {
            let mut p = self.model.gbdt.clone().unwrap_or_default();
            p.trees = self.job.rounds;
            p.seed = self.job.seed;
            p.noised = self.is_dp();
            p
        })
    }

    /// Whether the job differs from the linear models' round plan: a gbdt job's training
    /// rounds grow its trees a level at a time (see [`crate::gbdt_plan`]).
    pub fn is_gbdt(&self) -> bool {
        self.model.kind == ModelKindName::Gbdt
    }

    /// The job's training rounds as the protocol numbers them: `job.rounds`, or for a gbdt
    /// job one round per tree level ([`crate::gbdt_plan::planned_rounds`]). Round 0 is the
    /// statistics round and `planned_rounds() + 1` the final evaluation.
    pub fn planned_rounds(&self) -> u64 {
        match self.gbdt_params() {
            Some(p) => crate::gbdt_plan::planned_rounds(&p),
            None => u64::from(self.job.rounds),
        }
    }

    /// Whether the job gives a differential-privacy guarantee.
    pub fn is_dp(&self) -> bool {
        self.privacy.mode != PrivacyMode::None
    }

    /// Whether the job opens with a statistics round (measured means and deviations). DP
    /// jobs standardise with the declared ranges instead.
    pub fn measures_moments(&self) -> bool {
        !self.is_dp()
    }

    /// Whether training rounds carry holdout statistics of the model they train from. DP
    /// jobs release holdout statistics at most once, in the final evaluation.
    pub fn evaluates_in_training(&self) -> bool {
        !self.is_dp()
    }

    /// Whether the job ends with a federated evaluation round. Under partner-level DP a
    /// partner's whole holdout is the protected unit and nothing but its noised updates
    /// leaves it: no federated evaluation (each partner can score the released model
    /// locally). In `record` jobs the final evaluation is noised and charged.
    pub fn final_evaluation(&self) -> bool {
        matches!(self.privacy.mode, PrivacyMode::None | PrivacyMode::Record)
    }

    /// Bins of the evaluation histograms.
    pub fn histogram_bins(&self) -> u32 {
        self.evaluation.histogram_bins.unwrap_or(if self.is_dp() {
            DEFAULT_DP_BINS
        } else {
            DEFAULT_BINS
        })
    }

    /// Every column a partner must read: the features, then the label.
    pub fn declared_columns(&self) -> Vec<&str> {
        self.features
            .numeric
            .iter()
            .chain(&self.features.categorical)
            .chain(std::iter::once(&self.label.column))
            .map(String::as_str)
            .collect()
    }
}

fn check_name(field: &str, value: &str) -> Result<(), SpecError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && !value.bytes().all(|b| b == b'.')
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "`{}` must be 1-128 characters of letters, digits, `_`, `-`, `.` (not only dots)",
                printable(value)
            ),
        ))
    }
}

fn check_positive(field: &str, v: f64, max: f64) -> Result<(), SpecError> {
    if v.is_finite() && v > 0.0 && v <= max {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be a number in (0, {max}], got {v}"),
        ))
    }
}

fn check_range(field: &str, v: f64, min: f64, max: f64) -> Result<(), SpecError> {
    if v.is_finite() && (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be in [{min}, {max}], got {v}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_clip_parses_validates_and_moves_geometrically() {
        let base = "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 2\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
                    [features]\nnumeric = [\"a\"]\nrange = { a = [0.0, 1.0] }\n[model]\nkind = \"logistic\"\n";
        let parse = |privacy: &str| JobSpec::from_toml(&format!("{base}[privacy]\n{privacy}"));
        let s = parse("mode = \"partner-central\"\nclip = \"adaptive\"\n").unwrap();
        assert!(s.privacy.clip.is_adaptive());
        assert_eq!(s.privacy.adaptive_clip, AdaptiveClip::default());
        let round_trip = JobSpec::from_toml(&s.to_toml().unwrap()).unwrap();
        assert_eq!(round_trip.privacy.clip, Clip::Adaptive);
        let s = parse(
            "mode = \"partner-central\"\nclip = \"adaptive\"\n[privacy.adaptive_clip]\nquantile = 0.8\n",
        )
        .unwrap();
        assert_eq!(s.privacy.adaptive_clip.quantile, 0.8);
        assert!(s.to_toml().unwrap().contains("quantile = 0.8"));
        assert_eq!(parse("clip = 2\n").unwrap().privacy.clip, Clip::Norm(2.0));
        // Both partner-level modes; not record-level DP, whose clip is per example.
        let distributed = parse("mode = \"partner-distributed\"\nclip = \"adaptive\"\n").unwrap();
        assert!(distributed.privacy.clip.is_adaptive());
        for (privacy, field) in [
            ("mode = \"record\"\nclip = \"adaptive\"\n", "privacy.clip"),
            ("clip = \"adaptive\"\n", "privacy.clip"),
            (
                "mode = \"partner-central\"\nclip = \"adaptive\"\n[privacy.adaptive_clip]\ninitial = 20.0\n",
                "privacy.adaptive_clip.initial",
            ),
            (
                "mode = \"partner-central\"\nclip = \"adaptive\"\n[privacy.adaptive_clip]\nquantile = 1.0\n",
                "privacy.adaptive_clip.quantile",
            ),
            (
                "mode = \"partner-central\"\nclip = \"adaptive\"\n[privacy.adaptive_clip]\nlearning_rate = 0.0\n",
                "privacy.adaptive_clip.learning_rate",
            ),
        ] {
            let err = parse(privacy).unwrap_err().to_string();
            assert!(err.contains(field), "{privacy}: {err}");
        }
        assert!(
            parse("clip = \"auto\"\n")
                .unwrap_err()
                .to_string()
                .contains("adaptive")
        );
        // C·exp(−η(b − γ)), by hand: η = 0.2, γ = 0.5.
        let a = AdaptiveClip::default();
        assert!((a.next(1.0, 0.7) - 0.960_789_439_152_323_2).abs() < 1e-15);
        assert!((a.next(1.0, 0.0) - 1.105_170_918_075_647_7).abs() < 1e-15);
        assert_eq!(a.next(2.0, 0.5), 2.0);
        // Clamped to [max·1e-6, max]; a non-finite share leaves the clip where it is.
        assert_eq!(a.next(a.max, -5.0), a.max);
        assert_eq!(a.next(a.min(), 50.0), a.min());
        assert_eq!(a.next(0.3, f64::NAN), 0.3);
    }

    /// The settings a job list shows: in a fixed order, spelled as the spec spells them, and
    /// only those that apply (no ε without DP, no hidden units for a linear model).
    #[test]
    fn settings_name_what_tells_runs_apart_and_only_what_applies() {
        let plain = JobSpec::from_toml(GOOD).unwrap();
        let s = plain.settings();
        let names: Vec<&str> = s.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "model",
                "rounds",
                "local_epochs",
                "batch_size",
                "learning_rate",
                "server_optimizer",
                "server_learning_rate",
                "l2",
                "features",
                "secure",
                "privacy"
            ]
        );
        assert_eq!(s[0].1, "logistic");
        assert_eq!(s[4].1, "0.1");
        assert_eq!(s[10].1, "none");
        let dp = JobSpec::from_toml(&format!(
            "{GOOD}[privacy]\nmode = \"record\"\nepsilon = 2.0\n"
        ))
        .unwrap();
        let s = dp.settings();
        assert!(s.contains(&("privacy", "record".into())));
        assert!(s.contains(&("epsilon", "2".into())));
        let mlp =
            JobSpec::from_toml(&GOOD.replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = 16"))
                .unwrap();
        assert_eq!(mlp.settings()[1], ("hidden", "16".into()));
    }

    /// A gbdt spec: its table's defaults with trees = rounds and the job's seed, and each
    /// misuse refused naming its field.
    #[test]
    fn gbdt_specs_and_their_refusals() {
        let gbdt =
            |table: &str| GOOD.replace("kind = \"logistic\"", &format!("kind = \"gbdt\"\n{table}"));
        let s = JobSpec::from_toml(&gbdt("")).unwrap();
        let p = s.gbdt_params().unwrap();
        assert_eq!((p.trees, p.max_depth, p.seed), (20, 6, s.job.seed));
        let s =
            JobSpec::from_toml(&gbdt("[model.gbdt]\nmax_depth = 4\nlearning_rate = 0.1")).unwrap();
        assert_eq!(s.gbdt_params().unwrap().max_depth, 4);
        assert!(s.model_params() > 0);
        assert!(JobSpec::from_toml(GOOD).unwrap().gbdt_params().is_none());
        let field = |text: &str| match JobSpec::from_toml(text) {
            Err(SpecError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(&gbdt("[model.gbdt]\nmax_depth = 0")),
            "model.gbdt.max_depth"
        );
        assert_eq!(field(&gbdt("[model.gbdt]\ntrees = 7")), "model.gbdt.trees");
        assert!(JobSpec::from_toml(&gbdt("[model.gbdt]\ntrees = 20")).is_ok());
        let stopping =
            JobSpec::from_toml(&gbdt("[model.gbdt]\nearly_stopping_rounds = 3")).unwrap();
        assert_eq!(
            stopping.gbdt_params().unwrap().early_stopping_rounds,
            Some(3)
        );
        assert_eq!(
            field(&gbdt("[model.gbdt]\nearly_stopping_rounds = 0")),
            "model.gbdt.early_stopping_rounds"
        );
        assert_eq!(
            field(&gbdt("").replace(", balance = [-5000.0, 50000.0]", "")),
            "features.range.balance"
        );
        // Record-level DP: every node asked for at once, a round per level.
        let dp = |mode: &str, extra: &str| {
            format!(
                "{}[privacy]\nmode = \"{mode}\"\nepsilon = 2.0\n",
                gbdt(extra)
            )
        };
        let record = JobSpec::from_toml(&dp("record", "")).unwrap();
        let p = record.gbdt_params().unwrap();
        assert!(p.noised && !s.gbdt_params().unwrap().noised);
        assert_eq!(record.planned_rounds(), u64::from(p.trees * p.max_depth));
        assert_eq!(field(&dp("partner-central", "")), "privacy.mode");
        assert_eq!(field(&dp("partner-distributed", "")), "privacy.mode");
        assert_eq!(
            field(&dp("record", "[model.gbdt]\nearly_stopping_rounds = 2")),
            "model.gbdt.early_stopping_rounds"
        );
        assert_eq!(
            field(&GOOD.replace(
                "kind = \"logistic\"",
                "kind = \"logistic\"\n[model.gbdt]\nmax_depth = 3"
            )),
            "model.gbdt"
        );
        assert_eq!(field(&gbdt("hidden = 4")), "model.hidden");
    }

    const GOOD: &str = r#"
[job]
name = "campaign-response"
purpose = "campaign_response"
rounds = 20
[label]
column = "y"
positive = "yes"
[features]
numeric = ["age", "balance"]
categorical = ["job"]
range = { age = [18.0, 95.0], balance = [-5000.0, 50000.0] }
[model]
kind = "logistic"
[training]
local_epochs = 1
batch_size = 64
learning_rate = 0.1
server_optimizer = "fedavg"
"#;

    fn with(find: &str, replace: &str) -> Result<JobSpec, SpecError> {
        assert!(
            GOOD.contains(find),
            "test edits a line the spec lacks: {find}"
        );
        JobSpec::from_toml(&GOOD.replace(find, replace))
    }

    #[test]
    fn good_spec_parses_with_defaults() -> Result<(), SpecError> {
        let s = JobSpec::from_toml(GOOD)?;
        assert_eq!(s.job.rounds, 20);
        assert!(s.aggregation.secure);
        assert_eq!(s.declared_columns(), ["age", "balance", "job", "y"]);
        // round trip through the text partners receive
        assert_eq!(JobSpec::from_toml(&s.to_toml()?)?, s);
        Ok(())
    }

    #[test]
    fn unknown_key_is_named() {
        let e = with("rounds = 20", "rounds = 20\nround = 3").unwrap_err();
        assert!(e.to_string().contains("unknown field `round`"), "{e}");
    }

    #[test]
    fn missing_label_is_named() {
        let e = with("[label]\ncolumn = \"y\"\npositive = \"yes\"", "").unwrap_err();
        assert!(e.to_string().contains("missing field `label`"), "{e}");
    }

    #[test]
    fn empty_features_refused() {
        let e = with(
            "numeric = [\"age\", \"balance\"]\ncategorical = [\"job\"]",
            "numeric = []",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("`features` declares no feature"),
            "{e}"
        );
    }

    #[test]
    fn bad_numbers_name_their_field() {
        for (find, replace, field) in [
            ("rounds = 20", "rounds = 0", "job.rounds"),
            (
                "learning_rate = 0.1",
                "learning_rate = -1.0",
                "training.learning_rate",
            ),
            (
                "learning_rate = 0.1",
                "learning_rate = nan",
                "training.learning_rate",
            ),
            ("batch_size = 64", "batch_size = 0", "training.batch_size"),
            ("kind = \"logistic\"", "kind = \"mlp\"", "model.hidden"),
        ] {
            let e = with(find, replace).unwrap_err();
            assert!(
                e.to_string().contains(&format!("`{field}`")),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn label_as_feature_and_duplicates_refused() {
        let e = with("categorical = [\"job\"]", "categorical = [\"job\", \"y\"]").unwrap_err();
        assert!(e.to_string().contains("label column"), "{e}");
        let e = with("categorical = [\"job\"]", "categorical = [\"age\"]").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn vocabulary_must_belong_to_a_categorical() {
        let e = with(
            "categorical = [\"job\"]",
            "categorical = [\"job\"]\nvocabulary = { age = [\"a\"] }",
        )
        .unwrap_err();
        assert!(e.to_string().contains("features.vocabulary.age"), "{e}");
    }

    #[test]
    fn dot_names_are_refused_and_control_characters_never_echoed() {
        for name in [".", "..", "..."] {
            let e = with(
                "name = \"campaign-response\"",
                &format!("name = \"{name}\""),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("job.name") && e.contains("only dots"), "{e}");
        }
        let e = with(
            "name = \"campaign-response\"",
            "name = \"red\\u001b[31mtext\"",
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains('\u{1b}') && e.contains("\\u{1b}"), "{e}");
        let e = JobSpec::from_toml("[job]\nname = \"x\u{7}\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\u{7}'), "{e}");
    }
}
