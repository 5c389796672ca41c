//! Scoring an audience: a CSV of prospects (no label needed) through an exported model, into
//! `id,score,decile` — what `fedmark score` runs.
//!
//! Rows are parsed with the partners' own rules ([`FeatureSchema::parse_record`]) and scored
//! by fedmark's model code ([`ExportedModel::score`]) in batches of [`BATCH`] rows, so memory
//! does not grow with the file. A row that cannot be scored is neither dropped silently nor
//! imputed: it is reported with its line, its identifier and the reason (naming the numeric
//! column that held no number), and every output row carries its identifier, so a skipped row
//! never puts the output out of step with the input.
//!
//! **Deciles** (decile 1 = the highest scores, over the scored rows; see
//! [`fedmark_core::decile`] for the exact definition and its handling of ties) need every score
//! before the first row can be written. The scorer spools each scored row's score and
//! identifier to a file the caller provides, finds the nine cut points exactly from the
//! spooled scores ([`DecileCuts::select`]: four reads of the spool, 4.5 MiB of counters), then
//! copies the spool to the output with each row's decile. So memory is bounded — a batch of
//! rows and the counters, whatever the audience's size — and the disk holds about
//! 16 bytes plus the identifier per scored row while the command runs. (Holding every score
//! and identifier in memory instead would have grown with the audience; reading the input
//! twice would have ruled out standard input.)

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use fedmark_core::decile::DecileCuts;
use fedmark_core::features::{FeatureSchema, FieldError, RawRows};
use fedmark_core::pipeline::ExportedModel;

/// Rows scored together.
pub const BATCH: usize = 4096;
/// Rows read between two [`Progress::Read`] reports.
pub const PROGRESS_EVERY: u64 = 100_000;

/// Why scoring stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScoreError {
    /// The input has no readable header row.
    #[error("the input has no readable header row: {0}")]
    Header(csv::Error),
    /// A column the model uses is not in the input's header.
    #[error("the input lacks the column `{column}`, which the model uses")]
    MissingFeature {
        /// The column.
        column: String,
    },
    /// The identifier column is not in the input's header.
    #[error("the input lacks the identifier column `{column}` (--id)")]
    MissingId {
        /// The column.
        column: String,
    },
    /// Reading the input failed (an I/O error, not a bad row).
    #[error("reading the input: {0}")]
    Read(csv::Error),
    /// The spool file failed.
    #[error("the spool file: {0}")]
    Spool(std::io::Error),
    /// Writing the scores failed.
    #[error("writing the scores: {0}")]
    Write(csv::Error),
    /// Reporting a skipped row failed.
    #[error("writing the skipped rows: {0}")]
    Report(std::io::Error),
    /// The model could not score parsed rows (rows of another shape than its trees').
    #[error("scoring: {0}")]
    Model(fedmark_core::pipeline::PipelineError),
}

impl ScoreError {
    /// True when the input does not fit the model or the arguments (a usage error), not a
    /// failure of the disk.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ScoreError::Header(_)
                | ScoreError::MissingFeature { .. }
                | ScoreError::MissingId { .. }
        )
    }
}

/// Why a row was not scored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RowSkip {
    /// The record's field count differs from the header's, or it is not valid CSV.
    #[error("malformed record")]
    Malformed,
    /// A numeric column the model uses did not hold a finite number.
    #[error("column `{column}` not a number")]
    NotANumber {
        /// The column.
        column: String,
    },
    /// The identifier field is empty (or only whitespace): the score could not be joined back.
    #[error("empty identifier")]
    EmptyId,
    /// The model gave no number (only with inputs so large that the model's sums overflow).
    #[error("score not a number")]
    NoScore,
}

/// A row not scored, as reported to the caller.
#[derive(Debug, Clone, Copy)]
pub struct Skipped<'a> {
    /// Line of the input where the record starts (the header is line 1).
    pub line: u64,
    /// The identifier field as it is in the input (empty when the record has none).
    pub id: &'a [u8],
    /// Why.
    pub reason: &'a RowSkip,
}

