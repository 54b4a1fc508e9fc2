//! OpenAI's request rules: each field checked against OpenAI's own values
//! (naming the field in `param` when it is wrong) and resolved against the
//! model catalog into a [`GenerationPlan`]. Pure functions, table-tested.
//! How a valid request lands on each endpoint of the model's chain (size to
//! that endpoint's nearest option, `n` by its per-call maximum, ...) is the
//! plan's business (`crate::domain::plan`), per endpoint.

use crate::domain::{
    GenerationPlan, ModelCatalog, Moderation, OutputFormat, Quality, ResponseFormat, SizeRequest,
};
use crate::error::ApiError;

use super::request::ImageGenerationRequest;

/// The sizes in OpenAI's enum (`auto` besides); any other `WxH` within the
/// bounds below is accepted too, as `gpt-image-2` does.
pub const OPENAI_SIZES: [&str; 8] = [
    "auto",
    "256x256",
    "512x512",
    "1024x1024",
    "1792x1024",
    "1024x1792",
    "1536x1024",
    "1024x1536",
];

/// OpenAI's output formats this gateway refuses: animated and vector images
/// (gpt-image-2.6), which no image model it serves can make.
pub const UNSUPPORTED_OUTPUT_FORMATS: [&str; 2] = ["gif", "svg"];

/// Bounds on an arbitrary `WxH`: each side, and the long-to-short ratio
/// (OpenAI's own rule for free sizes is 1:3 to 3:1).
pub const MIN_SIDE: u32 = 64;
pub const MAX_SIDE: u32 = 4096;
pub const MAX_SIDE_RATIO: f64 = 3.0;

/// Most images one request may ask for (OpenAI's `n` range is 1..10).
pub const MAX_IMAGES: i64 = 10;

/// Limits [`plan`] enforces that come from configuration.
#[derive(Clone, Copy, Debug)]
pub struct PlanLimits {
    pub max_prompt_chars: usize,
}

/// `size` as the client meant it: `auto` (or none), or its pixels; a
/// malformed or out-of-bounds value is a 400 naming `size`.
pub fn size_request(size: Option<&str>) -> Result<SizeRequest, ApiError> {
    match size {
        None | Some("auto") => Ok(SizeRequest::Auto),
        Some(size) => {
            let (width, height) = parse_dimensions(size).ok_or_else(|| invalid_size(size))?;
            Ok(SizeRequest::Exact { width, height })
        }
    }
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
    let ratio = f64::from(w.max(h)) / f64::from(w.min(h));
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

/// A client's text, cut short for an error message.
fn shown(value: &str) -> String {
    value.chars().take(32).collect()
}

/// `value` must be one of `allowed`; `None` stays `None`.
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
                    shown(value)
                ),
                param,
            )
        })
}

/// An integer field within `range`; `None` when absent.
fn in_range(
    value: Option<i64>,
    range: std::ops::RangeInclusive<i64>,
    param: &'static str,
) -> Result<Option<i64>, ApiError> {
    match value {
        Some(v) if !range.contains(&v) => Err(ApiError::invalid(
            format!(
                "Invalid '{param}': {v}. It must be between {} and {}.",
                range.start(),
                range.end()
            ),
            param,
        )),
        other => Ok(other),
    }
}

fn prompt_of(req: &ImageGenerationRequest, limits: PlanLimits) -> Result<&str, ApiError> {
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
    Ok(prompt)
}

/// How images travel back: as asked, else `b64_json` for the GPT image
/// names (OpenAI's GPT image models always answer base64), else `url`.
fn response_format_of(
    value: Option<&str>,
    requested_model: Option<&str>,
) -> Result<ResponseFormat, ApiError> {
    match one_of(value, &["url", "b64_json"], "response_format")? {
        Some("b64_json") => Ok(ResponseFormat::B64Json),
        Some(_) => Ok(ResponseFormat::Url),
        None if requested_model.is_some_and(|n| n.starts_with("gpt-image")) => {
            Ok(ResponseFormat::B64Json)
        }
        None => Ok(ResponseFormat::Url),
    }
}

fn output_format_of(value: Option<&str>) -> Result<OutputFormat, ApiError> {
    let names = OutputFormat::ALL.map(OutputFormat::as_str);
    Ok(one_of(value, &names, "output_format")?
        .and_then(OutputFormat::from_name)
        .unwrap_or(OutputFormat::Png))
}

