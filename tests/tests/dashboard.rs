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
//!
//! Under mutual TLS (the other tests, a real listener on 127.0.0.1:0 with certificates from
//! a fresh consortium CA): an admin certificate and the admin token read the API; a partner's
//! certificate, or none, gets `403` on every dashboard path while `/healthz` and `/metrics`
//! answer without a certificate; plain HTTP to the TLS port gets no HTTP answer; a handshake
//! left unfinished is dropped after `TLS_HANDSHAKE_TIMEOUT` and meanwhile `/healthz` answers
//! another client. (That the dashboard is served on a non-loopback address over TLS only is
//! unit-tested on `serves_dashboard_on`: these tests bind loopback only.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fedmark_coordinator::admin::AdminToken;
use fedmark_coordinator::board::Board;
use fedmark_coordinator::dashboard::Dashboard;
use fedmark_coordinator::http::{self, HttpTls, TLS_HANDSHAKE_TIMEOUT};
use fedmark_coordinator::metrics::Metrics;
use fedmark_coordinator::store::Store;
use fedmark_coordinator::tls::DevCerts;
use fedmark_tests::https;
use fedmark_tests::procs::{Guard, binary};
use fedmark_tests::sim::workspace_root;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

const TOKEN: &str = "dashboard-test-token";

/// The operators' listener over TLS on 127.0.0.1:0 with a dashboard, as the coordinator
/// serves it under mutual TLS; certificates for a partner `bank` and an admin. Stops when
/// the returned sender is dropped.
async fn tls_listener() -> (DevCerts, SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let certs = DevCerts::generate("consortium CA", &["bank".to_owned()]).unwrap();
    let c = &certs.coordinator;
    let tls = HttpTls::new(&certs.ca_pem, &c.cert_pem, &c.key_pem).unwrap();
    let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dashboard = Dashboard {
        board: Board::default(),
        store: Store::in_memory().unwrap(),
        token: AdminToken::from_secret(TOKEN),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(http::serve(
        listener,
        Metrics::default(),
        Some(dashboard),
        Some(tls),
        async {
            let _ = stopped.await;
        },
    ));
    (certs, addr, stop)
}

#[tokio::test]
async fn over_tls_an_admin_certificate_and_the_token_read_the_api() {
    let (certs, addr, _stop) = tls_listener().await;
    let admin = https::client_config(&certs.ca_pem, Some(&certs.admin)).unwrap();
    let (code, body) = https::get(addr, admin.clone(), "/api/jobs", Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["jobs"].is_array() && v["audit_head"].is_string(), "{v}");
    // The certificate alone is not enough for the data; the page itself holds none.
    let (code, _) = https::get(addr, admin.clone(), "/api/jobs", None)
        .await
        .unwrap();
    assert_eq!(code, 401);
    let (code, _) = https::get(addr, admin.clone(), "/api/jobs", Some("wrong"))
        .await
        .unwrap();
    assert_eq!(code, 401);
    let (code, page) = https::get(addr, admin, "/dashboard", None).await.unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("<script"), "{page}");
}

#[tokio::test]
async fn over_tls_a_partner_certificate_is_refused_the_dashboard() {
    let (certs, addr, _stop) = tls_listener().await;
    let bank = https::client_config(&certs.ca_pem, Some(&certs.partners[0])).unwrap();
    for path in ["/api/jobs", "/dashboard", "/dashboard.js", "/"] {
        let (code, body) = https::get(addr, bank.clone(), path, Some(TOKEN))
            .await
            .unwrap();
        assert_eq!(code, 403, "{path}: {body}");
        assert!(
            body.contains("names `bank`, not an administrator"),
            "{path}: {body}"
        );
        assert!(!body.contains(TOKEN));
    }
    let (code, _) = https::get(addr, bank, "/healthz", None).await.unwrap();
    assert_eq!(code, 200);
}

#[tokio::test]
async fn over_tls_without_a_certificate_health_and_metrics_answer_and_the_dashboard_does_not() {
    let (certs, addr, _stop) = tls_listener().await;
    let anonymous = https::client_config(&certs.ca_pem, None).unwrap();
    let health = https::get(addr, anonymous.clone(), "/healthz", None)
        .await
        .unwrap();
    assert_eq!(health, (200, "ok\n".to_owned()));
    let (code, _) = https::get(addr, anonymous.clone(), "/metrics", None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    for (path, token) in [("/dashboard", None), ("/api/jobs", Some(TOKEN))] {
        let (code, body) = https::get(addr, anonymous.clone(), path, token)
            .await
            .unwrap();
        assert_eq!(code, 403, "{path}: {body}");
        assert!(
            body.contains("administrator's client certificate"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let (certs, addr, _stop) = tls_listener().await;
    let stranger = DevCerts::generate("another CA", &[]).unwrap();
    // Trusts the right server, presents an admin certificate the consortium did not issue.
    let config = https::client_config(&certs.ca_pem, Some(&stranger.admin)).unwrap();
    let refused = https::get(addr, config, "/healthz", None).await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let (certs, addr, _stop) = tls_listener().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "the server kept a plain-HTTP connection open");
    assert!(
        !reply.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // The listener still serves TLS.
    let anonymous = https::client_config(&certs.ca_pem, None).unwrap();
    let (code, _) = https::get(addr, anonymous, "/healthz", None).await.unwrap();
    assert_eq!(code, 200);
}

/// Two clients that open a connection and never finish the handshake (one silent, one after
/// half a record header): `/healthz` answers a third meanwhile, well before the timeout, and
/// both are dropped once `TLS_HANDSHAKE_TIMEOUT` has passed.
#[tokio::test]
async fn a_stalled_handshake_is_dropped_after_the_timeout_and_health_still_answers() {
    let (certs, addr, _stop) = tls_listener().await;
    let start = tokio::time::Instant::now();
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(&[0x16, 0x03]).await.unwrap();
    let anonymous = https::client_config(&certs.ca_pem, None).unwrap();
    let (code, _) = https::get(addr, anonymous.clone(), "/healthz", None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        start.elapsed() < TLS_HANDSHAKE_TIMEOUT,
        "/healthz waited for the stalled handshakes"
    );
    let limit = TLS_HANDSHAKE_TIMEOUT + Duration::from_secs(5);
    let dropped = |mut s: TcpStream| async move {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(limit, s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return start.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("a stalled handshake was still open after {limit:?}"),
            }
        }
    };
    let (a, b) = tokio::join!(dropped(silent), dropped(partial));
    for at in [a, b] {
        assert!(at >= TLS_HANDSHAKE_TIMEOUT, "dropped after {at:?}");
        assert!(at < limit, "dropped after {at:?}");
    }
    let (code, _) = https::get(addr, anonymous, "/healthz", None).await.unwrap();
    assert_eq!(code, 200);
}
