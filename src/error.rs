//! The one error type every failure becomes, and its OpenAI-shaped rendering:
//! `{"error":{"message","type","param","code"}}` with the status, `retry-after`
//! and `x-should-retry` headers the official SDKs act on.
//!
//! Messages never carry upstream bodies, secrets or prompts.

use std::borrow::Cow;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// OpenAI's rate-limit headers for a per-key limit.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitHeaders {
    /// `requests` or `images`: the suffix of the header names.
    pub kind: &'static str,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_seconds: f64,
}

impl RateLimitHeaders {
    /// `x-ratelimit-limit-*`, `x-ratelimit-remaining-*`, `x-ratelimit-reset-*`.
    pub fn pairs(&self) -> [(String, String); 3] {
        [
            (
                format!("x-ratelimit-limit-{}", self.kind),
                self.limit.to_string(),
            ),
            (
                format!("x-ratelimit-remaining-{}", self.kind),
                self.remaining.to_string(),
            ),
            (
                format!("x-ratelimit-reset-{}", self.kind),
                go_duration(self.reset_seconds),
            ),
        ]
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    /// A field has a bad value or type.
    #[error("{message}")]
    InvalidRequest {
        message: Cow<'static, str>,
        param: Option<Cow<'static, str>>,
        code: Option<&'static str>,
    },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The client took too long to send its body.
    #[error("The request body was not received in time.")]
    RequestTimeout,
    #[error("{message}")]
    Unauthorized { message: &'static str },
    #[error("the model `{model}` does not exist")]
    ModelNotFound { model: String },
    /// No route: OpenAI answers `Invalid URL (METHOD /path)`.
    #[error("{message}")]
    NotFound { message: String },
    /// A route the gateway knows but the Imagen models cannot serve.
    #[error("{message}")]
    Unsupported { message: &'static str },
    /// fal refused the prompt.
    #[error("{message}")]
    ContentPolicy { message: String },
    /// The key may not use this model (its `models` list).
    #[error("this API key may not use the model `{model}`")]
    ModelNotAllowed { model: String },
    /// The key's budget cannot cover the most this request could cost.
    #[error("{message}")]
    InsufficientQuota { message: String },
    /// The key and spend database cannot be reached.
    #[error("the key and spend database is unavailable")]
    StoreUnavailable,
    /// A per-key limit was hit.
    #[error("rate limit reached for {} per minute", limit.kind)]
    RateLimited {
        retry_after_seconds: u64,
        limit: RateLimitHeaders,
    },
    /// The gateway's own upstream capacity is full.
    #[error("the gateway is at capacity")]
    Overloaded { retry_after_seconds: u64 },
    /// fal itself rate-limited the gateway.
    #[error("fal.ai is rate limiting the gateway")]
    UpstreamRateLimited { retry_after_seconds: u64 },
    /// fal refused the gateway's own credentials.
    #[error("fal.ai refused the gateway's upstream credentials")]
    UpstreamAuth,
    /// fal unreachable, 5xx, malformed answer, failed job.
    #[error("{message}")]
    Upstream { message: String },
    /// A paid call (submit, sync run) reached fal, or may have, and got no
    /// answer: it is not repeated, and the client is told not to repeat it
    /// either (`x-should-retry: false`), so the image is not paid twice.
    #[error("{message}")]
    UpstreamUnconfirmed { message: String },
    /// fal's infrastructure could not run the job now (no runner could be
    /// scheduled, the runner was lost): worth retrying shortly.
    #[error("{message}")]
    UpstreamUnavailable {
        message: String,
        retry_after_seconds: u64,
    },
    /// No images within a deadline: the gateway's own (the message says what
    /// became of the fal job) or one fal enforced (`request_timeout`,
    /// `startup_timeout`, the start timeout the gateway sent).
    #[error("{message}")]
    UpstreamTimeout { message: String },
    /// The client closed the connection before the answer (nginx's 499).
    #[error("the client closed the connection")]
    ClientClosedRequest,
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A bug: never expected.
    #[error("internal error")]
    Internal,
    /// An upstream endpoint could not serve the job for a reason another
    /// endpoint of the model's chain might not share (see [`Fallback`]).
    /// The generation service tries the next endpoint, or answers `cause`;
    /// everywhere else this renders exactly as `cause`.
    #[error("{cause}")]
    EndpointUnavailable {
        reason: Fallback,
        cause: Box<ApiError>,
    },
}

/// Why an endpoint could not serve a job, in the cases where the next
/// endpoint of a chain is tried. Never the client's own errors (validation,
/// content policy), a cancel, a passed deadline, or a job that made images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// The endpoint does not exist (any more): 404 or 410 at submit.
    Gone,
    /// 5xx or unreachable, after the upstream call's retries.
    Failing,
    /// 429 after retries: no capacity for this job now.
    Capacity,
    /// The job did not start within its start timeout.
    StartTimeout,
}

impl Fallback {
    pub const ALL: [Fallback; 4] = [
        Fallback::Gone,
        Fallback::Failing,
        Fallback::Capacity,
        Fallback::StartTimeout,
    ];

    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Gone => "gone",
            Fallback::Failing => "failing",
            Fallback::Capacity => "capacity",
            Fallback::StartTimeout => "start_timeout",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<Cow<'static, str>>, param: &'static str) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(Cow::Borrowed(param)),
            code: None,
        }
    }

    /// The gateway's own deadline passed; `upstream` completes the sentence
    /// with what became of the fal job (empty when there was none).
    pub fn deadline(seconds: u64, upstream: &str) -> Self {
        ApiError::UpstreamTimeout {
            message: format!(
                "The image was not generated within the gateway's {seconds} s deadline{upstream}."
            ),
        }
    }

    /// A job was done upstream, but its answer waited for room in the
    /// memory budget until the deadline passed.
    pub fn memory_deadline(seconds: u64) -> Self {
        Self::deadline(
            seconds,
            "; its answer waited for memory room (limits.max_memory_bytes) past the deadline",
        )
    }

    pub fn invalid_body(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// Mark this error as an endpoint that could not serve, for `reason`.
    pub fn unavailable(self, reason: Fallback) -> Self {
        match self {
            // A marked error keeps its first reason.
            e @ ApiError::EndpointUnavailable { .. } => e,
            cause => ApiError::EndpointUnavailable {
                reason,
                cause: Box::new(cause),
            },
        }
    }

    /// Why the endpoint could not serve, when the next one may be tried.
    pub fn fallback(&self) -> Option<Fallback> {
        match self {
            ApiError::EndpointUnavailable { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// The error the client sees: a marked error's cause.
    pub fn into_cause(self) -> ApiError {
        match self {
            ApiError::EndpointUnavailable { cause, .. } => *cause,
            e => e,
        }
    }

    /// The error as rendered: a marked error's cause.
    fn shown(&self) -> &ApiError {
        match self {
            ApiError::EndpointUnavailable { cause, .. } => cause.shown(),
            e => e,
        }
    }

    /// OpenAI's `type` field.
    pub fn error_type(&self) -> &'static str {
        match self.shown() {
            ApiError::InvalidRequest { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::RequestTimeout
            | ApiError::ModelNotFound { .. }
            | ApiError::NotFound { .. }
            | ApiError::Unsupported { .. }
            | ApiError::ContentPolicy { .. }
            | ApiError::ModelNotAllowed { .. }
            | ApiError::ClientClosedRequest => "invalid_request_error",
            ApiError::InsufficientQuota { .. } => "insufficient_quota",
            ApiError::Unauthorized { .. } => "authentication_error",
            ApiError::RateLimited { .. }
            | ApiError::Overloaded { .. }
            | ApiError::UpstreamRateLimited { .. } => "rate_limit_error",
            ApiError::UpstreamAuth
            | ApiError::Upstream { .. }
            | ApiError::UpstreamUnconfirmed { .. }
            | ApiError::UpstreamUnavailable { .. }
            | ApiError::UpstreamTimeout { .. }
            | ApiError::ShuttingDown
            | ApiError::StoreUnavailable
            | ApiError::Internal
            // Never shown: `shown()` unwraps it.
            | ApiError::EndpointUnavailable { .. } => "server_error",
        }
    }

    /// OpenAI's `code` field: stable snake_case strings.
    pub fn code(&self) -> Option<&'static str> {
        match self.shown() {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::RequestTimeout => Some("request_timeout"),
            ApiError::Unauthorized { .. } => Some("invalid_api_key"),
            ApiError::ModelNotFound { .. } => Some("model_not_found"),
            ApiError::NotFound { .. } => None,
            ApiError::Unsupported { .. } => Some("unsupported_operation"),
            ApiError::ContentPolicy { .. } => Some("content_policy_violation"),
            ApiError::ModelNotAllowed { .. } => Some("model_not_allowed"),
            ApiError::InsufficientQuota { .. } => Some("insufficient_quota"),
            ApiError::StoreUnavailable => Some("database_unavailable"),
            ApiError::RateLimited { .. }
            | ApiError::Overloaded { .. }
            | ApiError::UpstreamRateLimited { .. } => Some("rate_limit_exceeded"),
            ApiError::UpstreamAuth
            | ApiError::Upstream { .. }
            | ApiError::UpstreamUnconfirmed { .. } => Some("upstream_error"),
            ApiError::UpstreamUnavailable { .. } => Some("upstream_unavailable"),
            ApiError::UpstreamTimeout { .. } => Some("upstream_timeout"),
            ApiError::ClientClosedRequest => Some("client_closed_request"),
            ApiError::ShuttingDown => Some("server_shutting_down"),
            ApiError::Internal | ApiError::EndpointUnavailable { .. } => Some("internal_error"),
        }
    }

    pub fn param(&self) -> Option<&str> {
        match self.shown() {
            ApiError::InvalidRequest { param, .. } => param.as_deref(),
            ApiError::ModelNotFound { .. } | ApiError::ModelNotAllowed { .. } => Some("model"),
            ApiError::ContentPolicy { .. } => Some("prompt"),
            _ => None,
        }
    }

    /// The text a client sees.
    pub fn message(&self) -> String {
        match self.shown() {
            ApiError::Unauthorized { message } => (*message).to_owned(),
            ApiError::ModelNotFound { model } => format!(
                "The model `{model}` does not exist. GET /v1/models lists the models this gateway serves."
            ),
            ApiError::RateLimited { limit, .. } => format!(
                "Rate limit reached for {} per minute on this API key (limit {}). Retry after the time in the retry-after header.",
                limit.kind, limit.limit
            ),
            ApiError::Overloaded { .. } => "The gateway is at capacity: too many generations are running or waiting, or answers in flight fill its memory budget. Retry after the time in the retry-after header.".into(),
            ApiError::UpstreamRateLimited { .. } => "fal.ai is rate limiting this gateway. Retry after the time in the retry-after header.".into(),
            ApiError::UpstreamAuth => "The image backend (fal.ai) refused the gateway's upstream credentials (FAL_KEY). This is a gateway configuration problem, not a problem with your API key.".into(),
            ApiError::ModelNotAllowed { model } => format!(
                "This API key may not use the model `{model}`. Ask the gateway's operator for access, or use a model the key allows."
            ),
            ApiError::StoreUnavailable => "The gateway cannot reach its key and spend database right now; retry shortly.".into(),
            ApiError::ShuttingDown => "The gateway is shutting down; retry the request.".into(),
            ApiError::Internal => "The gateway hit an internal error.".into(),
            other => other.to_string(),
        }
    }

    /// The message as logged: the client's message, except where it may
    /// quote the prompt (fal's content-policy text), which logs never hold.
    pub fn log_cause(&self) -> String {
        match self.shown() {
            ApiError::ContentPolicy { .. } => "the image backend rejected the prompt".into(),
            other => other.message(),
        }
    }

    /// Whether a retry could ever help; sent as `x-should-retry`, which the
    /// SDKs obey over their own status-based rule.
    fn should_retry(&self) -> Option<bool> {
        match self.shown() {
            ApiError::RateLimited { .. }
            | ApiError::Overloaded { .. }
            | ApiError::UpstreamRateLimited { .. }
            | ApiError::UpstreamUnavailable { .. }
            | ApiError::StoreUnavailable
            | ApiError::ShuttingDown => Some(true),
            ApiError::UpstreamAuth
            | ApiError::UpstreamUnconfirmed { .. }
            | ApiError::UpstreamTimeout { .. }
            | ApiError::Internal => Some(false),
            ApiError::Upstream { .. } => None,
            _ => Some(false),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self.shown() {
            ApiError::RateLimited {
                retry_after_seconds,
                ..
            }
            | ApiError::Overloaded {
                retry_after_seconds,
            }
            | ApiError::UpstreamRateLimited {
                retry_after_seconds,
            }
            | ApiError::UpstreamUnavailable {
                retry_after_seconds,
                ..
            } => Some((*retry_after_seconds).max(1)),
            ApiError::ShuttingDown | ApiError::StoreUnavailable => Some(1),
            _ => None,
        }
    }

    /// A bounded label for metrics and logs.
    pub fn outcome_label(&self) -> &'static str {
        match self.shown() {
            ApiError::ContentPolicy { .. } => "content_policy",
            ApiError::UpstreamAuth => "auth_error",
            ApiError::UpstreamRateLimited { .. } => "rate_limited",
            ApiError::UpstreamTimeout { .. } => "timeout",
            ApiError::Upstream { .. } => "upstream_error",
            ApiError::UpstreamUnconfirmed { .. } => "unconfirmed",
            ApiError::UpstreamUnavailable { .. } => "unavailable",
            ApiError::ShuttingDown => "cancelled",
            _ => "other",
        }
    }

    /// The JSON body, also used for the `error` event of a stream.
    pub fn body_json(&self) -> String {
        let message = self.message();
        let body = ErrorBody {
            error: ErrorObject {
                message: &message,
                kind: self.error_type(),
                param: self.param(),
                code: self.code(),
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#.into()
        })
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self.shown() {
            ApiError::InvalidRequest { .. }
            | ApiError::Unsupported { .. }
            | ApiError::ContentPolicy { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            ApiError::InsufficientQuota { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ModelNotFound { .. } | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::RateLimited { .. }
            | ApiError::Overloaded { .. }
            | ApiError::UpstreamRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpstreamAuth
            | ApiError::Upstream { .. }
            | ApiError::UpstreamUnconfirmed { .. } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::ClientClosedRequest => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::UpstreamUnavailable { .. }
            | ApiError::ShuttingDown
            | ApiError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal | ApiError::EndpointUnavailable { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CONTENT_TYPE, "application/json"));
        if let Some(retry) = self.should_retry() {
            res.insert_header(("x-should-retry", if retry { "true" } else { "false" }));
        }
        if let Some(seconds) = self.retry_after() {
            res.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if let ApiError::Unauthorized { .. } = self {
            res.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"image-gateway\""),
            ));
        }
        if let ApiError::RateLimited { limit, .. } = self {
            for (name, value) in limit.pairs() {
                res.insert_header((name, value));
            }
        }
        let mut res = res.body(self.body_json());
        if let ApiError::ClientClosedRequest = self {
            // 499 has no standard reason phrase; nginx's is this.
            res.head_mut().reason = Some("Client Closed Request");
        }
        res
    }
}

/// A Go-style duration as OpenAI writes it in `x-ratelimit-reset-*`: `1s`, `6m0s`, `250ms`.
pub fn go_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds <= 0.0 {
        return "0s".into();
    }
    if seconds < 1.0 {
        return format!("{}ms", (seconds * 1000.0).ceil() as u64);
    }
    let total = seconds.ceil() as u64;
    let (m, s) = (total / 60, total % 60);
    if m == 0 {
        format!("{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(e: &ApiError) -> serde_json::Value {
        let res = e.error_response();
        let bytes = res.into_body().try_into_bytes().unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn every_variant_renders_the_openai_shape() {
        let cases = [
            (
                ApiError::invalid("bad size", "size"),
                400,
                "invalid_request_error",
                None,
                Some("size"),
            ),
            (
                ApiError::PayloadTooLarge { limit: 10 },
                413,
                "invalid_request_error",
                Some("request_too_large"),
                None,
            ),
            (
                ApiError::Unauthorized { message: "no" },
                401,
                "authentication_error",
                Some("invalid_api_key"),
                None,
            ),
            (
                ApiError::ModelNotFound { model: "x".into() },
                404,
                "invalid_request_error",
                Some("model_not_found"),
                Some("model"),
            ),
            (
                ApiError::ContentPolicy {
                    message: "no".into(),
                },
                400,
                "invalid_request_error",
                Some("content_policy_violation"),
                Some("prompt"),
            ),
            (
                ApiError::ModelNotAllowed {
                    model: "imagen-4-ultra".into(),
                },
                403,
                "invalid_request_error",
                Some("model_not_allowed"),
                Some("model"),
            ),
            (
                ApiError::InsufficientQuota {
                    message: "over".into(),
                },
                429,
                "insufficient_quota",
                Some("insufficient_quota"),
                None,
            ),
            (
                ApiError::StoreUnavailable,
                503,
                "server_error",
                Some("database_unavailable"),
                None,
            ),
            (
                ApiError::Overloaded {
                    retry_after_seconds: 1,
                },
                429,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
                None,
            ),
            (
                ApiError::UpstreamAuth,
                502,
                "server_error",
                Some("upstream_error"),
                None,
            ),
            (
                ApiError::Upstream {
                    message: "x".into(),
                },
                502,
                "server_error",
                Some("upstream_error"),
                None,
            ),
            (
                ApiError::UpstreamUnavailable {
                    message: "x".into(),
                    retry_after_seconds: 2,
                },
                503,
                "server_error",
                Some("upstream_unavailable"),
                None,
            ),
            (
                ApiError::deadline(3, ""),
                504,
                "server_error",
                Some("upstream_timeout"),
                None,
            ),
        ];
        for (err, status, kind, code, param) in cases {
            assert_eq!(err.status_code().as_u16(), status, "{err:?}");
            let body = body_of(&err);
            assert_eq!(body["error"]["type"], kind, "{err:?}");
            assert_eq!(body["error"]["code"].as_str(), code, "{err:?}");
            assert_eq!(body["error"]["param"].as_str(), param, "{err:?}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
    }

    #[test]
    fn rate_limit_answers_carry_openai_headers() {
        let err = ApiError::RateLimited {
            retry_after_seconds: 2,
            limit: RateLimitHeaders {
                kind: "requests",
                limit: 60,
                remaining: 0,
                reset_seconds: 1.5,
            },
        };
        let res = err.error_response();
        let h = res.headers();
        assert_eq!(h.get("retry-after").unwrap(), "2");
        assert_eq!(h.get("x-ratelimit-limit-requests").unwrap(), "60");
        assert_eq!(h.get("x-ratelimit-remaining-requests").unwrap(), "0");
        assert_eq!(h.get("x-ratelimit-reset-requests").unwrap(), "2s");
        assert_eq!(h.get("x-should-retry").unwrap(), "true");
    }

    #[test]
    fn an_exhausted_budget_tells_the_sdk_not_to_retry() {
        let res = ApiError::InsufficientQuota {
            message: "over budget".into(),
        }
        .error_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers().get("x-should-retry").unwrap(), "false");
        assert!(res.headers().get("retry-after").is_none());
    }

    #[test]
    fn bad_upstream_credentials_are_not_blamed_on_the_client() {
        let res = ApiError::UpstreamAuth.error_response();
        assert_eq!(res.status(), 502);
        assert_eq!(res.headers().get("x-should-retry").unwrap(), "false");
        let body = body_of(&ApiError::UpstreamAuth);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("upstream credentials")
        );
    }

    #[test]
    fn logged_causes_never_quote_a_rejected_prompt() {
        let e = ApiError::ContentPolicy {
            message: "The image backend rejected the request: 'a secret prompt' is flagged".into(),
        };
        assert!(
            e.message().contains("a secret prompt"),
            "the client sees fal's reason"
        );
        assert!(!e.log_cause().contains("a secret prompt"));
        let other = ApiError::deadline(3, "; the upstream job was cancelled");
        assert_eq!(other.log_cause(), other.message());
    }

    #[test]
    fn an_endpoint_marked_unavailable_renders_as_its_cause() {
        let cause = ApiError::UpstreamRateLimited {
            retry_after_seconds: 7,
        };
        let marked = cause.clone().unavailable(Fallback::Capacity);
        assert_eq!(marked.fallback(), Some(Fallback::Capacity));
        assert_eq!(marked.status_code(), cause.status_code());
        assert_eq!(body_of(&marked), body_of(&cause));
        assert_eq!(
            marked
                .error_response()
                .headers()
                .get("retry-after")
                .unwrap(),
            "7"
        );
        assert_eq!(marked.outcome_label(), "rate_limited");
        // The first reason stands; unwrapping gives the cause back.
        let twice = marked.unavailable(Fallback::Gone);
        assert_eq!(twice.fallback(), Some(Fallback::Capacity));
        assert!(matches!(
            twice.into_cause(),
            ApiError::UpstreamRateLimited { .. }
        ));
        assert_eq!(cause.fallback(), None);
    }

    #[test]
    fn go_durations_match_openai_style() {
        assert_eq!(go_duration(0.25), "250ms");
        assert_eq!(go_duration(1.0), "1s");
        assert_eq!(go_duration(59.2), "1m0s");
        assert_eq!(go_duration(360.0), "6m0s");
        assert_eq!(go_duration(-1.0), "0s");
    }
}
