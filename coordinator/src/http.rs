//! The coordinator's HTTP listener for operators: `GET /metrics` (the [`Metrics`] registry
//! in the Prometheus text format), `GET /healthz` with `200 ok` and, when given one, the
//! [`Dashboard`]'s paths. A hand-written HTTP/1.1 responder: one request per connection, the
//! request head bounded to [`MAX_REQUEST_BYTES`] and [`REQUEST_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] at a time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::dashboard::{Answer, Dashboard};
use crate::metrics::Metrics;

/// Largest request head read before answering 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 32;

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
            token: crate::token::AdminToken::from_secret("t0k"),
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
