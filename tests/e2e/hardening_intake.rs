//! Hostile clients on the webhook port against a real `berth serve`
//! (issue 12, items 2, 3 and 11): unsigned bodies that would fill memory,
//! idle and slow connections that would fill the connection table, slow
//! bodies and open log streams at SIGTERM, log lines an attacker can
//! multiply, short secrets and secrets on the command line.
//!
//! Everything is on loopback, and every loop is bounded in count and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{Daemon, http, review_comment, rsa_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "e2e-hardening-webhook-secret";

/// The daemon's resident memory must stay below this while 100 nearly full
/// unsigned bodies are held open: its idle size (about 20 MiB) plus the
/// default body budget (`BERTH_MAX_BODY_BYTES_IN_FLIGHT`, 64 MiB) plus read
/// buffers, with room to spare; without a budget the 100 bodies alone are
/// 2.5 GiB.
const RSS_LIMIT_KIB: u64 = 200 * 1024;

/// Nearly GitHub's largest payload (25 MiB).
const NEARLY_FULL: usize = 25 * 1024 * 1024 - 4096;

struct Env {
    dir: tempfile::TempDir,
    key: std::path::PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let key = rsa_key(dir.path());
    Env { dir, key }
}

impl Env {
    fn settings(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut settings = vec![
            ("BERTH_WEBHOOK_SECRET", SECRET.to_owned()),
            ("BERTH_GITHUB_APP_ID", "1".to_owned()),
            ("BERTH_GITHUB_PRIVATE_KEY_FILE", self.key.display().to_string()),
            ("BERTH_STATE_DIR", self.dir.path().join("state").display().to_string()),
            ("BERTH_GITHUB_API_URL", "http://127.0.0.1:9".to_owned()),
            ("BERTH_WORKER_IMAGE", "berth-test-no-such-image:none".to_owned()),
        ];
        for (key, value) in extra {
            settings.retain(|(existing, _)| existing != key);
            settings.push((key, (*value).to_owned()));
        }
        settings
    }
}

async fn deliver(addr: SocketAddr, delivery: &str, body: &[u8]) -> std::io::Result<(u16, Value)> {
    tests::deliver_comment(addr, SECRET, delivery, body).await
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What became of one hostile upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upload {
    /// Everything but the last bytes is sent and the connection is open.
    Held,
    /// The daemon answered with this status before the body was complete.
    Answered(u16),
    /// The daemon closed the connection.
    Cut,
}

/// The request head of a webhook delivery with a well-formed but forged signature.
fn forged_head(addr: SocketAddr, delivery: &str, length: usize) -> String {
    format!(
        "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: issue_comment\r\n\
         X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: sha256={}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        "0".repeat(64)
    )
}

/// Sends `NEARLY_FULL` bytes but the last 16, then reports; the stream is
/// handed back while it is held.
async fn upload(addr: SocketAddr, n: usize, zeros: Arc<Vec<u8>>) -> (Upload, Option<TcpStream>) {
    let Ok(mut stream) = TcpStream::connect(addr).await else { return (Upload::Cut, None) };
    if stream.write_all(forged_head(addr, &format!("hostile-{n}"), NEARLY_FULL).as_bytes()).await.is_err() {
        return (Upload::Cut, None);
    }
    let mut left = NEARLY_FULL - 16;
    while left > 0 {
        let piece = left.min(zeros.len());
        if stream.write_all(&zeros[..piece]).await.is_err() {
            return (answer_of(&mut stream).await, None);
        }
        left -= piece;
    }
    // Whatever the daemon said meanwhile.
    let mut buffer = [0_u8; 512];
    match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
        Err(_) => (Upload::Held, Some(stream)),
        Ok(Ok(0) | Err(_)) => (Upload::Cut, None),
        Ok(Ok(read)) => (status_of(&buffer[..read]), None),
    }
}

