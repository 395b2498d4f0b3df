//! Issue 12 through the router: metric labels from a closed set, unsigned
//! bodies refused before they are read, the API's cache and sniffing
//! headers, dashboard sessions and sign-in limits, the metrics token, and
//! the secrets' settings.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use clap::Parser;
use core_types::Secret;
use tower::ServiceExt;

use crate::config::{Cli, Command, ServeArgs};
use crate::server::router_with_admin;
use domain::signature::sign;
use telemetry::Metrics;

const SECRET: &str = "hardening-webhook-secret";
const TOKEN: &str = "hardening-admin-token-0123456789";

use super::status::Harness;

fn harness() -> Harness {
    Harness::with_secrets(SECRET, TOKEN)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(router: Router, request: Request<Body>) -> Answer {
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body.into()).unwrap()
}

/// A request as if it came from `client`.
fn from(client: [u8; 4], mut request: Request<Body>) -> Request<Body> {
    request.extensions_mut().insert(ConnectInfo(SocketAddr::from((client, 40000))));
    request
}

/// Cheap, reproducible "random" event names: lowercase words, as a header allows.
fn random_names(count: usize) -> Vec<String> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    (0..count)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let length = 3 + usize::try_from(seed % 20).unwrap();
            (0..length).map(|at| char::from(b'a' + u8::try_from((seed >> (at * 2)) % 26).unwrap())).collect()
        })
        .collect()
}

#[tokio::test]
async fn random_event_names_signed_or_not_leave_the_metric_series_bounded() {
    let harness = harness();
    let body = br#"{"zen":"hi"}"#.to_vec();
    for (n, name) in random_names(400).iter().enumerate() {
        let signature = if n % 2 == 0 { sign(SECRET, &body) } else { format!("sha256={}", "0".repeat(64)) };
        let delivery = format!("random-{n}");
        let answer = send(
            harness.router(),
            request(
                "POST",
                "/webhook",
                &[
                    ("x-github-event", name),
                    ("x-github-delivery", &delivery),
                    ("x-hub-signature-256", &signature),
                    ("content-type", "application/json"),
                ],
                body.clone(),
            ),
        )
        .await;
        let expected = if n % 2 == 0 { StatusCode::ACCEPTED } else { StatusCode::UNAUTHORIZED };
        assert_eq!(answer.status, expected, "{name}: {}", answer.body);
    }
    // The events Berth knows keep their own label.
    let ping = sign(SECRET, &body);
    let answer = send(
        harness.router(),
        request(
            "POST",
            "/webhook",
            &[("x-github-event", "ping"), ("x-github-delivery", "known"), ("x-hub-signature-256", &ping)],
            body.clone(),
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);

    let metrics = send(harness.router(), request("GET", "/metrics", &[], Body::empty())).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(metrics.headers[header::CONTENT_TYPE], telemetry::CONTENT_TYPE);
    let series: Vec<&str> =
        metrics.body.lines().filter(|line| line.starts_with("berth_webhook_deliveries_total{")).collect();
    // Every event Berth parses, and `other`, by every outcome: all there from the start.
    let catalog = telemetry::WebhookEvent::ALL.len() * telemetry::DeliveryOutcome::ALL.len();
    assert_eq!(series.len(), catalog, "series grew with the names sent:\n{}", series.join("\n"));
    for wanted in [
        "event=\"other\",outcome=\"ignored\"} 200",
        "event=\"other\",outcome=\"unauthorized\"} 200",
        "event=\"ping\",outcome=\"ignored\"} 1",
    ] {
        assert!(series.iter().any(|line| line.contains(wanted)), "{wanted} in\n{}", series.join("\n"));
    }
    assert!(!metrics.body.contains("random"), "{}", metrics.body);
    assert_eq!(metrics.body.lines().count(), Metrics::new().render().lines().count(), "{}", metrics.body);
}

#[tokio::test]
async fn a_request_without_a_usable_signature_is_refused_before_its_body_is_read() {
    let harness = harness();
    for signature in [None, Some("sha256=00"), Some("sha1=0123")] {
        // A body that never ends: reading it would hang.
        let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
        let mut builder = Request::post("/webhook").header("x-github-event", "ping");
        if let Some(signature) = signature {
            builder = builder.header("x-hub-signature-256", signature);
        }
        let request = builder.body(Body::from_stream(never)).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(2), send(harness.router(), request))
            .await
            .unwrap_or_else(|_| panic!("{signature:?}: the body was waited for"));
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{signature:?}: {}", answer.body);
    }
    // A declared length over the limit is refused at once too.
    let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let request = Request::post("/webhook")
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .header("content-length", (26 * 1024 * 1024).to_string())
        .body(Body::from_stream(never))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(2), send(harness.router(), request))
        .await
        .expect("an oversized declared length is not waited for");
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn api_answers_are_never_cached_and_the_logs_are_not_sniffed() {
    let harness = harness();
    let bearer = format!("Bearer {TOKEN}");
    for (uri, auth, expected) in [
        ("/api/tasks", Some(bearer.as_str()), StatusCode::OK),
        ("/api/tasks", None, StatusCode::UNAUTHORIZED),
        ("/api/tasks/no-such-task", Some(bearer.as_str()), StatusCode::NOT_FOUND),
        ("/api/tasks/no-such-task/logs", Some(bearer.as_str()), StatusCode::NOT_FOUND),
        ("/api/tasks/no-such-task/logs?follow=true", None, StatusCode::UNAUTHORIZED),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|auth| ("authorization", auth)).into_iter().collect();
        let answer = send(harness.router(), request("GET", uri, &headers, Body::empty())).await;
        assert_eq!(answer.status, expected, "{uri}: {}", answer.body);
        assert_eq!(
            answer.headers.get(header::CACHE_CONTROL).map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{uri}"
        );
        assert_eq!(
            answer.headers.get(header::X_CONTENT_TYPE_OPTIONS).map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{uri}"
        );
    }
}

