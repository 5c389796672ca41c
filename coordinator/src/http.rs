//! The coordinator's HTTP listener for operators: `GET /metrics` (the [`Metrics`] registry
//! in the Prometheus text format), `GET /healthz` with `200 ok` and, when given one, the
//! [`Dashboard`]'s paths.
//!
//! Served by hyper's HTTP/1.1 server (strict parsing: no obs-fold, no space before a header's
//! colon, no headers in a body), one request per connection, the request head bounded to
//! [`MAX_REQUEST_BYTES`] and to [`HEADER_READ_TIMEOUT`] — a client that trickles its head
//! (slowloris) holds a connection for that long at most — and the whole exchange to
//! [`REQUEST_TIMEOUT`], at most [`MAX_CONNECTIONS`] at a time. Dashboard responses carry a
//! content security policy and the usual hardening headers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::dashboard::{Answer, Dashboard};
use crate::metrics::Metrics;

/// Largest request head read (hyper's smallest buffer limit); a longer head is refused.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to send its request and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;

/// The dashboard's content security policy: its own script and API only; inline style (the
/// page's one `<style>` block) but no inline script; no framing, no forms, no plugins.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether the dashboard may be served on `addr`: only on a loopback address, since its API
/// takes the admin token over plain HTTP (a non-loopback listener serves metrics and health
/// alone).
pub fn serves_dashboard_on(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Binds `addr` for [`serve`]; returns the listener (its `local_addr` is the bound address,
/// so port 0 works).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics`, `/healthz` and the dashboard (when given, and only on a loopback
/// address: see [`serves_dashboard_on`]) on `listener` until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    dashboard: Option<Dashboard>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let loopback = listener.local_addr().is_ok_and(|a| serves_dashboard_on(&a));
    if dashboard.is_some() && !loopback {
        tracing::warn!(
            "the dashboard is served on a loopback address only (its API takes the admin token over plain HTTP); serving metrics and health alone"
        );
    }
    let dashboard = dashboard.filter(|_| loopback).map(Arc::new);
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
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = route(&request, &metrics, dashboard.as_deref());
                async move { Ok::<_, Infallible>(response(answer)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(REQUEST_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection failed"),
                Err(_) => debug!(%peer, "metrics request timed out"),
            }
            drop(permit);
        });
    }
}

/// The answer to a request: the dashboard's paths (when served), `/metrics` and `/healthz`.
fn route<B>(request: &Request<B>, metrics: &Metrics, dashboard: Option<&Dashboard>) -> Answer {
    let path = request.uri().path();
    let get = request.method() == Method::GET;
    if get && let Some(dashboard) = dashboard {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Some(answer) = dashboard.route(path, authorization) {
            return answer;
        }
    }
    match (get, path) {
        (true, "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (true, "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        (true, _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        (false, _) => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics and GET /healthz\n".to_owned(),
        ),
    }
}

/// The HTTP response of an answer; HTML and scripts get the dashboard's hardening headers.
fn response((status, content_type, body): Answer) -> Response<Full<Bytes>> {
    let code = status
        .get(..3)
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if content_type.starts_with("text/html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(DASHBOARD_CSP),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn request(method: &str, path: &str, auth: Option<&str>) -> Request<()> {
        let mut r = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn the_dashboard_is_served_on_loopback_only() {
        for (addr, ok) in [
            ("127.0.0.1:9464", true),
            ("[::1]:9464", true),
            ("0.0.0.0:9464", false),
            ("192.168.1.4:9464", false),
        ] {
            assert_eq!(serves_dashboard_on(&addr.parse().unwrap()), ok, "{addr}");
        }
    }

    #[test]
    fn routes() {
        let m = Metrics::default();
        let status = |r: &Request<()>, d: Option<&Dashboard>| route(r, &m, d).0;
        assert_eq!(status(&request("GET", "/healthz", None), None), "200 OK");
        assert_eq!(
            status(&request("GET", "/metrics?x=1", None), None),
            "200 OK"
        );
        assert_eq!(
            status(&request("GET", "/nope", None), None),
            "404 Not Found"
        );
        assert_eq!(
            status(&request("POST", "/metrics", None), None),
            "405 Method Not Allowed"
        );
        // Without a dashboard its paths are unknown; with one, its API reads the header.
        assert_eq!(
            status(&request("GET", "/dashboard", None), None),
            "404 Not Found"
        );
        let d = Dashboard {
            board: crate::board::Board::default(),
            store: crate::store::Store::in_memory().unwrap(),
            token: crate::token::AdminToken::from_secret("t0k"),
        };
        let ask = |auth: Option<&str>| status(&request("GET", "/api/jobs", auth), Some(&d));
        assert_eq!(ask(Some("Bearer t0k")), "200 OK");
        assert_eq!(ask(Some("Bearer nope")), "401 Unauthorized");
        assert_eq!(ask(None), "401 Unauthorized");
        let page = response(route(&request("GET", "/dashboard", None), &m, Some(&d)));
        let csp = page.headers().get(header::CONTENT_SECURITY_POLICY).unwrap();
        assert!(csp.to_str().unwrap().contains("frame-ancestors 'none'"));
        assert_eq!(page.headers()[header::X_FRAME_OPTIONS], "DENY");
    }

    async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(raw).await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply)).await;
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// What the hand-written responder let through is refused: an oversized head, a header
    /// split by obs-fold, a space before a header's colon; a header in the body is not a
    /// header.
    #[tokio::test]
    async fn parsing_is_strict() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let d = Dashboard {
            board: crate::board::Board::default(),
            store: crate::store::Store::in_memory().unwrap(),
            token: crate::token::AdminToken::from_secret("t0k"),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Metrics::default(), Some(d), async {
            let _ = rx.await;
        }));
        let ok = exchange(
            addr,
            b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let big = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(9000)
        );
        let reply = exchange(addr, big.as_bytes()).await;
        assert!(
            reply.starts_with("HTTP/1.1 431") || reply.is_empty(),
            "{reply}"
        );
        for bad in [
            "GET /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization:\r\n Bearer t0k\r\n\r\n",
            "GET /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer t0k\r\n\r\n",
        ] {
            let reply = exchange(addr, bad.as_bytes()).await;
            assert!(
                !reply.starts_with("HTTP/1.1 200"),
                "{bad:?} was served: {reply}"
            );
        }
        let in_body = "GET /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 31\r\n\r\nAuthorization: Bearer t0k\r\n\r\n";
        let reply = exchange(addr, in_body.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
        let _ = tx.send(());
        server.await.unwrap();
    }

    /// Sixty-four clients that send a request line and then nothing (slowloris) do not keep
    /// `/healthz` from answering: it answers while they are still connected.
    #[tokio::test]
    async fn slow_clients_do_not_take_the_health_check_down() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Metrics::default(), None, async {
            let _ = rx.await;
        }));
        let mut slow = Vec::new();
        for _ in 0..64 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            slow.push(s);
        }
        let reply = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        // The slow clients are still connected: the answer did not wait for them to go.
        let mut still_open = 0;
        for s in &slow {
            let mut buf = [0u8; 1];
            if matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                still_open += 1;
            }
        }
        assert_eq!(still_open, slow.len());
        let _ = tx.send(());
        server.await.unwrap();
    }
}
