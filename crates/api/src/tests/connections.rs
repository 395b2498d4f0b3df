//! The HTTP server's limits on a loopback socket, with limits small enough
//! to reach in a unit test: the body budget (503), the body timeout (408),
//! the connection limit (eviction of idle connections, refusal when all are
//! busy), and the drain at shutdown. The end-to-end tests
//! (`tests/e2e/hardening_intake.rs`) take the defaults against `berth serve`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use core_types::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::connections::HttpLimits;
use crate::server::{AppState, router, serve};
use domain::signature::WebhookSecrets;
use domain::triggers::Policy;
use journal::Journal;
use telemetry::Metrics;

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(limits: HttpLimits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let state = AppState {
        secrets: WebhookSecrets::new(Secret::new("connections-webhook-secret"), None),
        policy: Arc::new(Policy::default()),
        journal: Journal::open(dir.path()).unwrap(),
        ready: Arc::new(AtomicBool::new(true)),
        metrics: Arc::clone(&metrics),
        wake: Arc::new(Notify::new()),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(serve(listener, router(state), limits, Arc::clone(&metrics), shutdown.clone()));
    Server { addr, metrics, shutdown, served, _dir: dir }
}

fn forged_head(length: usize) -> String {
    format!(
        "POST /webhook HTTP/1.1\r\nHost: berth\r\nX-GitHub-Event: ping\r\nX-GitHub-Delivery: d\r\n\
         X-Hub-Signature-256: sha256={}\r\nContent-Length: {length}\r\n\r\n",
        "0".repeat(64)
    )
}

/// Everything the server sends until it closes or `limit` passes.
async fn answer(stream: &mut TcpStream, limit: Duration) -> String {
    let mut text = Vec::new();
    let mut buffer = [0_u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Ok(read)) = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
        if read == 0 {
            break;
        }
        text.extend_from_slice(&buffer[..read]);
        if text.windows(4).any(|window| window == b"\r\n\r\n") && text.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

async fn healthz(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text)).await.unwrap().unwrap();
    text
}

fn small() -> HttpLimits {
    HttpLimits {
        max_connections: 4,
        max_body_bytes_in_flight: 256 * 1024,
        header_read_timeout: Duration::from_secs(2),
        body_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        drain_grace: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn bodies_past_the_budget_are_503_and_slow_ones_408() {
    let server = start(small()).await;
    // One body holds most of the budget, the next one does not fit.
    let mut holder = TcpStream::connect(server.addr).await.unwrap();
    holder.write_all(forged_head(400 * 1024).as_bytes()).await.unwrap();
    holder.write_all(&vec![b' '; 200 * 1024]).await.unwrap();
    // Loopback delivers it at once; leave the server time to take it in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut late = TcpStream::connect(server.addr).await.unwrap();
    late.write_all(forged_head(100 * 1024).as_bytes()).await.unwrap();
    let _ = late.write_all(&vec![b' '; 100 * 1024]).await;
    let refused = answer(&mut late, Duration::from_secs(5)).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    assert!(refused.contains("BERTH_MAX_BODY_BYTES_IN_FLIGHT"), "{refused}");

    // The holder never sends the rest: 408 after the body timeout, and its bytes are free again.
    let timed_out = answer(&mut holder, Duration::from_secs(5)).await;
    assert!(timed_out.starts_with("HTTP/1.1 408"), "{timed_out}");
    assert!(timed_out.contains("BERTH_BODY_READ_TIMEOUT"), "{timed_out}");
    let mut fits = TcpStream::connect(server.addr).await.unwrap();
    fits.write_all(forged_head(200 * 1024).as_bytes()).await.unwrap();
    fits.write_all(&vec![b' '; 200 * 1024]).await.unwrap();
    let mismatch = answer(&mut fits, Duration::from_secs(5)).await;
    assert!(mismatch.starts_with("HTTP/1.1 401"), "read whole and checked: {mismatch}");

    let metrics = server.metrics.render();
    for series in [
        "berth_http_requests_refused_total{reason=\"body_budget\"} 1",
        "berth_http_requests_refused_total{reason=\"body_timeout\"} 1",
        "berth_webhook_deliveries_total{event=\"ping\",outcome=\"busy\"} 1",
        "berth_webhook_deliveries_total{event=\"ping\",outcome=\"timeout\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    server.shutdown.cancel();
    server.served.await.unwrap();
}

#[tokio::test]
async fn at_the_connection_limit_the_idle_make_room_and_the_busy_keep_theirs() {
    let server = start(small()).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(healthz(server.addr).await.starts_with("HTTP/1.1 200"), "an idle connection made room");

    // Four requests in flight (slow bodies): the fifth connection is closed at once.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(forged_head(1000).as_bytes()).await.unwrap();
        busy.push(stream);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut turned_away = TcpStream::connect(server.addr).await.unwrap();
    let _ = turned_away.write_all(b"GET /healthz HTTP/1.1\r\nHost: berth\r\n\r\n").await;
    let mut buffer = [0_u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), turned_away.read(&mut buffer)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer: {read:?}");
    // The busy ones are answered (401: the forged signature) once their bodies come.
    for stream in &mut busy {
        stream.write_all(&[b' '; 1000]).await.unwrap();
        let text = answer(stream, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    }
    let metrics = server.metrics.render();
    assert!(metrics.contains("berth_http_connections_dropped_total{reason=\"evicted\"}"), "{metrics}");
    assert!(metrics.contains("berth_http_connections_dropped_total{reason=\"refused\"} 1"), "{metrics}");
    server.shutdown.cancel();
    server.served.await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_and_cuts_a_slow_body_after_the_grace() {
    let server = start(HttpLimits { body_read_timeout: Duration::from_secs(60), ..small() }).await;
    let _idle = TcpStream::connect(server.addr).await.unwrap();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(forged_head(1000).as_bytes()).await.unwrap();
    slow.write_all(b"  ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server.served).await.expect("the server stopped").unwrap();
    let took = stopping.elapsed();
    assert!(took >= Duration::from_millis(900), "the request in flight had its grace: {took:?}");
    assert!(TcpStream::connect(server.addr).await.is_err(), "no longer listening");
}
