//! What a test controls and observes: the behaviour knobs ([`FakeConfig`]),
//! injected faults ([`Fault`]), the calls received ([`Call`], counted per
//! [`Op`]), and the same over HTTP under `/_fake/` for tests that run the
//! fake as a process (the SDK suites, the scripts).

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::state::{State, lock};

/// The operations the fake distinguishes, as used in faults and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Submit,
    Status,
    Stream,
    Result,
    Cancel,
    Run,
    File,
}

impl Op {
    pub(crate) const ALL: [Op; 7] = [
        Op::Submit,
        Op::Status,
        Op::Stream,
        Op::Result,
        Op::Cancel,
        Op::Run,
        Op::File,
    ];

    /// The name in `/_fake/counts` and in fault JSON.
    fn name(self) -> &'static str {
        match self {
            Op::Submit => "submit",
            Op::Status => "status",
            Op::Stream => "stream",
            Op::Result => "result",
            Op::Cancel => "cancel",
            Op::Run => "run",
            Op::File => "file",
        }
    }
}

/// What an injected fault does to a matching call.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer this status, headers and body instead.
    Respond {
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
        #[serde(default)]
        body: String,
    },
    /// Wait, then answer normally.
    Delay { ms: u64 },
    /// Never answer.
    Hang,
    /// The job fails: its status says COMPLETED with `error` / `error_type`
    /// (as fal's does), and its result answers the model's error, as fal
    /// documents: `result_status` with `result_body` (defaults: the status
    /// fal's error list gives `error_type`, 500 for an unknown one, and
    /// `{"detail": error, "error_type": error_type}`).
    CompletedWithError {
        error: String,
        error_type: String,
        #[serde(default)]
        result_status: Option<u16>,
        #[serde(default)]
        result_body: Option<String>,
    },
    /// A status stream that answers its head, then never sends a byte (no
    /// events, no keep-alive comments); other operations hang.
    Stall,
    /// Status answers an undocumented status value.
    UnknownStatus,
    /// Answer 200 with a body that is not JSON.
    MalformedJson,
    /// Result without images.
    NoImages,
    /// Result whose data URI is not base64.
    BadDataUri,
    /// Result padded to this many bytes.
    Huge { bytes: usize },
    /// Result with plain URLs even when sync_mode was asked.
    UrlsInsteadOfDataUris,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fault {
    pub op: Op,
    /// How many matching calls it affects; 0 means every call from now on.
    #[serde(default = "one")]
    pub times: u32,
    pub action: FaultAction,
}

fn one() -> u32 {
    1
}

/// Behaviour knobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct FakeConfig {
    /// Time a job spends IN_QUEUE.
    pub queue_ms: u64,
    /// Time a job spends IN_PROGRESS.
    pub run_ms: u64,
    /// Record every call (bodies, headers). Off for benchmarks.
    pub record: bool,
    /// Images at Imagen's real size (true) or 1/16-side ones (fast tests).
    pub full_size_images: bool,
    /// Add this much random noise to images so PNGs are realistically large
    /// (0 = smooth, well-compressing pictures).
    pub noise: u8,
    /// Where submit answers say status/result/cancel live:
    /// `<advertised_base>/<owner>/<alias>/requests/<id>...`. Empty: the
    /// fake's own address, so the URLs it advertises work. A base with one
    /// path segment (`http://127.0.0.1:<port>/adv`) is served too, which lets
    /// a test tell advertised URLs from built ones.
    pub advertised_base: String,
    /// Interval of the `: keep-alive` comments on status streams (fal sends
    /// one every 15 s).
    pub stream_keepalive_ms: u64,
    /// `X-Fal-Billable-Units` on result and run answers: this many units per
    /// image delivered (fal bills Imagen per image: 1). Negative: the header
    /// is not sent.
    pub billable_units_per_image: f64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            queue_ms: 0,
            run_ms: 0,
            record: true,
            full_size_images: true,
            noise: 0,
            advertised_base: String::new(),
            stream_keepalive_ms: 15_000,
            billable_units_per_image: 1.0,
        }
    }
}

/// One call the fake received.
#[derive(Clone, Debug, Serialize)]
pub struct Call {
    pub op: Op,
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    /// The query string (without `?`), empty when there was none.
    pub query: String,
    /// fal's request headers (`x-fal-*`, `x-app-fal-*`), names lowercased.
    pub fal_headers: Vec<(String, String)>,
    /// The JSON body of a submit or run (`null` when it was not JSON).
    pub body: Option<serde_json::Value>,
}

/// The control API's routes.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/_fake/calls", web::get().to(calls))
        .route("/_fake/counts", web::get().to(counts))
        .route("/_fake/faults", web::post().to(add_faults))
        .route("/_fake/config", web::post().to(set_config))
        .route("/_fake/reset", web::post().to(reset))
        .route("/_fake/endpoints", web::post().to(crate::endpoints::set));
}

/// `GET /_fake/calls`: every recorded call, oldest first.
async fn calls(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(&*lock(&state.calls))
}

/// `GET /_fake/counts`: calls per operation, and jobs cancelled.
async fn counts(state: web::Data<State>) -> HttpResponse {
    let mut body: serde_json::Map<String, serde_json::Value> = Op::ALL
        .into_iter()
        .map(|op| (op.name().to_owned(), state.count(op).into()))
        .collect();
    body.insert("cancelled_jobs".into(), state.cancelled_jobs().into());
    HttpResponse::Ok().json(body)
}

/// `POST /_fake/faults` with a JSON list of [`Fault`]s.
async fn add_faults(state: web::Data<State>, faults: web::Json<Vec<Fault>>) -> HttpResponse {
    lock(&state.faults).extend(faults.into_inner());
    HttpResponse::NoContent().finish()
}

/// `POST /_fake/config` with a [`FakeConfig`] (absent fields: defaults).
async fn set_config(state: web::Data<State>, config: web::Json<FakeConfig>) -> HttpResponse {
    *lock(&state.config) = config.into_inner();
    state.changed();
    HttpResponse::NoContent().finish()
}

/// `POST /_fake/reset`: forget faults, calls, jobs, counts and endpoint
/// modes (not the config).
async fn reset(state: web::Data<State>) -> HttpResponse {
    state.reset();
    HttpResponse::NoContent().finish()
}
