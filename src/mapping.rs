//! The OpenAI-to-fal translation as plain functions over plain types: size to
//! aspect ratio, formats, `n` to jobs, model names to fal endpoints, and the
//! cache key. No I/O here, so every rule is table-tested below.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::openai::ImageGenerationRequest;
use crate::settings::ModelSettings;

/// The aspect ratios Imagen 4 accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AspectRatio {
    Square,
    Landscape16x9,
    Portrait9x16,
    Landscape4x3,
    Portrait3x4,
}

impl AspectRatio {
    pub const ALL: [AspectRatio; 5] = [
        AspectRatio::Square,
        AspectRatio::Landscape16x9,
        AspectRatio::Portrait9x16,
        AspectRatio::Landscape4x3,
        AspectRatio::Portrait3x4,
    ];

    /// fal's `aspect_ratio` value.
    pub fn as_str(self) -> &'static str {
        match self {
            AspectRatio::Square => "1:1",
            AspectRatio::Landscape16x9 => "16:9",
            AspectRatio::Portrait9x16 => "9:16",
            AspectRatio::Landscape4x3 => "4:3",
            AspectRatio::Portrait3x4 => "3:4",
        }
    }

    /// Width over height.
    fn ratio(self) -> f64 {
        match self {
            AspectRatio::Square => 1.0,
            AspectRatio::Landscape16x9 => 16.0 / 9.0,
            AspectRatio::Portrait9x16 => 9.0 / 16.0,
            AspectRatio::Landscape4x3 => 4.0 / 3.0,
            AspectRatio::Portrait3x4 => 3.0 / 4.0,
        }
    }

    /// The pixel size Imagen 4 delivers for this ratio.
    pub fn imagen_dimensions(self) -> (u32, u32) {
        match self {
            AspectRatio::Square => (1024, 1024),
            AspectRatio::Landscape16x9 => (1408, 768),
            AspectRatio::Portrait9x16 => (768, 1408),
            AspectRatio::Landscape4x3 => (1280, 896),
            AspectRatio::Portrait3x4 => (896, 1280),
        }
    }
}

/// Sizes in OpenAI's enum and the ratio each maps to.
pub const OPENAI_SIZES: [(&str, AspectRatio); 8] = [
    ("auto", AspectRatio::Square),
    ("256x256", AspectRatio::Square),
    ("512x512", AspectRatio::Square),
    ("1024x1024", AspectRatio::Square),
    ("1792x1024", AspectRatio::Landscape16x9),
    ("1024x1792", AspectRatio::Portrait9x16),
    ("1536x1024", AspectRatio::Landscape4x3),
    ("1024x1536", AspectRatio::Portrait3x4),
];

/// Bounds on an arbitrary `WxH`: each side, and the long-to-short ratio
/// (OpenAI's own rule for free sizes is 1:3 to 3:1).
pub const MIN_SIDE: u32 = 64;
pub const MAX_SIDE: u32 = 4096;
pub const MAX_SIDE_RATIO: f64 = 3.0;

/// `size` to the Imagen aspect ratio: the enum by table, any other valid `WxH`
/// to the supported ratio nearest in log space.
pub fn aspect_ratio_for_size(size: Option<&str>) -> Result<AspectRatio, ApiError> {
    let Some(size) = size else {
        return Ok(AspectRatio::Square);
    };
    if let Some((_, ratio)) = OPENAI_SIZES.iter().find(|(s, _)| *s == size) {
        return Ok(*ratio);
    }
    let (w, h) = parse_dimensions(size).ok_or_else(|| invalid_size(size))?;
    let target = (w as f64 / h as f64).ln();
    let nearest = AspectRatio::ALL
        .into_iter()
        .min_by(|a, b| {
            let da = (a.ratio().ln() - target).abs();
            let db = (b.ratio().ln() - target).abs();
            da.total_cmp(&db)
        })
        .unwrap_or(AspectRatio::Square);
    Ok(nearest)
}

fn parse_dimensions(size: &str) -> Option<(u32, u32)> {
    let (w, h) = size.split_once(['x', 'X'])?;
    let side = |s: &str| -> Option<u32> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let v: u32 = s.parse().ok()?;
        (MIN_SIDE..=MAX_SIDE).contains(&v).then_some(v)
    };
    let (w, h) = (side(w)?, side(h)?);
    let ratio = w.max(h) as f64 / w.min(h) as f64;
    (ratio <= MAX_SIDE_RATIO).then_some((w, h))
}

