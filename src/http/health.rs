//! Probes: `/healthz` says the process serves HTTP; `/readyz` says it can
//! take generations, and reports the backend in use and the state of the
//! shared Redis cache (which never makes it unready).

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use crate::config::FalMode;
use crate::domain::BackendKind;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let service = &state.service;
    let backend = service.backend_kind();
    let body = json!({
        "status": if service.is_stopping() { "shutting_down" } else { "ready" },
        "backend": backend.as_str(),
        "fal_mode": match backend {
            BackendKind::Fal => Some(match state.fal_mode {
                FalMode::Queue => "queue",
                FalMode::Sync => "sync",
            }),
            BackendKind::Local => None,
        },
        "offline": backend == BackendKind::Local,
        "cache": service.cache_enabled(),
        "cache_mode": state.cache_mode.as_str(),
        // The shared cache is optional: its state is reported, and never
        // makes the replica unready.
        "redis": match service.shared_cache_up() {
            None => "disabled",
            Some(true) => "up",
            Some(false) => "down",
        },
        "in_flight_generations": service.in_flight(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    if service.is_stopping() {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}
