//! Single-flight: concurrent identical misses share one upstream job.
//!
//! A [`Flight`] is one generation in progress; each waiting client holds a
//! [`Waiter`]. When the last waiter goes away before the answer, the
//! flight's token is cancelled and the backend cancels its upstream job.
//! Errors are never cached, and every waiter receives the flight's error.
//!
//! A flight also says early where its answer will come from ([`Source`]), so
//! a request can send `x-cache` before the images exist (a stream starts at
//! once) while the flight is still deciding between the shared cache,
//! another replica and a generation of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cache::CacheKey;
use crate::domain::Generation;
use crate::error::ApiError;
use crate::memory::Room;
use crate::metrics::Metrics;

pub type FlightResult = Result<Arc<Generation>, ApiError>;

/// Where a flight's answer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Found in the shared (Redis) cache.
    Shared,
    /// Another replica is generating it; this one waits for its entry.
    Remote,
    /// Generated here.
    Generate,
}

#[derive(Default)]
struct Progress {
    /// The first word on where the answer comes from (what early headers say).
    source: Option<Source>,
    /// The last word: a replica waiting for another (`Remote`) may end up
    /// generating after all (`Generate`).
    latest: Option<Source>,
    result: Option<FlightResult>,
}

/// One upstream job in progress, shared by every identical request.
pub struct Flight {
    progress: watch::Sender<Progress>,
    waiters: AtomicUsize,
    /// Cancelled when nobody waits any more, or at shutdown.
    pub token: CancellationToken,
    /// Micro-dollars this flight spent upstream (set before its answer).
    spent: AtomicU64,
    /// The memory room of the request that started it, grown before the
    /// flight reads its answers; `None` for work that needs none.
    pub room: Option<Arc<Room>>,
}

impl Flight {
    pub fn new(token: CancellationToken, room: Option<Arc<Room>>) -> Arc<Self> {
        Arc::new(Self {
            progress: watch::channel(Progress::default()).0,
            waiters: AtomicUsize::new(0),
            token,
            spent: AtomicU64::new(0),
            room,
        })
    }

    /// Record what this flight spent upstream; call before [`Self::finish`].
    pub fn set_spent(&self, micro_usd: u64) {
        self.spent.store(micro_usd, Ordering::Release);
    }

    /// What this flight spent upstream: its leader's cost. Known once the
    /// answer is.
    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::Acquire)
    }

    /// Say where the answer will come from. The first word stands for
    /// [`Waiter::source`]; the last is reported with the answer.
    pub fn set_source(&self, source: Source) {
        self.progress.send_if_modified(|p| {
            p.latest = Some(source);
            let unset = p.source.is_none();
            if unset {
                p.source = Some(source);
            }
            unset
        });
    }

    /// Deliver the answer to every waiter.
    pub fn finish(&self, result: FlightResult) {
        self.progress.send_modify(|p| {
            p.source.get_or_insert(Source::Generate);
            p.latest.get_or_insert(Source::Generate);
            p.result = Some(result);
        });
    }

    /// Answer `error` unless an answer was given already.
    pub fn finish_if_unanswered(&self, error: ApiError) {
        self.progress.send_if_modified(|p| {
            let unanswered = p.result.is_none();
            if unanswered {
                p.source.get_or_insert(Source::Generate);
                p.latest.get_or_insert(Source::Generate);
                p.result = Some(Err(error));
            }
            unanswered
        });
    }

    fn is_finished(&self) -> bool {
        self.progress.borrow().result.is_some()
    }
}

/// A client waiting on a flight. Dropping it before the answer (the client
/// disconnected) may cancel the flight.
pub struct Waiter {
    flight: Arc<Flight>,
    key: Option<CacheKey>,
    flights: Arc<Flights>,
    done: bool,
    /// Its cache status is not known yet: it leads a flight waiting for
    /// another replica, which may end up generating here after all.
    pub(crate) provisional: bool,
}

