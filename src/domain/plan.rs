//! A validated request as the gateway will carry it out: the plan (what the
//! client asked for, in no endpoint's terms), and for each endpoint of the
//! model's chain the jobs it becomes there ([`GenerationPlan::for_endpoint`]):
//! the size mapped to that endpoint's own options, `n` split by its
//! per-call maximum, the format, resolution tier and safety setting it can
//! honour, and what it cannot (reported to the client). Provider-neutral:
//! each backend turns a [`Job`] into its own wire format.

use std::sync::Arc;
use std::time::Duration;

use super::catalog::{EndpointId, Model};
use super::formats::{Moderation, OutputFormat, Quality, ResponseFormat, SizeRequest, ratio_label};
use super::money::MicroUsd;
use super::profile::{EndpointProfile, SeedSupport, SizeChoice};

/// Everything one generation needs, validated.
#[derive(Clone, Debug)]
pub struct GenerationPlan {
    pub model: Arc<Model>,
    pub prompt: Arc<str>,
    pub size: SizeRequest,
    /// The format asked for (an endpoint may deliver another).
    pub output_format: OutputFormat,
    pub n: u8,
    pub response_format: ResponseFormat,
    pub seed: Option<u32>,
    pub quality: Quality,
    pub moderation: Moderation,
    pub stream: bool,
    pub partial_images: u8,
    pub background: &'static str,
    /// Fields accepted but applied by no endpoint (unknown ones, `style`,
    /// `user`, ...), reported in a response header with what the serving
    /// endpoint could not honour.
    pub ignored_fields: Vec<String>,
}

/// A plan on one endpoint.
#[derive(Clone, Debug)]
pub struct EndpointPlan {
    pub profile: Arc<EndpointProfile>,
    pub jobs: Vec<Job>,
    /// The pixel size each image should have (fal's answer says for sure).
    pub size: (u32, u32),
    pub output_format: OutputFormat,
    pub resolution: Option<String>,
    /// Request fields this endpoint cannot honour.
    pub ignored: Vec<&'static str>,
}

impl EndpointPlan {
    /// The most this plan's jobs could cost.
    pub fn max_cost(&self) -> MicroUsd {
        self.jobs.iter().map(Job::max_cost).sum()
    }
}

/// One upstream job of a plan, already in its endpoint's terms.
#[derive(Clone, Debug)]
pub struct Job {
    pub endpoint: EndpointId,
    pub profile: Arc<EndpointProfile>,
    /// The public model id, for metrics.
    pub model_id: Arc<str>,
    pub prompt: Arc<str>,
    pub size: SizeChoice,
    /// The `resolution` tier sent, if the endpoint has them.
    pub resolution: Option<String>,
    pub num_images: u8,
    /// The `output_format` sent (`None`: the endpoint has no such field).
    pub output_format: Option<OutputFormat>,
    /// The format that should arrive.
    pub delivered_format: OutputFormat,
    /// The pixel size each image should have.
    pub expected_size: (u32, u32),
    /// Whether the images must come back inline (`b64_json`) or may be links.
    pub delivery: ResponseFormat,
    pub seed: Option<u32>,
    /// The `safety_tolerance` sent, if any.
    pub safety_tolerance: Option<String>,
    /// How long the job may wait to start before it is abandoned so the
    /// chain's next endpoint can serve (`None`: the request deadline). A
    /// backend with a queue sends the smaller of this and the time left as
    /// its start timeout (fal: `X-Fal-Request-Timeout`).
    pub start_timeout: Option<Duration>,
}

/// The largest encoded image of `w`x`h` pixels a legitimate answer
/// carries: 4 bytes a pixel (8-bit RGBA stored without compression, the
/// worst a PNG gets) and half a byte more for an image a little larger than
/// planned, plus 64 KiB of container and metadata. JPEG and WebP stay far
/// below it.
pub fn max_image_bytes((w, h): (u32, u32)) -> u64 {
    let pixels = u64::from(w) * u64::from(h);
    pixels * 4 + pixels / 2 + 64 * 1024
}

/// Length of the padded base64 of `n` bytes.
pub fn base64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

/// Memory a delivered link costs at most (a URL or a file name).
const MAX_LINK_BYTES: u64 = 4 * 1024;

