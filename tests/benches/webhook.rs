//! Webhook intake benchmark: signed `issue_comment` deliveries against the
//! real `berth serve` (this profile's build, journal on in a temp directory on
//! this machine's disk) and, in the same run, against two references:
//! - the ceiling: a bare axum route that verifies the same HMAC over the raw
//!   body and answers 202 with no other work, the ceiling for any verifying
//!   receiver;
//! - the synced ceiling: the same route, but each verified delivery is handed
//!   to one group-commit thread that writes a 1 KiB record of it into a
//!   preallocated file in the journal's file system (written over in place,
//!   one `fdatasync` per batch), and the 202 is sent only after its batch is
//!   synced. Nothing is decided, indexed or folded: the floor of a
//!   receiver whose 202 means "on disk" and that hands each delivery to a
//!   group-commit thread, as Berth does.
//!
//! Every delivery asks for a review of a pull request no earlier delivery
//! named, so each one Berth accepts queues a new task and really writes the
//! journal. Per server, two phases (the synced ceiling only the closed loops):
//! - closed loop: a fixed number of keep-alive connections, each sending its
//!   next delivery as soon as the last is answered (throughput, p50/p99);
//! - open loop: deliveries at a fixed rate on a timer, spread over the
//!   connections, with latency taken from each delivery's scheduled send time,
//!   so a slow answer cannot hide the ones queued behind it (no coordinated
//!   omission).
//!
//! Every answer must be a 202 (and for Berth a `queued`); anything else is
//! counted and reported, never taken as a success.
//!
//! `cargo bench -p tests --bench webhook`. Knobs: `BERTH_BENCH_SECONDS`
//! (default 5), `BERTH_BENCH_CONNECTIONS` (32), `BERTH_BENCH_WIDE_CONNECTIONS`
//! (256), `BERTH_BENCH_RATE` (1000); `BERTH_BENCH_DAEMON_WORKER_THREADS`
//! (the daemon's `TOKIO_WORKER_THREADS`; this process's runtimes keep
//! theirs); `BERTH_BENCH_RUST_LOG` (the daemon's `RUST_LOG`, default `info`)
//! and `BERTH_BENCH_LOG` (a file the daemon's stderr goes to instead of a
//! pipe this process reads: the log against a file rather than a pipe).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark prints its table and stops at the first error"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::routing::post;
use bytes::Bytes;
use core_types::Secret;
use domain::signature::{SIGNATURE_HEADER, WebhookSecrets, sign};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tests::{Daemon, rsa_key};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

const SECRET: &str = "bench-webhook-secret";

/// The real payload the deliveries are made from: a slash command on a pull request.
const FIXTURE: &str = "issue_comment/created.go-playground.on-pr-slash-command.json";

/// Stands in for the pull request number in the body template.
const SENTINEL: u64 = 987_654_321;

/// Not counted: lets connections, allocators and caches settle.
const WARM_UP: Duration = Duration::from_secs(1);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "webhook bench: {line}");
}

/// The delivery body with the pull request number cut out.
struct Template {
    parts: Vec<Vec<u8>>,
}