impl Waiter {
    /// Where the answer will come from, once the flight knows.
    pub async fn source(&self) -> Source {
        let mut rx = self.flight.progress.subscribe();
        match rx.wait_for(|p| p.source.is_some()).await {
            Ok(p) => p.source.unwrap_or(Source::Generate),
            // The flight task ended without a word: its answer (an
            // internal error) is what `wait` will return.
            Err(_) => Source::Generate,
        }
    }

    /// The flight waited on.
    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// Wait for the flight's answer.
    pub async fn wait(self) -> FlightResult {
        self.wait_with_source().await.0
    }

    /// Wait for the flight's answer, and where it finally came from.
    pub async fn wait_with_source(mut self) -> (FlightResult, Source) {
        let mut rx = self.flight.progress.subscribe();
        let answer = match rx.wait_for(|p| p.result.is_some()).await {
            Ok(p) => (
                p.result.clone().unwrap_or(Err(ApiError::Internal)),
                p.latest.unwrap_or(Source::Generate),
            ),
            // Unreachable while this waiter holds the flight (and with it
            // the sender); the flight task answers even when it panics.
            Err(_) => (Err(ApiError::Internal), Source::Generate),
        };
        self.done = true;
        answer
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

/// Whether a request leads a new flight or joined one.
pub enum Joined {
    Leader(Waiter),
    Follower(Waiter),
}

/// The in-flight table.
pub struct Flights {
    map: Mutex<HashMap<CacheKey, Arc<Flight>>>,
    metrics: Arc<Metrics>,
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
                provisional: false,
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

    /// Join the live flight for `key` if there is one; never starts one.
    pub fn join_existing(self: &Arc<Self>, key: CacheKey) -> Option<Waiter> {
        let map = self.lock();
        let existing = map.get(&key)?;
        if existing.token.is_cancelled() || existing.is_finished() {
            return None;
        }
        existing.waiters.fetch_add(1, Ordering::AcqRel);
        Some(Waiter {
            flight: existing.clone(),
            key: Some(key),
            flights: self.clone(),
            done: false,
            provisional: false,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> CacheKey {
        CacheKey([b; 32])
    }

    #[tokio::test]
    async fn the_last_waiter_leaving_cancels_the_flight() {
        let flights = Flights::new(Arc::new(Metrics::new()));
        let (a, flight) =
            flights.join_or_start(Some(key(1)), || Flight::new(CancellationToken::new(), None));
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
            flights.join_or_start(Some(key(1)), || Flight::new(CancellationToken::new(), None));
        assert!(!Arc::ptr_eq(&flight, &fresh));
        drop(c);
    }

    #[tokio::test]
    async fn every_waiter_receives_the_answer_and_nothing_is_cancelled() {
        let flights = Flights::new(Arc::new(Metrics::new()));
        let (a, flight) =
            flights.join_or_start(Some(key(2)), || Flight::new(CancellationToken::new(), None));
        let (b, _) = flights.join_or_start(Some(key(2)), || unreachable!());
        let (Joined::Leader(a) | Joined::Follower(a)) = a;
        let (Joined::Leader(b) | Joined::Follower(b)) = b;
        flight.finish(Err(ApiError::UpstreamAuth));
        assert_eq!(a.source().await, Source::Generate);
        assert!(matches!(a.wait().await, Err(ApiError::UpstreamAuth)));
        assert!(matches!(b.wait().await, Err(ApiError::UpstreamAuth)));
        assert!(!flight.token.is_cancelled());
    }

    #[tokio::test]
    async fn the_first_source_stands() {
        let flight = Flight::new(CancellationToken::new(), None);
        let flights = Flights::new(Arc::new(Metrics::new()));
        let (joined, _) = flights.join_or_start(None, || flight.clone());
        let (Joined::Leader(w) | Joined::Follower(w)) = joined;
        flight.set_source(Source::Remote);
        flight.set_source(Source::Generate);
        assert_eq!(w.source().await, Source::Remote);
    }
}
