//! Settings to parts: the backend, the caches, the generation service and
//! the handlers' shared state, each built once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web;
use tokio_util::task::TaskTracker;

use super::StartupError;
use crate::auth::{AdminKey, Auth};
use crate::backend::ImageBackend;
use crate::backend::fal::FalBackend;
use crate::backend::fal::transport::Upstream;
use crate::backend::local::LocalBackend;
use crate::cache::{MemoryCache, RedisCache};
use crate::config::{CacheMode, Settings};
use crate::domain::BackendKind;
use crate::files::FileStore;
use crate::http::AppState;
use crate::keys::KeyDirectory;
use crate::limits::KeyLimits;
use crate::memory::MemoryBudget;
use crate::metrics::Metrics;
use crate::openai::PlanLimits;
use crate::service::limiter::JobLimiter;
use crate::service::{GenerationService, ServiceParts};
use crate::spend::Spend;
use crate::store::Store;

/// How often expired budget reservations (of requests a crashed replica
/// never settled) are given back.
const RESERVATION_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Open (and migrate) the database on `runtime`, where its queries will run.
/// Start-up waits for it: without its keys and ledger the gateway must not
/// serve.
pub fn database(
    settings: &Settings,
    runtime: &tokio::runtime::Handle,
) -> Result<(Store, bool), StartupError> {
    let db = settings.database.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let opened = match Store::open(&db).await {
            Ok(store) => match store.has_keys().await {
                Ok(has_keys) => Ok((store, has_keys)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let _ = tx.send(opened);
    });
    // Connecting has its own bound; migrations of a large ledger may take
    // longer than that.
    let wait =
        Duration::from_millis(settings.database.connect_timeout_ms) + Duration::from_secs(120);
    match rx.recv_timeout(wait) {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(e)) => Err(StartupError::Setup(e.to_string())),
        Err(_) => Err(StartupError::Setup(format!(
            "the database {} did not open within {} s",
            settings.database.url.redacted(),
            wait.as_secs()
        ))),
    }
}

/// The hot-path key directory, kept current by watching the key table, and
/// the sweeper of expired reservations, both until `stop`.
pub fn key_directory(
    settings: &Settings,
    store: Store,
    has_keys: bool,
    metrics: Arc<Metrics>,
    runtime: &tokio::runtime::Handle,
    stop: tokio_util::sync::CancellationToken,
) -> Arc<KeyDirectory> {
    let directory = KeyDirectory::new(
        store.clone(),
        Duration::from_secs(settings.database.key_cache_ttl_seconds),
        has_keys,
    );
    let dir = directory.clone();
    let rt = runtime.clone();
    runtime.spawn(store.watch_keys(stop.clone(), move || {
        let dir = dir.clone();
        rt.spawn(async move { dir.refresh().await });
    }));
    runtime.spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(RESERVATION_SWEEP_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
            if let Err(e) = store.expire_reservations().await {
                metrics.database_error(crate::metrics::DbOp::Expire);
                tracing::warn!(error = %e, "cannot expire budget reservations");
            }
        }
    });
    directory
}

/// The image backend the settings choose.
fn backend(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    tasks: &TaskTracker,
    runtime: &tokio::runtime::Handle,
) -> Result<Arc<dyn ImageBackend>, StartupError> {
    match (settings.backend_kind(), &settings.fal.key) {
        (BackendKind::Fal, Some(key)) => {
            let mut fal = settings.fal.clone();
            if fal.pool_max_idle_per_host == 0 {
                fal.pool_max_idle_per_host = settings.limits.max_concurrent_jobs;
            }
            let upstream =
                Arc::new(Upstream::new(&fal, metrics.clone()).map_err(|e| {
                    StartupError::Setup(format!("cannot build the HTTP client: {e}"))
                })?);
            let backend = FalBackend::new(&fal, key, upstream, tasks.clone(), runtime.clone())
                .map_err(StartupError::Setup)?;
            Ok(Arc::new(backend))
        }
        (BackendKind::Fal, None) => Err(StartupError::Setup("backend `fal` needs FAL_KEY".into())),
        (BackendKind::Local, _) => Ok(Arc::new(LocalBackend::new(Duration::from_millis(
            settings.local.delay_ms,
        )))),
    }
}

