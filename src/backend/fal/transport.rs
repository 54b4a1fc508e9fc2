//! fal's HTTP plumbing: one pooled client, the size cap on answers, retries
//! by fal's own clients' rules, and the per-call metrics. Knows nothing of
//! what the calls mean; [`super::errors`] classifies the answers.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::backend::{JobContext, Stop};
use crate::config::FalSettings;
use crate::metrics::Metrics;

/// The upstream call kinds, used as the `operation` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Submit,
    Status,
    Stream,
    Result,
    Cancel,
    Run,
    Download,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Submit => "submit",
            Operation::Status => "status",
            Operation::Stream => "stream",
            Operation::Result => "result",
            Operation::Cancel => "cancel",
            Operation::Run => "run",
            Operation::Download => "download",
        }
    }
}

/// Why an upstream call produced no usable answer.
#[derive(Debug)]
pub enum CallError {
    /// Cancelled, or the request deadline passed.
    Stopped(Stop),
    /// Connection refused, DNS failure, reset, or a call timeout, after retries.
    Transport(String),
    /// The answer was larger than `fal.max_response_bytes`.
    TooLarge,
}

/// One upstream answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// Exponential backoff from `base`, capped, with jitter in [50%, 100%].
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.cap);
        capped.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// Shared HTTP plumbing: the pooled client, size limit, retries and metrics.
pub struct Upstream {
    pub http: reqwest::Client,
    pub max_response_bytes: usize,
    pub call_timeout: Duration,
    pub retry: RetryPolicy,
    pub metrics: Arc<Metrics>,
}

/// Build the one pooled client used for every upstream call.
pub fn build_client(settings: &FalSettings) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("image-gateway/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        // Redirects are not followed: fal's API does not redirect, and a
        // redirect must never carry the key elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

impl Upstream {
    /// Send one request with fal's retry rules until it yields an answer
    /// worth classifying, the retries run out, or `ctx` ends it.
    pub async fn call(
        &self,
        op: Operation,
        build: impl Fn() -> reqwest::RequestBuilder,
        ctx: &JobContext,
        retry_transport: bool,
    ) -> Result<Answer, CallError> {
        let mut attempt = 0u32;
        loop {
            if ctx.cancel.is_cancelled() {
                return Err(CallError::Stopped(Stop::Cancelled));
            }
            if Instant::now() >= ctx.deadline {
                return Err(CallError::Stopped(Stop::Deadline));
            }
            let timeout = self.call_timeout.min(ctx.remaining());
            let started = std::time::Instant::now();
            let outcome = ctx
                .race(self.execute(build().timeout(timeout)))
                .await
                .map_err(CallError::Stopped)?;
            self.metrics
                .upstream_duration
                .with_label_values(&[op.as_str()])
                .observe(started.elapsed().as_secs_f64());
            let delay = match outcome {
                Ok(answer) => {
                    self.count(op, outcome_label(answer.status));
                    match retryable(op, &answer) {
                        Some(hint) if attempt < self.retry.max_retries => {
                            hint.unwrap_or_else(|| self.retry.delay(attempt))
                        }
                        _ => return Ok(answer),
                    }
                }
                Err(ExecError::TooLarge) => {
                    self.count(op, "too_large");
                    return Err(CallError::TooLarge);
                }
                Err(ExecError::Transport {
                    timeout,
                    connect,
                    message,
                }) => {
                    self.count(
                        op,
                        if timeout {
                            "timeout"
                        } else {
                            "transport_error"
                        },
                    );
                    if (retry_transport || connect) && attempt < self.retry.max_retries {
                        self.retry.delay(attempt)
                    } else {
                        return Err(CallError::Transport(message));
                    }
                }
            };
            if Instant::now() + delay >= ctx.deadline {
                return Err(CallError::Stopped(Stop::Deadline));
            }
            self.metrics
                .upstream_retries
                .with_label_values(&[op.as_str()])
                .inc();
            tracing::debug!(
                operation = op.as_str(),
                attempt,
                delay_ms = delay.as_millis() as u64,
                "retrying upstream call"
            );
            ctx.sleep(delay).await.map_err(CallError::Stopped)?;
            attempt += 1;
        }
    }

    pub fn count(&self, op: Operation, outcome: &str) {
        self.metrics
            .upstream_requests
            .with_label_values(&[op.as_str(), outcome])
            .inc();
    }

    async fn execute(&self, req: reqwest::RequestBuilder) -> Result<Answer, ExecError> {
        let mut resp = req.send().await.map_err(ExecError::from_reqwest)?;
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
        let limit = self.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(ExecError::TooLarge);
        }
        let mut buf = BytesMut::with_capacity(
            resp.content_length().unwrap_or(8192).min(limit as u64) as usize,
        );
        while let Some(chunk) = resp.chunk().await.map_err(ExecError::from_reqwest)? {
            if buf.len() + chunk.len() > limit {
                return Err(ExecError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body: buf.freeze(),
        })
    }

    /// Record one call that did not go through [`Upstream::call`] (the
    /// status stream, cancellations).
    pub fn observe(&self, op: Operation, outcome: &str, took: Duration) {
        self.metrics
            .upstream_duration
            .with_label_values(&[op.as_str()])
            .observe(took.as_secs_f64());
        self.count(op, outcome);
    }
}

enum ExecError {
    Transport {
        timeout: bool,
        connect: bool,
        message: String,
    },
    TooLarge,
}

impl ExecError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        // reqwest's Display can include the URL but never headers; strip the
        // URL anyway so nothing request-specific reaches logs or clients.
        let e = e.without_url();
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        ExecError::Transport {
            timeout: e.is_timeout(),
            connect: e.is_connect(),
            message,
        }
    }
}