impl Job {
    /// The largest image this job can legitimately return (a download's cap).
    pub fn max_image_bytes(&self) -> u64 {
        max_image_bytes(self.expected_size)
    }

    /// The largest legitimate upstream answer for this job: its images
    /// inline as base64 data URIs when it asked for them inline (else their
    /// links), plus their JSON, the prompt echoed back (escaped) and 16 KiB
    /// of other fields (seed, timings, a model's description: the answers in
    /// fal's model schemas carry a few hundred bytes besides the images). It is also what a job's answer holds in the
    /// memory budget while it runs, so a `url` job counts about 24 KiB and
    /// the default budget admits some 10,000 of them at once.
    pub fn max_answer_bytes(&self) -> u64 {
        let each = match self.delivery {
            ResponseFormat::B64Json => base64_len(self.max_image_bytes()) + 1024,
            ResponseFormat::Url => MAX_LINK_BYTES,
        };
        u64::from(self.num_images) * each + self.prompt.len() as u64 * 6 + 16 * 1024
    }

    /// What this job holds in the memory budget while it waits upstream:
    /// its submit and status answers, the prompt echoed back, other fields
    /// (the allowance of [`Self::max_answer_bytes`] without the images).
    pub fn waiting_bytes(&self) -> u64 {
        self.prompt.len() as u64 * 6 + 16 * 1024
    }

    /// The most memory this job's images take once delivered in `format`.
    pub fn max_delivered_bytes(&self, format: ResponseFormat) -> u64 {
        let each = match format {
            ResponseFormat::B64Json => base64_len(self.max_image_bytes()),
            ResponseFormat::Url => MAX_LINK_BYTES,
        };
        u64::from(self.num_images) * each
    }

    /// The most this job could cost (what a budget reserves).
    pub fn max_cost(&self) -> MicroUsd {
        let (w, h) = self.expected_size;
        self.profile
            .price
            .max_cost(self.num_images, self.resolution.as_deref(), w, h)
    }

    /// What the delivered images cost: their sizes, or fal's billable
    /// units where the price is per unit.
    pub fn delivered_cost(
        &self,
        delivered: &[(u32, u32)],
        billable_units: Option<f64>,
    ) -> MicroUsd {
        self.profile
            .price
            .delivered_cost(self.resolution.as_deref(), delivered, billable_units)
    }

    /// The common ratio of the images, a bounded metric label.
    pub fn ratio_label(&self) -> &'static str {
        let (w, h) = match &self.size {
            SizeChoice::AspectRatio(value) => value
                .split_once(':')
                .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                .unwrap_or(self.expected_size),
            _ => self.expected_size,
        };
        ratio_label(w, h)
    }
}

/// `n` images as jobs of at most `max` (at least 1): 10 by 4 -> [4, 4, 2].
pub fn split_jobs(n: u8, max: u8) -> Vec<u8> {
    let max = max.max(1);
    let mut left = n;
    let mut jobs = Vec::with_capacity(n.div_ceil(max) as usize);
    while left > 0 {
        let take = left.min(max);
        jobs.push(take);
        left -= take;
    }
    jobs
}

impl GenerationPlan {
    /// The most memory this plan can hold while it is made and answered,
    /// on whichever endpoint of its chain serves it: the upstream answers
    /// being read and the delivered images. What a request holds in the
    /// memory budget from its first answer until its real answer is known.
    pub fn max_memory_bytes(&self) -> u64 {
        self.most_on_any_endpoint(|job| {
            job.max_answer_bytes() + job.max_delivered_bytes(self.response_format)
        })
    }

    /// What the plan holds in the memory budget while its jobs wait
    /// upstream, before any answer is read (then it holds
    /// [`Self::max_memory_bytes`]).
    pub fn waiting_memory_bytes(&self) -> u64 {
        self.most_on_any_endpoint(Job::waiting_bytes)
    }

