//! Endpoint profiles: how one upstream endpoint takes a request, what it
//! delivers, what it costs and how long it lives. A model id is a chain of
//! these (see [`super::catalog`]); the plan maps a request onto each
//! endpoint's own options ([`super::plan`]), never onto one model's.
//!
//! A profile says:
//! - how size is given ([`SizeInput`]): an `aspect_ratio` enum, each value
//!   with the pixel size it delivers at the default resolution; or an
//!   `image_size` preset / `{width, height}` object within [`SizeLimits`];
//! - the most images per call, and whether `num_images` is sent at all;
//! - the `output_format` values it accepts (none: the field is not sent);
//! - its resolution [`Tier`]s (`1K`, `2K`, ...), each scaling the sizes;
//! - seed support, the `safety_tolerance` sent for OpenAI's
//!   `moderation: low`, and fixed extra fields sent on every call;
//! - its [`Price`], with the date it was checked, and its [`Lifecycle`].
//!
//! # Prices
//!
//! Money is [`MicroUsd`] (integer micro-dollars), never floating point.
//! A price has one of three units ([`PriceUnit`]):
//! - **per image**, with an optional price per resolution tier (Imagen 4,
//!   the Gemini family, Seedream);
//! - **per megapixel** of output, each image's megapixels rounded up, with
//!   an optional different price for the first megapixel (FLUX);
//! - **per fal billable unit** (`X-Fal-Billable-Units`), with the most units
//!   one image can take, for endpoints billed some other way.
//!
//! Two functions answer what issue 14's budgets need:
//! [`Price::max_cost`] is the most a job of `n` images of a given size and
//! tier could cost (what to reserve before submitting), and
//! [`Price::delivered_cost`] is the cost of what was delivered, from fal's
//! billable units when it reported them and the per-unit price allows, else
//! from the images themselves. `crate::domain::Job` has both for a planned
//! job. A megapixel is 1024 x 1024 pixels (fal prices a 1024x1024 FLUX image
//! at exactly its per-megapixel price; unconfirmed).

use serde_json::Value;

use super::catalog::EndpointId;
use super::date::Date;
use super::formats::{OutputFormat, Quality, SizeRequest};
use super::money::MicroUsd;

/// One upstream endpoint's profile.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointProfile {
    pub endpoint: EndpointId,
    /// A human name, e.g. `Imagen 4 Fast`.
    pub title: String,
    pub input: InputSchema,
    pub price: Price,
    pub lifecycle: Lifecycle,
    /// Facts that could not be confirmed, for operators reading
    /// `/v1/models/{id}` or the docs.
    pub unconfirmed: Vec<String>,
}

/// How an endpoint takes a request: everything that shapes the body it is
/// sent and the images it returns.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSchema {
    pub size: SizeInput,
    /// Most images one call may ask for.
    pub max_images: u8,
    /// Whether `num_images` is sent (endpoints without the field make one
    /// image per call).
    pub num_images_field: bool,
    /// `output_format` values accepted; empty when the field is not sent.
    pub output_formats: Vec<OutputFormat>,
    /// What arrives when the requested format cannot be asked for.
    pub default_format: OutputFormat,
    /// Resolution tiers (`resolution` field); empty when there is none.
    pub resolutions: Vec<Tier>,
    /// Index into `resolutions` of the tier used when none is chosen.
    pub default_resolution: usize,
    pub seed: SeedSupport,
    /// The `safety_tolerance` sent for OpenAI's `moderation: "low"`; `None`
    /// when the endpoint has no such field. `moderation: "auto"` sends
    /// nothing (the endpoint's default).
    pub safety_tolerance_low: Option<String>,
    /// Fields sent unchanged on every call (e.g. Seedream's `max_images: 1`).
    pub extra: Vec<(String, Value)>,
}

/// How an endpoint takes the picture's size.
#[derive(Clone, Debug, PartialEq)]
pub enum SizeInput {
    /// `aspect_ratio`: one of `ratios` (each with its delivered size at the
    /// default resolution tier).
    AspectRatio {
        ratios: Vec<RatioOption>,
        /// Index into `ratios` for `size: auto` or no size.
        default: usize,
    },
    /// `image_size`: a named preset, or `{width, height}` when `custom` is
    /// allowed.
    ImageSize {
        presets: Vec<Preset>,
        custom: Option<SizeLimits>,
        /// The size sent for `size: auto` or no size.
        default: (u32, u32),
    },
}