fn invalid_size(size: &str) -> ApiError {
    let shown: String = size.chars().take(32).collect();
    ApiError::invalid(
        format!(
            "Invalid size '{shown}'. Supported values are 'auto', '256x256', '512x512', '1024x1024', '1792x1024', '1024x1792', '1536x1024', '1024x1536', or WIDTHxHEIGHT with each side between {MIN_SIDE} and {MAX_SIDE} and an aspect ratio between 1:3 and 3:1."
        ),
        "size",
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Webp => "webp",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }

    fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("png") => Ok(OutputFormat::Png),
            Some("jpeg") => Ok(OutputFormat::Jpeg),
            Some("webp") => Ok(OutputFormat::Webp),
            Some(other) => Err(ApiError::invalid(
                format!(
                    "Invalid output_format '{}'. Supported values are 'png', 'jpeg' and 'webp'.",
                    other.chars().take(32).collect::<String>()
                ),
                "output_format",
            )),
        }
    }
}

/// How images travel back to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseFormat {
    Url,
    B64Json,
}

impl ResponseFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFormat::Url => "url",
            ResponseFormat::B64Json => "b64_json",
        }
    }

    /// fal's `sync_mode`: data URIs in the answer instead of CDN URLs.
    pub fn sync_mode(self) -> bool {
        self == ResponseFormat::B64Json
    }
}

/// A fal endpoint id, `owner/alias[/path]`, with the `owner/alias` prefix the
/// queue's status, result and cancel URLs use.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointId {
    full: Arc<str>,
    app_len: usize,
}

impl EndpointId {
    pub fn parse(id: &str) -> Option<Self> {
        let mut parts = id.split('/');
        let owner = parts.next()?;
        let alias = parts.next()?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && s != "."
                && s != ".."
        };
        if !valid(owner) || !valid(alias) || !parts.all(valid) {
            return None;
        }
        Some(Self {
            full: id.into(),
            app_len: owner.len() + 1 + alias.len(),
        })
    }

    /// `fal-ai/imagen4/preview/fast`
    pub fn full(&self) -> &str {
        &self.full
    }

    /// `fal-ai/imagen4`
    pub fn app(&self) -> &str {
        &self.full[..self.app_len]
    }
}

/// A public model as the gateway serves it.
#[derive(Debug)]
pub struct Model {
    pub id: String,
    pub endpoint: EndpointId,
    pub aliases: Vec<String>,
}

/// The model table: names (ids and aliases) to models.
#[derive(Debug)]
pub struct ModelCatalog {
    models: Vec<Arc<Model>>,
    by_name: HashMap<String, Arc<Model>>,
    default: Arc<Model>,
}

impl ModelCatalog {
    /// Built from validated settings; `None` only if they were not validated.
    pub fn from_settings(settings: &ModelSettings) -> Option<Self> {
        let mut models = Vec::new();
        let mut by_name = HashMap::new();
        for entry in &settings.catalog {
            let model = Arc::new(Model {
                id: entry.id.clone(),
                endpoint: EndpointId::parse(&entry.endpoint)?,
                aliases: entry.aliases.clone(),
            });
            for name in std::iter::once(&entry.id).chain(&entry.aliases) {
                by_name.insert(name.clone(), model.clone());
            }
            models.push(model);
        }
        let default = by_name.get(&settings.default)?.clone();
        Some(Self {
            models,
            by_name,
            default,
        })
    }

    pub fn models(&self) -> &[Arc<Model>] {
        &self.models
    }

    pub fn default_model(&self) -> &Arc<Model> {
        &self.default
    }

