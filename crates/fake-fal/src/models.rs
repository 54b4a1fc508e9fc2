//! Each model endpoint the fake plays, with its input schema and what it
//! delivers, written from fal's documentation and model pages (PROTOCOLS.md
//! sections B and C), never from the gateway's profiles: Imagen 4 (fast,
//! standard, ultra), nano-banana-2, nano-banana-pro, FLUX.1 [schnell] and
//! [dev], FLUX.2 [pro] and Seedream 4.
//!
//! Input is checked the way fal's pydantic schemas check it: a value
//! outside a field's enum or range, or of the wrong type, is a 422 with
//! `detail` naming the field; fields a schema lacks are ignored (as pydantic
//! ignores extras). The prompt's documented lengths are not enforced. An
//! endpoint id the fake does not know answers 404, as fal does for an
//! application that does not exist.

use serde_json::{Map, Value};

use crate::wire::{ModelInput, OutputFormat, ValidationError};

/// Imagen 4's ratios at 1K (2K doubles each side).
const IMAGEN_RATIOS: &[(&str, u32, u32)] = &[
    ("1:1", 1024, 1024),
    ("16:9", 1408, 768),
    ("9:16", 768, 1408),
    ("4:3", 1280, 896),
    ("3:4", 896, 1280),
];

/// The Gemini image models' ratios at 1K (Google's tables; 2K and 4K double
/// and quadruple, 0.5K halves).
const GEMINI_RATIOS: &[(&str, u32, u32)] = &[
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

/// nano-banana-2's extreme ratios (about a megapixel).
const GEMINI_WIDE_RATIOS: &[(&str, u32, u32)] = &[
    ("4:1", 2048, 512),
    ("1:4", 512, 2048),
    ("8:1", 2896, 368),
    ("1:8", 368, 2896),
];

/// `image_size` presets (FLUX, Seedream).
const PRESETS: &[(&str, u32, u32)] = &[
    ("square_hd", 1024, 1024),
    ("square", 512, 512),
    ("portrait_4_3", 768, 1024),
    ("portrait_16_9", 576, 1024),
    ("landscape_4_3", 1024, 768),
    ("landscape_16_9", 1024, 576),
];

/// The seed a model reports when none was given.
const RANDOM_SEED: u64 = 2_718_281_828;

/// How one endpoint takes its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Schema {
    /// Imagen 4; `resolution` (1K/2K) on standard and ultra only.
    Imagen { resolution: bool },
    /// nano-banana-2 (`wide`: 4:1.. ratios and 0.5K) and nano-banana-pro.
    Gemini { wide: bool },
    /// FLUX.1 (`max_steps` of `num_inference_steps`, 12 or 50) and FLUX.2
    /// pro (`num_images: false`: no such field, one image).
    Flux { max_steps: i64, num_images: bool },
    /// Seedream 4 text-to-image.
    Seedream,
}

/// The schema of an endpoint id, `None` when fal has no such application.
pub(crate) fn schema_of(endpoint: &str) -> Option<Schema> {
    Some(match endpoint {
        "fal-ai/imagen4/preview/fast" => Schema::Imagen { resolution: false },
        "fal-ai/imagen4/preview" | "fal-ai/imagen4/preview/ultra" => {
            Schema::Imagen { resolution: true }
        }
        "fal-ai/nano-banana-2" => Schema::Gemini { wide: true },
        "fal-ai/nano-banana-pro" => Schema::Gemini { wide: false },
        "fal-ai/flux/schnell" => Schema::Flux {
            max_steps: 12,
            num_images: true,
        },
        "fal-ai/flux/dev" => Schema::Flux {
            max_steps: 50,
            num_images: true,
        },
        "fal-ai/flux-2-pro" => Schema::Flux {
            max_steps: 50,
            num_images: false,
        },
        "fal-ai/bytedance/seedream/v4/text-to-image" => Schema::Seedream,
        _ => return None,
    })
}

/// A body's fields, read the way pydantic validates them.
struct Fields<'a>(&'a Map<String, Value>);

