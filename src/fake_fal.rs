//! A stand-in for fal.ai that speaks the queue protocol of PROTOCOLS.md on
//! loopback: for the integration tests, the SDK end-to-end tests and the
//! benchmark. Never used by the gateway itself.
//!
//! - `POST /<endpoint id>` submit, `GET /<owner>/<alias>/requests/<id>/status`
//!   (and `/status/stream`), `GET .../requests/<id>` result, `PUT .../cancel`.
//! - `POST /run/<endpoint id>` plays fal's synchronous host (`run_url` =
//!   `http://host:port/run`).
//! - `GET /files/<name>` serves the images of non-sync answers.
//! - Control: `GET /_fake/calls`, `GET /_fake/counts`, `POST /_fake/faults`,
//!   `POST /_fake/config`, `POST /_fake/reset`.
//!
//! Every call is counted and (unless `record` is off) recorded with its body
//! and `Authorization` header; faults can be injected per operation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::domain::{AspectRatio, OutputFormat};

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
    /// Status answers COMPLETED with `error` / `error_type`.
    CompletedWithError { error: String, error_type: String },
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
    /// Images at Imagen's real size (true) or tiny 64-pixel ones (fast tests).
    pub full_size_images: bool,
    /// Add this much random noise to images so PNGs are realistically large
    /// (0 = smooth, well-compressing pictures).
    pub noise: u8,
    /// Where submit answers say status/result/cancel live. The gateway must
    /// ignore these; by default they point at a closed port.
    pub advertised_base: String,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            queue_ms: 0,
            run_ms: 0,
            record: true,
            full_size_images: true,
            noise: 0,
            advertised_base: "http://127.0.0.1:9".into(),
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
    pub body: Option<serde_json::Value>,
}

struct Job {
    input: serde_json::Value,
    submitted: Instant,
    cancelled: bool,
    /// Set when a COMPLETED-with-error fault was served for this job.
    failed: Option<(String, String)>,
}

#[derive(Default)]
struct Counts {
    submit: AtomicU64,
    status: AtomicU64,
    stream: AtomicU64,
    result: AtomicU64,
    cancel: AtomicU64,
    run: AtomicU64,
    file: AtomicU64,
}

impl Counts {
    fn of(&self, op: Op) -> &AtomicU64 {
        match op {
            Op::Submit => &self.submit,
            Op::Status => &self.status,
            Op::Stream => &self.stream,
            Op::Result => &self.result,
            Op::Cancel => &self.cancel,
            Op::Run => &self.run,
            Op::File => &self.file,
        }
    }
}

#[derive(Default)]
struct State {
    config: Mutex<FakeConfig>,
    jobs: Mutex<HashMap<String, Job>>,
    calls: Mutex<Vec<Call>>,
    counts: Counts,
    faults: Mutex<VecDeque<Fault>>,
    next_id: AtomicU64,
    port: AtomicU64,
    /// Result bodies without faults, per shape (see `output`).
    answers: Mutex<HashMap<AnswerKey, Bytes>>,
}

