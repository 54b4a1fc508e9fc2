//! fal's JSON, and only fal's: a model's input as its endpoint's schema names
//! it (from the job's profile), the queue's submit and status answers, and
//! the model output. Base64 image payloads are borrowed from the answer,
//! never copied.

use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use serde_json::{Map, Value};

use super::errors::protocol;
use super::inline::{Skeleton, std_alphabet_prefix};
use crate::backend::{GeneratedImage, ImageContent};
use crate::domain::profile::SizeChoice;
use crate::domain::{Job, OutputFormat, ResponseFormat};
use crate::error::ApiError;

/// The model input fal receives, in the job's endpoint's own terms (its
/// profile): `prompt`, the size as that endpoint takes it (`aspect_ratio`,
/// or `image_size` as a preset or `{width, height}`), `resolution`,
/// `num_images`, `output_format`, `sync_mode`, `seed`, `safety_tolerance`,
/// then the profile's fixed extra fields. Fields the endpoint lacks are
/// left out.
pub fn model_input(job: &Job) -> Map<String, Value> {
    let mut input = Map::new();
    input.insert("prompt".into(), Value::from(&*job.prompt));
    match &job.size {
        SizeChoice::AspectRatio(ratio) => {
            input.insert("aspect_ratio".into(), Value::from(ratio.as_str()));
        }
        SizeChoice::Preset(name) => {
            input.insert("image_size".into(), Value::from(name.as_str()));
        }
        SizeChoice::Custom { width, height } => {
            input.insert(
                "image_size".into(),
                serde_json::json!({"width": width, "height": height}),
            );
        }
    }
    if let Some(tier) = &job.resolution {
        input.insert("resolution".into(), Value::from(tier.as_str()));
    }
    if job.profile.input.num_images_field {
        input.insert("num_images".into(), Value::from(job.num_images));
    }
    if let Some(format) = job.output_format {
        input.insert("output_format".into(), Value::from(format.as_str()));
    }
    input.insert(
        "sync_mode".into(),
        Value::from(job.delivery == ResponseFormat::B64Json),
    );
    if let Some(seed) = job.seed {
        input.insert("seed".into(), Value::from(seed));
    }
    if let Some(tolerance) = &job.safety_tolerance {
        input.insert("safety_tolerance".into(), Value::from(tolerance.as_str()));
    }
    for (key, value) in &job.profile.input.extra {
        input.entry(key.clone()).or_insert_with(|| value.clone());
    }
    input
}

/// The queue's answer to a submit. The URLs are followed only when they
/// point at a configured fal origin.
#[derive(Deserialize)]
pub struct Submitted {
    pub request_id: String,
    pub status_url: Option<String>,
    pub response_url: Option<String>,
    pub cancel_url: Option<String>,
}

/// A status answer or event. A COMPLETED job's `error`/`error_type` are not
/// read: like fal's own clients, the gateway fetches the result, which
/// carries the model's real error and status code.
#[derive(Deserialize)]
pub struct Status {
    pub status: String,
}

/// The answer to `PUT <cancel_url>`.
#[derive(Deserialize)]
pub struct CancelAnswer {
    pub status: Option<String>,
}

/// Namespaces whose endpoint ids carry one more segment before
/// `owner/alias` (fal's clients' `APP_NAMESPACES`).
const NAMESPACES: [&str; 2] = ["workflows", "comfy"];

/// The part of an endpoint id the queue's request URLs live under:
/// `fal-ai/imagen4` for `fal-ai/imagen4/preview/fast`,
/// `workflows/owner/alias` for `workflows/owner/alias/path`.
pub fn app_path(endpoint: &str) -> &str {
    let segments = match endpoint.split('/').next() {
        Some(first) if NAMESPACES.contains(&first) => 3,
        _ => 2,
    };
    let end = endpoint
        .match_indices('/')
        .nth(segments - 1)
        .map_or(endpoint.len(), |(i, _)| i);
    &endpoint[..end]
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(borrow)]
    images: Option<Vec<OutputImage<'a>>>,
    /// The seed used, on endpoints that say (FLUX, Seedream).
    seed: Option<serde_json::Number>,
}

#[derive(Deserialize)]
struct OutputImage<'a> {
    #[serde(borrow)]
    url: Option<Text<'a>>,
    width: Option<u32>,
    height: Option<u32>,
    content_type: Option<&'a str>,
}

/// The model output: its images, and the seed it reports using.
#[derive(Debug)]
pub struct ParsedOutput {
    pub images: Vec<GeneratedImage>,
    pub seed: Option<u64>,
}