fn list(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// One of `allowed` (`None` when absent).
    fn literal(&self, name: &str, allowed: &[&str]) -> Result<Option<&'a str>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .filter(|s| allowed.contains(s))
                .map(Some)
                .ok_or_else(|| {
                    ValidationError::new(
                        Some(name),
                        format!("Input should be {}", list(allowed)),
                        "literal_error",
                    )
                }),
        }
    }

    fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n < min => Err(ValidationError::new(
                    Some(name),
                    format!("Input should be greater than or equal to {min}"),
                    "greater_than_equal",
                )),
                Some(n) if n > max => Err(ValidationError::new(
                    Some(name),
                    format!("Input should be less than or equal to {max}"),
                    "less_than_equal",
                )),
                Some(n) => Ok(Some(n)),
                None => Err(ValidationError::new(
                    Some(name),
                    "Input should be a valid integer",
                    "int_type",
                )),
            },
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ValidationError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                ValidationError::new(Some(name), "Input should be a valid boolean", "bool_type")
            }),
        }
    }

    fn number(&self, name: &str) -> Result<(), ValidationError> {
        match self.get(name) {
            Some(v) if !v.is_number() => Err(ValidationError::new(
                Some(name),
                "Input should be a valid number",
                "float_type",
            )),
            _ => Ok(()),
        }
    }

    fn seed(&self) -> Result<Option<u64>, ValidationError> {
        match self.get("seed") {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ValidationError::new(Some("seed"), "Input should be a valid integer", "int_type")
            }),
        }
    }

    fn format(
        &self,
        allowed: &[&str],
        default: OutputFormat,
    ) -> Result<OutputFormat, ValidationError> {
        Ok(self
            .literal("output_format", allowed)?
            .and_then(OutputFormat::parse)
            .unwrap_or(default))
    }

    /// `image_size`: a preset, `{width, height}` within `sides`, or (for
    /// Seedream) one of `autos` with its size.
    fn image_size(
        &self,
        default: (u32, u32),
        sides: (i64, i64),
        autos: &[(&str, u32, u32)],
    ) -> Result<(u32, u32), ValidationError> {
        let bad =
            |msg: &str| ValidationError::new(Some("image_size"), msg, "model_attributes_type");
        match self.get("image_size") {
            None => Ok(default),
            Some(Value::String(name)) => PRESETS
                .iter()
                .chain(autos)
                .find(|(p, _, _)| p == name)
                .map(|(_, w, h)| (*w, *h))
                .ok_or_else(|| {
                    let names: Vec<&str> = PRESETS.iter().chain(autos).map(|p| p.0).collect();
                    ValidationError::new(
                        Some("image_size"),
                        format!("Input should be {}", list(&names)),
                        "literal_error",
                    )
                }),
            Some(Value::Object(size)) => {
                let side = |key: &str| {
                    size.get(key)
                        .and_then(Value::as_i64)
                        .filter(|v| (sides.0..=sides.1).contains(v))
                        .map(|v| v as u32)
                };
                match (side("width"), side("height")) {
                    (Some(w), Some(h)) => Ok((w, h)),
                    _ => Err(bad(&format!(
                        "width and height should be integers from {} to {}",
                        sides.0, sides.1
                    ))),
                }
            }
            Some(_) => Err(bad("Input should be a valid dictionary or a preset name")),
        }
    }
}

/// `safety_tolerance`: fal's strings "1" (strictest) to "6".
const SAFETY: &[&str] = &["1", "2", "3", "4", "5", "6"];