/// One `aspect_ratio` value and the pixel size it delivers at the default
/// resolution tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatioOption {
    pub value: String,
    pub width: u32,
    pub height: u32,
}

impl RatioOption {
    /// The ratio as named (`16:9`), which is what a request is matched
    /// against; the delivered pixels when the name is not `W:H`.
    pub fn nominal(&self) -> (u32, u32) {
        self.value
            .split_once(':')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .filter(|&(w, h): &(u32, u32)| w > 0 && h > 0)
            .unwrap_or((self.width.max(1), self.height.max(1)))
    }

    fn ln_ratio(&self) -> f64 {
        let (w, h) = self.nominal();
        ln_ratio(w, h)
    }
}

/// A named `image_size` value (`square_hd` = 1024x1024).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: String,
    pub width: u32,
    pub height: u32,
}

/// Bounds on an explicit `{width, height}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeLimits {
    pub min_side: u32,
    pub max_side: u32,
    /// Each side is sent as a multiple of this.
    pub multiple_of: u32,
    pub min_pixels: u64,
    pub max_pixels: u64,
}

/// A `resolution` value; `scale_milli` is the side length relative to the
/// default tier's sizes, in thousandths (`2K` on a `1K` default = 2000).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub value: String,
    pub scale_milli: u32,
}

impl Tier {
    /// `1K`, `2K`, `0.5K`: the scale relative to `1K`; `None` for any other
    /// spelling.
    pub fn parse(value: &str) -> Option<Tier> {
        let number = value.strip_suffix(['K', 'k'])?;
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty()
            || frac.len() > 3
            || !(whole.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let whole: u32 = whole.parse().ok()?;
        let frac: u32 = if frac.is_empty() {
            0
        } else {
            frac.parse::<u32>().ok()? * 10u32.pow(3 - frac.len() as u32)
        };
        let scale_milli = whole.checked_mul(1000)?.checked_add(frac)?;
        (1..=16_000).contains(&scale_milli).then(|| Tier {
            value: value.to_owned(),
            scale_milli,
        })
    }
}

/// Whether the endpoint takes a `seed`, and whether its output says which
/// seed it used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedSupport {
    None,
    /// Accepted as input; the output does not carry it.
    Input,
    /// Accepted, and returned in the output (`seed`).
    InputOutput,
}

impl SeedSupport {
    pub fn as_str(self) -> &'static str {
        match self {
            SeedSupport::None => "none",
            SeedSupport::Input => "input",
            SeedSupport::InputOutput => "input_output",
        }
    }
}

/// When an endpoint (or a model) was deprecated and when it is turned off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// From this day answers carry `Deprecation` (RFC 9745).
    pub deprecated: Option<Date>,
    /// From this day an endpoint is skipped in its chain; answers carry
    /// `Sunset` (RFC 8594) before.
    pub sunset: Option<Date>,
}

impl Lifecycle {
    pub fn is_deprecated(&self, today: Date) -> bool {
        self.deprecated.is_some_and(|d| d <= today)
    }

    pub fn is_sunset(&self, today: Date) -> bool {
        self.sunset.is_some_and(|d| d <= today)
    }
}

/// What an endpoint costs, and since when that is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Price {
    pub unit: PriceUnit,
    /// When the figure was last checked.
    pub checked: Date,
    /// Where it comes from.
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PriceUnit {
    /// `usd` per image at the default tier; `tiers` lists other tiers' prices
    /// by tier value (a tier not listed costs `usd`).
    Image {
        usd: MicroUsd,
        tiers: Vec<(String, MicroUsd)>,
    },
    /// `usd` per megapixel (1024 x 1024 pixels) of each image, rounded up
    /// per image; `first` replaces `usd` for each image's first megapixel.
    Megapixel {
        usd: MicroUsd,
        first: Option<MicroUsd>,
    },
    /// `usd` per fal billable unit; one image takes at most
    /// `max_units_per_image` units.
    BillableUnit {
        usd: MicroUsd,
        max_units_per_image: u32,
    },
}

