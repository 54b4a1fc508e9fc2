//! The route table, and nothing else: paths and their handlers.

use actix_web::web;

pub mod files;
pub mod generations;
pub mod health;
pub mod metrics;
pub mod models;
pub mod unsupported;

/// Every API path is served with and without the `/v1` prefix, because a
/// client whose base URL lacks `/v1` sends `POST /images/generations`.
pub const API_PREFIXES: [&str; 2] = ["/v1", ""];

/// The API routes. `/metrics` is added only when it is served on this
/// listener (not on a separate admin address).
pub fn configure(cfg: &mut web::ServiceConfig, serve_metrics: bool) {
    for p in API_PREFIXES {
        cfg.route(
            &format!("{p}/images/generations"),
            web::post().to(generations::create),
        )
        .route(
            &format!("{p}/images/edits"),
            web::post().to(unsupported::edits),
        )
        .route(
            &format!("{p}/images/variations"),
            web::post().to(unsupported::variations),
        )
        .route(
            &format!("{p}/images/files/{{name}}"),
            web::get().to(files::get),
        )
        .route(&format!("{p}/models"), web::get().to(models::list))
        .route(
            &format!("{p}/models/{{model}}"),
            web::get().to(models::retrieve),
        );
    }
    cfg.route("/healthz", web::get().to(health::live))
        .route("/readyz", web::get().to(health::ready));
    if serve_metrics {
        cfg.route("/metrics", web::get().to(metrics::render));
    }
}

/// The admin listener: metrics and probes only.
pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics::render))
        .route("/healthz", web::get().to(health::live))
        .route("/readyz", web::get().to(health::ready));
}
