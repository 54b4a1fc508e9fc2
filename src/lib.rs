//! image-gateway: OpenAI's Images API in front of Google's Imagen 4 on fal.ai.
//!
//! `main.rs` only parses flags and calls [`startup::Application`]; everything
//! else lives here so the tests build the very same app.

pub mod auth;
pub mod backend;
pub mod cache;
pub mod disconnect;
pub mod error;
pub mod files;
pub mod gateway;
pub mod limits;
pub mod mapping;
pub mod metrics;
pub mod middleware;
pub mod openai;
pub mod redis_cache;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod state;
pub mod stream;
pub mod telemetry;

/// Install the process-wide TLS provider (ring) for reqwest's rustls.
/// Idempotent; call once before building an [`startup::Application`].
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
