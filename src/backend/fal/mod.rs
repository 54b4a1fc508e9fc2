//! fal.ai as an image backend: a job goes through fal's queue (submit,
//! watch status, fetch the result, cancel when nobody waits any more) or its
//! synchronous host.
//!
//! - [`transport`]: the pooled client, retries, size cap and call metrics;
//! - [`errors`]: the one classification of fal's failures;
//! - [`wire`]: fal's JSON (Imagen's input, queue answers, model output);
//! - [`status`] and [`sse`]: watching a job until it is done.
//!
//! Status, result and cancel URLs are always built from the configured
//! `queue_url`, never taken from fal's answers, so the `Authorization: Key`
//! header only ever goes to the configured hosts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::{ImageBackend, ImageContent, JobContext, JobOutput, Stop};
use crate::config::{FalMode, FalSettings, Secret};
use crate::domain::{BackendKind, Job, OutputFormat, ResponseFormat};
use crate::error::ApiError;
use crate::metrics::CancelReason;

mod download;
pub mod errors;
pub mod fallback;
pub mod sse;
mod status;
pub mod transport;
pub mod wire;

use errors::protocol;
use fallback::{call_error, classify};
use transport::{Answer, Operation, Upstream, outcome_label};
use wire::{ImagenInput, Submitted, parse_output};

/// Why a fal job produced no images.
enum JobError {
    /// Cancelled or past the deadline: the queued job must be cancelled.
    Stopped(Stop),
    /// fal (or the way to it) failed: the client's error.
    Failed(ApiError),
}

/// fal, over its queue or its synchronous host.
pub struct FalBackend {
    upstream: Arc<Upstream>,
    auth: HeaderValue,
    queue_url: String,
    run_url: String,
    mode: FalMode,
    status_stream: bool,
    poll_initial: Duration,
    poll_max: Duration,
    cancels: TaskTracker,
    downloads: download::Downloads,
}

impl FalBackend {
    pub fn new(
        settings: &FalSettings,
        key: &Secret,
        upstream: Arc<Upstream>,
        cancels: TaskTracker,
    ) -> Result<Self, String> {
        let mut auth = HeaderValue::from_str(&format!("Key {}", key.expose()))
            .map_err(|_| "FAL_KEY contains characters not allowed in an HTTP header".to_string())?;
        // Keeps the value out of hyper's and h2's debug output.
        auth.set_sensitive(true);
        Ok(Self {
            upstream,
            auth,
            queue_url: settings.queue_url.trim_end_matches('/').to_owned(),
            run_url: settings.run_url.trim_end_matches('/').to_owned(),
            mode: settings.mode,
            status_stream: settings.status_stream,
            poll_initial: Duration::from_millis(settings.poll_initial_delay_ms),
            poll_max: Duration::from_millis(settings.poll_max_delay_ms),
            cancels,
            downloads: download::Downloads::new(settings)?,
        })
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.upstream
            .http
            .request(method, url)
            .header(header::AUTHORIZATION, self.auth.clone())
            .header(header::ACCEPT, "application/json")
    }

    fn post_json(&self, url: &str, body: &Bytes) -> reqwest::RequestBuilder {
        self.request(Method::POST, url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone())
    }

    /// One call to fal, retried by fal's clients' rules, whose answer must
    /// be a success; anything else is classified into the client's error.
    async fn fetch(
        &self,
        op: Operation,
        build: impl Fn() -> reqwest::RequestBuilder,
        ctx: &JobContext,
    ) -> Result<Answer, JobError> {
        // A sync run is never retried on a transport error: fal may already
        // be generating (and billing) it.
        let retry_transport = op != Operation::Run;
        let answer = match self.upstream.call(op, build, ctx, retry_transport).await {
            Ok(answer) => answer,
            Err(transport::CallError::Stopped(stop)) => return Err(JobError::Stopped(stop)),
            Err(e) => return Err(JobError::Failed(call_error(op, e, ctx))),
        };
        if !answer.status.is_success() {
            return Err(JobError::Failed(classify(op, &answer)));
        }
        Ok(answer)
    }

