//! A memory miss when replicas share a Redis cache: the answer from Redis,
//! or from another replica's identical generation (waiting for its entry),
//! or from a generation here under the fleet-wide lock, written to Redis
//! before the lock is released so waiting replicas find it.

use tokio::time::Instant;

use super::flights::{Flight, Source};
use super::{GenerationService, Tab};
use crate::cache::CacheKey;
use crate::cache::redis::{Lock, LockGuard, RedisCache, Wait};
use crate::domain::{Generation, GenerationPlan};
use crate::error::ApiError;
use crate::spend::Payer;

/// `store`: the answer will be kept (not `no-store`), so it is worth waiting
/// for another replica's and worth writing to Redis. What a generation made
/// here (for `payer`) cost goes on `tab`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn fill(
    service: &GenerationService,
    l2: &RedisCache,
    key: CacheKey,
    store: bool,
    plan: &GenerationPlan,
    flight: &Flight,
    deadline: Instant,
    payer: &Payer,
    tab: &Tab,
) -> Result<Generation, ApiError> {
    let files = service.files();
    // An answer may come from Redis at any moment: the whole room from the
    // start (a flight without Redis grows to it when its answer is due).
    if let Some(room) = &flight.room {
        tokio::time::timeout_at(deadline, room.make_whole())
            .await
            .map_err(|_| ApiError::memory_deadline(service.request_timeout.as_secs()))?;
    }
    if let Some(g) = l2.lookup(&key, files).await {
        flight.set_source(Source::Shared);
        return Ok(g);
    }
    let lock = if store {
        match take_lock_or_wait(service, l2, key, flight, deadline).await? {
            Taken::Answer(g) => return Ok(g),
            Taken::Lock(guard) => guard,
        }
    } else {
        None
    };
    flight.set_source(Source::Generate);
    let produced = service.produce(plan, flight, deadline, payer, tab);
    let result = match &lock {
        Some(guard) => tokio::select! {
            r = produced => r,
            never = l2.keep(guard) => match never {},
        },
        None => produced.await,
    };
    match (&result, &lock) {
        (Ok(generation), _) if store => l2.store(&key, generation, files).await,
        // Replicas waiting on this lock answer the same error rather than
        // each running the generation again.
        (Err(e), Some(_)) => l2.share_failure(&key, e).await,
        _ => {}
    }
    if let Some(guard) = lock {
        l2.release(guard).await;
    }
    result
}

enum Taken {
    /// Found in Redis, or produced by another replica.
    Answer(Generation),
    /// Generate here: under the lock, or without one when Redis cannot
    /// tell or the wait ran out.
    Lock(Option<LockGuard>),
}

async fn take_lock_or_wait(
    service: &GenerationService,
    l2: &RedisCache,
    key: CacheKey,
    flight: &Flight,
    deadline: Instant,
) -> Result<Taken, ApiError> {
    let files = service.files();
    let wait_until = deadline.min(Instant::now() + l2.wait_timeout());
    loop {
        match l2.try_lock(&key).await {
            Lock::Acquired(guard) => {
                // It may have been written between the lookup and the lock.
                if let Some(g) = l2.recheck(&key, files).await {
                    l2.release(guard).await;
                    flight.set_source(Source::Shared);
                    return Ok(Taken::Answer(g));
                }
                return Ok(Taken::Lock(Some(guard)));
            }
            Lock::Unavailable => return Ok(Taken::Lock(None)),
            Lock::Held => {
                flight.set_source(Source::Remote);
                match l2.wait_for(&key, wait_until, &flight.token, files).await {
                    Wait::Ready(g) => return Ok(Taken::Answer(g)),
                    Wait::Failed(e) => return Err(e),
                    // The owner left without an answer: take over.
                    Wait::Free => continue,
                    Wait::Cancelled if service.is_stopping() => return Err(ApiError::ShuttingDown),
                    Wait::Cancelled => return Err(ApiError::ClientClosedRequest),
                    Wait::TimedOut | Wait::Unavailable => return Ok(Taken::Lock(None)),
                }
            }
        }
    }
}