pub fn outcome_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "success",
        429 => "rate_limited",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

/// Whether fal's own clients would retry this answer; `Some(hint)` carries
/// the server's `retry-after` when it gave one.
fn retryable(op: Operation, answer: &Answer) -> Option<Option<Duration>> {
    let from_fal = answer.headers.contains_key("x-fal-request-id");
    let status = answer.status.as_u16();
    let retry = match status {
        408 | 409 | 429 => op != Operation::Run || status == 429,
        502..=504 => {
            let user_timeout = answer
                .headers
                .get("x-fal-request-timeout-type")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"user"));
            !user_timeout && !from_fal
        }
        500 => op == Operation::Status,
        _ => false,
    } || (op == Operation::Run
        && answer
            .headers
            .get("x-fal-needs-retry")
            .is_some_and(|v| v.as_bytes() == b"1" || v.as_bytes().eq_ignore_ascii_case(b"true")));
    retry.then(|| retry_after(&answer.headers))
}

/// `retry-after-ms`, then `retry-after` in seconds; HTTP dates are ignored
/// (the exponential backoff applies instead).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64((ms / 1000.0).min(3600.0)));
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{self, HeaderValue};

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
    fn retries_follow_fal_clients_rules() {
        let fal_id = ("x-fal-request-id", "abc");
        let table: Vec<(Operation, Answer, bool)> = vec![
            (Operation::Submit, answer(408, &[], ""), true),
            (Operation::Submit, answer(409, &[], ""), true),
            (Operation::Submit, answer(429, &[], ""), true),
            (
                Operation::Submit,
                answer(502, &[], "<html>nginx</html>"),
                true,
            ),
            (Operation::Submit, answer(503, &[], ""), true),
            (Operation::Submit, answer(504, &[], ""), true),
            (Operation::Submit, answer(502, &[fal_id], ""), false),
            (Operation::Submit, answer(503, &[fal_id], ""), false),
            (
                Operation::Submit,
                answer(504, &[("x-fal-request-timeout-type", "user")], ""),
                false,
            ),
            (Operation::Submit, answer(500, &[], ""), false),
            (Operation::Status, answer(500, &[], ""), true),
            (Operation::Submit, answer(400, &[], ""), false),
            (Operation::Submit, answer(401, &[], ""), false),
            (Operation::Submit, answer(422, &[], ""), false),
            (
                Operation::Run,
                answer(500, &[("x-fal-needs-retry", "1")], ""),
                true,
            ),
            (Operation::Run, answer(408, &[], ""), false),
            (Operation::Run, answer(429, &[], ""), true),
        ];
        for (op, a, expected) in table {
            assert_eq!(
                retryable(op, &a).is_some(),
                expected,
                "{op:?} {} {:?}",
                a.status,
                a.headers
            );
        }
    }

    #[test]
    fn retry_after_is_read_in_ms_then_seconds() {
        let a = answer(429, &[("retry-after", "2")], "");
        assert_eq!(retry_after(&a.headers), Some(Duration::from_secs(2)));
        let a = answer(
            429,
            &[("retry-after", "0.5"), ("retry-after-ms", "250")],
            "",
        );
        assert_eq!(retry_after(&a.headers), Some(Duration::from_millis(250)));
        let a = answer(429, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], "");
        assert_eq!(retry_after(&a.headers), None);
    }

    #[test]
    fn backoff_is_capped_with_jitter() {
        let p = RetryPolicy {
            max_retries: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for attempt in 0..40 {
            let d = p.delay(attempt);
            let nominal = Duration::from_millis(100 * 2u64.saturating_pow(attempt.min(20)))
                .min(Duration::from_secs(1));
            assert!(d >= nominal / 2 && d <= nominal, "attempt {attempt}: {d:?}");
        }
    }
}