/// Signs in through the form from `client`; the answer.
async fn sign_in(harness: &Harness, client: [u8; 4], token: &str) -> Answer {
    send(
        harness.router(),
        from(
            client,
            request(
                "POST",
                "/login",
                &[("content-type", "application/x-www-form-urlencoded")],
                format!("token={token}"),
            ),
        ),
    )
    .await
}

fn cookie_of(answer: &Answer) -> String {
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let set_cookie = answer.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.contains("Max-Age="), "the session expires: {set_cookie}");
    set_cookie.split(';').next().unwrap().to_owned()
}

async fn with_cookie(harness: &Harness, cookie: &str) -> StatusCode {
    send(harness.router(), request("GET", "/api/tasks", &[("cookie", cookie)], Body::empty())).await.status
}

#[tokio::test]
async fn each_sign_in_gets_its_own_random_session_and_signing_out_revokes_it() {
    let harness = harness();
    let first = cookie_of(&sign_in(&harness, [10, 0, 0, 1], TOKEN).await);
    let second = cookie_of(&sign_in(&harness, [10, 0, 0, 1], TOKEN).await);
    assert_ne!(first, second, "a session is a fresh random id, not derived from the token");
    assert_eq!(with_cookie(&harness, &first).await, StatusCode::OK);
    assert_eq!(with_cookie(&harness, &second).await, StatusCode::OK);

    let logout =
        send(harness.router(), request("POST", "/logout", &[("cookie", &first)], Body::empty())).await;
    assert_eq!(logout.status, StatusCode::SEE_OTHER);
    assert_eq!(with_cookie(&harness, &first).await, StatusCode::UNAUTHORIZED, "revoked on the server");
    assert_eq!(with_cookie(&harness, &second).await, StatusCode::OK, "the other session lives on");
}

#[tokio::test]
async fn sign_in_failures_are_limited_per_client_address() {
    let harness = harness();
    for attempt in 1..=5 {
        let answer = sign_in(&harness, [192, 0, 2, 7], "not-the-admin-token").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let blocked = sign_in(&harness, [192, 0, 2, 7], "not-the-admin-token").await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS, "{}", blocked.body);
    assert!(blocked.headers.contains_key(header::RETRY_AFTER));
    let right_but_blocked = sign_in(&harness, [192, 0, 2, 7], TOKEN).await;
    assert_eq!(right_but_blocked.status, StatusCode::TOO_MANY_REQUESTS, "no guessing past the limit");
    assert!(right_but_blocked.headers.get(header::SET_COOKIE).is_none());
    // Another address is not held back.
    cookie_of(&sign_in(&harness, [192, 0, 2, 8], TOKEN).await);
}

