//! The coordinator binary's handling of bad configuration and specs: exit code 64 and a
//! message that names what is wrong, before any port is bound.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::process::Command;

fn coordinator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedmark-coordinator"))
}

#[test]
fn bad_spec_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nroster = \"roster.toml\"\n").unwrap();
    std::fs::write(dir.path().join("roster.toml"), "[[partner]]\nid = \"a\"\npublic_key = \"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"\n").unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "[job]\nname = \"x\"\npurpose = \"p\"\nrounds = 3\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
         [features]\nnumeric = []\n[model]\nkind = \"logistic\"\n",
    )
    .unwrap();
    let out = coordinator()
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--job")
        .arg(&job)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`features` declares no feature"), "{err}");
}

#[test]
fn bad_config_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\nroster = \"roster.toml\"\n").unwrap();
    // a roster whose key is not hex
    std::fs::write(
        dir.path().join("roster.toml"),
        "[[partner]]\nid = \"a\"\npublic_key = \"zz\"\n",
    )
    .unwrap();
    let out = coordinator()
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--job")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("roster.toml"), "{err}");
}

/// dp-accounting (Google, 0.6.0) gives ε = 0.947 (PLD) and 1.035 (RDP) for this setting.
#[test]
fn privacy_epsilon_matches_dp_accounting() {
    for (accountant, range) in [("pld", 0.946..=0.948), ("rdp", 1.03..=1.06)] {
        let out = coordinator()
            .args([
                "privacy",
                "epsilon",
                "--noise-multiplier",
                "4",
                "--sampling-rate",
                "0.01",
                "--steps",
                "10000",
            ])
            .args(["--delta", "1e-5", "--json", "--accountant", accountant])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let eps = v["epsilon"].as_f64().unwrap();
        assert!(range.contains(&eps), "{accountant}: epsilon {eps}");
        assert_eq!(v["accountant"], accountant);
    }
}

#[test]
fn privacy_calibrate_round_trips_and_bad_arguments_exit_64() {
    let out = coordinator()
        .args([
            "privacy",
            "calibrate",
            "--epsilon",
            "1",
            "--delta",
            "1e-5",
            "--sampling-rate",
            "0.01",
        ])
        .args(["--steps", "10000", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sigma = v["noise_multiplier"].as_f64().unwrap();
    // By PLD (the default) ε(σ=4) ≈ 0.947 < 1, so the calibrated σ for ε = 1 is a little
    // below 4; by RDP ε(σ=4) ≈ 1.035 > 1 and it is a little above.
    assert!(sigma > 3.7 && sigma < 4.0, "sigma {sigma}");
    assert!(v["epsilon"].as_f64().unwrap() <= 1.0);
    assert_eq!(v["accountant"], "pld");
    let rdp = coordinator()
        .args(["privacy", "calibrate", "--epsilon", "1", "--delta", "1e-5"])
        .args(["--sampling-rate", "0.01", "--steps", "10000", "--json"])
        .args(["--accountant", "rdp"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&rdp.stdout).unwrap();
    let sigma = v["noise_multiplier"].as_f64().unwrap();
    assert!(sigma > 4.0 && sigma < 4.5, "rdp sigma {sigma}");
    let bad = coordinator()
        .args([
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "1",
            "--sampling-rate",
            "1.5",
            "--steps",
            "10",
        ])
        .args(["--delta", "1e-5"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("sampling"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
