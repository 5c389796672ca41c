//! The hash-chained audit record that both sides keep.
//!
//! An audit log is a file of JSON lines. Each line is one record in canonical form (compact
//! JSON, object keys sorted) with these fields:
//!
//! | field | meaning |
//! | --- | --- |
//! | `seq` | 0, 1, 2, … with no gap |
//! | `time_ms` | Unix time in milliseconds when the record was written |
//! | `actor` | who wrote it: `coordinator` or the partner's id |
//! | `kind` | what happened, e.g. `job_submitted`, `offer_refused`, `round_committed` |
//! | `data` | a JSON object of counts, hashes and reasons — never a record, a user id or an update |
//! | `prev` | the `hash` of the previous record (64 zeros for the first) |
//! | `hash` | SHA-256, in hex, of the canonical JSON of the record without its `hash` field |
//!
//! Because every record names the hash of the one before it and its own hash covers that name,
//! an edit anywhere breaks the chain from that record on; a removal or a swap breaks `seq` and
//! `prev`; a record appended by someone who cannot recompute the chain fails its `hash` or
//! `prev`. The one edit the file alone cannot show is the removal of its last records: for that
//! [`verify`] takes the head hash kept elsewhere (the coordinator's store, the model card).
//!
//! This module only builds and checks records; the callers own the files.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why an audit log failed verification. `line` is 1-based, as an editor shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The line is not a JSON object of the record's form.
    #[error("line {line}: not an audit record: {reason}")]
    Malformed {
        /// Line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The line is valid JSON but not byte-for-byte the canonical form of its contents.
    #[error("line {line}: the record was edited (its bytes are not the ones that were written)")]
    NotCanonical {
        /// Line number.
        line: usize,
    },
    /// The record's hash does not match its contents.
    #[error("line {line}: the record was edited (its hash does not match its contents)")]
    HashMismatch {
        /// Line number.
        line: usize,
    },
    /// The sequence number is not the next one.
    #[error(
        "line {line}: sequence number {found} where {expected} was expected (a record was removed, inserted or moved)"
    )]
    Sequence {
        /// Line number.
        line: usize,
        /// The expected `seq`.
        expected: u64,
        /// The `seq` found.
        found: u64,
    },
    /// The record does not name the previous record's hash.
    #[error(
        "line {line}: the chain is broken (`prev` is not the hash of the record before it): a record was removed, moved or appended without the chain"
    )]
    BrokenChain {
        /// Line number.
        line: usize,
    },
    /// The log ends before the head the caller expected.
    #[error(
        "the log ends at hash {found} after {records} records, not at the expected head {expected}: records were removed from its end"
    )]
    HeadMismatch {
        /// Records read.
        records: u64,
        /// The last hash in the file.
        found: String,
        /// The head the caller holds.
        expected: String,
    },
    /// A record could not be built (its data is not a JSON object).
    #[error("audit record `{kind}`: data must be a JSON object")]
    DataNotObject {
        /// The record kind.
        kind: String,
    },
}

impl AuditError {
    /// The 1-based line the error is about, where there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            AuditError::Malformed { line, .. }
            | AuditError::NotCanonical { line }
            | AuditError::HashMismatch { line }
            | AuditError::Sequence { line, .. }
            | AuditError::BrokenChain { line } => Some(*line),
            AuditError::HeadMismatch { .. } | AuditError::DataNotObject { .. } => None,
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Position in the chain.
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Who wrote it.
    pub actor: String,
    /// What happened.
    pub kind: String,
    /// Counts, hashes and reasons.
    pub data: Map<String, Value>,
    /// Hash of the previous record.
    pub prev: String,
    /// Hash of this record.
    pub hash: String,
}

impl AuditRecord {
    fn body(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("seq".into(), Value::from(self.seq));
        m.insert("time_ms".into(), Value::from(self.time_ms));
        m.insert("actor".into(), Value::from(self.actor.clone()));
        m.insert("kind".into(), Value::from(self.kind.clone()));
        m.insert("data".into(), Value::Object(self.data.clone()));
        m.insert("prev".into(), Value::from(self.prev.clone()));
        m
    }

    fn compute_hash(body: &Map<String, Value>) -> String {
        // serde_json's map keeps keys sorted (the `preserve_order` feature is off), so this is
        // the canonical form.
        let text = Value::Object(body.clone()).to_string();
        hex_lower(&Sha256::digest(text.as_bytes()))
    }

    /// The record as its log line (no newline).
    pub fn to_line(&self) -> String {
        let mut m = self.body();
        m.insert("hash".into(), Value::from(self.hash.clone()));
        Value::Object(m).to_string()
    }

