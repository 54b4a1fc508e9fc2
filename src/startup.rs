//! Building and running the application: shared state once, the API
//! listener, the optional admin listener, and graceful shutdown.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::backend::ImageBackend;
use crate::backend::fal::{FalBackend, RetryPolicy, Upstream, build_client};
use crate::backend::local::LocalBackend;
use crate::cache::{Flights, GenerationCache};
use crate::files::FileStore;
use crate::gateway::{Gateway, JobLimiter};
use crate::mapping::{ModelCatalog, PlanLimits};
use crate::metrics::Metrics;
use crate::middleware::{edge, require_key};
use crate::redis_cache::RedisCache;
use crate::routes;
use crate::settings::{BackendKind, Settings};
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot bind {what} to {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// Time after the grace period for cancelled requests to be answered.
const SHUTDOWN_MARGIN_SECONDS: u64 = 3;

/// Owns the runtime flights and upstream calls run on. Shut down in the
/// background on drop, so dropping it inside async code (tests) is safe.
struct UpstreamRuntime(Option<tokio::runtime::Runtime>);

impl UpstreamRuntime {
    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle().clone())
    }
}

impl Drop for UpstreamRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub struct Application {
    server: Server,
    admin: Option<Server>,
    port: u16,
    admin_port: Option<u16>,
    gateway: Arc<Gateway>,
    grace: Duration,
    _runtime: UpstreamRuntime,
}

fn bind(what: &'static str, addr: &str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr).map_err(|source| StartupError::Bind {
        what,
        addr: addr.to_owned(),
        source,
    })
}

