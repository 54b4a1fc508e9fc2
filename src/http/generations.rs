//! `POST /v1/images/generations`: read and validate the body, apply the
//! per-key limits, answer from the cache or a generation, and write OpenAI's
//! JSON (or its event stream).

use std::convert::Infallible;
use std::sync::Arc;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, HttpResponseBuilder, web};
use futures_util::StreamExt;

use super::AppState;
use super::middleware::RequestId;
use super::{body, disconnect, stream};
use crate::auth::{ClientId, DbKey};
use crate::cache::memory::weight;
use crate::cache::{CacheDirectives, CacheStatus};
use crate::config::CacheScope;
use crate::domain::{
    BackendKind, Date, Generation, GenerationPlan, Lifecycle, MicroUsd, ResponseFormat, date,
};
use crate::error::{ApiError, RateLimitHeaders};
use crate::http::connection::LocalAddr;
use crate::memory::Room;
use crate::metrics::SavedBy;
use crate::openai::{self, parse_generation_body, response};
use crate::service::Pending;
use crate::spend::Payer;

pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    body::check_json_content_type(&req)?;
    let memory = state.service.memory();
    let (body, body_room) = body::read(
        &req,
        payload,
        state.max_body_bytes,
        state.body_timeout,
        memory,
    )
    .await?;
    let parsed = parse_generation_body(&body)?;
    drop((body, body_room));
    let mut plan = openai::plan(
        &parsed.request,
        parsed.unknown_fields,
        &state.catalog,
        state.plan_limits,
    )?;
    let client = req.extensions().get::<ClientId>().copied();
    let db_key = req.extensions().get::<DbKey>().cloned();
    if let Some(DbKey(key)) = &db_key
        && !key.allows_model(&plan.model.id)
    {
        return Err(ApiError::ModelNotAllowed {
            model: plan.model.id.clone(),
        });
    }
    // A key without limits of its own is limited like any other.
    let own_limits = db_key
        .as_ref()
        .map(|DbKey(k)| (k.requests_per_minute, k.images_per_minute))
        .filter(|own| *own != (None, None));
    let limit_headers = if state.limits.is_enabled() || own_limits.is_some() {
        let key = client.map_or_else(|| peer_key(&req), |c| c.0);
        state
            .limits
            .check_with(&key, u32::from(plan.n), own_limits, &state.metrics)?
    } else {
        Vec::new()
    };
    let tenant = match state.cache_scope {
        CacheScope::PerKey => client.map(|c| c.0),
        CacheScope::Global | CacheScope::Auto => None,
    };
    let directives = CacheDirectives::parse(
        header_str(&req, header::CACHE_CONTROL),
        header_str(&req, header::PRAGMA),
    );
    if plan.stream {
        // Streamed images always travel as base64, as OpenAI's do.
        plan.response_format = ResponseFormat::B64Json;
        state.metrics.stream_requests.inc();
    }

    let payer = payer(&req, client, db_key);
    // A request that starts a generation gets room in the memory budget
    // (small while its jobs wait upstream, the most its plan can hold once
    // its answers are read), or a 429 now; cut to the real answer once
    // known, and held until its last byte is written.
    let (pending, status, room) = state
        .service
        .begin(&plan, tenant.as_ref().map(|t| &t[..]), directives, &payer)
        .await?;
    let backend = state.service.backend_kind();
    let mut res = if plan.stream {
        let mut head = HttpResponse::Ok();
        let ready = match &pending {
            Pending::Ready(g) => Some(&**g),
            Pending::Waiting(_) => None,
        };
        if let Some(g) = ready {
            count_answer(&state, &plan, g);
            if let Some(room) = &room {
                room.shrink_to(u64::from(weight(g)));
            }
        }
        generation_headers(&mut head, &plan, status, backend, ready);
        // A stream's head goes out before its images exist: its cost is
        // known then only when it is nothing (a hit, or joining a flight; a
        // wait for another replica may still end in a generation here).
        let free = match &pending {
            Pending::Ready(_) => true,
            Pending::Waiting(w) => status == CacheStatus::Coalesced && !w.provisional,
        };
        if free {
            head.insert_header((COST_HEADER, "0"));
        }
        if let Some(g) = ready {
            count_saved(&state, &plan, status, g);
        }
        let client_gone = disconnect::closed(&req, disconnect::Watch::DuringAnswer);
        let metrics = (ready.is_none()).then(|| state.metrics.clone());
        let answer: stream::Answer = match pending {
            Pending::Ready(g) => Box::pin(futures_util::future::ready(Ok(g))),
            Pending::Waiting(w) => {
                let service = state.service.clone();
                let (state, plan) = (state.clone(), plan.clone());
                Box::pin(async move {
                    let (result, status) = service.settle(w, status).await;
                    if let Ok(g) = &result {
                        count_saved(&state, &plan, status, g);
                    }
                    result
                })
            }
        };
        stream::respond(
            head,
            plan,
            answer,
            state.stream_keepalive,
            client_gone,
            metrics,
            room,
        )
    } else {
        let (generation, status, spent) = match pending {
            Pending::Ready(generation) => (generation, status, MicroUsd::ZERO),
            // Only a request that waits watches its client's socket (a dup,
            // two epoll calls and a close), and only from 100 ms into the
            // wait: a cache hit or a quick answer never pays for it.
            Pending::Waiting(waiter) => {
                let flight = waiter.flight().clone();
                tokio::select! {
                    (generation, status) = state.service.settle(waiter, status) => {
                        (generation?, status, MicroUsd(flight.spent()))
                    }
                    () = disconnect::closed(&req, disconnect::Watch::BeforeAnswer) => return Err(ApiError::ClientClosedRequest),
                }
            }
        };
        count_answer(&state, &plan, &generation);
        if let Some(room) = &room {
            room.shrink_to(u64::from(weight(&generation)));
        }
        let mut head = HttpResponse::Ok();
        generation_headers(&mut head, &plan, status, backend, Some(&generation));
        // Only the request whose flight made the images paid for them.
        let cost = match status {
            CacheStatus::Miss | CacheStatus::Bypass => spent,
            _ => MicroUsd::ZERO,
        };
        head.insert_header((COST_HEADER, cost.usd_string()));
        count_saved(&state, &plan, status, &generation);
        json_answer(head, &generation, &base_url(&req, &state), room)
    };
    add_limit_headers(res.headers_mut(), &limit_headers);
    Ok(res)
}