    /// Parses one log line, checking its form and its own hash (not its place in a chain).
    pub fn parse_line(text: &str, line: usize) -> Result<Self, AuditError> {
        let malformed = |reason: &str| AuditError::Malformed {
            line,
            reason: reason.to_owned(),
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| malformed(&format!("invalid JSON: {e}")))?;
        let Value::Object(mut m) = value else {
            return Err(malformed("not a JSON object"));
        };
        if m.len() != 7 {
            return Err(malformed(
                "a record has exactly the fields seq, time_ms, actor, kind, data, prev, hash",
            ));
        }
        let str_field = |m: &Map<String, Value>, k: &str| {
            m.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| malformed(&format!("`{k}` must be a string")))
        };
        let u64_field = |m: &Map<String, Value>, k: &str| {
            m.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| malformed(&format!("`{k}` must be a whole number")))
        };
        let hash = str_field(&m, "hash")?;
        let Some(Value::Object(data)) = m.remove("data") else {
            return Err(malformed("`data` must be an object"));
        };
        let record = AuditRecord {
            seq: u64_field(&m, "seq")?,
            time_ms: u64_field(&m, "time_ms")?,
            actor: str_field(&m, "actor")?,
            kind: str_field(&m, "kind")?,
            data,
            prev: str_field(&m, "prev")?,
            hash,
        };
        if record.to_line() != text {
            return Err(AuditError::NotCanonical { line });
        }
        if Self::compute_hash(&record.body()) != record.hash {
            return Err(AuditError::HashMismatch { line });
        }
        Ok(record)
    }
}

/// The writing end of a chain: knows the next `seq` and the head hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditChain {
    actor: String,
    next_seq: u64,
    head: String,
}

impl AuditChain {
    /// A new, empty chain written by `actor`.
    pub fn new(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            next_seq: 0,
            head: GENESIS.to_owned(),
        }
    }

    /// Continues a chain whose last record is `last` (None: an empty chain).
    pub fn resume(actor: impl Into<String>, last: Option<&AuditRecord>) -> Self {
        let mut chain = Self::new(actor);
        if let Some(r) = last {
            chain.next_seq = r.seq + 1;
            chain.head = r.hash.clone();
        }
        chain
    }

    /// The hash of the last record (`GENESIS` for an empty chain).
    pub fn head(&self) -> &str {
        &self.head
    }

    /// Records in the chain.
    pub fn len(&self) -> u64 {
        self.next_seq
    }

    /// Whether the chain has no record yet.
    pub fn is_empty(&self) -> bool {
        self.next_seq == 0
    }

    /// Builds the next record and moves the head to it. The caller writes `to_line()`.
    pub fn append(
        &mut self,
        time_ms: u64,
        kind: &str,
        data: Value,
    ) -> Result<AuditRecord, AuditError> {
        let Value::Object(data) = data else {
            return Err(AuditError::DataNotObject {
                kind: kind.to_owned(),
            });
        };
        let mut record = AuditRecord {
            seq: self.next_seq,
            time_ms,
            actor: self.actor.clone(),
            kind: kind.to_owned(),
            data,
            prev: self.head.clone(),
            hash: String::new(),
        };
        record.hash = AuditRecord::compute_hash(&record.body());
        self.next_seq += 1;
        self.head = record.hash.clone();
        Ok(record)
    }
}

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records read.
    pub records: u64,
    /// Hash of the last record (`GENESIS` for an empty log).
    pub head: String,
}

/// Checks a whole log: every line canonical and self-consistent, `seq` without gaps, `prev`
/// linking each record to the one before, and, if given, the last hash equal to
/// `expected_head`. The error names the first line that fails.
pub fn verify(text: &str, expected_head: Option<&str>) -> Result<Verified, AuditError> {
    let mut head = GENESIS.to_owned();
    let mut records = 0u64;
    let body = text.strip_suffix('\n').unwrap_or(text);
    if !body.is_empty() {
        for (i, line) in body.split('\n').enumerate() {
            let n = i + 1;
            let record = AuditRecord::parse_line(line, n)?;
            if record.seq != records {
                return Err(AuditError::Sequence {
                    line: n,
                    expected: records,
                    found: record.seq,
                });
            }
            if record.prev != head {
                return Err(AuditError::BrokenChain { line: n });
            }
            head = record.hash;
            records += 1;
        }
    }
    if let Some(expected) = expected_head
        && expected != head
    {
        return Err(AuditError::HeadMismatch {
            records,
            found: head,
            expected: expected.to_owned(),
        });
    }
    Ok(Verified { records, head })
}

