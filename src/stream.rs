//! `stream: true`: OpenAI's image event stream. Imagen produces no partial
//! images, so the stream carries SSE comment keep-alives while fal works, then
//! one `image_generation.completed` event per image. A failure after the
//! stream started arrives as an `error` event, which the SDKs raise.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::header;
use bytes::Bytes;
use futures_util::{Future, FutureExt};

use crate::cache::{CacheDirectives, FlightResult, Generation};
use crate::error::ApiError;
use crate::gateway::Pending;
use crate::mapping::GenerationPlan;
use crate::routes::generations::common_headers;
use crate::state::AppState;

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Start a streamed answer. Errors found before the stream starts (overload,
/// shutdown) are ordinary JSON errors.
pub async fn respond(
    state: Arc<AppState>,
    plan: GenerationPlan,
    tenant: Option<[u8; 32]>,
    directives: CacheDirectives,
    client_gone: impl Future<Output = ()> + Send + 'static,
) -> Result<HttpResponse, ApiError> {
    state.metrics.stream_requests.inc();
    let (pending, status) = state
        .gateway
        .begin(&plan, tenant.as_ref().map(|t| &t[..]), directives)
        .await?;
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"));
    let backend = state.backend;
    let wait: Pin<Box<dyn Future<Output = FlightResult> + Send>> = match pending {
        Pending::Ready(g) => {
            common_headers(&mut res, &plan, status, backend, Some(&g));
            Box::pin(futures_util::future::ready(Ok(g)))
        }
        Pending::Waiting(w) => {
            common_headers(&mut res, &plan, status, backend, None);
            Box::pin(w.wait())
        }
    };
    let keepalive = state.stream_keepalive;
    let body = EventStream {
        wait: Some(wait.fuse()),
        queue: VecDeque::from([Bytes::from_static(KEEP_ALIVE)]),
        timer: Box::pin(tokio::time::sleep(keepalive)),
        keepalive,
        plan,
        gone: Box::pin(client_gone),
    };
    Ok(res.streaming(futures_util::stream::unfold(body, EventStream::next)))
}

struct EventStream {
    wait: Option<futures_util::future::Fuse<Pin<Box<dyn Future<Output = FlightResult> + Send>>>>,
    queue: VecDeque<Bytes>,
    timer: Pin<Box<tokio::time::Sleep>>,
    keepalive: Duration,
    plan: GenerationPlan,
    /// Resolves when the client hangs up: the stream ends and its waiter
    /// leaves the flight.
    gone: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl EventStream {
    async fn next(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Self)> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Some((Ok(chunk), self));
            }
            let wait = self.wait.as_mut()?;
            tokio::select! {
                result = wait => {
                    self.wait = None;
                    match result {
                        Ok(g) => completed_events(&g, &self.plan, &mut self.queue),
                        Err(e) => {
                            self.queue.push_back(Bytes::from(format!(
                                "event: error\ndata: {{\"type\":\"error\",{}\n\n",
                                &e.body_json()[1..]
                            )));
                        }
                    }
                }
                () = &mut self.gone => return None,
                _ = &mut self.timer => {
                    self.timer.as_mut().reset(tokio::time::Instant::now() + self.keepalive);
                    return Some((Ok(Bytes::from_static(KEEP_ALIVE)), self));
                }
            }
        }
    }
}

/// One `image_generation.completed` event per image, the payload shared.
fn completed_events(g: &Generation, plan: &GenerationPlan, out: &mut VecDeque<Bytes>) {
    for image in &g.images {
        out.push_back(Bytes::from_static(
            b"event: image_generation.completed\ndata: {\"type\":\"image_generation.completed\",\"b64_json\":\"",
        ));
        out.extend(crate::routes::generations::image_slices(image));
        out.push_back(Bytes::from(format!(
            "\",\"created_at\":{},\"size\":\"{}\",\"quality\":\"{}\",\"background\":\"{}\",\"output_format\":\"{}\",\"usage\":{{\"total_tokens\":0,\"input_tokens\":0,\"output_tokens\":0,\"input_tokens_details\":{{\"text_tokens\":0,\"image_tokens\":0}}}}}}\n\n",
            g.created,
            g.size,
            plan.quality,
            plan.background,
            g.output_format.as_str(),
        )));
    }
}
