//! The HTTP server under the router: hyper's HTTP/1 server, one task per
//! connection, with the limits that keep anonymous clients on the webhook
//! port from taking the daemon down.
//!
//! - **Connections.** At most [`HttpLimits::max_connections`] are open. At
//!   the limit, a new connection closes the one that has been idle longest
//!   (no request in flight: kept alive, or still sending its head); when
//!   every connection is busy with a request, the new one is closed at once.
//!   Idle connections can therefore never keep a delivery out.
//! - **Timeouts.** A request head must be complete within
//!   [`HttpLimits::header_read_timeout`] of the connection opening or of the
//!   head's first byte; a kept-alive connection with nothing to say is
//!   closed after [`HttpLimits::idle_timeout`]; a request body must arrive
//!   within [`HttpLimits::body_read_timeout`] of its head (else 408).
//! - **Body bytes.** Request bodies in flight across all connections hold
//!   at most [`HttpLimits::max_body_bytes_in_flight`] bytes: every chunk
//!   takes its size from one shared budget as it arrives and gives it back
//!   once its request is answered. A chunk that does not fit fails its
//!   request with 503 at once instead of waiting, so nobody waits on memory
//!   a stranger holds, and the answer says to retry.
//! - **Shutdown.** The listener closes, connections without a request in
//!   flight and streams (server-sent events, which end only when their
//!   client goes) are closed at once, and requests in flight get
//!   [`HttpLimits::drain_grace`] to finish.
//!
//! Each request carries its peer's address as axum's `ConnectInfo`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, header};
use bytes::Bytes;
use core_types::env_names::BERTH_MAX_CONNECTIONS;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::error::ApiError;
use crate::throttle::LogThrottle;
use telemetry::{DropReason, Metrics, RefusedReason};

/// Default of `BERTH_MAX_CONNECTIONS`: far more than GitHub, Prometheus and
/// a few browsers need, and well inside the usual limit of 1024 open files.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Default of `BERTH_MAX_BODY_BYTES_IN_FLIGHT`: two of GitHub's largest
/// payloads (25 MiB) at once, or hundreds of ordinary ones.
pub const DEFAULT_MAX_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// Default of `BERTH_HEADER_READ_TIMEOUT`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of `BERTH_BODY_READ_TIMEOUT`: GitHub gives up on a delivery
/// after 10 s, so a body that takes longer serves nobody.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of `BERTH_IDLE_TIMEOUT`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long requests in flight may finish at shutdown.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Bytes of the body budget a chunk takes besides its own: its handle,
/// and its place in the list the webhook keeps until the body is complete.
const CHUNK_OVERHEAD: usize = 64;

/// hyper's read buffer per connection at most (its default is about
/// 400 KiB), and so also the largest request head.
const READ_BUFFER: usize = 64 * 1024;

/// The limits of the HTTP server. `Default` gives the settings' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections at most (`BERTH_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Bytes of request bodies held at once across all connections
    /// (`BERTH_MAX_BODY_BYTES_IN_FLIGHT`).
    pub max_body_bytes_in_flight: usize,
    /// Time for a complete request head (`BERTH_HEADER_READ_TIMEOUT`).
    pub header_read_timeout: Duration,
    /// Time for a complete request body after its head (`BERTH_BODY_READ_TIMEOUT`).
    pub body_read_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request (`BERTH_IDLE_TIMEOUT`).
    pub idle_timeout: Duration,
    /// Time requests in flight get to finish at shutdown.
    pub drain_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_body_bytes_in_flight: DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            drain_grace: DRAIN_GRACE,
        }
    }
}

/// Why the server closed a connection before its client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// Closed to make room for a new one.
    Evicted,
    /// Turned away: every open connection had a request in flight.
    Refused,
    /// Its request head did not arrive in time.
    HeaderTimeout,
    /// Kept alive with nothing to say for too long.
    IdleTimeout,
    /// Still busy when the shutdown grace ran out, or a stream at shutdown.
    Shutdown,
}

