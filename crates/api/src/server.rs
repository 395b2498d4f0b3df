//! The HTTP side: the router, the webhook intake and the health routes; the
//! status API and the dashboard live in `status` and `dashboard`, the
//! connection limits, timeouts and body budget under the router in
//! `connections`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::{info, warn};

use crate::connections::{self, HttpLimits};
use crate::dashboard;
use crate::error::ApiError;
use crate::status::{self, Admin, StatusState};
use crate::throttle::LogThrottle;
use domain::events::Event;
use domain::signature::{ClaimedSignature, SIGNATURE_HEADER, WebhookSecrets};
use domain::triggers::Policy;
use journal::{Accepted, Journal};
use telemetry::{DeliveryOutcome, Metrics, WebhookEvent};

/// Largest webhook body accepted (GitHub caps payloads at 25 MiB).
pub const MAX_WEBHOOK_BODY: usize = 25 * 1024 * 1024;

/// Refusals before a delivery's signature holds (bad or missing signature,
/// a body too large, too slow or over the budget) are anyone's to cause:
/// at most one log line a second says so, with the count of those left out.
static UNVERIFIED_REFUSALS: LogThrottle = LogThrottle::new(Duration::from_secs(1));

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
    #[serde(serialize_with = "outcome_as_str")]
    pub outcome: DeliveryOutcome,
    /// Why (for anything but a plain queue).
    pub reason: Option<String>,
    /// The task queued or duplicated, if any.
    pub task: Option<String>,
    /// For `cancel_requested`: the tasks to be cancelled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cancelled: Vec<String>,
}

fn outcome_as_str<S: serde::Serializer>(outcome: &DeliveryOutcome, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(outcome.as_str())
}

impl DeliveryAnswer {
    fn new(delivery: &str, accepted: &Accepted) -> Self {
        let (outcome, reason, task, cancelled) = match accepted {
            Accepted::Queued { task } => (DeliveryOutcome::Queued, None, Some(task.to_string()), Vec::new()),
            Accepted::Duplicate { task, reason } => (
                DeliveryOutcome::Duplicate,
                Some(reason.clone()),
                task.as_ref().map(ToString::to_string),
                Vec::new(),
            ),
            Accepted::Ignored { reason } => {
                (DeliveryOutcome::Ignored, Some(reason.clone()), None, Vec::new())
            }
            Accepted::CancelRequested { tasks, reason, queued } => (
                DeliveryOutcome::CancelRequested,
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
    let metrics_guard = middleware::from_fn_with_state(admin.clone(), require_metrics_token);
    let operator = StatusState { journal: state.journal.clone(), admin };
    Router::new()
        // The body is read by the handler, under its own limit, once the
        // signature header is known to be well-formed.
        .route("/webhook", post(webhook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics).route_layer(metrics_guard))
        .with_state(state)
        .merge(status::routes(operator.clone()))
        .merge(dashboard::routes(operator))
        // Each handler logs its own failures with their reason; a 503 from
        // /readyz while starting is an answer, not an error.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
}

/// Serves `router` on `listener` under `limits` until `shutdown` is
/// cancelled; see [`connections`] for the limits, timeouts and the drain.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    connections::serve(listener, router, limits, metrics, shutdown).await;
}

/// 200 only while the daemon can take deliveries: started, and the journal
/// able to write (a full disk makes it 503 until writes succeed again).
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if !state.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting: docker or start-up reconciliation not done\n");
    }
    if state.journal.write_failure().is_some() {
        // The OS error is in the log; the probe only needs to know.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the journal cannot write (see the log); deliveries get 503\n",
        );
    }
    (StatusCode::OK, "ready\n")
}

/// `/metrics` behind `BERTH_METRICS_TOKEN` when one is set.
async fn require_metrics_token(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    match admin.authorize_metrics(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, telemetry::CONTENT_TYPE)], state.metrics.render())
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

/// The metric label of a delivery's `X-GitHub-Event`: the events Berth
/// parses, else `other`, so whoever sends deliveries, signed or not, cannot
/// add series.
pub fn event_label(headers: &HeaderMap) -> WebhookEvent {
    headers
        .get("x-github-event")
        .and_then(|value| value.to_str().ok())
        .map_or(WebhookEvent::Other, WebhookEvent::from_name)
}