/// Validate a request and resolve it against the model table.
pub fn plan(
    req: &ImageGenerationRequest,
    unknown_fields: Vec<String>,
    catalog: &ModelCatalog,
    limits: PlanLimits,
) -> Result<GenerationPlan, ApiError> {
    let prompt = prompt_of(req, limits)?;
    let model = match req.model.as_deref() {
        None => catalog.default_model().clone(),
        Some(name) => catalog
            .resolve(name)
            .ok_or_else(|| ApiError::ModelNotFound {
                model: name.chars().take(64).collect(),
            })?
            .clone(),
    };
    let n = in_range(req.n, 1..=MAX_IMAGES, "n")?.unwrap_or(1);
    let size = size_request(req.size.as_deref())?;
    let response_format = response_format_of(req.response_format.as_deref(), req.model.as_deref())?;
    if let Some(format) = req.output_format.as_deref()
        && UNSUPPORTED_OUTPUT_FORMATS.contains(&format)
    {
        return Err(ApiError::invalid(
            format!(
                "output_format '{format}' (animated or vector output) is not supported by the image models this gateway serves: use 'png', 'jpeg' or 'webp'."
            ),
            "output_format",
        ));
    }
    if req.frame_count.is_some() {
        return Err(ApiError::invalid(
            "'frame_count' is for animated output, which the image models this gateway serves cannot make: leave it out.",
            "frame_count",
        ));
    }
    let output_format = output_format_of(req.output_format.as_deref())?;
    in_range(req.output_compression, 0..=100, "output_compression")?;
    let quality = one_of(
        req.quality.as_deref(),
        &Quality::ALL.map(Quality::as_str),
        "quality",
    )?
    .and_then(Quality::from_name)
    .unwrap_or(Quality::Auto);
    let style = one_of(req.style.as_deref(), &["vivid", "natural"], "style")?;
    let background = one_of(
        req.background.as_deref(),
        &["auto", "opaque", "transparent"],
        "background",
    )?;
    if background == Some("transparent") {
        return Err(ApiError::invalid(
            "The image models this gateway serves cannot generate transparent backgrounds: use 'auto' or 'opaque'.",
            "background",
        ));
    }
    let moderation = match one_of(req.moderation.as_deref(), &["auto", "low"], "moderation")? {
        Some("low") => Moderation::Low,
        _ => Moderation::Auto,
    };
    let complexity = one_of(
        req.complexity.as_deref(),
        &["low", "medium", "high"],
        "complexity",
    )?;
    in_range(req.frame_duration_ms, 1..=60_000, "frame_duration_ms")?;
    let partial_images = in_range(req.partial_images, 0..=3, "partial_images")?.unwrap_or(0);
    let seed = in_range(req.seed, 0..=i64::from(u32::MAX), "seed")?.map(|s| s as u32);

    // Fields no endpoint applies; what the serving endpoint cannot honour
    // (quality, format, seed, moderation) is added per endpoint.
    let mut ignored_fields = Vec::new();
    for (name, ignored) in [
        ("style", style.is_some()),
        ("output_compression", req.output_compression.is_some()),
        ("user", req.user.is_some()),
        ("safety_identifier", req.safety_identifier.is_some()),
        ("complexity", complexity.is_some()),
        ("frame_duration_ms", req.frame_duration_ms.is_some()),
    ] {
        if ignored {
            ignored_fields.push(name.to_owned());
        }
    }
    ignored_fields.extend(unknown_fields);
    Ok(GenerationPlan {
        model,
        prompt: prompt.into(),
        size,
        output_format,
        n: n as u8,
        response_format,
        seed,
        quality,
        moderation,
        stream: req.stream.unwrap_or(false),
        partial_images: partial_images as u8,
        background: background.unwrap_or("auto"),
        ignored_fields,
    })
}

