//! The model card as a person reads it: Markdown rendered from the JSON card
//! ([`crate::export::model_card`], the one source of its facts) for a data scientist, a
//! marketer or a compliance officer — what the model is for and is not for, what it was
//! trained on and how, how well it does, the privacy guarantee in words and numbers, consent
//! and refusals, limitations, and the audit head that proves it. Nothing is shown that does
//! not apply (no ε under a job without differential privacy, no empty consent rounds).

use std::fmt::Write as _;

use fedmark_core::spec::{JobSpec, PrivacyMode};
use serde_json::Value;

/// File name of the Markdown card, beside the JSON one.
pub const CARD_MARKDOWN_FILE: &str = "model_card.md";

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".to_owned(),
        other => other.to_string(),
    }
}

fn number(v: &Value, digits: usize) -> String {
    v.as_f64()
        .filter(|x| x.is_finite())
        .map_or_else(|| "—".to_owned(), |x| format!("{x:.digits$}"))
}

/// Markdown with the characters that would change its structure escaped (names and reasons
/// come from specs and partners).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The card in Markdown.
pub fn markdown(card: &Value) -> String {
    let spec = card["spec_toml"]
        .as_str()
        .and_then(|t| JobSpec::from_toml(t).ok());
    let mut md = String::new();
    let name = escape(&text(&card["name"]));
    let purpose = escape(&text(&card["purpose"]));
    let _ = writeln!(md, "# Model card: {name}\n");
    let _ = writeln!(
        md,
        "Job `{}`, purpose **{purpose}**, submitted by {}. Ended: {}.\n",
        escape(&text(&card["job_id"])),
        escape(&text(&card["submitted_by"])),
        escape(&text(&card["stop_reason"])),
    );

    md.push_str("## Intended use\n\n");
    let _ = writeln!(
        md,
        "Scores each customer for **{purpose}**: the probability that the label holds, for \
         ranking an audience (for instance by decile, as `fedmark score` writes it). The \
         partners' data was used under consent for this purpose only; using the model for \
         another purpose needs consent for that purpose. It is not meant for decisions about \
         individuals that have legal or similarly significant effects.\n"
    );

    md.push_str("## Model and features\n\n");
    let _ = writeln!(
        md,
        "- {} model, {} parameters on {} inputs (SHA-256 of the parameters `{}`).",
        escape(&text(&card["model"]["kind"])),
        text(&card["model"]["params"]),
        text(&card["model"]["input_dim"]),
        text(&card["model"]["sha256"]),
    );
    if let Some(spec) = &spec {
        let _ = writeln!(
            md,
            "- Label: `{}` = `{}`.",
            escape(&spec.label.column),
            escape(&spec.label.positive)
        );
        if !spec.features.numeric.is_empty() {
            let cols: Vec<String> = spec
                .features
                .numeric
                .iter()
                .map(|c| match spec.features.range.get(c) {
                    Some([lo, hi]) => format!("`{}` (in [{lo}, {hi}])", escape(c)),
                    None => format!("`{}`", escape(c)),
                })
                .collect();
            let _ = writeln!(md, "- Numeric features: {}.", cols.join(", "));
        }
        if !spec.features.categorical.is_empty() {
            let cols: Vec<String> = spec
                .features
                .categorical
                .iter()
                .map(|c| match spec.features.vocabulary.get(c) {
                    Some(v) => format!("`{}` ({} values)", escape(c), v.len()),
                    None => format!(
                        "`{}` (hashed into {} buckets)",
                        escape(c),
                        spec.features.hash_buckets
                    ),
                })
                .collect();
            let _ = writeln!(md, "- Categorical features: {}.", cols.join(", "));
        }
        md.push_str(
            "- Excluded: every column the spec does not declare. Partners read only the declared \
             columns (and, to apply consent, their user-id column, which is never a feature).\n",
        );
    }
    md.push('\n');

    md.push_str("## Training\n\n");
    let per_round: Vec<u64> = card["partners_per_round"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let accepted: Vec<String> = card["partners_accepted"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| format!("`{}`", escape(&text(p))))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "- {} training rounds; partners per round {}–{}; accepted: {}.",
        per_round.len(),
        per_round.iter().min().copied().unwrap_or(0),
        per_round.iter().max().copied().unwrap_or(0),
        if accepted.is_empty() {
            "—".to_owned()
        } else {
            accepted.join(", ")
        }
    );
    if let Some(refused) = card["partners_refused"].as_object()
        && !refused.is_empty()
    {
        md.push_str("- Refused:\n");
        for (partner, reason) in refused {
            let _ = writeln!(md, "  - `{}`: {}", escape(partner), escape(&text(reason)));
        }
    }
    let _ = writeln!(
        md,
        "- Secure aggregation: {}.",
        if card["secure_aggregation"].as_bool() == Some(true) {
            "on — the coordinator saw only the sum of each round's updates, never one partner's"
        } else {
            "off — the coordinator saw each partner's update"
        }
    );
    if let Some(spec) = &spec {
        let _ = writeln!(
            md,
            "- Local epochs a round {}, batch {}, learning rate {}, server optimiser {}, L2 {}.",
            spec.training.local_epochs,
            spec.training.batch_size,
            spec.training.learning_rate,
            spec.training.server_optimizer.as_str(),
            spec.model.l2
        );
    }
    md.push('\n');

    md.push_str("## Performance\n\n");
    let m = &card["metrics"];
    let _ = write!(
        md,
        "On the partners' holdout rows ({} rows), combined through the secure sum: AUC {}, \
         log-loss {}, accuracy {}, lift in the top decile {}.",
        text(&m["rows"]),
        number(&m["auc"], 4),
        number(&m["log_loss"], 4),
        number(&m["accuracy"], 4),
        number(&m["lift_top_decile"], 2),
    );
    if m["auc"].as_f64().is_none_or(f64::is_nan) {
        md.push_str(" No federated evaluation was released for this job.");
    }
    md.push_str("\n\n");

    md.push_str("## Privacy\n\n");
    let p = &card["privacy"];
    let mode = text(&p["mode"]);
    if mode == "none" {
        md.push_str(
            "No differential privacy: the model and its metrics are not noised, so they can \
             reveal something about individual records.",
        );
        if card["secure_aggregation"].as_bool() == Some(true) {
            md.push_str(
                " Secure aggregation still kept each partner's update from the coordinator.",
            );
        }
        md.push_str("\n\n");
    } else {
        let _ = writeln!(md, "**{}**.\n", escape(&text(&p["guarantee"])));
        md.push_str("| | |\n| --- | --- |\n");
        let _ = writeln!(md, "| mode | `{}` |", escape(&mode));
        let _ = writeln!(md, "| protects | {} |", escape(&text(&p["protected_unit"])));
        let _ = writeln!(
            md,
            "| ε spent (budget) | {} ({}) |",
            number(&p["epsilon"], 4),
            number(&p["epsilon_budget"], 4)
        );
        let _ = writeln!(md, "| δ | {} |", text(&p["delta"]));
        if !p["epsilon_training"].is_null() {
            let _ = writeln!(
                md,
                "| ε of the training rounds | {} |",
                number(&p["epsilon_training"], 4)
            );
        }
        if !p["epsilon_evaluation"].is_null() {
            let _ = writeln!(
                md,
                "| ε of the final evaluation (holdout rows) | {} |",
                number(&p["epsilon_evaluation"], 4)
            );
        }
        let _ = writeln!(md, "| composition | {} |", escape(&text(&p["composition"])));
        let accountant = match p["accountant_parameters"].as_str() {
            Some(detail) if !detail.is_empty() => format!("{} ({detail})", text(&p["accountant"])),
            _ => text(&p["accountant"]),
        };
        let _ = writeln!(md, "| accountant | {} |", escape(&accountant));
        if p["calibrated_by"].as_str().is_some_and(|c| !c.is_empty()) {
            let _ = writeln!(
                md,
                "| σ calibrated by | {} |",
                escape(&text(&p["calibrated_by"]))
            );
        }
        let _ = writeln!(
            md,
            "| noise multiplier σ, clip C | {}, {} |\n",
            number(&p["noise_multiplier"], 4),
            text(&p["clip"])
        );
        if spec
            .as_ref()
            .is_some_and(|s| s.privacy.mode == PrivacyMode::Record)
        {
            md.push_str(
                "Every value a partner sent is either fixed by the spec or noised and charged to \
                 this budget; the federated metrics above come from noised statistics.\n\n",
            );
        }
    }

    md.push_str("## Consent\n\n");
    let rounds_with: Vec<&Value> = card["consent_snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["snapshots"].as_object().is_some_and(|m| !m.is_empty()))
                .collect()
        })
        .unwrap_or_default();
    if rounds_with.is_empty() {
        md.push_str(
            "No partner applied a consent source in this job (partners without `consent` in \
             their config use all their rows).\n\n",
        );
    } else {
        let mut partners = std::collections::BTreeSet::new();
        for r in &rounds_with {
            if let Some(m) = r["snapshots"].as_object() {
                partners.extend(m.keys().cloned());
            }
        }
        let names: Vec<String> = partners
            .iter()
            .map(|p| format!("`{}`", escape(p)))
            .collect();
        let _ = writeln!(
            md,
            "In {} rounds, {} used only the records consented to for this purpose at the \
             round's start. Each left a fresh salted commitment to its snapshot (in the JSON \
             card); the partner's own audit file opens it for a regulator.\n",
            rounds_with.len(),
            names.join(", ")
        );
    }

    md.push_str("## Limitations\n\n");
    md.push_str(
        "- Measured on the partners' holdouts at training time: on other customers, other \
         channels or later campaigns it may do worse; monitor it.\n\
         - A model trained across partners reflects their combined populations; a partner whose \
         customers differ may see other performance on its own.\n",
    );
    if mode != "none" {
        md.push_str(
            "- Differential privacy adds noise: the model is less accurate than one trained \
             without it, and its federated metrics are noisy.\n",
        );
    }
    if card["model"]["kind"] == "logistic" {
        md.push_str(
            "- A linear model on the declared features: no interactions unless declared.\n",
        );
    }
    md.push('\n');

    md.push_str("## Audit\n\n");
    let _ = writeln!(
        md,
        "Coordinator audit chain head when this card was written: `{}`. \
         `fedmark audit export` exports the records; the chain verifies from its first record.",
        text(&card["audit_head"])
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn card(privacy: Value, secure: bool) -> Value {
        json!({
            "job_id": "job-0123456789ab",
            "name": "campaign|response *x*",
            "purpose": "campaign_response",
            "spec_toml": "[job]\nname = \"t\"\npurpose = \"campaign_response\"\nrounds = 2\n[label]\ncolumn = \"y\"\npositive = \"yes\"\n[features]\nnumeric = [\"age\"]\nrange = { age = [18.0, 90.0] }\ncategorical = [\"job\"]\n[model]\nkind = \"logistic\"\n",
            "submitted_by": "admin",
            "model": {"kind": "logistic", "params": 10, "input_dim": 9, "sha256": "ab"},
            "metrics": {"auc": 0.77, "log_loss": 0.3, "accuracy": 0.89, "lift_top_decile": 4.1, "rows": 900},
            "privacy": privacy,
            "secure_aggregation": secure,
            "partners_per_round": [3, 2],
            "partners_accepted": ["bank", "retailer", "platform"],
            "partners_refused": {"brand": "column `balance` is not in this partner's allowed features"},
            "committed_rounds": [1, 2],
            "consent_snapshots": [{"round": 1, "snapshots": {}}, {"round": 2, "snapshots": {"bank": "c1"}}],
            "stop_reason": "completed 2 rounds",
            "audit_head": "ff",
        })
    }

    #[test]
    fn a_card_without_dp_shows_no_epsilon_and_a_dp_card_states_the_guarantee() {
        let none = markdown(&card(json!({"mode": "none"}), true));
        for section in [
            "# Model card",
            "## Intended use",
            "## Model and features",
            "## Training",
            "## Performance",
            "## Privacy",
            "## Consent",
            "## Limitations",
            "## Audit",
        ] {
            assert!(none.contains(section), "{section}");
        }
        assert!(none.contains("No differential privacy"));
        assert!(!none.contains('ε'), "no ε under mode none:\n{none}");
        assert!(
            none.contains("campaign\\|response \\*x\\*"),
            "names are escaped"
        );
        assert!(none.contains("`age` (in [18, 90])"));
        assert!(none.contains("`job` (hashed into"));
        assert!(none.contains("In 1 rounds, `bank` used only"), "{none}");
        assert!(none.contains("`brand`: column \\`balance\\`"));
        assert!(none.contains("partners per round 2–3"));

        let dp = markdown(&card(
            json!({
                "mode": "record", "protected_unit": "one record",
                "guarantee": "(1.0000, 1e-5)-differential privacy for one record over every release of the job",
                "epsilon": 0.91, "delta": 1e-5, "epsilon_budget": 1.0, "accountant": "pld",
                "accountant_parameters": "discretisation interval 2.900e-4",
                "calibrated_by": "rdp",
                "composition": "parallel: training and holdout rows are disjoint",
                "epsilon_training": 0.91, "epsilon_evaluation": 0.43,
                "noise_multiplier": 1.98, "clip": 1.0,
            }),
            false,
        ));
        assert!(
            dp.contains(
                "| accountant | pld (discretisation interval 2.900e-4) |\n| σ calibrated by | rdp |"
            ),
            "{dp}"
        );
        assert!(dp.contains("**(1.0000, 1e-5)-differential privacy for one record"));
        assert!(dp.contains("| ε of the final evaluation (holdout rows) | 0.4300 |"));
        assert!(dp.contains("| mode | `record` |"));
        assert!(!dp.contains("Record"), "one spelling of the mode");
        assert!(dp.contains("off — the coordinator saw each partner's update"));
        assert!(dp.contains("Differential privacy adds noise"));
    }
}
