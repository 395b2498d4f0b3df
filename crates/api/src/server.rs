//! The HTTP side: the router, the webhook intake and the health routes; the
//! status API and the dashboard live in `status` and `dashboard`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::{info, instrument, warn};

use crate::dashboard;
use crate::error::ApiError;
use crate::events::Event;
use crate::journal::{Accepted, Journal};
use crate::metrics::Metrics;
use crate::signature::{SIGNATURE_HEADER, WebhookSecrets};
use crate::status::{self, Admin, StatusState};
use crate::triggers::Policy;

/// Largest webhook body accepted (GitHub caps payloads at 25 MiB).
pub const MAX_WEBHOOK_BODY: usize = 25 * 1024 * 1024;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Live webhook secrets.
    pub secrets: WebhookSecrets,
    /// Trigger and trust rules.
    pub policy: Arc<Policy>,
    /// The journal.
    pub journal: Journal,
    /// Set once Docker is reachable and start-up reconciliation is done.
    pub ready: Arc<AtomicBool>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Woken whenever a task is queued or a cancel is requested.
    pub wake: Arc<Notify>,
}

/// The 202 body of every accepted delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryAnswer {
    /// The `X-GitHub-Delivery`.
    pub delivery: String,
    /// `queued`, `duplicate`, `ignored` or `cancel_requested`.
    pub outcome: &'static str,
    /// Why (for anything but a plain queue).
    pub reason: Option<String>,
    /// The task queued or duplicated, if any.
    pub task: Option<String>,
    /// For `cancel_requested`: the tasks to be cancelled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cancelled: Vec<String>,
}

impl DeliveryAnswer {
    fn new(delivery: &str, accepted: &Accepted) -> Self {
        let (outcome, reason, task, cancelled) = match accepted {
            Accepted::Queued { task } => ("queued", None, Some(task.to_string()), Vec::new()),
            Accepted::Duplicate { task, reason } => {
                ("duplicate", Some(reason.clone()), task.as_ref().map(ToString::to_string), Vec::new())
            }
            Accepted::Ignored { reason } => ("ignored", Some(reason.clone()), None, Vec::new()),
            Accepted::CancelRequested { tasks, reason, queued } => (
                "cancel_requested",
                Some(reason.clone()),
                queued.as_ref().map(ToString::to_string),
                tasks.iter().map(ToString::to_string).collect(),
            ),
        };
        Self { delivery: delivery.to_owned(), outcome, reason, task, cancelled }
    }
}

/// The daemon's routes, with the status API and the dashboard off (403).
pub fn router(state: AppState) -> Router {
    router_with_admin(state, Admin::disabled())
}

/// The daemon's routes: the webhook, health and metrics, and behind
/// `admin`'s token the status API (`/api/*`) and the dashboard (`/`).
pub fn router_with_admin(state: AppState, admin: Admin) -> Router {
    let operator = StatusState { journal: state.journal.clone(), admin };
    Router::new()
        .route("/webhook", post(webhook).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY)))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(status::routes(operator.clone()))
        .merge(dashboard::routes(operator))
        .layer(TraceLayer::new_for_http())
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then finishes
/// the requests in flight.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting: docker or start-up reconciliation not done\n")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, ApiError> {
    let value = headers.get(name).ok_or(ApiError::MissingHeader(name))?;
    let value = value.to_str().map_err(|_| ApiError::InvalidHeader { name, reason: "not visible ASCII" })?;
    if value.is_empty() {
        return Err(ApiError::MissingHeader(name));
    }
    Ok(value)
}

fn check_token(name: &'static str, value: &str, allowed: impl Fn(char) -> bool) -> Result<(), ApiError> {
    if value.len() > 128 {
        return Err(ApiError::InvalidHeader { name, reason: "longer than 128 characters" });
    }
    if !value.chars().all(allowed) {
        return Err(ApiError::InvalidHeader { name, reason: "unexpected characters" });
    }
    Ok(())
}

#[instrument(skip_all, fields(delivery, event))]
async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<DeliveryAnswer>), ApiError> {
    let result = intake(&state, &headers, body).await;
    let outcome = match &result {
        Ok((_, answer)) => answer.outcome,
        Err(ApiError::Signature(_)) => {
            state.metrics.inc(
                "berth_webhook_signature_failures_total",
                "Deliveries refused for their signature",
                &[],
            );
            "unauthorized"
        }
        Err(ApiError::BodyTooLarge { .. }) => "too_large",
        Err(ApiError::Journal(_)) => "unavailable",
        Err(_) => "bad_request",
    };
    let event = headers.get("x-github-event").and_then(|value| value.to_str().ok()).unwrap_or("");
    let event = if event.len() <= 64 && event.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        event
    } else {
        "?"
    };
    state.metrics.inc(
        "berth_webhook_deliveries_total",
        "Webhook deliveries by event and outcome",
        &[("event", event), ("outcome", outcome)],
    );
    if let Err(err) = &result {
        warn!(error = %err, "delivery refused");
    }
    result.map(|(status, answer)| (status, Json(answer)))
}

async fn intake(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, DeliveryAnswer), ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit: MAX_WEBHOOK_BODY }
        } else {
            ApiError::BadBody(rejection.body_text())
        }
    })?;
    // Nothing is parsed, not even the headers GitHub sets, before the signature holds.
    state.secrets.verify(headers.get(SIGNATURE_HEADER).map(|value| value.as_bytes()), &body)?;

    let event = header(headers, "x-github-event")?;
    check_token("X-GitHub-Event", event, |c| c.is_ascii_lowercase() || c == '_')?;
    let delivery = header(headers, "x-github-delivery")?;
    check_token("X-GitHub-Delivery", delivery, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
    })?;
    let span = tracing::Span::current();
    span.record("delivery", delivery);
    span.record("event", event);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::BadBody(
            "form-encoded deliveries are not supported; set the webhook content type to application/json"
                .to_owned(),
        ));
    }

    let parsed = Event::parse(event, &body)?;
    let decision = state.policy.decide(&parsed);
    let accepted = state.journal.accept(delivery, event, decision).await.map_err(ApiError::Journal)?;
    let answer = DeliveryAnswer::new(delivery, &accepted);
    if matches!(accepted, Accepted::Queued { .. } | Accepted::CancelRequested { .. }) {
        state.wake.notify_one();
    }
    info!(
        outcome = answer.outcome,
        task = answer.task.as_deref().unwrap_or(""),
        reason = answer.reason.as_deref().unwrap_or(""),
        "delivery accepted"
    );
    Ok((StatusCode::ACCEPTED, answer))
}
