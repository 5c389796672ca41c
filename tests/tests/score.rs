//! Scoring an audience end to end. A model is trained by the simulator and written by its
//! `--export` (the coordinator's export code); the shipped bank data, given an identifier
//! column, stripped of its label `y` and with four broken rows, is scored by the real
//! `fedmark score` binary and by `examples/score.py`. Checked: identifiers pass through in
//! input order, the broken rows are reported by identifier and reason, scores equal those of
//! the independent reader of the exported files (`fedmark_tests::scoring`) to 1e-12, and every
//! decile is the one its definition gives.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use fedmark_core::decile::DecileCuts;
use fedmark_tests::procs::binary;
use fedmark_tests::scoring::{read_npy, score_records};
use fedmark_tests::sim::{self, SimOptions, workspace_root};
use serde_json::Value;

/// Rows of the shipped data.
const BANK_ROWS: usize = 45211;

/// A row the scorers must skip: (line, identifier, reason).
type Skip = (u64, String, String);

struct Fixture {
    dir: PathBuf,
    export: PathBuf,
    audience: PathBuf,
    skips: Vec<Skip>,
}

/// The export and the audience, made once for the tests of this file.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| make_fixture("score-audience", None))
}

/// A model trained by the simulator (3 rounds, 3 partners; `model` as the simulator's
/// `--model`) and written by its `--export`, with the audience, in `name` under the target's
/// temporary folder.
fn make_fixture(name: &str, model: Option<fedmark_core::spec::ModelKindName>) -> Fixture {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let export = dir.join("export");
    let opts = SimOptions {
        partners: 3,
        rounds: Some(3),
        model,
        tls: false,
        skip_baselines: true,
        show_progress: false,
        export: Some(export.clone()),
        audit_dir: Some(dir.join("audit")),
        ..SimOptions::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt.block_on(sim::run(&opts)).unwrap();
    assert_eq!(report.export.as_ref().unwrap().round, 3);
    let audience = dir.join("audience.csv");
    let skips = write_audience(&audience);
    Fixture {
        dir,
        export,
        audience,
        skips,
    }
}

/// The bank rows with `customer_id` first (C00000, C00001, …) and no `y`, four of them
/// broken; returns the rows a scorer must skip.
fn write_audience(path: &Path) -> Vec<Skip> {
    let mut reader =
        csv::Reader::from_path(workspace_root().join("data/bank_marketing.csv")).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let y_at = header.iter().position(|h| h == "y").unwrap();
    let kept: Vec<usize> = (0..header.len()).filter(|&j| j != y_at).collect();
    let field_at = |name: &str| 1 + kept.iter().position(|&j| header[j] == name).unwrap();
    let (age_at, balance_at) = (field_at("age"), field_at("balance"));
    let mut out = csv::WriterBuilder::new()
        .flexible(true)
        .from_path(path)
        .unwrap();
    let mut first = vec!["customer_id".to_owned()];
    first.extend(kept.iter().map(|&j| header[j].clone()));
    out.write_record(&first).unwrap();
    let mut skips = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.unwrap();
        let mut fields = vec![format!("C{i:05}")];
        fields.extend(kept.iter().map(|&j| record[j].to_owned()));
        let line = i as u64 + 2;
        let mut skip = |id: &str, reason: &str| skips.push((line, id.to_owned(), reason.into()));
        match i {
            100 => {
                fields[age_at] = "forty-two".into();
                skip(&fields[0], "column `age` not a number");
            }
            200 => {
                fields.pop();
                skip(&fields[0], "malformed record");
            }
            300 => {
                fields[0] = String::new();
                skip("", "empty identifier");
            }
            400 => {
                fields[balance_at] = "n/a".into();
                skip(&fields[0], "column `balance` not a number");
            }
            _ => {}
        }
        out.write_record(&fields).unwrap();
    }
    out.flush().unwrap();
    skips
}

