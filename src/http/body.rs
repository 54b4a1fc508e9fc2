//! Reading a JSON request body: the content type, and the body itself
//! bounded in size and in the time the client takes to send it.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::error::ApiError;
use crate::memory::{MemoryBudget, Reservation};

/// JSON only; a missing `Content-Type` is read as JSON too.
pub fn check_json_content_type(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json") => Ok(()),
        Some(e) if e.starts_with("application/") && e.ends_with("+json") => Ok(()),
        _ => Err(ApiError::invalid_body(
            "Invalid Content-Type header: this endpoint accepts only application/json bodies.",
        )),
    }
}

/// The body, at most `limit` bytes, received within `timeout`, and its
/// room in the memory budget (its declared length, or `limit` when it
/// declares none): a 429 when the budget has none.
pub async fn read(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
    memory: &Arc<MemoryBudget>,
) -> Result<(Bytes, Reservation), ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let room = memory.try_reserve(declared.unwrap_or(limit as u64))?;
    let read = async {
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit as u64) as usize);
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| match e {
                actix_web::error::PayloadError::Overflow => ApiError::PayloadTooLarge { limit },
                _ => ApiError::invalid_body("The request body could not be read."),
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    let body = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ApiError::RequestTimeout)??;
    Ok((body, room))
}