/// (ratio, format, full size, noise, image count, sync mode).
type AnswerKey = (AspectRatio, OutputFormat, bool, u8, u8, bool);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake fal server. Clones share it (several gateways can stand
/// in front of one fake).
#[derive(Clone)]
pub struct FakeFal {
    state: Arc<State>,
    port: u16,
    handle: ServerHandle,
}

impl FakeFal {
    /// Start on `addr` (use `127.0.0.1:0` for a free port) inside the current
    /// actix system.
    pub fn start(addr: &str, config: FakeConfig, workers: usize) -> std::io::Result<Self> {
        let state = Arc::new(State::default());
        *lock(&state.config) = config;
        let listener = std::net::TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        state.port.store(u64::from(port), Ordering::Relaxed);
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .route("/_fake/calls", web::get().to(calls))
                .route("/_fake/counts", web::get().to(counts))
                .route("/_fake/faults", web::post().to(add_faults))
                .route("/_fake/config", web::post().to(set_config))
                .route("/_fake/reset", web::post().to(reset))
                .route("/files/{name}", web::get().to(file))
                .route("/run/{tail:.*}", web::post().to(run))
                .route(
                    "/{owner}/{alias}/requests/{id}/status/stream",
                    web::get().to(status_stream),
                )
                .route(
                    "/{owner}/{alias}/requests/{id}/status",
                    web::get().to(status),
                )
                .route(
                    "/{owner}/{alias}/requests/{id}/cancel",
                    web::put().to(cancel),
                )
                .route("/{owner}/{alias}/requests/{id}", web::get().to(result))
                .route("/{tail:.*}", web::post().to(submit))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)?
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Ok(Self {
            state,
            port,
            handle,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `fal.queue_url` for the gateway.
    pub fn queue_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `fal.run_url` for the gateway.
    pub fn run_url(&self) -> String {
        format!("http://127.0.0.1:{}/run", self.port)
    }

    pub fn count(&self, op: Op) -> u64 {
        self.state.counts.of(op).load(Ordering::SeqCst)
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state.calls).clone()
    }

    /// Bodies of every submit (or sync run) so far.
    pub fn submitted_bodies(&self) -> Vec<serde_json::Value> {
        self.calls()
            .into_iter()
            .filter(|c| matches!(c.op, Op::Submit | Op::Run))
            .filter_map(|c| c.body)
            .collect()
    }

    pub fn inject(&self, fault: Fault) {
        lock(&self.state.faults).push_back(fault);
    }

    pub fn set_config(&self, config: FakeConfig) {
        *lock(&self.state.config) = config;
    }

    pub fn config(&self) -> FakeConfig {
        lock(&self.state.config).clone()
    }

    /// Jobs cancelled through `PUT .../cancel`.
    pub fn cancelled_jobs(&self) -> usize {
        lock(&self.state.jobs)
            .values()
            .filter(|j| j.cancelled)
            .count()
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

fn record(state: &State, req: &HttpRequest, op: Op, body: Option<serde_json::Value>) {
    state.counts.of(op).fetch_add(1, Ordering::SeqCst);
    if lock(&state.config).record {
        lock(&state.calls).push(Call {
            op,
            method: req.method().to_string(),
            path: req.path().to_owned(),
            authorization: req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
        });
    }
}

/// The next fault for `op`, if any (consuming one use of it).
fn take_fault(state: &State, op: Op) -> Option<FaultAction> {
    let mut faults = lock(&state.faults);
    let i = faults.iter().position(|f| f.op == op)?;
    let f = &mut faults[i];
    let action = f.action.clone();
    if f.times == 1 {
        faults.remove(i);
    } else if f.times > 1 {
        f.times -= 1;
    }
    Some(action)
}

/// Apply a fault that replaces the answer; `Ok(Some(action))` hands back
/// faults the handler itself must act on.
async fn apply_fault(state: &State, op: Op) -> Result<Option<FaultAction>, HttpResponse> {
    match take_fault(state, op) {
        None => Ok(None),
        Some(FaultAction::Respond {
            status,
            headers,
            body,
        }) => {
            let mut res = HttpResponse::build(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            );
            for (k, v) in headers {
                res.insert_header((k, v));
            }
            Err(res.body(body))
        }
        Some(FaultAction::Delay { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(None)
        }
        Some(FaultAction::Hang) => {
            std::future::pending::<()>().await;
            Ok(None)
        }
        Some(FaultAction::MalformedJson) => Err(HttpResponse::Ok()
            .content_type("application/json")
            .insert_header(("x-fal-request-id", "fake"))
            .body("{\"status\": \"COMPL")),
        Some(other) => Ok(Some(other)),
    }
}

fn fal_json(status: StatusCode, body: serde_json::Value) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("x-fal-request-id", "fake-request"))
        .json(body)
}

async fn submit(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let input: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    record(&state, &req, Op::Submit, Some(input.clone()));
    if let Err(res) = apply_fault(&state, Op::Submit).await {
        return res;
    }
    let path = req.path().trim_start_matches('/');
    let mut parts = path.splitn(3, '/');
    let (Some(owner), Some(alias)) = (parts.next(), parts.next()) else {
        return fal_json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"detail": "no such app"}),
        );
    };
    if input.get("prompt").and_then(|p| p.as_str()).is_none() {
        return fal_json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}),
        );
    }
    let id = format!(
        "{:08x}-fake-{}",
        state.next_id.fetch_add(1, Ordering::SeqCst),
        std::process::id()
    );
    let advertised = lock(&state.config).advertised_base.clone();
    lock(&state.jobs).insert(
        id.clone(),
        Job {
            input,
            submitted: Instant::now(),
            cancelled: false,
            failed: None,
        },
    );
    let base = format!("{advertised}/{owner}/{alias}/requests/{id}");
    fal_json(
        StatusCode::OK,
        serde_json::json!({
            "request_id": id,
            "status": "IN_QUEUE",
            "queue_position": 0,
            "status_url": format!("{base}/status"),
            "response_url": base,
            "cancel_url": format!("{base}/cancel"),
        }),
    )
}

