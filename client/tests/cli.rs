//! The client binary's handling of a bad configuration: exit code 64 and the field named.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::process::Command;

#[test]
fn bad_config_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("client.toml");
    std::fs::write(&cfg, "coordinator = \"http://127.0.0.1:1\"\npartner_id = \"bank\"\ndata = \"d.csv\"\nholdout_fraction = 2.0\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fedmark-client"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`holdout_fraction` must be in [0, 1)"),
        "{err}"
    );
}