/// Pixels in one billed megapixel.
pub const MEGAPIXEL: u64 = 1024 * 1024;

impl Price {
    /// The price of one image of `width` x `height` at resolution `tier`.
    pub fn image_cost(&self, tier: Option<&str>, width: u32, height: u32) -> MicroUsd {
        match &self.unit {
            PriceUnit::Image { usd, tiers } => tier
                .and_then(|t| tiers.iter().find(|(name, _)| name == t))
                .map_or(*usd, |(_, price)| *price),
            PriceUnit::Megapixel { usd, first } => {
                let megapixels = (u64::from(width) * u64::from(height))
                    .div_ceil(MEGAPIXEL)
                    .max(1);
                match first {
                    Some(first) => first.saturating_add(usd.saturating_mul(megapixels - 1)),
                    None => usd.saturating_mul(megapixels),
                }
            }
            PriceUnit::BillableUnit {
                usd,
                max_units_per_image,
            } => usd.saturating_mul(u64::from(*max_units_per_image)),
        }
    }

    /// The most `images` images of `width` x `height` at `tier` could cost:
    /// what a budget reserves before the job is submitted.
    pub fn max_cost(&self, images: u8, tier: Option<&str>, width: u32, height: u32) -> MicroUsd {
        self.image_cost(tier, width, height)
            .saturating_mul(u64::from(images))
    }

    /// The cost of what was delivered: each image at its own size, or fal's
    /// reported billable units for a per-unit price.
    pub fn delivered_cost(
        &self,
        tier: Option<&str>,
        delivered: &[(u32, u32)],
        billable_units: Option<f64>,
    ) -> MicroUsd {
        if let (PriceUnit::BillableUnit { usd, .. }, Some(units)) = (&self.unit, billable_units)
            && units.is_finite()
            && units >= 0.0
        {
            // Units may be fractional: price them to the micro-dollar, up.
            let micro_units = (units * 1_000_000.0).ceil() as u64;
            return usd.scale_ceil(micro_units, 1_000_000);
        }
        delivered
            .iter()
            .map(|&(w, h)| self.image_cost(tier, w, h))
            .sum()
    }

    /// One line for people: `$0.02 per image`, `$0.025 per megapixel`.
    pub fn describe(&self) -> String {
        match &self.unit {
            PriceUnit::Image { usd, tiers } => {
                let mut text = format!("{usd} per image");
                for (tier, price) in tiers {
                    text.push_str(&format!(", {price} at {tier}"));
                }
                text
            }
            PriceUnit::Megapixel { usd, first: None } => format!("{usd} per megapixel"),
            PriceUnit::Megapixel {
                usd,
                first: Some(first),
            } => format!("{first} for the first megapixel, {usd} per extra megapixel"),
            PriceUnit::BillableUnit {
                usd,
                max_units_per_image,
            } => format!("{usd} per billable unit (at most {max_units_per_image} per image)"),
        }
    }
}

/// How a request's size lands on one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeChoice {
    /// An `aspect_ratio` value.
    AspectRatio(String),
    /// A named `image_size` preset.
    Preset(String),
    /// An explicit `image_size` `{width, height}`.
    Custom { width: u32, height: u32 },
}

/// The size threshold of a tier: a request whose longer side is at most
/// 1.5 x 1024 x the tier's scale fits it (so `1792x1024` wants `2K` on an
/// endpoint whose `1K` tops out at 1408 pixels, `1536x1024` stays at `1K`).
const TIER_REACH_MILLI: u64 = 1536;

fn ln_ratio(w: u32, h: u32) -> f64 {
    (f64::from(w) / f64::from(h)).ln()
}

