//! The built-in endpoint profiles: Imagen 4 (what this gateway is for) and
//! its successors and alternatives on fal, from the facts in PROTOCOLS.md
//! sections B and C. Operators override any of these, or add endpoints,
//! with `[[models.profiles]]` (see docs/models.md).
//!
//! What could not be confirmed is said in each profile's `unconfirmed`
//! notes; there the profile is liberal in what it accepts from fal (sizes
//! are read from fal's answer, not assumed) and conservative in what it
//! sends (explicit sizes within the documented bounds, no optional fields
//! it does not need).
//!
//! Prices were taken into this project's facts on 2026-11-30 (`CHECKED`)
//! from fal's model pages and generated client types of April and August
//! 2026; fal's pricing API (`GET https://api.fal.ai/v1/models/pricing`) was
//! not called from here.

use super::catalog::EndpointId;
use super::date::{self, Date};
use super::formats::OutputFormat;
use super::money::MicroUsd;
use super::profile::{
    EndpointProfile, InputSchema, Lifecycle, Preset, Price, PriceUnit, RatioOption, SeedSupport,
    SizeInput, SizeLimits, Tier,
};

pub const IMAGEN_4_FAST: &str = "fal-ai/imagen4/preview/fast";
pub const IMAGEN_4: &str = "fal-ai/imagen4/preview";
pub const IMAGEN_4_ULTRA: &str = "fal-ai/imagen4/preview/ultra";
pub const NANO_BANANA_2: &str = "fal-ai/nano-banana-2";
pub const NANO_BANANA_PRO: &str = "fal-ai/nano-banana-pro";
pub const FLUX_SCHNELL: &str = "fal-ai/flux/schnell";
pub const FLUX_DEV: &str = "fal-ai/flux/dev";
pub const FLUX_2_PRO: &str = "fal-ai/flux-2-pro";
pub const SEEDREAM_4: &str = "fal-ai/bytedance/seedream/v4/text-to-image";

/// Each Imagen 4 endpoint and the successor Google named for it
/// (`gemini-3.1-flash-image` for fast and standard, `gemini-3-pro-image`
/// for ultra), as fal serves them. `models.successors` puts these behind
/// (or before) the Imagen endpoints of the built-in catalog.
pub const SUCCESSORS: [(&str, &str); 3] = [
    (IMAGEN_4_FAST, NANO_BANANA_2),
    (IMAGEN_4, NANO_BANANA_2),
    (IMAGEN_4_ULTRA, NANO_BANANA_PRO),
];

/// When the built-in prices were checked.
pub const CHECKED: &str = "2026-11-30";

/// fal's generated client types dropped the three `imagen4` endpoints on
/// this day; Google shut Imagen down on its own APIs between 2026-06-24
/// and 2026-08-17.
pub const IMAGEN_DEPRECATED: &str = "2026-07-17";

const PRICE_SOURCE: &str = "fal model pages and client types (Apr/Aug 2026), via PROTOCOLS.md";

fn day(text: &str) -> Date {
    // The constants above are valid dates (a unit test parses each).
    date::parse(text).unwrap_or(time::macros::date!(1970 - 01 - 01))
}

fn usd(micros: u64) -> MicroUsd {
    MicroUsd(micros)
}

fn ratios(list: &[(&str, u32, u32)]) -> Vec<RatioOption> {
    list.iter()
        .map(|(value, width, height)| RatioOption {
            value: (*value).to_owned(),
            width: *width,
            height: *height,
        })
        .collect()
}

fn tiers(values: &[&str]) -> Vec<Tier> {
    values.iter().filter_map(|v| Tier::parse(v)).collect()
}

/// Imagen 4's five ratios at 1K (2K doubles each side).
const IMAGEN_RATIOS: [(&str, u32, u32); 5] = [
    ("1:1", 1024, 1024),
    ("16:9", 1408, 768),
    ("9:16", 768, 1408),
    ("4:3", 1280, 896),
    ("3:4", 896, 1280),
];

