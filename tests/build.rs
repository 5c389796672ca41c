//! Detects whether Python with numpy runs, for the tests of `examples/score.py`
//! (`tests/score.rs`).
//!
//! Emits `cfg(has_numpy)` when `$FEDMARK_PYTHON -c 'import numpy'` succeeds (`FEDMARK_PYTHON`
//! defaults to `python3`); otherwise the tests are `#[ignore]`d — reported as ignored, never as
//! passed — and the build prints a warning saying so. With `FEDMARK_REQUIRE_NUMPY=1` a failed
//! import fails the build instead.

use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_numpy)");
    println!("cargo::rerun-if-env-changed=FEDMARK_PYTHON");
    println!("cargo::rerun-if-env-changed=FEDMARK_REQUIRE_NUMPY");
    println!("cargo::rerun-if-changed=build.rs");
    let python = std::env::var("FEDMARK_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    // The tests run the Python that was checked.
    println!("cargo::rustc-env=FEDMARK_TEST_PYTHON={python}");
    let found = Command::new(&python)
        .args(["-c", "import numpy"])
        .output()
        .map(|out| out.status.success());
    match found {
        Ok(true) => println!("cargo::rustc-cfg=has_numpy"),
        outcome => {
            if std::env::var("FEDMARK_REQUIRE_NUMPY").is_ok_and(|v| v == "1") {
                panic!(
                    "FEDMARK_REQUIRE_NUMPY=1 but `{python} -c 'import numpy'` failed ({outcome:?})"
                );
            }
            println!(
                "cargo::warning=`{python} -c 'import numpy'` failed: the examples/score.py tests \
                 are ignored (set FEDMARK_PYTHON to a Python with numpy)"
            );
        }
    }
}
