//! Identical requests generated once: a byte-bounded moka cache of finished
//! generations, and single-flight so concurrent identical misses share one
//! upstream job.
//!
//! A flight runs as its own task. Each waiting client holds a [`Waiter`];
//! when the last one goes away before the answer, the flight's token is
//! cancelled and the backend cancels the fal job. Errors are never cached,
//! and every waiter receives the flight's error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;
use moka::notification::RemovalCause;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::mapping::{CacheKey, OutputFormat, ResponseFormat};
use crate::metrics::Metrics;
use crate::settings::BackendKind;

/// A finished generation: what a response (JSON or stream) is rendered from.
#[derive(Debug)]
pub struct Generation {
    /// Unix seconds, OpenAI's `created`.
    pub created: i64,
    /// When it was produced, for the `age` header of cache hits.
    pub produced_at: Instant,
    /// The delivered `WxH`.
    pub size: String,
    pub output_format: OutputFormat,
    pub response_format: ResponseFormat,
    /// Per image: standard base64 (`b64_json`) or an absolute URL (`url`).
    pub images: Vec<Bytes>,
    pub backend: BackendKind,
}

/// Memory one cache entry costs beyond its image bytes: moka's node and
/// queues, the key, the `Arc`'d `Generation`, its `Vec` and `String`, and the
/// allocator's headers. Measured with scripts/soak: about 0.8 KiB per entry
/// holding a URL; a 128-byte guess let a cache of `url` answers use four
/// times its `cache.max_bytes` of memory.
pub const ENTRY_OVERHEAD_BYTES: usize = 1024;

impl Generation {
    /// Memory this entry holds, for the cache's weigher.
    pub fn weight(&self) -> u32 {
        let images: usize = self.images.iter().map(Bytes::len).sum();
        u32::try_from(images + self.size.len() + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
    }
}

pub type FlightResult = Result<Arc<Generation>, ApiError>;

/// One upstream job in progress, shared by every identical request.
pub struct Flight {
    result: watch::Sender<Option<FlightResult>>,
    waiters: AtomicUsize,
    pub token: CancellationToken,
}

impl Flight {
    pub fn new(token: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            result: watch::channel(None).0,
            waiters: AtomicUsize::new(0),
            token,
        })
    }

    /// Deliver the answer to every waiter.
    pub fn finish(&self, result: FlightResult) {
        self.result.send_replace(Some(result));
    }

    fn is_finished(&self) -> bool {
        self.result.borrow().is_some()
    }
}

/// A client waiting on a flight. Dropping it before the answer (the client
/// disconnected) may cancel the flight.
pub struct Waiter {
    flight: Arc<Flight>,
    key: Option<CacheKey>,
    flights: Arc<Flights>,
    done: bool,
}

impl Waiter {
    /// Wait for the flight's answer.
    pub async fn wait(mut self) -> FlightResult {
        let mut rx = self.flight.result.subscribe();
        let result = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(Err(ApiError::Internal)),
            // The flight task ended without an answer: it panicked.
            Err(_) => Err(ApiError::Internal),
        };
        self.done = true;
        result
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Under the map lock, so no new waiter can join a flight being cancelled.
        let mut map = self.flights.lock();
        let left = self.flight.waiters.fetch_sub(1, Ordering::AcqRel) - 1;
        if !self.done && !self.flight.is_finished() {
            self.flights.metrics.client_disconnects.inc();
            if left == 0 {
                self.flight.token.cancel();
                if let Some(key) = self.key
                    && map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &self.flight))
                {
                    map.remove(&key);
                }
            }
        }
    }
}

/// The in-flight table.
pub struct Flights {
    map: Mutex<HashMap<CacheKey, Arc<Flight>>>,
    metrics: Arc<Metrics>,
}

/// Whether a request leads a new flight or joined one.
pub enum Joined {
    Leader(Waiter),
    Follower(Waiter),
}

impl Flights {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Join the flight for `key`, or register `make()` as a new one. `None`
    /// as key makes a private flight nobody else can join (`no-cache`).
    pub fn join_or_start(
        self: &Arc<Self>,
        key: Option<CacheKey>,
        make: impl FnOnce() -> Arc<Flight>,
    ) -> (Joined, Arc<Flight>) {
        let waiter = |flight: &Arc<Flight>| {
            flight.waiters.fetch_add(1, Ordering::AcqRel);
            Waiter {
                flight: flight.clone(),
                key,
                flights: self.clone(),
                done: false,
            }
        };
        let Some(k) = key else {
            let flight = make();
            return (Joined::Leader(waiter(&flight)), flight);
        };
        let mut map = self.lock();
        // A finished flight may linger a moment before its task removes
        // it; a request arriving then must not take its (possibly
        // uncacheable, `no-store`) answer.
        if let Some(existing) = map.get(&k)
            && !existing.token.is_cancelled()
            && !existing.is_finished()
        {
            let flight = existing.clone();
            return (Joined::Follower(waiter(&flight)), flight);
        }
        let flight = make();
        map.insert(k, flight.clone());
        (Joined::Leader(waiter(&flight)), flight)
    }

