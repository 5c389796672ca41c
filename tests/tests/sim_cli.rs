//! The simulator as a user runs it, from a folder of their own: the default job spec and data
//! come from the working folder (an edited local copy takes effect), the built-in copies run
//! where the folder has none (and the run says so), `--job` names a spec, and `--export DIR`
//! writes what `model export` writes, loadable by `fedmark score`'s reader.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::path::Path;
use std::process::{Command, Output};

use fedmark_core::pipeline::Pipeline;
use fedmark_tests::scoring::read_npy;
use fedmark_tests::sim::workspace_root;
use serde_json::Value;

/// Runs `fedmark-sim` in `dir` with a small, fast setting and `args`.
fn sim(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fedmark-sim"))
        .args(["--partners", "3", "--tls", "off", "--no-baselines"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fedmark-sim {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn shipped_job() -> String {
    std::fs::read_to_string(workspace_root().join("examples/bank-job.toml")).unwrap()
}

#[test]
fn an_edited_local_job_file_changes_the_run_and_the_export_loads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("examples")).unwrap();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::copy(
        workspace_root().join("data/bank_marketing.csv"),
        d.join("data/bank_marketing.csv"),
    )
    .unwrap();
    let edited = shipped_job()
        .replace("rounds = 20", "rounds = 2")
        .replace("name = \"campaign-response\"", "name = \"local-edit\"");
    assert_ne!(edited, shipped_job());
    std::fs::write(d.join("examples/bank-job.toml"), edited).unwrap();

    let out = sim(d, &["--export", "out/export", "--report", "report.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("built into"), "{stderr}");
    let report = json(&d.join("report.json"));
    assert_eq!(report["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(report["job"]["name"], "local-edit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("model of round 2 exported to out/export"),
        "{stdout}"
    );

    // The export: the files `model export` writes, which read back into a model.
    let export = d.join("out/export");
    let text = std::fs::read_to_string(export.join("pipeline.json")).unwrap();
    let pipeline = Pipeline::from_json(&text).unwrap();
    assert_eq!(pipeline.round, 2);
    assert_eq!(pipeline.name, "local-edit");
    assert_eq!(pipeline.job_id, report["job"]["job_id"].as_str().unwrap());
    let weights = std::fs::read(export.join(pipeline.weights_file())).unwrap();
    let model = pipeline.with_weights(&weights).unwrap();
    let fedmark_core::pipeline::ScoringModel::Network(model) = model.model else {
        panic!("a logistic export reads as a network");
    };
    assert_eq!(read_npy(&export.join("weights.npy")).unwrap(), model.params);
    let card = json(&export.join("model_card.json"));
    assert_eq!(card["job_id"], report["job"]["job_id"]);
    assert_eq!(card["privacy"]["mode"], "none");
    // The Markdown card beside it: no ε under a job without DP, no empty consent rounds.
    let md = std::fs::read_to_string(export.join("model_card.md")).unwrap();
    assert!(md.starts_with("# Model card: local-edit"), "{md}");
    assert!(
        md.contains("No differential privacy") && !md.contains('ε'),
        "{md}"
    );
    assert!(
        card["consent_snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["snapshots"].as_object().is_some_and(|m| !m.is_empty()))
    );
    assert!(
        card["privacy"]["guarantee"]
            .as_str()
            .unwrap()
            .starts_with("no differential privacy")
    );
    assert_eq!(report["export"]["model_sha256"], card["model"]["sha256"]);
    // The export is in the coordinator's audit chain, as `model export` records it.
    let audit = std::fs::read_to_string(d.join("fedmark-audit/coordinator.audit.jsonl")).unwrap();
    assert!(audit.contains("\"kind\":\"model_exported\""));

    // `--job` names another spec.
    let other = shipped_job().replace("rounds = 20", "rounds = 1");
    std::fs::write(d.join("one-round.toml"), other).unwrap();
    sim(d, &["--job", "one-round.toml", "--report", "one.json"]);
    assert_eq!(
        json(&d.join("one.json"))["rounds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A record-DP job's card states the job's total (ε, δ) per record over every release:
    // the larger of the training and the evaluation sides', which compose in parallel.
    sim(
        d,
        &[
            "--job",
            "one-round.toml",
            "--dp",
            "record",
            "--epsilon",
            "1",
            "--delta",
            "1e-5",
            "--export",
            "out/dp",
        ],
    );
    let privacy = &json(&d.join("out/dp/model_card.json"))["privacy"];
    let md = std::fs::read_to_string(d.join("out/dp/model_card.md")).unwrap();
    assert!(
        md.contains("differential privacy for one record over every release")
            && !md.contains("Record"),
        "{md}"
    );
    assert_eq!(privacy["mode"], "record");
    assert_eq!(privacy["protected_unit"], "one record");
    let total = privacy["epsilon"].as_f64().unwrap();
    let training = privacy["epsilon_training"].as_f64().unwrap();
    let evaluation = privacy["epsilon_evaluation"].as_f64().unwrap();
    assert_eq!(total, training.max(evaluation), "{privacy}");
    assert!(
        total <= 1.0 && training > 0.99 && evaluation > 0.0,
        "{privacy}"
    );
    assert!(
        privacy["composition"]
            .as_str()
            .unwrap()
            .starts_with("parallel")
    );
    assert_eq!(privacy["accountant"], "pld");
    assert!(
        privacy["guarantee"]
            .as_str()
            .unwrap()
            .contains("for one record over every release"),
        "{privacy}"
    );
}

#[test]
fn without_local_defaults_the_built_in_copies_run_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = sim(dir.path(), &["--rounds", "1", "--report", "report.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for default in ["examples/bank-job.toml", "data/bank_marketing.csv"] {
        assert!(
            stderr.contains(&format!("no {default} in the working folder")),
            "{stderr}"
        );
    }
    assert!(stderr.contains("built into fedmark-sim"), "{stderr}");
    let report = json(&dir.path().join("report.json"));
    assert_eq!(report["job"]["name"], "campaign-response");
    assert_eq!(report["rounds"].as_array().unwrap().len(), 1);

    let help = Command::new(env!("CARGO_BIN_EXE_fedmark-sim"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("working folder"), "{help}");
    assert!(help.contains("--export <DIR>"), "{help}");
    assert!(help.contains("[alias: --job]"), "{help}");
}
