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
