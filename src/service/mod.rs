//! The generation service the HTTP handlers call: cache lookup,
//! single-flight, the upstream concurrency limit, running a plan's jobs on
//! the backend, and turning what the backend delivered into what the client
//! asked for. It never names an upstream: backends hide their protocols.
//!
//! The path of one request: [`GenerationService::begin`] answers from the
//! memory cache, or joins an identical flight, or starts one. A flight runs
//! as its own task on the runtime of the HTTP worker that took its leader's
//! request (so it outlives a disconnected leader, and its upstream calls,
//! made with that thread's own client, never hop threads); background work
//! (cancelling upstream jobs, settling spend) runs on the upstream runtime,
//! which outlives the workers. A flight asks the shared cache and the fleet first when
//! there is one ([`fleet`]), else generates ([`GenerationService::produce`]
//! tries the model's chain, [`chain`]; each endpoint's jobs run in
//! `produce`), and stores what it got; what its jobs cost is settled by
//! `tab`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::ImageBackend;
use crate::cache::{CacheDirectives, CacheKey, CacheStatus, MemoryCache, RedisCache};
use crate::domain::{BackendKind, Generation, GenerationPlan, ResponseFormat};
use crate::error::ApiError;
use crate::files::FileStore;
use crate::memory::{self, MemoryBudget};
use crate::metrics::Metrics;
use crate::spend::{Payer, Spend};
use crate::store::budget::Reservation;

pub mod chain;
mod fleet;
pub mod flights;
pub mod limiter;
mod measure;
mod produce;
mod tab;

use chain::GoneEndpoints;
use flights::{Flight, FlightResult, Flights, Joined, Source, Waiter};
use limiter::JobLimiter;
use tab::Tab;

/// Ends a flight's task: a flight that got no answer (its task panicked or
/// was dropped) answers its waiters with a 500, and leaves the table.
struct AnswerOnDrop {
    flight: Arc<Flight>,
    key: Option<CacheKey>,
    service: Arc<GenerationService>,
}

impl Drop for AnswerOnDrop {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.service.flights.remove(&key, &self.flight);
        }
        self.flight.finish_if_unanswered(ApiError::Internal);
    }
}

/// The text of a panic, for the log.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A generation ready now, or one to wait for.
pub enum Pending {
    Ready(Arc<Generation>),
    Waiting(Waiter),
}

/// The cache keys a flight uses: `shared` lets identical requests join it
/// and answers from the caches (absent with `no-cache`); `store` keeps its
/// answer (absent with `no-store`).
#[derive(Clone, Copy)]
struct FlightKeys {
    shared: Option<CacheKey>,
    store: Option<CacheKey>,
}

/// Everything the service is built from.
pub struct ServiceParts {
    pub backend: Arc<dyn ImageBackend>,
    pub files: Arc<FileStore>,
    pub cache: Option<MemoryCache>,
    pub shared_cache: Option<Arc<RedisCache>>,
    /// `limits.max_memory_bytes`: what answers in flight hold.
    pub memory: Arc<MemoryBudget>,
    pub limiter: JobLimiter,
    pub metrics: Arc<Metrics>,
    /// Budgets and the spend ledger.
    pub spend: Arc<Spend>,
    pub request_timeout: Duration,
    /// `cache.mode = "seeded"`: only plans with a seed use the cache.
    pub cache_seeded_only: bool,
    /// How long an endpoint that answered "gone" is skipped.
    pub gone_skip: Duration,
    /// A job's start timeout when another endpoint follows in its chain.
    pub start_timeout: Duration,
    /// Where background work runs (budget releases); it outlives the HTTP
    /// workers.
    pub runtime: tokio::runtime::Handle,
    /// Tasks awaited at shutdown (flights, upstream cancellations).
    pub tasks: TaskTracker,
}

pub struct GenerationService {
    backend: Arc<dyn ImageBackend>,
    files: Arc<FileStore>,
    cache: Option<MemoryCache>,
    shared_cache: Option<Arc<RedisCache>>,
    memory: Arc<MemoryBudget>,
    flights: Arc<Flights>,
    limiter: JobLimiter,
    metrics: Arc<Metrics>,
    spend: Arc<Spend>,
    request_timeout: Duration,
    cache_seeded_only: bool,
    gone: GoneEndpoints,
    gone_skip: Duration,
    start_timeout: Duration,
    runtime: tokio::runtime::Handle,
    /// Cancelled at shutdown; every flight's token is its child.
    stopping: CancellationToken,
    /// Set when shutdown begins, before the grace period.
    draining: std::sync::atomic::AtomicBool,
    tasks: TaskTracker,
}

