//! The memory budget (`limits.max_memory_bytes`): one bound on the bytes
//! the gateway holds for work in flight, beside the caches' own bounds.
//!
//! Every holder reserves its room before the memory exists, and new work
//! that finds no room is shed at once with a 429 and `retry-after` (nothing
//! ever waits for room, so holders cannot wait on each other):
//! - a request body being read: its declared length, or the largest body
//!   accepted when it declares none;
//! - a generation request: the most its plan can hold while it is made
//!   (fal's answers being read, each capped at the endpoint's largest
//!   legitimate answer for the job) and answered (the delivered images);
//!   cut down to the real answer once it is known, and held until the last
//!   byte is written or the connection closes.
//!
//! The budget is a tokio semaphore counting KiB.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The semaphore counts this many bytes per permit.
const UNIT: u64 = 1024;

/// Seconds a shed client is told to wait before retrying.
const RETRY_AFTER_SECONDS: u64 = 1;

pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total: u32,
    metrics: Arc<Metrics>,
}

/// Memory held for one piece of work; given back when dropped.
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    budget: Arc<MemoryBudget>,
}

impl MemoryBudget {
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Arc<Self> {
        let units = (max_bytes / UNIT).clamp(1, u64::from(u32::MAX));
        let total = u32::try_from(units).unwrap_or(u32::MAX);
        metrics
            .memory_limit
            .set(i64::try_from(u64::from(total) * UNIT).unwrap_or(i64::MAX));
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
            metrics,
        })
    }

    /// Permits for `bytes`; more than the whole budget is the whole budget
    /// (such work runs alone).
    fn units(&self, bytes: u64) -> u32 {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(self.total));
        u32::try_from(units).unwrap_or(self.total)
    }

    /// Reserve `bytes` now, or shed the work: a 429 with `retry-after`.
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation, ApiError> {
        match self
            .permits
            .clone()
            .try_acquire_many_owned(self.units(bytes))
        {
            Ok(permit) => Ok(self.held(permit)),
            Err(_) => {
                self.metrics.load_shed.inc();
                self.metrics.memory_shed.inc();
                Err(ApiError::Overloaded {
                    retry_after_seconds: RETRY_AFTER_SECONDS,
                })
            }
        }
    }

    fn held(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Reservation {
        self.update_gauge();
        Reservation {
            permit: Some(permit),
            budget: self.clone(),
        }
    }

    fn update_gauge(&self) {
        let free = self.permits.available_permits() as u64;
        let used = u64::from(self.total).saturating_sub(free) * UNIT;
        self.metrics
            .memory_reserved
            .set(i64::try_from(used).unwrap_or(i64::MAX));
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> u64 {
        (u64::from(self.total) - self.permits.available_permits() as u64) * UNIT
    }

    /// The whole budget, in bytes.
    pub fn limit(&self) -> u64 {
        u64::from(self.total) * UNIT
    }
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.permit.as_ref().map_or(0, |p| p.num_permits() as u64) * UNIT
    }

    /// Keep only `bytes` (never less than one unit); the rest goes back to
    /// the budget at once.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = self.budget.units(bytes) as usize;
        if let Some(permit) = &mut self.permit {
            let held = permit.num_permits();
            if keep < held {
                drop(permit.split(held - keep));
                self.budget.update_gauge();
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.budget.update_gauge();
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({} bytes)", self.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[tokio::test]
    async fn new_work_past_the_budget_is_shed_with_a_429_and_room_comes_back() {
        let metrics = Arc::new(Metrics::new());
        let budget = MemoryBudget::new(10 * MIB, metrics.clone());
        let a = budget.try_reserve(6 * MIB).unwrap();
        let mut b = budget.try_reserve(4 * MIB).unwrap();
        assert_eq!(budget.reserved(), 10 * MIB);
        assert_eq!(metrics.memory_reserved.get(), (10 * MIB) as i64);
        let shed = budget.try_reserve(MIB).unwrap_err();
        assert!(matches!(shed, ApiError::Overloaded { .. }), "{shed:?}");
        assert_eq!(actix_web::ResponseError::status_code(&shed).as_u16(), 429);
        assert_eq!(metrics.memory_shed.get(), 1);
        // An answer smaller than its reservation gives the rest back.
        b.shrink_to(MIB);
        assert_eq!(b.bytes(), MIB);
        let c = budget.try_reserve(3 * MIB).unwrap();
        drop(a);
        assert_eq!(budget.reserved(), 4 * MIB);
        drop((b, c));
        assert_eq!(budget.reserved(), 0);
        // More than the whole budget is the whole budget: it runs alone.
        let all = budget.try_reserve(100 * MIB).unwrap();
        assert_eq!(all.bytes(), 10 * MIB);
    }
}
