//! The generation service the routes call: cache lookup, single-flight,
//! upstream concurrency limits, running a plan's jobs on the backend, and
//! turning what the backend delivered into what the client asked for.
//!
//! Flights run as tasks on the upstream runtime, not on the HTTP worker that
//! received the request, so a flight outlives a disconnected leader and
//! shutdown can still cancel fal jobs after the HTTP workers stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::fal::Upstream;
use crate::backend::{GeneratedImage, ImageBackend, ImageContent, JobContext, JobOutput};
use crate::cache::{
    CacheDirectives, Flight, FlightResult, Flights, Generation, GenerationCache, Joined,
};
use crate::error::ApiError;
use crate::files::FileStore;
use crate::mapping::{CacheKey, GenerationPlan, Job, ResponseFormat};
use crate::metrics::Metrics;
use crate::redis_cache::{Lock, RedisCache, Wait};

/// How a request was served, for `x-cache` and the lookup metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// From this replica's memory.
    Hit,
    /// From the shared Redis cache (written by any replica).
    SharedHit,
    Miss,
    /// Joined an identical generation in progress, on this replica or (with
    /// Redis) on another one.
    Coalesced,
    /// Cache disabled, or `no-cache`: generated for this request alone.
    Bypass,
}

impl CacheStatus {
    /// The `x-cache` header value.
    pub fn header(self) -> &'static str {
        match self {
            CacheStatus::Hit | CacheStatus::SharedHit => "HIT",
            CacheStatus::Miss | CacheStatus::Bypass => "MISS",
            CacheStatus::Coalesced => "COALESCED",
        }
    }

    /// The `x-cache-level` header value of a hit: `l1` (this replica's
    /// memory) or `l2` (the shared Redis cache).
    pub fn level(self) -> Option<&'static str> {
        match self {
            CacheStatus::Hit => Some("l1"),
            CacheStatus::SharedHit => Some("l2"),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit | CacheStatus::SharedHit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// Where a new flight's answer comes from, known before the answer itself
/// (so a stream can send `x-cache` at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Found in Redis.
    Shared,
    /// Another replica is generating it; this one waits.
    Remote,
    /// Generated here.
    Generate,
}

type RouteSender = Option<tokio::sync::oneshot::Sender<Route>>;

fn announce(route: &mut RouteSender, r: Route) {
    if let Some(tx) = route.take() {
        let _ = tx.send(r);
    }
}

/// A generation ready now, or one to wait for.
pub enum Pending {
    Ready(Arc<Generation>),
    Waiting(crate::cache::Waiter),
}

/// The cap on concurrent upstream work, with a bounded wait queue.
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
    async fn acquire(&self, jobs: u32, ctx: &JobContext) -> Result<OwnedSemaphorePermit, ApiError> {
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
        let outcome = tokio::select! {
            p = self.slots.clone().acquire_many_owned(n) => p.map_err(|_| ApiError::ShuttingDown),
            _ = ctx.cancel.cancelled() => Err(ApiError::ShuttingDown),
            _ = tokio::time::sleep_until(ctx.deadline) => Err(ctx.timeout_error()),
        };
        self.metrics.jobs_queued.dec();
        self.queued.fetch_sub(1, Ordering::AcqRel);
        outcome
    }
}

pub struct Gateway {
    pub backend: Arc<dyn ImageBackend>,
    pub upstream: Arc<Upstream>,
    pub files: Arc<FileStore>,
    pub cache: Option<GenerationCache>,
    /// The shared second level (Redis), when configured.
    pub l2: Option<Arc<RedisCache>>,
    pub flights: Arc<Flights>,
    pub limiter: JobLimiter,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
    /// Where flights and upstream calls run.
    pub runtime: tokio::runtime::Handle,
    /// Cancelled at shutdown; every flight's token is its child.
    pub shutdown: CancellationToken,
    /// Flights and detached fal cancellations, awaited at shutdown.
    pub tasks: TaskTracker,
}