async fn answer_of(stream: &mut TcpStream) -> Upload {
    let mut buffer = [0_u8; 512];
    match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await {
        Ok(Ok(read)) if read > 0 => status_of(&buffer[..read]),
        _ => Upload::Cut,
    }
}

fn status_of(head: &[u8]) -> Upload {
    String::from_utf8_lossy(head)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .map_or(Upload::Cut, Upload::Answered)
}

#[tokio::test]
async fn a_hundred_nearly_full_unsigned_bodies_held_open_stay_within_the_memory_figure() {
    let env = env();
    let daemon = Daemon::start(&env.settings(&[])).await;
    let pid = daemon.child.id().unwrap();
    let addr = daemon.addr;
    let (idle_rss, _) = memory_kib(pid);

    let zeros = Arc::new(vec![b'0'; 64 * 1024]);
    let mut uploads = tokio::task::JoinSet::new();
    for n in 0..100 {
        uploads.spawn(upload(addr, n, zeros.clone()));
    }
    // Sample the daemon's memory while the uploads run; fail as soon as it is over.
    let started = Instant::now();
    let mut peak_rss = idle_rss;
    let mut outcomes = Vec::new();
    let mut held = Vec::new();
    while outcomes.len() < 100 {
        assert!(started.elapsed() < Duration::from_secs(120), "the uploads did not finish in 120 s");
        let (rss, _) = memory_kib(pid);
        peak_rss = peak_rss.max(rss);
        assert!(
            rss < RSS_LIMIT_KIB,
            "the daemon grew to {} MiB (idle {} MiB) with {} of 100 uploads done: {outcomes:?}",
            rss / 1024,
            idle_rss / 1024,
            outcomes.len()
        );
        if let Ok(Some(done)) = tokio::time::timeout(Duration::from_millis(20), uploads.join_next()).await {
            let (outcome, stream) = done.unwrap();
            outcomes.push(outcome);
            held.extend(stream);
        }
    }

    // Held open: the daemon still answers, its health at once and a delivery
    // with an answer (202, or 503 while the budget is taken).
    let healthy = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(2), http(addr, "GET", "/healthz", &[], b""))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    let healthz_ms = healthy.elapsed().as_millis();
    let delivered = Instant::now();
    let (status, answer) =
        tokio::time::timeout(Duration::from_secs(5), deliver(addr, "while-held", &review_comment(1)))
            .await
            .expect("a delivery is answered within 5 s while the bodies are held")
            .unwrap();
    assert!(status == 202 || status == 503, "{status}: {answer}");
    let delivery_ms = delivered.elapsed().as_millis();
    for _ in 0..25 {
        let (rss, _) = memory_kib(pid);
        peak_rss = peak_rss.max(rss);
        assert!(rss < RSS_LIMIT_KIB, "the daemon grew to {} MiB while the bodies were held", rss / 1024);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let (_, high_water) = memory_kib(pid);
    let count = |wanted: fn(&Upload) -> bool| outcomes.iter().filter(|outcome| wanted(outcome)).count();
    eprintln!(
        "idle RSS {} MiB, peak sampled RSS {} MiB, VmHWM {} MiB (limit {} MiB); uploads held {}, refused 503 {}, other answers {}, cut {}; /healthz {healthz_ms} ms, a delivery {delivery_ms} ms ({status}) while held",
        idle_rss / 1024,
        peak_rss / 1024,
        high_water / 1024,
        RSS_LIMIT_KIB / 1024,
        count(|o| *o == Upload::Held),
        count(|o| *o == Upload::Answered(503)),
        count(|o| matches!(o, Upload::Answered(code) if *code != 503)),
        count(|o| *o == Upload::Cut),
    );
    assert!(high_water < RSS_LIMIT_KIB, "VmHWM {} MiB", high_water / 1024);
    assert!(count(|o| *o != Upload::Held) > 0, "the budget refused some uploads: {outcomes:?}");

    // Let go: the budget is free again and a delivery is queued.
    drop(held);
    let released = Instant::now();
    loop {
        let (status, answer) = deliver(addr, "after-release", &review_comment(2)).await.unwrap();
        if status == 202 {
            assert_eq!(answer["outcome"], "queued", "{answer}");
            break;
        }
        assert!(released.elapsed() < Duration::from_secs(5), "still {status} after release: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.kill().await;
}

#[tokio::test]
async fn a_thousand_idle_connections_leave_room_for_a_signed_delivery() {
    let env = env();
    let daemon = Daemon::start(&env.settings(&[])).await;
    let addr = daemon.addr;
    let opening = Instant::now();
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        assert!(opening.elapsed() < Duration::from_secs(30), "opening the idle connections took over 30 s");
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let opened_in = opening.elapsed();
    let asked = Instant::now();
    let (status, answer) =
        tokio::time::timeout(Duration::from_secs(5), deliver(addr, "past-idle", &review_comment(3)))
            .await
            .expect("a signed delivery is answered within 5 s beside 1,000 idle connections")
            .unwrap();
    let took = asked.elapsed();
    eprintln!("1,000 idle connections opened in {opened_in:?}; a signed delivery answered in {took:?}");
    assert_eq!((status, answer["outcome"].as_str()), (202, Some("queued")), "{answer}");
    drop(idle);
    daemon.kill().await;
}

/// Reads until the peer closes or `limit` passes; what came and when it ended.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut text = Vec::new();
    let mut buffer = [0_u8; 1024];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return (String::from_utf8_lossy(&text).into_owned(), None),
            Ok(Ok(0) | Err(_)) => {
                return (String::from_utf8_lossy(&text).into_owned(), Some(started.elapsed()));
            }
            Ok(Ok(read)) => text.extend_from_slice(&buffer[..read]),
        }
    }
}

