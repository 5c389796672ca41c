//! Detects whether Google's `dp-accounting` is importable by Python, for the test that
//! compares the PLD accountant with it live (`tests/pld_reference.rs`).
//!
//! Emits `cfg(has_dp_accounting)` when `$FEDMARK_PYTHON -c 'import dp_accounting'` succeeds
//! (`FEDMARK_PYTHON` defaults to `python3`); the test is `#[ignore]`d otherwise. With
//! `FEDMARK_REQUIRE_DP_ACCOUNTING=1` (set by `.ci/run`) a failed import fails the build
//! instead, so CI cannot skip the comparison silently.

use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_dp_accounting)");
    println!("cargo::rerun-if-env-changed=FEDMARK_PYTHON");
    println!("cargo::rerun-if-env-changed=FEDMARK_REQUIRE_DP_ACCOUNTING");
    println!("cargo::rerun-if-changed=build.rs");
    let python = std::env::var("FEDMARK_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let found = Command::new(&python)
        .args(["-c", "import dp_accounting"])
        .output()
        .map(|out| out.status.success());
    match found {
        Ok(true) => println!("cargo::rustc-cfg=has_dp_accounting"),
        outcome => {
            let required = std::env::var("FEDMARK_REQUIRE_DP_ACCOUNTING").is_ok_and(|v| v == "1");
            if required {
                panic!(
                    "FEDMARK_REQUIRE_DP_ACCOUNTING=1 but `{python} -c 'import dp_accounting'` failed \
                     ({outcome:?}); install it with `{python} -m pip install dp-accounting` or \
                     point FEDMARK_PYTHON at a Python that has it"
                );
            }
        }
    }
}