impl InputSchema {
    /// The resolution tier for a request whose longer side is `longer`
    /// (`None` for `auto`) and whose quality asks for at least
    /// `quality.min_scale_milli()`; `None` when the endpoint has no tiers.
    pub fn tier_for(&self, longer: Option<u32>, quality: Quality) -> Option<&Tier> {
        let default = self.resolutions.get(self.default_resolution)?;
        let mut by_scale: Vec<&Tier> = self.resolutions.iter().collect();
        by_scale.sort_by_key(|t| t.scale_milli);
        let largest = by_scale.last().copied().unwrap_or(default);
        let for_size = match longer {
            None => default,
            Some(long) => by_scale
                .iter()
                .copied()
                .find(|t| u64::from(long) * 1000 <= TIER_REACH_MILLI * u64::from(t.scale_milli))
                .unwrap_or(largest),
        };
        let for_quality = match quality.min_scale_milli() {
            None => for_size,
            Some(min) => by_scale
                .iter()
                .copied()
                .find(|t| t.scale_milli >= min)
                .unwrap_or(largest),
        };
        Some(if for_quality.scale_milli > for_size.scale_milli {
            for_quality
        } else {
            for_size
        })
    }

    /// Whether a quality asking for more resolution can be honoured: the
    /// endpoint has a tier above its default.
    pub fn has_higher_tiers(&self) -> bool {
        let Some(default) = self.resolutions.get(self.default_resolution) else {
            return false;
        };
        self.resolutions
            .iter()
            .any(|t| t.scale_milli > default.scale_milli)
    }

    /// The tier's scale against the default tier, in thousandths.
    fn scale_of(&self, tier: Option<&Tier>) -> u32 {
        let default = self
            .resolutions
            .get(self.default_resolution)
            .map_or(1000, |t| t.scale_milli);
        tier.map_or(1000, |t| {
            (u64::from(t.scale_milli) * 1000 / u64::from(default.max(1))) as u32
        })
    }

    /// What the endpoint is asked for and the pixel size it will deliver.
    pub fn size_for(&self, size: SizeRequest, tier: Option<&Tier>) -> (SizeChoice, (u32, u32)) {
        match &self.size {
            SizeInput::AspectRatio { ratios, default } => {
                let chosen = match size {
                    SizeRequest::Auto => ratios.get(*default),
                    SizeRequest::Exact { width, height } => {
                        let target = ln_ratio(width, height);
                        ratios.iter().min_by(|a, b| {
                            let da = (a.ln_ratio() - target).abs();
                            let db = (b.ln_ratio() - target).abs();
                            da.total_cmp(&db)
                        })
                    }
                };
                let Some(option) = chosen.or(ratios.first()) else {
                    return (SizeChoice::AspectRatio("1:1".into()), (1024, 1024));
                };
                let scale = self.scale_of(tier);
                let scaled = |side: u32| (u64::from(side) * u64::from(scale) / 1000) as u32;
                (
                    SizeChoice::AspectRatio(option.value.clone()),
                    (scaled(option.width), scaled(option.height)),
                )
            }
            SizeInput::ImageSize {
                presets,
                custom,
                default,
            } => {
                let (w, h) = match size {
                    SizeRequest::Auto => *default,
                    SizeRequest::Exact { width, height } => (width, height),
                };
                if let Some(limits) = custom {
                    let (w, h) = fit(w, h, limits);
                    return (
                        SizeChoice::Custom {
                            width: w,
                            height: h,
                        },
                        (w, h),
                    );
                }
                let target = ln_ratio(w, h);
                let area = (f64::from(w) * f64::from(h)).ln();
                let best = presets.iter().min_by(|a, b| {
                    let key = |p: &Preset| {
                        (
                            (ln_ratio(p.width, p.height) - target).abs(),
                            ((f64::from(p.width) * f64::from(p.height)).ln() - area).abs(),
                        )
                    };
                    let (ka, kb) = (key(a), key(b));
                    ka.0.total_cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
                });
                match best {
                    Some(p) => (SizeChoice::Preset(p.name.clone()), (p.width, p.height)),
                    None => (
                        SizeChoice::Custom {
                            width: w,
                            height: h,
                        },
                        (w, h),
                    ),
                }
            }
        }
    }