    /// A name as a client sent it; exact match, then case-insensitive.
    pub fn resolve(&self, name: &str) -> Option<&Arc<Model>> {
        self.by_name.get(name).or_else(|| {
            self.by_name
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    }

    /// Every public name (ids then aliases) with its model.
    pub fn names(&self) -> impl Iterator<Item = (&str, &Arc<Model>)> {
        self.models.iter().flat_map(|m| {
            std::iter::once(m.id.as_str())
                .chain(m.aliases.iter().map(String::as_str))
                .map(move |name| (name, m))
        })
    }
}

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

/// Limits `plan` enforces that come from configuration.
#[derive(Clone, Copy, Debug)]
pub struct PlanLimits {
    pub max_prompt_chars: usize,
}

pub const MAX_IMAGES: i64 = 10;
/// Imagen on fal takes at most this many images per job.
pub const MAX_IMAGES_PER_JOB: u8 = 4;

fn one_of(
    value: Option<&str>,
    allowed: &[&'static str],
    param: &'static str,
) -> Result<Option<&'static str>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    allowed
        .iter()
        .find(|a| **a == value)
        .map(|a| Some(*a))
        .ok_or_else(|| {
            let list = allowed
                .iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(", ");
            ApiError::invalid(
                format!(
                    "Invalid {param} '{}'. Supported values are {list}.",
                    value.chars().take(32).collect::<String>()
                ),
                param,
            )
        })
}

/// Validate a request and resolve it against the model table.
pub fn plan(
    req: &ImageGenerationRequest,
    unknown_fields: Vec<String>,
    catalog: &ModelCatalog,
    limits: PlanLimits,
) -> Result<GenerationPlan, ApiError> {
    let prompt = match req.prompt.as_deref() {
        None => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'prompt'.",
                "prompt",
            ));
        }
        Some(p) if p.trim().is_empty() => {
            return Err(ApiError::invalid("'prompt' must not be empty.", "prompt"));
        }
        Some(p) => p,
    };
    let chars = prompt.chars().count();
    if chars > limits.max_prompt_chars {
        return Err(ApiError::invalid(
            format!(
                "'prompt' is too long: {chars} characters, the maximum is {}.",
                limits.max_prompt_chars
            ),
            "prompt",
        ));
    }
    let (model, requested_name) = match req.model.as_deref() {
        None => (catalog.default_model().clone(), None),
        Some(name) => match catalog.resolve(name) {
            Some(m) => (m.clone(), Some(name)),
            None => {
                return Err(ApiError::ModelNotFound {
                    model: name.chars().take(64).collect(),
                });
            }
        },
    };
    let n = req.n.unwrap_or(1);
    if !(1..=MAX_IMAGES).contains(&n) {
        return Err(ApiError::invalid(
            format!("Invalid 'n': {n}. It must be between 1 and {MAX_IMAGES}."),
            "n",
        ));
    }
    let aspect_ratio = aspect_ratio_for_size(req.size.as_deref())?;
    let response_format = match req.response_format.as_deref() {
        Some("url") => ResponseFormat::Url,
        Some("b64_json") => ResponseFormat::B64Json,
        Some(other) => {
            return Err(ApiError::invalid(
                format!(
                    "Invalid response_format '{}'. Supported values are 'url' and 'b64_json'.",
                    other.chars().take(32).collect::<String>()
                ),
                "response_format",
            ));
        }
        // GPT image models always answer base64; keep that for their aliases.
        None if requested_name.is_some_and(|n| n.starts_with("gpt-image")) => {
            ResponseFormat::B64Json
        }
        None => ResponseFormat::Url,
    };
    let output_format = OutputFormat::parse(req.output_format.as_deref())?;
    if let Some(c) = req.output_compression
        && !(0..=100).contains(&c)
    {
        return Err(ApiError::invalid(
            format!("Invalid output_compression {c}. It must be between 0 and 100."),
            "output_compression",
        ));
    }
    let quality = one_of(
        req.quality.as_deref(),
        &["auto", "standard", "hd", "low", "medium", "high"],
        "quality",
    )?;
    let style = one_of(req.style.as_deref(), &["vivid", "natural"], "style")?;
    let background = one_of(
        req.background.as_deref(),
        &["auto", "opaque", "transparent"],
        "background",
    )?;
    if background == Some("transparent") {
        return Err(ApiError::invalid(
            "Imagen 4 cannot generate transparent backgrounds: use 'auto' or 'opaque'.",
            "background",
        ));
    }
    let moderation = one_of(req.moderation.as_deref(), &["auto", "low"], "moderation")?;
    let partial_images = req.partial_images.unwrap_or(0);
    if !(0..=3).contains(&partial_images) {
        return Err(ApiError::invalid(
            format!("Invalid partial_images {partial_images}. It must be between 0 and 3."),
            "partial_images",
        ));
    }
    let seed = match req.seed {
        None => None,
        Some(s) => Some(u32::try_from(s).map_err(|_| {
            ApiError::invalid(
                format!("Invalid seed {s}. It must be between 0 and {}.", u32::MAX),
                "seed",
            )
        })?),
    };
    let mut ignored_fields = Vec::new();
    let mut note = |name: &str, set: bool| {
        if set {
            ignored_fields.push(name.to_owned());
        }
    };
    note(
        "quality",
        quality.is_some_and(|q| q != "auto" && q != "standard"),
    );
    note("style", style.is_some());
    note("moderation", moderation == Some("low"));
    note("output_compression", req.output_compression.is_some());
    note("user", req.user.is_some());
    ignored_fields.extend(unknown_fields);
    Ok(GenerationPlan {
        model,
        prompt: prompt.into(),
        aspect_ratio,
        output_format,
        n: n as u8,
        response_format,
        seed,
        stream: req.stream.unwrap_or(false),
        partial_images: partial_images as u8,
        quality: quality.unwrap_or("auto"),
        background: background.unwrap_or("auto"),
        ignored_fields,
    })
}

