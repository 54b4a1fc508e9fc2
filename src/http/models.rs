//! `GET /v1/models` and `GET /v1/models/{model}` in OpenAI's shape, listing
//! every public id and alias. Beyond OpenAI's four fields (which the SDKs
//! read), each object shows the model's chain of fal endpoints with what
//! each can do (sizes, most images per call, formats, resolutions, seed),
//! its price and dates, and whether it is marked gone now, so clients can
//! discover what a model supports.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::AppState;
use crate::domain::profile::{SizeInput, SizeLimits};
use crate::domain::{Date, EndpointProfile, Lifecycle, Model, PriceUnit, date};
use crate::error::ApiError;
use crate::openai::validate::MAX_IMAGES;

/// A fixed `created` (2025-05-20, Imagen 4's release) so answers are stable.
const CREATED: i64 = 1_747_699_200;

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
    /// Extensions the SDKs keep as extra fields.
    /// The endpoint tried first.
    endpoint: &'a str,
    backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    alias_of: Option<&'a str>,
    /// The endpoint ids tried in order.
    endpoints: Vec<&'a str>,
    /// What the first endpoint can do.
    capabilities: Capabilities<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deprecated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sunset: Option<String>,
    chain: Vec<EndpointObject<'a>>,
}

#[derive(Serialize)]
struct Capabilities<'a> {
    /// Most images one request may ask for (`n`).
    max_n: i64,
    /// Pixel sizes delivered at the default resolution: one per
    /// `aspect_ratio` value, or the named presets.
    sizes: Vec<String>,
    /// Bounds of any other size, for endpoints that take one.
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_size: Option<CustomSize>,
    max_images_per_call: u8,
    output_formats: Vec<&'static str>,
    resolutions: Vec<&'a str>,
    /// `none`, `input` (honoured) or `input_output` (also reported back).
    seed: &'static str,
    /// Whether `moderation: "low"` is honoured (as a `safety_tolerance`).
    moderation: bool,
}

#[derive(Serialize)]
struct CustomSize {
    min_side: u32,
    max_side: u32,
    multiple_of: u32,
    min_pixels: u64,
    max_pixels: u64,
}

#[derive(Serialize)]
struct EndpointObject<'a> {
    endpoint: &'a str,
    title: &'a str,
    capabilities: Capabilities<'a>,
    price: PriceObject,
    #[serde(skip_serializing_if = "Option::is_none")]
    deprecated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sunset: Option<String>,
    /// Past its sunset date: skipped.
    retired: bool,
    /// Answered 404/410 lately: skipped until `models.gone_skip_seconds`
    /// pass.
    gone: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    unconfirmed: &'a [String],
}

#[derive(Serialize)]
struct PriceObject {
    /// `image`, `megapixel` or `billable_unit`.
    unit: &'static str,
    /// Dollars per unit at the default resolution, as a decimal string.
    usd: String,
    description: String,
    checked: String,
}

fn capabilities(p: &EndpointProfile) -> Capabilities<'_> {
    let input = &p.input;
    let custom_size = match &input.size {
        SizeInput::ImageSize {
            custom:
                Some(SizeLimits {
                    min_side,
                    max_side,
                    multiple_of,
                    min_pixels,
                    max_pixels,
                }),
            ..
        } => Some(CustomSize {
            min_side: *min_side,
            max_side: *max_side,
            multiple_of: *multiple_of,
            min_pixels: *min_pixels,
            max_pixels: *max_pixels,
        }),
        _ => None,
    };
    let formats = if input.output_formats.is_empty() {
        vec![input.default_format.as_str()]
    } else {
        input.output_formats.iter().map(|f| f.as_str()).collect()
    };
    Capabilities {
        max_n: MAX_IMAGES,
        sizes: input
            .sizes(None)
            .into_iter()
            .map(|(w, h)| format!("{w}x{h}"))
            .collect(),
        custom_size,
        max_images_per_call: input.max_images,
        output_formats: formats,
        resolutions: input.resolutions.iter().map(|t| t.value.as_str()).collect(),
        seed: input.seed.as_str(),
        moderation: input.safety_tolerance_low.is_some(),
    }
}

fn price(p: &EndpointProfile) -> PriceObject {
    let (unit, usd) = match &p.price.unit {
        PriceUnit::Image { usd, .. } => ("image", usd),
        PriceUnit::Megapixel { usd, .. } => ("megapixel", usd),
        PriceUnit::BillableUnit { usd, .. } => ("billable_unit", usd),
    };
    PriceObject {
        unit,
        usd: usd.usd_string(),
        description: p.price.describe(),
        checked: p.price.checked.to_string(),
    }
}

fn dates(l: Lifecycle) -> (Option<String>, Option<String>) {
    (
        l.deprecated.map(|d| d.to_string()),
        l.sunset.map(|d| d.to_string()),
    )
}

fn object<'a>(name: &'a str, model: &'a Model, state: &AppState, today: Date) -> ModelObject<'a> {
    let gone = state.service.gone_endpoints();
    let chain = model
        .chain
        .iter()
        .map(|p| {
            let (deprecated, sunset) = dates(p.lifecycle);
            EndpointObject {
                endpoint: p.endpoint.full(),
                title: &p.title,
                capabilities: capabilities(p),
                price: price(p),
                deprecated,
                sunset,
                retired: p.lifecycle.is_sunset(today),
                gone: gone.iter().any(|(e, _)| e == p.endpoint.full()),
                unconfirmed: &p.unconfirmed,
            }
        })
        .collect();
    let (deprecated, sunset) = dates(model.announced_lifecycle());
    ModelObject {
        id: name,
        object: "model",
        created: CREATED,
        owned_by: "fal-ai",
        endpoint: model.endpoint().full(),
        backend: state.service.backend_kind().as_str(),
        alias_of: (name != model.id).then_some(model.id.as_str()),
        endpoints: model.chain.iter().map(|p| p.endpoint.full()).collect(),
        capabilities: capabilities(model.primary()),
        deprecated,
        sunset,
        chain,
    }
}

pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    let today = date::today();
    let data: Vec<ModelObject<'_>> = state
        .catalog
        .names()
        .map(|(name, model)| object(name, model, &state, today))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({"object": "list", "data": data}))
}

pub async fn retrieve(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let model = state
        .catalog
        .resolve(&name)
        .ok_or_else(|| ApiError::ModelNotFound {
            model: name.chars().take(64).collect(),
        })?;
    let canonical = state
        .catalog
        .names()
        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        .map_or(model.id.as_str(), |(n, _)| n);
    Ok(HttpResponse::Ok().json(object(canonical, model, &state, date::today())))
}
