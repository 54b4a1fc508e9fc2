//! `POST /v1/images/generations`: read and validate the body, map it, answer
//! from the cache or fal, and write OpenAI's JSON (or its event stream).
//!
//! Image payloads are never copied here: the body is written as a list of
//! chunks that share the cached bytes.

use std::convert::Infallible;
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::auth::ClientId;
use crate::cache::{CacheDirectives, Generation};
use crate::error::ApiError;
use crate::gateway::{CacheStatus, Pending};
use crate::mapping::{self, GenerationPlan, ResponseFormat};
use crate::openai::parse_generation_body;
use crate::settings::CacheScope;
use crate::state::AppState;

pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_content_type(&req)?;
    let body = read_body(&req, payload, state.max_body_bytes, state.body_timeout).await?;
    let parsed = parse_generation_body(&body)?;
    let mut plan = mapping::plan(
        &parsed.request,
        parsed.unknown_fields,
        &state.catalog,
        state.plan_limits,
    )?;
    let client = req.extensions().get::<ClientId>().copied();
    let limit_headers = if state.limits.is_enabled() {
        let key = client.map_or_else(|| peer_key(&req), |c| c.0);
        state
            .limits
            .check(&key, u32::from(plan.n), &state.metrics)?
    } else {
        Vec::new()
    };
    let tenant = match state.cache_scope {
        CacheScope::PerKey => client.map(|c| c.0),
        CacheScope::Global => None,
    };
    let directives = CacheDirectives::parse(
        header_str(&req, header::CACHE_CONTROL),
        header_str(&req, header::PRAGMA),
    );
    let base_url = base_url(&req, &state);

    if plan.stream {
        // Streamed images always travel as base64, as OpenAI's do.
        plan.response_format = ResponseFormat::B64Json;
        let client_gone = crate::disconnect::closed(&req);
        let mut res =
            crate::stream::respond(state.into_inner(), plan, tenant, directives, client_gone)
                .await?;
        add_limit_headers(res.headers_mut(), &limit_headers);
        return Ok(res);
    }

    let (pending, status) = state
        .gateway
        .begin(&plan, tenant.as_ref().map(|t| &t[..]), directives)
        .await?;
    let generation = match pending {
        Pending::Ready(generation) => generation,
        // Only a request that waits watches its client's socket (a dup, two
        // epoll calls and a close): a cache hit is answered at once.
        Pending::Waiting(waiter) => tokio::select! {
            generation = waiter.wait() => generation?,
            () = crate::disconnect::closed(&req) => return Err(ApiError::ClientClosedRequest),
        },
    };
    let mut res = HttpResponse::Ok();
    common_headers(&mut res, &plan, status, state.backend, Some(&generation));
    let (len, chunks) = json_chunks(&generation, &base_url);
    res.insert_header((header::CONTENT_TYPE, "application/json"));
    let mut res = if chunks.len() == 1 {
        let mut chunks = chunks;
        res.body(chunks.pop().unwrap_or_default())
    } else {
        let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>));
        res.body(SizedStream::new(len, stream))
    };
    add_limit_headers(res.headers_mut(), &limit_headers);
    Ok(res)
}

/// Headers every generation answer carries (JSON or stream). `generation`
/// is the answer when it is already known (a stream may still be waiting).
pub fn common_headers(
    res: &mut HttpResponseBuilder,
    plan: &GenerationPlan,
    status: CacheStatus,
    backend: crate::settings::BackendKind,
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
    if !plan.ignored_fields.is_empty()
        && let Ok(v) = HeaderValue::from_str(&plan.ignored_fields.join(","))
    {
        res.insert_header(("x-image-gateway-ignored-fields", v));
    }
}

fn add_limit_headers(headers: &mut header::HeaderMap, limits: &[crate::error::RateLimitHeaders]) {
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

/// JSON only; a missing `Content-Type` is read as JSON too.
fn check_content_type(req: &HttpRequest) -> Result<(), ApiError> {
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

/// The body, bounded in size and in the time the client takes to send it.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
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
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ApiError::RequestTimeout)?
}

/// Where links to `/v1/images/files/...` point: the configured public URL,
/// or this request's own scheme and host.
fn base_url(req: &HttpRequest, state: &AppState) -> String {
    match &state.public_base_url {
        Some(url) => url.clone(),
        None => {
            let ci = req.connection_info();
            format!("{}://{}", ci.scheme(), ci.host())
        }
    }
}

/// An image link: gateway-held files are stored as paths and made absolute
/// per response, so a cached answer never carries another client's host.
pub fn absolute_url(image: &Bytes, base_url: &str) -> String {
    let text = String::from_utf8_lossy(image);
    if text.starts_with('/') {
        format!("{base_url}{text}")
    } else {
        text.into_owned()
    }
}

