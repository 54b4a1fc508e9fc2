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
    /// Connection refused, DNS failure, or a failure of an idempotent call,
    /// after retries: the request provably did not reach fal, or repeating
    /// it is free.
    Transport(String),
    /// A submit or sync run that was sent but got no answer (a timeout, or
    /// a reset after the request went out): fal may be running, and billing,
    /// the job. Never retried.
    Unconfirmed { timeout: bool, message: String },
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

impl Answer {
    /// `x-fal-request-id`, which fal's own servers send and fal support
    /// asks for (not secret), reduced to a safe token.
    pub fn fal_request_id(&self) -> Option<&str> {
        fal_request_id(&self.headers)
    }
}

/// `x-fal-request-id` of an answer, when it is a plain token.
pub fn fal_request_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-fal-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

/// How one call is retried, like fal's own clients: exponential backoff from
/// `base`, capped at `cap`, with jitter in [50%, 150%] (the Python client's),
/// at most `max_retries` times and never past `budget` since the first
/// attempt nor past the request deadline.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
    pub budget: Duration,
}

impl RetryPolicy {
    /// The delay before retry number `attempt + 1`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        exp.min(self.cap)
            .mul_f64(0.5 + fastrand::f64())
            .min(self.cap)
    }
}

/// A pooled HTTP client for each thread that calls upstream. A connection
/// is driven by a task on the runtime that opened it, so with one client
/// shared by every thread an HTTP worker's call could be carried by another
/// thread's task, a wake-up across threads per call; with a client per
/// thread, a miss's calls stay on the worker that took the request.
pub struct ClientPerThread {
    first: reqwest::Client,
    build: Box<dyn Fn() -> Result<reqwest::Client, reqwest::Error> + Send + Sync>,
    local: thread_local::ThreadLocal<reqwest::Client>,
}

impl ClientPerThread {
    /// Fails when `build` does (checked once, here).
    pub fn new(
        build: impl Fn() -> Result<reqwest::Client, reqwest::Error> + Send + Sync + 'static,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            first: build()?,
            build: Box::new(build),
            local: thread_local::ThreadLocal::new(),
        })
    }

    /// This thread's client. A thread that exits leaves its client to the
    /// next thread given its slot, whose pooled connections (their tasks
    /// gone with the old thread's runtime) the pool then discards as closed.
    pub fn get(&self) -> &reqwest::Client {
        self.local
            .get_or(|| (self.build)().unwrap_or_else(|_| self.first.clone()))
    }
}

/// Shared HTTP plumbing: the pooled clients, size limit, retries, backup
/// hosts and metrics.
pub struct Upstream {
    clients: ClientPerThread,
    pub max_response_bytes: usize,
    pub call_timeout: Duration,
    pub retry: RetryPolicy,
    /// (primary origin, backup origin) pairs: a call whose connection to the
    /// primary fails is replayed once on the backup (fal's documented
    /// backup hosts, as the Python client does).
    pub backups: Vec<(String, String)>,
    pub metrics: Arc<Metrics>,
}