/// The memory cache and, when configured, the shared Redis level.
fn caches(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    runtime: &tokio::runtime::Handle,
) -> Result<(Option<MemoryCache>, Option<Arc<RedisCache>>), StartupError> {
    let c = &settings.cache;
    let enabled = c.mode != CacheMode::Off;
    let memory = enabled.then(|| {
        MemoryCache::new(
            c.max_bytes,
            Duration::from_secs(c.ttl_seconds),
            metrics.clone(),
        )
    });
    let shared = match (enabled, c.redis_url.is_set()) {
        (true, true) => Some(Arc::new(
            RedisCache::new(c, settings.backend_kind(), metrics.clone(), runtime.clone())
                .map_err(StartupError::Setup)?,
        )),
        (false, true) => {
            tracing::warn!(
                "cache.redis_url is set but cache.mode is off: the shared cache is not used"
            );
            None
        }
        _ => None,
    };
    Ok((memory, shared))
}

/// The generation service, with its background work (the Redis probe) on
/// `runtime` and tracked by `tasks`.
pub fn service(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    store: &Store,
    runtime: tokio::runtime::Handle,
    tasks: TaskTracker,
) -> Result<Arc<GenerationService>, StartupError> {
    let memory = MemoryBudget::new(
        settings.limits.max_memory_bytes,
        settings.limits.memory_overcommit,
        metrics.clone(),
    );
    let in_flight = memory.clone();
    let backend = backend(settings, metrics, &tasks, &runtime)?;
    let (cache, shared_cache) = caches(settings, metrics, &runtime)?;
    let files = Arc::new(FileStore::new(
        settings.files.max_bytes,
        Duration::from_secs(settings.files.ttl_seconds),
    ));
    let service = GenerationService::new(ServiceParts {
        backend,
        files: files.clone(),
        cache,
        shared_cache: shared_cache.clone(),
        memory,
        limiter: JobLimiter::new(
            settings.limits.max_concurrent_jobs,
            settings.limits.max_queued_jobs,
            metrics.clone(),
        ),
        metrics: metrics.clone(),
        spend: Arc::new(Spend::new(
            store.clone(),
            metrics.clone(),
            Duration::from_secs(settings.server.request_timeout_seconds),
        )),
        request_timeout: Duration::from_secs(settings.server.request_timeout_seconds),
        cache_seeded_only: settings.cache.mode == CacheMode::Seeded,
        gone_skip: Duration::from_secs(settings.models.gone_skip_seconds),
        start_timeout: Duration::from_secs(settings.models.start_timeout_seconds),
        runtime: runtime.clone(),
        tasks: tasks.clone(),
    });
    // Memory in use stays under the three budgets and a 64 MiB baseline;
    // freed memory the allocator keeps goes back to the system once RSS is
    // past them with half the baseline (the image files counted by the
    // bytes they hold, not their budget).
    let budgets = settings
        .limits
        .max_memory_bytes
        .saturating_add(settings.cache.max_bytes)
        .saturating_add(32 << 20);
    tasks.spawn_on(
        crate::alloc::give_back_above(
            move || budgets.saturating_add(files.bytes()),
            move || in_flight.reserved() > in_flight.limit() / 4,
            metrics.memory_trims.clone(),
            service.stopping_token(),
        ),
        &runtime,
    );
    if let Some(l2) = shared_cache {
        tracing::info!(redis = %l2.redacted_url(), "shared second-level cache in Redis");
        tasks.spawn_on(l2.watch(service.stopping_token()), &runtime);
    }
    Ok(service)
}

/// What every handler shares.
pub fn state(
    settings: &Settings,
    service: Arc<GenerationService>,
    keys: Arc<KeyDirectory>,
    metrics: Arc<Metrics>,
) -> Result<web::Data<AppState>, StartupError> {
    let catalog = settings
        .models
        .catalog()
        .map_err(|e| StartupError::Setup(e.to_string()))?;
    let public_base_url = Some(settings.server.public_base_url.trim_end_matches('/'))
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    Ok(web::Data::new(AppState {
        service,
        catalog,
        auth: Auth::new(&settings.auth.api_keys),
        admin: AdminKey::new(settings.auth.admin_key.as_ref()),
        keys,
        limits: KeyLimits::new(
            settings.limits.requests_per_minute,
            settings.limits.images_per_minute,
        ),
        metrics,
        metrics_public: settings.metrics.public,
        fal_mode: settings.fal.mode,
        public_base_url,
        trust_forwarded_headers: settings.server.trust_forwarded_headers,
        plan_limits: PlanLimits {
            max_prompt_chars: settings.server.max_prompt_chars,
        },
        max_body_bytes: settings.server.max_body_bytes,
        body_timeout: Duration::from_millis(settings.server.client_body_timeout_ms),
        cache_scope: settings
            .cache
            .scope
            .resolve(!settings.auth.api_keys.is_empty()),
        cache_mode: settings.cache.mode,
        stream_keepalive: Duration::from_secs(settings.server.stream_keepalive_seconds),
        started: Instant::now(),
    }))
}