/// The Gemini image models' ten ratios at 1K, from Google's Gemini API
/// tables (2K and 4K double and quadruple each side).
const GEMINI_RATIOS: [(&str, u32, u32); 10] = [
    ("21:9", 1584, 672),
    ("16:9", 1376, 768),
    ("3:2", 1264, 848),
    ("4:3", 1200, 896),
    ("5:4", 1152, 928),
    ("1:1", 1024, 1024),
    ("4:5", 928, 1152),
    ("3:4", 896, 1200),
    ("2:3", 848, 1264),
    ("9:16", 768, 1376),
];

/// nano-banana-2's extreme ratios; sizes estimated at about a megapixel in
/// multiples of 16.
const GEMINI_3_1_EXTRA_RATIOS: [(&str, u32, u32); 4] = [
    ("4:1", 2048, 512),
    ("1:4", 512, 2048),
    ("8:1", 2896, 368),
    ("1:8", 368, 2896),
];

/// `image_size` presets of FLUX and Seedream.
fn presets() -> Vec<Preset> {
    [
        ("square_hd", 1024, 1024),
        ("square", 512, 512),
        ("portrait_4_3", 768, 1024),
        ("portrait_16_9", 576, 1024),
        ("landscape_4_3", 1024, 768),
        ("landscape_16_9", 1024, 576),
    ]
    .into_iter()
    .map(|(name, width, height)| Preset {
        name: name.to_owned(),
        width,
        height,
    })
    .collect()
}

const ALL_FORMATS: [OutputFormat; 3] = [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp];

fn profile(
    endpoint: &str,
    title: &str,
    input: InputSchema,
    unit: PriceUnit,
    lifecycle: Lifecycle,
    unconfirmed: &[&str],
) -> Option<EndpointProfile> {
    Some(EndpointProfile {
        endpoint: EndpointId::parse(endpoint)?,
        title: title.to_owned(),
        input,
        price: Price {
            unit,
            checked: day(CHECKED),
            source: PRICE_SOURCE.to_owned(),
        },
        lifecycle,
        unconfirmed: unconfirmed.iter().map(|s| (*s).to_owned()).collect(),
    })
}

fn imagen(
    endpoint: &str,
    title: &str,
    cents: u64,
    has_2k: bool,
    max_images: u8,
) -> Option<EndpointProfile> {
    let mut unconfirmed = vec![
        "whether fal still serves this endpoint (it left fal's client types on 2026-07-17)",
        "the price at 2K (assumed the same as at 1K)",
    ];
    if max_images == 1 {
        unconfirmed.push("the most images per call (one is sent)");
    }
    if endpoint == IMAGEN_4 {
        unconfirmed.push("the price ($0.04 per fal; one source says $0.05)");
    }
    profile(
        endpoint,
        title,
        InputSchema {
            size: SizeInput::AspectRatio {
                ratios: ratios(&IMAGEN_RATIOS),
                default: 0,
            },
            max_images,
            num_images_field: true,
            output_formats: ALL_FORMATS.to_vec(),
            default_format: OutputFormat::Png,
            resolutions: if has_2k {
                tiers(&["1K", "2K"])
            } else {
                Vec::new()
            },
            default_resolution: 0,
            seed: SeedSupport::Input,
            safety_tolerance_low: Some("5".into()),
            extra: Vec::new(),
        },
        PriceUnit::Image {
            usd: usd(cents * 10_000),
            tiers: Vec::new(),
        },
        Lifecycle {
            deprecated: Some(day(IMAGEN_DEPRECATED)),
            sunset: None,
        },
        &unconfirmed,
    )
}

