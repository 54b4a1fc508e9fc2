//! One trait over the image upstreams: `fal` (the real one, over HTTP) and
//! `local` (the offline renderer, the embedded default without a `FAL_KEY`).
//! A backend takes a provider-neutral [`Job`] and speaks its own wire format;
//! adding an upstream means adding a module here, nothing else.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::domain::{BackendKind, Job, OutputFormat};
use crate::error::ApiError;

pub mod context;
pub mod fal;
pub mod local;

pub use context::{JobContext, Stop};

/// One image as a backend delivered it.
#[derive(Clone, Debug)]
pub enum ImageContent {
    /// A remote address (fal's CDN). Only for jobs whose delivery is `url`.
    Url(String),
    /// Standard base64 of the encoded image, already validated; a slice of
    /// the upstream answer only when it is nearly all of that answer.
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
    /// The encoded format, when the backend said (fal's `content_type`).
    pub format: Option<OutputFormat>,
}

/// What one job produced, with where its time went.
#[derive(Debug)]
pub struct JobOutput {
    pub images: Vec<GeneratedImage>,
    /// Time spent waiting in the upstream's queue, when known.
    pub queued: Option<Duration>,
    /// Time spent running, when known.
    pub running: Option<Duration>,
    /// The seed the upstream reports having used, where it does.
    pub seed: Option<u64>,
    /// The units the upstream bills this job for, when it says (fal:
    /// `X-Fal-Billable-Units`).
    pub billable_units: Option<f64>,
}

pub trait ImageBackend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    /// Run one job to completion, honouring `ctx`: on deadline answer 504 and
    /// on cancellation stop, both after cancelling any upstream work. A job
    /// whose delivery is `b64_json` gets its images inline (base64 or raw),
    /// never as links.
    fn generate<'a>(
        &'a self,
        job: &'a Job,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<JobOutput, ApiError>>;
}
