//! The fake's shared state: config, jobs, recorded calls, counts, pending
//! faults and prebuilt answers. One per running fake; handlers and the
//! [`crate::FakeFal`] handle share it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use actix_web::HttpRequest;
use bytes::Bytes;

use crate::control::{Call, FakeConfig, Fault, FaultAction, Op};
use crate::wire::{AspectRatio, ImagenInput, OutputFormat, QueueStatus};

/// A lock that survives a panicked holder (a failed test's handler).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One submitted job.
pub(crate) struct Job {
    pub input: ImagenInput,
    pub submitted: Instant,
    pub cancelled: bool,
    /// Set when a COMPLETED-with-error fault was served for this job.
    pub failed: Option<(String, String)>,
}

/// Result bodies without faults are built once per shape:
/// (ratio, format, full size, noise, image count, sync mode).
pub(crate) type AnswerKey = (AspectRatio, OutputFormat, bool, u8, u8, bool);

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
    /// `queue_ms`, then running for `run_ms`; cancelled jobs are done.
    pub(crate) fn job_status(&self, id: &str) -> Option<(QueueStatus, bool)> {
        let (queue_ms, run_ms) = {
            let cfg = lock(&self.config);
            (cfg.queue_ms, cfg.run_ms)
        };
        let jobs = lock(&self.jobs);
        let job = jobs.get(id)?;
        let elapsed = job.submitted.elapsed().as_millis() as u64;
        Some(if job.cancelled || elapsed >= queue_ms + run_ms {
            (QueueStatus::Completed, true)
        } else if elapsed >= queue_ms {
            (QueueStatus::InProgress, false)
        } else {
            (QueueStatus::InQueue, false)
        })
    }

    /// Forget faults, calls, jobs and counts.
    pub(crate) fn reset(&self) {
        lock(&self.faults).clear();
        lock(&self.calls).clear();
        lock(&self.jobs).clear();
        for count in &self.counts {
            count.store(0, Ordering::SeqCst);
        }
    }
}
