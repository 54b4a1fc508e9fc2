//! Probes: `/healthz` says the process serves HTTP; `/readyz` says it can
//! take generations, and reports the backend in use and the state of the
//! shared Redis cache (which never makes it unready).

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::state::AppState;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let gw = &state.gateway;
    let body = json!({
        "status": if gw.shutdown.is_cancelled() { "shutting_down" } else { "ready" },
        "backend": state.backend.as_str(),
        "fal_mode": match state.backend {
            crate::settings::BackendKind::Fal => Some(match state.fal_mode {
                crate::settings::FalMode::Queue => "queue",
                crate::settings::FalMode::Sync => "sync",
            }),
            crate::settings::BackendKind::Local => None,
        },
        "offline": state.backend == crate::settings::BackendKind::Local,
        "cache": gw.cache.is_some(),
        // The shared cache is optional: its state is reported, and never
        // makes the replica unready.
        "redis": match &gw.l2 {
            None => "disabled",
            Some(l2) if l2.is_up() => "up",
            Some(_) => "down",
        },
        "in_flight_generations": gw.flights.len(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    if gw.shutdown.is_cancelled() {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}