/// `n` images as fal jobs of at most four: 10 -> [4, 4, 2].
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

/// The model input fal receives (Imagen 4's schema).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FalInput {
    pub prompt: Arc<str>,
    pub aspect_ratio: &'static str,
    pub num_images: u8,
    pub output_format: &'static str,
    pub sync_mode: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
}

/// One fal job of a plan.
#[derive(Clone, Debug)]
pub struct Job {
    pub endpoint: EndpointId,
    pub model_id: Arc<str>,
    pub aspect_ratio: AspectRatio,
    pub output_format: OutputFormat,
    pub input: FalInput,
}

impl GenerationPlan {
    /// The fal jobs this plan becomes. With a seed, the job holding images
    /// `k..` uses `seed + k`, so split jobs do not repeat each other's images.
    pub fn jobs(&self) -> Vec<Job> {
        let model_id: Arc<str> = self.model.id.as_str().into();
        let mut first = 0u32;
        split_jobs(self.n)
            .into_iter()
            .map(|num_images| {
                let job = Job {
                    endpoint: self.model.endpoint.clone(),
                    model_id: model_id.clone(),
                    aspect_ratio: self.aspect_ratio,
                    output_format: self.output_format,
                    input: FalInput {
                        prompt: self.prompt.clone(),
                        aspect_ratio: self.aspect_ratio.as_str(),
                        num_images,
                        output_format: self.output_format.as_str(),
                        sync_mode: self.response_format.sync_mode(),
                        seed: self.seed.map(|s| s.wrapping_add(first)),
                    },
                };
                first += u32::from(num_images);
                job
            })
            .collect()
    }

    /// The cache key: a digest of everything that changes the upstream
    /// requests (endpoint, prompt, ratio, format, count, sync mode, seed), plus
    /// the tenant when the cache is scoped per key. Model aliases resolve first,
    /// so `dall-e-3` and `imagen-4-fast` share entries.
    pub fn cache_key(&self, tenant: Option<&[u8]>) -> CacheKey {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(self.model.endpoint.full().as_bytes());
        field(self.prompt.as_bytes());
        field(self.aspect_ratio.as_str().as_bytes());
        field(self.output_format.as_str().as_bytes());
        field(&[self.n]);
        field(self.response_format.as_str().as_bytes());
        match self.seed {
            Some(s) => field(&s.to_le_bytes()),
            None => field(b"-"),
        }
        field(tenant.unwrap_or(b""));
        CacheKey(h.finalize().into())
    }
}

