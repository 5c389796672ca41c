//! Multi-party simulations over real gRPC on 127.0.0.1: the shipped bank job, a second data
//! set driven by its spec alone, refusals, and partners that drop out mid-round.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::path::Path;
use std::time::Duration;

use fedmark_client::node::{DropPoint, Dropout};
use fedmark_tests::partition::Split;
use fedmark_tests::sim::{self, SimOptions};

fn quick(rounds: u32) -> SimOptions {
    SimOptions {
        rounds: Some(rounds),
        show_progress: false,
        phase_timeout: Duration::from_secs(60),
        ..SimOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_job_learns_and_beats_partners_alone() {
    let report = sim::run(&quick(8)).await.unwrap();
    assert_eq!(report.rounds.len(), 8);
    assert!(
        report
            .rounds
            .iter()
            .all(|r| r.participants == 5 && r.dropped == 0)
    );
    let b = report.baselines.as_ref().unwrap();
    assert!(
        report.final_metrics.auc > 0.75,
        "final auc {}",
        report.final_metrics.auc
    );
    assert!(
        report.final_metrics.auc > b.centralized.auc - 0.01,
        "{} vs {}",
        report.final_metrics.auc,
        b.centralized.auc
    );
    // The federated AUC from histograms matches the exact pooled one: the holdouts are the
    // pooled test rows.
    assert!((report.final_federated.auc - report.final_metrics.auc).abs() < 2e-3);
    assert_eq!(
        report.final_federated.rows as usize,
        report
            .partners
            .iter()
            .map(|p| p.holdout_rows)
            .sum::<usize>()
    );
    // AUC improves over training.
    assert!(report.rounds[7].auc > report.rounds[1].auc);
    assert_eq!(b.partners_alone.len(), 5);
}

/// A churn data set of another shape, known to fedmark only through its spec file.
fn write_churn(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut csv =
        String::from("customer,region,plan,tenure_months,monthly_spend,support_calls,churned\n");
    for i in 0..6000 {
        let region = ["north", "south", "east", "west"][rng.random_range(0..4)];
        let plan = ["basic", "plus", "pro"][rng.random_range(0..3)];
        let tenure: f64 = rng.random_range(1.0..72.0);
        let spend: f64 = rng.random_range(10.0..120.0);
        let calls = rng.random_range(0..8);
        let z = 1.5 - tenure / 20.0 + calls as f64 * 0.5 - if plan == "pro" { 1.0 } else { 0.0 };
        let churned = rng.random_bool(1.0 / (1.0 + (-z).exp()));
        csv.push_str(&format!(
            "c{i},{region},{plan},{tenure:.1},{spend:.2},{calls},{}\n",
            if churned { "Y" } else { "N" }
        ));
    }
    let data = dir.join("churn.csv");
    std::fs::write(&data, csv).unwrap();
    let spec = dir.join("churn.toml");
    std::fs::write(
        &spec,
        "[job]\nname = \"churn\"\npurpose = \"churn_prediction\"\nrounds = 6\n[label]\ncolumn = \"churned\"\npositive = \"Y\"\n\
         [features]\nnumeric = [\"tenure_months\", \"monthly_spend\", \"support_calls\"]\ncategorical = [\"plan\"]\n\
         [model]\nkind = \"mlp\"\nhidden = 8\n[training]\nlearning_rate = 0.05\nserver_optimizer = \"fedadam\"\n\
         [aggregation]\nsecure = false\n",
    )
    .unwrap();
    (data, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_data_set_from_a_spec_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (data, spec) = write_churn(dir.path());
    let opts = SimOptions {
        data,
        spec,
        partners: 4,
        split: Split::ByColumn("region".into()),
        rounds: None,
        show_progress: false,
        ..SimOptions::default()
    };
    let report = sim::run(&opts).await.unwrap();
    assert_eq!(report.rounds.len(), 6);
    assert!(
        report.final_metrics.auc > 0.75,
        "churn auc {}",
        report.final_metrics.auc
    );
    assert_eq!(report.job.model_kind, "mlp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_that_drop_out_do_not_stop_the_job() {
    let mut opts = quick(4);
    opts.dropouts = vec![
        // partner 1 leaves before sending anything in round 2: the round completes without it
        (
            1,
            Dropout {
                round: 2,
                point: DropPoint::Start,
            },
        ),
        // partner 3 leaves in the middle of streaming its input in round 3
        (
            3,
            Dropout {
                round: 3,
                point: DropPoint::MidInput,
            },
        ),
    ];
    let report = sim::run(&opts).await.unwrap();
    assert_eq!(report.rounds.len(), 4);
    let r2 = &report.rounds[1];
    assert_eq!(
        (r2.participants, r2.dropped, r2.attempts),
        (4, 1, 1),
        "{r2:?}"
    );
    // Whether its first half reached the coordinator (round retried) or was discarded with the
    // stream (plain dropout) depends on HTTP/2 timing; either way the round completes with the
    // others — without partner 1 too, which sits round 3 out on probation after missing round
    // 2. The retry path is tested deterministically in `protocol.rs`.
    let r3 = &report.rounds[2];
    assert!(r3.participants >= 3 && r3.attempts <= 2, "{r3:?}");
    // Back after its one round of probation.
    assert!(report.rounds[3].participants >= 4, "{:?}", report.rounds[3]);
    assert!(report.final_metrics.auc > 0.7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_missing_a_declared_column_refuses_and_the_job_goes_on() {
    use fedmark_client::node;
    use fedmark_tests::harness::{
        bank_spec, client_config, consortium, start_coordinator, with_identity,
    };
    use fedmark_tests::partition::partition_csv;

    let dir = tempfile::tempdir().unwrap();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 3, &Split::Iid, 1).unwrap();
    // Partner 2's export lacks the declared `loan` column.
    let text = std::fs::read_to_string(&files[2].0).unwrap();
    let loan = text
        .lines()
        .next()
        .unwrap()
        .split(',')
        .position(|h| h == "loan")
        .unwrap();
    let stripped: String = text
        .lines()
        .map(|l| {
            l.split(',')
                .enumerate()
                .filter(|(i, _)| *i != loan)
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
                .join(",")
                + "\n"
        })
        .collect();
    std::fs::write(&files[2].0, stripped).unwrap();

    let ids = ["bank", "retailer", "platform"];
    let (roster, identities) = consortium(&ids).unwrap();
    let coordinator = start_coordinator(bank_spec(2).unwrap(), roster, Duration::from_secs(30))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let cfg = client_config(coordinator.addr, id, files[i].0.clone(), i as u64);
        let options = with_identity(&identities[i]);
        clients.push(tokio::spawn(async move { node::run(&cfg, options).await }));
    }
    let outcome = coordinator.job.await.unwrap().unwrap();
    let refusal = &outcome.report.partners_refused["platform"];
    assert!(
        refusal.ends_with("lacks the declared column `loan`"),
        "{refusal}"
    );
    assert_eq!(
        outcome.report.partners_accepted,
        vec!["bank".to_string(), "retailer".to_string()]
    );
    assert!(outcome.report.rounds.iter().all(|r| r.participants == 2));
    let mut summaries = Vec::new();
    for c in clients {
        summaries.push(c.await.unwrap().unwrap());
    }
    assert!(
        summaries[2]
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("`loan`"))
    );
    assert_eq!(
        summaries[0].rounds_contributed, 4,
        "statistics + 2 training + evaluation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_aggregation_costs_no_accuracy() {
    let mut secure = quick(8);
    secure.secure_agg = Some(true);
    secure.skip_baselines = true;
    let mut plain = secure.clone();
    plain.secure_agg = Some(false);
    let s = sim::run(&secure).await.unwrap();
    let p = sim::run(&plain).await.unwrap();
    assert!(s.job.secure_aggregation && !p.job.secure_aggregation);
    assert!(
        (s.final_metrics.auc - p.final_metrics.auc).abs() < 0.002,
        "secure {} vs plain {}",
        s.final_metrics.auc,
        p.final_metrics.auc
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rounds_with_twenty_percent_dropout_complete() {
    let mut opts = quick(20);
    opts.secure_agg = Some(true);
    opts.dropout_rate = 0.2;
    opts.skip_baselines = true;
    opts.phase_timeout = Duration::from_secs(20);
    let report = sim::run(&opts).await.unwrap();
    // A round whose unmask failed after some partners revealed cannot be unmasked again with
    // them; with five partners it is lost and the job goes on.
    assert_eq!(report.rounds.len() + report.job.rounds_lost.len(), 20);
    assert!(report.rounds.len() >= 15, "{:?}", report.job.rounds_lost);
    let dropped: u32 = report.rounds.iter().map(|r| r.dropped).sum();
    assert!(dropped > 0, "some partners dropped out");
    assert!(
        report.final_metrics.auc > 0.75,
        "{}",
        report.final_metrics.auc
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_partners_with_secagg_plus_complete_a_round() {
    let opts = SimOptions {
        partners: 200,
        split: Split::Iid,
        rounds: Some(1),
        secure_agg: Some(true),
        skip_baselines: true,
        show_progress: false,
        ..SimOptions::default()
    };
    let report = sim::run(&opts).await.unwrap();
    assert_eq!(report.rounds.len(), 1);
    assert_eq!(report.rounds[0].participants, 200);
    assert!(report.job.secure_aggregation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_level_dp_at_epsilon_one_keeps_a_useful_model() {
    let mut opts = quick(20);
    opts.dp_mode = Some(fedmark_core::spec::PrivacyMode::Record);
    opts.epsilon = Some(1.0);
    opts.delta = Some(1e-5);
    opts.skip_baselines = true;
    let report = sim::run(&opts).await.unwrap();
    let eps = report.final_metrics.epsilon.unwrap();
    assert!(eps <= 1.0 && eps > 0.99, "spent {eps}");
    assert_eq!(report.final_metrics.delta, Some(1e-5));
    assert!(
        report.final_metrics.auc >= 0.74,
        "auc {}",
        report.final_metrics.auc
    );
    // ε grows round by round and is reported with each round
    let spent: Vec<f64> = report.rounds.iter().map(|r| r.epsilon.unwrap()).collect();
    assert!(spent.windows(2).all(|w| w[1] > w[0]));
}

/// Adaptive clipping end to end: each round's clip is the previous one moved by the noised
/// share it released, recomputed here from the report by the paper's rule; the whole job,
/// count included, stays within ε.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_clip_follows_the_released_shares_within_the_budget() {
    use fedmark_core::spec::PrivacyMode;
    for mode in [PrivacyMode::PartnerCentral, PrivacyMode::PartnerDistributed] {
        adaptive_clip_run(mode).await;
    }
}

async fn adaptive_clip_run(mode: fedmark_core::spec::PrivacyMode) {
    let mut opts = quick(8);
    opts.partners = 12;
    opts.split = Split::Iid;
    opts.dp_mode = Some(mode);
    opts.epsilon = Some(8.0);
    opts.clip = Some(fedmark_core::spec::Clip::Adaptive);
    opts.skip_baselines = true;
    let report = sim::run(&opts).await.unwrap();
    assert_eq!(report.rounds.len(), 8);
    let (eta, gamma, max) = (0.2_f64, 0.5, 10.0);
    let mut expected = 0.1;
    for r in &report.rounds {
        let clip = r.clip.expect("every round records its clip");
        let share = r.unclipped_share.expect("and its released share");
        assert!(
            (clip - expected).abs() <= 1e-12 * expected,
            "round {}: {clip} vs {expected}",
            r.round
        );
        assert!(share.is_finite());
        expected = (clip * (-eta * (share - gamma)).exp()).clamp(max * 1e-6, max);
    }
    let clips: Vec<f64> = report.rounds.iter().filter_map(|r| r.clip).collect();
    assert!(
        clips.iter().any(|c| (c - 0.1).abs() > 1e-3),
        "the clip never moved: {clips:?}"
    );
    let eps = report.final_metrics.epsilon.unwrap();
    assert!(eps <= 8.0 && eps > 7.9, "spent {eps}");
    assert!(
        report.final_metrics.auc > 0.65,
        "auc {}",
        report.final_metrics.auc
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_budget_stops_early_and_a_capped_partner_refuses() {
    use fedmark_client::node;
    use fedmark_tests::harness::{
        bank_spec, client_config, consortium, start_coordinator, with_identity,
    };
    use fedmark_tests::partition::partition_csv;

    let dir = tempfile::tempdir().unwrap();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 3, &Split::Iid, 2).unwrap();
    // A fixed σ = 1.4 at q = 0.01 (100 DP-SGD steps a round) passes ε = 1 after 9 rounds
    // (`fedmark-coordinator privacy epsilon --noise-multiplier 1.4 --sampling-rate 0.01
    // --steps 1000 --delta 1e-5` gives 1.016 by the PLD accountant, 900 steps 0.962).
    let mut spec = bank_spec(20).unwrap();
    spec.privacy.mode = fedmark_core::spec::PrivacyMode::Record;
    spec.privacy.noise_multiplier = Some(1.4);
    spec.privacy.epsilon = 1.0;
    let ids = ["a", "b", "capped"];
    let (roster, identities) = consortium(&ids).unwrap();
    let coordinator = start_coordinator(spec, roster, Duration::from_secs(60))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut cfg = client_config(coordinator.addr, id, files[i].0.clone(), i as u64);
        if *id == "capped" {
            cfg.max_epsilon = Some(0.5);
        }
        let options = with_identity(&identities[i]);
        clients.push(tokio::spawn(async move { node::run(&cfg, options).await }));
    }
    let outcome = coordinator.job.await.unwrap().unwrap();
    let report = &outcome.report;
    assert!(
        report.partners_refused["capped"].contains("exceeds this partner's cap of 0.5"),
        "{:?}",
        report.partners_refused
    );
    assert_eq!(
        report.rounds.len(),
        9,
        "rounds 1-9 fit the budget, round 10 would not"
    );
    assert!(
        report.stop_reason.starts_with("privacy budget exhausted"),
        "{}",
        report.stop_reason
    );
    let privacy = report.privacy.as_ref().unwrap();
    assert!(privacy.epsilon_spent <= 1.0);
    for c in clients {
        let summary = c.await.unwrap().unwrap();
        assert!(
            summary.refused.is_some()
                || summary
                    .finish_reason
                    .starts_with("privacy budget exhausted"),
            "{summary:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_ledger_carries_spent_privacy_into_the_next_job() {
    use fedmark_client::node;
    use fedmark_tests::harness::{
        bank_spec, client_config, consortium, start_coordinator, with_identity,
    };
    use fedmark_tests::partition::partition_csv;

    let dir = tempfile::tempdir().unwrap();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 3, &Split::Iid, 4).unwrap();
    let ledger = dir.path().join("ledger-b.json");
    // σ = 1.4 at q = 0.01: 5 rounds (500 steps) spend ε ≈ 0.71, 10 rounds ≈ 1.016 (PLD).
    let mut spec = bank_spec(5).unwrap();
    spec.privacy.mode = fedmark_core::spec::PrivacyMode::Record;
    spec.privacy.noise_multiplier = Some(1.4);
    spec.privacy.epsilon = 1.0;
    let ids = ["a", "b", "c"];
    let (roster, identities) = consortium(&ids).unwrap();
    let mut refusals = Vec::new();
    for job in 0..2 {
        let mut spec = spec.clone();
        spec.job.name = format!("campaign-{job}"); // another job, same purpose
        let coordinator = start_coordinator(spec, roster.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        let mut clients = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let mut cfg = client_config(coordinator.addr, id, files[i].0.clone(), i as u64);
            if *id == "b" {
                cfg.max_epsilon = Some(1.0);
                cfg.ledger = Some(ledger.clone());
            }
            let options = with_identity(&identities[i]);
            clients.push(tokio::spawn(async move { node::run(&cfg, options).await }));
        }
        let outcome = coordinator.job.await.unwrap().unwrap();
        assert_eq!(outcome.report.rounds.len(), 5);
        refusals.push(outcome.report.partners_refused.get("b").cloned());
        for c in clients {
            c.await.unwrap().unwrap();
        }
    }
    assert_eq!(refusals[0], None, "the first job fits b's cap");
    let reason = refusals[1].clone().unwrap();
    assert!(
        reason.contains("purpose `campaign_response`") && reason.contains("cap of 1"),
        "{reason}"
    );
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert!(text.contains("campaign_response"));
}

/// A positive label value that matches no row (`Yes` where the data says `yes`) fails the job
/// before training with a message naming the column and the value, in the simulator as in
/// the real flow: the statistics round counts the positives through the secure sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_value_that_matches_no_row_fails_the_job_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(quick(2).spec).unwrap();
    let spec = dir.path().join("label.toml");
    std::fs::write(
        &spec,
        shipped.replace("positive = \"yes\"", "positive = \"Yes\""),
    )
    .unwrap();
    let opts = SimOptions { spec, ..quick(2) };
    let err = sim::run(&opts).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("label column `y`: none of the partners'") && text.contains("`Yes`"),
        "{text}"
    );
}

/// The same spec, data and seed give the same model bit for bit, with secure aggregation and
/// without, even when the partner nodes have no `seed` of their own (as in a deployment):
/// training shuffles and stochastic rounding are seeded from the job's seed, the partner and
/// the round, never from the session or the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_one_seeded_job_give_the_same_model() {
    for secure in [true, false] {
        let opts = SimOptions {
            partner_seeds: false,
            secure_agg: Some(secure),
            skip_baselines: true,
            ..quick(3)
        };
        let a = sim::run(&opts).await.unwrap();
        let b = sim::run(&opts).await.unwrap();
        assert_eq!(a.model_sha256, b.model_sha256, "secure = {secure}");
        assert_eq!(a.final_metrics.auc.to_bits(), b.final_metrics.auc.to_bits());
    }
}
