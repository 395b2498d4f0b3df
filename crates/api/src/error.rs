//! `ApiError`: every way a request can fail, mapped to an HTTP status in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use core_types::env_names as names;
use serde_json::json;
use tracing::error;

use domain::events::PayloadError;
use domain::signature::SignatureError;
use journal::JournalError;

/// A request that could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The webhook signature is missing or wrong.
    #[error("{0}")]
    Signature(#[from] SignatureError),
    /// A required header is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header is present but unusable.
    #[error("invalid {name} header: {reason}")]
    InvalidHeader {
        /// The header.
        name: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The body is not JSON or not of its event's shape.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The body is over the limit.
    #[error("body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body could not be read, or is of a kind we do not take.
    #[error("{0}")]
    BadBody(String),
    /// The journal could not record the delivery; GitHub will retry.
    #[error("journal unavailable")]
    Journal(#[source] JournalError),
    /// No valid admin token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// `/api/*` is off because no admin token is configured.
    #[error("the status API is disabled (no {} configured)", names::BERTH_ADMIN_TOKEN)]
    ApiDisabled,
    /// No such thing.
    #[error("{0} not found")]
    NotFound(String),
    /// A path or query parameter is unusable.
    #[error("{0}")]
    InvalidRequest(String),
    /// The request does not fit the thing's state (cancelling a finished task).
    #[error("{0}")]
    Conflict(String),
    /// The task exists but has no container to read from.
    #[error("task {task_id} has no container: {reason}")]
    NoContainer {
        /// The task.
        task_id: String,
        /// Why (finished, or not started yet).
        reason: &'static str,
    },
    /// The daemon could not do what was asked (engine down, ...).
    #[error("{0}")]
    Unavailable(String),
    /// The request bodies in flight already hold `BERTH_MAX_BODY_BYTES_IN_FLIGHT`.
    #[error("too many request bytes in flight ({}); retry shortly", names::BERTH_MAX_BODY_BYTES_IN_FLIGHT)]
    BodyBudgetExhausted,
    /// The body did not arrive within `BERTH_BODY_READ_TIMEOUT`.
    #[error("the body did not arrive within {} s ({})", limit.as_secs(), names::BERTH_BODY_READ_TIMEOUT)]
    BodyTimeout {
        /// The timeout.
        limit: std::time::Duration,
    },
    /// Too many failed sign-ins from the client's address.
    #[error("too many failed sign-ins from this address; try again in {retry_after} s")]
    TooManyAttempts {
        /// Seconds until the next attempt is taken.
        retry_after: u64,
    },
}

impl ApiError {
    /// The HTTP status of this error; the dashboard's HTML pages use it too.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Signature(_) | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ApiDisabled => StatusCode::FORBIDDEN,
            ApiError::MissingHeader(_)
            | ApiError::InvalidHeader { .. }
            | ApiError::Payload(_)
            | ApiError::BadBody(_)
            | ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) | ApiError::NoContainer { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Journal(_) | ApiError::Unavailable(_) | ApiError::BodyBudgetExhausted => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::BodyBudgetExhausted => Some(1),
            ApiError::TooManyAttempts { retry_after } => Some(*retry_after),
            _ => None,
        };
        // A full body budget is an anonymous client's doing and is counted
        // in /metrics; logging each one would hand the log to that client.
        let message = if status.is_server_error() && !matches!(self, ApiError::BodyBudgetExhausted) {
            // The details go to the log; the caller gets a generic reason.
            error!(error = ?self, "request failed");
            match self {
                ApiError::Journal(_) => "journal unavailable; retry later".to_owned(),
                other => other.to_string(),
            }
        } else {
            self.to_string()
        };
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED
            && let Ok(value) = "Bearer".parse()
        {
            response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, value);
        }
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
