//! `stream: true` answers: OpenAI's event stream over a generation that may
//! still be in progress. SSE comment keep-alives flow while it is made; the
//! events themselves are rendered by `crate::openai::events`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::Fuse;

use crate::cache::memory::weight;
use crate::domain::GenerationPlan;
use crate::memory::Room;
use crate::metrics::Metrics;
use crate::openai::events;
use crate::service::flights::FlightResult;

/// The generation a stream waits for.
pub type Answer = Pin<Box<dyn Future<Output = FlightResult> + Send>>;

/// The streamed answer: `res` carries the generation headers already.
/// `metrics`, when given, counts the answer once its images arrive. `room`
/// (its memory) is held until the stream ends, cut to the real answer once
/// it arrives.
pub fn respond(
    mut res: HttpResponseBuilder,
    plan: GenerationPlan,
    answer: Answer,
    keepalive: Duration,
    client_gone: impl Future<Output = ()> + Send + 'static,
    metrics: Option<Arc<Metrics>>,
    room: Option<Arc<Room>>,
) -> HttpResponse {
    res.insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"));
    let body = EventStream {
        answer: Some(answer.fuse()),
        queue: VecDeque::from([Bytes::from_static(events::KEEP_ALIVE)]),
        timer: Box::pin(tokio::time::sleep(keepalive)),
        keepalive,
        plan,
        gone: Box::pin(client_gone),
        metrics,
        room,
    };
    res.streaming(futures_util::stream::unfold(body, EventStream::next))
}

struct EventStream {
    answer: Option<Fuse<Answer>>,
    queue: VecDeque<Bytes>,
    timer: Pin<Box<tokio::time::Sleep>>,
    keepalive: Duration,
    plan: GenerationPlan,
    /// Resolves when the client hangs up: the stream ends and its waiter
    /// leaves the flight.
    gone: Pin<Box<dyn Future<Output = ()> + Send>>,
    metrics: Option<Arc<Metrics>>,
    room: Option<Arc<Room>>,
}

impl EventStream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Some((Ok(chunk), self));
            }
            let answer = self.answer.as_mut()?;
            tokio::select! {
                result = answer => {
                    self.answer = None;
                    match result {
                        Ok(g) => {
                            if let Some(room) = &self.room {
                                room.shrink_to(u64::from(weight(&g)));
                            }
                            if let Some(m) = &self.metrics {
                                m.generations
                                    .with_label_values(&[self.plan.model.id.as_str(), &g.endpoint])
                                    .inc();
                            }
                            events::completed(&g, &self.plan, &mut self.queue)
                        }
                        Err(e) => self.queue.push_back(events::error(&e)),
                    }
                }
                () = &mut self.gone => return None,
                _ = &mut self.timer => {
                    self.timer.as_mut().reset(tokio::time::Instant::now() + self.keepalive);
                    return Some((Ok(Bytes::from_static(events::KEEP_ALIVE)), self));
                }
            }
        }
    }
}
