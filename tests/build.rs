//! Detects whether Python with numpy runs, for the tests of `examples/score.py`
//! (`tests/score.rs`).
//!
//! Emits `cfg(has_numpy)` when `$FEDMARK_PYTHON -c 'import numpy'` succeeds (`FEDMARK_PYTHON`
//! defaults to `python3`); otherwise the tests are `#[ignore]`d — reported as ignored, never as
//! passed — and the build prints a warning saying so. With `FEDMARK_REQUIRE_NUMPY=1` a failed
//! import fails the build instead.
//!
//! Likewise emits `cfg(has_xgboost)` when that Python imports `xgboost` (and numpy), for the
//! check that XGBoost loads and scores an exported boosted model (`tests/gbdt_xgboost.rs`);
//! `FEDMARK_REQUIRE_XGBOOST=1` makes a failed import fail the build.
//!
//! Likewise emits `cfg(has_chromium)` and `FEDMARK_TEST_CHROMIUM` when a Chromium binary is
//! found (`FEDMARK_CHROMIUM`, else `chromium`, `chromium-browser`, `google-chrome` or
//! `google-chrome-stable` on `PATH`) for the dashboard's browser test (`tests/dashboard.rs`);
//! without one that test is ignored, and `FEDMARK_REQUIRE_CHROMIUM=1` fails the build.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    numpy();
    xgboost();
    chromium();
}

fn numpy() {
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

fn xgboost() {
    println!("cargo::rustc-check-cfg=cfg(has_xgboost)");
    println!("cargo::rerun-if-env-changed=FEDMARK_REQUIRE_XGBOOST");
    let python = std::env::var("FEDMARK_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let found = Command::new(&python)
        .args(["-c", "import numpy, xgboost"])
        .output()
        .map(|out| out.status.success());
    match found {
        Ok(true) => println!("cargo::rustc-cfg=has_xgboost"),
        outcome => {
            if std::env::var("FEDMARK_REQUIRE_XGBOOST").is_ok_and(|v| v == "1") {
                panic!(
                    "FEDMARK_REQUIRE_XGBOOST=1 but `{python} -c 'import numpy, xgboost'` failed ({outcome:?})"
                );
            }
            println!(
                "cargo::warning=`{python} -c 'import numpy, xgboost'` failed: the XGBoost export \
                 test is ignored (set FEDMARK_PYTHON to a Python with xgboost)"
            );
        }
    }
}

fn chromium() {
    println!("cargo::rustc-check-cfg=cfg(has_chromium)");
    println!("cargo::rerun-if-env-changed=FEDMARK_CHROMIUM");
    println!("cargo::rerun-if-env-changed=FEDMARK_REQUIRE_CHROMIUM");
    println!("cargo::rerun-if-env-changed=PATH");
    match find_chromium() {
        Some(path) => {
            println!("cargo::rustc-cfg=has_chromium");
            println!("cargo::rustc-env=FEDMARK_TEST_CHROMIUM={}", path.display());
        }
        None => {
            if std::env::var("FEDMARK_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
                panic!("FEDMARK_REQUIRE_CHROMIUM=1 but no Chromium binary was found");
            }
            println!(
                "cargo::warning=no Chromium found: the dashboard's browser test is ignored \
                 (set FEDMARK_CHROMIUM to a Chromium binary)"
            );
        }
    }
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FEDMARK_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|candidate| candidate.is_file())
    })
}
