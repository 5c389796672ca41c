//! The coordinator's HTTP listener for operators: `GET /metrics` (the [`Metrics`] registry
//! in the Prometheus text format), `GET /healthz` with `200 ok` and, when given one, the
//! [`Dashboard`]'s paths.
//!
//! Plain HTTP, or, when the coordinator runs with mutual TLS, TLS ([`HttpTls`]) with the
//! coordinator's own certificate. Under TLS a client certificate is verified against the
//! consortium CA but optional at the handshake, so Prometheus and load balancers scrape
//! `/metrics` and `/healthz` without one; every dashboard path then needs an administrator's
//! client certificate (the admin API's rule, [`crate::tls::admin_name`]), else `403`, and its
//! API the admin token as well. Over plain HTTP the token is the only credential, so there
//! the dashboard is served on a loopback address only ([`serves_dashboard_on`]).
//!
//! Served by hyper's HTTP/1.1 server (strict parsing: no obs-fold, no space before a header's
//! colon, no headers in a body), one request per connection, the request head bounded to
//! [`MAX_REQUEST_BYTES`] and to [`HEADER_READ_TIMEOUT`] — a client that trickles its head
//! (slowloris) holds a connection for that long at most — and the whole exchange to
//! [`REQUEST_TIMEOUT`], at most [`MAX_CONNECTIONS`] at a time. A TLS handshake must end within
//! [`TLS_HANDSHAKE_TIMEOUT`], so a client that connects and never finishes it frees its
//! connection slot too. Dashboard responses carry a content security policy and the usual
//! hardening headers.

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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::dashboard::{Answer, Dashboard};
use crate::metrics::Metrics;
use crate::tls::{NotAdmin, TlsError};

/// Largest request head read (hyper's smallest buffer limit); a longer head is refused.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to send its request and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to complete the TLS handshake (one or two round trips and a
/// certificate check for an honest client); until then it holds a connection slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The dashboard's content security policy: its own script and API only; inline style (the
/// page's one `<style>` block) but no inline script; no framing, no forms, no plugins.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The listener's TLS under mutual TLS: the coordinator's certificate, client certificates
/// from the consortium CA verified but optional (see [`crate::tls::http_server_config`]).
#[derive(Clone)]
pub struct HttpTls(TlsAcceptor);

impl HttpTls {
    /// TLS with the coordinator's `cert`/`key`, verifying client certificates against `ca`.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let config = crate::tls::http_server_config(ca_pem, cert_pem, key_pem)?;
        Ok(Self(TlsAcceptor::from(config)))
    }
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpTls")
    }
}

/// Whether the dashboard may be served on `addr`: over TLS (`tls`, where it asks for an
/// administrator's certificate and the token) on any address; over plain HTTP, where its
/// API takes the admin token alone, only on a loopback address (a non-loopback plain
/// listener serves metrics and health alone).
pub fn serves_dashboard_on(addr: &SocketAddr, tls: bool) -> bool {
    tls || addr.ip().is_loopback()
}

/// Binds `addr` for [`serve`]; returns the listener (its `local_addr` is the bound address,
/// so port 0 works).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// What bounds the listener (tests shrink it).
#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: usize,
    handshake: Duration,
}

const LIMITS: Limits = Limits {
    connections: MAX_CONNECTIONS,
    handshake: TLS_HANDSHAKE_TIMEOUT,
};

/// Who is at the other end of a connection, as far as the dashboard is concerned.
#[derive(Debug, Clone)]
enum Caller {
    /// Plain HTTP (the dashboard only on loopback): the admin token is the credential.
    Plain,
    /// TLS: the administrator the verified client certificate names, or why it names none.
    Tls(Result<String, NotAdmin>),
}

/// Serves `/metrics`, `/healthz` and the dashboard (when given; see [`serves_dashboard_on`])
/// on `listener` until `stop` completes: over TLS when given `tls`, else plain HTTP.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    dashboard: Option<Dashboard>,
    tls: Option<HttpTls>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(listener, metrics, dashboard, tls, LIMITS, stop).await;
}

