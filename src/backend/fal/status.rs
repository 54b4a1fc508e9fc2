//! Watching a queued job until it is done: fal's status event stream when it
//! works, polling (a short first delay, then backing off) when it does not.

use std::time::Duration;

use bytes::BytesMut;
use reqwest::Method;
use reqwest::header;
use tokio::time::Instant;

use super::errors::{completed_error, protocol, safe_token};
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
            let answer = self
                .fetch(
                    Operation::Status,
                    || self.request(Method::GET, status_url),
                    ctx,
                )
                .await?;
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
        let sent = ctx.race(request.send()).await.map_err(JobError::Stopped)?;
        let mut resp = match sent {
            Ok(resp) if resp.status().is_success() => resp,
            Ok(resp) => {
                self.upstream
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
                self.upstream.count(Operation::Stream, outcome);
                tracing::debug!("fal status stream unreachable; polling");
                return Ok(false);
            }
        };
        let mut buf = BytesMut::new();
        let outcome = loop {
            match ctx.race(resp.chunk()).await.map_err(JobError::Stopped)? {
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
                            self.upstream
                                .observe(Operation::Stream, "success", started.elapsed());
                            return Ok(true);
                        }
                    }
                }
                Ok(None) => break "closed_early",
                Err(_) => break "transport_error",
            }
        };
        self.upstream.count(Operation::Stream, outcome);
        tracing::debug!(outcome, "fal status stream ended before COMPLETED; polling");
        Ok(false)
    }
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
        "COMPLETED" => {
            if status.error.as_ref().is_some_and(|e| !e.is_null()) {
                let t = status.error_type.as_deref().and_then(safe_token);
                tracing::warn!(
                    error_type = t.as_deref().unwrap_or(""),
                    "fal job completed with an error"
                );
                return Err(JobError::Failed(completed_error(t)));
            }
            Ok(true)
        }
        _ => Err(JobError::Failed(protocol("an unknown job status"))),
    }
}
