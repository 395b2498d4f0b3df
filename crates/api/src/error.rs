//! `ApiError`: every way a request can fail, mapped to an HTTP status in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

use crate::events::PayloadError;
use crate::journal::JournalError;
use crate::signature::SignatureError;

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
    #[error("the status API is disabled (no BERTH_ADMIN_TOKEN configured)")]
    ApiDisabled,
    /// No such thing.
    #[error("{0} not found")]
    NotFound(String),
    /// The daemon could not do what was asked (engine down, ...).
    #[error("{0}")]
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Signature(_) | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::ApiDisabled => StatusCode::FORBIDDEN,
            ApiError::MissingHeader(_)
            | ApiError::InvalidHeader { .. }
            | ApiError::Payload(_)
            | ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Journal(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let message = if status.is_server_error() {
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
        response
    }
}
