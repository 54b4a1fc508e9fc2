//! `[[models.profiles]]`: endpoint profiles in the configuration file. An
//! entry naming a built-in endpoint changes only the keys it gives; an entry
//! naming any other endpoint adds a profile and must say how size is given
//! and what it costs. Configuration builds the domain's
//! [`EndpointProfile`]s from these (see docs/models.md for every key).

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::domain::profile::{
    InputSchema, Preset, RatioOption, SeedSupport, SizeInput, SizeLimits, Tier,
};
use crate::domain::{
    Date, EndpointId, EndpointProfile, Lifecycle, MicroUsd, OutputFormat, Price, PriceUnit, date,
};

const KEY: &str = "models.profiles";

/// One profile entry. Every key but `endpoint` is optional when the entry
/// overrides a built-in profile.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileEntry {
    /// fal endpoint id, `owner/alias[/path]`.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `aspect_ratio` or `image_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `aspect_ratio` values with their delivered size at the default
    /// resolution: `["1:1 1024x1024", "16:9 1408x768"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspect_ratios: Option<Vec<String>>,
    /// The ratio sent for `size: auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_aspect_ratio: Option<String>,
    /// `image_size` presets: `["square_hd 1024x1024"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presets: Option<Vec<String>>,
    /// Bounds of an explicit `{width, height}`; absent: presets only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_size: Option<CustomSizeEntry>,
    /// `image_size` for `size: auto`, `WxH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_images: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_images_field: Option<bool>,
    /// Accepted `output_format` values; `[]`: the field is not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_formats: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_output_format: Option<String>,
    /// `resolution` tiers, `["1K", "2K"]`; `[]`: no such field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolutions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_resolution: Option<String>,
    /// `none`, `input` or `input_output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// `safety_tolerance` sent for `moderation: low`; `""`: no such field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_tolerance_low: Option<String>,
    /// Fields sent on every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<PriceEntry>,
    /// `YYYY-MM-DD`; `""` clears a built-in date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset: Option<String>,
    /// What is unconfirmed about this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CustomSizeEntry {
    pub min_side: u32,
    pub max_side: u32,
    #[serde(default = "one")]
    pub multiple_of: u32,
    #[serde(default)]
    pub min_pixels: u64,
    #[serde(default = "no_pixel_bound")]
    pub max_pixels: u64,
}

fn one() -> u32 {
    1
}

fn no_pixel_bound() -> u64 {
    u64::MAX
}

/// A dollar amount: `"0.08"` (exact) or `0.08` (rounded to the micro-dollar).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Usd {
    Text(String),
    Number(f64),
}