// No span per delivery: entering one on every poll and copying its fields
// into each line cost more than the line itself; the lines that name a
// delivery carry its id and event as fields of their own.
async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<DeliveryAnswer>), ApiError> {
    let received = tokio::time::Instant::now();
    let result = match verify(&state, &headers, body).await {
        Ok(verified) => {
            let result = accept(&state, &verified).await;
            match &result {
                Ok((_, answer)) => info!(
                    delivery = verified.delivery,
                    event = verified.event,
                    outcome = answer.outcome.as_str(),
                    task = answer.task.as_deref().unwrap_or(""),
                    reason = answer.reason.as_deref().unwrap_or(""),
                    "delivery accepted"
                ),
                Err(err) => {
                    warn!(delivery = verified.delivery, event = verified.event, error = %err, "delivery refused");
                }
            }
            result
        }
        Err(err) => {
            if matches!(
                err,
                ApiError::Signature(_)
                    | ApiError::BodyTooLarge { .. }
                    | ApiError::BodyBudgetExhausted
                    | ApiError::BodyTimeout { .. }
                    | ApiError::BadBody(_)
            ) {
                if let Some(suppressed) = UNVERIFIED_REFUSALS.admit() {
                    warn!(
                        error = %err,
                        suppressed,
                        "delivery refused before its signature held (at most one such line a second; `suppressed` counts those not logged since the last)"
                    );
                }
            } else {
                warn!(error = %err, "delivery refused");
            }
            Err(err)
        }
    };
    let outcome = match &result {
        Ok((_, answer)) => answer.outcome,
        Err(ApiError::Signature(_)) => {
            state.metrics.webhook_signature_failure();
            DeliveryOutcome::Unauthorized
        }
        Err(ApiError::BodyTooLarge { .. }) => DeliveryOutcome::TooLarge,
        Err(ApiError::BodyBudgetExhausted) => DeliveryOutcome::Busy,
        Err(ApiError::BodyTimeout { .. }) => DeliveryOutcome::Timeout,
        Err(ApiError::Journal(_)) => DeliveryOutcome::Unavailable,
        Err(_) => DeliveryOutcome::BadRequest,
    };
    state.metrics.webhook_delivery(event_label(&headers), outcome);
    state.metrics.webhook_handled(received.elapsed());
    result.map(|(status, answer)| (status, Json(answer)))
}

/// The declared `Content-Length`, when there is a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The body as the chunks it arrived in, at most [`MAX_WEBHOOK_BODY`]
/// bytes; a failure of the connection's body budget or timeout is returned
/// as that error.
async fn read_body(mut body: Body) -> Result<Vec<Bytes>, ApiError> {
    let mut chunks = Vec::new();
    let mut total = 0_usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| match err.into_inner().downcast::<ApiError>() {
            Ok(err) => *err,
            Err(other) => ApiError::BadBody(format!("the body could not be read: {other}")),
        })?;
        let Ok(data) = frame.into_data() else { continue };
        total = total.saturating_add(data.len());
        if total > MAX_WEBHOOK_BODY {
            return Err(ApiError::BodyTooLarge { limit: MAX_WEBHOOK_BODY });
        }
        chunks.push(data);
    }
    Ok(chunks)
}

/// A delivery whose signature holds, with its id and event checked.
struct Verified<'a> {
    body: Bytes,
    event: &'a str,
    delivery: &'a str,
}

/// Checks the signature over the body, then the headers GitHub sets.
async fn verify<'a>(state: &AppState, headers: &'a HeaderMap, body: Body) -> Result<Verified<'a>, ApiError> {
    // Nothing is parsed, not even the headers GitHub sets, before the
    // signature holds; without a well-formed one the body is not even read.
    let claimed = ClaimedSignature::parse(headers.get(SIGNATURE_HEADER).map(|value| value.as_bytes()))?;
    if content_length(headers).is_some_and(|length| length > MAX_WEBHOOK_BODY as u64) {
        return Err(ApiError::BodyTooLarge { limit: MAX_WEBHOOK_BODY });
    }
    let mut chunks = read_body(body).await?;
    state.secrets.verify_parts(&claimed, &chunks)?;
    // Signed: now it may be joined in one piece for the parsers.
    let body =
        if chunks.len() == 1 { chunks.pop().unwrap_or_default() } else { Bytes::from(chunks.concat()) };
    drop(chunks);

    let event = header(headers, "x-github-event")?;
    check_token("X-GitHub-Event", event, |c| c.is_ascii_lowercase() || c == '_')?;
    let delivery = header(headers, "x-github-delivery")?;
    check_token("X-GitHub-Delivery", delivery, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
    })?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::BadBody(
            "form-encoded deliveries are not supported; set the webhook content type to application/json"
                .to_owned(),
        ));
    }
    Ok(Verified { body, event, delivery })
}

/// Decides a verified delivery and records it; the answer is sent only
/// once the journal has it on disk.
async fn accept(state: &AppState, verified: &Verified<'_>) -> Result<(StatusCode, DeliveryAnswer), ApiError> {
    let parsed = Event::parse(verified.event, &verified.body)?;
    let decision = state.policy.decide(&parsed);
    drop(parsed);
    let accepted =
        state.journal.accept(verified.delivery, verified.event, decision).await.map_err(ApiError::Journal)?;
    let answer = DeliveryAnswer::new(verified.delivery, &accepted);
    if matches!(accepted, Accepted::Queued { .. } | Accepted::CancelRequested { .. }) {
        state.wake.notify_one();
    }
    Ok((StatusCode::ACCEPTED, answer))
}