fn gemini(
    endpoint: &str,
    title: &str,
    extra_ratios: bool,
    tier_values: &[&str],
    default_tier: usize,
    unit: PriceUnit,
) -> Option<EndpointProfile> {
    let mut list = GEMINI_RATIOS.to_vec();
    if extra_ratios {
        list.extend(GEMINI_3_1_EXTRA_RATIOS);
    }
    profile(
        endpoint,
        title,
        InputSchema {
            size: SizeInput::AspectRatio {
                ratios: ratios(&list),
                default: 5,
            },
            max_images: 4,
            num_images_field: true,
            output_formats: ALL_FORMATS.to_vec(),
            default_format: OutputFormat::Png,
            resolutions: tiers(tier_values),
            default_resolution: default_tier,
            seed: SeedSupport::Input,
            safety_tolerance_low: Some("5".into()),
            extra: Vec::new(),
        },
        unit,
        Lifecycle::default(),
        &[
            "the pixel sizes per ratio (Google's Gemini API tables; read from fal's answer when it reports them)",
            "safety_tolerance on the text-to-image endpoint (one source says only the edit endpoint has it)",
        ],
    )
}

fn flux(endpoint: &str, title: &str, max_images: u8, unit: PriceUnit) -> Option<EndpointProfile> {
    profile(
        endpoint,
        title,
        InputSchema {
            size: SizeInput::ImageSize {
                presets: presets(),
                custom: Some(SizeLimits {
                    min_side: 256,
                    max_side: 2048,
                    multiple_of: 16,
                    min_pixels: 0,
                    max_pixels: 2048 * 2048,
                }),
                default: (1024, 1024),
            },
            max_images,
            num_images_field: max_images > 1,
            output_formats: vec![OutputFormat::Jpeg, OutputFormat::Png],
            default_format: OutputFormat::Jpeg,
            resolutions: Vec::new(),
            default_resolution: 0,
            seed: SeedSupport::InputOutput,
            safety_tolerance_low: None,
            extra: Vec::new(),
        },
        unit,
        Lifecycle::default(),
        &[
            "the side limits of an explicit image_size (256..2048 in multiples of 16 are sent)",
            "billing rounds each image's megapixels up, a megapixel being 1024x1024",
        ],
    )
}