/// What the request cost upstream, in decimal USD.
const COST_HEADER: &str = "x-image-gateway-cost-usd";

/// Who the request's generation is billed to.
fn payer(req: &HttpRequest, client: Option<ClientId>, db_key: Option<DbKey>) -> Payer {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| Arc::<str>::from(r.0.as_str()));
    match (db_key, client) {
        (Some(DbKey(key)), _) => Payer {
            account: Some(key.id.as_str().into()),
            key: Some(key),
            request_id,
        },
        (None, Some(client)) => Payer {
            account: Some(client.config_account().into()),
            key: None,
            request_id,
        },
        (None, None) => Payer {
            request_id,
            ..Payer::default()
        },
    }
}

/// Money an answer without a job saved: what making it cost.
fn count_saved(state: &AppState, plan: &GenerationPlan, status: CacheStatus, g: &Generation) {
    let reason = match status {
        CacheStatus::Hit | CacheStatus::SharedHit => SavedBy::Cache,
        CacheStatus::Coalesced => SavedBy::Coalesced,
        CacheStatus::Miss | CacheStatus::Bypass => return,
    };
    if g.cost > MicroUsd::ZERO {
        state
            .metrics
            .saved
            .with_label_values(&[plan.model.id.as_str(), reason.as_str()])
            .inc_by(g.cost.0 as f64 / 1_000_000.0);
    }
}

/// OpenAI's JSON, written as chunks that share the image bytes; `room`
/// (its memory) is held until the body is done with.
fn json_answer(
    mut head: HttpResponseBuilder,
    g: &Generation,
    base_url: &str,
    room: Option<Arc<Room>>,
) -> HttpResponse {
    let (len, chunks) = response::json_chunks(g, base_url);
    head.insert_header((header::CONTENT_TYPE, "application/json"));
    let stream = futures_util::stream::iter(chunks).map(move |chunk| {
        let _held = &room;
        Ok::<_, Infallible>(chunk)
    });
    head.body(SizedStream::new(len, stream))
}

