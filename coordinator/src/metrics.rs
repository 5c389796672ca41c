//! Prometheus metrics and a health check for operators, and the dashboard's HTTP home.
//!
//! [`Metrics`] is a small registry the job task records into (after each commit, each abort,
//! each input chunk summed); [`serve`] answers `GET /metrics` in the Prometheus text format
//! (version 0.0.4), `GET /healthz` with `200 ok` and, when given one, the
//! [`Dashboard`]'s paths, on a listener of its own, with a
//! hand-written HTTP/1.1 responder: one request per connection, the request head bounded to
//! [`MAX_REQUEST_BYTES`] and [`REQUEST_TIMEOUT`], at most [`MAX_CONNECTIONS`] at a time.
//! Metrics carry counts, durations and ε only — never a partner's numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::dashboard::{Answer, Dashboard};

/// Largest request head read before answering 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 32;

/// Upper bounds (seconds) of the round-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug, Clone, Default)]
struct JobMetrics {
    rounds_completed: u64,
    rounds_aborted: u64,
    protocol_violations: u64,
    dropouts: u64,
    input_bytes: u64,
    participants: f64,
    epsilon: Option<f64>,
    /// Cumulative counts per bucket of [`DURATION_BUCKETS`].
    buckets: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
}

/// The coordinator's metrics, by job. Cheap to clone; every clone is the same registry.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    jobs: Arc<Mutex<BTreeMap<String, JobMetrics>>>,
}

impl Metrics {
    fn with<T>(&self, job: &str, f: impl FnOnce(&mut JobMetrics) -> T) -> T {
        // A panic elsewhere while holding the lock leaves plain counters behind: keep going.
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        f(jobs.entry(job.to_owned()).or_default())
    }

    /// A training round of `job` was committed.
    pub fn round_committed(
        &self,
        job: &str,
        seconds: f64,
        participants: usize,
        dropped: usize,
        epsilon: Option<f64>,
    ) {
        self.with(job, |m| {
            m.rounds_completed += 1;
            m.dropouts += dropped as u64;
            m.participants = participants as f64;
            if epsilon.is_some() {
                m.epsilon = epsilon;
            }
            for (count, &le) in m.buckets.iter_mut().zip(&DURATION_BUCKETS) {
                if seconds <= le {
                    *count += 1;
                }
            }
            m.duration_sum += seconds;
            m.duration_count += 1;
        });
    }

    /// An attempt of a round of `job` was aborted.
    pub fn round_aborted(&self, job: &str) {
        self.with(job, |m| m.rounds_aborted += 1);
    }

    /// A partner broke the protocol in `job` (e.g. answered one offer twice).
    pub fn protocol_violation(&self, job: &str) {
        self.with(job, |m| m.protocol_violations += 1);
    }

    /// `bytes` of input chunks were added into a round's sum.
    pub fn input_bytes(&self, job: &str, bytes: u64) {
        self.with(job, |m| m.input_bytes += bytes);
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = String::new();
        let mut family =
            |name: &str, kind: &str, help: &str, value: &dyn Fn(&JobMetrics) -> Option<f64>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (job, m) in &jobs {
                    if let Some(v) = value(m) {
                        let _ = writeln!(out, "{name}{{job=\"{}\"}} {v}", escape(job));
                    }
                }
            };
        family(
            "fedmark_rounds_completed_total",
            "counter",
            "Training rounds committed.",
            &|m| Some(m.rounds_completed as f64),
        );
        family(
            "fedmark_rounds_aborted_total",
            "counter",
            "Round attempts aborted (each is retried with a fresh cohort up to max_attempts).",
            &|m| Some(m.rounds_aborted as f64),
        );
        family(
            "fedmark_protocol_violations_total",
            "counter",
            "Partner messages refused as protocol violations (the session is closed).",
            &|m| Some(m.protocol_violations as f64),
        );
        family(
            "fedmark_dropouts_total",
            "counter",
            "Partners of a committed round's cohort that dropped out of it.",
            &|m| Some(m.dropouts as f64),
        );
        family(
            "fedmark_input_bytes_received_total",
            "counter",
            "Bytes of partner input chunks added into round sums.",
            &|m| Some(m.input_bytes as f64),
        );
        family(
            "fedmark_round_participants",
            "gauge",
            "Partners whose update is in the last committed round.",
            &|m| Some(m.participants),
        );
        family(
            "fedmark_epsilon_spent",
            "gauge",
            "Privacy spent so far (epsilon at the job's delta; differentially private jobs).",
            &|m| m.epsilon,
        );
        let name = "fedmark_round_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Wall-clock seconds of committed training rounds, retries included.\n# TYPE {name} histogram"
        );
        for (job, m) in &jobs {
            let job = escape(job);
            for (count, le) in m.buckets.iter().zip(DURATION_BUCKETS) {
                let _ = writeln!(out, "{name}_bucket{{job=\"{job}\",le=\"{le}\"}} {count}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{job=\"{job}\",le=\"+Inf\"}} {c}\n{name}_sum{{job=\"{job}\"}} {s}\n{name}_count{{job=\"{job}\"}} {c}",
                c = m.duration_count,
                s = m.duration_sum,
            );
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Binds `addr` for [`serve`]; returns the listener (its `local_addr` is the bound address,
/// so port 0 works).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics`, `/healthz` and the dashboard (when given) on `listener` until `stop`
/// completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    dashboard: Option<Dashboard>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let dashboard = dashboard.map(Arc::new);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            () = &mut stop => return,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let dashboard = dashboard.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(
                REQUEST_TIMEOUT,
                answer(stream, &metrics, dashboard.as_deref()),
            )
            .await
            .is_err()
            {
                debug!(%peer, "metrics request timed out");
            }
            drop(permit);
        });
    }
}

