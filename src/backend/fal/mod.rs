//! fal.ai as an image backend: a job goes through fal's queue (submit,
//! watch status, fetch the result, cancel when nobody waits any more) or its
//! synchronous host.
//!
//! - [`transport`]: the pooled client, retries, backup hosts, size cap and
//!   call metrics;
//! - [`errors`]: the one classification of fal's failures;
//! - [`wire`]: fal's JSON (each endpoint's input, queue answers, model output);
//! - [`status`] and [`sse`]: watching a job until it is done;
//! - `job_urls`: where a queued job's status, result and cancel live;
//! - `headers`: fal's per-request controls, `X-Fal-Tags`, billable units;
//! - `cancel`: cancelling jobs nobody waits for, retried and counted;
//! - `download`: fetching images from fal's media hosts only;
//! - [`fallback`]: which failures move a chain to its next endpoint.
//!
//! A submit is paid: it is never repeated once it may have reached fal, and
//! a job the gateway stops caring about (deadline, hang-up, an error while
//! watching it) is cancelled, even when the submit answers only after the
//! gateway gave up on it. Status, result and cancel URLs come from the
//! submit answer when they point at a configured fal origin (the
//! `Authorization: Key` header never goes anywhere else), and are built from
//! `queue_url` otherwise.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderValue};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{ImageBackend, ImageContent, JobContext, JobOutput, Stop};
use crate::config::{FalMode, FalSettings, Secret};
use crate::domain::{BackendKind, Job, OutputFormat, ResponseFormat};
use crate::error::ApiError;
use crate::metrics::CancelOutcome;

mod cancel;
mod download;
pub mod errors;
pub mod fallback;
mod headers;
mod inline;
mod job_urls;
pub mod sse;
mod status;
pub mod transport;
pub mod wire;

use cancel::{CancelOnDrop, cancel_reason};
use errors::protocol;
use fallback::{call_error, classify};
use headers::{billable_units, controls, fal_tags};
use job_urls::JobUrls;
use transport::{Answer, CallError, CallPolicy, Operation, Repeat, Upstream};
use wire::{model_input, parse_output};

/// How long a client whose deadline passed waits, beyond it, for fal's
/// answer to the cancel, so its 504 can say what became of the job.
const CANCEL_WAIT: Duration = Duration::from_secs(3);
/// Why a fal job produced no images.
enum JobError {
    /// Cancelled or past the deadline: the queued job must be cancelled.
    Stopped(Stop),
    /// fal (or the way to it) failed: the client's error.
    Failed(ApiError),
}

/// What the submit, the cancels and the watch share, also from tasks that
/// outlive the client's request.
struct Shared {
    upstream: Arc<Upstream>,
    /// `Authorization` and `Accept`, sent on every call to fal.
    auth_headers: HeaderMap,
    /// fal's per-request controls, sent with every submit and sync run.
    controls: HeaderMap,
    queue_url: String,
    /// Origins (`scheme://host:port`) of `queue_url` and its backup: the
    /// only ones URLs from fal's answers are followed to.
    queue_origins: Vec<String>,
    cancels: TaskTracker,
    /// Where cancels run: the runtime that outlives the HTTP workers, so a
    /// cancel asked for at shutdown (or by a dropped job) still reaches fal.
    background: tokio::runtime::Handle,
}

/// fal, over its queue or its synchronous host.
pub struct FalBackend {
    shared: Arc<Shared>,
    run_url: String,
    max_queue_length: u32,
    mode: FalMode,
    status_stream: bool,
    stream_idle_timeout: Duration,
    poll_initial: Duration,
    poll_max: Duration,
    downloads: download::Downloads,
}

impl FalBackend {
    pub fn new(
        settings: &FalSettings,
        key: &Secret,
        upstream: Arc<Upstream>,
        cancels: TaskTracker,
        background: tokio::runtime::Handle,
    ) -> Result<Self, String> {
        let mut auth = HeaderValue::from_str(&format!("Key {}", key.expose()))
            .map_err(|_| "FAL_KEY contains characters not allowed in an HTTP header".to_string())?;
        // Keeps the value out of hyper's and h2's debug output.
        auth.set_sensitive(true);
        let mut auth_headers = HeaderMap::new();
        auth_headers.insert(header::AUTHORIZATION, auth);
        auth_headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let queue_url = settings.queue_url.trim_end_matches('/').to_owned();
        let mut queue_origins = vec![origin(&queue_url)];
        for (primary, backup) in settings.backup_origins() {
            if primary == queue_url {
                queue_origins.push(origin(&backup));
            }
        }
        queue_origins.retain(|o| !o.is_empty());
        Ok(Self {
            shared: Arc::new(Shared {
                upstream,
                auth_headers,
                controls: controls(settings)?,
                queue_url,
                queue_origins,
                cancels,
                background,
            }),
            run_url: settings.run_url.trim_end_matches('/').to_owned(),
            max_queue_length: settings.max_queue_length,
            mode: settings.mode,
            status_stream: settings.status_stream,
            stream_idle_timeout: Duration::from_millis(settings.status_stream_idle_timeout_ms),
            poll_initial: Duration::from_millis(settings.poll_initial_delay_ms),
            poll_max: Duration::from_millis(settings.poll_max_delay_ms),
            downloads: download::Downloads::new(settings)?,
        })
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.shared.request(method, url)
    }