impl Template {
    /// A real `issue_comment` on a pull request, turned into `/berth review`
    /// from the repository's OWNER, as a GitHub App delivers it.
    fn load() -> Template {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/github-webhooks/payloads")
            .join(FIXTURE);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("webhook fixture {} unreadable: {err}", path.display()));
        let mut payload: Value = serde_json::from_str(&text).expect("the fixture is JSON");
        payload["comment"]["body"] = json!("/berth review");
        payload["comment"]["author_association"] = json!("OWNER");
        // One number per delivery, as the pull request's and the comment's:
        // a comment makes at most one task, so each delivery is a new comment.
        payload["issue"]["number"] = json!(SENTINEL);
        payload["comment"]["id"] = json!(SENTINEL);
        payload["installation"] = json!({"id": 1, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="});
        let body = serde_json::to_vec(&payload).expect("JSON serializes");
        let sentinel = SENTINEL.to_string().into_bytes();
        let mut parts = Vec::new();
        let mut rest = body.as_slice();
        while let Some(at) = rest.windows(sentinel.len()).position(|window| window == sentinel) {
            parts.push(rest[..at].to_vec());
            rest = &rest[at + sentinel.len()..];
        }
        parts.push(rest.to_vec());
        assert_eq!(parts.len(), 3, "the number appears twice in the template (issue and comment)");
        Template { parts }
    }

    fn body(&self, number: u64) -> Bytes {
        let number = number.to_string();
        let mut body = Vec::with_capacity(self.parts.iter().map(Vec::len).sum::<usize>() + number.len());
        for (index, part) in self.parts.iter().enumerate() {
            if index > 0 {
                body.extend_from_slice(number.as_bytes());
            }
            body.extend_from_slice(part);
        }
        Bytes::from(body)
    }
}

/// Signed deliveries for one server. The delivery id is not signed, so the
/// signatures are computed before the clock starts, one per pull request
/// number; the body is put together per request (a copy of ~11 KB).
struct Deliveries {
    template: Arc<Template>,
    host: HeaderValue,
    prefix: String,
    first_number: u64,
    signatures: Vec<HeaderValue>,
    /// Reuse the numbers round-robin (the ceiling ignores them) or refuse to
    /// repeat one (Berth would answer `duplicate` without writing a task).
    cycle: bool,
    sent: AtomicU64,
}

impl Deliveries {
    fn new(
        template: Arc<Template>,
        addr: SocketAddr,
        prefix: &str,
        first_number: u64,
        count: u64,
        cycle: bool,
    ) -> Deliveries {
        let started = Instant::now();
        let numbers: Vec<u64> = (first_number..first_number + count).collect();
        // Signing 100k bodies takes a while on one core; use both.
        let signatures = std::thread::scope(|scope| {
            let workers: Vec<_> = numbers
                .chunks(numbers.len().div_ceil(2).max(1))
                .map(|chunk| {
                    let template = &template;
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|&number| {
                                HeaderValue::from_str(&sign(SECRET, &template.body(number)))
                                    .expect("a signature is a valid header")
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().flat_map(|worker| worker.join().expect("signing thread")).collect()
        });
        progress(&format!("signed {count} {prefix} bodies in {:.1} s", started.elapsed().as_secs_f64()));
        Deliveries {
            template,
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header"),
            prefix: prefix.to_owned(),
            first_number,
            signatures,
            cycle,
            sent: AtomicU64::new(0),
        }
    }

    /// The next delivery, or `None` when the signed numbers are used up.
    fn next(&self) -> Option<Request<Full<Bytes>>> {
        let sequence = self.sent.fetch_add(1, Ordering::Relaxed);
        let len = self.signatures.len() as u64;
        let index = if self.cycle { sequence % len } else { sequence };
        let signature = self.signatures.get(usize::try_from(index).ok()?)?;
        let request = Request::post("/webhook")
            .header(header::HOST, self.host.clone())
            .header(header::USER_AGENT, "GitHub-Hookshot/bench")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-github-event", "issue_comment")
            .header("x-github-delivery", delivery_id(&self.prefix, sequence))
            .header(SIGNATURE_HEADER, signature.clone())
            .body(Full::new(self.template.body(self.first_number + index)))
            .expect("the request is well-formed");
        Some(request)
    }
}

/// A GUID like GitHub's `X-GitHub-Delivery`, unique per prefix and sequence
/// and scattered like a random one (so the journal's delivery index sees
/// random keys, as in production, not a friendly ascending run).
fn delivery_id(prefix: &str, sequence: u64) -> String {
    fn mix(mut x: u64) -> u64 {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    let salt = prefix.bytes().fold(0_u64, |acc, byte| mix(acc ^ u64::from(byte)));
    let high = mix(sequence ^ salt);
    let low = mix(high ^ sequence.rotate_left(32));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// The ceiling: verify the signature over the raw body, answer 202, nothing else.
async fn ceiling_webhook(
    State(secrets): State<Arc<WebhookSecrets>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    match secrets.verify(headers.get(SIGNATURE_HEADER).map(HeaderValue::as_bytes), &body) {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

/// A delivery for the synced ceiling's group-commit thread: its record,
/// and whom to tell once the record is on disk.
type Commit = (Vec<u8>, oneshot::Sender<()>);

/// The synced ceiling's state: the secret, and the way to its group-commit thread.
#[derive(Clone)]
struct Synced {
    secrets: Arc<WebhookSecrets>,
    commits: std::sync::mpsc::Sender<Commit>,
}

/// The synced ceiling: verify, have a 1 KiB record of the delivery synced, answer 202.
async fn synced_webhook(State(synced): State<Synced>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if synced.secrets.verify(headers.get(SIGNATURE_HEADER).map(HeaderValue::as_bytes), &body).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    let mut record = Vec::with_capacity(SYNCED_RECORD);
    for name in ["x-github-delivery", "x-github-event"] {
        record.extend_from_slice(headers.get(name).map_or(&b"-"[..], HeaderValue::as_bytes));
        record.push(b' ');
    }
    record.extend_from_slice(body.len().to_string().as_bytes());
    record.resize(SYNCED_RECORD - 1, b' ');
    record.push(b'\n');
    let (synced_tx, synced_rx) = oneshot::channel();
    if synced.commits.send((record, synced_tx)).is_err() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match synced_rx.await {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The synced ceiling's name in the tables.
const SYNCED: &str = "synced ceiling";

/// Bytes of one synced ceiling record: about one task's JSON (Berth's whole
/// intake log and fold write 2.5–2.7 KB per delivery; BENCHMARKS.md, session 13).
const SYNCED_RECORD: usize = 1024;

/// Bytes of the synced ceiling's file, written over from the start when full.
const SYNCED_FILE: u64 = 16 << 20;

/// The synced ceiling's file, made before the server starts (so that its
/// writes are not under the disk floor's probe or a phase): zeroed 4 KiB at
/// a time, since zeroed in larger writes the page cache keeps it in large
/// folios and each sync writes a whole folio (BENCHMARKS.md, session 12).
fn synced_file(path: &std::path::Path) -> std::fs::File {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).expect("the synced ceiling's file is created");
    let zeros = [0_u8; 4096];
    for block in 0..SYNCED_FILE / 4096 {
        file.write_all_at(&zeros, block * 4096).expect("the synced ceiling's file is zeroed");
    }
    file.sync_all().expect("the synced ceiling's file syncs");
    file
}

/// The synced ceiling's group-commit thread: takes one delivery, then every
/// one already waiting, writes them in one write over `file` and one
/// `fdatasync`, then answers them.
fn group_commit(file: &std::fs::File, commits: &std::sync::mpsc::Receiver<Commit>) {
    use std::os::unix::fs::FileExt;
    let mut offset = 0_u64;
    let mut frames = Vec::new();
    let mut waiting = Vec::new();
    while let Ok(first) = commits.recv() {
        frames.clear();
        for (record, synced) in std::iter::once(first).chain(std::iter::from_fn(|| commits.try_recv().ok())) {
            frames.extend_from_slice(&record);
            waiting.push(synced);
        }
        if offset + frames.len() as u64 > SYNCED_FILE {
            offset = 0;
        }
        file.write_all_at(&frames, offset).expect("the synced ceiling writes");
        file.sync_data().expect("the synced ceiling syncs");
        offset += frames.len() as u64;
        for synced in waiting.drain(..) {
            let _ = synced.send(());
        }
    }
}

/// The ceiling server on its own two-thread runtime, as a separate daemon would be.
struct Ceiling {
    /// `ceiling` or `synced ceiling`, for its messages.
    name: &'static str,
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Ceiling {
    /// The ceiling, or with `synced_in` the synced ceiling writing its file in that directory.
    fn start(synced_in: Option<&std::path::Path>) -> Ceiling {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(if synced_in.is_some() { "ceiling-synced" } else { "ceiling" })
            .enable_all()
            .build()
            .expect("the ceiling's runtime starts");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("the ceiling binds");
        listener.set_nonblocking(true).expect("the listener can be non-blocking");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let secrets = Arc::new(WebhookSecrets::new(Secret::new(SECRET), None));
        let router = match synced_in {
            None => Router::new().route("/webhook", post(ceiling_webhook)).with_state(secrets),
            Some(dir) => {
                let (commits, receiver) = std::sync::mpsc::channel();
                let file = synced_file(&dir.join("synced-ceiling.log"));
                // Ends when the router, and with it every sender, is dropped.
                std::thread::Builder::new()
                    .name("ceiling-sync".to_owned())
                    .spawn(move || group_commit(&file, &receiver))
                    .expect("the group-commit thread starts");
                Router::new().route("/webhook", post(synced_webhook)).with_state(Synced { secrets, commits })
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        let name = if synced_in.is_some() { SYNCED } else { "ceiling" };
        Ceiling { name, addr, runtime, stop, server }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => progress(&format!("the {} server failed: {err}", self.name)),
            Ok(Err(err)) => progress(&format!("the {} server panicked: {err}", self.name)),
            Err(_) => progress(&format!("the {} server did not stop within 10 s", self.name)),
        }
        self.runtime.shutdown_background();
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Result<Connection, String> {
        let stream = TcpStream::connect(addr).await.map_err(|err| format!("connect to {addr}: {err}"))?;
        stream.set_nodelay(true).map_err(|err| format!("TCP_NODELAY: {err}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("HTTP handshake with {addr}: {err}"))?;
        let driver = tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes; errors show up in send_request.
            let _ = connection.await;
        });
        Ok(Connection { sender, driver })
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn close(self) {
        drop(self.sender);
        let _ = self.driver.await;
    }
}

/// What the server must answer for every delivery.
#[derive(Clone, Copy)]
enum Expect {
    /// 202, body not looked at.
    Accepted,
    /// 202 with `"outcome":"queued"`: a new task was journalled.
    Queued,
}

/// The answers of one phase.
#[derive(Default)]
struct Tally {
    /// Microseconds, of every answered request (202 or not).
    latencies: Vec<u64>,
    /// How late the generator sent each request (open loop only).
    send_lag: Vec<u64>,
    accepted: u64,
    not_queued: u64,
    non_202: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
    unsent: u64,
}

impl Tally {
    fn record(
        &mut self,
        latency: Duration,
        answer: Result<(StatusCode, Bytes), hyper::Error>,
        expect: Expect,
    ) {
        match answer {
            Ok((status, body)) => {
                self.latencies.push(micros(latency));
                if status != StatusCode::ACCEPTED {
                    *self.non_202.entry(status.as_u16()).or_default() += 1;
                    if self.first_error.is_none() {
                        self.first_error = Some(format!("{status}: {}", String::from_utf8_lossy(&body)));
                    }
                    return;
                }
                self.accepted += 1;
                if matches!(expect, Expect::Queued) && !contains(&body, b"\"outcome\":\"queued\"") {
                    self.not_queued += 1;
                    if self.first_error.is_none() {
                        self.first_error = Some(format!("not queued: {}", String::from_utf8_lossy(&body)));
                    }
                }
            }
            Err(err) => {
                self.transport_errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("transport: {err}"));
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.send_lag.extend(other.send_lag);
        self.accepted += other.accepted;
        self.not_queued += other.not_queued;
        for (status, count) in other.non_202 {
            *self.non_202.entry(status).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.unsent += other.unsent;
    }

    fn failures(&self) -> u64 {
        self.non_202.values().sum::<u64>() + self.transport_errors + self.not_queued + self.unsent
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// The result of one phase.
struct Phase {
    server: &'static str,
    name: String,
    elapsed: Duration,
    tally: Tally,
    /// Bytes the server wrote to storage during the phase, when known.
    written: Option<u64>,
    /// CPU seconds the server's threads spent in the phase, by role.
    cpu: Option<BTreeMap<&'static str, f64>>,
    /// The load generator's CPU seconds, and the machine's busy cores, in the phase.
    load: Spent,
}

impl Phase {
    fn throughput(&self) -> f64 {
        self.tally.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Percentile `p` (0..=100) of sorted microseconds, in milliseconds.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

async fn open_connections(addr: SocketAddr, count: usize) -> Vec<Connection> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        connections.push(Connection::open(addr).await.unwrap_or_else(|err| panic!("{err}")));
    }
    connections
}

async fn close_all(connections: Vec<Connection>) {
    for connection in connections {
        connection.close().await;
    }
}

/// `connections` keep-alive connections, each sending its next delivery as
/// soon as the previous one is answered, for `duration`.
async fn closed_loop(
    addr: SocketAddr,
    deliveries: &Arc<Deliveries>,
    connections: usize,
    duration: Duration,
    expect: Expect,
) -> (Duration, Tally) {
    let pool = open_connections(addr, connections).await;
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = JoinSet::new();
    for mut connection in pool {
        let deliveries = Arc::clone(deliveries);
        workers.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let Some(request) = deliveries.next() else {
                    tally.unsent += 1;
                    break;
                };
                let sent = Instant::now();
                let answer = connection.exchange(request).await;
                let failed = answer.is_err();
                tally.record(sent.elapsed(), answer, expect);
                if failed {
                    // The connection is unusable after a transport error; open another.
                    match Connection::open(addr).await {
                        Ok(fresh) => std::mem::replace(&mut connection, fresh).close().await,
                        Err(_) => break,
                    }
                }
            }
            (tally, connection)
        });
    }
    let mut tally = Tally::default();
    let mut pool = Vec::new();
    while let Some(done) = workers.join_next().await {
        let (worker, connection) = done.expect("a load worker does not panic");
        tally.merge(worker);
        pool.push(connection);
    }
    let elapsed = started.elapsed();
    close_all(pool).await;
    (elapsed, tally)
}

/// `rate` deliveries a second for `duration`, sent on a timer over a pool of
/// `connections`; each latency runs from the delivery's scheduled send time.
async fn open_loop(
    addr: SocketAddr,
    deliveries: &Arc<Deliveries>,
    connections: usize,
    rate: u64,
    duration: Duration,
    expect: Expect,
) -> (Duration, Tally) {
    let (idle_tx, idle_rx) = mpsc::unbounded_channel();
    for connection in open_connections(addr, connections).await {
        idle_tx.send(connection).expect("the pool is open");
    }
    // Requests queue for a free connection in order; the wait counts in their latency.
    let idle_rx = Arc::new(tokio::sync::Mutex::new(idle_rx));
    let total = rate * duration.as_secs();
    let interval = Duration::from_secs(1) / u32::try_from(rate).expect("a sane rate");
    let started = Instant::now() + Duration::from_millis(20);
    // The timer runs on its own thread: tokio's timer wheel has a 1 ms tick,
    // which would add up to a millisecond of generator lateness to every
    // latency. A thread sleeping to the microsecond is late by tens of µs.
    let (tick_tx, mut tick_rx) = mpsc::unbounded_channel::<Instant>();
    let timer = std::thread::Builder::new()
        .name("open-loop-timer".to_owned())
        .spawn(move || {
            for n in 0..total {
                let scheduled = started + interval * u32::try_from(n).expect("fewer than 4e9 requests");
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                if tick_tx.send(scheduled).is_err() {
                    return;
                }
            }
        })
        .expect("the timer thread starts");

    let mut tally = Tally::default();
    let mut inflight = JoinSet::new();
    while let Some(scheduled) = tick_rx.recv().await {
        // The generator's own lateness: the timer thread and this task waking up.
        let lag = scheduled.elapsed();
        let Some(request) = deliveries.next() else {
            tally.unsent += 1;
            continue;
        };
        let idle_tx = idle_tx.clone();
        let idle_rx = Arc::clone(&idle_rx);
        inflight.spawn(async move {
            let mut connection: Connection =
                idle_rx.lock().await.recv().await.expect("connections come back to the pool");
            let answer = connection.exchange(request).await;
            let latency = scheduled.elapsed();
            let mut tally = Tally::default();
            let failed = answer.is_err();
            tally.record(latency, answer, expect);
            tally.send_lag.push(micros(lag));
            if failed {
                match Connection::open(addr).await {
                    Ok(fresh) => std::mem::replace(&mut connection, fresh).close().await,
                    Err(err) => panic!("cannot reconnect: {err}"),
                }
            }
            let _ = idle_tx.send(connection);
            tally
        });
        while let Some(done) = inflight.try_join_next() {
            tally.merge(done.expect("a request task does not panic"));
        }
    }
    while let Some(done) = inflight.join_next().await {
        tally.merge(done.expect("a request task does not panic"));
    }
    let elapsed = started.elapsed();
    timer.join().expect("the timer thread does not panic");
    drop(idle_tx);
    let mut pool = Vec::new();
    while let Ok(connection) = idle_rx.lock().await.try_recv() {
        pool.push(connection);
    }
    close_all(pool).await;
    (elapsed, tally)
}

/// A signed delivery with a wrong signature must be refused: the servers really verify.
async fn check_refuses_bad_signature(addr: SocketAddr, template: &Template) {
    let body = template.body(1);
    let headers = [
        ("X-GitHub-Event", "issue_comment".to_owned()),
        ("X-GitHub-Delivery", "bench-bad-signature".to_owned()),
        ("X-Hub-Signature-256", sign("not-the-secret", &body)),
        ("Content-Type", "application/json".to_owned()),
    ];
    let (status, text) =
        tests::http(addr, "POST", "/webhook", &headers, &body).await.expect("the server answers");
    assert_eq!(status, 401, "a bad signature must be refused at {addr}: {text}");
}

/// The number of deliveries Berth says it queued, from `/metrics`.
async fn berth_queued_count(addr: SocketAddr) -> Option<u64> {
    let (status, text) = tests::http(addr, "GET", "/metrics", &[], b"").await.ok()?;
    if status != 200 {
        return None;
    }
    text.lines()
        .find(|line| {
            line.starts_with("berth_webhook_deliveries_total{")
                && line.contains("event=\"issue_comment\"")
                && line.contains("outcome=\"queued\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map(|value| value as u64)
}

/// How long rewriting one 4 KiB block in place and `fdatasync` take in
/// `dir` (as a journal rewrites its pages): the floor for any answer that
/// waits for its delivery to be on this disk.
fn disk_floor(dir: &std::path::Path, samples: usize) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let file = std::fs::File::create(&path).expect("the probe file is created");
    let block = [0x5a_u8; 4096];
    file.write_all_at(&block, 0).expect("the probe writes");
    file.sync_all().expect("the probe syncs");
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        file.write_all_at(&block, 0).expect("the probe writes");
        file.sync_data().expect("the probe syncs");
        latencies.push(micros(started.elapsed()));
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    latencies.sort_unstable();
    latencies
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let meta = entry.metadata().ok()?;
        total += if meta.is_dir() { dir_bytes(&entry.path())? } else { meta.len() };
    }
    Some(total)
}

/// Linux reports thread CPU time in USER_HZ ticks, which its ABI fixes at 100 a second.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks (user + system) of the threads of a process, summed by thread
/// name (`/proc/<pid>/task/*/stat`; `self` for this process); `None`
/// where there is no such `/proc`.
fn thread_ticks(pid: &str) -> Option<BTreeMap<String, u64>> {
    let mut ticks = BTreeMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // `tid (comm) state ...`: comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (Some(user), Some(system)) = (fields.get(11), fields.get(12)) else { continue };
        let (Ok(user), Ok(system)) = (user.parse::<u64>(), system.parse::<u64>()) else { continue };
        *ticks.entry(name).or_default() += user + system;
    }
    Some(ticks)
}

/// What a thread does, by its name: Berth's (the daemon's runtime, the
/// journal's writer and fold threads, the log writer) or the ceiling's.
fn role(server: &str, thread: &str) -> Option<&'static str> {
    match server {
        "ceiling" => (thread == "ceiling").then_some("all"),
        SYNCED => thread.starts_with("ceiling-sync").then_some("all"),
        _ => Some(match thread {
            "tokio-rt-worker" => "request handling",
            "berth-journal" => "journal writer",
            "berth-journal-f" => "journal fold",
            "berth-log" => "log",
            _ => "other",
        }),
    }
}

/// The CPU seconds between two [`thread_ticks`] readings, by [`role`]. A
/// thread that started between them counts from its start; one that ended
/// takes its time with it (the runtimes' threads live for the whole run).
fn cpu_by_role(
    server: &str,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<&'static str, f64> {
    let mut seconds = BTreeMap::new();
    for (thread, ticks) in after {
        let Some(role) = role(server, thread) else { continue };
        let spent = ticks.saturating_sub(before.get(thread).copied().unwrap_or(0));
        *seconds.entry(role).or_default() += spent as f64 / TICKS_PER_SECOND;
    }
    seconds
}

/// The machine's busy and total CPU ticks since boot (`/proc/stat`'s `cpu`
/// line: busy is user, nice, system, irq, softirq and steal; total adds
/// idle and iowait).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map_while(|field| field.parse().ok()).collect();
    let field = |index: usize| fields.get(index).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Some((busy, busy + field(3) + field(4)))
}

/// A reading of what is spent besides the server: the load generator's CPU
/// ticks (this process's threads other than the two ceilings') and the
/// machine's ticks.
#[derive(Debug, Clone, Copy)]
struct Load {
    generator: Option<u64>,
    machine: Option<(u64, u64)>,
}

/// What was spent between two [`Load`] readings.
#[derive(Debug, Clone, Copy)]
struct Spent {
    /// The load generator's CPU seconds.
    generator: Option<f64>,
    /// How many of the machine's cores were busy, on average, and of how many.
    machine: Option<(f64, f64)>,
}

impl Load {
    fn now() -> Load {
        let generator = thread_ticks("self").map(|ticks| {
            ticks.iter().filter(|(name, _)| !name.starts_with("ceiling")).map(|(_, ticks)| ticks).sum()
        });
        Load { generator, machine: machine_ticks() }
    }

    fn since(self, elapsed: Duration) -> Spent {
        let after = Load::now();
        let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
        Spent {
            generator: after
                .generator
                .zip(self.generator)
                .map(|(after, before)| after.saturating_sub(before) as f64 / TICKS_PER_SECOND),
            machine: after.machine.zip(self.machine).map(|((busy, total), (busy_before, total_before))| {
                let busy = busy.saturating_sub(busy_before) as f64 / TICKS_PER_SECOND / seconds;
                let cores = total.saturating_sub(total_before) as f64 / TICKS_PER_SECOND / seconds;
                (busy, cores)
            }),
        }
    }
}

/// Bytes a process has caused to be written to storage (Linux `/proc/<pid>/io`).
fn storage_writes(pid: Option<u32>) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{}/io", pid?)).ok()?;
    io.lines().find_map(|line| line.strip_prefix("write_bytes: ")).and_then(|value| value.trim().parse().ok())
}

fn summarize(phases: &[Phase], setup: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{setup}\n");
    let _ = writeln!(
        out,
        "| server | phase | throughput (req/s) | p50 (ms) | p99 (ms) | max (ms) | not 202 / errors | ÷ ceiling | Berth ÷ synced ceiling |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    // Throughput over that of `server` in the same closed-loop phase.
    let ratio = |phase: &Phase, server: &str| {
        phases
            .iter()
            .find(|other| other.server == server && other.name == phase.name)
            .filter(|_| phase.name.starts_with("closed"))
            .map_or_else(String::new, |other| format!("{:.2}", phase.throughput() / other.throughput()))
    };
    for phase in phases {
        let mut sorted = phase.tally.latencies.clone();
        sorted.sort_unstable();
        let over_ceiling = if phase.server == "ceiling" { String::new() } else { ratio(phase, "ceiling") };
        let over_synced = if phase.server == "berth" { ratio(phase, SYNCED) } else { String::new() };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {over_ceiling} | {over_synced} |",
            phase.server,
            phase.name,
            phase.throughput(),
            percentile(&sorted, 50.0),
            percentile(&sorted, 99.0),
            percentile(&sorted, 100.0),
            phase.tally.failures(),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "CPU per answered delivery, in µs: the server's threads' CPU time in the phase over its answers (steadier than throughput when the machine's speed wanders). The load generator (this process's threads but the ceilings') is shown on its own, and the machine's busy cores (`/proc/stat`) tell whether the phase was bound by the CPU.\n"
    );
    let _ = writeln!(
        out,
        "| server | phase | CPU per delivery (µs) | cores busy | ÷ ceiling | by role (µs) | generator (µs) | machine busy (cores) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|---:|---:|");
    let per_delivery = |phase: &Phase| {
        let cpu: f64 = phase.cpu.as_ref()?.values().sum();
        Some((cpu * 1e6 / phase.tally.latencies.len().max(1) as f64, cpu / phase.elapsed.as_secs_f64()))
    };
    for phase in phases {
        let (Some(cpu), Some((micros, cores))) = (&phase.cpu, per_delivery(phase)) else { continue };
        let answers = phase.tally.latencies.len().max(1) as f64;
        let ceiling = phases
            .iter()
            .find(|other| other.server == "ceiling" && other.name == phase.name)
            .and_then(&per_delivery);
        let ratio = match ceiling {
            Some((ceiling, _)) if phase.server != "ceiling" => format!("{:.1}", micros / ceiling),
            _ => String::new(),
        };
        let roles: Vec<String> =
            cpu.iter().map(|(role, seconds)| format!("{role} {:.1}", seconds * 1e6 / answers)).collect();
        let roles = if phase.server == "berth" { roles.join(", ") } else { String::new() };
        let generator = phase
            .load
            .generator
            .map_or_else(String::new, |seconds| format!("{:.1}", seconds * 1e6 / answers));
        let machine =
            phase.load.machine.map_or_else(String::new, |(busy, cores)| format!("{busy:.2} of {cores:.0}"));
        let _ = writeln!(
            out,
            "| {} | {} | {micros:.1} | {cores:.2} | {ratio} | {roles} | {generator} | {machine} |",
            phase.server, phase.name,
        );
    }
    let _ = writeln!(out);
    for phase in phases {
        if !phase.tally.send_lag.is_empty() {
            let mut lag = phase.tally.send_lag.clone();
            lag.sort_unstable();
            let _ = writeln!(
                out,
                "- {} {}: generator lateness (tick handled − scheduled send; included in the latencies above): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                phase.server,
                phase.name,
                percentile(&lag, 50.0),
                percentile(&lag, 99.0),
                percentile(&lag, 100.0),
            );
        }
        if let Some(written) = phase.written.filter(|_| phase.tally.accepted > 0) {
            let _ = writeln!(
                out,
                "- {} {}: {:.1} MB written to storage, {:.1} KB per accepted delivery",
                phase.server,
                phase.name,
                written as f64 / 1e6,
                written as f64 / 1e3 / phase.tally.accepted as f64,
            );
        }
        let tally = &phase.tally;
        if tally.failures() > 0 {
            let _ = writeln!(
                out,
                "- {} {}: {} answered 202, non-202 {:?}, {} not queued, {} transport errors, {} not sent (signed numbers used up); first: {}",
                phase.server,
                phase.name,
                tally.accepted,
                tally.non_202,
                tally.not_queued,
                tally.transport_errors,
                tally.unsent,
                tally.first_error.as_deref().unwrap_or("-"),
            );
        }
    }
    out
}

/// One server under test.
struct Target {
    server: &'static str,
    addr: SocketAddr,
    deliveries: Arc<Deliveries>,
    expect: Expect,
    /// The server's process, when it has its own (for its storage writes).
    pid: Option<u32>,
}

impl Target {
    /// One of the two ceilings: it ignores the pull request numbers, so
    /// 4,096 signed bodies are sent round-robin.
    fn reference(server: &'static str, addr: SocketAddr, template: &Arc<Template>) -> Target {
        let prefix = format!("bench-{}", server.replace(' ', "-"));
        Target {
            server,
            addr,
            deliveries: Arc::new(Deliveries::new(Arc::clone(template), addr, &prefix, 1, 4096, true)),
            expect: Expect::Accepted,
            pid: None,
        }
    }

    async fn closed(&self, connections: usize, duration: Duration) -> Phase {
        progress(&format!("{}: closed loop over {connections} connections", self.server));
        closed_loop(self.addr, &self.deliveries, connections, WARM_UP, self.expect).await;
        let written = storage_writes(self.pid);
        let ticks = thread_ticks(&self.process());
        let load = Load::now();
        let (elapsed, tally) =
            closed_loop(self.addr, &self.deliveries, connections, duration, self.expect).await;
        let load = load.since(elapsed);
        let cpu = self.cpu_since(ticks);
        let written = storage_writes(self.pid).zip(written).map(|(after, before)| after - before);
        Phase {
            server: self.server,
            name: format!("closed, {connections} conns"),
            elapsed,
            tally,
            written,
            cpu,
            load,
        }
    }

    /// The process whose threads serve: the daemon's, or this one's for the ceiling.
    fn process(&self) -> String {
        self.pid.map_or_else(|| "self".to_owned(), |pid| pid.to_string())
    }

    /// The server's CPU by role since `before` (a phase's start), when `/proc` tells.
    fn cpu_since(&self, before: Option<BTreeMap<String, u64>>) -> Option<BTreeMap<&'static str, f64>> {
        Some(cpu_by_role(self.server, &before?, &thread_ticks(&self.process())?))
    }

    async fn open(&self, connections: usize, rate: u64, duration: Duration) -> Phase {
        progress(&format!("{}: open loop at {rate}/s", self.server));
        let written = storage_writes(self.pid);
        let ticks = thread_ticks(&self.process());
        let load = Load::now();
        let (elapsed, tally) =
            open_loop(self.addr, &self.deliveries, connections, rate, duration, self.expect).await;
        let load = load.since(elapsed);
        let cpu = self.cpu_since(ticks);
        let written = storage_writes(self.pid).zip(written).map(|(after, before)| after - before);
        Phase { server: self.server, name: format!("open, {rate}/s"), elapsed, tally, written, cpu, load }
    }
}

#[tokio::main]
async fn main() {
    let seconds = setting(core_types::env_names::BERTH_BENCH_SECONDS, 5);
    let connections =
        usize::try_from(setting(core_types::env_names::BERTH_BENCH_CONNECTIONS, 32)).expect("a sane count");
    let wide = usize::try_from(setting(core_types::env_names::BERTH_BENCH_WIDE_CONNECTIONS, 256))
        .expect("a sane count");
    let rate = setting(core_types::env_names::BERTH_BENCH_RATE, 1000);
    let duration = Duration::from_secs(seconds);
    let template = Arc::new(Template::load());

    let ceiling_server = Ceiling::start(None);
    let dir = tempfile::tempdir().expect("a temp dir");
    let synced_server = Ceiling::start(Some(dir.path()));
    let key = rsa_key(dir.path());
    let state_dir = dir.path().join("state");
    let settings = vec![
        ("BERTH_WEBHOOK_SECRET", SECRET.to_owned()),
        ("BERTH_GITHUB_APP_ID", "1".to_owned()),
        ("BERTH_GITHUB_PRIVATE_KEY_FILE", key.display().to_string()),
        ("BERTH_STATE_DIR", state_dir.display().to_string()),
        ("BERTH_GITHUB_API_URL", "http://127.0.0.1:9".to_owned()),
        ("BERTH_WORKER_IMAGE", "berth-bench-no-such-image:none".to_owned()),
        // Keep the runner off (no engine to reach), so the figures are the
        // intake alone and no container is ever created: the queued tasks stay queued.
        ("DOCKER_HOST", format!("unix://{}", dir.path().join("no-docker.sock").display())),
        // The daemon's default; BERTH_BENCH_RUST_LOG can add e.g. `journal=debug`.
        (
            "RUST_LOG",
            std::env::var(core_types::env_names::BERTH_BENCH_RUST_LOG).unwrap_or_else(|_| "info".to_owned()),
        ),
    ];
    progress("building and starting berth serve");
    let log_file = std::env::var(core_types::env_names::BERTH_BENCH_LOG).ok().map(std::path::PathBuf::from);
    let daemon = Daemon::start_logging(&settings, log_file.as_deref()).await;
    progress(&format!(
        "berth on {}, ceiling on {}, synced ceiling on {}, journal in {}",
        daemon.addr,
        ceiling_server.addr,
        synced_server.addr,
        state_dir.display()
    ));
    check_refuses_bad_signature(ceiling_server.addr, &template).await;
    check_refuses_bad_signature(synced_server.addr, &template).await;
    check_refuses_bad_signature(daemon.addr, &template).await;
    let floor = disk_floor(dir.path(), 200);

    // The ceiling first: its throughput sizes how many distinct pull requests
    // Berth needs signed (every phase of it, warm-ups included, with room to spare).
    let ceiling = Target::reference("ceiling", ceiling_server.addr, &template);
    let synced = Target::reference(SYNCED, synced_server.addr, &template);
    let mut phases = vec![ceiling.closed(connections, duration).await];
    let budget = (phases[0].throughput() * (WARM_UP + duration).as_secs_f64() * 4.0) as u64
        + rate * seconds * 2
        + 10_000;
    let berth = Target {
        server: "berth",
        addr: daemon.addr,
        deliveries: Arc::new(Deliveries::new(
            Arc::clone(&template),
            daemon.addr,
            "bench-berth",
            1_000_000,
            budget,
            false,
        )),
        expect: Expect::Queued,
        pid: daemon.child.id(),
    };
    phases.push(synced.closed(connections, duration).await);
    phases.push(berth.closed(connections, duration).await);
    phases.push(ceiling.closed(wide, duration).await);
    phases.push(synced.closed(wide, duration).await);
    phases.push(berth.closed(wide, duration).await);
    phases.push(ceiling.open(connections, rate, duration).await);
    phases.push(berth.open(connections, rate, duration).await);

    // Cross-check with Berth's own count: every delivery sent (warm-ups
    // included) should be a task it says it queued.
    let berth_sent = berth.deliveries.sent.load(Ordering::Relaxed);
    let metrics_queued = berth_queued_count(daemon.addr).await;
    // Everything the daemon wrote, from its start, once the last fold of
    // the intake log into redb is done too (it folds about once a second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let written_in_all = storage_writes(berth.pid);
    let state_bytes = dir_bytes(&state_dir);
    let journal_bytes = std::fs::metadata(state_dir.join("journal.redb")).map(|meta| meta.len()).ok();

    if let Some(path) = &log_file {
        progress(&format!("berth's log is in {}", path.display()));
    }
    daemon.kill().await;
    ceiling_server.stop().await;
    synced_server.stop().await;

    let setup = format!(
        "Signed issue_comment deliveries of {:.1} KB; {seconds} s per phase, closed loops after a {} s \
         warm-up; open loop at {rate}/s spread over {connections} keep-alive connections.",
        template.body(1_000_000).len() as f64 / 1000.0,
        WARM_UP.as_secs()
    );
    let mut report = summarize(&phases, &setup);
    let _ = writeln!(
        report,
        "- berth: {berth_sent} deliveries sent in all (warm-ups included); its /metrics counts {} queued; journal file {} MB, state directory {} MB (journal, intake log)",
        metrics_queued.map_or_else(|| "?".to_owned(), |count| count.to_string()),
        journal_bytes.map_or_else(|| "?".to_owned(), |bytes| format!("{:.1}", bytes as f64 / 1e6)),
        state_bytes.map_or_else(|| "?".to_owned(), |bytes| format!("{:.1}", bytes as f64 / 1e6)),
    );
    if let Some(written) = written_in_all {
        let _ = writeln!(
            report,
            "- berth: {:.1} MB written to storage from its start to 3 s after the last phase (every fold included), {:.1} KB per delivery sent",
            written as f64 / 1e6,
            written as f64 / 1e3 / berth_sent.max(1) as f64,
        );
    }
    let _ = writeln!(
        report,
        "- berth's log: {}",
        if log_file.is_some() { "to a file" } else { "to a pipe this benchmark reads" }
    );
    let _ = writeln!(
        report,
        "- disk floor (one 4 KiB block rewritten in place + fdatasync, in the journal's file system, 200 in a row, before the load): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&floor, 50.0),
        percentile(&floor, 99.0),
        percentile(&floor, 100.0),
    );
    let _ = std::io::stdout().write_all(report.as_bytes());
}