/// A job's status now: (status, finished).
fn job_status(state: &State, id: &str) -> Option<(&'static str, bool)> {
    let cfg = lock(&state.config).clone();
    let jobs = lock(&state.jobs);
    let job = jobs.get(id)?;
    let elapsed = job.submitted.elapsed().as_millis() as u64;
    Some(if job.cancelled || elapsed >= cfg.queue_ms + cfg.run_ms {
        ("COMPLETED", true)
    } else if elapsed >= cfg.queue_ms {
        ("IN_PROGRESS", false)
    } else {
        ("IN_QUEUE", false)
    })
}

fn status_body(state: &State, id: &str, status: &str) -> serde_json::Value {
    let jobs = lock(&state.jobs);
    let mut body = serde_json::json!({"status": status, "request_id": id});
    match status {
        "IN_QUEUE" => body["queue_position"] = 0.into(),
        "IN_PROGRESS" => body["logs"] = serde_json::json!([]),
        _ => {
            body["logs"] = serde_json::json!([]);
            body["metrics"] = serde_json::json!({"inference_time": 0.01});
            if let Some(job) = jobs.get(id) {
                if job.cancelled {
                    body["error"] = "Request was cancelled".into();
                    body["error_type"] = "request_cancelled".into();
                } else if let Some((e, t)) = &job.failed {
                    body["error"] = e.clone().into();
                    body["error_type"] = t.clone().into();
                }
            }
        }
    }
    body
}

async fn status(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    record(&state, &req, Op::Status, None);
    let id = &path.2;
    let extra = match apply_fault(&state, Op::Status).await {
        Err(res) => return res,
        Ok(extra) => extra,
    };
    let Some((status, done)) = job_status(&state, id) else {
        return fal_json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"detail": "Request not found"}),
        );
    };
    match extra {
        Some(FaultAction::UnknownStatus) => {
            return fal_json(StatusCode::OK, serde_json::json!({"status": "EXPLODED"}));
        }
        Some(FaultAction::CompletedWithError { error, error_type }) => {
            if let Some(job) = lock(&state.jobs).get_mut(id.as_str()) {
                job.failed = Some((error, error_type));
            }
            return fal_json(StatusCode::OK, status_body(&state, id, "COMPLETED"));
        }
        _ => {}
    }
    let code = if done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    fal_json(code, status_body(&state, id, status))
}

async fn status_stream(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    record(&state, &req, Op::Stream, None);
    let extra = match apply_fault(&state, Op::Stream).await {
        Err(res) => return res,
        Ok(extra) => extra,
    };
    let id = path.2.clone();
    if job_status(&state, &id).is_none() {
        return fal_json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"detail": "Request not found"}),
        );
    }
    let single = |body: serde_json::Value| {
        HttpResponse::Ok()
            .insert_header(("x-fal-request-id", "fake-request"))
            .content_type("text/event-stream")
            .body(format!("data: {body}\n\n"))
    };
    match extra {
        Some(FaultAction::UnknownStatus) => {
            return single(serde_json::json!({"status": "EXPLODED"}));
        }
        Some(FaultAction::CompletedWithError { error, error_type }) => {
            if let Some(job) = lock(&state.jobs).get_mut(id.as_str()) {
                job.failed = Some((error, error_type));
            }
            return single(status_body(&state, &id, "COMPLETED"));
        }
        _ => {}
    }
    let state = state.into_inner();
    let events = futures_util::stream::unfold(
        (state, id, None::<&'static str>, false),
        |(state, id, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let (status, finished) = job_status(&state, &id)?;
                if Some(status) != last {
                    let body = status_body(&state, &id, status);
                    let chunk = Bytes::from(format!("data: {body}\n\n"));
                    return Some((
                        Ok::<_, std::convert::Infallible>(chunk),
                        (state, id, Some(status), finished),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        },
    );
    HttpResponse::Ok()
        .insert_header(("x-fal-request-id", "fake-request"))
        .content_type("text/event-stream")
        .streaming(events)
}

async fn result(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    record(&state, &req, Op::Result, None);
    let extra = match apply_fault(&state, Op::Result).await {
        Err(res) => return res,
        Ok(extra) => extra,
    };
    let id = &path.2;
    let input = match lock(&state.jobs).get(id.as_str()) {
        Some(job) if job.submitted.elapsed() >= Duration::ZERO => job.input.clone(),
        _ => {
            return fal_json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"detail": "Request not found"}),
            );
        }
    };
    output(&state, &input, extra)
}