/// Where scoring is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Records read so far (every [`PROGRESS_EVERY`]).
    Read {
        /// Records read.
        rows: u64,
    },
    /// All rows are scored; finding the decile cut points.
    Ranking {
        /// Rows scored.
        scored: u64,
    },
    /// Writing the output.
    Writing,
}

/// What [`score_csv`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSummary {
    /// Records read (header excluded).
    pub rows: u64,
    /// Rows written with a score.
    pub scored: u64,
    /// Rows skipped, by reason.
    pub skipped: BTreeMap<RowSkip, u64>,
    /// The deciles' cut points.
    pub cuts: DecileCuts,
}

impl ScoreSummary {
    /// Rows skipped in all.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// Scores the CSV `input` (a header row, then records) with `model` and writes
/// `id,score,decile` to `output`, one line per scored row in input order, the identifier taken
/// from the column `id_column`. `spool` must be an empty read-write file (see the module doc).
/// Each row not scored goes to `on_skip`, in input order as found; `on_progress` hears where
/// the work is.
pub fn score_csv<R: Read, W: Write, S: Read + Write + Seek>(
    model: &ExportedModel,
    input: R,
    id_column: &str,
    mut spool: S,
    output: W,
    mut on_skip: impl FnMut(Skipped<'_>) -> std::io::Result<()>,
    mut on_progress: impl FnMut(Progress),
) -> Result<ScoreSummary, ScoreError> {
    let schema = &model.pipeline.schema;
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(input);
    let header = csv.byte_headers().map_err(ScoreError::Header)?.clone();
    let position = |col: &str| header.iter().position(|h| h == col.as_bytes());
    let at = schema
        .locate(position)
        .map_err(|e| ScoreError::MissingFeature { column: e.column })?;
    let id_at = position(id_column).ok_or_else(|| ScoreError::MissingId {
        column: id_column.to_owned(),
    })?;
    let fields = header.len();

    let mut batch = Batch::new(schema);
    let mut skipped: BTreeMap<RowSkip, u64> = BTreeMap::new();
    let mut skip = |line: u64, id: &[u8], reason: RowSkip| {
        on_skip(Skipped {
            line,
            id,
            reason: &reason,
        })
        .map_err(ScoreError::Report)?;
        *skipped.entry(reason).or_default() += 1;
        Ok::<(), ScoreError>(())
    };
    let mut numeric = vec![0.0; at.numeric.len()];
    let mut slots = vec![0u32; at.categorical.len()];
    let mut record = csv::ByteRecord::new();
    let mut rows = 0u64;
    let mut scored = 0u64;
    {
        let mut spool_out = BufWriter::with_capacity(1 << 16, &mut spool);
        loop {
            match csv.read_byte_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                // A failing read would fail again: the input, not a record, is bad.
                Err(e) if e.is_io_error() => return Err(ScoreError::Read(e)),
                Err(e) => {
                    rows += 1;
                    let line = e.position().map_or(0, csv::Position::line);
                    skip(line, b"", RowSkip::Malformed)?;
                    continue;
                }
            }
            rows += 1;
            if rows.is_multiple_of(PROGRESS_EVERY) {
                on_progress(Progress::Read { rows });
            }
            let line = record.position().map_or(0, csv::Position::line);
            let id = record.get(id_at).unwrap_or_default();
            let reason = if record.len() != fields {
                Some(RowSkip::Malformed)
            } else if String::from_utf8_lossy(id).trim().is_empty() {
                Some(RowSkip::EmptyId)
            } else {
                match schema.parse_record(&at, |i| record.get(i), &mut numeric, &mut slots) {
                    Ok(()) => None,
                    Err(FieldError::NotANumber { column }) => Some(RowSkip::NotANumber {
                        column: schema.numeric.get(column).cloned().unwrap_or_default(),
                    }),
                    Err(_) => Some(RowSkip::Malformed),
                }
            };
            match reason {
                Some(reason) => skip(line, id, reason)?,
                None => {
                    batch.push(&numeric, &slots, id, line);
                    if batch.rows.len() == BATCH {
                        scored += batch.flush(model, &mut spool_out, &mut skip)?;
                    }
                }
            }
        }
        scored += batch.flush(model, &mut spool_out, &mut skip)?;
        spool_out.flush().map_err(ScoreError::Spool)?;
    }

    on_progress(Progress::Ranking { scored });
    let cuts = DecileCuts::select(|sink| {
        replay(&mut spool, scored, |score, _| {
            sink(score);
            Ok(())
        })
    })?;
    on_progress(Progress::Writing);
    let mut out = csv::Writer::from_writer(output);
    out.write_record(["id", "score", "decile"])
        .map_err(ScoreError::Write)?;
    let (mut score_text, mut decile_text) = (String::new(), String::new());
    replay(&mut spool, scored, |score, id| {
        use std::fmt::Write as _;
        score_text.clear();
        decile_text.clear();
        // Display of an f64 is the shortest text that reads back to the same number.
        let _ = write!(score_text, "{score}");
        let _ = write!(decile_text, "{}", cuts.decile(score));
        out.write_record([id, score_text.as_bytes(), decile_text.as_bytes()])
            .map_err(ScoreError::Write)
    })?;
    out.flush()
        .map_err(|e| ScoreError::Write(csv::Error::from(e)))?;
    Ok(ScoreSummary {
        rows,
        scored,
        skipped,
        cuts,
    })
}

/// Parsed rows waiting to be scored, with their identifiers and lines.
struct Batch {
    rows: RawRows,
    ids: Vec<u8>,
    id_ends: Vec<usize>,
    lines: Vec<u64>,
}

impl Batch {
    fn new(schema: &FeatureSchema) -> Self {
        Self {
            rows: RawRows::new(schema),
            ids: Vec::new(),
            id_ends: Vec::new(),
            lines: Vec::new(),
        }
    }

