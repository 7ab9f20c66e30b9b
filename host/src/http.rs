//! The accept loop, ours rather than `axum::serve`, because a server must not
//! let a slow or idle client keep a connection (and its file descriptor)
//! forever: request heads and bodies have deadlines, open connections are
//! capped (beyond the cap a client gets a 503 it can retry), and shutdown
//! lets in-flight requests finish within a bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json, Router};
use hyper::body::{Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// How long in-flight requests may still run after a shutdown signal. A
/// request that arrived just before it has its body deadline (30 s by
/// default) to finish sending; the few handlers that run longer are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Refusals being written at once. Each holds a socket for at most
/// [`REFUSAL_LINGER`]; beyond this many, a connection over the cap is closed
/// without an answer, so a flood of connections cannot turn the refusals
/// themselves into the unbounded pile of sockets the cap exists to prevent.
const MAX_REFUSALS: usize = 256;

/// The longest a refused connection is held: time to write the 503 and read
/// what the client had already sent (see [`refuse`]).
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// The limits the server enforces on its clients.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A client must send a request's head (request line and headers) within
    /// this; an idle keep-alive connection is closed after it too.
    pub header_timeout: Duration,
    /// A client must send a request's whole body within this, counted from
    /// the end of its head.
    pub body_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_connections_per_client: usize,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl HttpLimits {
    /// The limits configured in `settings`. Zero timeouts would cut every
    /// client, so a timeout is at least one second, and the cap at least one.
    pub fn from_settings(settings: &Settings) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(settings.http_header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(settings.http_body_timeout_secs.max(1)),
            // Shutdown waits for every permit in one `acquire_many(u32)`.
            max_connections: settings.max_connections.clamp(1, u32::MAX as usize),
            max_connections_per_client: settings.max_connections_per_client.max(1),
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// Serve `app` on `listener` until `signal` completes, then stop accepting,
/// let open connections finish their current request (for at most
/// `limits.shutdown_grace`) and return.
///
/// # Errors
///
/// None today: accept errors are logged and retried, as `axum::serve` does;
/// the `Result` keeps the signature of the call this replaced.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    signal: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(limits.body_timeout, body_deadline));
    let mut http = http1::Builder::new();
    // Without a timer hyper has no header deadline at all: a client that
    // sends half a request line held its connection forever.
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);

    // One permit per open connection; a connection's task holds it until the
    // socket is closed.
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let clients = Clients::default();
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    // `stop`: finish the current request, then close. `kill`: close now.
    let stop = CancellationToken::new();
    let kill = CancellationToken::new();

    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        let permit = connections.clone().try_acquire_owned().ok();
        let place = permit.and_then(|p| clients.enter(peer.ip(), limits.max_connections_per_client).map(|c| (p, c)));
        let Some(permit) = place else {
            metrics::counter!("sluice_http_connections_refused_total").increment(1);
            // Answered on a task of its own: a client that reads slowly must
            // not hold up the loop that accepts everyone else.
            if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(refusing);
                });
            }
            continue;
        };
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let (stop, kill) = (stop.clone(), kill.clone());
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    // Closes an idle connection now, a busy one after its
                    // response.
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        () = kill.cancelled() => {}
                    }
                }
            }
            drop(permit);
        });
    }

    drop(listener);
    stop.cancel();
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, connections.acquire_many(all)).await.is_err() {
        let open = limits.max_connections - connections.available_permits();
        tracing::warn!(open, "connections still busy after the shutdown grace period; closing them");
        kill.cancel();
    }
    Ok(())
}

/// Open connections per client address.
#[derive(Clone, Default)]
struct Clients(Arc<parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// A client's place among its open connections; left on drop.
struct ClientPlace {
    clients: Clients,
    ip: std::net::IpAddr,
}

impl Clients {
    /// A place for one more connection of `ip`, unless it has `max` open.
    fn enter(&self, ip: std::net::IpAddr, max: usize) -> Option<ClientPlace> {
        let ip = client_of(ip);
        let mut open = self.0.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientPlace { clients: self.clone(), ip })
    }
}

/// Who a connection's address counts as: an IPv6 client is its /64 (one
/// host usually has the whole prefix), except an IPv4 client reaching a
/// dual-stack listener as `::ffff:a.b.c.d`, which is its IPv4 address (all
/// IPv4 clients share one /64 of mapped addresses).
fn client_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => std::net::IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Like `axum::serve`: errors of one connection (reset before it was
/// accepted) are nothing to wait for; others, such as running out of file
/// descriptors, clear only when connections close, so wait a moment.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Answer a connection over the cap with a 503 and close it. Written by hand
/// rather than through hyper: nothing of the request is read or parsed, the
/// answer is the same for everyone.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"detail":"too many open connections; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Closing a socket that still holds unread request bytes makes the
        // kernel send a reset, which can destroy the 503 before the client
        // reads it: drain until the client closes (it was told to) or the
        // linger time is up.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Give every request body a deadline, and answer 408 when it passes.
///
/// The deadline is enforced where the body is read, so a handler that never
/// reads its body is never cut (hyper closes such a connection after the
/// response anyway, since the unread rest cannot be skipped).
async fn body_deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + limit;
    let request =
        request.map(|inner| Body::new(DeadlineBody { inner, deadline, timer: None, expired: expired.clone() }));
    let response = next.run(request).await;
    if !expired.load(Ordering::Acquire) {
        return response;
    }
    // The handler saw a read error and answered in its own words (400, 422,
    // ...); the cause was the client's pace, so say that instead.
    metrics::counter!("sluice_http_body_timeouts_total").increment(1);
    let detail = format!("the request body did not arrive within {} s", limit.as_secs());
    let mut response = (StatusCode::REQUEST_TIMEOUT, Json(serde_json::json!({ "detail": detail }))).into_response();
    // The rest of the body may still be on its way; the connection cannot be
    // reused.
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline passes while it is waiting
/// for the client.
struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    /// Created the first time the body has to wait: a body that is already
    /// complete (the common case) never touches the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    /// Set when the deadline cut the body, read by [`body_deadline`].
    expired: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        // Only a body that waits is checked: data that is already here was
        // sent in time.
        let deadline = this.deadline;
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired.store(true, Ordering::Release);
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "request body deadline passed");
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::{client_of, Clients};

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_client_its_own_address() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(client_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), ip("2001:db8:1:2::"));
        assert_ne!(client_of(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_ne!(client_of(ip("::ffff:10.0.0.1")), client_of(ip("::ffff:10.0.0.2")));
        assert_eq!(client_of(ip("10.0.0.1")), ip("10.0.0.1"));
        // Two addresses of one /64 share its cap; the next /64 does not.
        let clients = Clients::default();
        let first = clients.enter(ip("2001:db8::1"), 2).unwrap();
        let _second = clients.enter(ip("2001:db8::ffff"), 2).unwrap();
        assert!(clients.enter(ip("2001:db8::2"), 2).is_none());
        assert!(clients.enter(ip("2001:db8:0:1::1"), 2).is_some());
        drop(first);
        assert!(clients.enter(ip("2001:db8::2"), 2).is_some());
    }
}
