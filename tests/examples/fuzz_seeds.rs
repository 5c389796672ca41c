//! Writes the seed corpus of the cargo-fuzz targets into `fuzz/corpus/<target>/`.
//!
//! Run by hand when a seed must change (`cargo run -p fedmark-tests --example fuzz_seeds`),
//! then commit the files; CI only replays them (`tests/tests/fuzz_corpus.rs`). The protocol
//! seeds come from the deterministic fixture round in `fedmark_tests::fuzzing`, so they carry
//! valid signatures and ciphertexts for it.

use std::path::{Path, PathBuf};

use fedmark_tests::fuzzing;

const SPEC_UNIT: &str = r#"
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
[model]
kind = "logistic"
[training]
local_epochs = 1
batch_size = 64
learning_rate = 0.1
server_optimizer = "fedavg"
"#;

const SPEC_CHURN: &str = "[job]\nname = \"churn\"\npurpose = \"churn_prediction\"\nrounds = 6\n[label]\ncolumn = \"churned\"\npositive = \"Y\"\n\
[features]\nnumeric = [\"tenure_months\", \"monthly_spend\", \"support_calls\"]\ncategorical = [\"plan\"]\n\
[model]\nkind = \"mlp\"\nhidden = 8\n[training]\nlearning_rate = 0.05\nserver_optimizer = \"fedadam\"\n\
[aggregation]\nsecure = false\n";

const SPEC_DP: &str = r#"
[job]
name = "dp-job"
purpose = "campaign_response"
rounds = 5
seed = 3
[label]
column = "y"
positive = "yes"
[features]
numeric = ["age"]
range = { age = [18.0, 95.0] }
categorical = ["job", "marital"]
vocabulary = { job = ["a", "b"] }
hash_buckets = 16
[model]
kind = "mlp"
hidden = 4
l2 = 0.001
[training]
fedprox_mu = 0.01
clip_norm = 5.0
max_weight = 1000
server_learning_rate = 0.5
[aggregation]
cohort_size = 4
min_participants = 3
max_attempts = 3
sparse_graph_above = 8
[evaluation]
histogram_bins = 100
[privacy]
mode = "partner-distributed"
epsilon = 4.0
delta = 1e-6
clip = 2.0
noise_multiplier = 1.1
sampling_rate = 0.05
"#;

fn write(root: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = repo.join("fuzz/corpus");
    let read = |p: &str| std::fs::read(repo.join(p));

    let bank_job = read("examples/bank-job.toml")?;
    write(&root, "spec", "bank-job.toml", &bank_job)?;
    write(&root, "spec", "unit.toml", SPEC_UNIT.as_bytes())?;
    write(&root, "spec", "churn.toml", SPEC_CHURN.as_bytes())?;
    write(&root, "spec", "dp.toml", SPEC_DP.as_bytes())?;

    let roster = fuzzing::Fixture::get().roster.to_toml()?;
    write(&root, "roster", "three.toml", roster.as_bytes())?;
    write(&root, "roster", "empty.toml", b"")?;

    write(
        &root,
        "coordinator_config",
        "coordinator.toml",
        &read("examples/coordinator.toml")?,
    )?;
    write(
        &root,
        "coordinator_config",
        "minimal.toml",
        b"listen = \"[::1]:7070\"\nroster = \"/etc/fedmark/roster.toml\"\n",
    )?;
    for p in ["bank", "platform", "retailer"] {
        write(
            &root,
            "client_config",
            &format!("{p}.toml"),
            &read(&format!("examples/partners/{p}.toml"))?,
        )?;
    }
    write(
        &root,
        "client_config",
        "full.toml",
        b"coordinator = \"https://coord.example:7070\"\npartner_id = \"bank-2\"\ndata = \"/data/b.csv\"\n\
holdout_fraction = 0.1\nholdout_seed = 9\nseed = 4\nconnect_timeout_secs = 5\nmin_cohort = 3\n\
max_epsilon = 2.5\nledger = \"ledger.json\"\n",
    )?;

    let csv = String::from_utf8(read("data/bank_marketing.csv")?)?;
    let head: String = csv.lines().take(50).flat_map(|l| [l, "\n"]).collect();
    write(&root, "csv_rows", "bank-head.csv", head.as_bytes())?;
    write(
        &root,
        "csv_rows",
        "bad-rows.csv",
        "age,job,marital,balance,y\n30,admin.,single,1,yes\nabc,management,married,2,no\n40,x\n\
50,\"unclosed,single,3,\n60,technician,\u{1F4A5},inf,no\n70,\"a,b\",married,-1e3,\n"
            .as_bytes(),
    )?;

    write(
        &root,
        "audit_log",
        "four.jsonl",
        fuzzing::audit_log_seed(4).as_bytes(),
    )?;
    write(&root, "audit_log", "empty.jsonl", b"")?;

    for (name, bytes) in fuzzing::client_message_seeds() {
        write(&root, "client_message", &format!("{name}.pb"), &bytes)?;
    }
    for (name, bytes) in fuzzing::server_message_seeds(SPEC_UNIT) {
        write(&root, "server_message", &format!("{name}.pb"), &bytes)?;
    }
    for (name, bytes) in fuzzing::input_chunk_seeds() {
        write(&root, "input_chunk", &format!("{name}.pb"), &bytes)?;
    }
    for (name, bytes) in fuzzing::model_chunk_seeds() {
        write(&root, "model_chunk", &format!("{name}.pb"), &bytes)?;
    }
    for (name, bytes) in fuzzing::admin_request_seeds() {
        write(&root, "admin_request", &format!("{name}.bin"), &bytes)?;
    }
    for (name, bytes) in fuzzing::http_request_seeds() {
        write(&root, "http_request", &format!("{name}.bin"), &bytes)?;
    }
    for (name, bytes) in fuzzing::round_state_seeds() {
        write(&root, "round_state", &format!("{name}.bin"), &bytes)?;
    }
    println!("seed corpus written to {}", root.display());
    Ok(())
}