#[tokio::test]
async fn slow_headers_slow_bodies_and_idle_keep_alives_are_dropped_at_their_timeouts() {
    let env = env();
    let daemon = Daemon::start(&env.settings(&[
        ("BERTH_HEADER_READ_TIMEOUT", "2s"),
        ("BERTH_BODY_READ_TIMEOUT", "2s"),
        ("BERTH_IDLE_TIMEOUT", "6s"),
    ]))
    .await;
    let addr = daemon.addr;

    // Slowloris: a header line every 500 ms, never the end of the head.
    let mut slow_head = TcpStream::connect(addr).await.unwrap();
    let closed_head = dribble_head(&mut slow_head).await;

    // The same on a kept-alive connection, after one answered request: the
    // head's own timeout holds, not the longer idle one.
    let mut kept_then_slow = TcpStream::connect(addr).await.unwrap();
    kept_then_slow
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = [0_u8; 512];
    let read = kept_then_slow.read(&mut first).await.unwrap();
    assert!(first[..read].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..read]));
    let closed_kept_head = dribble_head(&mut kept_then_slow).await;

    // A slow body: the head at once, then one byte every 500 ms.
    let mut slow_body = TcpStream::connect(addr).await.unwrap();
    slow_body.write_all(forged_head(addr, "slow-body", 1000).as_bytes()).await.unwrap();
    let dribble = Instant::now();
    let mut answer = String::new();
    let mut closed_body = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = slow_body.write_all(b" ").await;
        let (text, closed) = until_closed(&mut slow_body, Duration::from_millis(1)).await;
        answer.push_str(&text);
        if closed.is_some() || !answer.is_empty() {
            closed_body = Some(dribble.elapsed());
            break;
        }
    }
    let closed_body = closed_body.expect("a body dribbled for 20 s is dropped");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Keep-alive: one request answered, then nothing.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let (text, closed_idle) = until_closed(&mut kept, Duration::from_secs(20)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let closed_idle = closed_idle.expect("an idle keep-alive connection is closed");

    // A connection that never says anything.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (_, closed_silent) = until_closed(&mut silent, Duration::from_secs(20)).await;
    let closed_silent = closed_silent.expect("a silent connection is closed");

    eprintln!(
        "dropped: slow head after {closed_head:?}, slow head on a kept-alive connection after {closed_kept_head:?}, slow body after {closed_body:?}, silent after {closed_silent:?} (header and body timeouts 2 s); idle keep-alive after {closed_idle:?} (idle timeout 6 s)"
    );
    for took in [closed_head, closed_kept_head, closed_body, closed_silent] {
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    assert!(
        closed_idle > Duration::from_millis(5500) && closed_idle < Duration::from_secs(10),
        "{closed_idle:?}"
    );
    daemon.kill().await;
}

/// Sends a request head a line every 500 ms, never ending it; how long
/// until the daemon closed the connection (at most 20 s).
async fn dribble_head(stream: &mut TcpStream) -> Duration {
    stream.write_all(b"POST /webhook HTTP/1.1\r\nHost: berth\r\n").await.unwrap();
    let dribble = Instant::now();
    for n in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if stream.write_all(format!("X-Slow-{n}: x\r\n").as_bytes()).await.is_err() {
            return dribble.elapsed();
        }
        let mut probe = [0_u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
        {
            return dribble.elapsed();
        }
    }
    panic!("a head dribbled for 20 s was not dropped");
}

/// SIGTERM to `daemon`; how long until it exited (it must, within 30 s).
async fn stop(daemon: &mut Daemon) -> Duration {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.child.id().unwrap()).unwrap());
    let stopping = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), daemon.child.wait())
        .await
        .unwrap_or_else(|_| panic!("still running 30 s after SIGTERM; log:\n{}", daemon.log_text()))
        .unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status:?}\n{}", daemon.log_text());
    stopping.elapsed()
}

