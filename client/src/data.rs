//! Loading a partner's records: only the job's declared columns, every bad row skipped and
//! counted, never a crash and never a raw value in a log.
//!
//! The header is read first; a declared column that is missing refuses the job with its name.
//! Each record is then split, and only the fields at declared positions are parsed, with the
//! rules of [`FeatureSchema::parse_record`] (the ones an exported model's scorer applies too); a
//! skipped row is counted by its reason, and a numeric column that did not hold a number is
//! named, so a text column declared numeric says which one it is. Which rows
//! are held out for evaluation is decided by [`fedmark_core::features::is_holdout`] on a hash
//! of the record's own declared values (its numerics, categorical slots and label), so the
//! split is stable across runs and no record's side depends on any other record: adding or
//! removing one record moves nobody else between training and holdout. (A split by position
//! would move every later record, so two neighbouring data sets would differ in many training
//! rows and no per-record privacy guarantee would hold.) Identical records fall on one side.
//!
//! With a consent source the partner names its user-id column, and [`load_csv_keyed`] also
//! reads that one column, only to join rows with the round's consent snapshot
//! ([`KeyedData::consented`]). The holdout split is then decided by a hash of the user id
//! instead of the record's values, so all of one user's rows fall on the same side and removing
//! other users' rows (a withdrawal, or a file with those rows deleted) moves nobody across.
//! User ids are kept in memory for the join only; they are never logged or sent.

use std::collections::BTreeMap;
use std::path::Path;

use fedmark_core::features::{ColumnPositions, FeatureSchema, FieldError, RawRows, is_holdout};
use fedmark_core::spec::JobSpec;
use sha2::{Digest, Sha256};

use crate::consent::ConsentSnapshot;

/// Why a partner's data could not be loaded for a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read data file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The header could not be read.
    #[error("data file {path} has no readable header: {reason}")]
    Header {
        /// File path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A declared column is absent from the header.
    #[error("data file {path} lacks the declared column `{column}`")]
    MissingColumn {
        /// File path.
        path: String,
        /// The missing column.
        column: String,
    },
    /// No usable row at all.
    #[error(
        "data file {path} has no usable row ({skipped} skipped: {})",
        skip_summary(by_reason)
    )]
    Empty {
        /// File path.
        path: String,
        /// Rows skipped as bad.
        skipped: u64,
        /// Rows skipped, by reason (a numeric column that held no number is named).
        by_reason: BTreeMap<SkipReason, u64>,
    },
}

/// "malformed record in 3, column `age` not a number in 1200".
fn skip_summary(by_reason: &BTreeMap<SkipReason, u64>) -> String {
    let parts: Vec<String> = by_reason
        .iter()
        .map(|(reason, n)| format!("{reason} in {n}"))
        .collect();
    parts.join(", ")
}

/// Why a row was skipped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub enum SkipReason {
    /// The record has the wrong number of fields or is not valid CSV.
    #[error("malformed record")]
    Malformed,
    /// A numeric column did not hold a finite number.
    #[error("column `{column}` not a number")]
    BadNumber {
        /// The column, as the job spec declares it.
        column: String,
    },
    /// The label field is empty.
    #[error("empty label")]
    MissingLabel,
    /// The user-id field is empty (consent cannot be checked).
    #[error("empty user id")]
    MissingUserId,
}

impl SkipReason {
    /// Stable name of the kind of reason, for reports and structured logs (the column of a
    /// [`SkipReason::BadNumber`] is in [`SkipReason::column`] and in the `Display` text).
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::Malformed => "malformed_record",
            SkipReason::BadNumber { .. } => "bad_number",
            SkipReason::MissingLabel => "missing_label",
            SkipReason::MissingUserId => "missing_user_id",
        }
    }

    /// The column the reason names, if any.
    pub fn column(&self) -> Option<&str> {
        match self {
            SkipReason::BadNumber { column } => Some(column),
            _ => None,
        }
    }
}

/// A partner's records for one job, split into training and holdout rows.
#[derive(Debug, Clone)]
pub struct LocalData {
    /// Rows used for local training.
    pub train: RawRows,
    /// Rows used for federated evaluation.
    pub holdout: RawRows,
    /// Rows skipped, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
}