/// Headers every generation answer carries (JSON or stream). `generation`
/// is the answer when it is already known (a stream may still be waiting:
/// then `x-image-gateway-endpoint` names the first endpoint its chain
/// tries, and the completed event names the one that served).
fn generation_headers(
    res: &mut HttpResponseBuilder,
    plan: &GenerationPlan,
    status: CacheStatus,
    backend: BackendKind,
    generation: Option<&Generation>,
) {
    res.insert_header(("x-cache", status.header()));
    if let (Some(level), Some(g)) = (status.level(), generation) {
        res.insert_header(("x-cache-level", level));
        res.insert_header((header::AGE, g.produced_at.elapsed().as_secs().to_string()));
    }
    let backend = generation.map_or(backend, |g| g.backend);
    res.insert_header(("x-image-gateway-backend", backend.as_str()));
    res.insert_header(("x-image-gateway-model", plan.model.id.as_str()));
    let endpoint = generation.map_or_else(
        || first_endpoint(plan).to_owned(),
        |g| g.endpoint.to_string(),
    );
    if let Ok(v) = HeaderValue::from_str(&endpoint) {
        res.insert_header(("x-image-gateway-endpoint", v));
    }
    if let Some(seed) = generation.and_then(|g| g.seed) {
        res.insert_header(("x-image-gateway-seed", seed.to_string()));
    }
    let ignored = plan.ignored_on(&endpoint);
    if !ignored.is_empty()
        && let Ok(v) = HeaderValue::from_str(&ignored.join(","))
    {
        res.insert_header(("x-image-gateway-ignored-fields", v));
    }
    lifecycle_headers(res, plan.model.announced_lifecycle(), date::today());
}

/// `Deprecation` (RFC 9745, `@<unix seconds>`) and `Sunset` (RFC 8594, an
/// HTTP date) once the model is deprecated.
fn lifecycle_headers(res: &mut HttpResponseBuilder, lifecycle: Lifecycle, today: Date) {
    let Some(deprecated) = lifecycle
        .deprecated
        .filter(|_| lifecycle.is_deprecated(today))
    else {
        return;
    };
    res.insert_header((
        "deprecation",
        format!("@{}", date::unix_seconds(deprecated)),
    ));
    if let Some(sunset) = lifecycle.sunset {
        res.insert_header(("sunset", date::http_date(sunset)));
    }
}

/// The endpoint a chain tries first today (past sunsets skipped).
fn first_endpoint(plan: &GenerationPlan) -> &str {
    let today = date::today();
    plan.model
        .chain
        .iter()
        .find(|p| !p.lifecycle.is_sunset(today))
        .unwrap_or(plan.model.primary())
        .endpoint
        .full()
}

/// Count an answer with images by model and the endpoint that made them.
fn count_answer(state: &AppState, plan: &GenerationPlan, g: &Generation) {
    state
        .metrics
        .generations
        .with_label_values(&[plan.model.id.as_str(), &g.endpoint])
        .inc();
}

fn add_limit_headers(headers: &mut header::HeaderMap, limits: &[RateLimitHeaders]) {
    for h in limits {
        for (name, value) in h.pairs() {
            if let (Ok(n), Ok(v)) = (
                header::HeaderName::try_from(name),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(n, v);
            }
        }
    }
}

/// Without client keys, rate limits apply per caller address.
fn peer_key(req: &HttpRequest) -> [u8; 32] {
    use sha2::Digest;
    let ip = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    sha2::Sha256::digest(ip.as_bytes()).into()
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Where links to `/v1/images/files/...` point: the configured public URL;
/// else, behind a proxy trusted to set them (`server.trust_forwarded_headers`),
/// the request's `Forwarded` / `X-Forwarded-*` / `Host` headers; else the
/// address the client connected to (a client's own headers never decide
/// where another client's links point).
fn base_url(req: &HttpRequest, state: &AppState) -> String {
    if let Some(url) = &state.public_base_url {
        return url.clone();
    }
    if state.trust_forwarded_headers {
        let ci = req.connection_info();
        return format!("{}://{}", ci.scheme(), ci.host());
    }
    match req.conn_data::<LocalAddr>() {
        Some(LocalAddr(addr)) => format!("http://{addr}"),
        None => format!("http://{}", req.app_config().local_addr()),
    }
}
