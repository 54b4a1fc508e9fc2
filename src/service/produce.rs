//! Making a plan's images on one endpoint: its jobs run on the backend under
//! the upstream limit, each success goes on the flight's tab, and what the
//! backend delivered becomes what the client asked for (base64, a URL, or a
//! file the gateway serves).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use tokio::time::Instant;

use super::flights::Flight;
use super::tab::Tab;
use super::{GenerationService, measure};
use crate::backend::{GeneratedImage, ImageContent, JobContext, JobOutput};
use crate::domain::{
    BackendKind, EndpointPlan, Generation, GenerationPlan, Image, Job, MicroUsd, ResponseFormat,
};
use crate::error::ApiError;
use crate::spend::{self, Payer};

impl GenerationService {
    /// Run a plan's jobs on one endpoint, billed to `payer` (each job that
    /// succeeds goes on `tab`), and deliver the images in the requested
    /// form, with what they cost.
    pub(super) async fn produce_on(
        &self,
        plan: &GenerationPlan,
        on_endpoint: &EndpointPlan,
        flight: &Flight,
        deadline: Instant,
        payer: &Payer,
        tab: &Tab,
    ) -> Result<Generation, ApiError> {
        let jobs = &on_endpoint.jobs;
        let ctx = JobContext {
            deadline,
            cancel: flight.token.clone(),
            timeout_seconds: self.request_timeout.as_secs(),
            account: payer.account.clone(),
            room: flight.room.clone(),
        };
        // A plan of more jobs than the whole limit gets every slot and runs
        // that many of its jobs at a time.
        let slots = self.limiter.acquire(jobs.len() as u32, &ctx).await?;
        let parallel = slots.num_permits().max(1);
        self.metrics.jobs_in_flight.add(parallel as i64);
        let outputs = self.run_jobs(jobs, parallel, &ctx, tab).await;
        self.metrics.jobs_in_flight.sub(parallel as i64);
        drop(slots);
        let outputs = outputs?;

        let mut images = Vec::with_capacity(usize::from(plan.n));
        let mut dims = None;
        let mut format = None;
        let seed = outputs.iter().find_map(|o| o.seed);
        let mut cost = MicroUsd::ZERO;
        for (job, output) in jobs.iter().zip(outputs) {
            if self.backend.kind() == BackendKind::Fal {
                cost = cost.saturating_add(spend::delivered_cost(job, &output));
            }
            // A backend answering more images than its job asked for gets
            // the extra ones dropped.
            for image in output.images.into_iter().take(usize::from(job.num_images)) {
                if dims.is_none() {
                    dims = measure::dimensions(&image);
                }
                let image_format = image.format.unwrap_or(on_endpoint.output_format);
                format.get_or_insert(image_format);
                images.push(self.deliver(image, plan.response_format).await?);
            }
        }
        let (w, h) = dims.unwrap_or(on_endpoint.size);
        let generation = Generation {
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            produced_at: std::time::Instant::now(),
            size: format!("{w}x{h}"),
            output_format: format.unwrap_or(on_endpoint.output_format),
            response_format: plan.response_format,
            images,
            backend: self.backend.kind(),
            endpoint: on_endpoint.profile.endpoint.full().into(),
            seed,
            cost,
        };
        Ok(generation)
    }