    async fn run_queue(&self, job: &Job, ctx: &JobContext) -> Result<JobOutput, ApiError> {
        let body = input_body(job)?;
        let submit_url = format!("{}/{}", self.queue_url, job.endpoint.full());
        let answer = self
            .fetch(
                Operation::Submit,
                || self.post_json(&submit_url, &body),
                ctx,
            )
            .await
            .map_err(|e| self.settle(e, ctx, None))?;
        let submitted: Submitted = serde_json::from_slice(&answer.body)
            .map_err(|_| protocol("a submit answer without request_id"))?;
        let id = submitted.request_id;
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(protocol("a malformed request_id"));
        }
        let request_url = format!("{}/{}/requests/{}", self.queue_url, job.endpoint.app(), id);
        tracing::debug!(request_id = %id, endpoint = job.endpoint.full(), "fal job submitted");
        let (body, mut output) = self
            .wait_and_fetch(&request_url, ctx)
            .await
            .map_err(|e| self.settle(e, ctx, Some(&request_url)))?;
        // The job is done: nothing is left to cancel upstream.
        output.images = self
            .images(job, &body, ctx)
            .await
            .map_err(|e| self.settle(e, ctx, None))?;
        Ok(output)
    }

    /// The client's error for a job that failed or stopped; a stopped job
    /// that fal queued is cancelled there.
    fn settle(&self, e: JobError, ctx: &JobContext, queued: Option<&str>) -> ApiError {
        match e {
            JobError::Failed(e) => e,
            JobError::Stopped(stop) => {
                if let Some(request_url) = queued {
                    let reason = match stop {
                        Stop::Cancelled => CancelReason::Cancelled,
                        Stop::Deadline => CancelReason::Deadline,
                    };
                    self.cancel_upstream(request_url, reason);
                }
                ctx.error(stop)
            }
        }
    }

    /// Wait for a queued job and fetch its result: (the output body, the
    /// job's timings without images yet).
    async fn wait_and_fetch(
        &self,
        request_url: &str,
        ctx: &JobContext,
    ) -> Result<(Bytes, JobOutput), JobError> {
        let submitted_at = Instant::now();
        let running_since = self
            .wait_until_done(&format!("{request_url}/status"), ctx)
            .await?;
        let done = Instant::now();
        let started = running_since.unwrap_or(done);
        let answer = self
            .fetch(
                Operation::Result,
                || self.request(Method::GET, request_url),
                ctx,
            )
            .await?;
        let timings = JobOutput {
            images: Vec::new(),
            queued: Some(started - submitted_at),
            running: Some(done - started),
        };
        Ok((answer.body, timings))
    }

    /// The output's images, fetched when fal sent links for a job that
    /// needs them inline (fal may ignore `sync_mode`). Those downloads are
    /// plain GETs that never carry the fal key.
    async fn images(
        &self,
        job: &Job,
        body: &Bytes,
        ctx: &JobContext,
    ) -> Result<Vec<super::GeneratedImage>, JobError> {
        let mut images = parse_output(body).map_err(JobError::Failed)?;
        if job.delivery == ResponseFormat::B64Json {
            for image in &mut images {
                if let ImageContent::Url(url) = &image.content {
                    image.content =
                        ImageContent::Raw(self.download(url, job.output_format, ctx).await?);
                }
            }
        }
        Ok(images)
    }

    /// One image fal linked to, fetched under the SSRF guard of
    /// [`download`]: an allowed host, a public address, no redirect, and an
    /// image of the asked format.
    async fn download(
        &self,
        url: &str,
        format: OutputFormat,
        ctx: &JobContext,
    ) -> Result<Bytes, JobError> {
        let refused = |why: &str| JobError::Failed(protocol(why));
        let url = self.downloads.check(url).map_err(refused)?;
        let answer = match self
            .upstream
            .call(Operation::Download, || self.downloads.get(&url), ctx, true)
            .await
        {
            Ok(answer) => answer,
            Err(transport::CallError::Stopped(stop)) => return Err(JobError::Stopped(stop)),
            // The job made its images: a failed download never moves the chain on.
            Err(e) => return Err(JobError::Failed(errors::call_error(e, ctx))),
        };
        if !answer.status.is_success() {
            return Err(JobError::Failed(ApiError::Upstream {
                message: format!(
                    "Downloading the generated image failed with HTTP {}.",
                    answer.status.as_u16()
                ),
            }));
        }
        download::check_image(&answer.body, &answer.headers, format).map_err(refused)?;
        Ok(answer.body)
    }

    /// Ask fal to drop a job nobody will read. Detached so the caller's
    /// answer is not delayed, tracked so shutdown waits for it.
    fn cancel_upstream(&self, request_url: &str, reason: CancelReason) {
        let upstream = self.upstream.clone();
        let req = self.request(Method::PUT, &format!("{request_url}/cancel"));
        upstream
            .metrics
            .upstream_cancels
            .with_label_values(&[reason.as_str()])
            .inc();
        self.cancels.spawn(async move {
            let started = std::time::Instant::now();
            let outcome = match req.timeout(Duration::from_secs(10)).send().await {
                Ok(resp) => match resp.status().as_u16() {
                    // 400 ALREADY_COMPLETED and 404 NOT_FOUND end the matter too.
                    200..=299 | 400 | 404 => "success",
                    s => outcome_label(StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY)),
                },
                Err(e) if e.is_timeout() => "timeout",
                Err(_) => "transport_error",
            };
            upstream.observe(Operation::Cancel, outcome, started.elapsed());
            tracing::debug!(outcome, "fal job cancelled");
        });
    }

    async fn run_sync(&self, job: &Job, ctx: &JobContext) -> Result<JobOutput, ApiError> {
        let body = input_body(job)?;
        let url = format!("{}/{}", self.run_url, job.endpoint.full());
        let started = Instant::now();
        // A sync call cannot be cancelled upstream; dropping it is all we can do.
        let run = async {
            let answer = self
                .fetch(Operation::Run, || self.post_json(&url, &body), ctx)
                .await?;
            self.images(job, &answer.body, ctx).await
        };
        let images = run.await.map_err(|e| self.settle(e, ctx, None))?;
        Ok(JobOutput {
            images,
            queued: None,
            running: Some(started.elapsed()),
        })
    }
}

/// The JSON body fal receives for `job`.
fn input_body(job: &Job) -> Result<Bytes, ApiError> {
    serde_json::to_vec(&ImagenInput::of(job))
        .map(Bytes::from)
        .map_err(|_| ApiError::Internal)
}

impl ImageBackend for FalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Fal
    }

    fn generate<'a>(
        &'a self,
        job: &'a Job,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<JobOutput, ApiError>> {
        async move {
            match self.mode {
                FalMode::Queue => self.run_queue(job, ctx).await,
                FalMode::Sync => self.run_sync(job, ctx).await,
            }
        }
        .boxed()
    }
}
