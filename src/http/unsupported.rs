//! Routes the SDKs offer that Imagen 4 cannot serve, and the fallback for
//! unknown paths: clear OpenAI-shaped errors instead of HTML or empty 404s.

use actix_web::HttpRequest;

use crate::error::ApiError;

pub async fn edits() -> Result<&'static str, ApiError> {
    Err(ApiError::Unsupported {
        message: "Image edits are not supported: the Imagen 4 models behind this gateway only generate images from a prompt. Use POST /v1/images/generations.",
    })
}

pub async fn variations() -> Result<&'static str, ApiError> {
    Err(ApiError::Unsupported {
        message: "Image variations are not supported: the Imagen 4 models behind this gateway only generate images from a prompt. Use POST /v1/images/generations.",
    })
}

/// Any path no route matched, as OpenAI words it.
pub async fn not_found(req: HttpRequest) -> Result<&'static str, ApiError> {
    let path: String = req.path().chars().take(200).collect();
    Err(ApiError::NotFound {
        message: format!("Invalid URL ({} {path})", req.method()),
    })
}