/// Largest piece of an image handed to actix at once. actix-http copies each
/// body chunk into the connection's write buffer and, after the response,
/// frees a buffer that grew past 128 KiB: an image handed over whole (2 MB)
/// costs an image-sized allocation per response, and as much memory per
/// client still reading. Slices of the shared bytes (no copy) keep that
/// buffer small and reused.
pub const BODY_CHUNK_BYTES: usize = 64 * 1024;

/// An image as zero-copy slices of at most [`BODY_CHUNK_BYTES`].
pub fn image_slices(image: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    (0..image.len())
        .step_by(BODY_CHUNK_BYTES)
        .map(|start| image.slice(start..(start + BODY_CHUNK_BYTES).min(image.len())))
}

/// OpenAI's response JSON as chunks: small framing strings around the image
/// payloads, which are shared, not copied. Returns (total length, chunks).
pub fn json_chunks(generation: &Generation, base_url: &str) -> (u64, Vec<Bytes>) {
    let mut chunks = Vec::with_capacity(generation.images.len() * 2 + 1);
    let mut text = format!("{{\"created\":{},\"data\":[", generation.created);
    for (i, image) in generation.images.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        match generation.response_format {
            ResponseFormat::B64Json => {
                text.push_str("{\"b64_json\":\"");
                chunks.push(Bytes::from(std::mem::take(&mut text)));
                chunks.extend(image_slices(image));
                text.push_str("\"}");
            }
            ResponseFormat::Url => {
                let url = absolute_url(image, base_url);
                text.push_str("{\"url\":");
                text.push_str(&serde_json::Value::String(url).to_string());
                text.push('}');
            }
        }
    }
    text.push_str(&format!(
        "],\"output_format\":\"{}\",\"size\":\"{}\"}}",
        generation.output_format.as_str(),
        generation.size
    ));
    chunks.push(Bytes::from(text));
    let len = chunks.iter().map(|c| c.len() as u64).sum();
    (len, chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::OutputFormat;
    use crate::settings::BackendKind;

    fn generation(format: ResponseFormat, images: &[&'static str]) -> Generation {
        Generation {
            created: 1_700_000_000,
            produced_at: std::time::Instant::now(),
            size: "1408x768".into(),
            output_format: OutputFormat::Png,
            response_format: format,
            images: images
                .iter()
                .map(|s| Bytes::from_static(s.as_bytes()))
                .collect(),
            backend: BackendKind::Fal,
        }
    }

    fn joined(chunks: &[Bytes]) -> serde_json::Value {
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        serde_json::from_slice(&all).unwrap()
    }

    #[test]
    fn b64_answers_are_openai_json_sharing_the_image_bytes() {
        let g = generation(ResponseFormat::B64Json, &["aGVsbG8=", "d29ybGQ="]);
        let (len, chunks) = json_chunks(&g, "http://gw");
        assert_eq!(len, chunks.iter().map(|c| c.len() as u64).sum::<u64>());
        assert_eq!(
            joined(&chunks),
            serde_json::json!({"created":1_700_000_000,"data":[{"b64_json":"aGVsbG8="},{"b64_json":"d29ybGQ="}],
                               "output_format":"png","size":"1408x768"})
        );
        assert!(chunks.iter().any(|c| c.as_ptr() == g.images[0].as_ptr()));
    }

    #[test]
    fn large_images_go_out_in_shared_slices_of_at_most_64_kib() {
        let image = Bytes::from(vec![b'A'; 3 * BODY_CHUNK_BYTES + 5]);
        let slices: Vec<Bytes> = image_slices(&image).collect();
        assert_eq!(
            slices.iter().map(Bytes::len).collect::<Vec<_>>(),
            [BODY_CHUNK_BYTES, BODY_CHUNK_BYTES, BODY_CHUNK_BYTES, 5]
        );
        for (i, s) in slices.iter().enumerate() {
            assert_eq!(s.as_ptr(), image[i * BODY_CHUNK_BYTES..].as_ptr());
        }
        assert_eq!(image_slices(&Bytes::new()).count(), 0);
    }

    #[test]
    fn url_answers_make_gateway_paths_absolute_and_keep_remote_urls() {
        let g = generation(
            ResponseFormat::Url,
            &[
                "/v1/images/files/abc.png",
                "https://v3.fal.media/files/x.png",
            ],
        );
        let (_, chunks) = json_chunks(&g, "http://gw:8080");
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            joined(&chunks)["data"],
            serde_json::json!([{"url":"http://gw:8080/v1/images/files/abc.png"},{"url":"https://v3.fal.media/files/x.png"}])
        );
    }
}
