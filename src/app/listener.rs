//! The API listener, put together from actix's parts rather than
//! `HttpServer`, so that each client connection's socket can be wrapped
//! ([`ClientIo`]: a write timeout, OpenAI-shaped protocol errors) and the
//! number of open connections capped (`server.max_connections`).

use std::net::TcpListener;
use std::time::Duration;

use actix_http::HttpService;
use actix_service::{ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::{AppConfig, Server};
use actix_web::middleware::from_fn;
use actix_web::rt::net::TcpStream;
use actix_web::{App, web};

use super::{SHUTDOWN_MARGIN_SECONDS, StartupError};
use crate::config::Settings;
use crate::http::AppState;
use crate::http::connection::{ClientIo, LocalAddr};
use crate::http::middleware::{edge, require_key};
use crate::http::{disconnect, routes, unsupported};

/// Time a client gets, after the server decided to close its connection, to
/// read what was written before the socket is closed.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The API server: every route behind the edge and auth middleware, on
/// `workers` threads, with at most `server.max_connections` connections.
pub fn api_server(
    settings: &Settings,
    state: web::Data<AppState>,
    listener: TcpListener,
    workers: usize,
    grace: Duration,
) -> Result<Server, StartupError> {
    let serve_metrics = settings.metrics.enabled && settings.metrics.listen.is_empty();
    let addr = listener
        .local_addr()
        .map_err(|source| bind_error(settings, source))?;
    let keep_alive = Duration::from_secs(settings.server.keep_alive_seconds);
    let head_timeout = Duration::from_millis(settings.server.client_header_timeout_ms);
    let write_timeout = Duration::from_secs(settings.server.client_write_timeout_seconds);
    // actix caps connections per worker thread.
    let per_worker = settings
        .server
        .max_connections
        .div_ceil(workers.max(1))
        .max(1);
    let timeouts = state.metrics.client_write_timeouts.clone();

    let builder = Server::build();
    let shutdown_signal = builder.graceful_shutdown_signal();
    let server = builder
        .workers(workers)
        .max_concurrent_connections(per_worker)
        // actix's own hard stop comes a little after our grace period, which
        // cancels the remaining generations first (see `shutdown`).
        .shutdown_timeout(grace.as_secs() + SHUTDOWN_MARGIN_SECONDS)
        .disable_signals()
        .listen("api", listener, move || {
            let state = state.clone();
            let app = App::new()
                .app_data(state)
                .wrap(from_fn(require_key))
                .wrap(from_fn(edge))
                .configure(|cfg| routes::configure(cfg, serve_metrics))
                .default_service(web::to(unsupported::not_found));
            let signal = shutdown_signal.clone();
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = signal.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(keep_alive)
                .client_request_timeout(head_timeout)
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .local_addr(addr)
                .on_connect_ext(|io: &ClientIo, ext: &mut _| {
                    disconnect::on_connect(io, ext);
                    if let Ok(addr) = io.local_addr() {
                        ext.insert(LocalAddr(addr));
                    }
                })
                .h1(map_config(app, |()| AppConfig::default()));
            let timeouts = timeouts.clone();
            fn_service(move |tcp: TcpStream| {
                let peer = tcp.peer_addr().ok();
                let _ = tcp.set_nodelay(true);
                let io = ClientIo::new(tcp, write_timeout, timeouts.clone());
                async move { Ok::<_, actix_http::error::DispatchError>((io, peer)) }
            })
            .and_then(http)
        })
        .map_err(|source| bind_error(settings, source))?
        .run();
    Ok(server)
}

fn bind_error(settings: &Settings, source: std::io::Error) -> StartupError {
    StartupError::Bind {
        what: "server.listen",
        addr: settings.server.listen.clone(),
        source,
    }
}