/// Check a body against `schema`; `Null` when the body was not JSON.
pub(crate) fn parse(schema: Schema, body: &Value) -> Result<ModelInput, ValidationError> {
    let Some(map) = body.as_object() else {
        return Err(ValidationError::new(
            None,
            "Input should be a valid dictionary",
            "dict_type",
        ));
    };
    let f = Fields(map);
    match f.get("prompt") {
        Some(Value::String(_)) => {}
        Some(_) => {
            return Err(ValidationError::new(
                Some("prompt"),
                "Input should be a valid string",
                "string_type",
            ));
        }
        None => {
            return Err(ValidationError::new(
                Some("prompt"),
                "Field required",
                "missing",
            ));
        }
    }
    let sync_mode = f.boolean("sync_mode")?.unwrap_or(false);
    let seed = f.seed()?;
    let (width, height, num_images, output_format, output_seed) = match schema {
        Schema::Imagen { resolution } => {
            let ratios: Vec<&str> = IMAGEN_RATIOS.iter().map(|r| r.0).collect();
            let ratio = f.literal("aspect_ratio", &ratios)?.unwrap_or("1:1");
            let scale = if resolution {
                match f.literal("resolution", &["1K", "2K"])? {
                    Some("2K") => 2,
                    _ => 1,
                }
            } else {
                1
            };
            f.literal("safety_tolerance", SAFETY)?;
            let (_, w, h) = IMAGEN_RATIOS
                .iter()
                .find(|r| r.0 == ratio)
                .copied()
                .unwrap_or(IMAGEN_RATIOS[0]);
            let n = f.int("num_images", 1, 4)?.unwrap_or(1);
            (
                w * scale,
                h * scale,
                n,
                f.format(&["png", "jpeg", "webp"], OutputFormat::Png)?,
                None,
            )
        }
        Schema::Gemini { wide } => {
            let mut table: Vec<(&str, u32, u32)> = GEMINI_RATIOS.to_vec();
            if wide {
                table.extend(GEMINI_WIDE_RATIOS);
            }
            let mut ratios: Vec<&str> = vec!["auto"];
            ratios.extend(table.iter().map(|r| r.0));
            // `auto` lets the model choose: the fake chooses a square.
            let ratio = f.literal("aspect_ratio", &ratios)?.unwrap_or("1:1");
            let tiers: &[&str] = if wide {
                &["0.5K", "1K", "2K", "4K"]
            } else {
                &["1K", "2K", "4K"]
            };
            let (num, den) = match f.literal("resolution", tiers)?.unwrap_or("1K") {
                "0.5K" => (1, 2),
                "2K" => (2, 1),
                "4K" => (4, 1),
                _ => (1, 1),
            };
            f.literal("safety_tolerance", SAFETY)?;
            f.boolean("limit_generations")?;
            f.boolean("enable_web_search")?;
            let (_, w, h) = table
                .iter()
                .find(|r| r.0 == ratio)
                .copied()
                .unwrap_or(("1:1", 1024, 1024));
            let n = f.int("num_images", 1, 4)?.unwrap_or(1);
            (
                w * num / den,
                h * num / den,
                n,
                f.format(&["jpeg", "png", "webp"], OutputFormat::Png)?,
                None,
            )
        }
        Schema::Flux {
            max_steps,
            num_images,
        } => {
            // FLUX's default is landscape_4_3.
            let (w, h) = f.image_size((1024, 768), (1, 14_142), &[])?;
            f.int("num_inference_steps", 1, max_steps)?;
            f.number("guidance_scale")?;
            f.boolean("enable_safety_checker")?;
            f.literal("safety_tolerance", SAFETY)?;
            let n = if num_images {
                f.int("num_images", 1, 4)?.unwrap_or(1)
            } else {
                1
            };
            (
                w,
                h,
                n,
                f.format(&["jpeg", "png"], OutputFormat::Jpeg)?,
                Some(seed.unwrap_or(RANDOM_SEED)),
            )
        }
        Schema::Seedream => {
            let (w, h) = f.image_size(
                (2048, 2048),
                (1, 16_384),
                &[
                    ("auto", 2048, 2048),
                    ("auto_2K", 2048, 2048),
                    ("auto_4K", 4096, 4096),
                ],
            )?;
            let pixels = u64::from(w) * u64::from(h);
            if !(960 * 960..=4096 * 4096).contains(&pixels) {
                return Err(ValidationError::new(
                    Some("image_size"),
                    "The total pixels should be between 960x960 and 4096x4096",
                    "value_error",
                ));
            }
            let n = f.int("num_images", 1, 6)?.unwrap_or(1);
            // Each generation makes up to `max_images`: the fake makes all.
            let per = f.int("max_images", 1, 6)?.unwrap_or(1);
            (
                w,
                h,
                n * per,
                OutputFormat::Png,
                Some(seed.unwrap_or(RANDOM_SEED)),
            )
        }
    };
    Ok(ModelInput {
        width,
        height,
        num_images: num_images as u8,
        output_format,
        sync_mode,
        output_seed,
    })
}

