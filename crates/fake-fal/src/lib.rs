//! A stand-in for fal.ai that speaks fal's queue protocol and the input
//! schemas of the model endpoints the gateway knows (PROTOCOLS.md sections
//! B and C: Imagen 4, nano-banana-2 and -pro, FLUX.1 schnell and dev, FLUX.2
//! pro, Seedream 4; `models`) on loopback, for image-gateway's
//! integration tests, SDK end-to-end tests and benchmarks. It knows fal's
//! wire format from its own definitions (`wire`) and nothing of the
//! gateway's code, so a gateway that gets fal's values wrong fails against it.
//!
//! - `POST /<endpoint id>` submit, `GET /<owner>/<alias>/requests/<id>/status`
//!   (and `/status/stream`, with a `: keep-alive` comment every
//!   `stream_keepalive_ms`), `GET .../requests/<id>` result, `PUT .../cancel`
//!   (202 `CANCELLATION_REQUESTED`, 400 `ALREADY_COMPLETED`, 404 `NOT_FOUND`).
//!   Request routes are also served under one more leading segment
//!   (`workflows/<owner>/<alias>/...`, or an advertised base's path); the
//!   `status_url`, `response_url` and `cancel_url` a submit answers work, as
//!   fal's official clients expect (tests/sdk drives them against it).
//! - Like fal: every answer carries its own `x-fal-request-id`; a failed job
//!   says COMPLETED with `error`/`error_type` and its result answers the
//!   model's error; a cancelled job's result is a 499; a job still queued
//!   when its `X-Fal-Request-Timeout` passes fails with a 504
//!   `X-Fal-Request-Timeout-Type: user`; a result (or sync run) answer says
//!   `X-Fal-Billable-Units` (`billable_units_per_image` per image, 1 by
//!   default, as fal bills Imagen).
//! - `POST /run/<endpoint id>` plays fal's synchronous host (`run_url` =
//!   `http://host:port/run`).
//! - `GET /files/<name>` serves the images of non-sync answers.
//! - Each endpoint delivers its own sizes (Imagen's 1408x768 for 16:9,
//!   nano-banana's 1264x848 for 3:2, FLUX's exact `image_size`), rejects
//!   what its schema rejects (422 in fal's shape), and answers 404 when fal
//!   has no such application. An endpoint can be made gone (404 or 410
//!   `EndpointDeprecated`), failing, full (429) or slow to start
//!   (`endpoints`, [`FakeFal::set_endpoint`]).
//! - Control: `GET /_fake/calls`, `GET /_fake/counts`, `POST /_fake/faults`,
//!   `POST /_fake/config`, `POST /_fake/endpoints`, `POST /_fake/reset`.
//!
//! Every call is counted and (unless `record` is off) recorded with its body
//! and `Authorization` header; faults can be injected per operation.

mod control;
mod endpoints;
mod models;
mod render;
mod server;
mod state;
mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

pub use control::{Call, FakeConfig, Fault, FaultAction, Op};
pub use endpoints::EndpointMode;
use state::{State, lock};

/// Request bodies up to this size are read (fal's inputs are small; the
/// limit only keeps a hostile test from exhausting memory).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Connections waiting to be accepted.
const LISTEN_BACKLOG: u32 = 8192;

/// A running fake fal server. Clones share it (several gateways can stand
/// in front of one fake).
#[derive(Clone)]
pub struct FakeFal {
    state: Arc<State>,
    port: u16,
    handle: ServerHandle,
}

impl FakeFal {
    /// Start on `addr` (use `127.0.0.1:0` for a free port) inside the current
    /// actix system.
    pub fn start(addr: &str, config: FakeConfig, workers: usize) -> std::io::Result<Self> {
        let state = Arc::new(State::default());
        *lock(&state.config) = config;
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
                .configure(control::routes)
                .configure(server::routes)
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(0)
        // A gateway under a burst opens thousands of connections at once
        // (the benchmark's 4096 concurrent jobs); the standard library's
        // backlog of 128 would drop most (the kernel caps it at
        // net.core.somaxconn).
        .backlog(LISTEN_BACKLOG)
        .bind(addr)?;
        let port = server
            .addrs()
            .first()
            .map(|a| a.port())
            .ok_or_else(|| std::io::Error::other("fake-fal: bound no address"))?;
        state.port.store(port, Ordering::Relaxed);
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(Self {
            state,
            port,
            handle,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `fal.queue_url` for the gateway.
    pub fn queue_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `fal.run_url` for the gateway.
    pub fn run_url(&self) -> String {
        format!("http://127.0.0.1:{}/run", self.port)
    }

    /// Calls of one operation so far (counted even when `record` is off).
    pub fn count(&self, op: Op) -> u64 {
        self.state.count(op)
    }

    /// Every recorded call, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state.calls).clone()
    }

    /// Bodies of every submit (or sync run) so far.
    pub fn submitted_bodies(&self) -> Vec<serde_json::Value> {
        lock(&self.state.calls)
            .iter()
            .filter(|c| matches!(c.op, Op::Submit | Op::Run))
            .filter_map(|c| c.body.clone())
            .collect()
    }

    /// Replace the behaviour knobs (as `POST /_fake/config` does).
    pub fn configure(&self, config: FakeConfig) {
        *lock(&self.state.config) = config;
        self.state.changed();
    }

    /// Make `endpoint` (`owner/alias[/path]`) behave as `mode` (gone,
    /// failing, out of capacity, slow) until changed or reset.
    pub fn set_endpoint(&self, endpoint: &str, mode: EndpointMode) {
        lock(&self.state.endpoints).insert(endpoint.to_owned(), mode);
    }

    pub fn inject(&self, fault: Fault) {
        lock(&self.state.faults).push_back(fault);
    }

    /// Jobs cancelled through `PUT .../cancel`.
    pub fn cancelled_jobs(&self) -> usize {
        self.state.cancelled_jobs()
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}