/// Reads one request head and answers it; the connection is then closed.
async fn answer(mut stream: TcpStream, metrics: &Metrics, dashboard: Option<&Dashboard>) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_REQUEST_BYTES {
            break false;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let (status, content_type, body) = if !complete {
        (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n".to_owned(),
        )
    } else {
        route(&head, metrics, dashboard)
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn route(head: &[u8], metrics: &Metrics, dashboard: Option<&Dashboard>) -> Answer {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines();
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method == "GET"
        && let Some(dashboard) = dashboard
    {
        let authorization = lines.find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("authorization")
                .then(|| value.trim())
        });
        if let Some(answer) = dashboard.route(path, authorization) {
            return answer;
        }
    }
    match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics and GET /healthz\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_a_histogram() {
        let m = Metrics::default();
        m.round_committed("job-a", 0.3, 3, 1, Some(0.5));
        m.round_committed("job-a", 7.0, 2, 0, None);
        m.input_bytes("job-a", 4096);
        m.round_aborted("job-a");
        let text = m.render();
        for line in [
            "fedmark_rounds_completed_total{job=\"job-a\"} 2",
            "fedmark_rounds_aborted_total{job=\"job-a\"} 1",
            "fedmark_dropouts_total{job=\"job-a\"} 1",
            "fedmark_input_bytes_received_total{job=\"job-a\"} 4096",
            "fedmark_round_participants{job=\"job-a\"} 2",
            "fedmark_epsilon_spent{job=\"job-a\"} 0.5",
            "fedmark_round_duration_seconds_bucket{job=\"job-a\",le=\"0.25\"} 0",
            "fedmark_round_duration_seconds_bucket{job=\"job-a\",le=\"0.5\"} 1",
            "fedmark_round_duration_seconds_bucket{job=\"job-a\",le=\"10\"} 2",
            "fedmark_round_duration_seconds_bucket{job=\"job-a\",le=\"+Inf\"} 2",
            "fedmark_round_duration_seconds_sum{job=\"job-a\"} 7.3",
            "fedmark_round_duration_seconds_count{job=\"job-a\"} 2",
            "# TYPE fedmark_round_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn routes() {
        let m = Metrics::default();
        assert_eq!(
            route(b"GET /healthz HTTP/1.1\r\n\r\n", &m, None).0,
            "200 OK"
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", &m, None).0,
            "200 OK"
        );
        assert_eq!(
            route(b"GET /nope HTTP/1.1\r\n\r\n", &m, None).0,
            "404 Not Found"
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n", &m, None).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"", &m, None).0, "405 Method Not Allowed");
        // Without a dashboard its paths are unknown; with one, its API reads the header.
        assert_eq!(
            route(b"GET /dashboard HTTP/1.1\r\n\r\n", &m, None).0,
            "404 Not Found"
        );
        let d = Dashboard {
            board: crate::board::Board::default(),
            store: crate::store::Store::in_memory().unwrap(),
            token: crate::admin::AdminToken::from_secret("t0k"),
        };
        let ask = |auth: &str| {
            let head = format!("GET /api/jobs HTTP/1.1\r\nHost: x\r\n{auth}\r\n\r\n");
            route(head.as_bytes(), &m, Some(&d)).0
        };
        assert_eq!(ask("authorization: Bearer t0k"), "200 OK");
        assert_eq!(ask("Authorization: Bearer nope"), "401 Unauthorized");
        assert_eq!(ask("X-Other: 1"), "401 Unauthorized");
    }

    #[tokio::test]
    async fn an_oversized_request_gets_431() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Metrics::default(), None, async {
            let _ = rx.await;
        }));
        let mut s = TcpStream::connect(addr).await.unwrap();
        let big = vec![b'a'; MAX_REQUEST_BYTES + 1];
        let _ = s.write_all(&big).await;
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply).await;
        assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 431"));
        let _ = tx.send(());
        server.await.unwrap();
    }
}
