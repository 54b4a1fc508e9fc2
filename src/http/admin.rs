//! The admin API (`/admin/v1/...`): keys and spend. The middleware lets a
//! request through only with the admin key (see `routes::Access::Admin`);
//! the JSON is `crate::admin`'s, shared with the `image-gateway keys`
//! commands. A change to the key table is seen by every replica at once.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::{AppState, body};
use crate::admin;
use crate::error::ApiError;
use crate::metrics::DbOp;
use crate::store::{StoreError, now};

/// Admin bodies are a few fields.
const MAX_BODY_BYTES: usize = 64 * 1024;

fn store_error(state: &AppState) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::Internal,
        e => {
            tracing::error!(error = %e, "admin API: database failure");
            state.metrics.database_error(DbOp::Admin);
            ApiError::StoreUnavailable
        }
    }
}

fn no_such_key(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!(
            "No API key with id `{}`.",
            id.chars().take(64).collect::<String>()
        ),
    }
}

async fn json_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Value, ApiError> {
    body::check_json_content_type(req)?;
    let (bytes, _room) = body::read(
        req,
        payload,
        MAX_BODY_BYTES,
        state.body_timeout,
        state.service.memory(),
    )
    .await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_body(format!("The request body is not valid JSON: {e}")))
}

/// `POST /admin/v1/keys`: 201 with the key and, once only, its secret.
pub async fn create_key(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = json_body(&req, payload, &state).await?;
    let at = now();
    let new = admin::new_key(&body, &state.catalog, at)?;
    let (record, secret) = state
        .keys
        .store()
        .create_key(new)
        .await
        .map_err(store_error(&state))?;
    state.keys.key_made();
    tracing::info!(key_id = %record.id, "admin API: key created");
    let mut out = admin::key_json(&record, at);
    out["key"] = Value::String(secret);
    Ok(HttpResponse::Created().json(out))
}

/// `GET /admin/v1/keys`: every key, revoked ones included, no secrets.
pub async fn list_keys(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let keys = state
        .keys
        .store()
        .keys()
        .await
        .map_err(store_error(&state))?;
    let at = now();
    let data: Vec<Value> = keys.iter().map(|k| admin::key_json(k, at)).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// `GET /admin/v1/keys/{id}`, with its spend in the current period.
pub async fn get_key(
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = state
        .keys
        .store()
        .key(&id)
        .await
        .map_err(store_error(&state))?;
    let key = key.ok_or_else(|| no_such_key(&id))?;
    Ok(HttpResponse::Ok().json(admin::key_json(&key, now())))
}

/// `PATCH /admin/v1/keys/{id}`: change the fields given (`null` clears).
pub async fn update_key(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = json_body(&req, payload, &state).await?;
    let at = now();
    let patch = admin::key_patch(&body, &state.catalog, at)?;
    let store = state.keys.store();
    let key = if patch.is_empty() {
        store.key(&id).await
    } else {
        store.update_key(&id, patch).await
    }
    .map_err(store_error(&state))?
    .ok_or_else(|| no_such_key(&id))?;
    state.keys.invalidate_all();
    tracing::info!(key_id = %key.id, "admin API: key updated");
    Ok(HttpResponse::Ok().json(admin::key_json(&key, at)))
}

/// `DELETE /admin/v1/keys/{id}`: revoke it, at once and for good.
pub async fn revoke_key(
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = state
        .keys
        .store()
        .revoke_key(&id)
        .await
        .map_err(store_error(&state))?
        .ok_or_else(|| no_such_key(&id))?;
    state.keys.invalidate_all();
    tracing::info!(key_id = %key.id, "admin API: key revoked");
    Ok(HttpResponse::Ok().json(admin::key_json(&key, now())))
}

/// `GET /admin/v1/spend?group_by=key|model|day&from=&to=&key=`.
pub async fn spend(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|_| ApiError::invalid_body("The query string could not be read."))?;
    let q = admin::spend_query(query.iter().map(|(k, v)| (k.as_str(), v.as_str())), now())?;
    let rows = state
        .keys
        .store()
        .spend(q.clone())
        .await
        .map_err(store_error(&state))?;
    Ok(HttpResponse::Ok().json(admin::spend_json(&q, &rows)))
}