    /// One idempotent call to fal, retried by fal's clients' rules, whose
    /// answer must be a success; anything else is classified into the
    /// client's error.
    async fn fetch(&self, op: Operation, url: &str, ctx: &JobContext) -> Result<Answer, JobError> {
        self.fetch_capped(op, url, ctx, None).await
    }

    /// [`Self::fetch`] of an answer at most `cap` bytes long.
    async fn fetch_capped(
        &self,
        op: Operation,
        url: &str,
        ctx: &JobContext,
        cap: Option<u64>,
    ) -> Result<Answer, JobError> {
        let policy = CallPolicy {
            max_response_bytes: cap,
            ..CallPolicy::IDEMPOTENT
        };
        let answer = match self
            .shared
            .upstream
            .call(op, url, |u| self.request(Method::GET, u), ctx, policy)
            .await
        {
            Ok(answer) => answer,
            Err(CallError::Stopped(stop)) => return Err(JobError::Stopped(stop)),
            Err(e) => return Err(JobError::Failed(call_error(op, e, ctx))),
        };
        if !answer.status.is_success() {
            return Err(JobError::Failed(classify(op, &answer)));
        }
        Ok(answer)
    }

    async fn run_queue(&self, job: &Job, ctx: &JobContext) -> Result<JobOutput, ApiError> {
        let body = input_body(job)?;
        let urls = self.submit(job, body, ctx).await?;
        tracing::Span::current().record("fal_request_id", urls.id.as_str());
        tracing::debug!(endpoint = job.endpoint.full(), "fal job submitted");
        let submitted_at = Instant::now();
        let watching = CancelOnDrop::arm(&self.shared, &urls);
        let waited = self.wait_until_done(&urls.status, ctx).await;
        watching.disarm();
        let running_since = match waited {
            Ok(running_since) => running_since,
            Err(e) => return Err(self.give_up(&urls, e, ctx).await),
        };
        // The job is done: from here on, nothing is left to cancel upstream.
        let done = Instant::now();
        let started = running_since.unwrap_or(done);
        let finished = "; the upstream job had finished, but its result did not arrive in time";
        ctx.room_for_answer().await?;
        let answer = self
            .fetch_capped(
                Operation::Result,
                &urls.response,
                ctx,
                Some(job.max_answer_bytes()),
            )
            .await
            .map_err(|e| settled(e, ctx, finished))?;
        let (images, seed) = self
            .images(job, &answer.body, ctx)
            .await
            .map_err(|e| settled(e, ctx, finished))?;
        Ok(JobOutput {
            images,
            queued: Some(started - submitted_at),
            running: Some(done - started),
            seed,
            billable_units: billable_units(&answer.headers),
        })
    }

    /// Submit `job` to the queue. The submit runs in a task of its own so
    /// that, when the client's deadline or hang-up comes first, its answer
    /// is still read and the job it started cancelled.
    async fn submit(&self, job: &Job, body: Bytes, ctx: &JobContext) -> Result<JobUrls, ApiError> {
        let mut url = format!("{}/{}", self.shared.queue_url, job.endpoint.full());
        if self.max_queue_length > 0 {
            url.push_str(&format!("?fal_max_queue_length={}", self.max_queue_length));
        }
        let policy = CallPolicy {
            repeat: Repeat::PaidOnce,
            // An attempt in flight is seen through to its answer.
            bounded: false,
            retry_429: self.max_queue_length == 0,
            max_retries: None,
            max_response_bytes: None,
        };
        // The submit's own context: it stops retrying at the deadline, but
        // a hang-up does not abort it.
        let submit_ctx = JobContext {
            deadline: ctx.deadline,
            cancel: CancellationToken::new(),
            timeout_seconds: ctx.timeout_seconds,
            account: ctx.account.clone(),
            room: None,
        };
        let shared = self.shared.clone();
        let deadline = ctx.deadline;
        let start_timeout = job.start_timeout;
        let tags = fal_tags(ctx);
        let mut task: JoinHandle<Result<Answer, CallError>> = self.shared.cancels.spawn(
            async move {
                let build =
                    |u: &str| shared.paid_post(u, &body, deadline, start_timeout, tags.as_ref());
                shared
                    .upstream
                    .call(Operation::Submit, &url, build, &submit_ctx, policy)
                    .await
            }
            .in_current_span(),
        );
        let outcome = match ctx.race(&mut task).await {
            Ok(joined) => joined.map_err(|_| ApiError::Internal)?,
            Err(stop) => return Err(self.abandon_submit(task, job, stop, ctx)),
        };
        let answer = match outcome {
            Ok(answer) => answer,
            Err(CallError::Stopped(stop)) => {
                // Stopped between attempts: nothing reached fal's queue.
                return Err(match stop {
                    Stop::Deadline => {
                        ApiError::deadline(ctx.timeout_seconds, "; no upstream job was started")
                    }
                    Stop::Cancelled => ctx.error(stop),
                });
            }
            Err(e) => return Err(call_error(Operation::Submit, e, ctx)),
        };
        self.shared.job_urls(job, &answer)
    }

