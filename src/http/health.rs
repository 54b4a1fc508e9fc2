//! Probes: `/healthz` says the process serves HTTP; `/readyz` says it can
//! take generations, and reports the backend in use, the state of the
//! shared Redis cache and the fal endpoints marked gone (neither ever makes
//! it unready: other endpoints and models still serve).

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use crate::config::FalMode;
use crate::domain::BackendKind;
use crate::service::chain::GONE_HINT;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let service = &state.service;
    let backend = service.backend_kind();
    let body = json!({
        "status": if service.is_draining() { "shutting_down" } else { "ready" },
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
        // Endpoints that answered 404/410 lately, skipped until retry.
        "endpoints_gone": service
            .gone_endpoints()
            .into_iter()
            .map(|(endpoint, seconds)| json!({"endpoint": endpoint, "retry_in_seconds": seconds}))
            .collect::<Vec<_>>(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    let mut body = body;
    if !service.gone_endpoints().is_empty() {
        body["endpoints_gone_hint"] = json!(format!(
            "To keep serving the models behind these endpoints, {GONE_HINT}."
        ));
    }
    // From the first moment of shutdown, so load balancers stop sending.
    if service.is_draining() {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}
