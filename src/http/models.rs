//! `GET /v1/models` and `GET /v1/models/{model}` in OpenAI's shape, listing
//! every public id and alias with the fal endpoint behind it.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::AppState;
use crate::domain::Model;
use crate::error::ApiError;

/// A fixed `created` (2025-05-20, Imagen 4's release) so answers are stable.
const CREATED: i64 = 1_747_699_200;

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
    /// Extensions the SDKs keep as extra fields.
    endpoint: &'a str,
    backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    alias_of: Option<&'a str>,
}

fn object<'a>(name: &'a str, model: &'a Model, state: &AppState) -> ModelObject<'a> {
    ModelObject {
        id: name,
        object: "model",
        created: CREATED,
        owned_by: "fal-ai",
        endpoint: model.endpoint().full(),
        backend: state.service.backend_kind().as_str(),
        alias_of: (name != model.id).then_some(model.id.as_str()),
    }
}

pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    let data: Vec<ModelObject<'_>> = state
        .catalog
        .names()
        .map(|(name, model)| object(name, model, &state))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({"object": "list", "data": data}))
}

pub async fn retrieve(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let model = state
        .catalog
        .resolve(&name)
        .ok_or_else(|| ApiError::ModelNotFound {
            model: name.chars().take(64).collect(),
        })?;
    let canonical = state
        .catalog
        .names()
        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        .map_or(model.id.as_str(), |(n, _)| n);
    Ok(HttpResponse::Ok().json(object(canonical, model, &state)))
}
