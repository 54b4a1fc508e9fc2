//! fal's wire format as the fake speaks it: what a model input asks for
//! (each endpoint's own schema is in `crate::models`), a model's output, and
//! the queue's answers, written from fal's documentation (PROTOCOLS.md
//! sections B and C). Deliberately independent of the gateway's code: a fake
//! that borrowed the gateway's types would agree with its mistakes.

use serde::Serialize;
use serde_json::Value;

/// The `output_format` values fal's image models know.
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

/// What a model input asks for, once its endpoint's schema accepted it
/// (`crate::models` reads each endpoint's own fields into this).
#[derive(Clone, Debug)]
pub(crate) struct ModelInput {
    pub width: u32,
    pub height: u32,
    pub num_images: u8,
    pub output_format: OutputFormat,
    /// Data URIs in the answer instead of file URLs.
    pub sync_mode: bool,
    /// The seed the output reports, for endpoints whose output has one.
    pub output_seed: Option<u64>,
}

/// fal's 422 for input its schema rejects.
#[derive(Debug, Serialize)]
pub(crate) struct ValidationError {
    pub(crate) detail: [ErrorDetail; 1],
}

#[derive(Debug, Serialize)]
pub(crate) struct ErrorDetail {
    pub(crate) loc: Vec<String>,
    pub(crate) msg: String,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
}

impl ValidationError {
    pub(crate) fn new(field: Option<&str>, msg: impl Into<String>, kind: &'static str) -> Self {
        let loc = std::iter::once("body")
            .chain(field)
            .map(str::to_owned)
            .collect();
        Self {
            detail: [ErrorDetail {
                loc,
                msg: msg.into(),
                kind,
            }],
        }
    }
}

/// A model's output: `images`, plus what its endpoint adds (Imagen and the
/// Gemini family a `description`; FLUX and Seedream the `seed` used, FLUX
/// `has_nsfw_concepts`).
#[derive(Debug, Serialize)]
pub(crate) struct ModelOutput {
    pub images: Vec<ImageFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_nsfw_concepts: Option<Vec<bool>>,
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