/// Build a pooled client for upstream calls (one per thread).
fn build_client(
    connect_timeout: Duration,
    pool_max_idle_per_host: usize,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("image-gateway/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(pool_max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        // Redirects are not followed: fal's API does not redirect, and a
        // redirect must never carry the key elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// What may be repeated of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// An idempotent call (status, result, cancel, download): transport
    /// errors are retried.
    Idempotent,
    /// A paid call (submit, sync run): only what provably did not reach fal
    /// is retried (connect errors, and answers fal's clients retry).
    PaidOnce,
}

impl Upstream {
    pub fn new(settings: &FalSettings, metrics: Arc<Metrics>) -> Result<Self, reqwest::Error> {
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let pool = settings.pool_max_idle_per_host;
        Ok(Self {
            clients: ClientPerThread::new(move || build_client(connect_timeout, pool))?,
            max_response_bytes: settings.max_response_bytes,
            call_timeout: Duration::from_secs(settings.call_timeout_seconds),
            retry: RetryPolicy {
                max_retries: settings.max_retries,
                base: Duration::from_millis(settings.retry_base_delay_ms),
                cap: Duration::from_millis(settings.retry_max_delay_ms),
                budget: Duration::from_secs(settings.retry_budget_seconds),
            },
            backups: settings.backup_origins(),
            metrics,
        })
    }

    /// This thread's client.
    pub fn http(&self) -> &reqwest::Client {
        self.clients.get()
    }

    /// Send one request to `url` with fal's retry rules until it yields an
    /// answer worth classifying, the retries run out, or `ctx` ends it.
    /// `bounded` cuts each attempt at the request deadline; a paid call that
    /// must be seen through to its answer (to cancel what it started) is
    /// not bounded, and its caller stops waiting instead.
    pub async fn call(
        &self,
        op: Operation,
        url: &str,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
        ctx: &JobContext,
        policy: CallPolicy,
    ) -> Result<Answer, CallError> {
        let first = Instant::now();
        let mut attempt = 0u32;
        loop {
            if ctx.cancel.is_cancelled() {
                return Err(CallError::Stopped(Stop::Cancelled));
            }
            if Instant::now() >= ctx.deadline {
                return Err(CallError::Stopped(Stop::Deadline));
            }
            let timeout = if policy.bounded {
                self.call_timeout.min(ctx.remaining())
            } else {
                self.call_timeout
            };
            let started = std::time::Instant::now();
            let mut outcome = self
                .attempt(build(url).timeout(timeout), ctx, policy)
                .await?;
            if let Err(ExecError::Transport { connect: true, .. }) = &outcome
                && let Some(backup) = self.backup_of(url)
            {
                tracing::warn!(
                    operation = op.as_str(),
                    "connection to fal failed; trying its backup host"
                );
                outcome = self
                    .attempt(build(&backup).timeout(timeout), ctx, policy)
                    .await?;
            }
            self.metrics
                .upstream_duration
                .with_label_values(&[op.as_str()])
                .observe(started.elapsed().as_secs_f64());
            let retries_left = attempt < policy.max_retries.unwrap_or(self.retry.max_retries);
            // The retry's delay, and what the call ends with if it is not retried.
            let (delay, last) = match outcome {
                Ok(answer) => {
                    self.count(op, outcome_label(answer.status));
                    match retryable(op, &answer, policy) {
                        Some(hint) if retries_left => (
                            hint.unwrap_or_else(|| self.retry.delay(attempt)),
                            Ok(answer),
                        ),
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
                    if policy.repeat == Repeat::PaidOnce && !connect {
                        self.metrics
                            .upstream_unconfirmed
                            .with_label_values(&[op.as_str()])
                            .inc();
                        return Err(CallError::Unconfirmed { timeout, message });
                    }
                    if !retries_left {
                        return Err(CallError::Transport(message));
                    }
                    (
                        self.retry.delay(attempt),
                        Err(CallError::Transport(message)),
                    )
                }
            };
            if first.elapsed() + delay > self.retry.budget {
                tracing::debug!(operation = op.as_str(), "upstream retry budget spent");
                return last;
            }
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

    /// One attempt, stopped by `ctx`'s cancellation and, when the policy
    /// is `bounded`, by its deadline.
    async fn attempt(
        &self,
        req: reqwest::RequestBuilder,
        ctx: &JobContext,
        policy: CallPolicy,
    ) -> Result<Result<Answer, ExecError>, CallError> {
        let limit = policy
            .max_response_bytes
            .map_or(self.max_response_bytes, |cap| {
                usize::try_from(cap).map_or(self.max_response_bytes, |cap| {
                    cap.min(self.max_response_bytes)
                })
            });
        if policy.bounded {
            return ctx
                .race(self.execute(req, limit))
                .await
                .map_err(CallError::Stopped);
        }
        tokio::select! {
            outcome = self.execute(req, limit) => Ok(outcome),
            () = ctx.cancel.cancelled() => Err(CallError::Stopped(Stop::Cancelled)),
        }
    }

    /// The backup host's version of `url`, when its origin has one.
    fn backup_of(&self, url: &str) -> Option<String> {
        self.backups.iter().find_map(|(primary, backup)| {
            let rest = url.strip_prefix(primary.as_str())?;
            (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
                .then(|| format!("{backup}{rest}"))
        })
    }

    pub fn count(&self, op: Operation, outcome: &str) {
        self.metrics
            .upstream_requests
            .with_label_values(&[op.as_str(), outcome])
            .inc();
    }

    /// Send `req` and read its answer, at most `limit` bytes of it.
    async fn execute(
        &self,
        req: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<Answer, ExecError> {
        let mut resp = req.send().await.map_err(ExecError::from_reqwest)?;
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
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
    /// status stream).
    pub fn observe(&self, op: Operation, outcome: &str, took: Duration) {
        self.metrics
            .upstream_duration
            .with_label_values(&[op.as_str()])
            .observe(took.as_secs_f64());
        self.count(op, outcome);
    }
}

/// How [`Upstream::call`] treats one call.
#[derive(Clone, Copy, Debug)]
pub struct CallPolicy {
    pub repeat: Repeat,
    /// Cut each attempt at the request deadline.
    pub bounded: bool,
    /// Retry a 429 (fal's clients do; not when the gateway asked fal for a
    /// short queue with `fal_max_queue_length`, whose 429 means "full").
    pub retry_429: bool,
    /// Overrides `fal.max_retries` (cancels retry like fal's JS client: 3).
    pub max_retries: Option<u32>,
    /// The largest answer this call can legitimately get (the endpoint's
    /// largest result for the job); `fal.max_response_bytes` bounds every
    /// call besides.
    pub max_response_bytes: Option<u64>,
}

impl CallPolicy {
    /// Status, result, download: idempotent, bounded by the deadline.
    pub const IDEMPOTENT: CallPolicy = CallPolicy {
        repeat: Repeat::Idempotent,
        bounded: true,
        retry_429: true,
        max_retries: None,
        max_response_bytes: None,
    };
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
/// the server's `retry-after` when it gave one. Ingress errors are told from
/// fal's own as the Python client does: 502/503/504 without
/// `x-fal-request-id` whose body says `nginx`. A 504 with any
/// `X-Fal-Request-Timeout-Type` is fal honouring a start timeout: final.
fn retryable(op: Operation, answer: &Answer, policy: CallPolicy) -> Option<Option<Duration>> {
    let status = answer.status.as_u16();
    let retry = match status {
        429 => policy.retry_429,
        408 | 409 => op != Operation::Run,
        502..=504 => {
            !answer.headers.contains_key("x-fal-request-timeout-type")
                && !answer.headers.contains_key("x-fal-request-id")
                && contains(&answer.body, b"nginx")
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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

/// An answer as a test writes it: status, headers, body.
#[cfg(test)]
pub(crate) fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
    use reqwest::header::{HeaderName, HeaderValue};
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        headers: h,
        body: Bytes::from(body.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (
                Operation::Submit,
                answer(503, &[], "<center>nginx</center>"),
                true,
            ),
            (Operation::Submit, answer(504, &[], "nginx"), true),
            // Without nginx's signature it may be fal's own answer: final.
            (Operation::Submit, answer(503, &[], ""), false),
            (
                Operation::Submit,
                answer(502, &[], r#"{"detail":"x"}"#),
                false,
            ),
            (
                Operation::Submit,
                answer(504, &[("x-fal-request-timeout-type", "system")], "nginx"),
                false,
            ),
            (Operation::Submit, answer(502, &[fal_id], "nginx"), false),
            (Operation::Submit, answer(503, &[fal_id], ""), false),
            (
                Operation::Submit,
                answer(504, &[("x-fal-request-timeout-type", "user")], "nginx"),
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
                retryable(op, &a, CallPolicy::IDEMPOTENT).is_some(),
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
            budget: Duration::from_secs(30),
        };
        for attempt in 0..40 {
            let d = p.delay(attempt);
            let nominal = Duration::from_millis(100 * 2u64.saturating_pow(attempt.min(20)))
                .min(Duration::from_secs(1));
            assert!(
                d >= nominal / 2 && d <= (nominal * 3 / 2).min(p.cap),
                "attempt {attempt}: {d:?}"
            );
        }
    }

    #[test]
    fn a_429_is_final_when_the_gateway_asked_for_a_short_queue() {
        let a = answer(429, &[("x-fal-request-id", "x")], "{}");
        let short_queue = CallPolicy {
            retry_429: false,
            ..CallPolicy::IDEMPOTENT
        };
        assert!(retryable(Operation::Submit, &a, CallPolicy::IDEMPOTENT).is_some());
        assert!(retryable(Operation::Submit, &a, short_queue).is_none());
    }
}