    fn push(&mut self, numeric: &[f64], slots: &[u32], id: &[u8], line: u64) {
        self.rows.push(numeric, slots, false);
        self.ids.extend_from_slice(id);
        self.id_ends.push(self.ids.len());
        self.lines.push(line);
    }

    /// Scores the batch and spools `(score, id)` per row; returns the rows spooled.
    fn flush(
        &mut self,
        model: &ExportedModel,
        spool: &mut impl Write,
        skip: &mut impl FnMut(u64, &[u8], RowSkip) -> Result<(), ScoreError>,
    ) -> Result<u64, ScoreError> {
        let scores = model.score(&self.rows).map_err(ScoreError::Model)?;
        let mut spooled = 0;
        let mut start = 0;
        for ((score, &end), &line) in scores.iter().zip(&self.id_ends).zip(&self.lines) {
            let id = &self.ids[start..end];
            start = end;
            if score.is_nan() {
                skip(line, id, RowSkip::NoScore)?;
                continue;
            }
            spool
                .write_all(&score.to_le_bytes())
                .and_then(|()| spool.write_all(&(id.len() as u64).to_le_bytes()))
                .and_then(|()| spool.write_all(id))
                .map_err(ScoreError::Spool)?;
            spooled += 1;
        }
        self.rows.clear();
        self.ids.clear();
        self.id_ends.clear();
        self.lines.clear();
        Ok(spooled)
    }
}

/// Reads the first `count` spooled rows back, in order.
fn replay<S: Read + Seek>(
    spool: &mut S,
    count: u64,
    mut each: impl FnMut(f64, &[u8]) -> Result<(), ScoreError>,
) -> Result<(), ScoreError> {
    spool.seek(SeekFrom::Start(0)).map_err(ScoreError::Spool)?;
    let mut input = BufReader::with_capacity(1 << 16, spool);
    let mut id = Vec::new();
    for _ in 0..count {
        let mut head = [0u8; 16];
        input.read_exact(&mut head).map_err(ScoreError::Spool)?;
        let (score, len) = head.split_at(8);
        let score = f64::from_le_bytes(score.try_into().unwrap_or_default());
        let len = u64::from_le_bytes(len.try_into().unwrap_or_default());
        id.clear();
        // `take` reads what is there, so a damaged length cannot make a huge allocation.
        let got = (&mut input)
            .take(len)
            .read_to_end(&mut id)
            .map_err(ScoreError::Spool)?;
        if got as u64 != len {
            return Err(ScoreError::Spool(std::io::ErrorKind::UnexpectedEof.into()));
        }
        each(score, &id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use fedmark_core::features::Standardizer;
    use fedmark_core::model::sigmoid;
    use fedmark_core::pipeline::Pipeline;
    use fedmark_core::spec::JobSpec;

    use super::*;
    use crate::export::{ModelBytes, json_bytes, npy_f64, pipeline};

    const WEIGHTS: [f64; 6] = [0.5, -0.25, 0.1, -0.2, 0.3, 0.05];

    /// A logistic model on `age`, `balance` (standardised with mean 40, 1000 and std 10, 500)
    /// and `job` (vocabulary a, b), exported and read back as `fedmark score` reads it.
    fn model() -> ExportedModel {
        let spec = JobSpec::from_toml(
            r#"
[job]
name = "t"
purpose = "p"
rounds = 1
[label]
column = "y"
positive = "yes"
[features]
numeric = ["age", "balance"]
categorical = ["job"]
[features.vocabulary]
job = ["a", "b"]
[model]
kind = "logistic"
"#,
        )
        .unwrap();
        let st = Standardizer {
            mean: vec![40.0, 1000.0],
            std: vec![10.0, 500.0],
        };
        let text = json_bytes(&pipeline(
            &spec,
            &st,
            "job-t",
            2,
            ModelBytes::Network(&WEIGHTS),
        ));
        Pipeline::from_json(std::str::from_utf8(&text).unwrap())
            .unwrap()
            .with_weights(&npy_f64(&WEIGHTS))
            .unwrap()
    }

    /// The score by the formula, for a row of the test model.
    fn expected(age: f64, balance: f64, job_slot: usize) -> f64 {
        let z = WEIGHTS[0] * ((age - 40.0) / 10.0)
            + WEIGHTS[1] * ((balance - 1000.0) / 500.0)
            + WEIGHTS[2 + job_slot]
            + WEIGHTS[5];
        sigmoid(z)
    }

    type Run = (ScoreSummary, String, Vec<(u64, String, String)>);

    fn run(csv: &str, id: &str) -> Result<Run, ScoreError> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        let summary = score_csv(
            &model(),
            csv.as_bytes(),
            id,
            Cursor::new(Vec::new()),
            &mut out,
            |s| {
                let id = String::from_utf8_lossy(s.id).into_owned();
                skipped.push((s.line, id, s.reason.to_string()));
                Ok(())
            },
            |_| {},
        )?;
        Ok((summary, String::from_utf8(out).unwrap(), skipped))
    }

    #[test]
    fn scores_pass_ids_through_and_name_skipped_rows() {
        let csv = "cust,age,job,balance,y\n\
                   c1,30,a,100,yes\n\
                   c2,forty,a,100,no\n\
                   c3,50,b,200\n\
                   ,60,a,300,no\n\
                   c5, 70 ,zz,-5,\n\
                   \"c,6\",41,b,1e3,no\n\
                   c7,35,a,nan,no\n";
        let (summary, out, skipped) = run(csv, "cust").unwrap();
        assert_eq!((summary.rows, summary.scored), (7, 3));
        assert_eq!(
            skipped,
            vec![
                (3, "c2".into(), "column `age` not a number".into()),
                (4, "c3".into(), "malformed record".into()),
                (5, "".into(), "empty identifier".into()),
                (8, "c7".into(), "column `balance` not a number".into()),
            ]
        );
        assert_eq!(summary.skipped_total(), 4);
        let scores = [
            expected(30.0, 100.0, 0),
            expected(70.0, -5.0, 2),
            expected(41.0, 1000.0, 1),
        ];
        let cuts = DecileCuts::from_scores(&scores);
        assert_eq!(summary.cuts, cuts);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("id,score,decile"));
        let want = [("c1", scores[0]), ("c5", scores[1]), ("\"c,6\"", scores[2])];
        assert_eq!(out.lines().count(), 1 + want.len());
        for (line, (id, want)) in lines.zip(want) {
            let fields: Vec<&str> = line.rsplitn(3, ',').collect();
            let (decile, score, got_id) = (fields[0], fields[1], fields[2]);
            assert_eq!(got_id, id);
            let score: f64 = score.parse().unwrap();
            assert!((score - want).abs() < 1e-15, "{id}: {score} vs {want}");
            assert_eq!(decile, cuts.decile(score).to_string(), "{id}");
        }
        // Three rows: the best in decile 1, the next in 4, the last in 7.
        let mut deciles: Vec<u8> = scores.iter().map(|s| cuts.decile(*s)).collect();
        deciles.sort_unstable();
        assert_eq!(deciles, vec![1, 4, 7]);
    }

    #[test]
    fn a_missing_column_is_a_usage_error_naming_it() {
        let e = run("cust,age,job,y\nc1,30,a,no\n", "cust").unwrap_err();
        assert!(e.is_bad_input());
        assert_eq!(
            e.to_string(),
            "the input lacks the column `balance`, which the model uses"
        );
        let e = run("id,age,job,balance\nc1,30,a,5\n", "cust").unwrap_err();
        assert!(e.is_bad_input());
        assert!(e.to_string().contains("identifier column `cust`"), "{e}");
        // No label column needed, and no row is not an error.
        let (summary, out, _) = run("cust,age,job,balance\n", "cust").unwrap();
        assert_eq!((summary.rows, summary.scored), (0, 0));
        assert_eq!(out, "id,score,decile\n");
    }

    /// Across several batches the output stays in input order, every row once, and the
    /// deciles split distinct scores into tenths.
    #[test]
    fn many_batches_stay_in_step() {
        let n = 3 * BATCH + 17;
        let mut csv = String::from("age,job,balance,cust\n");
        for i in 0..n {
            if i % 1000 == 999 {
                csv.push_str(&format!("x,a,1,id{i}\n"));
            } else {
                csv.push_str(&format!("{},b,{},id{i}\n", 20 + i % 50, i));
            }
        }
        let mut progress = Vec::new();
        let mut out = Vec::new();
        let summary = score_csv(
            &model(),
            csv.as_bytes(),
            "cust",
            Cursor::new(Vec::new()),
            &mut out,
            |_| Ok(()),
            |p| progress.push(p),
        )
        .unwrap();
        let bad = n / 1000;
        assert_eq!(summary.scored as usize, n - bad);
        assert_eq!(progress.last(), Some(&Progress::Writing));
        let text = String::from_utf8(out).unwrap();
        let mut per_decile = [0usize; 10];
        let mut last = None;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let i: usize = f[0].trim_start_matches("id").parse().unwrap();
            assert!(last.is_none_or(|l| i > l), "in input order");
            last = Some(i);
            let score: f64 = f[1].parse().unwrap();
            let want = expected((20 + i % 50) as f64, i as f64, 1);
            assert!((score - want).abs() < 1e-15, "{i}: {score} vs {want}");
            per_decile[f[2].parse::<usize>().unwrap() - 1] += 1;
        }
        assert_eq!(per_decile.iter().sum::<usize>(), n - bad);
        for c in per_decile {
            assert!(c.abs_diff((n - bad) / 10) <= 2, "{per_decile:?}");
        }
    }
}