/// Every built-in profile.
pub fn profiles() -> Vec<EndpointProfile> {
    [
        imagen(IMAGEN_4_FAST, "Imagen 4 Fast", 2, false, 4),
        imagen(IMAGEN_4, "Imagen 4", 4, true, 4),
        imagen(IMAGEN_4_ULTRA, "Imagen 4 Ultra", 6, true, 1),
        gemini(
            NANO_BANANA_2,
            "Nano Banana 2 (Gemini 3.1 Flash Image)",
            true,
            &["0.5K", "1K", "2K", "4K"],
            1,
            PriceUnit::Image {
                usd: usd(80_000),
                tiers: vec![
                    ("0.5K".into(), usd(60_000)),
                    ("2K".into(), usd(120_000)),
                    ("4K".into(), usd(160_000)),
                ],
            },
        ),
        gemini(
            NANO_BANANA_PRO,
            "Nano Banana Pro (Gemini 3 Pro Image)",
            false,
            &["1K", "2K", "4K"],
            0,
            PriceUnit::Image {
                usd: usd(150_000),
                tiers: vec![("4K".into(), usd(300_000))],
            },
        ),
        flux(
            FLUX_SCHNELL,
            "FLUX.1 [schnell]",
            4,
            PriceUnit::Megapixel {
                usd: usd(3_000),
                first: None,
            },
        ),
        flux(
            FLUX_DEV,
            "FLUX.1 [dev]",
            4,
            PriceUnit::Megapixel {
                usd: usd(25_000),
                first: None,
            },
        ),
        flux(
            FLUX_2_PRO,
            "FLUX.2 [pro]",
            1,
            PriceUnit::Megapixel {
                usd: usd(15_000),
                first: Some(usd(30_000)),
            },
        ),
        seedream(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn seedream() -> Option<EndpointProfile> {
    profile(
        SEEDREAM_4,
        "Seedream 4.0 (ByteDance)",
        InputSchema {
            size: SizeInput::ImageSize {
                presets: presets(),
                custom: Some(SizeLimits {
                    min_side: 256,
                    max_side: 4096,
                    multiple_of: 16,
                    min_pixels: 960 * 960,
                    max_pixels: 4096 * 4096,
                }),
                default: (1024, 1024),
            },
            max_images: 6,
            num_images_field: true,
            output_formats: Vec::new(),
            default_format: OutputFormat::Png,
            resolutions: Vec::new(),
            default_resolution: 0,
            seed: SeedSupport::InputOutput,
            safety_tolerance_low: None,
            // Exactly `num_images` images: one per generation.
            extra: vec![("max_images".into(), serde_json::Value::from(1))],
        },
        PriceUnit::Image {
            usd: usd(30_000),
            tiers: Vec::new(),
        },
        Lifecycle::default(),
        &[
            "the output format (no output_format field; PNG is assumed and fal's content_type is read)",
            "the side limits of an explicit image_size (total pixels 960x960..4096x4096 are documented)",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::profile::SizeInput;

    #[test]
    fn every_built_in_profile_is_well_formed() {
        assert!(date::parse(CHECKED).is_some() && date::parse(IMAGEN_DEPRECATED).is_some());
        let all = profiles();
        assert_eq!(all.len(), 9, "a built-in endpoint id failed to parse");
        for p in &all {
            let name = p.endpoint.full();
            let i = &p.input;
            assert!((1..=6).contains(&i.max_images), "{name}");
            assert!(i.num_images_field || i.max_images == 1, "{name}");
            assert!(
                i.resolutions.is_empty() || i.default_resolution < i.resolutions.len(),
                "{name}"
            );
            assert!(
                i.output_formats.is_empty() || i.output_formats.contains(&i.default_format),
                "{name}"
            );
            match &i.size {
                SizeInput::AspectRatio { ratios, default } => {
                    assert!(*default < ratios.len(), "{name}")
                }
                SizeInput::ImageSize {
                    presets, custom, ..
                } => assert!(!presets.is_empty() || custom.is_some(), "{name}"),
            }
            assert!(
                p.price.max_cost(1, None, 1024, 1024) > MicroUsd::ZERO,
                "{name}"
            );
        }
        for (imagen, successor) in SUCCESSORS {
            assert!(all.iter().any(|p| p.endpoint.full() == imagen));
            assert!(all.iter().any(|p| p.endpoint.full() == successor));
        }
    }

    #[test]
    fn built_in_prices_are_the_documented_ones() {
        let all = profiles();
        let price = |endpoint: &str, tier: Option<&str>, w, h| {
            all.iter()
                .find(|p| p.endpoint.full() == endpoint)
                .unwrap()
                .price
                .image_cost(tier, w, h)
                .usd_string()
        };
        assert_eq!(price(IMAGEN_4_FAST, None, 1024, 1024), "0.02");
        assert_eq!(price(IMAGEN_4, Some("2K"), 2048, 2048), "0.04");
        assert_eq!(price(IMAGEN_4_ULTRA, None, 1024, 1024), "0.06");
        assert_eq!(price(NANO_BANANA_2, Some("1K"), 1024, 1024), "0.08");
        assert_eq!(price(NANO_BANANA_2, Some("0.5K"), 512, 512), "0.06");
        assert_eq!(price(NANO_BANANA_2, Some("4K"), 4096, 4096), "0.16");
        assert_eq!(price(NANO_BANANA_PRO, Some("2K"), 2048, 2048), "0.15");
        assert_eq!(price(NANO_BANANA_PRO, Some("4K"), 4096, 4096), "0.3");
        assert_eq!(price(FLUX_SCHNELL, None, 1024, 1024), "0.003");
        assert_eq!(price(FLUX_DEV, None, 1024, 1536), "0.05");
        assert_eq!(price(FLUX_2_PRO, None, 1024, 1024), "0.03");
        assert_eq!(price(SEEDREAM_4, None, 2048, 2048), "0.03");
    }
}