    /// The `output_format` to send (`None`: the field is not sent) and the
    /// format that will arrive; the bool says whether the request's format
    /// was honoured.
    pub fn format_for(&self, wanted: OutputFormat) -> (Option<OutputFormat>, OutputFormat, bool) {
        if self.output_formats.contains(&wanted) {
            (Some(wanted), wanted, true)
        } else if self.output_formats.is_empty() {
            (None, self.default_format, wanted == self.default_format)
        } else {
            // PNG keeps what a lossless request wanted; else the default.
            let fallback = if wanted == OutputFormat::Webp
                && self.output_formats.contains(&OutputFormat::Png)
            {
                OutputFormat::Png
            } else if self.output_formats.contains(&self.default_format) {
                self.default_format
            } else {
                self.output_formats[0]
            };
            (Some(fallback), fallback, false)
        }
    }

    /// Every pixel size this endpoint can deliver at `tier` (`None`: the
    /// default), for `/v1/models`.
    pub fn sizes(&self, tier: Option<&Tier>) -> Vec<(u32, u32)> {
        match &self.size {
            SizeInput::AspectRatio { ratios, .. } => ratios
                .iter()
                .map(|r| {
                    let scale = u64::from(self.scale_of(tier));
                    (
                        (u64::from(r.width) * scale / 1000) as u32,
                        (u64::from(r.height) * scale / 1000) as u32,
                    )
                })
                .collect(),
            SizeInput::ImageSize { presets, .. } => {
                presets.iter().map(|p| (p.width, p.height)).collect()
            }
        }
    }
}

