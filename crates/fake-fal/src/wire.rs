//! fal's wire format as the fake speaks it: Imagen 4's input schema and
//! output, and the queue's answers, written from fal's documentation
//! (PROTOCOLS.md section B). Deliberately independent of the gateway's code:
//! a fake that borrowed the gateway's types would agree with its mistakes.
//!
//! Input is checked the way fal's schema checks it (unknown enum values,
//! out-of-range counts and wrong types are a 422 with pydantic's `detail`
//! list). Fields the fake does not act on (`safety_tolerance`, `resolution`)
//! are accepted and ignored; the prompt's documented 3..5000 characters are
//! not enforced.

use serde::Serialize;
use serde_json::Value;

/// Imagen 4's `aspect_ratio` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AspectRatio {
    Square,
    Landscape16x9,
    Portrait9x16,
    Landscape4x3,
    Portrait3x4,
}

impl AspectRatio {
    const ALL: [AspectRatio; 5] = [
        AspectRatio::Square,
        AspectRatio::Landscape16x9,
        AspectRatio::Portrait9x16,
        AspectRatio::Landscape4x3,
        AspectRatio::Portrait3x4,
    ];

    /// The value on the wire.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AspectRatio::Square => "1:1",
            AspectRatio::Landscape16x9 => "16:9",
            AspectRatio::Portrait9x16 => "9:16",
            AspectRatio::Landscape4x3 => "4:3",
            AspectRatio::Portrait3x4 => "3:4",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == value)
    }

    /// The picture's width and height at Imagen's 1K resolution.
    pub(crate) fn dimensions(self) -> (u32, u32) {
        match self {
            AspectRatio::Square => (1024, 1024),
            AspectRatio::Landscape16x9 => (1408, 768),
            AspectRatio::Portrait9x16 => (768, 1408),
            AspectRatio::Landscape4x3 => (1280, 896),
            AspectRatio::Portrait3x4 => (896, 1280),
        }
    }

    /// The ratio as it appears in file names (`16x9`): no colon in URLs.
    pub(crate) fn file_tag(self) -> String {
        self.as_str().replace(':', "x")
    }

    pub(crate) fn from_file_tag(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.file_tag() == tag)
    }
}

/// Imagen 4's `output_format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum OutputFormat {
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    const ALL: [OutputFormat; 3] = [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp];

    /// The value on the wire, also the file extension.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Webp => "webp",
        }
    }

    pub(crate) fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == value)
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }
}

/// The Imagen 4 input fields the fake acts on, with fal's defaults.
#[derive(Clone, Debug)]
pub(crate) struct ImagenInput {
    pub aspect_ratio: AspectRatio,
    pub num_images: u8,
    pub output_format: OutputFormat,
    /// Data URIs in the answer instead of file URLs.
    pub sync_mode: bool,
}

impl ImagenInput {
    /// Check a request body against the schema. `body` is `Null` when it
    /// was not JSON at all.
    pub(crate) fn parse(body: &Value) -> Result<Self, ValidationError> {
        let Some(fields) = body.as_object() else {
            return Err(ValidationError::new(
                None,
                "Input should be a valid dictionary",
                "dict_type",
            ));
        };
        let field = |name: &str| fields.get(name).filter(|v| !v.is_null());
        match field("prompt") {
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
        let aspect_ratio = match field("aspect_ratio") {
            None => AspectRatio::Square,
            Some(v) => v.as_str().and_then(AspectRatio::parse).ok_or_else(|| {
                ValidationError::new(
                    Some("aspect_ratio"),
                    "Input should be '1:1', '16:9', '9:16', '4:3' or '3:4'",
                    "literal_error",
                )
            })?,
        };
        let output_format = match field("output_format") {
            None => OutputFormat::Png,
            Some(v) => v.as_str().and_then(OutputFormat::parse).ok_or_else(|| {
                ValidationError::new(
                    Some("output_format"),
                    "Input should be 'png', 'jpeg' or 'webp'",
                    "literal_error",
                )
            })?,
        };
        let num_images = match field("num_images") {
            None => 1,
            Some(v) => match v.as_i64() {
                Some(n @ 1..=4) => n as u8,
                Some(_) => {
                    return Err(ValidationError::new(
                        Some("num_images"),
                        "Input should be between 1 and 4",
                        "less_than_equal",
                    ));
                }
                None => {
                    return Err(ValidationError::new(
                        Some("num_images"),
                        "Input should be a valid integer",
                        "int_type",
                    ));
                }
            },
        };
        let sync_mode = match field("sync_mode") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                ValidationError::new(
                    Some("sync_mode"),
                    "Input should be a valid boolean",
                    "bool_type",
                )
            })?,
        };
        if field("seed").is_some_and(|v| !v.is_i64() && !v.is_u64()) {
            return Err(ValidationError::new(
                Some("seed"),
                "Input should be a valid integer",
                "int_type",
            ));
        }
        Ok(Self {
            aspect_ratio,
            num_images,
            output_format,
            sync_mode,
        })
    }
}

/// fal's 422 for input its schema rejects.
#[derive(Debug, Serialize)]
pub(crate) struct ValidationError {
    detail: [ErrorDetail; 1],
}