/// Test support: a plan from a JSON body against the built-in catalog.
#[cfg(test)]
pub(crate) fn plan_json(json: &str) -> Result<GenerationPlan, ApiError> {
    let parsed = super::request::parse_generation_body(json.as_bytes())?;
    let catalog = crate::config::ModelSettings::default()
        .catalog()
        .expect("the built-in catalog is valid");
    plan(
        &parsed.request,
        parsed.unknown_fields,
        &catalog,
        PlanLimits {
            max_prompt_chars: 32_000,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelSettings;

    fn param(err: ApiError) -> Option<String> {
        err.param().map(str::to_owned)
    }

    /// The `aspect_ratio` a size becomes on `model`'s first endpoint.
    fn ratio_on(model: &str, size: Option<&str>) -> String {
        let size = size.map_or(String::new(), |s| format!(r#","size":"{s}""#));
        let plan = plan_json(&format!(r#"{{"prompt":"x","model":"{model}"{size}}}"#)).unwrap();
        match &plan.jobs()[0].size {
            crate::domain::profile::SizeChoice::AspectRatio(r) => r.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn imagen_ratio(size: Option<&str>) -> String {
        ratio_on("imagen-4-fast", size)
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
            assert_eq!(imagen_ratio(size), ratio, "{size:?}");
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
            assert_eq!(imagen_ratio(Some(size)), ratio, "{size}");
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
            let err = size_request(Some(size)).unwrap_err();
            assert_eq!(param(err).as_deref(), Some("size"), "{size:?}");
        }
    }

    #[test]
    fn defaults_are_one_square_png_by_url_without_seed() {
        let plan = plan_json(r#"{"prompt":"x"}"#).unwrap();
        assert_eq!(plan.model.id, "imagen-4-fast");
        assert_eq!(
            (
                plan.size,
                plan.n,
                plan.output_format,
                plan.response_format,
                plan.seed
            ),
            (
                SizeRequest::Auto,
                1,
                OutputFormat::Png,
                ResponseFormat::Url,
                None
            )
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
            assert_eq!(plan.model.endpoint().full(), endpoint, "{model}");
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
        let parsed = super::super::request::parse_generation_body(
            format!(r#"{{"prompt":"{}"}}"#, "é".repeat(11)).as_bytes(),
        )
        .unwrap();
        let catalog = ModelSettings::default().catalog().unwrap();
        let short = PlanLimits {
            max_prompt_chars: 10,
        };
        let err = plan(&parsed.request, vec![], &catalog, short).unwrap_err();
        assert_eq!(param(err).as_deref(), Some("prompt"));
        let ok = PlanLimits {
            max_prompt_chars: 11,
        };
        assert!(plan(&parsed.request, vec![], &catalog, ok).is_ok());
    }

    #[test]
    fn accepted_but_unapplied_fields_are_reported() {
        let plan = plan_json(
            r#"{"prompt":"x","quality":"hd","style":"vivid","user":"u1","output_compression":50,
                "moderation":"auto","background":"opaque","frobnicate":true,
                "safety_identifier":"hash-1","complexity":"high","frame_duration_ms":80}"#,
        )
        .unwrap();
        assert_eq!(
            plan.ignored_fields,
            [
                "style",
                "output_compression",
                "user",
                "safety_identifier",
                "complexity",
                "frame_duration_ms",
                "frobnicate"
            ]
        );
        assert_eq!(plan.quality, Quality::Hd);
        assert_eq!(plan.background, "opaque");
        // Imagen 4 fast has no resolution tiers: `hd` cannot be honoured there.
        assert_eq!(plan.for_endpoint(plan.model.primary()).ignored, ["quality"]);
    }

    #[test]
    fn size_maps_to_the_nearest_option_of_each_endpoint() {
        // nano-banana's 3:2 for 1536x1024, not Imagen's 4:3.
        assert_eq!(ratio_on("imagen-4", Some("1536x1024")), "4:3");
        assert_eq!(ratio_on("nano-banana-2", Some("1536x1024")), "3:2");
        assert_eq!(ratio_on("nano-banana-pro", Some("1024x1536")), "2:3");
        assert_eq!(ratio_on("nano-banana-2", Some("2048x880")), "21:9");
        assert_eq!(ratio_on("nano-banana-2", None), "1:1");
        // FLUX takes the size itself, within its bounds.
        let plan = plan_json(r#"{"prompt":"x","model":"flux-dev","size":"1024x1536"}"#).unwrap();
        let jobs = plan.jobs();
        assert_eq!(
            jobs[0].size,
            crate::domain::profile::SizeChoice::Custom {
                width: 1024,
                height: 1536
            }
        );
        assert_eq!(jobs[0].expected_size, (1024, 1536));
    }

    #[test]
    fn quality_and_size_choose_the_resolution_tier_where_there_is_one() {
        let tier = |body: &str| plan_json(body).unwrap().jobs()[0].resolution.clone();
        assert_eq!(
            tier(r#"{"prompt":"x","model":"imagen-4"}"#).as_deref(),
            Some("1K")
        );
        assert_eq!(
            tier(r#"{"prompt":"x","model":"imagen-4","size":"1792x1024"}"#).as_deref(),
            Some("2K")
        );
        assert_eq!(
            tier(r#"{"prompt":"x","model":"imagen-4","quality":"hd"}"#).as_deref(),
            Some("2K")
        );
        assert_eq!(
            tier(r#"{"prompt":"x","model":"imagen-4-ultra","quality":"high"}"#).as_deref(),
            Some("2K")
        );
        assert_eq!(
            tier(r#"{"prompt":"x","model":"imagen-4-fast","quality":"hd"}"#),
            None
        );
        assert_eq!(
            tier(r#"{"prompt":"x","model":"nano-banana-2","quality":"xhigh"}"#).as_deref(),
            Some("4K")
        );
        assert_eq!(
            tier(r#"{"prompt":"x","model":"nano-banana-2","size":"512x512"}"#).as_deref(),
            Some("0.5K")
        );
        assert_eq!(
            tier(r#"{"prompt":"x","model":"nano-banana-pro","quality":"max"}"#).as_deref(),
            Some("4K")
        );
        let plan = plan_json(r#"{"prompt":"x","model":"imagen-4","size":"1792x1024"}"#).unwrap();
        assert_eq!(plan.for_endpoint(plan.model.primary()).size, (2816, 1536));
    }

    #[test]
    fn moderation_low_is_a_more_permissive_safety_tolerance_where_there_is_one() {
        let plan = plan_json(r#"{"prompt":"x","model":"imagen-4","moderation":"low"}"#).unwrap();
        assert_eq!(plan.jobs()[0].safety_tolerance.as_deref(), Some("5"));
        let auto = plan_json(r#"{"prompt":"x","model":"imagen-4","moderation":"auto"}"#).unwrap();
        assert_eq!(auto.jobs()[0].safety_tolerance, None);
        let flux = plan_json(r#"{"prompt":"x","model":"flux-dev","moderation":"low"}"#).unwrap();
        let on_flux = flux.for_endpoint(flux.model.primary());
        assert_eq!(on_flux.jobs[0].safety_tolerance, None);
        assert_eq!(on_flux.ignored, ["moderation"]);
    }

    #[test]
    fn n_splits_by_each_endpoints_most_images_per_call() {
        let counts = |model: &str| -> Vec<u8> {
            plan_json(&format!(r#"{{"prompt":"x","model":"{model}","n":7}}"#))
                .unwrap()
                .jobs()
                .iter()
                .map(|j| j.num_images)
                .collect()
        };
        assert_eq!(counts("imagen-4-fast"), [4, 3]);
        assert_eq!(counts("imagen-4-ultra"), [1; 7]);
        assert_eq!(counts("flux-2-pro"), [1; 7]);
        assert_eq!(counts("seedream-4"), [6, 1]);
    }

    #[test]
    fn formats_an_endpoint_lacks_are_reported_and_delivered_honestly() {
        let plan =
            plan_json(r#"{"prompt":"x","model":"flux-schnell","output_format":"webp"}"#).unwrap();
        let on_flux = plan.for_endpoint(plan.model.primary());
        assert_eq!(on_flux.output_format, OutputFormat::Png);
        assert_eq!(on_flux.jobs[0].output_format, Some(OutputFormat::Png));
        assert_eq!(on_flux.ignored, ["output_format"]);
    }

    #[test]
    fn the_2026_fields_for_animation_are_refused_naming_the_field() {
        for (body, field) in [
            (r#"{"prompt":"x","output_format":"gif"}"#, "output_format"),
            (r#"{"prompt":"x","output_format":"svg"}"#, "output_format"),
            (r#"{"prompt":"x","frame_count":4}"#, "frame_count"),
            (r#"{"prompt":"x","complexity":"extreme"}"#, "complexity"),
        ] {
            let err = plan_json(body).unwrap_err();
            assert_eq!(param(err).as_deref(), Some(field), "{body}");
        }
        for quality in ["xhigh", "max"] {
            assert!(plan_json(&format!(r#"{{"prompt":"x","quality":"{quality}"}}"#)).is_ok());
        }
    }
}