    /// The largest sum of `per_job` over the jobs of the plan on one
    /// endpoint of its chain.
    fn most_on_any_endpoint(&self, per_job: impl Fn(&Job) -> u64) -> u64 {
        self.model
            .chain
            .iter()
            .map(|profile| {
                self.for_endpoint(profile)
                    .jobs
                    .iter()
                    .map(&per_job)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0)
    }

    /// The plan on `profile`'s endpoint. With a seed, the job holding
    /// images `k..` uses `seed + k`, so split jobs do not repeat each
    /// other's images.
    pub fn for_endpoint(&self, profile: &Arc<EndpointProfile>) -> EndpointPlan {
        let input = &profile.input;
        let tier = input.tier_for(self.size.longer_side(), self.quality);
        let (size, dims) = input.size_for(self.size, tier);
        let (sent_format, delivered_format, format_honoured) = input.format_for(self.output_format);
        let mut ignored = Vec::new();
        let raises_tier = self.quality.min_scale_milli().is_some();
        if matches!(self.quality, Quality::Low | Quality::Medium)
            || (raises_tier && !input.has_higher_tiers())
        {
            ignored.push("quality");
        }
        if !format_honoured {
            ignored.push("output_format");
        }
        if self.seed.is_some() && input.seed == SeedSupport::None {
            ignored.push("seed");
        }
        let safety_tolerance = match self.moderation {
            Moderation::Auto => None,
            Moderation::Low => {
                if input.safety_tolerance_low.is_none() {
                    ignored.push("moderation");
                }
                input.safety_tolerance_low.clone()
            }
        };
        let seed = self.seed.filter(|_| input.seed != SeedSupport::None);
        let model_id: Arc<str> = self.model.id.as_str().into();
        let resolution = tier.map(|t| t.value.clone());
        let mut first = 0u32;
        let jobs = split_jobs(self.n, input.max_images)
            .into_iter()
            .map(|num_images| {
                let job = Job {
                    endpoint: profile.endpoint.clone(),
                    profile: profile.clone(),
                    model_id: model_id.clone(),
                    prompt: self.prompt.clone(),
                    size: size.clone(),
                    resolution: resolution.clone(),
                    num_images,
                    output_format: sent_format,
                    delivered_format,
                    expected_size: dims,
                    delivery: self.response_format,
                    seed: seed.map(|s| s.wrapping_add(first)),
                    safety_tolerance: safety_tolerance.clone(),
                    start_timeout: None,
                };
                first += u32::from(num_images);
                job
            })
            .collect();
        EndpointPlan {
            profile: profile.clone(),
            jobs,
            size: dims,
            output_format: delivered_format,
            resolution,
            ignored,
        }
    }

    /// Every field the client sent that the endpoint `endpoint` (an id of
    /// this plan's chain) could not honour or that no endpoint applies: what
    /// `x-image-gateway-ignored-fields` lists for an answer it produced.
    pub fn ignored_on(&self, endpoint: &str) -> Vec<String> {
        let mut all = self.ignored_fields.clone();
        if let Some(profile) = self
            .model
            .chain
            .iter()
            .find(|p| p.endpoint.full() == endpoint)
        {
            let on = self.for_endpoint(profile).ignored;
            all.splice(0..0, on.iter().map(|f| (*f).to_owned()));
        }
        all
    }

    /// The jobs on the chain's first endpoint.
    pub fn jobs(&self) -> Vec<Job> {
        self.for_endpoint(self.model.primary()).jobs
    }

    /// The most this request could cost on any endpoint of its chain.
    pub fn max_cost(&self) -> MicroUsd {
        self.model
            .chain
            .iter()
            .map(|p| self.for_endpoint(p).max_cost())
            .max()
            .unwrap_or(MicroUsd::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_splits_into_jobs_of_at_most_the_endpoints_maximum() {
        let table: [(u8, u8, &[u8]); 13] = [
            (1, 4, &[1]),
            (2, 4, &[2]),
            (3, 4, &[3]),
            (4, 4, &[4]),
            (5, 4, &[4, 1]),
            (6, 4, &[4, 2]),
            (7, 4, &[4, 3]),
            (8, 4, &[4, 4]),
            (9, 4, &[4, 4, 1]),
            (10, 4, &[4, 4, 2]),
            (3, 1, &[1, 1, 1]),
            (10, 6, &[6, 4]),
            (2, 0, &[1, 1]),
        ];
        for (n, max, jobs) in table {
            assert_eq!(split_jobs(n, max), jobs, "n={n} max={max}");
        }
    }
}
