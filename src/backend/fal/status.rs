//! Watching a queued job until it is done: fal's status event stream when it
//! works, polling (a short first delay, then backing off) when it does not:
//! when it is refused, is not `text/event-stream`, breaks, ends early, or
//! stays silent past `fal.status_stream_idle_timeout_ms` (fal sends a
//! comment every 15 s, so silence means a stalled connection).

use std::time::Duration;

use bytes::BytesMut;
use reqwest::Method;
use reqwest::header;
use tokio::time::Instant;

use super::errors::protocol;
use super::sse::{MAX_SSE_EVENT_BYTES, event_data, next_sse_event};
use super::transport::{Operation, outcome_label};
use super::wire::Status;
use super::{FalBackend, JobError};
use crate::backend::JobContext;

impl FalBackend {
    /// Wait until the job is COMPLETED; returns when it started running,
    /// if a status said so.
    pub(super) async fn wait_until_done(
        &self,
        status_url: &str,
        ctx: &JobContext,
    ) -> Result<Option<Instant>, JobError> {
        let mut running_since = None;
        let streamed = self.status_stream
            && self
                .watch_stream(status_url, ctx, &mut running_since)
                .await?;
        if !streamed {
            self.poll(status_url, ctx, &mut running_since).await?;
        }
        Ok(running_since)
    }

    /// Poll the status until COMPLETED.
    async fn poll(
        &self,
        status_url: &str,
        ctx: &JobContext,
        running_since: &mut Option<Instant>,
    ) -> Result<(), JobError> {
        let mut delay = self.poll_initial;
        loop {
            if !delay.is_zero() {
                ctx.sleep(delay).await.map_err(JobError::Stopped)?;
            }
            delay = (delay * 2)
                .max(Duration::from_millis(25))
                .min(self.poll_max);
            let answer = self.fetch(Operation::Status, status_url, ctx).await?;
            let status: Status = serde_json::from_slice(&answer.body).map_err(|_| {
                JobError::Failed(protocol("a status answer that is not JSON with `status`"))
            })?;
            if on_status(status, running_since)? {
                return Ok(());
            }
        }
    }

    /// Follow fal's status event stream until COMPLETED. `Ok(false)` means
    /// the stream could not be used (refused, broken, closed early) and the
    /// caller should poll instead.
    async fn watch_stream(
        &self,
        status_url: &str,
        ctx: &JobContext,
        running_since: &mut Option<Instant>,
    ) -> Result<bool, JobError> {
        let request = self
            .request(Method::GET, &format!("{status_url}/stream"))
            .header(header::ACCEPT, "text/event-stream")
            .timeout(ctx.remaining());
        let started = std::time::Instant::now();
        let idle = self.stream_idle_timeout;
        let sent = ctx
            .race(tokio::time::timeout(idle, request.send()))
            .await
            .map_err(JobError::Stopped)?;
        let Ok(sent) = sent else {
            self.upstream().count(Operation::Stream, "idle_timeout");
            tracing::debug!("fal status stream did not answer; polling");
            return Ok(false);
        };
        let mut resp = match sent {
            Ok(resp) if resp.status().is_success() && is_event_stream(resp.headers()) => resp,
            Ok(resp) if resp.status().is_success() => {
                self.upstream().count(Operation::Stream, "not_event_stream");
                tracing::debug!("fal status stream is not text/event-stream; polling");
                return Ok(false);
            }
            Ok(resp) => {
                self.upstream()
                    .count(Operation::Stream, outcome_label(resp.status()));
                tracing::debug!(
                    status = resp.status().as_u16(),
                    "fal status stream refused; polling"
                );
                return Ok(false);
            }
            Err(e) => {
                let outcome = if e.is_timeout() {
                    "timeout"
                } else {
                    "transport_error"
                };
                self.upstream().count(Operation::Stream, outcome);
                tracing::debug!("fal status stream unreachable; polling");
                return Ok(false);
            }
        };
        let mut buf = BytesMut::new();
        let outcome = loop {
            let chunk = ctx
                .race(tokio::time::timeout(idle, resp.chunk()))
                .await
                .map_err(JobError::Stopped)?;
            let Ok(chunk) = chunk else {
                break "idle_timeout";
            };
            match chunk {
                Ok(Some(bytes)) => {
                    buf.extend_from_slice(&bytes);
                    if buf.len() > MAX_SSE_EVENT_BYTES {
                        break "too_large";
                    }
                    while let Some(event) = next_sse_event(&mut buf) {
                        let Some(data) = event_data(&event) else {
                            continue;
                        };
                        let status: Status = serde_json::from_slice(&data).map_err(|_| {
                            JobError::Failed(protocol(
                                "a status event that is not JSON with `status`",
                            ))
                        })?;
                        if on_status(status, running_since)? {
                            self.upstream().observe(
                                Operation::Stream,
                                "success",
                                started.elapsed(),
                            );
                            return Ok(true);
                        }
                    }
                }
                Ok(None) => break "closed_early",
                Err(_) => break "transport_error",
            }
        };
        self.upstream().count(Operation::Stream, outcome);
        tracing::debug!(outcome, "fal status stream ended before COMPLETED; polling");
        Ok(false)
    }

    fn upstream(&self) -> &super::transport::Upstream {
        &self.shared.upstream
    }
}

fn is_event_stream(headers: &header::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Act on one status: `Ok(true)` when the job is done and its result can be
/// fetched.
fn on_status(status: Status, running_since: &mut Option<Instant>) -> Result<bool, JobError> {
    match status.status.as_str() {
        "IN_QUEUE" => Ok(false),
        "IN_PROGRESS" => {
            running_since.get_or_insert_with(Instant::now);
            Ok(false)
        }
        // A failed job says COMPLETED too, with `error`/`error_type`; its
        // result carries the model's real error and status, so it is
        // fetched and classified like any other answer.
        "COMPLETED" => Ok(true),
        _ => Err(JobError::Failed(protocol("an unknown job status"))),
    }
}
