//! The first-level cache: finished generations in this process's memory
//! (moka), bounded in bytes, each entry living `ttl` from when its images
//! were produced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::notification::RemovalCause;

use super::key::CacheKey;
use crate::domain::Generation;
use crate::metrics::{EvictionCause, Metrics};

/// Memory one cache entry costs beyond its image bytes: moka's node and
/// queues, the key, the `Arc`'d `Generation`, its `Vec` and `String`, and the
/// allocator's headers. Measured with scripts/soak: about 0.8 KiB per entry
/// holding a URL; a 128-byte guess let a cache of `url` answers use four
/// times its `cache.max_bytes` of memory.
pub const ENTRY_OVERHEAD_BYTES: usize = 1024;

/// Memory an entry holds, for the cache's weigher.
pub fn weight(g: &Generation) -> u32 {
    let images: usize = g.images.iter().map(|i| i.held_bytes()).sum();
    u32::try_from(images + g.size.len() + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
}

/// The answer cache.
pub struct MemoryCache {
    cache: Cache<CacheKey, Arc<Generation>>,
}

impl MemoryCache {
    pub fn new(max_bytes: u64, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        metrics
            .cache_capacity
            .set(i64::try_from(max_bytes).unwrap_or(i64::MAX));
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<Generation>| weight(v))
            .expire_after(EntryLife { ttl })
            .eviction_listener(move |_k, _v, cause| {
                let cause = match cause {
                    RemovalCause::Size => EvictionCause::Size,
                    RemovalCause::Expired => EvictionCause::Expired,
                    RemovalCause::Replaced => EvictionCause::Replaced,
                    RemovalCause::Explicit => EvictionCause::Explicit,
                };
                metrics
                    .cache_evictions
                    .with_label_values(&[cause.as_str()])
                    .inc();
            })
            .build();
        Self { cache }
    }

    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Generation>> {
        self.cache.get(key).await
    }

    pub async fn insert(&self, key: CacheKey, generation: Arc<Generation>) {
        self.cache.insert(key, generation).await;
    }

    /// (entries, bytes), after applying pending evictions.
    pub async fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks().await;
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

/// An entry lives `ttl` from when its images were produced, not from when it
/// entered this cache: an answer read from the shared (Redis) cache keeps
/// the age it already has, so no copy outlives the TTL anywhere.
struct EntryLife {
    ttl: Duration,
}

impl EntryLife {
    fn remaining(&self, g: &Generation) -> Option<Duration> {
        Some(self.ttl.saturating_sub(g.produced_at.elapsed()))
    }
}

impl moka::Expiry<CacheKey, Arc<Generation>> for EntryLife {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Generation>,
        _created_at: Instant,
    ) -> Option<Duration> {
        self.remaining(value)
    }

    /// A refreshed entry (`no-cache`) starts a new life.
    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Generation>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.remaining(value)
    }
}