/// `id,score,decile` rows of a scores file.
fn read_scores(path: &Path) -> Vec<(String, f64, u8)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("id,score,decile"), "{}", path.display());
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 3, "{l}");
            (
                f[0].to_owned(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// Runs `fedmark score` on the audience into `out` (and `skipped`); returns stderr.
fn fedmark_score(f: &Fixture, out: &Path, skipped: &Path) -> String {
    let run = Command::new(binary("fedmark").unwrap())
        .arg("score")
        .arg(&f.export)
        .arg(&f.audience)
        .args(["--id", "customer_id", "--out"])
        .arg(out)
        .arg("--skipped")
        .arg(skipped)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "fedmark score: {stderr}");
    assert!(run.stdout.is_empty(), "the scores went to --out");
    stderr
}

#[test]
fn fedmark_score_passes_ids_through_and_reports_skipped_rows() {
    let f = fixture();
    let out = f.dir.join("scores.csv");
    let skipped = f.dir.join("skipped.csv");
    let stderr = fedmark_score(f, &out, &skipped);
    let scored = BANK_ROWS - f.skips.len();
    assert!(
        stderr.contains(&format!("scored {scored} of {BANK_ROWS} rows")),
        "{stderr}"
    );
    assert!(
        stderr.contains("4 skipped: malformed record in 1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("C00100"),
        "ids go to --skipped, not stderr"
    );

    // Identifiers in input order, the skipped ones left out.
    let rows = read_scores(&out);
    let skipped_ids: Vec<String> = f.skips.iter().map(|s| s.1.clone()).collect();
    let expected_ids: Vec<String> = (0..BANK_ROWS)
        .map(|i| format!("C{i:05}"))
        .filter(|id| !skipped_ids.contains(id) && id != "C00300")
        .collect();
    let ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(ids, expected_ids);

    // The scores of the independent reader of the exported files.
    let pipe: Value =
        serde_json::from_str(&std::fs::read_to_string(f.export.join("pipeline.json")).unwrap())
            .unwrap();
    let w = read_npy(&f.export.join("weights.npy")).unwrap();
    let (header, records) = score_records(&pipe, &w, &f.audience).unwrap();
    let id_at = header.iter().position(|h| h == "customer_id").unwrap();
    let independent: HashMap<String, f64> = records
        .into_iter()
        .map(|r| (r.record[id_at].to_owned(), r.score))
        .collect();
    for (id, score, _) in &rows {
        let want = independent[id];
        assert!(
            (score - want).abs() < 1e-12,
            "{id}: {score} by fedmark score, {want} from the files"
        );
    }

    // Deciles by their definition: 1 + floor(10 h / n), h the scores strictly higher.
    let mut sorted: Vec<f64> = rows.iter().map(|r| r.1).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mut seen = [0usize; 10];
    for (id, score, decile) in &rows {
        let higher = n - sorted.partition_point(|x| x <= score);
        assert_eq!(usize::from(*decile), 1 + 10 * higher / n, "{id}");
        seen[usize::from(*decile) - 1] += 1;
    }
    assert!(seen[0] >= n / 10 && seen.iter().all(|&c| c > 0), "{seen:?}");

    // Every skipped row, by line, identifier and reason.
    let mut report = String::from("line,id,reason\n");
    for (line, id, reason) in &f.skips {
        report.push_str(&format!("{line},{id},{reason}\n"));
    }
    assert_eq!(std::fs::read_to_string(&skipped).unwrap(), report);

    // From standard input to standard output, the skipped rows on stderr: the same scores.
    let run = Command::new(binary("fedmark").unwrap())
        .arg("score")
        .arg(&f.export)
        .arg("-")
        .args(["--id", "customer_id"])
        .stdin(std::fs::File::open(&f.audience).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert_eq!(run.stdout, std::fs::read(&out).unwrap());
    assert!(
        stderr.contains("skipped line 102, id \"C00100\": column `age` not a number"),
        "{stderr}"
    );
    assert!(stderr.contains("skipped line 302, id \"\": empty identifier"));
}

#[test]
fn fedmark_score_refuses_an_input_that_does_not_fit() {
    let f = fixture();
    let run = |args: &[&str]| {
        Command::new(binary("fedmark").unwrap())
            .arg("score")
            .args(args)
            .output()
            .unwrap()
    };
    let export = f.export.to_str().unwrap();
    let audience = f.audience.to_str().unwrap();
    let out = run(&[export, audience, "--id", "client"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("identifier column `client`"), "{err}");
    // The label-only file of another spec: a feature column is missing.
    let other = f.dir.join("other.csv");
    std::fs::write(&other, "customer_id,age\nC1,30\n").unwrap();
    let out = run(&[export, other.to_str().unwrap(), "--id", "customer_id"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lacks the column `balance`"), "{err}");
    // Not an export folder.
    let out = run(&[f.dir.to_str().unwrap(), audience, "--id", "customer_id"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pipeline.json"), "{err}");
}

/// `examples/score.py` on the same audience: the same identifiers, scores to 1e-12, deciles
/// (but where a score sits within 1e-12 of a cut point) and skipped rows as `fedmark score`.
#[test]
#[cfg_attr(
    not(has_numpy),
    ignore = "python3 with numpy not found (set FEDMARK_PYTHON to one that has it)"
)]
fn score_py_scores_an_audience_like_fedmark_score() {
    let f = fixture();
    let rust_out = f.dir.join("rust-scores.csv");
    fedmark_score(f, &rust_out, &f.dir.join("rust-skipped.csv"));
    let py_out = f.dir.join("py-scores.csv");
    let py_skipped = f.dir.join("py-skipped.csv");
    let run = Command::new(env!("FEDMARK_TEST_PYTHON"))
        .arg(workspace_root().join("examples/score.py"))
        .arg(&f.export)
        .arg(&f.audience)
        .args(["--id", "customer_id", "--scores"])
        .arg(&py_out)
        .arg("--skipped")
        .arg(&py_skipped)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "score.py: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let scored = BANK_ROWS - f.skips.len();
    assert_eq!(stdout.trim(), format!("rows {scored} skipped 4 round 3"));

    let rust = read_scores(&rust_out);
    let py = read_scores(&py_out);
    assert_eq!(py.len(), rust.len());
    let rust_scores: Vec<f64> = rust.iter().map(|r| r.1).collect();
    let cuts = DecileCuts::from_scores(&rust_scores);
    for ((id, s, d), (rid, rs, rd)) in py.iter().zip(&rust) {
        assert_eq!(id, rid);
        assert!(
            (s - rs).abs() < 1e-12,
            "{id}: {s} by score.py, {rs} by fedmark"
        );
        assert!(
            d == rd || cuts.cuts().iter().any(|c| (c - s).abs() < 1e-12),
            "{id}: decile {d} by score.py, {rd} by fedmark"
        );
    }

    let text = std::fs::read_to_string(&py_skipped).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("file,line,id,reason"));
    let got: Vec<Skip> = lines
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ',').collect();
            (f[1].parse().unwrap(), f[2].to_owned(), f[3].to_owned())
        })
        .collect();
    assert_eq!(got, f.skips);
}

/// A boosted model (3 trees) trained by the simulator and exported, with the same audience.
fn trees_fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        make_fixture(
            "score-audience-trees",
            Some(fedmark_core::spec::ModelKindName::Gbdt),
        )
    })
}