impl GenerationService {
    pub fn new(parts: ServiceParts) -> Arc<Self> {
        Arc::new(Self {
            flights: Flights::new(parts.metrics.clone()),
            backend: parts.backend,
            files: parts.files,
            cache: parts.cache,
            shared_cache: parts.shared_cache,
            memory: parts.memory,
            limiter: parts.limiter,
            metrics: parts.metrics,
            spend: parts.spend,
            request_timeout: parts.request_timeout,
            cache_seeded_only: parts.cache_seeded_only,
            gone: GoneEndpoints::new(parts.gone_skip),
            gone_skip: parts.gone_skip,
            start_timeout: parts.start_timeout,
            runtime: parts.runtime,
            stopping: CancellationToken::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            tasks: parts.tasks,
        })
    }

    /// Decide how a plan is answered: from the cache (`Ready`), or by waiting
    /// on an identical in-flight job or a new one (`Waiting`). Callers send
    /// `x-cache` from the returned status before waiting, so a stream can
    /// start before the images exist.
    ///
    /// A payer with a budget reserves the most the request could cost before
    /// a flight of its own can start (refused: `insufficient_quota`, and no
    /// job); a cache hit or joining a flight in flight costs nothing and
    /// needs no reservation, whatever is left of the budget.
    ///
    /// Likewise only a request that starts a new flight takes room in the
    /// memory budget, or is shed with a 429 when there is none: a small room
    /// while its jobs wait upstream, grown to the most its plan can hold
    /// while made and answered before its first answer is read
    /// ([`memory::Room`]); shared by the flight and the caller, which holds
    /// it until its answer is written. A hit or a request that joins a
    /// flight shares bytes that are already counted (the cache's, the
    /// flight's).
    pub async fn begin(
        self: &Arc<Self>,
        plan: &GenerationPlan,
        tenant: Option<&[u8]>,
        directives: CacheDirectives,
        payer: &Payer,
    ) -> Result<(Pending, CacheStatus, Option<Arc<memory::Room>>), ApiError> {
        if self.stopping.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        // Without a key the request neither reads, joins nor fills the cache.
        let cacheable = !self.cache_seeded_only || plan.seed.is_some();
        let key = (self.cache.is_some() && cacheable).then(|| CacheKey::of(plan, tenant));
        if let (Some(cache), Some(key)) = (&self.cache, key)
            && !directives.no_cache
            && let Some(generation) = cache.get(&key).await
        {
            self.metrics.count_lookup(CacheStatus::Hit.result());
            return Ok((Pending::Ready(generation), CacheStatus::Hit, None));
        }
        // `no-cache` never joins others: it asked for a fresh generation.
        let keys = FlightKeys {
            shared: key.filter(|_| !directives.no_cache),
            store: key.filter(|_| !directives.no_store),
        };
        let mut reservation = None;
        // Room in the memory budget for a flight of its own; without it,
        // joining an identical flight in the air needs none.
        let whole = plan.max_memory_bytes();
        // A `url` plan's whole is about as small: it holds it from the start.
        let waiting = match plan.response_format {
            ResponseFormat::Url => whole,
            ResponseFormat::B64Json => plan.waiting_memory_bytes(),
        };
        let room = match memory::Room::try_new(&self.memory, waiting, whole) {
            Ok(room) => Some(Arc::new(room)),
            Err(shed) => {
                let Some(w) = keys.shared.and_then(|k| self.flights.join_existing(k)) else {
                    return Err(shed);
                };
                self.metrics.count_lookup(CacheStatus::Coalesced.result());
                return Ok((Pending::Waiting(w), CacheStatus::Coalesced, None));
            }
        };
        if payer.key.is_some() {
            if let Some(w) = keys.shared.and_then(|k| self.flights.join_existing(k)) {
                self.metrics.count_lookup(CacheStatus::Coalesced.result());
                return Ok((Pending::Waiting(w), CacheStatus::Coalesced, None));
            }
            reservation = self.spend.reserve(payer, self.max_cost(plan)).await?;
        }
        let (joined, flight) = self.flights.join_or_start(keys.shared, || {
            Flight::new(self.stopping.child_token(), room.clone())
        });
        let (waiter, status) = match joined {
            Joined::Follower(w) => {
                // Another request started the same generation meanwhile.
                if let Some(r) = reservation {
                    let spend = self.spend.clone();
                    self.tasks
                        .spawn_on(async move { spend.release(r).await }, &self.runtime);
                }
                (w, CacheStatus::Coalesced)
            }
            Joined::Leader(mut w) => {
                self.spawn_flight(plan.clone(), flight, keys, payer.clone(), reservation);
                // Only with a shared cache can the answer come from elsewhere.
                let source = if self.shared_cache.is_some() && keys.shared.is_some() {
                    w.source().await
                } else {
                    Source::Generate
                };
                match source {
                    Source::Shared => {
                        let generation = w.wait().await?;
                        self.metrics.count_lookup(CacheStatus::SharedHit.result());
                        return Ok((Pending::Ready(generation), CacheStatus::SharedHit, room));
                    }
                    Source::Remote => {
                        // Counted once settled: if the other replica's
                        // answer never comes, this one generates (a miss).
                        w.provisional = true;
                        return Ok((Pending::Waiting(w), CacheStatus::Coalesced, room));
                    }
                    Source::Generate if keys.shared.is_some() => (w, CacheStatus::Miss),
                    Source::Generate => (w, CacheStatus::Bypass),
                }
            }
        };
        self.metrics.count_lookup(status.result());
        // A follower's room goes back at once.
        let room = room.filter(|_| status != CacheStatus::Coalesced);
        Ok((Pending::Waiting(waiter), status, room))
    }

