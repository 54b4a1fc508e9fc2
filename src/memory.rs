//! The memory budget (`limits.max_memory_bytes`): one bound on the bytes
//! the gateway holds for work in flight, beside the caches' own bounds.
//!
//! Every holder reserves its room before the memory exists, and new work
//! that finds no room is shed at once with a 429 and `retry-after`:
//! - a request body being read: its declared length, or the largest body
//!   accepted when it declares none;
//! - a generation request ([`Room`]): while its jobs wait upstream, a small
//!   room (their submits, status events, the prompt); from the moment the
//!   first of its answers is to be read, the most its plan can hold while it
//!   is made (fal's answers being read, each capped at the endpoint's
//!   largest legitimate answer for the job) and answered (the delivered
//!   images); cut down to the real answer once it is known, and held until
//!   the last byte is written or the connection closes.
//!
//! Growing to the whole room is the one wait for memory: the jobs are paid
//! for by then, so shedding would throw their images away. A request waits
//! holding nothing (its small room given back first) and then takes its
//! whole room at once, so a waiter never holds what another waits for, and
//! every holder of room is reading or writing an answer, which ends (the
//! client write timeout bounds a slow reader). Waiters take turns in order
//! of arrival; the one whose turn it is takes nothing until its whole fits,
//! so new work that fits meanwhile still starts (what it may need later is
//! bounded by the overcommit).
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
    /// Whole rooms promised to generations whose jobs wait upstream, in
    /// bytes: at most `promise_limit` (`limits.memory_overcommit` times the
    /// budget), so a burst cannot start more paid jobs than their answers
    /// can reasonably take turns reading.
    promised: std::sync::atomic::AtomicU64,
    promise_limit: u64,
    /// Told whenever room is given back.
    freed: tokio::sync::Notify,
    /// Whole rooms are waited for one at a time, in order.
    turns: tokio::sync::Mutex<()>,
}

/// Memory held for one piece of work; given back when dropped.
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    budget: Arc<MemoryBudget>,
}

impl MemoryBudget {
    /// A budget of `max_bytes`, whose generations waiting upstream may be
    /// promised `overcommit` times it for their answers.
    pub fn new(max_bytes: u64, overcommit: u32, metrics: Arc<Metrics>) -> Arc<Self> {
        let units = (max_bytes / UNIT).clamp(1, u64::from(u32::MAX));
        let total = u32::try_from(units).unwrap_or(u32::MAX);
        metrics
            .memory_limit
            .set(i64::try_from(u64::from(total) * UNIT).unwrap_or(i64::MAX));
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
            metrics,
            promised: std::sync::atomic::AtomicU64::new(0),
            promise_limit: u64::from(total) * UNIT * u64::from(overcommit.max(1)),
            freed: tokio::sync::Notify::new(),
            turns: tokio::sync::Mutex::new(()),
        })
    }

    fn shed(&self) -> ApiError {
        self.metrics.load_shed.inc();
        self.metrics.memory_shed.inc();
        ApiError::Overloaded {
            retry_after_seconds: RETRY_AFTER_SECONDS,
        }
    }

    /// Promise `bytes` of whole room, or shed the work.
    fn promise(&self, bytes: u64) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering;
        self.promised
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |promised| {
                let next = promised + bytes;
                (next <= self.promise_limit).then_some(next)
            })
            .map(drop)
            .map_err(|_| self.shed())
    }

    fn unpromise(&self, bytes: u64) {
        self.promised
            .fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
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
            Err(_) => Err(self.shed()),
        }
    }

    /// Reserve `bytes`, waiting (in turn) until they fit. Nothing is taken
    /// before they all fit (the semaphore's own queue would keep the free
    /// room for the waiter and shed new work that fits).
    async fn reserve_waiting(self: &Arc<Self>, bytes: u64) -> Reservation {
        let units = self.units(bytes);
        let _turn = self.turns.lock().await;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Ok(permit) = self.permits.clone().try_acquire_many_owned(units) {
                return self.held(permit);
            }
            freed.await;
        }
    }

    /// Room was given back: the waiter whose turn it is looks again.
    fn given_back(&self) {
        self.update_gauge();
        self.freed.notify_waiters();
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
                self.budget.given_back();
            }
        }
    }
}

/// The memory of one generation: `small` while its jobs wait upstream,
/// `whole` once its first answer is to be read ([`Room::make_whole`]), cut
/// to the real answer once known. Shared by the request that started the
/// generation (which holds it until its answer is written) and the flight
/// making it (so a leader that hung up does not take the room of answers
/// still being read).
pub struct Room {
    budget: Arc<MemoryBudget>,
    whole: u64,
    /// Bytes of `whole` promised while it is not held (0 once it is).
    promised: std::sync::atomic::AtomicU64,
    held: std::sync::Mutex<Held>,
    /// Held across the wait for the whole room, so jobs of one plan that
    /// finish together wait once.
    growing: tokio::sync::Mutex<()>,
}

struct Held {
    reservation: Option<Reservation>,
    whole: bool,
}