async fn run(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let input: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    record(&state, &req, Op::Run, Some(input.clone()));
    let extra = match apply_fault(&state, Op::Run).await {
        Err(res) => return res,
        Ok(extra) => extra,
    };
    let total = {
        let cfg = lock(&state.config);
        cfg.queue_ms + cfg.run_ms
    };
    if total > 0 {
        tokio::time::sleep(Duration::from_millis(total)).await;
    }
    output(&state, &input, extra)
}

/// Imagen's output for an input.
fn output(state: &State, input: &serde_json::Value, fault: Option<FaultAction>) -> HttpResponse {
    let ratio = match input
        .get("aspect_ratio")
        .and_then(|v| v.as_str())
        .unwrap_or("1:1")
    {
        "16:9" => AspectRatio::Landscape16x9,
        "9:16" => AspectRatio::Portrait9x16,
        "4:3" => AspectRatio::Landscape4x3,
        "3:4" => AspectRatio::Portrait3x4,
        _ => AspectRatio::Square,
    };
    let format = match input
        .get("output_format")
        .and_then(|v| v.as_str())
        .unwrap_or("png")
    {
        "jpeg" => OutputFormat::Jpeg,
        "webp" => OutputFormat::Webp,
        _ => OutputFormat::Png,
    };
    let n = input
        .get("num_images")
        .and_then(|v| v.as_u64())
        .unwrap_or(1)
        .clamp(1, 4);
    let sync = input
        .get("sync_mode")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let (cfg_full, noise) = {
        let cfg = lock(&state.config);
        (cfg.full_size_images, cfg.noise)
    };
    let (w, h) = if cfg_full {
        ratio.imagen_dimensions()
    } else {
        let (w, h) = ratio.imagen_dimensions();
        (w / 16, h / 16)
    };
    match fault {
        Some(FaultAction::NoImages) => {
            return fal_json(
                StatusCode::OK,
                serde_json::json!({"images": [], "description": ""}),
            );
        }
        Some(FaultAction::BadDataUri) => {
            return fal_json(
                StatusCode::OK,
                serde_json::json!({"images": [{"url": "data:image/png;base64,@@not-base64@@", "width": w, "height": h}]}),
            );
        }
        _ => {}
    }
    // Answers without a fault are built once per shape: a 2 MB data-URI
    // answer is then a reference count rather than a base64 encode and a JSON
    // serialisation, so a benchmark measures the gateway, not the fake.
    let answer_key = (ratio, format, cfg_full, noise, n as u8, sync);
    if fault.is_none()
        && let Some(body) = lock(&state.answers).get(&answer_key)
    {
        return fal_body(body.clone());
    }
    let port = state.port.load(Ordering::Relaxed);
    let urls_only = matches!(fault, Some(FaultAction::UrlsInsteadOfDataUris));
    let images: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let bytes = image_bytes(ratio, format, cfg_full, noise, i as u8);
            let url = if sync && !urls_only {
                format!(
                    "data:{};base64,{}",
                    format.content_type(),
                    base64::engine::general_purpose::STANDARD.encode(&bytes)
                )
            } else {
                format!(
                    "http://127.0.0.1:{port}/files/{}-{}-{}-{}-{}.{}",
                    ratio.as_str().replace(':', "x"),
                    format.as_str(),
                    u8::from(cfg_full),
                    noise,
                    i,
                    format.as_str()
                )
            };
            serde_json::json!({
                "url": url,
                "content_type": format.content_type(),
                "file_name": format!("{i}.{}", format.as_str()),
                "file_size": bytes.len(),
                "width": w,
                "height": h,
            })
        })
        .collect();
    let mut body = serde_json::json!({"images": images, "description": ""});
    if let Some(FaultAction::Huge { bytes }) = fault {
        body["padding"] = "x".repeat(bytes).into();
    }
    if fault.is_none() {
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        lock(&state.answers).insert(answer_key, body.clone());
        return fal_body(body);
    }
    fal_json(StatusCode::OK, body)
}

/// A 200 with a prebuilt JSON body, as [`fal_json`] would send it.
fn fal_body(body: Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("x-fal-request-id", "fake-request"))
        .content_type("application/json")
        .body(body)
}