impl Dropped {
    fn label(self) -> DropReason {
        match self {
            Dropped::Evicted => DropReason::Evicted,
            Dropped::Refused => DropReason::Refused,
            Dropped::HeaderTimeout => DropReason::HeaderTimeout,
            Dropped::IdleTimeout => DropReason::IdleTimeout,
            Dropped::Shutdown => DropReason::Shutdown,
        }
    }
}

/// Milliseconds since the server started: what the connections' atomics hold.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ms(self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

/// `head_started` when no byte of a next request has come.
const NO_HEAD: u64 = u64::MAX;

/// One open connection, as the accept loop and its own task see it.
#[derive(Debug)]
struct Connection {
    /// Requests whose answer is not completely sent yet.
    in_flight: AtomicUsize,
    /// Requests started on it so far.
    requests: AtomicU64,
    /// Whether the answer in flight is a stream that ends only when its client goes.
    streaming: AtomicBool,
    /// When it last had nothing to do: accepted, or an answer sent.
    idle_since: AtomicU64,
    /// When the first byte of a request head not yet complete came ([`NO_HEAD`]: none).
    head_started: AtomicU64,
    /// Cancelled to close it at once.
    close: CancellationToken,
    /// Woken when its deadline may have moved: a head began, an answer ended.
    changed: Notify,
}

