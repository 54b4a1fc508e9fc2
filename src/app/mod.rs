//! The application: shared state built once ([`wiring`]), the API listener,
//! the optional admin listener, and graceful shutdown ([`shutdown`]).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::domain::{BackendKind, Date, date};
use crate::http::AppState;
use crate::http::middleware::edge;
use crate::http::{routes, unsupported};
use crate::metrics::Metrics;
use crate::service::GenerationService;

pub mod cli;
mod listener;
mod shutdown;
mod wiring;

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

/// Owns the background runtime: work that must outlive the HTTP workers
/// (cancelling fal jobs, the spend ledger's writer, key-change watching,
/// the Redis probe). Flights run on the workers. Shut down in the
/// background on drop, so dropping it inside async code (tests) is safe.
struct UpstreamRuntime(Option<tokio::runtime::Runtime>);

impl UpstreamRuntime {
    fn start(threads: usize) -> Result<Self, StartupError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("upstream")
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
            .map_err(|e| StartupError::Setup(format!("cannot start the upstream runtime: {e}")))
    }

    fn handle(&self) -> Result<tokio::runtime::Handle, StartupError> {
        self.0
            .as_ref()
            .map(|rt| rt.handle().clone())
            .ok_or_else(|| StartupError::Setup("no upstream runtime".into()))
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
    service: Arc<GenerationService>,
    grace: Duration,
    _runtime: UpstreamRuntime,
}

/// A listening socket on `addr` (the first of its addresses that binds)
/// with a queue of `backlog` connection attempts, as `TcpListener::bind`
/// makes it but for the backlog (the standard library's is 128).
fn bind(what: &'static str, addr: &str, backlog: u32) -> Result<TcpListener, StartupError> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::ToSocketAddrs;

    let listen = |addr: std::net::SocketAddr| -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        Ok(socket.into())
    };
    let mut last = None;
    let resolved = addr
        .to_socket_addrs()
        .map_err(|source| StartupError::Bind {
            what,
            addr: addr.to_owned(),
            source,
        })?;
    for candidate in resolved {
        match listen(candidate) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(StartupError::Bind {
        what,
        addr: addr.to_owned(),
        source: last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
        }),
    })
}

/// Backlog of the admin listener (metrics and probes).
const ADMIN_BACKLOG: u32 = 1024;

impl Application {
    /// Build everything and bind the listeners (port 0 picks a free port).
    /// Must be called inside an actix system (`#[actix_web::main]` or
    /// `#[actix_web::test]`).
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let metrics = Arc::new(Metrics::new());
        let kind = settings.backend_kind();
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), kind.as_str()])
            .set(1);
        // One thread: its work waits on the network and the database.
        let runtime = UpstreamRuntime::start(1)?;
        let (store, has_keys) = wiring::database(&settings, &runtime.handle()?)?;
        let service = wiring::service(
            &settings,
            &metrics,
            &store,
            runtime.handle()?,
            TaskTracker::new(),
        )?;
        let keys = wiring::key_directory(
            &settings,
            store,
            has_keys,
            metrics.clone(),
            &runtime.handle()?,
            service.stopping_token(),
        );
        let state = wiring::state(&settings, service.clone(), keys, metrics)?;
        log_start(&settings, kind, &state);

        raise_open_file_limit(&settings);
        let listener = bind(
            "server.listen",
            &settings.server.listen,
            settings.server.listen_backlog,
        )?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "listening on {addr}");
        }
        let grace = Duration::from_secs(settings.server.shutdown_grace_seconds);
        let workers = match settings.server.workers {
            0 => cores,
            n => n,
        };
        let server = listener::api_server(&settings, state.clone(), listener, workers, grace)?;
        let (admin, admin_port) = match admin_listener(&settings)? {
            Some(listener) => {
                let admin_port = listener.local_addr().map(|a| a.port()).ok();
                (Some(admin_server(&settings, state, listener)?), admin_port)
            }
            None => (None, None),
        };
        Ok(Self {
            server,
            admin,
            port,
            admin_port,
            service,
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

    pub fn service(&self) -> Arc<GenerationService> {
        self.service.clone()
    }

    /// A handle that stops the API server (graceful when asked).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serve until SIGTERM/SIGINT (or a handle's `stop`): stop accepting,
    /// give in-flight requests `server.shutdown_grace_seconds`, then cancel
    /// what remains upstream and wait briefly for those cancellations.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        shutdown::serve_until_stopped(self.server, self.admin, &self.service, self.grace).await
    }
}

