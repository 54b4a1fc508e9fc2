//! One trait over the image upstreams: `fal` (the real one, over HTTP) and
//! `local` (the offline renderer, the embedded default without a `FAL_KEY`).

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::mapping::Job;
use crate::settings::BackendKind;

pub mod fal;
pub mod local;

/// One image as a backend delivered it.
#[derive(Clone, Debug)]
pub enum ImageContent {
    /// A remote address (fal's CDN).
    Url(String),
    /// Standard base64 of the encoded image, already validated; usually a
    /// zero-copy slice of the upstream answer.
    Base64(Bytes),
    /// The encoded image itself.
    Raw(Bytes),
}

#[derive(Clone, Debug)]
pub struct GeneratedImage {
    pub content: ImageContent,
    /// Pixel size, when the backend reported it.
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// What one job produced, with where its time went.
#[derive(Debug)]
pub struct JobOutput {
    pub images: Vec<GeneratedImage>,
    /// Time spent waiting in fal's queue, when known.
    pub queued: Option<Duration>,
    /// Time spent running, when known.
    pub running: Option<Duration>,
}

/// Deadline and cancellation for one job.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub deadline: Instant,
    /// Fires when nobody waits for the answer any more, or at shutdown.
    pub cancel: CancellationToken,
    /// The seconds the deadline was set from, for the client's message.
    pub timeout_seconds: u64,
}

impl JobContext {
    pub fn timeout_error(&self) -> ApiError {
        ApiError::UpstreamTimeout {
            seconds: self.timeout_seconds,
        }
    }
}

pub trait ImageBackend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    /// Run one job to completion, honouring `ctx`: on deadline answer 504 and
    /// on cancellation stop, both after cancelling any upstream work.
    fn generate<'a>(
        &'a self,
        job: &'a Job,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<JobOutput, ApiError>>;
}
