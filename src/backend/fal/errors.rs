//! The one place fal's failures become client errors: what a status code,
//! an `error_type` or a transport failure means for the OpenAI client.

use serde::Deserialize;

use super::transport::{Answer, CallError, Operation, retry_after};
use crate::backend::JobContext;
use crate::error::ApiError;

pub fn protocol(what: &str) -> ApiError {
    tracing::warn!(problem = what, "fal protocol error");
    ApiError::Upstream {
        message: format!("The image backend answered with {what}."),
    }
}

pub fn call_error(e: CallError, ctx: &JobContext) -> ApiError {
    match e {
        CallError::Stopped(stop) => ctx.error(stop),
        CallError::Transport(message) => {
            tracing::warn!(error = %message, "fal unreachable");
            ApiError::Upstream {
                message: "The image backend (fal.ai) could not be reached.".into(),
            }
        }
        CallError::TooLarge => {
            protocol("an answer larger than the gateway's fal.max_response_bytes")
        }
    }
}

/// The one place fal failures become client errors.
pub fn classify(op: Operation, answer: &Answer) -> ApiError {
    let status = answer.status.as_u16();
    let error_type = error_type_of(answer);
    match status {
        401 | 403 => {
            tracing::error!(
                operation = op.as_str(),
                status,
                "fal refused the gateway's FAL_KEY"
            );
            ApiError::UpstreamAuth
        }
        422 => ApiError::ContentPolicy {
            message: rejection_message(&answer.body),
        },
        429 => ApiError::UpstreamRateLimited {
            retry_after_seconds: retry_after(&answer.headers).map_or(5, |d| d.as_secs().max(1)),
        },
        504 if answer
            .headers
            .get("x-fal-request-timeout-type")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"user")) =>
        {
            ApiError::Upstream {
                message: "The image backend timed out starting the job.".into(),
            }
        }
        _ => {
            tracing::warn!(
                operation = op.as_str(),
                status,
                error_type = error_type.as_deref().unwrap_or(""),
                "fal call failed"
            );
            ApiError::Upstream {
                message: match error_type {
                    Some(t) => {
                        format!("The image backend (fal.ai) failed with HTTP {status} ({t}).")
                    }
                    None => format!("The image backend (fal.ai) failed with HTTP {status}."),
                },
            }
        }
    }
}

/// fal's `error_type`, from the header or the body, reduced to a safe token.
fn error_type_of(answer: &Answer) -> Option<String> {
    #[derive(Deserialize)]
    struct Body {
        error_type: Option<String>,
    }
    let raw = answer
        .headers
        .get("x-fal-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            serde_json::from_slice::<Body>(&answer.body)
                .ok()
                .and_then(|b| b.error_type)
        })?;
    safe_token(&raw)
}

pub fn safe_token(raw: &str) -> Option<String> {
    let t: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    (!t.is_empty()).then_some(t)
}

/// The human text of a 422 (`{"detail":[{"msg":...}]}` or `{"detail":"..."}`),
/// bounded; fal's validation messages describe the prompt, not secrets.
fn rejection_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Item {
        msg: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Detail {
        List(Vec<Item>),
        Text(String),
    }
    #[derive(Deserialize)]
    struct Body {
        detail: Option<Detail>,
    }
    let detail = serde_json::from_slice::<Body>(body)
        .ok()
        .and_then(|b| match b.detail? {
            Detail::List(items) => items.into_iter().find_map(|i| i.msg),
            Detail::Text(t) => Some(t),
        });
    match detail {
        Some(d) => {
            let d: String = d.chars().filter(|c| !c.is_control()).take(300).collect();
            format!("The image backend rejected the request: {d}")
        }
        None => "The image backend rejected the prompt (content policy).".into(),
    }
}

/// A job fal reports COMPLETED with an `error`.
pub fn completed_error(error_type: Option<String>) -> ApiError {
    match error_type.as_deref() {
        Some(t) if t.contains("content_policy") || t.contains("safety") || t.contains("nsfw") => {
            ApiError::ContentPolicy {
                message: "The image backend rejected the prompt (content policy).".into(),
            }
        }
        Some(t) => ApiError::Upstream {
            message: format!("The image backend (fal.ai) failed the job ({t})."),
        },
        None => ApiError::Upstream {
            message: "The image backend (fal.ai) failed the job.".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::StatusCode;
    use reqwest::header::{self, HeaderMap, HeaderValue};

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: h,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn failures_classify_into_openai_errors() {
        use actix_web::ResponseError;
        let table = [
            (answer(401, &[], "{}"), 502, "upstream_error"),
            (answer(403, &[], "{}"), 502, "upstream_error"),
            (
                answer(
                    422,
                    &[],
                    r#"{"detail":[{"loc":["body","prompt"],"msg":"flagged","type":"x"}]}"#,
                ),
                400,
                "content_policy_violation",
            ),
            (
                answer(429, &[("retry-after", "7")], ""),
                429,
                "rate_limit_exceeded",
            ),
            (
                answer(500, &[], "secret stack trace"),
                502,
                "upstream_error",
            ),
            (
                answer(
                    503,
                    &[("x-fal-error-type", "runner_scheduling_failure")],
                    "",
                ),
                502,
                "upstream_error",
            ),
            (
                answer(504, &[("x-fal-request-timeout-type", "user")], ""),
                502,
                "upstream_error",
            ),
        ];
        for (a, status, code) in table {
            let e = classify(Operation::Submit, &a);
            assert_eq!(e.status_code().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), Some(code), "{e:?}");
            assert!(!e.message().contains("secret"), "{e:?}");
        }
        let e = classify(
            Operation::Result,
            &answer(422, &[], r#"{"detail":[{"msg":"flagged by safety"}]}"#),
        );
        assert!(e.message().contains("flagged by safety"));
        let e = classify(
            Operation::Submit,
            &answer(
                503,
                &[],
                r#"{"detail":"x","error_type":"runner_scheduling_failure"}"#,
            ),
        );
        assert!(e.message().contains("runner_scheduling_failure"));
    }
}