    /// The jobs, `parallel` at a time (in order); the first failure
    /// cancels the others (which cancel their upstream jobs) and is the
    /// answer.
    pub(super) async fn run_jobs(
        &self,
        jobs: &[Job],
        parallel: usize,
        ctx: &JobContext,
        tab: &Tab,
    ) -> Result<Vec<JobOutput>, ApiError> {
        let siblings = ctx.cancel.child_token();
        let job_ctx = JobContext {
            cancel: siblings.clone(),
            ..ctx.clone()
        };
        let turns = tokio::sync::Semaphore::new(parallel);
        let results = futures_util::future::join_all(jobs.iter().map(|job| {
            let job_ctx = &job_ctx;
            let siblings = &siblings;
            let turns = &turns;
            async move {
                // Never closed, so only a cancellation can keep a job waiting.
                let _turn = match job_ctx.race(turns.acquire()).await {
                    Ok(Ok(turn)) => turn,
                    Ok(Err(_)) => return Err(ApiError::Internal),
                    Err(stop) => return Err(job_ctx.error(stop)),
                };
                let started = Instant::now();
                let result = self.backend.generate(job, job_ctx).await;
                self.record_job(job, &result, started.elapsed());
                match &result {
                    Ok(output) => tab.add(job, output, self.backend.kind()),
                    Err(_) => siblings.cancel(),
                }
                result
            }
        }))
        .await;
        let mut outputs = Vec::with_capacity(results.len());
        let mut first_error: Option<ApiError> = None;
        for r in results {
            match r {
                Ok(o) => outputs.push(o),
                // Prefer the error that caused the cancellation over the
                // cancellations it caused.
                Err(e) => {
                    if first_error.is_none() || matches!(first_error, Some(ApiError::ShuttingDown))
                    {
                        first_error = Some(e);
                    }
                }
            }
        }
        match first_error {
            // Images were made (and paid for): another endpoint must not
            // make them again.
            Some(e) if !outputs.is_empty() => Err(e.into_cause()),
            Some(e) => Err(e),
            None => Ok(outputs),
        }
    }

    pub(super) fn record_job(
        &self,
        job: &Job,
        result: &Result<JobOutput, ApiError>,
        total: Duration,
    ) {
        let model = job.model_id.as_ref();
        let endpoint = job.endpoint.full();
        let out = match result {
            Ok(out) => out,
            Err(e) => return self.metrics.observe_job(model, endpoint, e.outcome_label()),
        };
        self.metrics.observe_job(model, endpoint, "success");
        let phases = [
            ("total", Some(total)),
            ("queued", out.queued),
            ("running", out.running),
        ];
        for (phase, took) in phases {
            if let Some(took) = took {
                self.metrics
                    .job_duration
                    .with_label_values(&[model, phase])
                    .observe(took.as_secs_f64());
            }
        }
        self.metrics
            .images_generated
            .with_label_values(&[model, job.ratio_label(), job.delivered_format.as_str()])
            .inc_by(out.images.len() as u64);
    }

    /// One image in the form the client asked for: base64 text, a remote
    /// link, or a file this gateway serves.
    pub(super) async fn deliver(
        &self,
        image: GeneratedImage,
        response_format: ResponseFormat,
    ) -> Result<Image, ApiError> {
        let b64 = &base64::engine::general_purpose::STANDARD;
        match (response_format, image.content) {
            (ResponseFormat::B64Json, ImageContent::Base64(text)) => Ok(Image::Base64(text)),
            (ResponseFormat::B64Json, ImageContent::Raw(raw)) => {
                Ok(Image::Base64(Bytes::from(b64.encode(raw))))
            }
            (ResponseFormat::B64Json, ImageContent::Url(_)) => Err(ApiError::Upstream {
                message:
                    "The image backend answered with a link where the image itself was required."
                        .into(),
            }),
            (ResponseFormat::Url, ImageContent::Url(url)) => Ok(Image::Url(url.into())),
            (ResponseFormat::Url, ImageContent::Raw(raw)) => self.keep_file(raw).await,
            (ResponseFormat::Url, ImageContent::Base64(text)) => {
                let raw = b64.decode(&text).map_err(|_| ApiError::Upstream {
                    message: "The image backend answered with a data URI that is not base64."
                        .into(),
                })?;
                self.keep_file(Bytes::from(raw)).await
            }
        }
    }

    /// An image kept for `GET /v1/images/files/...`: only bytes that are an
    /// image file (served as the type they are, never as claimed).
    pub(super) async fn keep_file(&self, raw: Bytes) -> Result<Image, ApiError> {
        match self.files.put(raw).await {
            Some(name) => Ok(Image::File(name)),
            None => Err(ApiError::Upstream {
                message:
                    "The image backend answered with bytes that are not a PNG, JPEG or WebP image."
                        .into(),
            }),
        }
    }
}