    /// The client stopped waiting while the submit was in flight: let it
    /// finish in the background and cancel the job it started, if any.
    fn abandon_submit(
        &self,
        task: JoinHandle<Result<Answer, CallError>>,
        job: &Job,
        stop: Stop,
        ctx: &JobContext,
    ) -> ApiError {
        let shared = self.shared.clone();
        let job = job.clone();
        let reason = cancel_reason(&JobError::Stopped(stop));
        self.shared.cancels.spawn_on(
            async move {
                match task.await {
                    Ok(Ok(answer)) => {
                        if let Ok(urls) = shared.job_urls(&job, &answer) {
                            tracing::Span::current().record("fal_request_id", urls.id.as_str());
                            tracing::info!(
                                "fal accepted a submit after the gateway stopped waiting; cancelling it"
                            );
                            let _ = shared.spawn_cancel(&urls, reason).await;
                        }
                    }
                    Ok(Err(CallError::Unconfirmed { .. })) => tracing::warn!(
                        "a submit the gateway stopped waiting for never got fal's answer; the job, if fal started it, cannot be cancelled"
                    ),
                    _ => {}
                }
            }
            .in_current_span(),
            &self.shared.background,
        );
        match stop {
            Stop::Deadline => ApiError::deadline(
                ctx.timeout_seconds,
                "; fal had not confirmed the upstream job yet, and the gateway cancels it if fal does",
            ),
            Stop::Cancelled => ctx.error(stop),
        }
    }

    /// The gateway stops watching a job that is not done: cancel it, and
    /// for a deadline tell the client what became of it.
    async fn give_up(&self, urls: &JobUrls, e: JobError, ctx: &JobContext) -> ApiError {
        let cancel = self.shared.spawn_cancel(urls, cancel_reason(&e));
        match e {
            JobError::Failed(e) => e,
            JobError::Stopped(Stop::Cancelled) => ctx.error(Stop::Cancelled),
            JobError::Stopped(Stop::Deadline) => {
                let note = match tokio::time::timeout(CANCEL_WAIT, cancel).await {
                    Ok(Ok(CancelOutcome::CancellationRequested)) => {
                        "; the upstream job was cancelled"
                    }
                    Ok(Ok(CancelOutcome::AlreadyCompleted)) => {
                        "; the upstream job had just finished, too late to be cancelled"
                    }
                    Ok(Ok(CancelOutcome::NotFound)) => {
                        "; fal no longer knew the upstream job when the gateway cancelled it"
                    }
                    Ok(Ok(CancelOutcome::Failed) | Err(_)) => {
                        "; cancelling the upstream job failed, so it may still run"
                    }
                    Err(_) => {
                        "; the gateway asked fal to cancel the upstream job, which fal had not confirmed yet"
                    }
                };
                ApiError::deadline(ctx.timeout_seconds, note)
            }
        }
    }

    /// The output's images (and the seed it reports), fetched when fal
    /// sent links for a job that needs them inline (fal may ignore
    /// `sync_mode`). Those downloads are plain GETs that never carry the fal
    /// key.
    async fn images(
        &self,
        job: &Job,
        body: &Bytes,
        ctx: &JobContext,
    ) -> Result<(Vec<super::GeneratedImage>, Option<u64>), JobError> {
        let output = parse_output(body).map_err(JobError::Failed)?;
        let mut images = output.images;
        // Never more than were asked for (nor their downloads).
        images.truncate(usize::from(job.num_images));
        if job.delivery == ResponseFormat::B64Json {
            for image in &mut images {
                if let ImageContent::Url(url) = &image.content {
                    let format = image.format.unwrap_or(job.delivered_format);
                    image.content = ImageContent::Raw(
                        self.download(url, format, job.max_image_bytes(), ctx)
                            .await?,
                    );
                }
            }
        }
        Ok((images, output.seed))
    }