async fn file(state: web::Data<State>, req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    record(&state, &req, Op::File, None);
    if let Err(res) = apply_fault(&state, Op::File).await {
        return res;
    }
    // <ratio>-<format>-<full>-<noise>-<index>.<ext>
    let stem = name.split('.').next().unwrap_or("");
    let parts: Vec<&str> = stem.split('-').collect();
    let parsed = (|| {
        let ratio = match *parts.first()? {
            "16x9" => AspectRatio::Landscape16x9,
            "9x16" => AspectRatio::Portrait9x16,
            "4x3" => AspectRatio::Landscape4x3,
            "3x4" => AspectRatio::Portrait3x4,
            "1x1" => AspectRatio::Square,
            _ => return None,
        };
        let format = match *parts.get(1)? {
            "png" => OutputFormat::Png,
            "jpeg" => OutputFormat::Jpeg,
            "webp" => OutputFormat::Webp,
            _ => return None,
        };
        let full = *parts.get(2)? == "1";
        let noise: u8 = parts.get(3)?.parse().ok()?;
        let index: u8 = parts.get(4)?.parse().ok()?;
        Some((ratio, format, full, noise, index))
    })();
    match parsed {
        Some((ratio, format, full, noise, index)) => HttpResponse::Ok()
            .content_type(format.content_type())
            .body(image_bytes(ratio, format, full, noise, index)),
        None => HttpResponse::NotFound().finish(),
    }
}

async fn cancel(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    record(&state, &req, Op::Cancel, None);
    if let Err(res) = apply_fault(&state, Op::Cancel).await {
        return res;
    }
    let id = path.2.clone();
    let finished = job_status(&state, &id).map(|(_, done)| done);
    match finished {
        None => fal_json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"status": "NOT_FOUND"}),
        ),
        Some(true) => fal_json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"status": "ALREADY_COMPLETED"}),
        ),
        Some(false) => {
            if let Some(job) = lock(&state.jobs).get_mut(&id) {
                job.cancelled = true;
            }
            fal_json(
                StatusCode::ACCEPTED,
                serde_json::json!({"status": "CANCELLATION_REQUESTED"}),
            )
        }
    }
}

async fn calls(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(&*lock(&state.calls))
}

async fn counts(state: web::Data<State>) -> HttpResponse {
    let c = &state.counts;
    let jobs = lock(&state.jobs);
    HttpResponse::Ok().json(serde_json::json!({
        "submit": c.submit.load(Ordering::SeqCst),
        "status": c.status.load(Ordering::SeqCst),
        "stream": c.stream.load(Ordering::SeqCst),
        "result": c.result.load(Ordering::SeqCst),
        "cancel": c.cancel.load(Ordering::SeqCst),
        "run": c.run.load(Ordering::SeqCst),
        "file": c.file.load(Ordering::SeqCst),
        "cancelled_jobs": jobs.values().filter(|j| j.cancelled).count(),
    }))
}

async fn add_faults(state: web::Data<State>, faults: web::Json<Vec<Fault>>) -> HttpResponse {
    lock(&state.faults).extend(faults.into_inner());
    HttpResponse::NoContent().finish()
}

async fn set_config(state: web::Data<State>, config: web::Json<FakeConfig>) -> HttpResponse {
    *lock(&state.config) = config.into_inner();
    HttpResponse::NoContent().finish()
}

async fn reset(state: web::Data<State>) -> HttpResponse {
    lock(&state.faults).clear();
    lock(&state.calls).clear();
    lock(&state.jobs).clear();
    let c = &state.counts;
    for op in [
        Op::Submit,
        Op::Status,
        Op::Stream,
        Op::Result,
        Op::Cancel,
        Op::Run,
        Op::File,
    ] {
        c.of(op).store(0, Ordering::SeqCst);
    }
    HttpResponse::NoContent().finish()
}

type ImageKey = (AspectRatio, OutputFormat, bool, u8, u8);

/// Encoded images, rendered once per process and shape.
fn image_bytes(
    ratio: AspectRatio,
    format: OutputFormat,
    full: bool,
    noise: u8,
    index: u8,
) -> Bytes {
    static CACHE: OnceLock<Mutex<HashMap<ImageKey, Bytes>>> = OnceLock::new();
    let key = (ratio, format, full, noise, index % 4);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(b) = lock(cache).get(&key) {
        return b.clone();
    }
    let (mut w, mut h) = ratio.imagen_dimensions();
    if !full {
        w /= 16;
        h /= 16;
    }
    let mut img = crate::backend::local::render("fake fal", None, key.4, w, h);
    if noise > 0 {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for p in img.pixels_mut() {
            for c in p.0.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *c = c.wrapping_add((x % u64::from(noise)) as u8);
            }
        }
    }
    let bytes = crate::backend::local::encode(&img, format).unwrap_or_default();
    lock(cache).insert(key, bytes.clone());
    bytes
}
