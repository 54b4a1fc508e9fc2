//! The fake's shared state: config, jobs, recorded calls, counts, pending
//! faults and prebuilt answers. One per running fake; handlers and the
//! [`crate::FakeFal`] handle share it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use bytes::Bytes;

use crate::control::{Call, FakeConfig, Fault, FaultAction, Op};
use crate::endpoints::EndpointMode;
use crate::models::Schema;
use crate::wire::{ModelInput, OutputFormat, QueueStatus};

/// A lock that survives a panicked holder (a failed test's handler).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One submitted job.
pub(crate) struct Job {
    pub input: ModelInput,
    /// The endpoint's schema, for the shape of its output.
    pub schema: Schema,
    /// Time it stays queued when its endpoint is slow (else the config's).
    pub queue_ms: Option<u64>,
    pub submitted: Instant,
    pub cancelled: bool,
    /// Set when the job failed (a COMPLETED-with-error fault, or its start
    /// timeout passed while it was queued).
    pub failed: Option<Failure>,
    /// The `X-Fal-Request-Timeout` it was submitted with: fal drops a job
    /// still queued when it passes.
    pub start_timeout: Option<Duration>,
}

/// How a job failed: its status's `error`/`error_type`, and what its result
/// answers instead of the output.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub error: String,
    pub error_type: String,
    pub result_status: u16,
    pub result_headers: Vec<(&'static str, String)>,
    pub result_body: String,
}

/// Result bodies without faults are built once per shape: (endpoint
/// schema, width, height, format, full size, noise, image count, sync mode,
/// reported seed).
pub(crate) type AnswerKey = (
    Schema,
    u32,
    u32,
    OutputFormat,
    bool,
    u8,
    u8,
    bool,
    Option<u64>,
);

#[derive(Default)]
pub(crate) struct State {
    pub config: Mutex<FakeConfig>,
    pub jobs: Mutex<HashMap<String, Job>>,
    pub calls: Mutex<Vec<Call>>,
    counts: [AtomicU64; Op::ALL.len()],
    pub faults: Mutex<VecDeque<Fault>>,
    pub next_id: AtomicU64,
    /// The port the fake listens on, for the file URLs of its answers.
    pub port: AtomicU16,
    pub answers: Mutex<HashMap<AnswerKey, Bytes>>,
    /// Per-endpoint behaviour (`crate::endpoints`).
    pub endpoints: Mutex<HashMap<String, EndpointMode>>,
    /// Woken when a job's status may change other than by the clock (a
    /// cancel, a failure, a reset, a new config): status streams sleep until
    /// the next scheduled change or this, instead of polling.
    pub changed: tokio::sync::Notify,
}

impl State {
    pub(crate) fn count(&self, op: Op) -> u64 {
        self.counts[op as usize].load(Ordering::SeqCst)
    }

    pub(crate) fn cancelled_jobs(&self) -> usize {
        lock(&self.jobs).values().filter(|j| j.cancelled).count()
    }

    /// Count a call and, unless `record` is off, keep it.
    pub(crate) fn record(&self, req: &HttpRequest, op: Op, body: Option<serde_json::Value>) {
        self.counts[op as usize].fetch_add(1, Ordering::SeqCst);
        if lock(&self.config).record {
            lock(&self.calls).push(Call {
                op,
                method: req.method().to_string(),
                path: req.path().to_owned(),
                authorization: req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                query: req.query_string().to_owned(),
                fal_headers: req
                    .headers()
                    .iter()
                    .filter(|(k, _)| {
                        k.as_str().starts_with("x-fal-") || k.as_str().starts_with("x-app-fal-")
                    })
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body,
            });
        }
    }

    /// The next fault for `op`, if any (consuming one use of it).
    pub(crate) fn take_fault(&self, op: Op) -> Option<FaultAction> {
        let mut faults = lock(&self.faults);
        let i = faults.iter().position(|f| f.op == op)?;
        let f = &mut faults[i];
        let action = f.action.clone();
        if f.times == 1 {
            faults.remove(i);
        } else if f.times > 1 {
            f.times -= 1;
        }
        Some(action)
    }

    /// A job's status now and whether it is finished: queued for
    /// `queue_ms`, then running for `run_ms`; cancelled and failed jobs are
    /// done. A job whose start timeout passes while it is queued fails with
    /// fal's 504 `X-Fal-Request-Timeout-Type: user`.
    pub(crate) fn job_status(&self, id: &str) -> Option<(QueueStatus, bool)> {
        self.job_status_next(id)
            .map(|(status, done, _)| (status, done))
    }

    /// [`Self::job_status`], and how long until the clock alone changes it
    /// (`None`: finished).
    pub(crate) fn job_status_next(
        &self,
        id: &str,
    ) -> Option<(QueueStatus, bool, Option<Duration>)> {
        let (queue_ms, run_ms) = {
            let cfg = lock(&self.config);
            (cfg.queue_ms, cfg.run_ms)
        };
        let mut jobs = lock(&self.jobs);
        let job = jobs.get_mut(id)?;
        let queue_ms = job.queue_ms.unwrap_or(queue_ms);
        let elapsed = job.submitted.elapsed().as_millis() as u64;
        if let Some(limit) = job.start_timeout
            && job.failed.is_none()
            && !job.cancelled
            && limit.as_millis() < u128::from(queue_ms)
            && u128::from(elapsed) >= limit.as_millis()
        {
            job.failed = Some(Failure {
                error: "Request timed out before processing started".into(),
                error_type: "request_timeout".into(),
                result_status: 504,
                result_headers: vec![
                    ("x-fal-request-timeout-type", "user".into()),
                    ("x-fal-error-type", "request_timeout".into()),
                ],
                result_body: r#"{"detail":"Request timed out before processing started","error_type":"request_timeout"}"#.into(),
            });
        }
        let until =
            |ms: u64| Some(Duration::from_millis(ms).saturating_sub(job.submitted.elapsed()));
        Some(
            if job.cancelled || job.failed.is_some() || elapsed >= queue_ms + run_ms {
                (QueueStatus::Completed, true, None)
            } else if elapsed >= queue_ms {
                (QueueStatus::InProgress, false, until(queue_ms + run_ms))
            } else {
                let timeout = job.start_timeout.map_or(u64::MAX, |t| {
                    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
                });
                (QueueStatus::InQueue, false, until(queue_ms.min(timeout)))
            },
        )
    }

    /// Wake the status streams: a job's status may have changed.
    pub(crate) fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// Forget faults, calls, jobs and counts.
    pub(crate) fn reset(&self) {
        lock(&self.faults).clear();
        lock(&self.calls).clear();
        lock(&self.jobs).clear();
        lock(&self.endpoints).clear();
        for count in &self.counts {
            count.store(0, Ordering::SeqCst);
        }
        self.changed();
    }
}
