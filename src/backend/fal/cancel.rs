//! Cancelling fal jobs nobody waits for any more: retried like fal's
//! clients retry, in the background (shutdown waits for them), with each
//! outcome counted.

use std::time::Duration;

use reqwest::Method;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::transport::{Answer, CallPolicy, Operation};
use super::wire::CancelAnswer;
use super::{JobError, JobUrls, Shared};
use crate::backend::{JobContext, Stop};
use crate::metrics::{CancelOutcome, CancelReason};

/// Time a cancel (retries included) may take in the background.
const CANCEL_BUDGET: Duration = Duration::from_secs(30);
/// Retries of a cancel: fal's JS client's.
const CANCEL_RETRIES: u32 = 3;

impl Shared {
    /// Ask fal to cancel a job, retried like fal's clients retry; the
    /// handle yields fal's answer. Tracked so shutdown waits for it.
    pub(super) fn spawn_cancel(
        &self,
        urls: &JobUrls,
        reason: CancelReason,
    ) -> JoinHandle<CancelOutcome> {
        let upstream = self.upstream.clone();
        let metrics = upstream.metrics.clone();
        metrics
            .upstream_cancels
            .with_label_values(&[reason.as_str()])
            .inc();
        let req_headers = self.auth_headers.clone();
        let url = urls.cancel.clone();
        let id = urls.id.clone();
        self.cancels.spawn(
            async move {
                let ctx = JobContext {
                    deadline: Instant::now() + CANCEL_BUDGET,
                    cancel: CancellationToken::new(),
                    timeout_seconds: CANCEL_BUDGET.as_secs(),
                    account: None,
                };
                let policy = CallPolicy {
                    max_retries: Some(CANCEL_RETRIES),
                    ..CallPolicy::IDEMPOTENT
                };
                let build = |u: &str| {
                    upstream
                        .http
                        .request(Method::PUT, u)
                        .headers(req_headers.clone())
                };
                let answer = upstream
                    .call(Operation::Cancel, &url, build, &ctx, policy)
                    .await;
                let outcome = match &answer {
                    Ok(answer) => cancel_outcome(answer),
                    Err(_) => CancelOutcome::Failed,
                };
                metrics
                    .upstream_cancel_outcomes
                    .with_label_values(&[outcome.as_str()])
                    .inc();
                let x_fal_request_id = answer
                    .as_ref()
                    .ok()
                    .and_then(Answer::fal_request_id)
                    .unwrap_or("");
                if outcome == CancelOutcome::Failed {
                    tracing::warn!(
                        request_id = id.as_str(),
                        x_fal_request_id,
                        reason = reason.as_str(),
                        "cancelling a fal job failed; it may still run"
                    );
                } else {
                    tracing::debug!(
                        request_id = id.as_str(),
                        outcome = outcome.as_str(),
                        reason = reason.as_str(),
                        "fal job cancelled"
                    );
                }
                outcome
            }
            .in_current_span(),
        )
    }
}

/// fal's answer to a cancel: the `status` it names, else its HTTP status
/// (202 requested, 400 already completed, 404 not found).
fn cancel_outcome(answer: &Answer) -> CancelOutcome {
    let named = serde_json::from_slice::<CancelAnswer>(&answer.body)
        .ok()
        .and_then(|a| a.status);
    match (named.as_deref(), answer.status.as_u16()) {
        (Some("CANCELLATION_REQUESTED" | "OK"), _) => CancelOutcome::CancellationRequested,
        (Some("ALREADY_COMPLETED"), _) => CancelOutcome::AlreadyCompleted,
        (Some("NOT_FOUND"), _) => CancelOutcome::NotFound,
        (_, 200..=299) => CancelOutcome::CancellationRequested,
        (_, 400) => CancelOutcome::AlreadyCompleted,
        (_, 404) => CancelOutcome::NotFound,
        _ => CancelOutcome::Failed,
    }
}

pub(super) fn cancel_reason(e: &JobError) -> CancelReason {
    match e {
        JobError::Stopped(Stop::Cancelled) => CancelReason::Cancelled,
        JobError::Stopped(Stop::Deadline) => CancelReason::Deadline,
        JobError::Failed(_) => CancelReason::Error,
    }
}
