//! The one place fal's failures become client errors: what a status code,
//! an `error_type` or a transport failure means for the OpenAI client.

use std::borrow::Cow;

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
        CallError::Unconfirmed { timeout, message } => {
            tracing::warn!(
                error = %message,
                timeout,
                "a paid call to fal got no answer; not repeated (fal may run and bill it)"
            );
            ApiError::UpstreamUnconfirmed {
                message: if timeout {
                    "The image backend (fal.ai) did not answer in time. The request was not repeated, so that the image is not paid for twice."
                } else {
                    "The connection to the image backend (fal.ai) broke before it answered. The request was not repeated, so that the image is not paid for twice."
                }
                .into(),
            }
        }
        CallError::TooLarge => protocol(
            "an answer larger than the largest legitimate answer for the job (its images at their size) or fal.max_response_bytes",
        ),
    }
}

/// The one place fal failures become client errors: the answer's status,
/// then fal's `error_type` (header `X-Fal-Error-Type` or the body), then a
/// 422's `detail`. Every line logged carries fal's `x-fal-request-id`.
pub fn classify(op: Operation, answer: &Answer) -> ApiError {
    let status = answer.status.as_u16();
    let error_type = error_type_of(answer);
    // The answer's own id: what fal support asks for. (The job's queue
    // request id is on the enclosing `fal_job` span.)
    let x_fal_request_id = answer.fal_request_id().unwrap_or("");
    let log = |what: &str| {
        tracing::warn!(
            operation = op.as_str(),
            status,
            error_type = error_type.as_deref().unwrap_or(""),
            x_fal_request_id,
            "{what}"
        );
    };
    let user_start_timeout = status == 504
        && answer
            .headers
            .get("x-fal-request-timeout-type")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"user"));
    match (status, error_type.as_deref()) {
        (401 | 403, _) => {
            tracing::error!(
                operation = op.as_str(),
                status,
                x_fal_request_id,
                "fal refused the gateway's FAL_KEY"
            );
            ApiError::UpstreamAuth
        }
        (422, _) => {
            log("fal rejected the input");
            rejection(&answer.body)
        }
        (429, _) => {
            log("fal is rate limiting the gateway");
            ApiError::UpstreamRateLimited {
                retry_after_seconds: retry_after(&answer.headers).map_or(5, |d| d.as_secs().max(1)),
            }
        }
        _ if user_start_timeout => {
            log("fal dropped a job that had not started before its start timeout");
            ApiError::UpstreamTimeout {
                message: "The image backend (fal.ai) could not start the job before the request deadline (its queue was too long)."
                    .into(),
            }
        }
        (_, Some(t @ ("request_timeout" | "startup_timeout"))) => {
            log("fal timed the job out");
            ApiError::UpstreamTimeout {
                message: format!("The image backend (fal.ai) timed the job out ({t})."),
            }
        }
        (_, Some(t))
            if t == "runner_scheduling_failure"
                || t == "runner_disconnected"
                || t.starts_with("runner_connection") =>
        {
            log("fal could not run the job");
            ApiError::UpstreamUnavailable {
                message: format!(
                    "The image backend (fal.ai) could not run the job now ({t}); retry shortly."
                ),
                retry_after_seconds: retry_after(&answer.headers).map_or(2, |d| d.as_secs().max(1)),
            }
        }
        (_, Some("bad_request")) => {
            log("fal refused the request as bad");
            ApiError::InvalidRequest {
                message:
                    "The image backend (fal.ai) refused the request as malformed (bad_request)."
                        .into(),
                param: None,
                code: None,
            }
        }
        (_, t) => {
            log("fal call failed");
            ApiError::Upstream {
                message: match t {
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

/// A 422: `{"detail":[{"loc":[...],"msg":...,"type":...}]}` (or
/// `{"detail":"..."}`). A `content_policy_violation` item (or one without a
/// `type`, or a 422 that says nothing) is a content-policy refusal; any
/// other item is a
/// validation error naming the field, in OpenAI's terms where one maps.
/// Texts are bounded; fal's messages describe the input, never secrets.
fn rejection(body: &[u8]) -> ApiError {
    #[derive(Deserialize)]
    struct Item {
        #[serde(default)]
        loc: Vec<serde_json::Value>,
        msg: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
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
    let clean = |t: &str| -> String { t.chars().filter(|c| !c.is_control()).take(300).collect() };
    let items = match serde_json::from_slice::<Body>(body)
        .ok()
        .and_then(|b| b.detail)
    {
        Some(Detail::List(items)) => items,
        Some(Detail::Text(t)) => {
            return ApiError::InvalidRequest {
                message: format!("The image backend rejected the request: {}", clean(&t)).into(),
                param: None,
                code: None,
            };
        }
        None => {
            return ApiError::ContentPolicy {
                message: "The image backend rejected the prompt (content policy).".into(),
            };
        }
    };
    // An item without a `type` says nothing more than "rejected": taken as
    // the content policy, as the gateway always did.
    let is_policy = |i: &Item| {
        i.kind
            .as_deref()
            .is_none_or(|k| k.contains("content_policy"))
    };
    if let Some(item) = items.iter().find(|i| is_policy(i)) {
        return ApiError::ContentPolicy {
            message: match &item.msg {
                Some(m) => format!("The image backend rejected the request: {}", clean(m)),
                None => "The image backend rejected the prompt (content policy).".into(),
            },
        };
    }
    let Some(item) = items.first() else {
        return ApiError::ContentPolicy {
            message: "The image backend rejected the prompt (content policy).".into(),
        };
    };
    // `loc` is `["body", "<field>", ...]`.
    let field = item
        .loc
        .iter()
        .filter_map(serde_json::Value::as_str)
        .find(|s| *s != "body")
        .and_then(safe_token);
    let msg = item.msg.as_deref().map(clean).unwrap_or_default();
    let message = match &field {
        Some(f) => format!("The image backend rejected the value of `{f}`: {msg}"),
        None => format!("The image backend rejected the request: {msg}"),
    };
    ApiError::InvalidRequest {
        message: message.into(),
        param: field.as_deref().and_then(openai_param).map(Cow::Borrowed),
        code: None,
    }
}

/// The OpenAI request field a fal input field comes from.
fn openai_param(fal_field: &str) -> Option<&'static str> {
    Some(match fal_field {
        "prompt" => "prompt",
        "aspect_ratio" | "image_size" | "resolution" => "size",
        "num_images" => "n",
        "output_format" => "output_format",
        "sync_mode" => "response_format",
        "seed" => "seed",
        "safety_tolerance" => "moderation",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::transport::answer;
    use super::*;

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
                    r#"{"detail":[{"loc":["body","prompt"],"msg":"flagged","type":"content_policy_violation"}]}"#,
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
                503,
                "upstream_unavailable",
            ),
            (
                answer(503, &[], r#"{"error_type":"runner_connection_refused"}"#),
                503,
                "upstream_unavailable",
            ),
            (
                answer(504, &[("x-fal-request-timeout-type", "user")], ""),
                504,
                "upstream_timeout",
            ),
            (
                answer(504, &[("x-fal-error-type", "startup_timeout")], ""),
                504,
                "upstream_timeout",
            ),
            (
                answer(504, &[], r#"{"detail":"x","error_type":"request_timeout"}"#),
                504,
                "upstream_timeout",
            ),
            (
                answer(
                    502,
                    &[("x-fal-error-type", "runner_incomplete_response")],
                    "",
                ),
                502,
                "upstream_error",
            ),
            (
                answer(500, &[("x-fal-error-type", "internal_error")], ""),
                502,
                "upstream_error",
            ),
            (
                answer(400, &[("x-fal-error-type", "bad_request")], ""),
                400,
                "",
            ),
        ];
        for (a, status, code) in table {
            let code = (!code.is_empty()).then_some(code);
            let e = classify(Operation::Submit, &a);
            assert_eq!(e.status_code().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), code, "{e:?}");
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

    #[test]
    fn a_validation_422_names_the_field_in_openai_terms() {
        use actix_web::ResponseError;
        let table = [
            (
                r#"{"detail":[{"loc":["body","aspect_ratio"],"msg":"Input should be '1:1'","type":"literal_error"}]}"#,
                Some("size"),
                "aspect_ratio",
            ),
            (
                r#"{"detail":[{"loc":["body","num_images"],"msg":"too many","type":"less_than_equal"}]}"#,
                Some("n"),
                "num_images",
            ),
            (
                r#"{"detail":[{"loc":["body","guidance"],"msg":"bad","type":"value_error"}]}"#,
                None,
                "guidance",
            ),
            (
                r#"{"detail":[{"loc":["body","prompt"],"msg":"too long","type":"string_too_long"}]}"#,
                Some("prompt"),
                "prompt",
            ),
        ];
        for (body, param, field) in table {
            let e = classify(Operation::Result, &answer(422, &[], body));
            assert_eq!(e.status_code().as_u16(), 400, "{body}");
            assert_eq!(e.error_type(), "invalid_request_error");
            assert_eq!(e.code(), None, "{body}");
            assert_eq!(e.param(), param, "{body}");
            assert!(e.message().contains(field), "{}", e.message());
        }
        // A policy item anywhere in the list wins.
        let e = classify(
            Operation::Result,
            &answer(
                422,
                &[],
                r#"{"detail":[{"loc":["body"],"msg":"x","type":"value_error"},{"loc":["body","prompt"],"msg":"unsafe","type":"content_policy_violation"}]}"#,
            ),
        );
        assert_eq!(e.code(), Some("content_policy_violation"));
    }
}