/// What the endpoint's output adds beside `images`: a `description`
/// (Imagen 4, the Gemini family) or NSFW flags (FLUX).
pub(crate) fn describes(schema: Schema) -> bool {
    matches!(schema, Schema::Imagen { .. } | Schema::Gemini { .. })
}

pub(crate) fn flags_nsfw(schema: Schema) -> bool {
    matches!(schema, Schema::Flux { .. })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(endpoint: &str, body: Value) -> ModelInput {
        parse(schema_of(endpoint).unwrap(), &body).unwrap()
    }

    fn rejected(endpoint: &str, body: Value) -> (String, &'static str) {
        let e = parse(schema_of(endpoint).unwrap(), &body).unwrap_err();
        (
            e.detail[0].loc.last().cloned().unwrap_or_default(),
            e.detail[0].kind,
        )
    }

    #[test]
    fn imagen_delivers_its_sizes_per_ratio_and_resolution() {
        for (ratio, w, h) in IMAGEN_RATIOS {
            let i = parsed(
                "fal-ai/imagen4/preview/fast",
                json!({"prompt": "p", "aspect_ratio": ratio}),
            );
            assert_eq!((i.width, i.height), (*w, *h), "{ratio}");
        }
        let i = parsed(
            "fal-ai/imagen4/preview",
            json!({"prompt": "p", "aspect_ratio": "16:9", "resolution": "2K"}),
        );
        assert_eq!((i.width, i.height), (2816, 1536));
        // fast has no resolution field: ignored, like any extra.
        let i = parsed(
            "fal-ai/imagen4/preview/fast",
            json!({"prompt": "p", "resolution": "2K"}),
        );
        assert_eq!((i.width, i.height), (1024, 1024));
        let i = parsed(
            "fal-ai/imagen4/preview/fast",
            json!({"prompt": "p", "seed": null}),
        );
        assert_eq!(
            (i.num_images, i.output_format, i.sync_mode, i.output_seed),
            (1, OutputFormat::Png, false, None)
        );
    }

    #[test]
    fn the_gemini_family_delivers_its_own_ratios_and_tiers() {
        let i = parsed(
            "fal-ai/nano-banana-2",
            json!({"prompt": "p", "aspect_ratio": "3:2", "resolution": "2K", "num_images": 3}),
        );
        assert_eq!((i.width, i.height, i.num_images), (2528, 1696, 3));
        let i = parsed(
            "fal-ai/nano-banana-2",
            json!({"prompt": "p", "aspect_ratio": "1:1", "resolution": "0.5K"}),
        );
        assert_eq!((i.width, i.height), (512, 512));
        let i = parsed(
            "fal-ai/nano-banana-pro",
            json!({"prompt": "p", "aspect_ratio": "21:9", "resolution": "4K"}),
        );
        assert_eq!((i.width, i.height), (6336, 2688));
        assert_eq!(
            rejected(
                "fal-ai/nano-banana-pro",
                json!({"prompt": "p", "aspect_ratio": "4:1"})
            ),
            ("aspect_ratio".into(), "literal_error")
        );
        assert_eq!(
            rejected(
                "fal-ai/nano-banana-pro",
                json!({"prompt": "p", "resolution": "0.5K"})
            ),
            ("resolution".into(), "literal_error")
        );
    }

    #[test]
    fn flux_takes_an_image_size_and_reports_its_seed() {
        let i = parsed(
            "fal-ai/flux/dev",
            json!({"prompt": "p", "image_size": {"width": 1024, "height": 1536}, "seed": 7}),
        );
        assert_eq!(
            (i.width, i.height, i.output_format, i.output_seed),
            (1024, 1536, OutputFormat::Jpeg, Some(7))
        );
        let i = parsed(
            "fal-ai/flux/schnell",
            json!({"prompt": "p", "image_size": "portrait_16_9", "output_format": "png"}),
        );
        assert_eq!(
            (i.width, i.height, i.output_format),
            (576, 1024, OutputFormat::Png)
        );
        assert_eq!(i.output_seed, Some(RANDOM_SEED));
        let i = parsed("fal-ai/flux-2-pro", json!({"prompt": "p", "num_images": 4}));
        assert_eq!(i.num_images, 1, "FLUX.2 pro has no num_images: one image");
    }

    #[test]
    fn seedream_counts_pixels_and_max_images() {
        let i = parsed(
            "fal-ai/bytedance/seedream/v4/text-to-image",
            json!({"prompt": "p", "image_size": {"width": 960, "height": 960}, "num_images": 2, "max_images": 1}),
        );
        assert_eq!((i.width, i.height, i.num_images), (960, 960, 2));
        let i = parsed(
            "fal-ai/bytedance/seedream/v4/text-to-image",
            json!({"prompt": "p", "image_size": "auto_2K", "num_images": 2, "max_images": 3}),
        );
        assert_eq!(i.num_images, 6);
        assert_eq!(
            rejected(
                "fal-ai/bytedance/seedream/v4/text-to-image",
                json!({"prompt": "p", "image_size": "square"})
            ),
            ("image_size".into(), "value_error")
        );
    }

    #[test]
    fn values_outside_a_schema_are_rejected_naming_the_field() {
        let table = [
            (
                "fal-ai/imagen4/preview/fast",
                json!({"aspect_ratio": "1:1"}),
                "prompt",
                "missing",
            ),
            (
                "fal-ai/imagen4/preview/fast",
                json!({"prompt": 3}),
                "prompt",
                "string_type",
            ),
            (
                "fal-ai/imagen4/preview/fast",
                json!({"prompt": "p", "aspect_ratio": "21:9"}),
                "aspect_ratio",
                "literal_error",
            ),
            (
                "fal-ai/imagen4/preview/fast",
                json!({"prompt": "p", "output_format": "gif"}),
                "output_format",
                "literal_error",
            ),
            (
                "fal-ai/imagen4/preview/fast",
                json!({"prompt": "p", "num_images": 5}),
                "num_images",
                "less_than_equal",
            ),
            (
                "fal-ai/imagen4/preview/fast",
                json!({"prompt": "p", "num_images": 0}),
                "num_images",
                "greater_than_equal",
            ),
            (
                "fal-ai/imagen4/preview/fast",
                json!({"prompt": "p", "num_images": "2"}),
                "num_images",
                "int_type",
            ),
            (
                "fal-ai/imagen4/preview/fast",
                json!({"prompt": "p", "sync_mode": "true"}),
                "sync_mode",
                "bool_type",
            ),
            (
                "fal-ai/imagen4/preview/fast",
                json!({"prompt": "p", "seed": 1.5}),
                "seed",
                "int_type",
            ),
            (
                "fal-ai/imagen4/preview/fast",
                json!({"prompt": "p", "safety_tolerance": 5}),
                "safety_tolerance",
                "literal_error",
            ),
            (
                "fal-ai/imagen4/preview",
                json!({"prompt": "p", "resolution": "4K"}),
                "resolution",
                "literal_error",
            ),
            (
                "fal-ai/flux/dev",
                json!({"prompt": "p", "output_format": "webp"}),
                "output_format",
                "literal_error",
            ),
            (
                "fal-ai/flux/dev",
                json!({"prompt": "p", "aspect_ratio": "2:3", "image_size": "2:3"}),
                "image_size",
                "literal_error",
            ),
            (
                "fal-ai/flux/schnell",
                json!({"prompt": "p", "num_inference_steps": 28}),
                "num_inference_steps",
                "less_than_equal",
            ),
        ];
        for (endpoint, body, field, kind) in table {
            assert_eq!(
                rejected(endpoint, body.clone()),
                (field.to_owned(), kind),
                "{endpoint} {body}"
            );
        }
        let err = parse(Schema::Seedream, &Value::Null).unwrap_err();
        assert_eq!(err.detail[0].loc, ["body"]);
        assert_eq!(schema_of("fal-ai/imagen3"), None);
    }
}