impl LocalData {
    /// Total rows skipped.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// How to split rows into training and holdout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldoutSplit {
    /// Share of rows held out.
    pub fraction: f64,
    /// Seed of the split.
    pub seed: u64,
}

/// A partner's records with the user id of each row, for the per-round consent join.
#[derive(Debug, Clone)]
pub struct KeyedData {
    /// Every usable row, ignoring consent.
    pub all: LocalData,
    schema: FeatureSchema,
    train_users: Vec<String>,
    holdout_users: Vec<String>,
}

impl KeyedData {
    /// The rows whose user is in `snapshot`, in file order (no user ids carried along).
    pub fn consented(&self, snapshot: &ConsentSnapshot) -> LocalData {
        let keep = |rows: &RawRows, users: &[String]| {
            let mut out = RawRows::new(&self.schema);
            for (r, user) in users.iter().enumerate() {
                if snapshot.allows(user) {
                    out.push(rows.numeric_row(r), rows.slot_row(r), rows.labels[r] > 0.5);
                }
            }
            out
        };
        LocalData {
            train: keep(&self.all.train, &self.train_users),
            holdout: keep(&self.all.holdout, &self.holdout_users),
            skipped: self.all.skipped.clone(),
        }
    }
}

/// Loads the declared columns of `path` for `spec`.
pub fn load_csv(path: &Path, spec: &JobSpec, split: HoldoutSplit) -> Result<LocalData, DataError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: shown.clone(),
        source,
    })?;
    load_reader(file, &shown, spec, split)
}

/// Loads the declared columns of `path` for `spec` and the user id of each row from
/// `user_id_column`; the holdout split is keyed by user (see the module notes).
pub fn load_csv_keyed(
    path: &Path,
    spec: &JobSpec,
    split: HoldoutSplit,
    user_id_column: &str,
) -> Result<KeyedData, DataError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: shown.clone(),
        source,
    })?;
    load_reader_keyed(file, &shown, spec, split, user_id_column)
}

/// Loads from any reader (`name` is used in messages).
pub fn load_reader<R: std::io::Read>(
    reader: R,
    name: &str,
    spec: &JobSpec,
    split: HoldoutSplit,
) -> Result<LocalData, DataError> {
    Ok(load_any(reader, name, spec, split, None)?.0)
}

/// [`load_csv_keyed`] from any reader (`name` is used in messages).
pub fn load_reader_keyed<R: std::io::Read>(
    reader: R,
    name: &str,
    spec: &JobSpec,
    split: HoldoutSplit,
    user_id_column: &str,
) -> Result<KeyedData, DataError> {
    let (all, users) = load_any(reader, name, spec, split, Some(user_id_column))?;
    let (train_users, holdout_users) = users.unwrap_or_default();
    Ok(KeyedData {
        all,
        schema: FeatureSchema::from_spec(spec),
        train_users,
        holdout_users,
    })
}

/// The position in the holdout draw of a user's rows: the first 8 bytes of SHA-256 of the id.
fn user_key(user: &str) -> u64 {
    first_u64(&Sha256::digest(user.as_bytes()))
}

