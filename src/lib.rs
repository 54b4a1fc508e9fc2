//! image-gateway: OpenAI's Images API in front of Google's Imagen 4 on fal.ai.
//!
//! `main.rs` only parses flags and calls [`app::Application`]; everything
//! else lives here so the tests build the very same app.
//!
//! - [`domain`]: the gateway's own vocabulary (formats, catalog, plan, jobs,
//!   generations); imports nothing of ours but the error type.
//! - [`openai`]: the OpenAI contract (request, validation, JSON, events).
//! - [`config`]: layered settings, validation, secrets.
//! - [`service`]: lookup, single-flight, limits, running jobs.
//! - [`cache`]: key, directives, memory (L1), Redis (L2) and its codec.
//! - [`backend`]: the `ImageBackend` trait, `fal` and `local`.
//! - [`http`]: route table, middleware, handlers; [`app`]: wiring, listeners,
//!   shutdown, the `keys` commands.
//! - [`store`]: the database of keys, budgets and the spend ledger;
//!   [`keys`]: database keys on the hot path; [`admin`]: the admin API's
//!   JSON.

pub mod admin;
pub mod alloc;
pub mod app;
pub mod auth;
pub mod backend;
pub mod cache;
pub mod config;
pub mod domain;
pub mod error;
pub mod files;
pub mod http;
pub mod keys;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod openai;
pub mod service;
pub mod spend;
pub mod store;
pub mod telemetry;

/// Install the process-wide TLS provider (ring) for reqwest's rustls.
/// Idempotent; call once before building an [`app::Application`].
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