fn serve_args(extra: &[String]) -> ServeArgs {
    let key = super::test_key();
    let mut args = vec![
        "berth".to_owned(),
        "serve".to_owned(),
        "--github-app-id=1".to_owned(),
        format!("--github-private-key-file={}", key.display()),
    ];
    args.extend(extra.iter().cloned());
    match Cli::try_parse_from(args).unwrap().command {
        Command::Serve(args) => *args,
        other => panic!("parsed {other:?}"),
    }
}

#[test]
fn webhook_secrets_under_16_characters_are_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let short_file = dir.path().join("short");
    std::fs::write(&short_file, "fifteen-chars!!\n").unwrap();
    let long = "sixteen-chars!!!";
    for (extra, setting) in [
        (vec!["--webhook-secret=fifteen-chars!!".to_owned()], "BERTH_WEBHOOK_SECRET"),
        (vec![format!("--webhook-secret-file={}", short_file.display())], "BERTH_WEBHOOK_SECRET_FILE"),
        (
            vec![format!("--webhook-secret={long}"), "--webhook-secret-previous=short".to_owned()],
            "BERTH_WEBHOOK_SECRET_PREVIOUS",
        ),
    ] {
        let err = serve_args(&extra).validate().unwrap_err();
        assert_eq!(err.setting, setting, "{extra:?}: {err}");
        assert!(err.to_string().contains("16 characters"), "{err}");
        assert!(!err.to_string().contains("fifteen") && !err.to_string().contains("short"), "{err}");
    }
    assert!(serve_args(&[format!("--webhook-secret={long}")]).validate().is_ok());
}