impl Room {
    /// Reserve `small` bytes now and promise `whole` for later (or shed
    /// the work with a 429: no room, or more promised than the budget's
    /// overcommit allows); `small >= whole` takes `whole` now.
    pub fn try_new(budget: &Arc<MemoryBudget>, small: u64, whole: u64) -> Result<Self, ApiError> {
        let now_whole = small >= whole;
        // Promised as it will be held: never more than the whole budget.
        let promise = if now_whole {
            0
        } else {
            u64::from(budget.units(whole)) * UNIT
        };
        budget.promise(promise)?;
        let reservation = match budget.try_reserve(small.min(whole)) {
            Ok(r) => r,
            Err(shed) => {
                budget.unpromise(promise);
                return Err(shed);
            }
        };
        Ok(Self {
            budget: budget.clone(),
            whole,
            promised: std::sync::atomic::AtomicU64::new(promise),
            held: std::sync::Mutex::new(Held {
                reservation: Some(reservation),
                whole: now_whole,
            }),
            growing: tokio::sync::Mutex::new(()),
        })
    }

    /// The promise is kept (or is no longer needed).
    fn settle_promise(&self) {
        let promised = self.promised.swap(0, std::sync::atomic::Ordering::AcqRel);
        if promised > 0 {
            self.budget.unpromise(promised);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hold the whole room: give back the small one, then wait (in order)
    /// until the whole fits. Returns at once when it is held already.
    pub async fn make_whole(&self) {
        let _one_at_a_time = self.growing.lock().await;
        let small = {
            let mut held = self.lock();
            if held.whole {
                return;
            }
            held.reservation.take()
        };
        drop(small);
        let whole = self.budget.reserve_waiting(self.whole).await;
        let mut held = self.lock();
        held.reservation = Some(whole);
        held.whole = true;
        drop(held);
        self.settle_promise();
    }

    /// Keep only `bytes` of the room (see [`Reservation::shrink_to`]).
    pub fn shrink_to(&self, bytes: u64) {
        if let Some(r) = &mut self.lock().reservation {
            r.shrink_to(bytes);
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.lock()
            .reservation
            .as_ref()
            .map_or(0, Reservation::bytes)
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.settle_promise();
    }
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Room({} of {} bytes)", self.bytes(), self.whole)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.budget.given_back();
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
        let budget = MemoryBudget::new(10 * MIB, 4, metrics.clone());
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

    #[tokio::test]
    async fn a_room_is_small_while_its_jobs_wait_and_whole_when_its_answer_is_due() {
        let metrics = Arc::new(Metrics::new());
        let budget = MemoryBudget::new(10 * MIB, 4, metrics.clone());
        // Two generations whose answers (6 MiB each) do not fit together
        // both start: they hold 1 MiB each while their jobs run.
        let a = Room::try_new(&budget, MIB, 6 * MIB).unwrap();
        let b = Arc::new(Room::try_new(&budget, MIB, 6 * MIB).unwrap());
        assert_eq!(budget.reserved(), 2 * MIB);
        a.make_whole().await;
        a.make_whole().await;
        assert_eq!((a.bytes(), budget.reserved()), (6 * MIB, 7 * MIB));
        // b's answer waits for room, holding nothing meanwhile...
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.make_whole().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "6 MiB do not fit beside a's 6");
        assert_eq!((b.bytes(), budget.reserved()), (0, 6 * MIB));
        // ...so new work that fits still starts...
        let c = Room::try_new(&budget, MIB, 2 * MIB).unwrap();
        // ...and a third answer waits behind b's, even when it would fit.
        let c_waits = tokio::spawn({
            let c = Arc::new(c);
            async move {
                c.make_whole().await;
                c
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!c_waits.is_finished(), "waiters take turns");
        // a's real answer is smaller than its worst case: b gets its room,
        // then c.
        a.shrink_to(MIB);
        waiting.await.unwrap();
        let c = c_waits.await.unwrap();
        assert_eq!((b.bytes(), c.bytes()), (6 * MIB, 2 * MIB));
        assert_eq!(budget.reserved(), 9 * MIB);
        drop((a, b, c));
        assert_eq!(budget.reserved(), 0);
        assert_eq!(metrics.memory_reserved.get(), 0);
        // A room whose small part is its whole holds it from the start
        // (and promises nothing).
        let url = Room::try_new(&budget, 24 * 1024, 24 * 1024).unwrap();
        url.make_whole().await;
        assert_eq!(url.bytes(), 24 * 1024);
    }

    #[tokio::test]
    async fn the_answers_promised_to_waiting_jobs_are_bounded_by_the_overcommit() {
        let metrics = Arc::new(Metrics::new());
        // 10 MiB, twice over: 20 MiB of answers may be promised.
        let budget = MemoryBudget::new(10 * MIB, 2, metrics.clone());
        let rooms: Vec<_> = (0..3)
            .map(|_| Room::try_new(&budget, MIB, 6 * MIB).unwrap())
            .collect();
        let over = Room::try_new(&budget, MIB, 6 * MIB).unwrap_err();
        assert!(matches!(over, ApiError::Overloaded { .. }), "{over:?}");
        assert_eq!(metrics.memory_shed.get(), 1);
        assert_eq!(budget.reserved(), 3 * MIB, "the shed one holds nothing");
        // A promise is kept once the room is whole, or let go with it.
        rooms[0].make_whole().await;
        let fourth = Room::try_new(&budget, MIB, 6 * MIB).unwrap();
        drop(rooms);
        let fifth = Room::try_new(&budget, MIB, 6 * MIB).unwrap();
        let sixth = Room::try_new(&budget, MIB, 6 * MIB).unwrap();
        assert!(Room::try_new(&budget, MIB, 6 * MIB).is_err());
        drop((fourth, fifth, sixth));
        assert_eq!(budget.reserved(), 0);
        // A plan larger than the whole budget is promised as the whole
        // budget: it can always start alone.
        let _alone = Room::try_new(&budget, MIB, 100 * MIB).unwrap();
    }
}