/// `w` x `h` brought within `limits`, keeping the ratio as well as the
/// limits allow: scaled into the pixel and side bounds, each side a
/// multiple of `multiple_of`.
pub fn fit(w: u32, h: u32, limits: &SizeLimits) -> (u32, u32) {
    let (wf, hf) = (f64::from(w.max(1)), f64::from(h.max(1)));
    let pixels = wf * hf;
    let mut scale = 1.0f64;
    if (limits.min_pixels as f64) > pixels {
        scale = (limits.min_pixels as f64 / pixels).sqrt();
    }
    if (limits.max_pixels as f64) < pixels * scale * scale {
        scale = (limits.max_pixels as f64 / pixels).sqrt();
    }
    let long = wf.max(hf) * scale;
    if long > f64::from(limits.max_side) {
        scale *= f64::from(limits.max_side) / long;
    }
    let short = wf.min(hf) * scale;
    if short < f64::from(limits.min_side) {
        scale *= f64::from(limits.min_side) / short;
    }
    let step = limits.multiple_of.max(1);
    let lo = limits.min_side.div_ceil(step) * step;
    let hi = (limits.max_side / step * step).max(lo);
    let side = |v: f64| -> u32 {
        let units = if scale > 1.0 {
            (v / f64::from(step)).ceil()
        } else if scale < 1.0 {
            (v / f64::from(step)).floor()
        } else {
            (v / f64::from(step)).round()
        };
        ((units.max(1.0) as u32) * step).clamp(lo, hi)
    };
    (side(wf * scale), side(hf * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers(values: &[&str]) -> Vec<Tier> {
        values.iter().map(|v| Tier::parse(v).unwrap()).collect()
    }

    fn schema(resolutions: &[&str], default: usize) -> InputSchema {
        InputSchema {
            size: SizeInput::AspectRatio {
                ratios: vec![
                    RatioOption {
                        value: "1:1".into(),
                        width: 1024,
                        height: 1024,
                    },
                    RatioOption {
                        value: "16:9".into(),
                        width: 1408,
                        height: 768,
                    },
                    RatioOption {
                        value: "4:3".into(),
                        width: 1280,
                        height: 896,
                    },
                ],
                default: 0,
            },
            max_images: 4,
            num_images_field: true,
            output_formats: vec![OutputFormat::Png, OutputFormat::Jpeg],
            default_format: OutputFormat::Png,
            resolutions: tiers(resolutions),
            default_resolution: default,
            seed: SeedSupport::Input,
            safety_tolerance_low: None,
            extra: vec![],
        }
    }

    #[test]
    fn tiers_parse_as_multiples_of_1k() {
        assert_eq!(Tier::parse("0.5K").unwrap().scale_milli, 500);
        assert_eq!(Tier::parse("1K").unwrap().scale_milli, 1000);
        assert_eq!(Tier::parse("4K").unwrap().scale_milli, 4000);
        for bad in ["", "K", "2", "hd", "-1K", "0K", "99K"] {
            assert!(Tier::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_tier_covers_the_requested_side_or_the_quality() {
        let s = schema(&["0.5K", "1K", "2K", "4K"], 1);
        let exact = |w: u32, h: u32| Some(w.max(h));
        let pick = |long, q| s.tier_for(long, q).unwrap().value.clone();
        assert_eq!(pick(None, Quality::Auto), "1K");
        assert_eq!(pick(exact(512, 512), Quality::Auto), "0.5K");
        assert_eq!(pick(exact(1024, 1024), Quality::Auto), "1K");
        assert_eq!(pick(exact(1536, 1024), Quality::Auto), "1K");
        assert_eq!(pick(exact(1792, 1024), Quality::Auto), "2K");
        assert_eq!(pick(exact(4096, 4096), Quality::Auto), "4K");
        assert_eq!(pick(exact(1024, 1024), Quality::Hd), "2K");
        assert_eq!(pick(exact(1024, 1024), Quality::High), "2K");
        assert_eq!(pick(exact(1024, 1024), Quality::Xhigh), "4K");
        assert_eq!(pick(exact(1024, 1024), Quality::Max), "4K");
        assert_eq!(pick(exact(512, 512), Quality::Low), "0.5K");
        // Only what exists: a 2K top.
        let imagen = schema(&["1K", "2K"], 0);
        assert_eq!(
            imagen.tier_for(Some(4096), Quality::Max).unwrap().value,
            "2K"
        );
        assert_eq!(
            imagen.tier_for(Some(256), Quality::Auto).unwrap().value,
            "1K"
        );
        assert!(schema(&[], 0).tier_for(Some(4096), Quality::Max).is_none());
        assert!(!schema(&["1K"], 0).has_higher_tiers());
        assert!(imagen.has_higher_tiers());
    }

    #[test]
    fn ratios_map_to_the_nearest_value_and_scale_with_the_tier() {
        let s = schema(&["1K", "2K"], 0);
        let two_k = s.resolutions.get(1);
        assert_eq!(
            s.size_for(
                SizeRequest::Exact {
                    width: 1792,
                    height: 1024
                },
                None
            ),
            (SizeChoice::AspectRatio("16:9".into()), (1408, 768))
        );
        assert_eq!(
            s.size_for(
                SizeRequest::Exact {
                    width: 1792,
                    height: 1024
                },
                two_k
            ),
            (SizeChoice::AspectRatio("16:9".into()), (2816, 1536))
        );
        assert_eq!(
            s.size_for(SizeRequest::Auto, None),
            (SizeChoice::AspectRatio("1:1".into()), (1024, 1024))
        );
        assert_eq!(
            s.size_for(
                SizeRequest::Exact {
                    width: 1536,
                    height: 1024
                },
                None
            )
            .0,
            SizeChoice::AspectRatio("4:3".into())
        );
    }

    #[test]
    fn explicit_sizes_fit_the_limits() {
        let flux = SizeLimits {
            min_side: 256,
            max_side: 2048,
            multiple_of: 16,
            min_pixels: 0,
            max_pixels: 2048 * 2048,
        };
        assert_eq!(fit(1024, 1536, &flux), (1024, 1536));
        assert_eq!(fit(256, 256, &flux), (256, 256));
        assert_eq!(fit(4096, 4096, &flux), (2048, 2048));
        assert_eq!(fit(1000, 1000, &flux), (1008, 1008));
        assert_eq!(fit(3072, 1024, &flux), (2048, 672));
        let seedream = SizeLimits {
            min_side: 256,
            max_side: 4096,
            multiple_of: 16,
            min_pixels: 960 * 960,
            max_pixels: 4096 * 4096,
        };
        assert_eq!(fit(512, 512, &seedream), (960, 960));
        let (w, h) = fit(1024, 512, &seedream);
        assert!(u64::from(w) * u64::from(h) >= 960 * 960, "{w}x{h}");
        assert!((f64::from(w) / f64::from(h) - 2.0).abs() < 0.05, "{w}x{h}");
    }

    #[test]
    fn formats_the_endpoint_lacks_are_replaced_and_reported() {
        let s = schema(&[], 0);
        assert_eq!(
            s.format_for(OutputFormat::Jpeg),
            (Some(OutputFormat::Jpeg), OutputFormat::Jpeg, true)
        );
        assert_eq!(
            s.format_for(OutputFormat::Webp),
            (Some(OutputFormat::Png), OutputFormat::Png, false)
        );
        let none = InputSchema {
            output_formats: vec![],
            ..s
        };
        assert_eq!(
            none.format_for(OutputFormat::Png),
            (None, OutputFormat::Png, true)
        );
        assert_eq!(
            none.format_for(OutputFormat::Jpeg),
            (None, OutputFormat::Png, false)
        );
    }

    fn price(unit: PriceUnit) -> Price {
        Price {
            unit,
            checked: crate::domain::date::parse("2026-11-30").unwrap(),
            source: String::new(),
        }
    }

    #[test]
    fn per_image_prices_follow_the_tier() {
        let p = price(PriceUnit::Image {
            usd: MicroUsd(80_000),
            tiers: vec![
                ("0.5K".into(), MicroUsd(60_000)),
                ("2K".into(), MicroUsd(120_000)),
            ],
        });
        assert_eq!(p.max_cost(4, Some("1K"), 1024, 1024), MicroUsd(320_000));
        assert_eq!(p.max_cost(2, Some("2K"), 2048, 2048), MicroUsd(240_000));
        assert_eq!(p.max_cost(1, Some("0.5K"), 512, 512), MicroUsd(60_000));
        assert_eq!(
            p.delivered_cost(Some("2K"), &[(2048, 2048)], Some(7.0)),
            MicroUsd(120_000)
        );
        assert_eq!(p.describe(), "$0.08 per image, $0.06 at 0.5K, $0.12 at 2K");
    }

    #[test]
    fn per_megapixel_prices_round_each_image_up() {
        let p = price(PriceUnit::Megapixel {
            usd: MicroUsd(25_000),
            first: None,
        });
        assert_eq!(p.image_cost(None, 1024, 1024), MicroUsd(25_000));
        assert_eq!(p.image_cost(None, 1024, 1536), MicroUsd(50_000));
        assert_eq!(p.image_cost(None, 256, 256), MicroUsd(25_000));
        assert_eq!(p.max_cost(3, None, 2048, 2048), MicroUsd(300_000));
        assert_eq!(
            p.delivered_cost(None, &[(1024, 1024), (1024, 1536)], None),
            MicroUsd(75_000)
        );
        let pro = price(PriceUnit::Megapixel {
            usd: MicroUsd(15_000),
            first: Some(MicroUsd(30_000)),
        });
        assert_eq!(pro.image_cost(None, 1024, 1024), MicroUsd(30_000));
        assert_eq!(pro.image_cost(None, 2048, 2048), MicroUsd(75_000));
    }

    #[test]
    fn billable_units_use_what_fal_reported() {
        let p = price(PriceUnit::BillableUnit {
            usd: MicroUsd(10_000),
            max_units_per_image: 3,
        });
        assert_eq!(p.max_cost(2, None, 1024, 1024), MicroUsd(60_000));
        assert_eq!(
            p.delivered_cost(None, &[(1, 1), (1, 1)], Some(2.5)),
            MicroUsd(25_000)
        );
        assert_eq!(p.delivered_cost(None, &[(1, 1)], None), MicroUsd(30_000));
        assert_eq!(
            p.delivered_cost(None, &[(1, 1)], Some(f64::NAN)),
            MicroUsd(30_000)
        );
    }

    #[test]
    fn lifecycles_start_on_their_day() {
        let day = |s| crate::domain::date::parse(s).unwrap();
        let l = Lifecycle {
            deprecated: Some(day("2026-07-17")),
            sunset: Some(day("2027-01-01")),
        };
        assert!(!l.is_deprecated(day("2026-07-16")));
        assert!(l.is_deprecated(day("2026-07-17")));
        assert!(!l.is_sunset(day("2026-12-31")));
        assert!(l.is_sunset(day("2027-01-01")));
        assert!(!Lifecycle::default().is_deprecated(day("2099-01-01")));
    }
}