/// A JSON string borrowed from the answer when it has no escapes (always,
/// for base64 data URIs), so multi-megabyte payloads are not copied.
/// (serde's own `Cow` support does not borrow inside an `Option`.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The most of fal's answer an image's zero-copy slice may keep alive
/// beyond the image itself (a one-image answer's JSON); past it, the image
/// is copied out so the answer can be freed.
const MAX_PINNED_EXTRA: usize = 4096;

/// A model's output to images: data URIs become base64 (a zero-copy slice
/// of `body` when the image is nearly all of it, else a copy: a slice keeps
/// fal's whole answer alive for as long as the image is cached or written,
/// while only the image is weighed), anything else must be an http(s) URL. Each image's format is
/// read from its `content_type` (or the data URI's) when one is given.
pub fn parse_output(body: &Bytes) -> Result<ParsedOutput, ApiError> {
    // Long inline payloads are set aside first (see `inline`); the parser
    // reads what is left.
    let skeleton = Skeleton::of(body);
    let json = skeleton.as_ref().map_or(&body[..], |s| &s.json[..]);
    let output: Output<'_> = serde_json::from_slice(json)
        .map_err(|_| protocol("a result that is not the expected JSON"))?;
    let seed = output.seed.and_then(|n| n.as_u64());
    let images = output.images.unwrap_or_default();
    if images.is_empty() {
        return Err(protocol("a result without images"));
    }
    // Keep a slice of fal's answer only when the image is nearly all of it.
    let keep = |payload: Bytes| {
        if body.len() - payload.len() <= MAX_PINNED_EXTRA {
            payload
        } else {
            Bytes::copy_from_slice(&payload)
        }
    };
    let images = images
        .into_iter()
        .map(|img| {
            let size = (img.width, img.height);
            let url = img.url.ok_or_else(|| protocol("an image without url"))?.0;
            let format = img
                .content_type
                .and_then(format_of_content_type)
                .or_else(|| {
                    url.strip_prefix("data:")
                        .and_then(|rest| rest.split([';', ',']).next())
                        .and_then(format_of_content_type)
                });
            let content = if let Some(rest) = url.strip_prefix("data:") {
                let (meta, payload) = rest
                    .split_once(',')
                    .ok_or_else(|| protocol("a malformed data URI"))?;
                if !meta.ends_with(";base64") {
                    return Err(protocol("a data URI that is not base64"));
                }
                let cut = match (&url, &skeleton) {
                    (Cow::Borrowed(s), Some(skeleton)) => skeleton.payload(s, body),
                    _ => None,
                };
                let bytes = match (cut, &url) {
                    // Already checked to be standard padded base64.
                    (Some(cut), _) => {
                        return Ok(image(ImageContent::Base64(keep(cut)), size, format));
                    }
                    (None, Cow::Borrowed(s)) if skeleton.is_none() => {
                        let start = s.len() - payload.len();
                        keep(body.slice_ref(&s.as_bytes()[start..]))
                    }
                    _ => Bytes::copy_from_slice(payload.as_bytes()),
                };
                ImageContent::Base64(
                    normalize_base64(bytes)
                        .ok_or_else(|| protocol("a data URI that is not base64"))?,
                )
            } else if url.starts_with("https://") || url.starts_with("http://") {
                ImageContent::Url(url.into_owned())
            } else {
                return Err(protocol(
                    "an image url that is neither a data URI nor http(s)",
                ));
            };
            Ok(image(content, size, format))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(ParsedOutput { images, seed })
}

fn image(
    content: ImageContent,
    (width, height): (Option<u32>, Option<u32>),
    format: Option<OutputFormat>,
) -> GeneratedImage {
    GeneratedImage {
        content,
        width,
        height,
        format,
    }
}

/// `image/png` -> PNG; anything unknown -> `None`.
fn format_of_content_type(content_type: &str) -> Option<OutputFormat> {
    match content_type.trim().to_ascii_lowercase().as_str() {
        "image/png" => Some(OutputFormat::Png),
        "image/jpeg" | "image/jpg" => Some(OutputFormat::Jpeg),
        "image/webp" => Some(OutputFormat::Webp),
        _ => None,
    }
}

/// Standard padded base64, as OpenAI clients decode it. Valid input is
/// returned as is (no copy); unpadded or URL-safe input is re-encoded.
pub fn normalize_base64(b: Bytes) -> Option<Bytes> {
    let trimmed = b.iter().rposition(|c| *c != b'=').map_or(0, |i| i + 1);
    let pad = b.len() - trimmed;
    if !b.is_empty() && b.len().is_multiple_of(4) && pad <= 2 && is_std_alphabet(&b[..trimmed]) {
        return Some(b);
    }
    let engines = [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let decoded = engines.iter().find_map(|e| e.decode(&b).ok())?;
    if decoded.is_empty() {
        return None;
    }
    Some(Bytes::from(
        base64::engine::general_purpose::STANDARD.encode(decoded),
    ))
}

/// Whether every byte is in standard base64's alphabet (`A-Z a-z 0-9 + /`).
fn is_std_alphabet(b: &[u8]) -> bool {
    std_alphabet_prefix(b) == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::validate::plan_json;

    fn input(json: &str, job: usize) -> Value {
        Value::Object(model_input(&plan_json(json).unwrap().jobs()[job]))
    }

    #[test]
    fn a_request_maps_to_the_exact_fal_input() {
        let body = r#"{"model":"imagen-4-fast","prompt":"a lighthouse at dusk","size":"1792x1024",
                "n":6,"response_format":"b64_json","output_format":"webp","seed":7}"#;
        let jobs = plan_json(body).unwrap().jobs();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].endpoint.full(), "fal-ai/imagen4/preview/fast");
        assert_eq!(jobs[0].endpoint.app(), "fal-ai/imagen4");
        assert_eq!(
            input(body, 0),
            serde_json::json!({"prompt":"a lighthouse at dusk","aspect_ratio":"16:9","num_images":4,
                               "output_format":"webp","sync_mode":true,"seed":7})
        );
        assert_eq!(
            input(body, 1),
            serde_json::json!({"prompt":"a lighthouse at dusk","aspect_ratio":"16:9","num_images":2,
                               "output_format":"webp","sync_mode":true,"seed":11})
        );
    }

    #[test]
    fn request_urls_live_under_the_app_namespace_included() {
        for (id, app) in [
            ("fal-ai/imagen4/preview/fast", "fal-ai/imagen4"),
            ("fal-ai/flux-2", "fal-ai/flux-2"),
            ("openai/gpt-image-2", "openai/gpt-image-2"),
            ("workflows/acme/pipeline", "workflows/acme/pipeline"),
            ("workflows/acme/pipeline/v2", "workflows/acme/pipeline"),
            ("comfy/acme/graph/run", "comfy/acme/graph"),
        ] {
            assert_eq!(app_path(id), app, "{id}");
        }
    }

    #[test]
    fn defaults_are_one_square_png_by_url_without_seed() {
        assert_eq!(
            input(r#"{"prompt":"x"}"#, 0),
            serde_json::json!({"prompt":"x","aspect_ratio":"1:1","num_images":1,
                               "output_format":"png","sync_mode":false})
        );
    }

    #[test]
    fn each_endpoint_gets_its_own_schema() {
        // Imagen 4 standard: 2K for a large size, safety_tolerance for moderation low.
        assert_eq!(
            input(
                r#"{"prompt":"x","model":"imagen-4","size":"1792x1024","moderation":"low"}"#,
                0
            ),
            serde_json::json!({"prompt":"x","aspect_ratio":"16:9","resolution":"2K","num_images":1,
                               "output_format":"png","sync_mode":false,"safety_tolerance":"5"})
        );
        // nano-banana-2: its own 3:2 and its resolution tier.
        assert_eq!(
            input(
                r#"{"prompt":"x","model":"nano-banana-2","size":"1536x1024","n":2}"#,
                0
            ),
            serde_json::json!({"prompt":"x","aspect_ratio":"3:2","resolution":"1K","num_images":2,
                               "output_format":"png","sync_mode":false})
        );
        // FLUX: a 2:3 request is an explicit image_size; jpeg is its own.
        assert_eq!(
            input(
                r#"{"prompt":"x","model":"flux-schnell","size":"1024x1536","output_format":"jpeg","seed":3}"#,
                0
            ),
            serde_json::json!({"prompt":"x","image_size":{"width":1024,"height":1536},"num_images":1,
                               "output_format":"jpeg","sync_mode":false,"seed":3})
        );
        // FLUX.2 pro: no num_images field at all.
        assert_eq!(
            input(r#"{"prompt":"x","model":"flux-2-pro","n":2}"#, 1),
            serde_json::json!({"prompt":"x","image_size":{"width":1024,"height":1024},
                               "output_format":"png","sync_mode":false})
        );
        // Seedream: no output_format field, a fixed max_images, the pixel floor.
        assert_eq!(
            input(r#"{"prompt":"x","model":"seedream-4","size":"512x512"}"#, 0),
            serde_json::json!({"prompt":"x","image_size":{"width":960,"height":960},"num_images":1,
                               "sync_mode":false,"max_images":1})
        );
    }

    #[test]
    fn an_image_never_keeps_more_of_the_answer_alive_than_itself() {
        let big = "QUJD".repeat(4096);
        let two = Bytes::from(format!(
            r#"{{"images":[{{"url":"data:image/png;base64,{big}"}},{{"url":"data:image/png;base64,{big}"}}]}}"#
        ));
        let inside = |b: &Bytes, body: &Bytes| {
            body.as_ptr() <= b.as_ptr() && b.as_ptr() < body.as_ptr().wrapping_add(body.len())
        };
        for image in parse_output(&two).unwrap().images {
            match &image.content {
                // Copied: each is half the answer.
                ImageContent::Base64(b) => assert!(b.len() == big.len() && !inside(b, &two)),
                other => panic!("{other:?}"),
            }
        }
        // One image that is nearly the whole answer is shared, not copied.
        let one = Bytes::from(format!(
            r#"{{"images":[{{"url":"data:image/png;base64,{big}","width":64,"height":64}}],"seed":7}}"#
        ));
        match &parse_output(&one).unwrap().images[0].content {
            ImageContent::Base64(b) => assert!(inside(b, &one)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn outputs_parse_into_base64_or_urls() {
        let body = Bytes::from_static(
            br#"{"images":[{"url":"data:image/png;base64,aGVsbG8=","width":1024,"height":1024},{"url":"https://v3.fal.media/files/x.png"}],"description":""}"#,
        );
        let output = parse_output(&body).unwrap();
        let images = output.images;
        assert_eq!(output.seed, None);
        assert_eq!(images[0].format, Some(OutputFormat::Png));
        match &images[0].content {
            ImageContent::Base64(b) => {
                assert_eq!(&b[..], b"aGVsbG8=");
                // A slice of the body, not a copy: it is most of the body.
                assert!(
                    body.as_ptr() <= b.as_ptr()
                        && b.as_ptr() < body.as_ptr().wrapping_add(body.len())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(images[0].width, Some(1024));
        assert!(
            matches!(&images[1].content, ImageContent::Url(u) if u == "https://v3.fal.media/files/x.png")
        );
        assert_eq!(images[1].format, None);
        let flux = Bytes::from_static(
            br#"{"images":[{"url":"https://v3.fal.media/files/y.jpg","content_type":"image/jpeg","width":1024,"height":1536}],"seed":1234567890123,"has_nsfw_concepts":[false]}"#,
        );
        let output = parse_output(&flux).unwrap();
        assert_eq!(output.seed, Some(1_234_567_890_123));
        assert_eq!(output.images[0].format, Some(OutputFormat::Jpeg));
    }

    #[test]
    fn bad_outputs_are_protocol_errors() {
        for body in [
            "not json",
            "{}",
            r#"{"images":[]}"#,
            r#"{"images":[{"url":"data:image/png;base64,@@@@"}]}"#,
            r#"{"images":[{"url":"data:image/png,rawtext"}]}"#,
            r#"{"images":[{"url":"ftp://x/y.png"}]}"#,
            r#"{"images":[{"width":1}]}"#,
        ] {
            let e = parse_output(&Bytes::from(body.to_owned())).unwrap_err();
            assert_eq!(e.code(), Some("upstream_error"), "{body}");
        }
    }

    #[test]
    fn base64_is_normalized_to_standard_padding() {
        assert_eq!(
            &normalize_base64(Bytes::from_static(b"aGVsbG8=")).unwrap()[..],
            b"aGVsbG8="
        );
        assert_eq!(
            &normalize_base64(Bytes::from_static(b"aGVsbG8")).unwrap()[..],
            b"aGVsbG8="
        );
        assert_eq!(
            &normalize_base64(Bytes::from_static(b"-_-_")).unwrap()[..],
            b"+/+/"
        );
        assert!(normalize_base64(Bytes::from_static(b"")).is_none());
        // Long input: the block-wise check sees a bad byte anywhere.
        let long: Vec<u8> = (0..1000).map(|i| b"AZaz09+/"[i % 8]).collect();
        assert!(is_std_alphabet(&long));
        for bad in [b'-', b'_', b'=', b' ', b'@', b'[', b'`', b'{', 0x80, 0xff] {
            for at in [0, 63, 64, 500, 999] {
                let mut l = long.clone();
                l[at] = bad;
                assert!(!is_std_alphabet(&l), "{bad} at {at}");
            }
        }
        assert!(normalize_base64(Bytes::from_static(b"a")).is_none());
    }
}
