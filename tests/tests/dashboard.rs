//! The dashboard in a real browser: the simulator runs a job with `--metrics-listen` and
//! `--linger`, headless Chromium loads `/dashboard#token=…`, and the page it renders (read with
//! `--dump-dom`) must show the job finished with its chart drawn over every round, the
//! privacy panel and the audit chain head. With a wrong token the page says it was refused and
//! draws nothing.
//!
//! The test needs a Chromium binary (`chromium`, `chromium-browser`, `google-chrome`, or the
//! path in `FEDMARK_CHROMIUM`), found by `tests/build.rs`. Without one the test is ignored —
//! reported as such, never as passed — so the rest of the suite does not depend on a browser;
//! `.ci/run` installs the distribution's `chromium` and sets `FEDMARK_REQUIRE_CHROMIUM=1`,
//! which turns a missing browser into a build failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fedmark_tests::procs::{Guard, binary};
use fedmark_tests::sim::workspace_root;

const ROUNDS: usize = 4;

/// Renders `url` in headless Chromium and returns the DOM after the page's scripts ran.
fn dump_dom(browser: &PathBuf, url: &str, profile: &std::path::Path) -> String {
    let mut child = Guard(
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                "--virtual-time-budget=8000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromium"),
    );
    let mut out = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        let _ = out.read_to_string(&mut dom);
        dom
    });
    let status = child.wait(Duration::from_secs(90)).expect("chromium hung");
    assert!(status.success(), "chromium exited with {status}");
    reader.join().unwrap()
}

/// Status code of a GET over plain TCP.
fn status_of(addr: &str, path: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
#[cfg_attr(
    not(has_chromium),
    ignore = "no Chromium found (set FEDMARK_CHROMIUM to a Chromium binary)"
)]
fn the_dashboard_shows_the_simulated_job_in_a_browser() {
    let Some(browser) = option_env!("FEDMARK_TEST_CHROMIUM").map(PathBuf::from) else {
        panic!("tests/build.rs found no Chromium; run with FEDMARK_CHROMIUM set");
    };
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Guard(
        Command::new(binary("fedmark-sim").unwrap())
            .current_dir(workspace_root())
            .args([
                "--partners",
                "3",
                "--rounds",
                &ROUNDS.to_string(),
                "--no-baselines",
                "--metrics-listen",
                "127.0.0.1:0",
                "--linger",
            ])
            .arg("--report")
            .arg(dir.path().join("report.json"))
            .arg("--audit-dir")
            .arg(dir.path().join("audit"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel::<String>();
    let err = sim.0.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let out = sim.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The dashboard's address (stderr) and the job's end (stdout), within a bounded wait.
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut url, mut finished) = (None, false);
    while url.is_none() || !finished {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the simulation did not finish in time");
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(u) = line.strip_prefix("coordinator dashboard on ") {
                    url = Some(u.trim().to_owned());
                }
                if line.contains("still serving the metrics and dashboard") {
                    finished = true;
                }
            }
            Err(e) => panic!("the simulation ended early: {e}"),
        }
    }
    let url = url.unwrap();
    let (base, token) = url.split_once("#token=").unwrap();
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches("/dashboard");
    // The data needs the token; the page itself holds none.
    assert_eq!(status_of(addr, "/api/jobs"), 401);
    assert_eq!(status_of(addr, "/dashboard"), 200);

    let dom = dump_dom(&browser, &url, &dir.path().join("profile"));
    assert!(
        dom.contains(&format!("data-rounds=\"{ROUNDS}\"")),
        "the chart does not show {ROUNDS} rounds:\n{dom}"
    );
    assert!(
        dom.contains(&format!("{ROUNDS} of {ROUNDS} rounds")),
        "{dom}"
    );
    assert!(dom.contains("class=\"status-finished\""), "{dom}");
    assert!(dom.contains("data-series=\"auc\""), "{dom}");
    assert!(dom.contains("no differential privacy in this job"), "{dom}");
    let head = dom
        .split("id=\"audit-head\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap_or("");
    assert!(
        head.len() == 64 && head.bytes().all(|b| b.is_ascii_hexdigit()),
        "audit head {head:?}"
    );
    assert!(
        !dom.contains(token),
        "the token must not end up in the page"
    );

    // A wrong token: refused, nothing drawn.
    let wrong = format!("{base}#token={}", "0".repeat(64));
    let dom = dump_dom(&browser, &wrong, &dir.path().join("profile2"));
    assert!(dom.contains("The admin token was refused."), "{dom}");
    assert!(!dom.contains("data-rounds="), "{dom}");
    sim.kill9().unwrap();
}
