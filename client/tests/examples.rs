//! The shipped partner configs and policy load, and the policy accepts the shipped job.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::path::Path;

use fedmark_client::config::ClientConfig;
use fedmark_client::policy::PartnerPolicy;
use fedmark_core::spec::JobSpec;

#[test]
fn example_partner_configs_and_policy_accept_the_example_job() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let policy = PartnerPolicy::load(&examples.join("partners/policy.toml")).unwrap();
    let spec =
        JobSpec::from_toml(&std::fs::read_to_string(examples.join("bank-job.toml")).unwrap())
            .unwrap();
    policy.check(&spec).unwrap();
    for partner in ["bank", "retailer", "platform"] {
        let cfg = ClientConfig::load(&examples.join(format!("partners/{partner}.toml"))).unwrap();
        assert_eq!(cfg.policy, Some(examples.join("partners/policy.toml")));
        assert!(cfg.audit.is_some() && cfg.consent.is_none());
    }
}
