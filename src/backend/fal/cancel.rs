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
        self.cancels.spawn_on(
            async move {
                let ctx = JobContext {
                    deadline: Instant::now() + CANCEL_BUDGET,
                    cancel: CancellationToken::new(),
                    timeout_seconds: CANCEL_BUDGET.as_secs(),
                    account: None,
                    room: None,
                };
                let policy = CallPolicy {
                    max_retries: Some(CANCEL_RETRIES),
                    ..CallPolicy::IDEMPOTENT
                };
                let build = |u: &str| {
                    upstream
                        .http()
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
            &self.background,
        )
    }
}

/// Armed while a fal job the gateway submitted is neither done nor given
/// up: dropped armed (the task watching the job was dropped, as when an
/// HTTP worker's runtime ends at shutdown), it asks fal to cancel the job.
pub(super) struct CancelOnDrop<'a> {
    shared: &'a Shared,
    urls: Option<&'a JobUrls>,
}

impl<'a> CancelOnDrop<'a> {
    pub(super) fn arm(shared: &'a Shared, urls: &'a JobUrls) -> Self {
        Self {
            shared,
            urls: Some(urls),
        }
    }

    /// The job is done, or its watcher cancels it itself.
    pub(super) fn disarm(mut self) {
        self.urls = None;
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(urls) = self.urls.take() {
            tracing::info!(
                request_id = urls.id.as_str(),
                "the task watching a fal job was dropped; cancelling the job"
            );
            drop(self.shared.spawn_cancel(urls, CancelReason::Cancelled));
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use fake_fal::{FakeConfig, FakeFal, Op};
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::super::FalBackend;
    use super::super::transport::Upstream;
    use crate::backend::{ImageBackend, JobContext};
    use crate::config::{FalSettings, Secret};
    use crate::metrics::Metrics;

    /// The task watching a fal job is dropped, as an HTTP worker's runtime
    /// drops its tasks when it ends at shutdown: the job is cancelled at fal
    /// from the background runtime, and the tracker waits for that cancel.
    #[actix_web::test]
    async fn a_job_whose_watcher_is_dropped_is_cancelled_at_fal() {
        crate::install_crypto_provider();
        let fal = FakeFal::start(
            "127.0.0.1:0",
            FakeConfig {
                queue_ms: 60_000,
                ..FakeConfig::default()
            },
            1,
        )
        .unwrap();
        let settings = FalSettings {
            queue_url: fal.queue_url(),
            run_url: fal.run_url(),
            ..FalSettings::default()
        };
        let background = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tasks = TaskTracker::new();
        let upstream = Arc::new(Upstream::new(&settings, Arc::new(Metrics::new())).unwrap());
        let backend = FalBackend::new(
            &settings,
            &Secret::new("fal-key"),
            upstream,
            tasks.clone(),
            background.handle().clone(),
        )
        .unwrap();
        let job = crate::openai::validate::plan_json(r#"{"prompt":"dropped while queued"}"#)
            .unwrap()
            .jobs()
            .remove(0);
        // The job runs as a task on a runtime of its own, on a thread of its
        // own (as on an HTTP worker), until fal is asked for its status; then
        // that runtime ends, dropping the task.
        let drop_now = CancellationToken::new();
        let backend = Arc::new(backend);
        let worker = std::thread::spawn({
            let drop_now = drop_now.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.spawn(async move {
                    let ctx = JobContext {
                        deadline: Instant::now() + Duration::from_secs(60),
                        cancel: CancellationToken::new(),
                        timeout_seconds: 60,
                        account: None,
                        room: None,
                    };
                    let r = backend.generate(&job, &ctx).await;
                    panic!("the job ended: {:?}", r.err());
                });
                runtime.block_on(drop_now.cancelled());
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while fal.count(Op::Stream) + fal.count(Op::Status) == 0 {
            assert!(
                Instant::now() < deadline,
                "fal was never asked for the job's status"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop_now.cancel();
        while !worker.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worker.join().unwrap();
        assert_eq!(fal.count(Op::Submit), 1);
        tasks.close();
        let waited = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;
        assert!(waited.is_ok(), "the cancel never finished");
        assert_eq!(
            fal.count(Op::Cancel),
            1,
            "fal was asked to cancel the job once"
        );
        background.shutdown_background();
    }
}