/// The position in the holdout draw of a record without a user id: the first 8 bytes of
/// SHA-256 of its parsed declared values (a function of the record alone).
fn record_key(numeric: &[f64], slots: &[u32], label: bool) -> u64 {
    let mut h = Sha256::new();
    for x in numeric {
        h.update(x.to_bits().to_le_bytes());
    }
    for s in slots {
        h.update(s.to_le_bytes());
    }
    h.update([u8::from(label)]);
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

type RowUsers = (Vec<String>, Vec<String>);

fn load_any<R: std::io::Read>(
    reader: R,
    name: &str,
    spec: &JobSpec,
    split: HoldoutSplit,
    user_id_column: Option<&str>,
) -> Result<(LocalData, Option<RowUsers>), DataError> {
    let schema = FeatureSchema::from_spec(spec);
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let header = csv
        .byte_headers()
        .map_err(|e| DataError::Header {
            path: name.to_owned(),
            reason: e.to_string(),
        })?
        .clone();
    let position = |col: &str| header.iter().position(|h| h == col.as_bytes());
    let missing = |column: String| DataError::MissingColumn {
        path: name.to_owned(),
        column,
    };
    let find = |col: &str| position(col).ok_or_else(|| missing(col.to_owned()));
    let columns = schema.locate(position).map_err(|e| missing(e.column))?;
    let label_at = find(&spec.label.column)?;
    let user_at = user_id_column.map(find).transpose()?;
    let fields = header.len();

    let mut train = RawRows::new(&schema);
    let mut holdout = RawRows::new(&schema);
    let mut users: Option<RowUsers> = user_at.map(|_| (Vec::new(), Vec::new()));
    let mut skipped: BTreeMap<SkipReason, u64> = BTreeMap::new();
    let mut numeric = vec![0.0; columns.numeric.len()];
    let mut slots = vec![0u32; columns.categorical.len()];
    let mut record = csv::ByteRecord::new();
    loop {
        let more = match csv.read_byte_record(&mut record) {
            Ok(more) => more,
            // A failing read would fail again: the file, not a record, is bad.
            Err(e) if e.is_io_error() => {
                return Err(DataError::Io {
                    path: name.to_owned(),
                    source: e.into(),
                });
            }
            Err(_) => {
                // An unreadable record (e.g. bad quoting) is skipped like any bad row.
                *skipped.entry(SkipReason::Malformed).or_default() += 1;
                continue;
            }
        };
        if !more {
            break;
        }
        let parsed = parse_row(
            &record,
            fields,
            &columns,
            label_at,
            &schema,
            &mut numeric,
            &mut slots,
        )
        .and_then(|label| match user_at {
            None => Ok((label, None)),
            Some(at) => {
                // Not lossy: two different ids must never decode to one (a withdrawn user
                // could otherwise match a consented one); an id that is not UTF-8 is unusable.
                match std::str::from_utf8(record.get(at).unwrap_or_default()).map(str::trim) {
                    Ok(user) if !user.is_empty() => Ok((label, Some(user.to_owned()))),
                    _ => Err(SkipReason::MissingUserId),
                }
            }
        });
        match parsed {
            Ok((label_value, user)) => {
                let label = label_value == spec.label.positive.as_bytes();
                let draw = match user.as_deref() {
                    Some(user) => user_key(user),
                    None => record_key(&numeric, &slots, label),
                };
                let held_out = is_holdout(draw, split.fraction, split.seed);
                if held_out {
                    holdout.push(&numeric, &slots, label);
                } else {
                    train.push(&numeric, &slots, label);
                }
                if let (Some((train_users, holdout_users)), Some(user)) = (users.as_mut(), user) {
                    if held_out {
                        holdout_users.push(user);
                    } else {
                        train_users.push(user);
                    }
                }
            }
            Err(reason) => *skipped.entry(reason).or_default() += 1,
        }
    }
    if train.is_empty() && holdout.is_empty() {
        return Err(DataError::Empty {
            path: name.to_owned(),
            skipped: skipped.values().sum(),
            by_reason: skipped,
        });
    }
    Ok((
        LocalData {
            train,
            holdout,
            skipped,
        },
        users,
    ))
}

fn parse_row<'r>(
    record: &'r csv::ByteRecord,
    fields: usize,
    at: &ColumnPositions,
    label_at: usize,
    schema: &FeatureSchema,
    numeric: &mut [f64],
    slots: &mut [u32],
) -> Result<&'r [u8], SkipReason> {
    if record.len() != fields {
        return Err(SkipReason::Malformed);
    }
    schema
        .parse_record(at, |i| record.get(i), numeric, slots)
        .map_err(|e| match e {
            FieldError::NotANumber { column } => SkipReason::BadNumber {
                column: schema.numeric.get(column).cloned().unwrap_or_default(),
            },
            _ => SkipReason::Malformed,
        })?;
    let label = record.get(label_at).ok_or(SkipReason::Malformed)?;
    if label.is_empty() {
        return Err(SkipReason::MissingLabel);
    }
    Ok(label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn spec() -> JobSpec {
        JobSpec::from_toml(
            r#"
[job]
name = "t"
purpose = "p"
rounds = 1
[label]
column = "y"
positive = "yes"
[features]
numeric = ["age"]
categorical = ["job"]
vocabulary = { job = ["a", "b"] }
[model]
kind = "logistic"
"#,
        )
        .unwrap()
    }

    const ALL: HoldoutSplit = HoldoutSplit {
        fraction: 0.0,
        seed: 0,
    };

    #[test]
    fn bad_rows_are_skipped_and_counted() {
        let csv =
            "age,job,secret,y\n30,a,x,yes\nabc,a,x,no\n40,b,x\n50,c,x,\n60,b,x,no\ninf,a,x,no\n";
        let d = load_reader(csv.as_bytes(), "t.csv", &spec(), ALL).unwrap();
        assert_eq!(d.train.len(), 2);
        assert_eq!(d.train.labels, vec![1.0, 0.0]);
        let bad_age = SkipReason::BadNumber {
            column: "age".into(),
        };
        assert_eq!(d.skipped[&bad_age], 2);
        assert_eq!(d.skipped[&SkipReason::Malformed], 1);
        assert_eq!(d.skipped[&SkipReason::MissingLabel], 1);
        assert_eq!(d.train.slot_row(1), &[1]);
    }

    /// A text column declared numeric: the error names the column and how many rows it cost.
    #[test]
    fn a_text_column_declared_numeric_is_named() {
        let mut csv = String::from("age,job,y\n");
        for i in 0..1200 {
            csv.push_str(&format!("{},a,no\n", ["young", "old", ""][i % 3]));
        }
        csv.push_str("30,a\n");
        let e = load_reader(csv.as_bytes(), "t.csv", &spec(), ALL).unwrap_err();
        assert_eq!(
            e.to_string(),
            "data file t.csv has no usable row (1201 skipped: malformed record in 1, \
             column `age` not a number in 1200)"
        );
        let DataError::Empty { by_reason, .. } = e else {
            panic!("not Empty: {e}");
        };
        let reason = by_reason.keys().nth(1).unwrap();
        assert_eq!(reason.as_str(), "bad_number");
        assert_eq!(reason.column(), Some("age"));

        // Two numeric columns: each bad row is counted under the first bad column it holds.
        let mut two = spec();
        two.features.numeric.push("balance".into());
        let csv = "age,balance,job,y\n1,2,a,yes\nx,2,a,no\n1,y,a,no\nx,y,a,no\n";
        let d = load_reader(csv.as_bytes(), "t.csv", &two, ALL).unwrap();
        let reasons: Vec<String> = d.skipped.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        assert_eq!(
            reasons,
            [
                "column `age` not a number: 2",
                "column `balance` not a number: 1"
            ]
        );
    }

    #[test]
    fn undeclared_garbage_column_is_not_parsed() {
        // `secret` holds values that would fail any parse; rows still load.
        let csv = "age,secret,job,y\n30,\u{1F4A5}NaN!!,a,yes\n31,,b,no\n";
        let d = load_reader(csv.as_bytes(), "t.csv", &spec(), ALL).unwrap();
        assert_eq!(d.train.len(), 2);
        assert_eq!(d.skipped_total(), 0);
    }

    #[test]
    fn missing_declared_column_is_named() {
        let csv = "age,y\n30,yes\n";
        let e = load_reader(csv.as_bytes(), "t.csv", &spec(), ALL).unwrap_err();
        assert_eq!(
            e.to_string(),
            "data file t.csv lacks the declared column `job`"
        );
    }

    /// Removing one record moves no other record across the split (what per-record privacy
    /// needs), and the split follows the record's own values, not its position.
    #[test]
    fn holdout_split_depends_on_each_record_alone() {
        let rows: Vec<String> = (0..1000).map(|i| format!("{i},a,no\n")).collect();
        let split = HoldoutSplit {
            fraction: 0.25,
            seed: 5,
        };
        let held = |rows: &[String]| -> BTreeSet<u64> {
            let csv = format!("age,job,y\n{}", rows.concat());
            let d = load_reader(csv.as_bytes(), "t.csv", &spec(), split).unwrap();
            assert_eq!(d.train.len() + d.holdout.len(), rows.len());
            (0..d.holdout.len())
                .map(|r| d.holdout.numeric_row(r)[0] as u64)
                .collect()
        };
        let all = held(&rows);
        assert!((150..350).contains(&all.len()), "{} held out", all.len());
        let mut without = rows.clone();
        without.remove(10);
        let mut expected = all.clone();
        expected.remove(&10);
        assert_eq!(held(&without), expected);
        // The same records in another order: the same ones held out.
        let mut reversed = rows.clone();
        reversed.reverse();
        assert_eq!(held(&reversed), all);
    }
}