impl Usd {
    fn micro(&self) -> Option<MicroUsd> {
        match self {
            Usd::Text(t) => MicroUsd::parse(t),
            Usd::Number(n) => MicroUsd::from_usd(*n),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// `image`, `megapixel` or `billable_unit`.
    pub per: String,
    pub usd: Usd,
    /// Per-image prices of other resolution tiers: `["2K 0.12"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolutions: Vec<String>,
    /// `megapixel`: the price of each image's first megapixel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_megapixel_usd: Option<Usd>,
    /// `billable_unit`: the most units one image can take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_units_per_image: Option<u32>,
    /// When the price was checked, `YYYY-MM-DD`.
    pub checked: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

fn error(endpoint: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(KEY, format!("endpoint `{endpoint}`: {message}"))
}

/// `1024x768`.
pub(crate) fn parse_size(text: &str) -> Option<(u32, u32)> {
    let (w, h) = text.trim().split_once('x')?;
    let (w, h): (u32, u32) = (w.parse().ok()?, h.parse().ok()?);
    ((1..=16_384).contains(&w) && (1..=16_384).contains(&h)).then_some((w, h))
}

/// `"16:9 1408x768"` -> (`16:9`, 1408, 768).
fn parse_named_size(text: &str) -> Option<(String, u32, u32)> {
    let (name, size) = text.trim().split_once(' ')?;
    let (w, h) = parse_size(size)?;
    (!name.is_empty()).then(|| (name.to_owned(), w, h))
}

fn parse_date(endpoint: &str, what: &str, text: &str) -> Result<Option<Date>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    date::parse(text).map(Some).ok_or_else(|| {
        error(
            endpoint,
            format!("`{what}` = `{text}` is not a date like 2026-07-17"),
        )
    })
}

fn format_of(endpoint: &str, name: &str) -> Result<OutputFormat, ConfigError> {
    OutputFormat::from_name(name).ok_or_else(|| {
        error(
            endpoint,
            format!("output format `{name}` is not png, jpeg or webp"),
        )
    })
}

impl ProfileEntry {
    /// The profile this entry makes: `base` (the built-in profile of the
    /// same endpoint, if any) with this entry's keys applied.
    pub fn apply(&self, base: Option<&EndpointProfile>) -> Result<EndpointProfile, ConfigError> {
        let name = self.endpoint.as_str();
        let endpoint = EndpointId::parse(name)
            .ok_or_else(|| error(name, "is not of the form owner/alias[/path]"))?;
        let mut input = match base {
            Some(b) => b.input.clone(),
            None => InputSchema {
                size: self.new_size(name)?,
                max_images: 1,
                num_images_field: true,
                output_formats: Vec::new(),
                default_format: OutputFormat::Png,
                resolutions: Vec::new(),
                default_resolution: 0,
                seed: SeedSupport::None,
                safety_tolerance_low: None,
                extra: Vec::new(),
            },
        };
        if base.is_some()
            && (self.size.is_some()
                || self.aspect_ratios.is_some()
                || self.presets.is_some()
                || self.custom_size.is_some())
        {
            input.size = self.new_size(name)?;
        }
        self.apply_size_defaults(name, &mut input.size)?;
        if let Some(n) = self.max_images {
            if !(1..=10).contains(&n) {
                return Err(error(name, "`max_images` must be between 1 and 10"));
            }
            input.max_images = n;
        }
        if let Some(field) = self.num_images_field {
            input.num_images_field = field;
        }
        if !input.num_images_field && input.max_images != 1 {
            return Err(error(
                name,
                "without `num_images_field` an endpoint makes one image per call: set `max_images = 1`",
            ));
        }
        if let Some(formats) = &self.output_formats {
            input.output_formats = formats
                .iter()
                .map(|f| format_of(name, f))
                .collect::<Result<_, _>>()?;
        }
        if let Some(f) = &self.default_output_format {
            input.default_format = format_of(name, f)?;
        }
        if !input.output_formats.is_empty() && !input.output_formats.contains(&input.default_format)
        {
            input.default_format = input.output_formats[0];
        }
        if let Some(values) = &self.resolutions {
            input.resolutions = values
                .iter()
                .map(|v| {
                    Tier::parse(v).ok_or_else(|| {
                        error(name, format!("resolution `{v}` is not like 1K, 2K or 0.5K"))
                    })
                })
                .collect::<Result<_, _>>()?;
            input.default_resolution = 0;
        }
        if let Some(d) = &self.default_resolution {
            input.default_resolution = input
                .resolutions
                .iter()
                .position(|t| &t.value == d)
                .ok_or_else(|| {
                    error(
                        name,
                        format!("`default_resolution` `{d}` is not one of `resolutions`"),
                    )
                })?;
        }
        if let Some(seed) = &self.seed {
            input.seed = match seed.as_str() {
                "none" => SeedSupport::None,
                "input" => SeedSupport::Input,
                "input_output" => SeedSupport::InputOutput,
                other => {
                    return Err(error(
                        name,
                        format!("`seed` = `{other}`: use none, input or input_output"),
                    ));
                }
            };
        }
        if let Some(low) = &self.safety_tolerance_low {
            input.safety_tolerance_low = (!low.is_empty()).then(|| low.clone());
        }
        if let Some(extra) = &self.extra {
            input.extra = extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        let price = match (&self.price, base) {
            (Some(p), _) => p.price(name)?,
            (None, Some(b)) => b.price.clone(),
            (None, None) => {
                return Err(error(
                    name,
                    "a new endpoint needs a `price` (so spend and budgets can count it)",
                ));
            }
        };
        let mut lifecycle = base.map_or_else(Lifecycle::default, |b| b.lifecycle);
        if let Some(d) = &self.deprecated {
            lifecycle.deprecated = parse_date(name, "deprecated", d)?;
        }
        if let Some(d) = &self.sunset {
            lifecycle.sunset = parse_date(name, "sunset", d)?;
        }
        Ok(EndpointProfile {
            endpoint,
            title: self
                .title
                .clone()
                .or_else(|| base.map(|b| b.title.clone()))
                .unwrap_or_else(|| name.to_owned()),
            input,
            price,
            lifecycle,
            unconfirmed: self
                .unconfirmed
                .clone()
                .or_else(|| base.map(|b| b.unconfirmed.clone()))
                .unwrap_or_default(),
        })
    }

    /// The size input this entry describes in full.
    fn new_size(&self, name: &str) -> Result<SizeInput, ConfigError> {
        match self.size.as_deref() {
            Some("aspect_ratio") => {
                let list = self.aspect_ratios.as_deref().unwrap_or_default();
                if list.is_empty() {
                    return Err(error(
                        name,
                        "`size = \"aspect_ratio\"` needs `aspect_ratios`, e.g. [\"1:1 1024x1024\"]",
                    ));
                }
                let ratios = list
                    .iter()
                    .map(|t| {
                        parse_named_size(t)
                            .map(|(value, width, height)| RatioOption {
                                value,
                                width,
                                height,
                            })
                            .ok_or_else(|| {
                                error(
                                    name,
                                    format!("aspect ratio `{t}` is not like \"16:9 1408x768\""),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(SizeInput::AspectRatio { ratios, default: 0 })
            }
            Some("image_size") => {
                let presets = self
                    .presets
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(|t| {
                        parse_named_size(t)
                            .map(|(name, width, height)| Preset {
                                name,
                                width,
                                height,
                            })
                            .ok_or_else(|| {
                                error(
                                    name,
                                    format!("preset `{t}` is not like \"square_hd 1024x1024\""),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let custom = match self.custom_size {
                    Some(c) => {
                        if c.min_side == 0
                            || c.min_side > c.max_side
                            || c.multiple_of == 0
                            || c.min_pixels > c.max_pixels
                        {
                            return Err(error(
                                name,
                                "`custom_size` needs 0 < min_side <= max_side, multiple_of > 0 and min_pixels <= max_pixels",
                            ));
                        }
                        Some(SizeLimits {
                            min_side: c.min_side,
                            max_side: c.max_side,
                            multiple_of: c.multiple_of,
                            min_pixels: c.min_pixels,
                            max_pixels: c.max_pixels,
                        })
                    }
                    None => None,
                };
                if presets.is_empty() && custom.is_none() {
                    return Err(error(
                        name,
                        "`size = \"image_size\"` needs `presets` or `custom_size`",
                    ));
                }
                Ok(SizeInput::ImageSize {
                    presets,
                    custom,
                    default: (1024, 1024),
                })
            }
            Some(other) => Err(error(
                name,
                format!("`size` = `{other}`: use aspect_ratio or image_size"),
            )),
            None => Err(error(
                name,
                "a new endpoint needs `size` (aspect_ratio or image_size) and its options",
            )),
        }
    }

    fn apply_size_defaults(&self, name: &str, size: &mut SizeInput) -> Result<(), ConfigError> {
        match size {
            SizeInput::AspectRatio { ratios, default } => {
                if let Some(d) = &self.default_aspect_ratio {
                    *default = ratios.iter().position(|r| &r.value == d).ok_or_else(|| {
                        error(
                            name,
                            format!("`default_aspect_ratio` `{d}` is not one of `aspect_ratios`"),
                        )
                    })?;
                }
            }
            SizeInput::ImageSize { default, .. } => {
                if let Some(d) = &self.default_size {
                    *default = parse_size(d).ok_or_else(|| {
                        error(name, format!("`default_size` `{d}` is not WIDTHxHEIGHT"))
                    })?;
                }
            }
        }
        Ok(())
    }
}

impl PriceEntry {
    fn price(&self, name: &str) -> Result<Price, ConfigError> {
        let amount = |u: &Usd| {
            u.micro().ok_or_else(|| {
                error(
                    name,
                    "a price is not a dollar amount like \"0.04\" (at most six decimals)",
                )
            })
        };
        let usd = amount(&self.usd)?;
        let unit = match self.per.as_str() {
            "image" => PriceUnit::Image {
                usd,
                tiers: self
                    .resolutions
                    .iter()
                    .map(|t| {
                        let (tier, price) = t.trim().split_once(' ').ok_or_else(|| error(name, format!("price `{t}` is not like \"2K 0.12\"")))?;
                        let price = MicroUsd::parse(price).ok_or_else(|| error(name, format!("price `{t}` is not like \"2K 0.12\"")))?;
                        Ok((tier.to_owned(), price))
                    })
                    .collect::<Result<_, ConfigError>>()?,
            },
            "megapixel" => PriceUnit::Megapixel {
                usd,
                first: self.first_megapixel_usd.as_ref().map(amount).transpose()?,
            },
            "billable_unit" => PriceUnit::BillableUnit {
                usd,
                max_units_per_image: self.max_units_per_image.ok_or_else(|| {
                    error(name, "`per = \"billable_unit\"` needs `max_units_per_image` (to reserve budgets)")
                })?,
            },
            other => return Err(error(name, format!("`price.per` = `{other}`: use image, megapixel or billable_unit"))),
        };
        Ok(Price {
            unit,
            checked: parse_date(name, "price.checked", &self.checked)?.ok_or_else(|| {
                error(
                    name,
                    "`price.checked` is required (the date the price was checked)",
                )
            })?,
            source: self
                .source
                .clone()
                .unwrap_or_else(|| "configuration".into()),
        })
    }
}
