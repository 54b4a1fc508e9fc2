//! A validated request as the gateway will carry it out: the plan, and the
//! upstream jobs it becomes. Provider-neutral: each backend turns a [`Job`]
//! into its own wire format.

use std::sync::Arc;

use super::catalog::{EndpointId, Model};
use super::formats::{AspectRatio, OutputFormat, ResponseFormat};

/// Everything one generation needs, validated.
#[derive(Clone, Debug)]
pub struct GenerationPlan {
    pub model: Arc<Model>,
    pub prompt: Arc<str>,
    pub aspect_ratio: AspectRatio,
    pub output_format: OutputFormat,
    pub n: u8,
    pub response_format: ResponseFormat,
    pub seed: Option<u32>,
    pub stream: bool,
    pub partial_images: u8,
    /// Echoed in stream events: what the client asked for, or `auto`.
    pub quality: &'static str,
    pub background: &'static str,
    /// Fields accepted but not applied, reported in a response header.
    pub ignored_fields: Vec<String>,
}

/// Imagen on fal takes at most this many images per job.
pub const MAX_IMAGES_PER_JOB: u8 = 4;

/// One upstream job of a plan.
#[derive(Clone, Debug)]
pub struct Job {
    pub endpoint: EndpointId,
    /// The public model id, for metrics.
    pub model_id: Arc<str>,
    pub prompt: Arc<str>,
    pub aspect_ratio: AspectRatio,
    pub output_format: OutputFormat,
    pub num_images: u8,
    /// Whether the images must come back inline (`b64_json`) or may be links.
    pub delivery: ResponseFormat,
    pub seed: Option<u32>,
    /// How long the job may wait to start before it is abandoned so the
    /// chain's next endpoint can serve (`None`: the request deadline). A
    /// backend with a queue sends the smaller of this and the time left as
    /// its start timeout (fal: `X-Fal-Request-Timeout`).
    pub start_timeout: Option<std::time::Duration>,
}

/// `n` images as jobs of at most [`MAX_IMAGES_PER_JOB`]: 10 -> [4, 4, 2].
pub fn split_jobs(n: u8) -> Vec<u8> {
    let mut left = n;
    let mut jobs = Vec::with_capacity(n.div_ceil(MAX_IMAGES_PER_JOB) as usize);
    while left > 0 {
        let take = left.min(MAX_IMAGES_PER_JOB);
        jobs.push(take);
        left -= take;
    }
    jobs
}

impl GenerationPlan {
    /// The jobs this plan becomes. With a seed, the job holding images
    /// `k..` uses `seed + k`, so split jobs do not repeat each other's images.
    pub fn jobs(&self) -> Vec<Job> {
        let model_id: Arc<str> = self.model.id.as_str().into();
        let mut first = 0u32;
        split_jobs(self.n)
            .into_iter()
            .map(|num_images| {
                let job = Job {
                    endpoint: self.model.endpoint().clone(),
                    model_id: model_id.clone(),
                    prompt: self.prompt.clone(),
                    aspect_ratio: self.aspect_ratio,
                    output_format: self.output_format,
                    num_images,
                    delivery: self.response_format,
                    seed: self.seed.map(|s| s.wrapping_add(first)),
                    start_timeout: None,
                };
                first += u32::from(num_images);
                job
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_splits_into_jobs_of_at_most_four() {
        let table: [(u8, &[u8]); 10] = [
            (1, &[1]),
            (2, &[2]),
            (3, &[3]),
            (4, &[4]),
            (5, &[4, 1]),
            (6, &[4, 2]),
            (7, &[4, 3]),
            (8, &[4, 4]),
            (9, &[4, 4, 1]),
            (10, &[4, 4, 2]),
        ];
        for (n, jobs) in table {
            assert_eq!(split_jobs(n), jobs, "n={n}");
        }
    }
}