/// `fedmark score` with a boosted model's export (pipeline.json naming model.json): every
/// audience row gets the probability the model itself gives the same bank row, and the
/// broken rows are skipped as with a linear model.
#[test]
fn fedmark_score_scores_a_boosted_model_as_its_trees_do() {
    use fedmark_client::data::{HoldoutSplit, load_csv};
    let f = trees_fixture();
    let out = f.dir.join("scores.csv");
    let skipped = f.dir.join("skipped.csv");
    let stderr = fedmark_score(f, &out, &skipped);
    let scored = BANK_ROWS - f.skips.len();
    assert!(
        stderr.contains(&format!("scored {scored} of {BANK_ROWS} rows")),
        "{stderr}"
    );
    let pipe: Value =
        serde_json::from_str(&std::fs::read_to_string(f.export.join("pipeline.json")).unwrap())
            .unwrap();
    assert_eq!(pipe["model"]["kind"], "gbdt");
    assert_eq!(pipe["weights"]["file"], "model.json");
    assert_eq!(pipe["weights"]["length"], 3);
    let model = fedmark_core::gbdt::GbdtModel::from_json(
        &std::fs::read_to_string(f.export.join("model.json")).unwrap(),
    )
    .unwrap();
    // The bank rows in file order, as a partner parses them (the spec of the simulated job).
    let text = std::fs::read_to_string(workspace_root().join("examples/bank-job.toml")).unwrap();
    let spec = fedmark_core::spec::JobSpec::from_toml(
        &text.replace("kind = \"logistic\"", "kind = \"gbdt\""),
    )
    .unwrap();
    let all = HoldoutSplit {
        fraction: 0.0,
        seed: 0,
    };
    let rows = load_csv(
        &workspace_root().join("data/bank_marketing.csv"),
        &spec,
        all,
    )
    .unwrap()
    .train;
    assert_eq!(rows.len(), BANK_ROWS);
    let expected = model.predict_proba(&rows).unwrap();
    let got = read_scores(&out);
    assert_eq!(got.len(), scored);
    for (id, score, _) in &got {
        let i: usize = id[1..].parse().unwrap();
        assert_eq!(*score, expected[i], "{id}");
    }
    assert!(
        got.iter().any(|r| r.1 != got[0].1),
        "the trees split the audience"
    );
}