impl Gateway {
    /// Decide how a plan is answered: from the cache (`Ready`), or by waiting
    /// on an identical in-flight job or a new one (`Waiting`). Callers send
    /// `x-cache` from the returned status before waiting, so a stream can
    /// start before the images exist.
    pub async fn begin(
        self: &Arc<Self>,
        plan: &GenerationPlan,
        tenant: Option<&[u8]>,
        directives: CacheDirectives,
    ) -> Result<(Pending, CacheStatus), ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        let cache = self.cache.as_ref();
        let key = cache.map(|_| plan.cache_key(tenant));
        if let (Some(cache), Some(key)) = (cache, key)
            && !directives.no_cache
            && let Some(generation) = cache.get(&key).await
        {
            self.count_lookup(CacheStatus::Hit);
            return Ok((Pending::Ready(generation), CacheStatus::Hit));
        }
        // `no-cache` never joins others: it asked for a fresh generation.
        let shared_key = key.filter(|_| !directives.no_cache);
        let store_key = key.filter(|_| !directives.no_store);
        let (joined, flight) = self
            .flights
            .join_or_start(shared_key, || Flight::new(self.shutdown.child_token()));
        let (waiter, status) = match joined {
            Joined::Follower(w) => (w, CacheStatus::Coalesced),
            Joined::Leader(w) => {
                let route = self.spawn_flight(plan.clone(), flight, shared_key, store_key);
                let route = if self.l2.is_some() && shared_key.is_some() {
                    route.await.unwrap_or(Route::Generate)
                } else {
                    Route::Generate
                };
                match route {
                    Route::Shared => {
                        let generation = w.wait().await?;
                        self.count_lookup(CacheStatus::SharedHit);
                        return Ok((Pending::Ready(generation), CacheStatus::SharedHit));
                    }
                    Route::Remote => (w, CacheStatus::Coalesced),
                    Route::Generate if shared_key.is_some() => (w, CacheStatus::Miss),
                    Route::Generate => (w, CacheStatus::Bypass),
                }
            }
        };
        self.count_lookup(status);
        Ok((Pending::Waiting(waiter), status))
    }

    fn count_lookup(&self, status: CacheStatus) {
        self.metrics
            .cache_lookups
            .with_label_values(&[status.label()])
            .inc();
    }

    fn spawn_flight(
        self: &Arc<Self>,
        plan: GenerationPlan,
        flight: Arc<Flight>,
        shared_key: Option<CacheKey>,
        store_key: Option<CacheKey>,
    ) -> tokio::sync::oneshot::Receiver<Route> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gw = self.clone();
        self.tasks.spawn_on(
            async move {
                let mut route = Some(tx);
                // An identical flight may have finished between this
                // request's cache miss and its registering as a leader.
                let cached = match (&gw.cache, shared_key) {
                    (Some(cache), Some(key)) => cache.get(&key).await,
                    _ => None,
                };
                let result = match cached {
                    Some(generation) => Ok(generation),
                    None => {
                        gw.fill(&plan, &flight.token, shared_key, store_key, &mut route)
                            .await
                    }
                };
                announce(&mut route, Route::Generate);
                flight.finish(result);
                if let Some(key) = shared_key {
                    gw.flights.remove(&key, &flight);
                }
            },
            &self.runtime,
        );
        rx
    }

    /// A local miss: the shared cache, another replica's generation in
    /// progress, or a new generation (under the fleet-wide lock), whose
    /// answer goes to both cache levels.
    async fn fill(
        &self,
        plan: &GenerationPlan,
        token: &CancellationToken,
        shared_key: Option<CacheKey>,
        store_key: Option<CacheKey>,
        route: &mut RouteSender,
    ) -> FlightResult {
        let deadline = Instant::now() + self.request_timeout;
        let l2 = self.l2.as_deref();
        let mut lock = None;
        if let (Some(l2), Some(key)) = (l2, shared_key) {
            if let Some(g) = l2.lookup(&key, &self.files).await {
                announce(route, Route::Shared);
                return Ok(self.keep_local(store_key, g).await);
            }
            // Only a generation that will be stored is worth waiting for.
            if store_key.is_some() {
                let wait_until = deadline.min(Instant::now() + l2.wait_timeout());
                loop {
                    match l2.try_lock(&key).await {
                        Lock::Acquired(guard) => {
                            // It may have been written between the lookup
                            // and the lock.
                            if let Some(g) = l2.recheck(&key, &self.files).await {
                                l2.release(guard).await;
                                announce(route, Route::Shared);
                                return Ok(self.keep_local(store_key, g).await);
                            }
                            lock = Some(guard);
                            break;
                        }
                        Lock::Unavailable => break,
                        Lock::Held => {
                            announce(route, Route::Remote);
                            match l2.wait_for(&key, wait_until, token, &self.files).await {
                                Wait::Ready(g) => return Ok(self.keep_local(store_key, g).await),
                                // The owner left without an answer: take over.
                                Wait::Free => continue,
                                Wait::Cancelled => {
                                    return Err(if self.shutdown.is_cancelled() {
                                        ApiError::ShuttingDown
                                    } else {
                                        ApiError::ClientClosedRequest
                                    });
                                }
                                Wait::TimedOut | Wait::Unavailable => break,
                            }
                        }
                    }
                }
            }
        }
        announce(route, Route::Generate);
        let produced = async { self.produce(plan, token, deadline).await.map(Arc::new) };
        let result = match (l2, &lock) {
            (Some(l2), Some(guard)) => tokio::select! {
                r = produced => r,
                never = l2.keep(guard) => match never {},
            },
            _ => produced.await,
        };
        if let (Ok(generation), Some(key)) = (&result, store_key) {
            if let Some(cache) = &self.cache {
                cache.insert(key, generation.clone()).await;
            }
            if let Some(l2) = l2 {
                l2.store(&key, generation, &self.files).await;
            }
        }
        if let (Some(l2), Some(guard)) = (l2, lock) {
            l2.release(guard).await;
        }
        result
    }

    /// An answer from Redis, kept in this replica's memory too.
    async fn keep_local(&self, store_key: Option<CacheKey>, g: Generation) -> Arc<Generation> {
        let g = Arc::new(g);
        if let (Some(cache), Some(key)) = (&self.cache, store_key) {
            cache.insert(key, g.clone()).await;
        }
        g
    }

    /// Run a plan's jobs and deliver the images in the requested form.
    async fn produce(
        &self,
        plan: &GenerationPlan,
        token: &CancellationToken,
        deadline: Instant,
    ) -> Result<Generation, ApiError> {
        let jobs = plan.jobs();
        let ctx = JobContext {
            deadline,
            cancel: token.clone(),
            timeout_seconds: self.request_timeout.as_secs(),
        };
        let _slots = self.limiter.acquire(jobs.len() as u32, &ctx).await?;
        self.metrics.jobs_in_flight.add(jobs.len() as i64);
        let outputs = self.run_jobs(&jobs, &ctx).await;
        self.metrics.jobs_in_flight.sub(jobs.len() as i64);
        let outputs = outputs?;

        let mut images = Vec::with_capacity(plan.n as usize);
        let mut dims = None;
        for output in outputs {
            for image in output.images {
                if dims.is_none() {
                    dims = image.width.zip(image.height);
                }
                images.push(self.deliver(image, plan, &ctx).await?);
            }
        }
        let (w, h) = dims.unwrap_or_else(|| plan.aspect_ratio.imagen_dimensions());
        Ok(Generation {
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            produced_at: std::time::Instant::now(),
            size: format!("{w}x{h}"),
            output_format: plan.output_format,
            response_format: plan.response_format,
            images,
            backend: self.backend.kind(),
        })
    }

    /// All jobs in parallel; the first failure cancels the others (which
    /// cancel their fal jobs) and is the answer.
    async fn run_jobs(&self, jobs: &[Job], ctx: &JobContext) -> Result<Vec<JobOutput>, ApiError> {
        let siblings = ctx.cancel.child_token();
        let job_ctx = JobContext {
            cancel: siblings.clone(),
            ..ctx.clone()
        };
        let results = futures_util::future::join_all(jobs.iter().map(|job| {
            let job_ctx = &job_ctx;
            let siblings = &siblings;
            async move {
                let started = Instant::now();
                let result = self.backend.generate(job, job_ctx).await;
                self.record_job(job, &result, started.elapsed());
                if result.is_err() {
                    siblings.cancel();
                }
                result
            }
        }))
        .await;
        let mut outputs = Vec::with_capacity(results.len());
        let mut first_error = None;
        for r in results {
            match r {
                Ok(o) => outputs.push(o),
                // Prefer the error that caused the cancellation over the
                // cancellations it caused.
                Err(e) => {
                    if first_error.is_none() || matches!(first_error, Some(ApiError::ShuttingDown))
                    {
                        first_error = Some(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(outputs),
        }
    }

    fn record_job(&self, job: &Job, result: &Result<JobOutput, ApiError>, total: Duration) {
        let model = job.model_id.as_ref();
        match result {
            Ok(out) => {
                self.metrics.observe_job(model, "success");
                let h = &self.metrics.job_duration;
                h.with_label_values(&[model, "total"])
                    .observe(total.as_secs_f64());
                if let Some(q) = out.queued {
                    h.with_label_values(&[model, "queued"])
                        .observe(q.as_secs_f64());
                }
                if let Some(r) = out.running {
                    h.with_label_values(&[model, "running"])
                        .observe(r.as_secs_f64());
                }
                self.metrics
                    .images_generated
                    .with_label_values(&[
                        model,
                        job.aspect_ratio.as_str(),
                        job.output_format.as_str(),
                    ])
                    .inc_by(out.images.len() as u64);
            }
            Err(e) => self.metrics.observe_job(model, e.outcome_label()),
        }
    }

    /// One image in the form the client asked for: base64 text or a URL.
    async fn deliver(
        &self,
        image: GeneratedImage,
        plan: &GenerationPlan,
        ctx: &JobContext,
    ) -> Result<Bytes, ApiError> {
        let b64 = &base64::engine::general_purpose::STANDARD;
        match (plan.response_format, image.content) {
            (ResponseFormat::B64Json, ImageContent::Base64(b)) => Ok(b),
            (ResponseFormat::B64Json, ImageContent::Raw(raw)) => Ok(Bytes::from(b64.encode(raw))),
            (ResponseFormat::B64Json, ImageContent::Url(url)) => {
                let raw = self.upstream.download(&url, ctx).await?;
                Ok(Bytes::from(b64.encode(raw)))
            }
            (ResponseFormat::Url, ImageContent::Url(url)) => Ok(Bytes::from(url)),
            (ResponseFormat::Url, ImageContent::Raw(raw)) => Ok(self.file_path(raw, plan).await),
            (ResponseFormat::Url, ImageContent::Base64(text)) => {
                let raw = b64.decode(&text).map_err(|_| ApiError::Upstream {
                    message: "The image backend answered with a data URI that is not base64."
                        .into(),
                })?;
                Ok(self.file_path(Bytes::from(raw), plan).await)
            }
        }
    }

    /// Keep an image in the file store; its link is stored as a path and
    /// made absolute per response (see `routes::generations::absolute_url`).
    async fn file_path(&self, raw: Bytes, plan: &GenerationPlan) -> Bytes {
        let name = self.files.put(raw, plan.output_format).await;
        Bytes::from(format!("{}{name}", crate::files::PATH_PREFIX))
    }

    /// Stop: cancel every flight (their fal jobs are cancelled upstream) and
    /// wait, up to `grace`, for them and for the cancellation calls.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.cancel();
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
    }
}
