//! Withdrawn users contribute nothing: a partner's round values computed with the consent
//! filter equal, bit for bit, the ones computed from a file with those users' rows deleted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::collections::BTreeSet;

use fedmark_client::consent::ConsentSource;
use fedmark_client::contribution::JobContext;
use fedmark_client::data::{HoldoutSplit, load_reader_keyed};
use fedmark_core::features::Standardizer;
use fedmark_core::model::{Architecture, Model};
use fedmark_core::spec::JobSpec;
use rand::SeedableRng;
use rand::rngs::StdRng;

const SPEC: &str = r#"
[job]
name = "t"
purpose = "ads"
rounds = 3
[label]
column = "y"
positive = "yes"
[features]
numeric = ["age", "balance"]
categorical = ["job"]
vocabulary = { job = ["a", "b", "c"] }
[model]
kind = "logistic"
[training]
batch_size = 8
"#;

/// 300 rows of 120 users (some users have several rows), with a garbage column that is
/// never declared.
fn rows() -> Vec<(String, String)> {
    (0..300u32)
        .map(|i| {
            let user = format!("user-{}", (i * 7) % 120);
            let line = format!(
                "{user},{},{}.5,{},\u{1F4A5}{i},{}",
                20 + i % 50,
                (i * 37) % 1000,
                ["a", "b", "c"][(i % 3) as usize],
                if (i * 13) % 5 == 0 { "yes" } else { "no" }
            );
            (user, line)
        })
        .collect()
}

fn csv(keep: impl Fn(&str) -> bool) -> String {
    let mut text = String::from("user_id,age,balance,job,junk,y\n");
    for (user, line) in rows() {
        if keep(&user) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text
}

fn values(ctx: &mut JobContext) -> Vec<Vec<f64>> {
    let stats = ctx.statistics();
    let standardizer = Standardizer::from_moments(&ctx.data.train.moments());
    let mut rng = StdRng::seed_from_u64(3);
    let model = Model::init(
        Architecture::from_spec(&ctx.spec),
        ctx.schema.dim(),
        &mut rng,
    );
    let train = ctx
        .training(&model, &standardizer, None, &mut StdRng::seed_from_u64(11))
        .unwrap();
    let eval = ctx
        .evaluation(&model, &standardizer, &mut StdRng::seed_from_u64(12))
        .unwrap();
    vec![stats.stats, train.update, train.stats, eval.stats]
}

#[test]
fn a_withdrawal_removes_exactly_the_users_rows_and_all_their_influence() {
    let spec = JobSpec::from_toml(SPEC).unwrap();
    let split = HoldoutSplit {
        fraction: 0.25,
        seed: 9,
    };
    // Everyone consents at t=100; ten users withdraw at t=200.
    let withdrawn: BTreeSet<String> = (0..10).map(|u| format!("user-{}", u * 11)).collect();
    let mut consent = String::from("user_id,purpose,granted_at,withdrawn_at\n");
    for u in 0..120 {
        let id = format!("user-{u}");
        let w = if withdrawn.contains(&id) { "200" } else { "" };
        consent.push_str(&format!("{id},ads,100,{w}\n"));
    }
    let source = ConsentSource::from_reader(consent.as_bytes(), "consent.csv").unwrap();

    let keyed =
        load_reader_keyed(csv(|_| true).as_bytes(), "p.csv", &spec, split, "user_id").unwrap();
    let mut ctx = JobContext::with_consent(spec.clone(), keyed, None);
    ctx.apply_consent(&source.snapshot("ads", 150));
    let before = ctx.data.train.len() + ctx.data.holdout.len();
    assert_eq!(before, 300, "everyone consents at t=150");
    ctx.apply_consent(&source.snapshot("ads", 250));
    let after = ctx.data.train.len() + ctx.data.holdout.len();
    let withdrawn_rows = rows().iter().filter(|(u, _)| withdrawn.contains(u)).count();
    assert!(
        withdrawn_rows > withdrawn.len(),
        "some withdrawn users have several rows"
    );
    assert_eq!(before - after, withdrawn_rows);
    let filtered = values(&mut ctx);

    // The same partner with the withdrawn users' rows physically deleted from its file.
    let deleted = load_reader_keyed(
        csv(|u| !withdrawn.contains(u)).as_bytes(),
        "p.csv",
        &spec,
        split,
        "user_id",
    )
    .unwrap();
    assert_eq!(deleted.all.train.len() + deleted.all.holdout.len(), after);
    let mut ctx = JobContext::new(spec, deleted.all, None);
    assert_eq!(filtered, values(&mut ctx));
}