#[tokio::test]
async fn metrics_can_be_put_behind_a_token() {
    let harness = harness();
    let open = send(harness.router(), request("GET", "/metrics", &[], Body::empty())).await;
    assert_eq!(open.status, StatusCode::OK, "no token set: open as before");

    let token = "hardening-metrics-token-0123456789";
    let guarded = router_with_admin(
        harness.state.clone(),
        harness.admin.clone().with_metrics_token(Some(&Secret::new(token))),
    );
    for presented in [None, Some("Bearer wrong-token-0123456789"), Some(&format!("Bearer {TOKEN}") as &str)] {
        let headers: Vec<(&str, &str)> =
            presented.map(|value| ("authorization", value)).into_iter().collect();
        let answer = send(guarded.clone(), request("GET", "/metrics", &headers, Body::empty())).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{presented:?}");
        assert!(!answer.body.contains("berth_"), "{}", answer.body);
    }
    let right = format!("Bearer {token}");
    let answer = send(guarded, request("GET", "/metrics", &[("authorization", &right)], Body::empty())).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[test]
fn a_session_expires_and_a_revoked_one_is_gone() {
    use crate::status::{SESSION_TTL, Sessions};
    let sessions = Sessions::default();
    let start = std::time::Instant::now();
    let id = sessions.create(start).unwrap();
    assert_eq!(id.len(), 64, "32 random bytes in hex");
    assert!(sessions.valid(&id, start + SESSION_TTL - Duration::from_secs(1)));
    assert!(!sessions.valid(&id, start + SESSION_TTL), "expired");
    assert!(!sessions.valid(&id, start), "an expired session is forgotten");
    let other = sessions.create(start).unwrap();
    assert_ne!(id, other);
    sessions.revoke(&other);
    assert!(!sessions.valid(&other, start));
    assert!(!sessions.valid("", start) && !sessions.valid(TOKEN, start));
}

#[test]
fn sign_in_failures_age_out_of_their_window() {
    use crate::status::{SIGN_IN_FAILURES, SIGN_IN_WINDOW, SignInLimit};
    let limit = SignInLimit::default();
    let client: std::net::IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
    let neighbour: std::net::IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
    let start = std::time::Instant::now();
    for n in 0..SIGN_IN_FAILURES {
        assert!(limit.check(client, start).is_ok(), "failure {n}");
        limit.failed(client, start + Duration::from_secs(u64::try_from(n).unwrap()));
    }
    let later = start + Duration::from_secs(10);
    assert!(matches!(
        limit.check(client, later),
        Err(crate::error::ApiError::TooManyAttempts { retry_after: 50 })
    ));
    assert!(limit.check(neighbour, later).is_err(), "an IPv6 client is its /64");
    assert!(limit.check("2001:db8:9::1".parse().unwrap(), later).is_ok());
    // The first failure leaves the window: one more attempt is taken.
    assert!(limit.check(client, start + SIGN_IN_WINDOW).is_ok());
}

#[test]
fn a_throttled_log_lets_one_line_a_period_through_and_counts_the_rest() {
    use crate::throttle::LogThrottle;
    let throttle = LogThrottle::new(Duration::from_secs(1));
    let start = std::time::Instant::now();
    assert_eq!(throttle.admit_at(start), Some(0));
    for n in 1..=500_u64 {
        assert_eq!(throttle.admit_at(start + Duration::from_micros(n)), None);
    }
    assert_eq!(throttle.admit_at(start + Duration::from_millis(999)), None);
    assert_eq!(throttle.admit_at(start + Duration::from_secs(1)), Some(501));
    assert_eq!(throttle.admit_at(start + Duration::from_secs(3)), Some(0));
}

#[test]
fn secrets_given_as_flags_are_found_and_files_and_the_environment_are_not() {
    use crate::config::secret_flags;
    let args = |list: &[&str]| list.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
    assert_eq!(
        secret_flags(args(&[
            "berth",
            "serve",
            "--webhook-secret=abc",
            "--admin-token",
            "x",
            "--metrics-token=y"
        ])),
        vec![
            ("--webhook-secret", "BERTH_WEBHOOK_SECRET_FILE"),
            ("--admin-token", "BERTH_ADMIN_TOKEN_FILE"),
            ("--metrics-token", "BERTH_METRICS_TOKEN_FILE")
        ]
    );
    assert_eq!(
        secret_flags(args(&["berth", "serve", "--webhook-secret-previous=old"])),
        vec![("--webhook-secret-previous", "BERTH_WEBHOOK_SECRET_PREVIOUS")]
    );
    assert!(
        secret_flags(args(&[
            "berth",
            "serve",
            "--webhook-secret-file=/run/secret",
            "--admin-token-file=/run/token",
            "--config=berth.toml"
        ]))
        .is_empty()
    );
}

#[test]
fn the_http_limits_are_settings_with_sane_defaults() {
    use crate::connections::HttpLimits;
    let long = format!("--webhook-secret={SECRET}");
    let config = serve_args(std::slice::from_ref(&long)).validate().unwrap();
    assert_eq!(config.http, HttpLimits::default());
    assert_eq!(config.http.max_connections, 512);
    assert_eq!(config.http.max_body_bytes_in_flight, 64 << 20);
    assert_eq!(
        (config.http.header_read_timeout, config.http.body_read_timeout, config.http.idle_timeout),
        (Duration::from_secs(10), Duration::from_secs(10), Duration::from_secs(30))
    );
    assert!(config.metrics_token.is_none());
    let config = serve_args(&[
        long.clone(),
        "--max-connections=64".to_owned(),
        "--max-body-bytes-in-flight=1g".to_owned(),
        "--header-read-timeout=3s".to_owned(),
        "--body-read-timeout=1m".to_owned(),
        "--idle-timeout=5s".to_owned(),
        "--metrics-token=hardening-metrics-token-0123".to_owned(),
    ])
    .validate()
    .unwrap();
    assert_eq!(config.http.max_connections, 64);
    assert_eq!(config.http.max_body_bytes_in_flight, 1 << 30);
    assert_eq!(config.http.body_read_timeout, Duration::from_secs(60));
    assert!(config.metrics_token.is_some());
    for (extra, setting) in [
        ("--max-connections=0", "BERTH_MAX_CONNECTIONS"),
        ("--max-connections=many", "BERTH_MAX_CONNECTIONS"),
        ("--max-body-bytes-in-flight=24m", "BERTH_MAX_BODY_BYTES_IN_FLIGHT"),
        ("--max-body-bytes-in-flight=lots", "BERTH_MAX_BODY_BYTES_IN_FLIGHT"),
        ("--header-read-timeout=0s", "BERTH_HEADER_READ_TIMEOUT"),
        ("--body-read-timeout=2h", "BERTH_BODY_READ_TIMEOUT"),
        ("--idle-timeout=soon", "BERTH_IDLE_TIMEOUT"),
        ("--metrics-token=short", "BERTH_METRICS_TOKEN"),
    ] {
        let err = serve_args(&[long.clone(), extra.to_owned()]).validate().unwrap_err();
        assert_eq!(err.setting, setting, "{extra}: {err}");
    }
}