/// The longest a stop may take: the HTTP drain (5 s) and a margin, well
/// inside the stop grace of the Compose file (20 s) and the unit (15 s).
const STOP_WITHIN: Duration = Duration::from_secs(8);

#[tokio::test]
async fn a_slow_body_does_not_delay_sigterm() {
    let env = env();
    let mut daemon = Daemon::start(&env.settings(&[])).await;
    let addr = daemon.addr;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(forged_head(addr, "slow-at-stop", 100_000).as_bytes()).await.unwrap();
    let dribbler = tokio::spawn(async move {
        for _ in 0..120 {
            if slow.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_slow_body = stop(&mut daemon).await;
    dribbler.abort();
    eprintln!("SIGTERM to exit with a slow body in flight: {with_slow_body:?} (limit {STOP_WITHIN:?})");
    assert!(with_slow_body < STOP_WITHIN, "a slow body held the stop for {with_slow_body:?}");
}

#[tokio::test]
async fn an_open_log_stream_does_not_delay_sigterm() {
    let mut rig = crate::running::Rig::start("hardening-follow", &[]).await;
    let payload = rig.comment(7, true, "/berth review print following then sleep 120", 1201);
    let answer = rig.deliver("issue_comment", "follow-1", &payload).await;
    let task = answer["task"].as_str().expect("queued").to_owned();
    rig.wait_running(1, Duration::from_secs(90)).await;
    let mut follower = TcpStream::connect(rig.daemon.addr).await.unwrap();
    follower
        .write_all(
            format!(
                "GET /api/tasks/{task}/logs?follow=true HTTP/1.1\r\nHost: berth\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
                crate::running::ADMIN_TOKEN
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buffer = [0_u8; 4096];
    let following = Instant::now();
    while !seen.contains("data: following") {
        assert!(following.elapsed() < Duration::from_secs(30), "the stream never showed the line: {seen}");
        if let Ok(Ok(read)) = tokio::time::timeout(Duration::from_secs(1), follower.read(&mut buffer)).await {
            assert!(read > 0, "the stream ended early: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    }
    let with_stream = stop(&mut rig.daemon).await;
    eprintln!("SIGTERM to exit with an open log stream: {with_stream:?} (limit {STOP_WITHIN:?})");
    assert!(with_stream < STOP_WITHIN, "a log stream held the stop for {with_stream:?}");
}

#[tokio::test]
async fn signature_failures_are_logged_at_most_about_once_a_second() {
    let env = env();
    let daemon = Daemon::start(&env.settings(&[])).await;
    let started = Instant::now();
    let mut sent = 0;
    while sent < 300 && started.elapsed() < Duration::from_secs(20) {
        let headers = [
            ("X-GitHub-Event", format!("random_event_{sent}")),
            ("X-GitHub-Delivery", format!("forged-{sent}")),
            ("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64))),
        ];
        let (status, _) = http(daemon.addr, "POST", "/webhook", &headers, b"{}").await.unwrap();
        assert_eq!(status, 401);
        sent += 1;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // One more after a quiet second carries the count of those left out.
    let (status, _) =
        http(daemon.addr, "POST", "/webhook", &[("X-GitHub-Event", "ping".to_owned())], b"{}").await.unwrap();
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = daemon.log_text();
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("signature")).collect();
    let allowed = usize::try_from(took.as_secs()).unwrap() + 3;
    eprintln!("{sent} forged deliveries in {took:?} gave {} log lines", lines.len());
    assert!(
        lines.len() <= allowed,
        "{} lines for {sent} failures in {took:?}:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|line| line.contains("suppressed")),
        "the count of suppressed lines is logged:\n{log}"
    );

    // And none of the random names became a metric label.
    let (_, metrics) = http(daemon.addr, "GET", "/metrics", &[], b"").await.unwrap();
    assert!(!metrics.contains("random_event_"), "{metrics}");
    daemon.kill().await;
}

/// Starts `berth serve` with `args` on top of `env`, returns its log once it
/// listens (or once it exited), and its exit code if it exited.
async fn serve_with(env: &[(&'static str, String)], args: &[String]) -> (String, Option<i32>) {
    use tokio::io::AsyncBufReadExt;
    let binaries = tokio::task::spawn_blocking(tests::workspace_binaries).await.unwrap();
    let mut child = tokio::process::Command::new(binaries.join("berth"))
        .arg("serve")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BERTH_LOG_FORMAT", "json")
        .env("BERTH_BIND", "127.0.0.1:0")
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        match tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                let listening = line.contains("\"listening\"");
                log.push_str(&line);
                log.push('\n');
                if listening {
                    break;
                }
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let code = match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
        Ok(Ok(status)) => status.code(),
        _ => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            None
        }
    };
    (log, code)
}

#[tokio::test]
async fn short_webhook_secrets_stop_start_up_and_secrets_in_flags_are_warned_about() {
    let env = env();
    for (setting, value) in
        [("BERTH_WEBHOOK_SECRET", "fifteen-chars!!"), ("BERTH_WEBHOOK_SECRET_PREVIOUS", "short")]
    {
        let (log, code) = serve_with(&env.settings(&[(setting, value)]), &[]).await;
        assert_eq!(code, Some(2), "{setting}: {log}");
        assert!(log.contains(setting) && log.contains("16"), "{log}");
        assert!(!log.contains(value), "the secret itself is never printed: {log}");
    }

    let settings: Vec<_> =
        env.settings(&[]).into_iter().filter(|(key, _)| *key != "BERTH_WEBHOOK_SECRET").collect();
    let flag_secret = "a-webhook-secret-on-the-command-line";
    let (log, code) = serve_with(&settings, &[format!("--webhook-secret={flag_secret}")]).await;
    assert_eq!(code, None, "it starts: {log}");
    let warning = log
        .lines()
        .find(|line| line.contains("--webhook-secret") && line.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning about the flag:\n{log}"));
    assert!(warning.contains("BERTH_WEBHOOK_SECRET_FILE"), "{warning}");
    assert!(!log.contains(flag_secret), "the secret itself is never printed: {log}");

    let (log, _) = serve_with(&env.settings(&[]), &[]).await;
    assert!(!log.contains("command line"), "no warning without flags:\n{log}");
}