    /// One image fal linked to, fetched under the SSRF guard of
    /// [`download`]: an allowed host, a public address, no redirect, and an
    /// image of the asked format.
    async fn download(
        &self,
        url: &str,
        format: OutputFormat,
        cap: u64,
        ctx: &JobContext,
    ) -> Result<Bytes, JobError> {
        let refused = |why: &str| JobError::Failed(protocol(why));
        let url = self.downloads.check(url).map_err(refused)?;
        let answer = match self
            .shared
            .upstream
            .call(
                Operation::Download,
                url.as_str(),
                |_| self.downloads.get(&url),
                ctx,
                CallPolicy {
                    max_response_bytes: Some(cap),
                    ..CallPolicy::IDEMPOTENT
                },
            )
            .await
        {
            Ok(answer) => answer,
            Err(CallError::Stopped(stop)) => return Err(JobError::Stopped(stop)),
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

    async fn run_sync(&self, job: &Job, ctx: &JobContext) -> Result<JobOutput, ApiError> {
        let body = input_body(job)?;
        let url = format!("{}/{}", self.run_url, job.endpoint.full());
        let started = Instant::now();
        let policy = CallPolicy {
            repeat: Repeat::PaidOnce,
            bounded: true,
            retry_429: true,
            max_retries: None,
            max_response_bytes: Some(job.max_answer_bytes()),
        };

        // A sync call cannot be cancelled upstream; dropping it is how fal
        // learns nobody waits.
        let dropped = "; the synchronous fal call was dropped, which cancels it";
        // Its answer comes with the call: room for it first.
        ctx.room_for_answer().await?;
        let answer = match self
            .shared
            .upstream
            .call(
                Operation::Run,
                &url,
                |u| {
                    self.shared.paid_post(
                        u,
                        &body,
                        ctx.deadline,
                        job.start_timeout,
                        fal_tags(ctx).as_ref(),
                    )
                },
                ctx,
                policy,
            )
            .await
        {
            Ok(answer) if answer.status.is_success() => answer,
            Ok(answer) => return Err(classify(Operation::Run, &answer)),
            Err(CallError::Stopped(stop)) => {
                return Err(settled(JobError::Stopped(stop), ctx, dropped));
            }
            Err(e) => return Err(call_error(Operation::Run, e, ctx)),
        };
        let (images, seed) = self
            .images(job, &answer.body, ctx)
            .await
            .map_err(|e| settled(e, ctx, ""))?;
        Ok(JobOutput {
            images,
            queued: None,
            running: Some(started.elapsed()),
            seed,
            billable_units: billable_units(&answer.headers),
        })
    }
}

impl Shared {
    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.upstream
            .http()
            .request(method, url)
            .headers(self.auth_headers.clone())
    }

    /// A submit or sync run of `body`, with fal's per-request controls and
    /// the start timeout: the time left before `deadline` (or the job's own
    /// start timeout, when the chain wants a shorter one), so fal drops a job
    /// that could not start in time even if the gateway is gone.
    fn paid_post(
        &self,
        url: &str,
        body: &Bytes,
        deadline: Instant,
        start_timeout: Option<Duration>,
        tags: Option<&HeaderValue>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .request(Method::POST, url)
            .headers(self.controls.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(tags) = tags {
            req = req.header("x-fal-tags", tags.clone());
        }
        let mut left = deadline.saturating_duration_since(Instant::now());
        if let Some(limit) = start_timeout {
            left = left.min(limit);
        }
        let left = left.as_secs_f64();
        // fal requires more than 1 s.
        if left > 1.05 {
            req = req.header(
                "x-fal-request-timeout",
                format!("{:.1}", left.floor().max(1.1)),
            );
        }
        req
    }
}

/// The client's error for a job with nothing left to cancel; `note` says
/// what became of it when its deadline passed.
fn settled(e: JobError, ctx: &JobContext, note: &str) -> ApiError {
    match e {
        JobError::Failed(e) => e,
        JobError::Stopped(Stop::Deadline) => ApiError::deadline(ctx.timeout_seconds, note),
        JobError::Stopped(stop) => ctx.error(stop),
    }
}

/// `scheme://host[:port]` of a base URL; empty when it does not parse.
fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

/// The JSON body fal receives for `job`.
fn input_body(job: &Job) -> Result<Bytes, ApiError> {
    serde_json::to_vec(&model_input(job))
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
        // At error level so that its fields (the job's queue request id,
        // which fal support asks for) reach every line logged inside it,
        // whatever the configured level.
        let span = tracing::error_span!(
            "fal_job",
            endpoint = job.endpoint.full(),
            fal_request_id = tracing::field::Empty
        );
        async move {
            match self.mode {
                FalMode::Queue => self.run_queue(job, ctx).await,
                FalMode::Sync => self.run_sync(job, ctx).await,
            }
        }
        .instrument(span)
        .boxed()
    }
}
