//! The coordinator's Prometheus endpoint with the real binaries: `metrics_listen` on
//! 127.0.0.1:0, `/healthz` answers 200 `ok`, and `/metrics` read over plain TCP while a
//! multi-round job runs shows the completed-round counter rising and input bytes counted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use fedmark_tests::procs::Deployment;
use fedmark_tests::sim::workspace_root;

const ROUNDS: u64 = 12;

/// One HTTP/1.1 GET over a fresh connection: (status code, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// The value of a sample line `name{job="…"} value`, if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_rise_during_a_job_and_health_answers() {
    let job = std::fs::read_to_string(workspace_root().join("examples/bank-job.toml"))
        .unwrap()
        .replace("rounds = 20", &format!("rounds = {ROUNDS}"));
    let d = Deployment::new(&job).unwrap();
    d.enable_metrics().unwrap();
    let c = d.start_coordinator(&[]).unwrap();
    let at = c
        .metrics
        .expect("the coordinator names its metrics address");
    assert_eq!(get(at, "/healthz").unwrap(), (200, "ok\n".to_owned()));
    assert_eq!(get(at, "/nowhere").unwrap().0, 404);
    let (code, before) = get(at, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(before.contains("# TYPE fedmark_rounds_completed_total counter"));
    assert_eq!(sample(&before, "fedmark_rounds_completed_total"), None);

    let mut clients = d.start_clients(c.addr).unwrap();
    let mut process = c.process;
    // Poll until the coordinator exits (bounded): every successful read is one sample.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut samples: Vec<(f64, f64, String)> = Vec::new();
    while Instant::now() < deadline && process.0.try_wait().unwrap().is_none() {
        if let Ok((200, text)) = get(at, "/metrics")
            && let Some(rounds) = sample(&text, "fedmark_rounds_completed_total")
        {
            let bytes = sample(&text, "fedmark_input_bytes_received_total").unwrap_or(0.0);
            samples.push((rounds, bytes, text));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = process.wait(Duration::from_secs(60)).unwrap();
    assert!(
        status.success(),
        "coordinator: {status}\n{}",
        d.client_logs()
    );
    for client in &mut clients {
        assert!(client.wait(Duration::from_secs(60)).unwrap().success());
    }

    // Counters never go back; the first read with a completed round ("during") and the
    // last read before the coordinator left ("after") show the counter rising.
    for w in samples.windows(2) {
        assert!(w[1].0 >= w[0].0 && w[1].1 >= w[0].1, "a counter went down");
    }
    let during = samples.iter().find(|s| s.0 >= 1.0).expect("a read mid-job");
    let after = samples.last().expect("a read");
    assert!(
        after.0 > during.0,
        "rounds completed {} then {} over {} reads",
        during.0,
        after.0,
        samples.len()
    );
    assert!(during.1 > 0.0 && after.1 > during.1, "input bytes counted");
    assert!(after.0 <= ROUNDS as f64);
    let text = &after.2;
    assert_eq!(sample(text, "fedmark_round_participants"), Some(3.0));
    assert_eq!(sample(text, "fedmark_dropouts_total"), Some(0.0));
    assert_eq!(sample(text, "fedmark_rounds_aborted_total"), Some(0.0));
    assert_eq!(
        sample(text, "fedmark_round_duration_seconds_count"),
        Some(after.0)
    );
    assert!(text.contains("fedmark_round_duration_seconds_bucket{job=\""));
    assert!(text.contains("le=\"+Inf\"}"));
    let report = d.report().unwrap();
    assert_eq!(report["rounds"].as_array().unwrap().len() as u64, ROUNDS);
}