    /// Forget a finished flight (after its answer went to the cache).
    pub fn remove(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The answer cache.
pub struct GenerationCache {
    cache: Cache<CacheKey, Arc<Generation>>,
}

impl GenerationCache {
    pub fn new(max_bytes: u64, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        metrics
            .cache_capacity
            .set(i64::try_from(max_bytes).unwrap_or(i64::MAX));
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<Generation>| v.weight())
            .expire_after(EntryLife { ttl })
            .eviction_listener(move |_k, _v, cause| {
                let cause = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Replaced => "replaced",
                    RemovalCause::Explicit => "explicit",
                };
                metrics.cache_evictions.with_label_values(&[cause]).inc();
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

/// What a request's `Cache-Control` (or `Pragma`) asks of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheDirectives {
    /// Do not answer from the cache (a fresh generation refreshes the entry).
    pub no_cache: bool,
    /// Do not keep this answer.
    pub no_store: bool,
}

impl CacheDirectives {
    pub fn parse(cache_control: Option<&str>, pragma: Option<&str>) -> Self {
        let mut d = CacheDirectives::default();
        for token in cache_control.unwrap_or("").split(',') {
            let token = token.trim().to_ascii_lowercase();
            match token.as_str() {
                "no-cache" | "max-age=0" => d.no_cache = true,
                "no-store" => d.no_store = true,
                _ => {}
            }
        }
        if cache_control.is_none()
            && pragma.is_some_and(|p| p.trim().eq_ignore_ascii_case("no-cache"))
        {
            d.no_cache = true;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives_parse() {
        let p = |cc: Option<&str>, pragma: Option<&str>| CacheDirectives::parse(cc, pragma);
        assert_eq!(p(None, None), CacheDirectives::default());
        assert!(p(Some("no-cache"), None).no_cache);
        assert!(p(Some("No-Store"), None).no_store);
        let both = p(Some("no-cache, no-store"), None);
        assert!(both.no_cache && both.no_store);
        assert!(p(Some("max-age=0"), None).no_cache);
        assert!(p(None, Some("no-cache")).no_cache);
        assert!(!p(Some("max-age=60"), Some("no-cache")).no_cache);
    }

    fn key(b: u8) -> CacheKey {
        CacheKey([b; 32])
    }

    #[tokio::test]
    async fn the_last_waiter_leaving_cancels_the_flight() {
        let flights = Flights::new(Arc::new(Metrics::new()));
        let (a, flight) =
            flights.join_or_start(Some(key(1)), || Flight::new(CancellationToken::new()));
        let (b, same) = flights.join_or_start(Some(key(1)), || unreachable!());
        assert!(Arc::ptr_eq(&flight, &same));
        assert!(matches!(a, Joined::Leader(_)) && matches!(b, Joined::Follower(_)));
        drop(a);
        assert!(!flight.token.is_cancelled(), "one waiter remains");
        drop(b);
        assert!(flight.token.is_cancelled());
        assert!(flights.is_empty());
        // A new request starts afresh instead of joining the cancelled flight.
        let (c, fresh) =
            flights.join_or_start(Some(key(1)), || Flight::new(CancellationToken::new()));
        assert!(!Arc::ptr_eq(&flight, &fresh));
        drop(c);
    }

    #[tokio::test]
    async fn every_waiter_receives_the_answer_and_nothing_is_cancelled() {
        let flights = Flights::new(Arc::new(Metrics::new()));
        let (a, flight) =
            flights.join_or_start(Some(key(2)), || Flight::new(CancellationToken::new()));
        let (b, _) = flights.join_or_start(Some(key(2)), || unreachable!());
        let (Joined::Leader(a) | Joined::Follower(a)) = a;
        let (Joined::Leader(b) | Joined::Follower(b)) = b;
        flight.finish(Err(ApiError::UpstreamAuth));
        assert!(matches!(a.wait().await, Err(ApiError::UpstreamAuth)));
        assert!(matches!(b.wait().await, Err(ApiError::UpstreamAuth)));
        assert!(!flight.token.is_cancelled());
    }
}