    /// Wait for a pending answer; `status` is what [`Self::begin`] said,
    /// returned corrected when the answer came from elsewhere than it said
    /// (a replica that waited for another, then generated itself after
    /// Redis failed mid-wait, answers a miss, not a coalesced request).
    pub async fn settle(
        &self,
        waiter: Waiter,
        status: CacheStatus,
    ) -> (Result<Arc<Generation>, ApiError>, CacheStatus) {
        if !waiter.provisional {
            return (waiter.wait().await, status);
        }
        let (result, source) = waiter.wait_with_source().await;
        let status = match source {
            Source::Generate => CacheStatus::Miss,
            Source::Remote | Source::Shared => CacheStatus::Coalesced,
        };
        self.metrics.count_lookup(status.result());
        (result, status)
    }

    fn spawn_flight(
        self: &Arc<Self>,
        plan: GenerationPlan,
        flight: Arc<Flight>,
        keys: FlightKeys,
        payer: Payer,
        reservation: Option<Reservation>,
    ) {
        let service = self.clone();
        // On the runtime this request is on: the HTTP worker's.
        self.tasks.spawn(async move {
            // Whatever ends this task (an answer, a panic, the runtime
            // dropping it), every waiter gets an answer and the flight
            // leaves the table, so no later request joins a dead one.
            let _answered = AnswerOnDrop {
                flight: flight.clone(),
                key: keys.shared,
                service: service.clone(),
            };
            let tab = Tab::default();
            let flown = AssertUnwindSafe(service.fly(&plan, &flight, keys, &payer, &tab))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    tracing::error!(
                        panic = panic_message(panic.as_ref()),
                        "a generation task panicked: its clients get a 500"
                    );
                    Err(ApiError::Internal)
                });
            // Settled before the answer goes out, so the next request
            // sees the real cost, not the reservation.
            let result = service
                .account(&plan, &payer, reservation, &flight, &tab, flown)
                .await;
            // Out of the table before the waiters wake: a request they
            // prompt starts afresh.
            if let Some(key) = keys.shared {
                service.flights.remove(&key, &flight);
            }
            flight.finish(result);
        });
    }

    /// One flight: the caches and the fleet first, else a generation here;
    /// what it got is kept in memory unless `no-store`. What its jobs cost
    /// goes on `tab`.
    async fn fly(
        &self,
        plan: &GenerationPlan,
        flight: &Flight,
        keys: FlightKeys,
        payer: &Payer,
        tab: &Tab,
    ) -> FlightResult {
        // An identical flight may have finished between this request's cache
        // miss and its registering as a leader.
        if let (Some(cache), Some(key)) = (&self.cache, keys.shared)
            && let Some(generation) = cache.get(&key).await
        {
            return Ok(generation);
        }
        let deadline = Instant::now() + self.request_timeout;
        let generation = match (&self.shared_cache, keys.shared) {
            (Some(l2), Some(key)) => {
                fleet::fill(
                    self,
                    l2,
                    key,
                    keys.store.is_some(),
                    plan,
                    flight,
                    deadline,
                    payer,
                    tab,
                )
                .await?
            }
            _ => {
                flight.set_source(Source::Generate);
                self.produce(plan, flight, deadline, payer, tab).await?
            }
        };
        let generation = Arc::new(generation);
        if let (Some(cache), Some(key)) = (&self.cache, keys.store) {
            cache.insert(key, generation.clone()).await;
        }
        Ok(generation)
    }

    /// The image files behind `url` answers the gateway serves itself.
    pub fn files(&self) -> &FileStore {
        &self.files
    }

    /// The memory cache's (entries, bytes), when the cache is on.
    pub async fn cache_usage(&self) -> Option<(u64, u64)> {
        match &self.cache {
            Some(cache) => Some(cache.usage().await),
            None => None,
        }
    }

    /// The memory budget answers in flight hold their room in.
    pub fn memory(&self) -> &Arc<MemoryBudget> {
        &self.memory
    }

    pub fn cache_enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// `None` without a shared cache; else whether Redis answers.
    pub fn shared_cache_up(&self) -> Option<bool> {
        self.shared_cache.as_ref().map(|l2| l2.is_up())
    }

    /// Budgets and the spend ledger.
    pub fn spend(&self) -> &Spend {
        &self.spend
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// Generations in flight now (one per distinct request being made).
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Shutdown has begun: in-flight requests still finish, but `/readyz`
    /// answers 503 from now on.
    pub fn begin_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether shutdown has begun (draining, or past it).
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire) || self.is_stopping()
    }

    /// Cancelled when shutdown begins, for background work to stop by.
    pub fn stopping_token(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Cancel every flight: their upstream jobs are cancelled and their
    /// clients get a retryable 503.
    pub fn cancel_all(&self) {
        self.stopping.cancel();
    }

    /// Stop: cancel every flight and wait, up to `grace`, for them and for
    /// the upstream cancellations they started.
    pub async fn shutdown(&self, grace: Duration) {
        self.cancel_all();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tasks.len(),
                "upstream work still running after the shutdown grace period"
            );
        }
        // The ledger rows of requests answered without waiting for them.
        if tokio::time::timeout(grace, self.spend.flush())
            .await
            .is_err()
        {
            tracing::warn!("settlements still being written after the shutdown grace period");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{JobContext, JobOutput};
    use crate::domain::Job;
    use crate::openai::validate::plan_json;

    /// A backend whose every job panics.
    struct Panics;

    impl ImageBackend for Panics {
        fn kind(&self) -> BackendKind {
            BackendKind::Local
        }

        fn generate<'a>(
            &'a self,
            _job: &'a Job,
            _ctx: &'a JobContext,
        ) -> futures_util::future::BoxFuture<'a, Result<JobOutput, ApiError>> {
            Box::pin(async { panic!("a bug in the backend") })
        }
    }

    async fn service(backend: Arc<dyn ImageBackend>) -> Arc<GenerationService> {
        let metrics = Arc::new(Metrics::new());
        let store = crate::store::Store::open(&crate::config::DatabaseSettings {
            url: crate::config::DatabaseUrl::new("sqlite::memory:"),
            ..Default::default()
        })
        .await
        .unwrap();
        GenerationService::new(ServiceParts {
            backend,
            files: Arc::new(FileStore::new(1 << 20, Duration::from_secs(60))),
            cache: Some(MemoryCache::new(
                1 << 20,
                Duration::from_secs(60),
                metrics.clone(),
            )),
            shared_cache: None,
            memory: MemoryBudget::new(1 << 30, 4, metrics.clone()),
            cache_seeded_only: false,
            limiter: JobLimiter::new(4, 4, metrics.clone()),
            spend: Arc::new(Spend::new(store, metrics.clone(), Duration::from_secs(30))),
            metrics,
            request_timeout: Duration::from_secs(30),
            gone_skip: Duration::from_secs(60),
            start_timeout: Duration::from_secs(10),
            runtime: tokio::runtime::Handle::current(),
            tasks: TaskTracker::new(),
        })
    }

    async fn wait(service: &Arc<GenerationService>) -> Result<Arc<Generation>, ApiError> {
        let plan = plan_json(r#"{"prompt":"panic"}"#).unwrap();
        let (pending, _, _) = service
            .begin(&plan, None, CacheDirectives::default(), &Payer::default())
            .await?;
        match pending {
            Pending::Ready(g) => Ok(g),
            Pending::Waiting(w) => w.wait().await,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_a_generation_answers_every_waiter_with_a_500_at_once() {
        let service = service(Arc::new(Panics)).await;

        let (leader, follower) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(wait(&service), wait(&service))
        })
        .await
        .expect("the waiters are answered, not left hanging");

        for result in [leader, follower] {
            let e = result.expect_err("a panicked generation is an error");
            assert!(matches!(e, ApiError::Internal), "{e:?}");
        }
        assert_eq!(service.in_flight(), 0, "the dead flight left the table");
        // The next identical request starts afresh (and fails the same way).
        let again = tokio::time::timeout(Duration::from_secs(5), wait(&service)).await;
        assert!(matches!(again, Ok(Err(ApiError::Internal))));
    }
}