impl Application {
    /// Build everything and bind the listeners (port 0 picks a free port).
    /// Must be called inside an actix system (`#[actix_web::main]` or
    /// `#[actix_web::test]`).
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = if settings.server.workers == 0 {
            cores
        } else {
            settings.server.workers
        };
        let metrics = Arc::new(Metrics::new());
        let kind = settings.backend_kind();
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), kind.as_str()])
            .set(1);

        let runtime = UpstreamRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cores.min(4))
                .thread_name("upstream")
                .enable_all()
                .build()
                .map_err(|e| {
                    StartupError::Setup(format!("cannot start the upstream runtime: {e}"))
                })?,
        ));
        let runtime_handle = runtime
            .handle()
            .ok_or_else(|| StartupError::Setup("no runtime".into()))?;
        let http = build_client(&settings.fal)
            .map_err(|e| StartupError::Setup(format!("cannot build the HTTP client: {e}")))?;
        let upstream = Arc::new(Upstream {
            http,
            max_response_bytes: settings.fal.max_response_bytes,
            call_timeout: Duration::from_secs(settings.fal.call_timeout_seconds),
            retry: RetryPolicy {
                max_retries: settings.fal.max_retries,
                base: Duration::from_millis(settings.fal.retry_base_delay_ms),
                cap: Duration::from_millis(settings.fal.retry_max_delay_ms),
            },
            metrics: metrics.clone(),
        });
        let tasks = TaskTracker::new();
        let backend: Arc<dyn ImageBackend> = match (kind, &settings.fal.key) {
            (BackendKind::Fal, Some(key)) => Arc::new(
                FalBackend::new(&settings.fal, key, upstream.clone(), tasks.clone())
                    .map_err(StartupError::Setup)?,
            ),
            (BackendKind::Fal, None) => {
                return Err(StartupError::Setup("backend `fal` needs FAL_KEY".into()));
            }
            (BackendKind::Local, _) => Arc::new(LocalBackend::new(Duration::from_millis(
                settings.local.delay_ms,
            ))),
        };
        let cache = settings.cache.enabled.then(|| {
            GenerationCache::new(
                settings.cache.max_bytes,
                Duration::from_secs(settings.cache.ttl_seconds),
                metrics.clone(),
            )
        });
        let l2 = match (&cache, settings.cache.redis_url.is_set()) {
            (Some(_), true) => Some(Arc::new(
                RedisCache::new(
                    &settings.cache,
                    kind,
                    metrics.clone(),
                    runtime_handle.clone(),
                )
                .map_err(StartupError::Setup)?,
            )),
            (None, true) => {
                tracing::warn!(
                    "cache.redis_url is set but cache.enabled is false: the shared cache is not used"
                );
                None
            }
            _ => None,
        };
        let shutdown = CancellationToken::new();
        if let Some(l2) = &l2 {
            tracing::info!(redis = %l2.redacted_url(), "shared second-level cache in Redis");
            tasks.spawn_on(l2.clone().watch(shutdown.clone()), &runtime_handle);
        }
        let gateway = Arc::new(Gateway {
            backend,
            upstream,
            files: Arc::new(FileStore::new(
                settings.files.max_bytes,
                Duration::from_secs(settings.files.ttl_seconds),
            )),
            cache,
            l2,
            flights: Flights::new(metrics.clone()),
            limiter: JobLimiter::new(
                settings.limits.max_concurrent_jobs,
                settings.limits.max_queued_jobs,
                metrics.clone(),
            ),
            metrics: metrics.clone(),
            request_timeout: Duration::from_secs(settings.server.request_timeout_seconds),
            runtime: runtime_handle,
            shutdown,
            tasks,
        });
        let catalog = ModelCatalog::from_settings(&settings.models)
            .ok_or_else(|| StartupError::Setup("invalid models configuration".into()))?;
        let auth = Auth::new(&settings.auth.api_keys);
        let public_base_url = Some(settings.server.public_base_url.trim_end_matches('/'))
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        let state = web::Data::new(AppState {
            gateway: gateway.clone(),
            catalog,
            auth,
            limits: crate::limits::KeyLimits::new(
                settings.limits.requests_per_minute,
                settings.limits.images_per_minute,
            ),
            metrics,
            metrics_public: settings.metrics.public,
            backend: kind,
            fal_mode: settings.fal.mode,
            public_base_url,
            plan_limits: PlanLimits {
                max_prompt_chars: settings.server.max_prompt_chars,
            },
            max_body_bytes: settings.server.max_body_bytes,
            body_timeout: Duration::from_millis(settings.server.client_body_timeout_ms),
            cache_scope: settings.cache.scope,
            stream_keepalive: Duration::from_secs(settings.server.stream_keepalive_seconds),
            started: Instant::now(),
        });

        announce(&settings, kind, &state);

        let grace = Duration::from_secs(settings.server.shutdown_grace_seconds);
        let listener = bind("server.listen", &settings.server.listen)?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "listening on {addr}");
        }
        let serve_metrics = settings.metrics.enabled && settings.metrics.listen.is_empty();
        let api_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(api_state.clone())
                .wrap(from_fn(require_key))
                .wrap(from_fn(edge))
                .configure(|cfg| routes::configure(cfg, serve_metrics))
                .default_service(web::to(routes::unsupported::not_found))
        })
        .on_connect(crate::disconnect::on_connect)
        .workers(workers)
        .keep_alive(Duration::from_secs(settings.server.keep_alive_seconds))
        .client_request_timeout(Duration::from_millis(
            settings.server.client_header_timeout_ms,
        ))
        .client_disconnect_timeout(Duration::from_secs(1))
        // actix's own hard stop comes a little after our grace period, which
        // cancels the remaining generations first (see run_until_stopped).
        .shutdown_timeout(grace.as_secs() + SHUTDOWN_MARGIN_SECONDS)
        .disable_signals()
        .listen(listener)
        .map_err(|source| StartupError::Bind {
            what: "server.listen",
            addr: settings.server.listen.clone(),
            source,
        })?
        .run();

        let (admin, admin_port) = if settings.metrics.enabled && !settings.metrics.listen.is_empty()
        {
            let listener = bind("metrics.listen", &settings.metrics.listen)?;
            let admin_port = listener.local_addr().map(|a| a.port()).ok();
            let admin_state = state.clone();
            let admin = HttpServer::new(move || {
                App::new()
                    .app_data(admin_state.clone())
                    .wrap(from_fn(edge))
                    .configure(routes::configure_admin)
                    .default_service(web::to(routes::unsupported::not_found))
            })
            .workers(1)
            .shutdown_timeout(1)
            .disable_signals()
            .listen(listener)
            .map_err(|source| StartupError::Bind {
                what: "metrics.listen",
                addr: settings.metrics.listen.clone(),
                source,
            })?
            .run();
            (Some(admin), admin_port)
        } else {
            (None, None)
        };

        Ok(Self {
            server,
            admin,
            port,
            admin_port,
            gateway,
            grace,
            _runtime: runtime,
        })
    }

    /// The API port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin (metrics) port, when `metrics.listen` is set.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_port
    }

    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// A handle that stops the API server (graceful when asked).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serve until SIGTERM/SIGINT (or a handle's `stop`): stop accepting,
    /// give in-flight requests `server.shutdown_grace_seconds`, then cancel
    /// what remains upstream and wait briefly for those cancellations.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let admin_handle = self.admin.as_ref().map(Server::handle);
        let admin = async {
            match self.admin {
                Some(admin) => admin.await,
                None => Ok(()),
            }
        };
        let servers = futures_util::future::try_join(self.server, admin);
        tokio::pin!(servers);
        let result = tokio::select! {
            r = &mut servers => r,
            signal = shutdown_signal() => {
                tracing::info!(signal, grace_seconds = self.grace.as_secs(), "shutting down: finishing in-flight requests");
                // The servers must keep being polled while they stop.
                let stop = async {
                    if let Some(h) = &admin_handle {
                        h.stop(true).await;
                    }
                    handle.stop(true).await;
                };
                let stopping = async { tokio::join!(stop, &mut servers).1 };
                tokio::pin!(stopping);
                tokio::select! {
                    r = &mut stopping => r,
                    _ = tokio::time::sleep(self.grace) => {
                        // Grace is over: cancel what is still generating, so
                        // its clients get a retryable 503 rather than a reset,
                        // and fal stops working on it.
                        tracing::warn!(
                            in_flight = self.gateway.flights.len(),
                            "grace period over: cancelling the remaining generations"
                        );
                        self.gateway.shutdown.cancel();
                        stopping.await
                    }
                }
            }
        };
        self.gateway.shutdown(Duration::from_secs(10)).await;
        tracing::info!("stopped");
        result.map(|_| ())
    }
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT");
                std::future::pending().await
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}

fn announce(settings: &Settings, kind: BackendKind, state: &AppState) {
    match kind {
        BackendKind::Local => tracing::warn!(
            "\n************************************************************************\n\
             *  OFFLINE MODE: no FAL_KEY is set, so images come from the built-in  *\n\
             *  local renderer (deterministic pictures, not Imagen 4). Set FAL_KEY *\n\
             *  (and optionally IMAGE_GATEWAY__BACKEND=fal) to generate with fal.  *\n\
             ************************************************************************"
        ),
        BackendKind::Fal => tracing::info!(
            queue_url = %settings.fal.queue_url,
            run_url = %settings.fal.run_url,
            mode = ?settings.fal.mode,
            "using fal.ai"
        ),
    }
    if state.auth.is_open() {
        tracing::warn!(
            "no client API keys are configured (auth.api_keys): the gateway is open to anyone who can reach it"
        );
    }
    tracing::info!(
        listen = %settings.server.listen,
        backend = kind.as_str(),
        cache = settings.cache.enabled,
        redis = settings.cache.redis_url.is_set(),
        models = state.catalog.models().len(),
        version = env!("CARGO_PKG_VERSION"),
        "image-gateway starting"
    );
}
