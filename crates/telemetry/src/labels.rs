//! The closed sets every metric label takes its values from.
//!
//! A value that comes from outside (a webhook's event name, a GitHub status,
//! a conclusion) is mapped onto one of these, with `other` for anything
//! unknown, so no client can add series. Each set lists its values once;
//! the catalog touches every combination at start, so `/metrics` shows each
//! series at zero before its first event.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// Declares a closed set of label values: the enum, `ALL`, `as_str` and its
/// encoding. prometheus-client's `#[derive(EncodeLabelValue)]` writes the
/// Rust variant name verbatim (`IssueComment`, and no `2xx` at all), which
/// would rename every value `/metrics` shows today; here each variant names
/// its value next to it instead.
macro_rules! closed_set {
    (
        $(#[$meta:meta])*
        $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order `/metrics` lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value as `/metrics` shows it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value shown as `text`, if there is one.
            pub fn from_label(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|value| value.as_str() == text)
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

closed_set! {
    /// A delivery's `X-GitHub-Event`: the events Berth parses, else `other`.
    WebhookEvent {
        /// `issue_comment`.
        IssueComment => "issue_comment",
        /// `issues`.
        Issues => "issues",
        /// `pull_request`.
        PullRequest => "pull_request",
        /// `check_run`.
        CheckRun => "check_run",
        /// `check_suite`.
        CheckSuite => "check_suite",
        /// `ping`.
        Ping => "ping",
        /// `installation`.
        Installation => "installation",
        /// `installation_repositories`.
        InstallationRepositories => "installation_repositories",
        /// Any other name, or none.
        Other => "other",
    }
}

impl WebhookEvent {
    /// The label of an event name as a client sent it: unknown names are `other`.
    pub fn from_name(name: &str) -> Self {
        Self::from_label(name).unwrap_or(Self::Other)
    }
}

closed_set! {
    /// What became of a webhook delivery.
    DeliveryOutcome {
        /// A task was queued.
        Queued => "queued",
        /// Seen before, or the task already exists.
        Duplicate => "duplicate",
        /// Nothing to do.
        Ignored => "ignored",
        /// Running or queued tasks are to be cancelled.
        CancelRequested => "cancel_requested",
        /// Bad or missing signature.
        Unauthorized => "unauthorized",
        /// Body over the size limit.
        TooLarge => "too_large",
        /// The body budget was full.
        Busy => "busy",
        /// The body came too slowly.
        Timeout => "timeout",
        /// The journal could not take it.
        Unavailable => "unavailable",
        /// Missing headers, or a body that does not parse.
        BadRequest => "bad_request",
    }
}

closed_set! {
    /// Why the daemon closed an HTTP connection before its client did.
    DropReason {
        /// Closed to make room for a new one.
        Evicted => "evicted",
        /// Turned away: every open connection had a request in flight.
        Refused => "refused",
        /// Its request head did not arrive in time.
        HeaderTimeout => "header_timeout",
        /// Kept alive with nothing to say for too long.
        IdleTimeout => "idle_timeout",
        /// Still busy at shutdown.
        Shutdown => "shutdown",
    }
}

closed_set! {
    /// Why a request was refused while its body was read.
    RefusedReason {
        /// The budget of body bytes in flight was full.
        BodyBudget => "body_budget",
        /// The body came too slowly.
        BodyTimeout => "body_timeout",
    }
}

closed_set! {
    /// A task's kind.
    TaskKind {
        /// Review a pull request.
        Review => "review",
        /// Implement an issue.
        Implement => "implement",
        /// A kind this catalog does not know yet.
        Other => "other",
    }
}

impl TaskKind {
    /// The label of a kind's name; unknown names are `other`.
    pub fn from_name(name: &str) -> Self {
        Self::from_label(name).unwrap_or(Self::Other)
    }
}

closed_set! {
    /// A finished task's check-run conclusion: those Berth reports, else `other`.
    Conclusion {
        /// `success`.
        Success => "success",
        /// `failure`.
        Failure => "failure",
        /// `neutral`.
        Neutral => "neutral",
        /// `cancelled`.
        Cancelled => "cancelled",
        /// `timed_out`.
        TimedOut => "timed_out",
        /// Any other conclusion.
        Other => "other",
    }
}

impl Conclusion {
    /// The label of a GitHub conclusion; unknown ones are `other`.
    pub fn from_github(conclusion: &str) -> Self {
        Self::from_label(conclusion).unwrap_or(Self::Other)
    }
}

closed_set! {
    /// The status class of a GitHub API call: the statuses Berth acts on by
    /// name, the rest by class.
    GitHubStatus {
        /// Any 2xx.
        Success => "2xx",
        /// Bad credentials.
        Unauthorized => "401",
        /// Forbidden, or a secondary rate limit.
        Forbidden => "403",
        /// Not found.
        NotFound => "404",
        /// Conflict.
        Conflict => "409",
        /// Validation failed.
        Unprocessable => "422",
        /// Rate limited.
        TooManyRequests => "429",
        /// Any other 4xx.
        ClientError => "4xx",
        /// Any 5xx.
        ServerError => "5xx",
        /// No HTTP answer at all (connection, timeout).
        Transport => "transport",
        /// A status outside 2xx, 4xx and 5xx.
        Other => "other",
    }
}

impl GitHubStatus {
    /// The label of an HTTP status code.
    pub fn from_code(status: u16) -> Self {
        match status {
            200..=299 => Self::Success,
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            409 => Self::Conflict,
            422 => Self::Unprocessable,
            429 => Self::TooManyRequests,
            400..=499 => Self::ClientError,
            500..=599 => Self::ServerError,
            _ => Self::Other,
        }
    }
}

/// The labels of `berth_webhook_deliveries_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The delivery's event.
    pub event: WebhookEvent,
    /// What became of it.
    pub outcome: DeliveryOutcome,
}

/// The labels of `berth_http_connections_dropped_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// Why it was closed.
    pub reason: DropReason,
}

/// The labels of `berth_http_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Why it was refused.
    pub reason: RefusedReason,
}

/// The labels of the finished-task series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TaskLabels {
    /// The task's kind.
    pub kind: TaskKind,
    /// Its conclusion.
    pub conclusion: Conclusion,
}

/// The labels of `berth_github_calls_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GitHubCallLabels {
    /// The answer's status class.
    pub status: GitHubStatus,
}
