//! The cap on concurrent upstream work, with a bounded wait queue: past it,
//! new work is shed at once with a 429 rather than queued without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{JobContext, Stop};
use crate::error::ApiError;
use crate::metrics::Metrics;

pub struct JobLimiter {
    slots: Arc<Semaphore>,
    total: u32,
    queued: AtomicUsize,
    max_queued: usize,
    metrics: Arc<Metrics>,
}

impl JobLimiter {
    pub fn new(max_concurrent: usize, max_queued: usize, metrics: Arc<Metrics>) -> Self {
        let total = u32::try_from(max_concurrent.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        Self {
            slots: Arc::new(Semaphore::new(total as usize)),
            total,
            queued: AtomicUsize::new(0),
            max_queued,
            metrics,
        }
    }

    /// Slots for `jobs` jobs: at once if free, after a wait if the queue has
    /// room, or a 429 straight away if it has none.
    pub async fn acquire(
        &self,
        jobs: u32,
        ctx: &JobContext,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        let n = jobs.clamp(1, self.total);
        if let Ok(p) = self.slots.clone().try_acquire_many_owned(n) {
            return Ok(p);
        }
        let position = self.queued.fetch_add(1, Ordering::AcqRel);
        if position >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.metrics.load_shed.inc();
            return Err(ApiError::Overloaded {
                retry_after_seconds: 1,
            });
        }
        self.metrics.jobs_queued.inc();
        let outcome = match ctx.race(self.slots.clone().acquire_many_owned(n)).await {
            Ok(permit) => permit.map_err(|_| ApiError::ShuttingDown),
            Err(stop @ Stop::Deadline) => Err(ctx.error(stop)),
            Err(Stop::Cancelled) => Err(ApiError::ShuttingDown),
        };
        self.metrics.jobs_queued.dec();
        self.queued.fetch_sub(1, Ordering::AcqRel);
        outcome
    }
}