#[derive(Debug, Serialize)]
struct ErrorDetail {
    loc: Vec<&'static str>,
    msg: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl ValidationError {
    fn new(field: Option<&'static str>, msg: &'static str, kind: &'static str) -> Self {
        let loc = std::iter::once("body").chain(field).collect();
        Self {
            detail: [ErrorDetail { loc, msg, kind }],
        }
    }
}

/// Imagen 4's output.
#[derive(Debug, Serialize)]
pub(crate) struct ImagenOutput {
    pub images: Vec<ImageFile>,
    pub description: String,
}

/// One image of an output: `url` is a data URI under `sync_mode`.
#[derive(Debug, Serialize)]
pub(crate) struct ImageFile {
    pub url: String,
    pub content_type: &'static str,
    pub file_name: String,
    pub file_size: usize,
    pub width: u32,
    pub height: u32,
}

/// A queued request's status value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum QueueStatus {
    InQueue,
    InProgress,
    Completed,
}

/// The queue's answer to a submit.
#[derive(Debug, Serialize)]
pub(crate) struct SubmitAnswer {
    pub request_id: String,
    pub status: QueueStatus,
    pub queue_position: u32,
    pub status_url: String,
    pub response_url: String,
    pub cancel_url: String,
}

/// The queue's answer to a status poll, and each event of a status stream.
#[derive(Debug, Serialize)]
pub(crate) struct StatusAnswer {
    pub status: QueueStatus,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// Present (empty) once the job runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RunMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RunMetrics {
    /// Seconds.
    pub inference_time: f64,
}

/// The HTTP status fal's error list gives a request error's `error_type`
/// (PROTOCOLS.md section B); 500 for one it does not list.
pub(crate) fn error_type_status(error_type: &str) -> u16 {
    match error_type {
        "request_timeout" | "startup_timeout" => 504,
        "runner_scheduling_failure" | "runner_disconnected" => 503,
        t if t.starts_with("runner_connection") => 503,
        "runner_incomplete_response" => 502,
        "client_disconnected" | "client_cancelled" => 499,
        "bad_request" => 400,
        _ => 500,
    }
}

/// The `status` values of a cancel answer.
pub(crate) const CANCELLATION_REQUESTED: &str = "CANCELLATION_REQUESTED";
pub(crate) const ALREADY_COMPLETED: &str = "ALREADY_COMPLETED";
pub(crate) const NOT_FOUND: &str = "NOT_FOUND";

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_documented_aspect_ratio_has_imagens_pixel_size() {
        let table = [
            ("1:1", (1024, 1024)),
            ("16:9", (1408, 768)),
            ("9:16", (768, 1408)),
            ("4:3", (1280, 896)),
            ("3:4", (896, 1280)),
        ];
        for (value, size) in table {
            let input = ImagenInput::parse(&json!({"prompt": "p", "aspect_ratio": value})).unwrap();
            assert_eq!(input.aspect_ratio.dimensions(), size, "{value}");
            assert_eq!(input.aspect_ratio.as_str(), value);
            let tag = input.aspect_ratio.file_tag();
            assert_eq!(AspectRatio::from_file_tag(&tag), Some(input.aspect_ratio));
        }
    }

    #[test]
    fn absent_fields_take_fals_defaults() {
        let input = ImagenInput::parse(&json!({"prompt": "p", "seed": null})).unwrap();
        assert_eq!(input.aspect_ratio, AspectRatio::Square);
        assert_eq!(input.output_format, OutputFormat::Png);
        assert_eq!(input.num_images, 1);
        assert!(!input.sync_mode);
    }

    #[test]
    fn values_outside_the_schema_are_rejected_naming_the_field() {
        let table = [
            (json!({"aspect_ratio": "1:1"}), "prompt", "missing"),
            (json!({"prompt": 3}), "prompt", "string_type"),
            (
                json!({"prompt": "p", "aspect_ratio": "1x1"}),
                "aspect_ratio",
                "literal_error",
            ),
            (
                json!({"prompt": "p", "aspect_ratio": "21:9"}),
                "aspect_ratio",
                "literal_error",
            ),
            (
                json!({"prompt": "p", "output_format": "PNG"}),
                "output_format",
                "literal_error",
            ),
            (
                json!({"prompt": "p", "output_format": "gif"}),
                "output_format",
                "literal_error",
            ),
            (
                json!({"prompt": "p", "num_images": 0}),
                "num_images",
                "less_than_equal",
            ),
            (
                json!({"prompt": "p", "num_images": 5}),
                "num_images",
                "less_than_equal",
            ),
            (
                json!({"prompt": "p", "num_images": "2"}),
                "num_images",
                "int_type",
            ),
            (
                json!({"prompt": "p", "sync_mode": "true"}),
                "sync_mode",
                "bool_type",
            ),
            (json!({"prompt": "p", "seed": 1.5}), "seed", "int_type"),
        ];
        for (body, field, kind) in table {
            let err = ImagenInput::parse(&body).unwrap_err();
            assert_eq!(
                serde_json::to_value(&err).unwrap()["detail"][0],
                json!({"loc": ["body", field], "msg": err.detail[0].msg, "type": kind}),
                "{body}"
            );
        }
        let err = ImagenInput::parse(&Value::Null).unwrap_err();
        assert_eq!(err.detail[0].loc, ["body"]);
    }
}