/// `examples/score.py` with the boosted model's export: from model.json the scores of
/// `fedmark score` to 1e-12 and the same skipped rows; from model.xgb.json (`--xgboost`,
/// XGBoost's float32 leaves and thresholds) to 1e-5.
#[test]
#[cfg_attr(
    not(has_numpy),
    ignore = "python3 with numpy not found (set FEDMARK_PYTHON to one that has it)"
)]
fn score_py_scores_a_boosted_model_like_fedmark_score() {
    let f = trees_fixture();
    let rust_out = f.dir.join("rust-scores.csv");
    fedmark_score(f, &rust_out, &f.dir.join("rust-skipped.csv"));
    let rust = read_scores(&rust_out);
    for (xgboost, tolerance) in [(false, 1e-12), (true, 1e-5)] {
        let py_out = f.dir.join(format!("py-scores-{xgboost}.csv"));
        let py_skipped = f.dir.join(format!("py-skipped-{xgboost}.csv"));
        let mut cmd = Command::new(env!("FEDMARK_TEST_PYTHON"));
        cmd.arg(workspace_root().join("examples/score.py"))
            .arg(&f.export)
            .arg(&f.audience)
            .args(["--id", "customer_id", "--scores"])
            .arg(&py_out)
            .arg("--skipped")
            .arg(&py_skipped);
        if xgboost {
            cmd.arg("--xgboost");
        }
        let run = cmd.output().unwrap();
        assert!(
            run.status.success(),
            "score.py: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let py = read_scores(&py_out);
        assert_eq!(py.len(), rust.len());
        let mut largest: f64 = 0.0;
        for ((id, s, _), (rid, rs, _)) in py.iter().zip(&rust) {
            assert_eq!(id, rid);
            largest = largest.max((s - rs).abs());
        }
        assert!(largest < tolerance, "xgboost {xgboost}: {largest} apart");
        eprintln!("score.py (xgboost {xgboost}) vs fedmark score: largest difference {largest:e}");
        let skipped = std::fs::read_to_string(&py_skipped).unwrap();
        assert_eq!(skipped.lines().count(), 1 + f.skips.len());
    }
}