impl Connection {
    fn new(now: u64) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(NO_HEAD),
            close: CancellationToken::new(),
            changed: Notify::new(),
        }
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Bytes came in: when no request is in flight, they start a head.
    fn bytes_arrived(&self, now: u64) {
        if !self.busy()
            && self.head_started.compare_exchange(NO_HEAD, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// When to look at it again, and why it is to be closed if it is still
    /// idle then; no reason while a request is in flight.
    fn deadline(&self, limits: &HttpLimits, clock: Clock) -> (Instant, Option<Dropped>) {
        if self.busy() {
            return (Instant::now() + limits.idle_timeout, None);
        }
        let head = self.head_started.load(Ordering::Acquire);
        let idle_since = clock.at(self.idle_since.load(Ordering::Acquire));
        if self.requests.load(Ordering::Acquire) == 0 {
            (idle_since + limits.header_read_timeout, Some(Dropped::HeaderTimeout))
        } else if head != NO_HEAD {
            (clock.at(head) + limits.header_read_timeout, Some(Dropped::HeaderTimeout))
        } else {
            (idle_since + limits.idle_timeout, Some(Dropped::IdleTimeout))
        }
    }
}

/// A request in flight on a connection; the connection is idle again once
/// this is dropped, with the end of the answer's body.
#[derive(Debug)]
struct InFlight {
    connection: Arc<Connection>,
    clock: Clock,
}

impl InFlight {
    fn begin(connection: Arc<Connection>, clock: Clock) -> Self {
        connection.head_started.store(NO_HEAD, Ordering::Release);
        connection.requests.fetch_add(1, Ordering::AcqRel);
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { connection, clock }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.connection.streaming.store(false, Ordering::Release);
        self.connection.idle_since.store(self.clock.now_ms(), Ordering::Release);
        self.connection.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.connection.changed.notify_one();
    }
}

/// What every connection shares.
#[derive(Debug)]
struct Server {
    limits: HttpLimits,
    clock: Clock,
    /// One permit per byte of request body held.
    budget: Arc<Semaphore>,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    full: LogThrottle,
}

impl Server {
    fn new(limits: HttpLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            limits,
            clock: Clock(Instant::now()),
            budget: Arc::new(Semaphore::new(limits.max_body_bytes_in_flight.min(Semaphore::MAX_PERMITS))),
            open: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            metrics,
            full: LogThrottle::new(Duration::from_secs(10)),
        }
    }

    /// Registers a new connection, closing the longest idle one when at the
    /// limit; `None` when at the limit and every connection is busy.
    fn admit(&self) -> Option<(u64, Arc<Connection>)> {
        let (admitted, evicted, open) = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let mut evicted = false;
            if open.len() >= self.limits.max_connections {
                let victim = open
                    .iter()
                    .filter(|(_, connection)| !connection.busy())
                    .min_by_key(|(_, connection)| connection.idle_since.load(Ordering::Acquire))
                    .map(|(id, _)| *id);
                match victim.and_then(|id| open.remove(&id)) {
                    Some(victim) => {
                        victim.close.cancel();
                        evicted = true;
                    }
                    None => return self.refuse(open.len()),
                }
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let connection = Arc::new(Connection::new(self.clock.now_ms()));
            open.insert(id, Arc::clone(&connection));
            ((id, connection), evicted, open.len())
        };
        if evicted {
            self.count_dropped(Dropped::Evicted);
            if let Some(suppressed) = self.full.admit() {
                warn!(
                    limit = self.limits.max_connections,
                    suppressed,
                    "connection limit reached ({BERTH_MAX_CONNECTIONS}); closing the longest idle connections to make room"
                );
            }
        }
        self.count_open(open);
        Some(admitted)
    }

    fn refuse(&self, open: usize) -> Option<(u64, Arc<Connection>)> {
        self.count_dropped(Dropped::Refused);
        if let Some(suppressed) = self.full.admit() {
            warn!(
                limit = self.limits.max_connections,
                open,
                suppressed,
                "connection limit reached ({BERTH_MAX_CONNECTIONS}) and every connection is busy; new connections are closed"
            );
        }
        None
    }

    fn forget(&self, id: u64) {
        let open = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            open.remove(&id);
            open.len()
        };
        self.count_open(open);
    }

    fn count_open(&self, open: usize) {
        self.metrics.http_connections_open(open);
    }

    fn count_dropped(&self, why: Dropped) {
        self.metrics.http_connection_dropped(why.label());
    }

    fn count_refused_request(&self, reason: RefusedReason) {
        self.metrics.http_request_refused(reason);
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` is
/// cancelled; then stops accepting, closes idle connections and streams,
/// and gives requests in flight [`HttpLimits::drain_grace`] to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let server = Arc::new(Server::new(limits, metrics));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The client gave up before it was accepted.
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of file descriptors, most likely: wait for some to close.
                warn!(error = %err, "accepting a connection failed; retrying in 1 s");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let Some((id, connection)) = server.admit() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(run_connection(
            stream,
            peer,
            id,
            connection,
            Arc::clone(&server),
            router.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

async fn run_connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    connection: Arc<Connection>,
    server: Arc<Server>,
    router: Router,
    shutdown: CancellationToken,
) {
    let io =
        TokioIo::new(Watched { inner: stream, connection: Arc::clone(&connection), clock: server.clock });
    let service = {
        let (server, connection) = (Arc::clone(&server), Arc::clone(&connection));
        hyper::service::service_fn(move |request| {
            handle(request, router.clone(), Arc::clone(&server), Arc::clone(&connection), peer)
        })
    };
    let mut builder = http1::Builder::new();
    // The timeouts are kept here, not by hyper's timer.
    builder.max_buf_size(READ_BUFFER).header_read_timeout(None);
    let http = builder.serve_connection(io, service);
    tokio::pin!(http);
    let mut drain_until: Option<Instant> = None;
    let dropped = loop {
        let (check_at, _) = connection.deadline(&server.limits, server.clock);
        let wake = drain_until.map_or(check_at, |until| until.min(check_at));
        tokio::select! {
            result = http.as_mut() => {
                if let Err(err) = result {
                    debug!(%peer, error = %err, "connection ended with an error");
                }
                break None;
            }
            () = connection.close.cancelled() => break Some(Dropped::Evicted),
            () = connection.changed.notified() => {}
            () = shutdown.cancelled(), if drain_until.is_none() => {
                if !connection.busy() || connection.streaming.load(Ordering::Acquire) {
                    break None;
                }
                http.as_mut().graceful_shutdown();
                drain_until = Some(Instant::now() + server.limits.drain_grace);
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if drain_until.is_some_and(|until| now >= until) {
                    break Some(Dropped::Shutdown);
                }
                if let (due, Some(why)) = connection.deadline(&server.limits, server.clock)
                    && due <= now
                {
                    break Some(why);
                }
            }
        }
    };
    // Eviction counted itself when it chose this connection.
    if let Some(why) = dropped.filter(|why| *why != Dropped::Evicted) {
        debug!(%peer, reason = why.label().as_str(), "connection closed by the server");
        server.count_dropped(why);
    }
    server.forget(id);
}

/// One request: marks the connection busy until the answer is sent, puts
/// the body under the budget and the body timeout, and hands it to the router.
async fn handle(
    mut request: Request<Incoming>,
    router: Router,
    server: Arc<Server>,
    connection: Arc<Connection>,
    peer: SocketAddr,
) -> Result<Response<Answer>, Infallible> {
    let in_flight = InFlight::begin(Arc::clone(&connection), server.clock);
    request.extensions_mut().insert(ConnectInfo(peer));
    let held = Arc::new(Held::default());
    let deadline = Box::pin(tokio::time::sleep(server.limits.body_read_timeout));
    let request = request.map(|incoming| {
        Body::new(Budgeted {
            inner: incoming,
            server: Arc::clone(&server),
            held: Arc::clone(&held),
            deadline,
            failed: false,
        })
    });
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    // The handler is done with the body; its bytes are free again.
    held.release();
    let stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    connection.streaming.store(stream, Ordering::Release);
    Ok(response.map(|body| Answer { inner: body, _in_flight: in_flight }))
}

/// The budget a request's body holds until the request is answered.
#[derive(Debug, Default)]
struct Held(Mutex<Option<OwnedSemaphorePermit>>);

impl Held {
    fn add(&self, permit: OwnedSemaphorePermit) {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match held.as_mut() {
            Some(existing) => existing.merge(permit),
            None => *held = Some(permit),
        }
    }

    fn release(&self) {
        drop(self.0.lock().unwrap_or_else(PoisonError::into_inner).take());
    }
}

/// A request body under the shared budget and the body-read deadline.
struct Budgeted {
    inner: Incoming,
    server: Arc<Server>,
    held: Arc<Held>,
    deadline: Pin<Box<Sleep>>,
    failed: bool,
}

impl Budgeted {
    fn timed_out(&mut self) -> ApiError {
        self.failed = true;
        self.server.count_refused_request(RefusedReason::BodyTimeout);
        ApiError::BodyTimeout { limit: self.server.limits.body_read_timeout }
    }
}

impl hyper::body::Body for Budgeted {
    type Data = Bytes;
    type Error = ApiError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ApiError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        // A body that trickles in is never pending for long: look at the clock first.
        if this.deadline.is_elapsed() {
            return Poll::Ready(Some(Err(this.timed_out())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, Bytes::len);
                if size > 0 {
                    // What keeping the chunk costs besides its bytes, so that
                    // a body sent a byte at a time is counted for what it holds.
                    let permit = u32::try_from(size + CHUNK_OVERHEAD)
                        .ok()
                        .and_then(|size| Arc::clone(&this.server.budget).try_acquire_many_owned(size).ok());
                    match permit {
                        Some(permit) => this.held.add(permit),
                        None => {
                            this.failed = true;
                            this.server.count_refused_request(RefusedReason::BodyBudget);
                            return Poll::Ready(Some(Err(ApiError::BodyBudgetExhausted)));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.failed = true;
                Poll::Ready(Some(Err(ApiError::BadBody(format!("the body could not be read: {err}")))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(this.timed_out())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body; the connection's request ends when it is dropped.
struct Answer {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when bytes of a request head come in.
struct Watched {
    inner: TcpStream,
    connection: Arc<Connection>,
    clock: Clock,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.connection.bytes_arrived(this.clock.now_ms());
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