async fn serve_with(
    listener: TcpListener,
    metrics: Metrics,
    dashboard: Option<Dashboard>,
    tls: Option<HttpTls>,
    limits: Limits,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let allowed = listener
        .local_addr()
        .is_ok_and(|a| serves_dashboard_on(&a, tls.is_some()));
    if dashboard.is_some() && !allowed {
        warn!(
            "over plain HTTP the dashboard is served on a loopback address only (its API would take the admin token alone); serving metrics and health alone"
        );
    }
    let dashboard = dashboard.filter(|_| allowed).map(Arc::new);
    let slots = Arc::new(Semaphore::new(limits.connections));
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
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => exchange(stream, peer, Caller::Plain, metrics, dashboard).await,
                Some(HttpTls(acceptor)) => {
                    match tokio::time::timeout(limits.handshake, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let leaf = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(<[_]>::first)
                                .map(|leaf| leaf.as_ref());
                            let caller = Caller::Tls(crate::tls::admin_name(leaf));
                            exchange(stream, peer, caller, metrics, dashboard).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "metrics TLS handshake failed"),
                        Err(_) => debug!(%peer, "metrics TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Who a fuzzed exchange comes from (see [`exchange_for_fuzzing`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum FuzzCaller {
    /// Plain HTTP.
    Plain,
    /// TLS without a client certificate.
    TlsAnonymous,
    /// TLS with a partner's certificate.
    TlsPartner,
    /// TLS with an administrator's certificate.
    TlsAdmin,
}

/// One exchange on `stream` exactly as [`serve`] runs it for a connection from `caller`: the
/// entry of the `http_request` fuzz target (`fedmark_tests::fuzzing`), which feeds it raw
/// bytes over an in-memory stream.
#[doc(hidden)]
pub async fn exchange_for_fuzzing<S>(
    stream: S,
    caller: FuzzCaller,
    metrics: Metrics,
    dashboard: Option<Dashboard>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let caller = match caller {
        FuzzCaller::Plain => Caller::Plain,
        FuzzCaller::TlsAnonymous => Caller::Tls(Err(NotAdmin::NoCertificate)),
        FuzzCaller::TlsPartner => Caller::Tls(Err(NotAdmin::Named("bank".into()))),
        FuzzCaller::TlsAdmin => Caller::Tls(Ok("admin:ops".into())),
    };
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    exchange(stream, peer, caller, metrics, dashboard.map(Arc::new)).await;
}

/// Serves one request on `stream` (plain or after the TLS handshake).
async fn exchange<S>(
    stream: S,
    peer: SocketAddr,
    caller: Caller,
    metrics: Metrics,
    dashboard: Option<Arc<Dashboard>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let answer = route(&request, &caller, &metrics, dashboard.as_deref());
        async move { Ok::<_, Infallible>(response(answer)) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BYTES)
        .keep_alive(false)
        // A client that shuts its side down after its request still gets the answer, and a
        // head cut short by the end of the stream fails at once instead of at the timeout.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(REQUEST_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection failed"),
        Err(_) => debug!(%peer, "metrics request timed out"),
    }
}

/// The answer to a request: the dashboard's paths (when served; under TLS for an
/// administrator's certificate only), `/metrics` and `/healthz`.
fn route<B>(
    request: &Request<B>,
    caller: &Caller,
    metrics: &Metrics,
    dashboard: Option<&Dashboard>,
) -> Answer {
    let path = request.uri().path();
    let get = request.method() == Method::GET;
    if get
        && let Some(dashboard) = dashboard
        && Dashboard::is_path(path)
    {
        if let Caller::Tls(Err(refusal)) = caller {
            if matches!(refusal, NotAdmin::Named(_)) {
                warn!(%refusal, "refused a dashboard request from a non-admin certificate");
            }
            return (
                "403 Forbidden",
                "text/plain; charset=utf-8",
                format!(
                    "the dashboard needs an administrator's client certificate and the admin token: {refusal}\n"
                ),
            );
        }
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

    /// Over plain HTTP on loopback only; over TLS on any address.
    #[test]
    fn where_the_dashboard_is_served() {
        for (addr, tls, ok) in [
            ("127.0.0.1:9464", false, true),
            ("[::1]:9464", false, true),
            ("0.0.0.0:9464", false, false),
            ("192.168.1.4:9464", false, false),
            ("[2001:db8::1]:9464", false, false),
            ("127.0.0.1:9464", true, true),
            ("0.0.0.0:9464", true, true),
            ("192.168.1.4:9464", true, true),
        ] {
            assert_eq!(
                serves_dashboard_on(&addr.parse().unwrap(), tls),
                ok,
                "{addr} tls {tls}"
            );
        }
    }

    fn dashboard() -> Dashboard {
        Dashboard {
            board: crate::board::Board::default(),
            store: crate::store::Store::in_memory().unwrap(),
            token: crate::token::AdminToken::from_secret("t0k"),
        }
    }

    #[test]
    fn routes() {
        let m = Metrics::default();
        let plain = Caller::Plain;
        let status = |r: &Request<()>, d: Option<&Dashboard>| route(r, &plain, &m, d).0;
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
        let d = dashboard();
        let ask = |auth: Option<&str>| status(&request("GET", "/api/jobs", auth), Some(&d));
        assert_eq!(ask(Some("Bearer t0k")), "200 OK");
        assert_eq!(ask(Some("Bearer nope")), "401 Unauthorized");
        assert_eq!(ask(None), "401 Unauthorized");
        let page = response(route(
            &request("GET", "/dashboard", None),
            &plain,
            &m,
            Some(&d),
        ));
        let csp = page.headers().get(header::CONTENT_SECURITY_POLICY).unwrap();
        assert!(csp.to_str().unwrap().contains("frame-ancestors 'none'"));
        assert_eq!(page.headers()[header::X_FRAME_OPTIONS], "DENY");
    }

    /// Under TLS every dashboard path needs an administrator's certificate (then the API
    /// the token too); metrics and health need none.
    #[test]
    fn over_tls_the_dashboard_needs_an_admin_certificate() {
        let m = Metrics::default();
        let d = dashboard();
        let admin = Caller::Tls(Ok("admin:ops".into()));
        let partner = Caller::Tls(Err(NotAdmin::Named("bank".into())));
        let nobody = Caller::Tls(Err(NotAdmin::NoCertificate));
        let ask = |caller: &Caller, path: &str, auth: Option<&str>| {
            route(&request("GET", path, auth), caller, &m, Some(&d))
        };
        assert_eq!(ask(&admin, "/api/jobs", Some("Bearer t0k")).0, "200 OK");
        assert_eq!(ask(&admin, "/api/jobs", None).0, "401 Unauthorized");
        assert_eq!(ask(&admin, "/dashboard", None).0, "200 OK");
        for caller in [&partner, &nobody] {
            for path in ["/", "/dashboard", "/dashboard.js", "/api/jobs"] {
                let (status, _, body) = ask(caller, path, Some("Bearer t0k"));
                assert_eq!(status, "403 Forbidden", "{caller:?} {path}");
                assert!(
                    body.contains("administrator's client certificate"),
                    "{body}"
                );
            }
            assert_eq!(ask(caller, "/healthz", None).0, "200 OK");
            assert_eq!(ask(caller, "/metrics", None).0, "200 OK");
        }
        assert!(
            ask(&partner, "/api/jobs", Some("Bearer t0k"))
                .2
                .contains("names `bank`")
        );
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
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Metrics::default(),
            Some(dashboard()),
            None,
            async {
                let _ = rx.await;
            },
        ));
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
        let server = tokio::spawn(serve(listener, Metrics::default(), None, None, async {
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

    /// A client that connects and never finishes the TLS handshake holds its connection slot
    /// for the handshake timeout only. With one slot: the first silent client is dropped
    /// after the timeout, and only then is the second accepted (and dropped a timeout later);
    /// without the timeout the second would wait forever.
    #[tokio::test]
    async fn a_stalled_handshake_frees_its_slot() {
        let certs = crate::tls::DevCerts::generate("test CA", &[]).unwrap();
        let c = &certs.coordinator;
        let tls = HttpTls::new(&certs.ca_pem, &c.cert_pem, &c.key_pem).unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshake = Duration::from_millis(300);
        let limits = Limits {
            connections: 1,
            handshake,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            Metrics::default(),
            None,
            Some(tls),
            limits,
            async {
                let _ = rx.await;
            },
        ));
        let start = tokio::time::Instant::now();
        let first = TcpStream::connect(addr).await.unwrap();
        // Half a TLS record header, then nothing.
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(&[0x16, 0x03]).await.unwrap();
        let closed = |mut s: TcpStream| async move {
            let mut buf = [0u8; 64];
            loop {
                match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return tokio::time::Instant::now(),
                    Ok(Ok(_)) => {}
                    Err(_) => panic!("the stalled connection was never dropped"),
                }
            }
        };
        let (first_at, second_at) = tokio::join!(closed(first), closed(second));
        assert!(first_at - start >= handshake, "{:?}", first_at - start);
        assert!(
            second_at - start >= handshake * 2,
            "the second client was served before the first freed the slot: {:?}",
            second_at - start
        );
        let _ = tx.send(());
        server.await.unwrap();
    }
}
