//! `GET /metrics`: the Prometheus text format.

use actix_web::{HttpResponse, web};

use super::AppState;

pub async fn render(state: web::Data<AppState>) -> HttpResponse {
    let service = &state.service;
    if let Some((entries, bytes)) = service.cache_usage().await {
        state.metrics.cache_entries.set(entries as i64);
        state.metrics.cache_size.set(bytes as i64);
    }
    let (files, file_bytes) = service.files().usage().await;
    state.metrics.files_entries.set(files as i64);
    state.metrics.files_size.set(file_bytes as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