/// Lower-case hex of `bytes`, the form every hash in an audit record takes.
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The `data` of an audit event type serialised with `#[serde(tag = "kind", content =
/// "data")]`: what a record of that event holds. Event types hold strings, numbers, booleans
/// and lists of them, which always serialise (a non-finite float as null); anything else
/// gives null.
pub fn event_data(event: &impl serde::Serialize) -> Value {
    match serde_json::to_value(event) {
        Ok(Value::Object(mut map)) => map.remove("data").unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// SHA-256 of `bytes` in lower-case hex: how vectors, snapshots and models are named in audit
/// records.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_lower(&Sha256::digest(bytes))
}

/// SHA-256 (hex) of `f64` values as little-endian bytes: how models are named in audit
/// records and model cards, on both sides. Hashed in blocks, without a copy of the vector.
pub fn f64s_sha256(values: &[f64]) -> String {
    le_sha256(values, |v| v.to_le_bytes())
}

/// SHA-256 (hex) of `u32` words as little-endian bytes: how a partner names the (masked)
/// vector it sent.
pub fn u32s_sha256(words: &[u32]) -> String {
    le_sha256(words, |w| w.to_le_bytes())
}

fn le_sha256<T: Copy, const N: usize>(values: &[T], bytes: impl Fn(T) -> [u8; N]) -> String {
    let mut hasher = Sha256::new();
    let mut block = Vec::with_capacity(4096 * N);
    for chunk in values.chunks(4096) {
        block.clear();
        block.extend(chunk.iter().flat_map(|v| bytes(*v)));
        hasher.update(&block);
    }
    hex_lower(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn log(n: usize) -> (String, String) {
        let mut chain = AuditChain::new("bank");
        let mut text = String::new();
        for i in 0..n {
            let r = chain
                .append(
                    1_700_000_000_000 + i as u64,
                    "round_sent",
                    json!({"round": i, "usable_records": 100 + i, "reason": "ok"}),
                )
                .unwrap();
            text.push_str(&r.to_line());
            text.push('\n');
        }
        (text, chain.head().to_owned())
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    fn join(lines: &[String]) -> String {
        let mut s = lines.join("\n");
        s.push('\n');
        s
    }

    #[test]
    fn a_record_hash_is_sha256_of_its_canonical_body() {
        // Recomputed by hand, independently of `compute_hash`: sorted keys, compact JSON.
        let mut chain = AuditChain::new("coordinator");
        let r = chain
            .append(5, "job_submitted", json!({"by": "alice", "job": "job-1"}))
            .unwrap();
        let body = format!(
            r#"{{"actor":"coordinator","data":{{"by":"alice","job":"job-1"}},"kind":"job_submitted","prev":"{GENESIS}","seq":0,"time_ms":5}}"#
        );
        let expected = hex_lower(&Sha256::digest(body.as_bytes()));
        assert_eq!(r.hash, expected);
        let line = format!(
            r#"{{"actor":"coordinator","data":{{"by":"alice","job":"job-1"}},"hash":"{expected}","kind":"job_submitted","prev":"{GENESIS}","seq":0,"time_ms":5}}"#
        );
        assert_eq!(r.to_line(), line, "keys sorted, `hash` in its place");
    }

    #[test]
    fn vector_hashes_are_sha256_of_the_little_endian_bytes() {
        let values: Vec<f64> = (0..10_000).map(|i| f64::from(i) * 0.25 - 7.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(f64s_sha256(&values), sha256_hex(&bytes));
        let words: Vec<u32> = (0..9_999u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(u32s_sha256(&words), sha256_hex(&bytes));
        assert_eq!(f64s_sha256(&[]), sha256_hex(b""));
    }

    #[test]
    fn sha256_matches_the_fips_vector() {
        // FIPS 180-2, "abc".
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_chain_counts_its_records() {
        let mut chain = AuditChain::new("bank");
        assert_eq!(chain.len(), 0);
        assert!(chain.is_empty());
        for n in 1..=3u64 {
            chain.append(1, "x", json!({})).unwrap();
            assert_eq!(chain.len(), n);
            assert!(!chain.is_empty());
        }
    }

    #[test]
    fn an_untouched_log_verifies_and_reports_its_head() {
        let (text, head) = log(5);
        let v = verify(&text, Some(&head)).unwrap();
        assert_eq!(v.records, 5);
        assert_eq!(v.head, head);
        assert_eq!(verify("", None).unwrap().head, GENESIS);
    }

    #[test]
    fn every_single_byte_change_is_detected_at_its_line() {
        let (text, _) = log(3);
        let second_start = text.find('\n').unwrap() + 1;
        let second_end = second_start + text[second_start..].find('\n').unwrap();
        for pos in second_start..second_end {
            let mut bytes = text.clone().into_bytes();
            bytes[pos] = if bytes[pos] == b'7' { b'8' } else { b'7' };
            let Ok(edited) = String::from_utf8(bytes) else {
                continue;
            };
            let err = verify(&edited, None).unwrap_err();
            let line = match err {
                AuditError::Malformed { line, .. }
                | AuditError::NotCanonical { line }
                | AuditError::HashMismatch { line }
                | AuditError::Sequence { line, .. }
                | AuditError::BrokenChain { line } => line,
                other => panic!("unexpected {other}"),
            };
            assert_eq!(line, 2, "byte {pos}: {err}");
            assert_eq!(err.line(), Some(2), "byte {pos}: {err}");
        }
    }

    #[test]
    fn removal_swap_and_foreign_append_are_found() {
        let (text, head) = log(5);
        let l = lines(&text);

        let mut removed = l.clone();
        removed.remove(2);
        assert!(matches!(
            verify(&join(&removed), None),
            Err(AuditError::Sequence { line: 3, .. })
        ));

        let mut swapped = l.clone();
        swapped.swap(1, 3);
        assert!(matches!(
            verify(&join(&swapped), None),
            Err(AuditError::Sequence { line: 2, .. })
        ));

        // A forger appends a well-formed record with the right seq but a chain of its own.
        let mut forged_chain = AuditChain::new("bank");
        for _ in 0..5 {
            forged_chain.append(1, "x", json!({})).unwrap();
        }
        let forged = forged_chain.append(1, "export", json!({})).unwrap();
        let mut appended = l.clone();
        appended.push(forged.to_line());
        assert!(matches!(
            verify(&join(&appended), None),
            Err(AuditError::BrokenChain { line: 6 })
        ));

        // Cutting the tail is seen only against the head kept elsewhere.
        let cut = join(&l[..4]);
        assert!(verify(&cut, None).is_ok());
        let err = verify(&cut, Some(&head)).unwrap_err();
        assert!(matches!(err, AuditError::HeadMismatch { records: 4, .. }));
        assert_eq!(err.line(), None, "a head mismatch is about no line");
    }

    #[test]
    fn floats_survive_the_canonical_round_trip() {
        // serde_json parses floats exactly only with `float_roundtrip`; without it some values
        // come back one ulp off and an untouched record would fail verification.
        let mut chain = AuditChain::new("c");
        let mut text = String::new();
        let mut x = 0.1f64;
        for i in 0..2000 {
            x = (x * 1.618_033_988_749_895 + 0.377) % 1.0;
            let r = chain
                .append(i, "f", json!({"auc": x, "eps": x * 1e-7, "big": x * 1e300}))
                .unwrap();
            text.push_str(&r.to_line());
            text.push('\n');
        }
        assert_eq!(verify(&text, Some(chain.head())).unwrap().records, 2000);
    }

    #[test]
    fn a_chain_resumes_from_its_last_record() {
        let (text, _) = log(3);
        let last = AuditRecord::parse_line(text.lines().last().unwrap(), 3).unwrap();
        let mut chain = AuditChain::resume("bank", Some(&last));
        let r = chain.append(9, "more", json!({"n": 1})).unwrap();
        let mut whole = text.clone();
        whole.push_str(&r.to_line());
        whole.push('\n');
        assert_eq!(verify(&whole, Some(chain.head())).unwrap().records, 4);
        assert!(chain.append(1, "bad", json!([1])).is_err());
    }

    /// `event_data` returns what an event's record holds: the `data` of an adjacently tagged
    /// event, and null for an event without data or a value that is not such an event.
    #[test]
    fn event_data_is_the_tagged_content() {
        #[derive(serde::Serialize)]
        #[serde(tag = "kind", content = "data", rename_all = "snake_case")]
        enum Event {
            Joined { partner: String, rows: u64 },
            Left,
        }
        let joined = Event::Joined {
            partner: "bank".into(),
            rows: 7,
        };
        assert_eq!(event_data(&joined), json!({"partner": "bank", "rows": 7}));
        assert_eq!(event_data(&Event::Left), Value::Null);
        assert_eq!(event_data(&"not an event"), Value::Null);
        assert_eq!(
            event_data(&json!({"kind": "x", "data": [1, 2]})),
            json!([1, 2])
        );
    }
}
