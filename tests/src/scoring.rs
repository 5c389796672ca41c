//! Scoring CSV rows from an exported model's files alone (`weights.npy`, `pipeline.json`),
//! re-implemented from the files' documented meaning rather than through fedmark's own
//! pipeline, so a test comparing the two checks the export, not the code against itself.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Parses a one-dimensional little-endian float64 .npy file (format 1.0).
pub fn read_npy(path: &Path) -> anyhow::Result<Vec<f64>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 10 || &bytes[..8] != b"\x93NUMPY\x01\x00" {
        bail!("{}: not an NPY 1.0 file", path.display());
    }
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    if !(10 + header_len).is_multiple_of(64) || bytes.len() < 10 + header_len {
        bail!("{}: header not aligned to 64 bytes", path.display());
    }
    let header = std::str::from_utf8(&bytes[10..10 + header_len])?;
    if !header.contains("'descr': '<f8'") || !header.contains("'fortran_order': False") {
        bail!("{}: unexpected header {header}", path.display());
    }
    let n: usize = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .context("no shape in the header")?
        .trim()
        .parse()?;
    let data = &bytes[10 + header_len..];
    if data.len() != 8 * n {
        bail!(
            "{}: {} data bytes for {n} values",
            path.display(),
            data.len()
        );
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

fn num(v: &Value, what: &str) -> anyhow::Result<f64> {
    v.as_f64()
        .with_context(|| format!("pipeline.json: {what} is not a number"))
}

fn idx(v: &Value, what: &str) -> anyhow::Result<usize> {
    Ok(v.as_u64()
        .with_context(|| format!("pipeline.json: {what} is not an index"))? as usize)
}

/// Scores the rows of `csv_path` from the exported files only; returns (scores, labels).
/// With `holdout = Some((fraction, seed))` only the records a partner with that split holds
/// out are scored (`fedmark_core::features::is_holdout` of the record's key: the first 8
/// bytes, little-endian, of SHA-256 over its parsed numerics as f64 bits, its categorical
/// slots as u32, and a label byte, each little-endian, as the client's loader documents).
pub fn score_from_files(
    pipe: &Value,
    w: &[f64],
    csv_path: &Path,
    holdout: Option<(f64, u64)>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (header, records) = score_records(pipe, w, csv_path)?;
    let label_column = pipe["label"]["column"]
        .as_str()
        .context("pipeline.json: label.column")?;
    let label_at = header
        .iter()
        .position(|h| h == label_column)
        .with_context(|| format!("{} has no column {label_column}", csv_path.display()))?;
    let positive = pipe["label"]["positive"]
        .as_str()
        .context("label.positive")?;
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for ScoredRecord { record, score, key } in records {
        let label = record.get(label_at).unwrap_or("").trim();
        if label.is_empty() {
            continue;
        }
        if let Some((fraction, seed)) = holdout {
            let digest = Sha256::new()
                .chain_update(&key)
                .chain_update([u8::from(label == positive)])
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            if !fedmark_core::features::is_holdout(u64::from_le_bytes(first), fraction, seed) {
                continue;
            }
        }
        scores.push(score);
        labels.push(if label == positive { 1.0 } else { 0.0 });
    }
    Ok((scores, labels))
}

/// A record scored from the exported files.
#[derive(Debug, Clone)]
pub struct ScoredRecord {
    /// The record.
    pub record: csv::StringRecord,
    /// Its score.
    pub score: f64,
    /// Its holdout key bytes but the label's: the parsed numerics as f64 bits, then the
    /// categorical slots as u32, little-endian.
    pub key: Vec<u8>,
}

/// The header of `csv_path` and, in file order, each record whose declared columns all parse,
/// with its score from the exported files only. Needs no label column; records with another
/// field count than the header's are left out.
pub fn score_records(
    pipe: &Value,
    w: &[f64],
    csv_path: &Path,
) -> anyhow::Result<(Vec<String>, Vec<ScoredRecord>)> {
    let mut reader = csv::Reader::from_path(csv_path)?;
    let header: Vec<String> = reader.headers()?.iter().map(String::from).collect();
    let at: HashMap<&str, usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| (h.as_str(), i))
        .collect();
    let col_at = |name: &Value| -> anyhow::Result<usize> {
        let name = name.as_str().context("pipeline.json: column name")?;
        at.get(name)
            .copied()
            .with_context(|| format!("{} has no column {name}", csv_path.display()))
    };
    let d = idx(&pipe["input_dim"], "input_dim")?;
    let layer = |name: &str| -> anyhow::Result<(usize, Vec<usize>)> {
        let l = pipe["model"]["layers"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == name))
            .with_context(|| format!("pipeline.json: no layer {name}"))?;
        let shape = l["shape"]
            .as_array()
            .context("layer shape")?
            .iter()
            .map(|s| idx(s, "shape"))
            .collect::<anyhow::Result<_>>()?;
        Ok((idx(&l["offset"], "offset")?, shape))
    };
    let columns = pipe["columns"]
        .as_array()
        .context("pipeline.json: columns")?;
    let mut out = Vec::new();
    'rows: for record in reader.records() {
        let Ok(record) = record else { continue };
        let mut key = Vec::new();
        let mut slot_bytes = Vec::new();
        let mut x = vec![0.0; d];
        for col in columns {
            let text = record.get(col_at(&col["name"])?).unwrap_or("").trim();
            match col["type"].as_str().unwrap_or("") {
                "numeric" => {
                    let Ok(v) = text.parse::<f64>() else {
                        continue 'rows;
                    };
                    let j = idx(&col["index"], "index")?;
                    key.extend_from_slice(&v.to_bits().to_le_bytes());
                    let v = match col["range"].as_array().map(|r| r.as_slice()) {
                        Some([low, high]) => v.clamp(num(low, "range")?, num(high, "range")?),
                        _ => v,
                    };
                    x[j] = (v - num(&col["mean"], "mean")?) / num(&col["std"], "std")?;
                }
                "categorical" => {
                    let vocab = col["vocabulary"].as_array().context("vocabulary")?;
                    let slot = match vocab.iter().position(|v| v == text) {
                        Some(s) => s,
                        None => idx(&col["other_slot"], "other_slot")?,
                    };
                    slot_bytes.extend_from_slice(&(slot as u32).to_le_bytes());
                    x[idx(&col["offset"], "offset")? + slot] = 1.0;
                }
                "hashed" => {
                    let digest = Sha256::digest(text.as_bytes());
                    let mut h = [0u8; 8];
                    h.copy_from_slice(&digest[..8]);
                    let slot = (u64::from_le_bytes(h)
                        % col["buckets"].as_u64().context("buckets")?)
                        as usize;
                    slot_bytes.extend_from_slice(&(slot as u32).to_le_bytes());
                    x[idx(&col["offset"], "offset")? + slot] = 1.0;
                }
                other => bail!("pipeline.json: column type {other}"),
            }
        }
        let z = match pipe["model"]["kind"].as_str().unwrap_or("") {
            "logistic" => {
                let (wo, _) = layer("w")?;
                let (bo, _) = layer("b")?;
                x.iter()
                    .zip(&w[wo..wo + d])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    + w[bo]
            }
            "mlp" => {
                let (o1, shape) = layer("W1")?;
                let h = shape.get(1).copied().context("W1 shape")?;
                let (ob1, _) = layer("b1")?;
                let (ow2, _) = layer("w2")?;
                let (ob2, _) = layer("b2")?;
                let mut out = w[ob2];
                for k in 0..h {
                    let pre = (0..d).map(|j| x[j] * w[o1 + j * h + k]).sum::<f64>() + w[ob1 + k];
                    out += pre.max(0.0) * w[ow2 + k];
                }
                out
            }
            other => bail!("pipeline.json: model kind {other}"),
        };
        key.extend_from_slice(&slot_bytes);
        out.push(ScoredRecord {
            record,
            score: 1.0 / (1.0 + (-z).exp()),
            key,
        });
    }
    Ok((header, out))
}
