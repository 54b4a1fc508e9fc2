//! `GET /v1/images/files/{name}`: images the gateway holds itself, linked
//! from `url` answers.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use super::AppState;
use crate::error::ApiError;

pub async fn get(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let files = state.service.files();
    let file = files.get(&name).await.ok_or_else(|| ApiError::NotFound {
        message: "No such image: it may have expired (see files.ttl_seconds).".into(),
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, file.format.content_type()))
        // Served as the type its bytes are, and never sniffed as another.
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::CACHE_CONTROL,
            format!("private, max-age={}, immutable", files.ttl().as_secs()),
        ))
        .body(file.bytes))
}