/// A fixed-size digest: cheap to hash and compare, and holds no prompt text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ModelSettings;

    fn catalog() -> ModelCatalog {
        ModelCatalog::from_settings(&ModelSettings::default()).unwrap()
    }

    fn limits() -> PlanLimits {
        PlanLimits {
            max_prompt_chars: 32_000,
        }
    }

    fn plan_json(json: &str) -> Result<GenerationPlan, ApiError> {
        let parsed = crate::openai::parse_generation_body(json.as_bytes())?;
        plan(&parsed.request, parsed.unknown_fields, &catalog(), limits())
    }

    fn param(err: ApiError) -> Option<String> {
        err.param().map(str::to_owned)
    }

    #[test]
    fn every_openai_size_maps_to_its_ratio() {
        let table = [
            (None, "1:1"),
            (Some("auto"), "1:1"),
            (Some("256x256"), "1:1"),
            (Some("512x512"), "1:1"),
            (Some("1024x1024"), "1:1"),
            (Some("1792x1024"), "16:9"),
            (Some("1024x1792"), "9:16"),
            (Some("1536x1024"), "4:3"),
            (Some("1024x1536"), "3:4"),
        ];
        for (size, ratio) in table {
            assert_eq!(
                aspect_ratio_for_size(size).unwrap().as_str(),
                ratio,
                "{size:?}"
            );
        }
    }

    #[test]
    fn arbitrary_sizes_map_to_the_nearest_ratio_in_log_space() {
        let table = [
            ("1408x768", "16:9"),
            ("768x1408", "9:16"),
            ("1280x896", "4:3"),
            ("896x1280", "3:4"),
            ("1920x1080", "16:9"),
            ("1080x1920", "9:16"),
            ("800x600", "4:3"),
            ("600x800", "3:4"),
            ("1000x1000", "1:1"),
            ("1100x1000", "1:1"),
            // ln(1.2) = 0.182 is nearer ln(4/3) = 0.288 than 0.
            ("1200x1000", "4:3"),
            // 3:2 = 0.405: ln(4/3) = 0.288 vs ln(16/9) = 0.575.
            ("1536x1024", "4:3"),
            ("1500x1000", "4:3"),
            // 2:1 = 0.693, nearer 16:9.
            ("2048x1024", "16:9"),
            ("3072x1024", "16:9"),
            ("1024x3072", "9:16"),
            ("64x64", "1:1"),
            ("4096x4096", "1:1"),
            ("1024X768", "4:3"),
        ];
        for (size, ratio) in table {
            assert_eq!(
                aspect_ratio_for_size(Some(size)).unwrap().as_str(),
                ratio,
                "{size}"
            );
        }
    }

    #[test]
    fn malformed_sizes_are_400_with_param_size() {
        for size in [
            "",
            "0x0",
            "99999x1",
            "-5x10",
            "NaNxNaN",
            "1024",
            "1024x",
            "x1024",
            "1024x1024x2",
            "1024 x 1024",
            " 1024x1024",
            "+1024x1024",
            "1024x0",
            "63x64",
            "4097x4096",
            "4096x1024",
            "1e3x1e3",
            "1024.0x1024",
            "0x1024",
            "100000x100000",
            "AUTO",
            "large",
            "１０２４x１０２４",
        ] {
            let err = aspect_ratio_for_size(Some(size)).unwrap_err();
            assert_eq!(param(err).as_deref(), Some("size"), "{size:?}");
        }
    }

    #[test]
    fn imagen_dimensions_follow_the_ratio() {
        let table = [
            (AspectRatio::Square, (1024, 1024)),
            (AspectRatio::Landscape16x9, (1408, 768)),
            (AspectRatio::Portrait9x16, (768, 1408)),
            (AspectRatio::Landscape4x3, (1280, 896)),
            (AspectRatio::Portrait3x4, (896, 1280)),
        ];
        for (ratio, dims) in table {
            assert_eq!(ratio.imagen_dimensions(), dims);
        }
    }

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

    #[test]
    fn a_request_maps_to_the_exact_fal_input() {
        let plan = plan_json(
            r#"{"model":"imagen-4-fast","prompt":"a lighthouse at dusk","size":"1792x1024",
                "n":6,"response_format":"b64_json","output_format":"webp","seed":7}"#,
        )
        .unwrap();
        let jobs = plan.jobs();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].endpoint.full(), "fal-ai/imagen4/preview/fast");
        assert_eq!(jobs[0].endpoint.app(), "fal-ai/imagen4");
        assert_eq!(
            serde_json::to_value(&jobs[0].input).unwrap(),
            serde_json::json!({"prompt":"a lighthouse at dusk","aspect_ratio":"16:9","num_images":4,
                               "output_format":"webp","sync_mode":true,"seed":7})
        );
        assert_eq!(
            serde_json::to_value(&jobs[1].input).unwrap(),
            serde_json::json!({"prompt":"a lighthouse at dusk","aspect_ratio":"16:9","num_images":2,
                               "output_format":"webp","sync_mode":true,"seed":11})
        );
    }

    #[test]
    fn defaults_are_one_square_png_by_url_without_seed() {
        let plan = plan_json(r#"{"prompt":"x"}"#).unwrap();
        assert_eq!(plan.model.id, "imagen-4-fast");
        assert_eq!(
            serde_json::to_value(&plan.jobs()[0].input).unwrap(),
            serde_json::json!({"prompt":"x","aspect_ratio":"1:1","num_images":1,
                               "output_format":"png","sync_mode":false})
        );
    }

    #[test]
    fn models_and_aliases_resolve() {
        let table = [
            (
                "imagen-4-fast",
                "fal-ai/imagen4/preview/fast",
                ResponseFormat::Url,
            ),
            ("imagen-4", "fal-ai/imagen4/preview", ResponseFormat::Url),
            (
                "imagen-4-ultra",
                "fal-ai/imagen4/preview/ultra",
                ResponseFormat::Url,
            ),
            (
                "dall-e-2",
                "fal-ai/imagen4/preview/fast",
                ResponseFormat::Url,
            ),
            (
                "dall-e-3",
                "fal-ai/imagen4/preview/fast",
                ResponseFormat::Url,
            ),
            (
                "gpt-image-1",
                "fal-ai/imagen4/preview/fast",
                ResponseFormat::B64Json,
            ),
            (
                "gpt-image-1-mini",
                "fal-ai/imagen4/preview/fast",
                ResponseFormat::B64Json,
            ),
            (
                "gpt-image-1.5",
                "fal-ai/imagen4/preview/fast",
                ResponseFormat::B64Json,
            ),
            (
                "gpt-image-2",
                "fal-ai/imagen4/preview/fast",
                ResponseFormat::B64Json,
            ),
            (
                "Imagen-4-Fast",
                "fal-ai/imagen4/preview/fast",
                ResponseFormat::Url,
            ),
        ];
        for (model, endpoint, format) in table {
            let plan = plan_json(&format!(r#"{{"prompt":"x","model":"{model}"}}"#)).unwrap();
            assert_eq!(plan.model.endpoint.full(), endpoint, "{model}");
            assert_eq!(plan.response_format, format, "{model}");
        }
        let plan =
            plan_json(r#"{"prompt":"x","model":"gpt-image-1","response_format":"url"}"#).unwrap();
        assert_eq!(plan.response_format, ResponseFormat::Url);
    }

    #[test]
    fn unknown_models_are_404_model_not_found() {
        let err = plan_json(r#"{"prompt":"x","model":"stable-diffusion"}"#).unwrap_err();
        assert!(matches!(err, ApiError::ModelNotFound { .. }));
        assert_eq!(err.code(), Some("model_not_found"));
    }

    #[test]
    fn bad_fields_are_400_naming_the_param() {
        let table = [
            (r#"{}"#, "prompt"),
            (r#"{"prompt":""}"#, "prompt"),
            (r#"{"prompt":"   "}"#, "prompt"),
            (r#"{"prompt":"x","n":0}"#, "n"),
            (r#"{"prompt":"x","n":11}"#, "n"),
            (r#"{"prompt":"x","n":-1}"#, "n"),
            (r#"{"prompt":"x","size":"0x0"}"#, "size"),
            (
                r#"{"prompt":"x","response_format":"png"}"#,
                "response_format",
            ),
            (r#"{"prompt":"x","output_format":"gif"}"#, "output_format"),
            (
                r#"{"prompt":"x","output_compression":101}"#,
                "output_compression",
            ),
            (r#"{"prompt":"x","quality":"ultra"}"#, "quality"),
            (r#"{"prompt":"x","style":"bold"}"#, "style"),
            (r#"{"prompt":"x","background":"transparent"}"#, "background"),
            (r#"{"prompt":"x","background":"green"}"#, "background"),
            (r#"{"prompt":"x","moderation":"none"}"#, "moderation"),
            (r#"{"prompt":"x","partial_images":4}"#, "partial_images"),
            (r#"{"prompt":"x","seed":-1}"#, "seed"),
            (r#"{"prompt":"x","seed":4294967296}"#, "seed"),
        ];
        for (body, expected) in table {
            let err = plan_json(body).unwrap_err();
            assert_eq!(
                actix_web::ResponseError::status_code(&err).as_u16(),
                400,
                "{body}"
            );
            assert_eq!(param(err).as_deref(), Some(expected), "{body}");
        }
    }

    #[test]
    fn prompt_length_is_limited_in_characters() {
        let parsed = crate::openai::parse_generation_body(
            format!(r#"{{"prompt":"{}"}}"#, "é".repeat(11)).as_bytes(),
        )
        .unwrap();
        let short = PlanLimits {
            max_prompt_chars: 10,
        };
        let err = plan(&parsed.request, vec![], &catalog(), short).unwrap_err();
        assert_eq!(param(err).as_deref(), Some("prompt"));
        let ok = PlanLimits {
            max_prompt_chars: 11,
        };
        assert!(plan(&parsed.request, vec![], &catalog(), ok).is_ok());
    }

    #[test]
    fn accepted_but_unapplied_fields_are_reported() {
        let plan = plan_json(
            r#"{"prompt":"x","quality":"hd","style":"vivid","user":"u1","output_compression":50,
                "moderation":"auto","background":"opaque","frobnicate":true}"#,
        )
        .unwrap();
        assert_eq!(
            plan.ignored_fields,
            [
                "quality",
                "style",
                "output_compression",
                "user",
                "frobnicate"
            ]
        );
        assert_eq!(plan.quality, "hd");
        assert_eq!(plan.background, "opaque");
    }

    #[test]
    fn cache_keys_match_exactly_when_upstream_bodies_match() {
        let key = |json: &str| plan_json(json).unwrap().cache_key(None);
        let base = key(r#"{"prompt":"cat","model":"imagen-4-fast"}"#);
        // Same upstream body: aliases, explicit defaults, ignored fields, nulls.
        for same in [
            r#"{"prompt":"cat"}"#,
            r#"{"prompt":"cat","model":"dall-e-3","size":"1024x1024"}"#,
            r#"{"prompt":"cat","size":"auto","n":1,"output_format":"png","response_format":"url"}"#,
            r#"{"prompt":"cat","quality":"hd","style":"vivid","user":"bob","size":"512x512"}"#,
            r#"{"prompt":"cat","model":null,"n":null,"size":null}"#,
        ] {
            assert_eq!(key(same), base, "{same}");
        }
        // A different upstream body.
        for different in [
            r#"{"prompt":"cat "}"#,
            r#"{"prompt":"Cat"}"#,
            r#"{"prompt":"cat","model":"imagen-4"}"#,
            r#"{"prompt":"cat","size":"1792x1024"}"#,
            r#"{"prompt":"cat","n":2}"#,
            r#"{"prompt":"cat","output_format":"jpeg"}"#,
            r#"{"prompt":"cat","response_format":"b64_json"}"#,
            r#"{"prompt":"cat","model":"gpt-image-1"}"#,
            r#"{"prompt":"cat","seed":1}"#,
        ] {
            assert_ne!(key(different), base, "{different}");
        }
        let plan = plan_json(r#"{"prompt":"cat"}"#).unwrap();
        assert_ne!(
            plan.cache_key(Some(b"tenant-a")),
            plan.cache_key(Some(b"tenant-b"))
        );
        assert_ne!(plan.cache_key(Some(b"tenant-a")), base);
    }

    #[test]
    fn endpoint_ids_are_validated() {
        for bad in [
            "",
            "fal-ai",
            "fal-ai/",
            "/imagen4",
            "fal-ai/../x",
            "fal ai/x",
            "a/b?c",
            "a/b/",
        ] {
            assert!(EndpointId::parse(bad).is_none(), "{bad:?}");
        }
        let id = EndpointId::parse("fal-ai/imagen4/preview").unwrap();
        assert_eq!(id.app(), "fal-ai/imagen4");
    }
}
