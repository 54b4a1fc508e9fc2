//! The two middlewares every request passes:
//! - `edge` (outermost): request id, HTTP metrics by route pattern, the
//!   `x-request-id` and `openai-processing-ms` headers, one log line per
//!   request at a level chosen by status class, and errors rendered as
//!   OpenAI-shaped responses (so the headers land on errors too).
//! - `require_key`: deny-by-default client auth when keys exist (configured
//!   in `auth.api_keys` or made in the database), by each path's policy in
//!   the route table; the admin API takes the admin key only.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};

use super::AppState;
use super::routes::{Access, access_of};
use crate::auth::{self, ClientId, DbKey};
use crate::error::ApiError;
use crate::store::keys::secret_digest;

/// The id of one request, as the client sent it or as generated here.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static PROCESSING_MS: HeaderName = HeaderName::from_static("openai-processing-ms");

/// A client's id is kept if it is short, printable ASCII without spaces.
fn valid_request_id(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).then_some(s)
}

/// 128 random bits in OpenAI's `req_<32 hex>` shape. A request id is a
/// label, not a secret, so it comes from the thread-local fastrand generator
/// rather than a getrandom(2) system call per request (as `Uuid::new_v4` does).
pub(crate) fn new_request_id() -> String {
    format!("req_{:032x}", fastrand::u128(..))
}

fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Decrements the in-flight gauge even when the client goes away and the
/// request future is dropped.
struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(valid_request_id)
        .map_or_else(new_request_id, str::to_owned);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let _in_flight = state.as_ref().map(|s| {
        s.metrics.http_in_flight.inc();
        InFlight(s.metrics.http_in_flight.clone())
    });
    let method = method_label(req.method());

    // Handlers' and extractors' errors arrive as responses; an `Err` here
    // would be an actix-internal failure, which actix renders itself. (The
    // request cannot be cloned before routing: the router needs it unshared.)
    let mut res = next.call(req).await?.map_into_boxed_body();

    let elapsed = started.elapsed();
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = res.status();
    if let Some(state) = &state {
        state
            .metrics
            .http_requests
            .with_label_values(&[&route, method, status.as_str()])
            .inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[&route, method])
            .observe(elapsed.as_secs_f64());
    }
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    headers.insert(
        PROCESSING_MS.clone(),
        HeaderValue::from(elapsed.as_millis() as u64),
    );

    let ms = elapsed.as_secs_f64() * 1000.0;
    let cause = res
        .response()
        .error()
        .and_then(|e| e.as_error::<ApiError>())
        .map(ApiError::log_cause);
    let cause = cause.as_deref().unwrap_or("");
    if status.is_server_error() {
        tracing::error!(%request_id, method, %route, status = status.as_u16(), ms, cause, "request failed");
    } else if status.is_client_error() {
        tracing::info!(%request_id, method, %route, status = status.as_u16(), ms, cause, "request refused");
    } else {
        tracing::debug!(%request_id, method, %route, status = status.as_u16(), ms, "request served");
    }
    Ok(res)
}

pub async fn require_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(req.error_response(ApiError::Internal));
    };
    let open = match access_of(req.path()) {
        Access::Open => true,
        Access::Metrics => state.metrics_public,
        Access::Key => false,
        Access::Admin => return admin_only(req, next, &state).await,
    };
    if open {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if state.auth.is_open() && !state.keys.has_keys() {
        // Open so far. A key may have been made on another replica a
        // moment ago (this one hears of it within a second): a request
        // that presents one is held to it, its budget included.
        if let Ok(token) = auth::bearer(authorization) {
            let digest = secret_digest(token);
            if let Ok(Some(key)) = state.keys.lookup(digest).await {
                state.keys.keys_exist();
                return admit_database_key(req, next, ClientId(digest), key).await;
            }
        }
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let token = match auth::bearer(authorization) {
        Ok(token) => token,
        Err(e) => return Ok(req.error_response(e)),
    };
    let digest = secret_digest(token);
    let client = ClientId(digest);
    if state.auth.is_configured(&digest) {
        req.extensions_mut().insert(client);
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    match state.keys.lookup(digest).await {
        Ok(Some(key)) => admit_database_key(req, next, client, key).await,
        Ok(None) => Ok(req.error_response(ApiError::Unauthorized {
            message: auth::INCORRECT_KEY,
        })),
        Err(e) => {
            tracing::error!(error = %e, "cannot look a client key up in the database");
            state
                .metrics
                .database_error(crate::metrics::DbOp::KeyLookup);
            Ok(req.error_response(ApiError::StoreUnavailable))
        }
    }
}

/// A request with a database key: refused when the key is revoked or
/// expired, else passed on carrying it (its models, limits and budget).
async fn admit_database_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    client: ClientId,
    key: std::sync::Arc<crate::store::keys::KeyRecord>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let refused = if key.revoked_at.is_some() {
        Some("This API key has been revoked.")
    } else if key.is_expired(crate::store::now()) {
        Some("This API key has expired.")
    } else {
        None
    };
    if let Some(message) = refused {
        return Ok(req.error_response(ApiError::Unauthorized { message }));
    }
    req.extensions_mut().insert(client);
    req.extensions_mut().insert(DbKey(key));
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// The admin API: the admin key only; without one configured, every admin
/// path is an unknown path (404).
async fn admin_only(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    state: &AppState,
) -> Result<ServiceResponse<BoxBody>, Error> {
    if !state.admin.is_enabled() {
        let path: String = req.path().chars().take(200).collect();
        let e = ApiError::NotFound {
            message: format!("Invalid URL ({} {path})", req.method()),
        };
        return Ok(req.error_response(e));
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match state.admin.check(authorization) {
        Ok(()) => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body),
        Err(e) => Ok(req.error_response(e)),
    }
}