/// Raise the soft limit on open files to the hard limit (as Go's runtime
/// does): every client connection and every running job's upstream
/// connection is a file, and distributions often start services with a
/// soft limit of 1024. Warn when even the hard limit is short of what the
/// settings allow at once.
fn raise_open_file_limit(settings: &Settings) {
    let needed =
        settings.server.max_connections as u64 + settings.limits.max_concurrent_jobs as u64 + 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-file limit is below server.max_connections + limits.max_concurrent_jobs: \
             connections past it fail; raise it (ulimit -n, LimitNOFILE=) or lower those settings"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

/// The admin listener's socket, when `/metrics` has an address of its own.
fn admin_listener(settings: &Settings) -> Result<Option<TcpListener>, StartupError> {
    if settings.metrics.enabled && !settings.metrics.listen.is_empty() {
        bind("metrics.listen", &settings.metrics.listen, ADMIN_BACKLOG).map(Some)
    } else {
        Ok(None)
    }
}

/// The admin listener: metrics and probes, no auth.
fn admin_server(
    settings: &Settings,
    state: web::Data<AppState>,
    listener: TcpListener,
) -> Result<Server, StartupError> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(edge))
            .configure(routes::configure_admin)
            .default_service(web::to(unsupported::not_found))
    })
    .workers(1)
    .shutdown_timeout(1)
    .disable_signals()
    .listen(listener)
    .map_err(|source| StartupError::Bind {
        what: "metrics.listen",
        addr: settings.metrics.listen.clone(),
        source,
    })?;
    Ok(server.run())
}

/// The start-up log: the offline banner, an open-gateway warning, and what
/// runs.
fn log_start(settings: &Settings, kind: BackendKind, state: &AppState) {
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
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    if state.auth.is_open() && !state.keys.has_keys() {
        tracing::warn!(
            "no client API keys exist (auth.api_keys, or keys made with the admin API or `image-gateway keys create`): the gateway is open to anyone who can reach it"
        );
    }
    tracing::info!(
        database = state.keys.store().dialect().as_str(),
        location = %state.keys.store().location(),
        admin_api = state.admin.is_enabled(),
        "keys and spend ledger"
    );
    tracing::info!(
        listen = %settings.server.listen,
        backend = kind.as_str(),
        cache = settings.cache.mode.as_str(),
        redis = settings.cache.redis_url.is_set(),
        models = state.catalog.models().len(),
        version = env!("CARGO_PKG_VERSION"),
        "image-gateway starting"
    );
    warn_lifecycle(state, date::today());
}

/// A warning per model past its `deprecated` date (its answers carry
/// `Deprecation`) and per endpoint past its `sunset` (skipped).
fn warn_lifecycle(state: &AppState, today: Date) {
    for model in state.catalog.models() {
        let lifecycle = model.announced_lifecycle();
        if let Some(deprecated) = lifecycle
            .deprecated
            .filter(|_| lifecycle.is_deprecated(today))
        {
            tracing::warn!(
                model = model.id.as_str(),
                deprecated = %deprecated,
                sunset = lifecycle.sunset.map(|d| d.to_string()).unwrap_or_default(),
                endpoints = model.chain.len(),
                "model is deprecated (its answers carry Deprecation); plan its successor, see docs/models.md"
            );
        }
        for profile in &model.chain {
            if profile.lifecycle.is_sunset(today) {
                tracing::warn!(
                    model = model.id.as_str(),
                    endpoint = profile.endpoint.full(),
                    "endpoint is past its sunset date and is skipped in its chain"
                );
            }
        }
    }
}
