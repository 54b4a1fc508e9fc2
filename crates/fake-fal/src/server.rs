//! fal's HTTP surface as the fake serves it: the queue (submit, status,
//! status stream, result, cancel), the synchronous host (`/run/...`) and the
//! files that non-sync answers link to. Every handler counts and records its
//! call, then applies the next injected fault for its operation, if any.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use crate::control::{FaultAction, Op};
use crate::endpoints::{EndpointMode, refusal};
use crate::models::{Schema, describes, flags_nsfw, parse, schema_of};
use crate::render::image_bytes;
use crate::state::{Failure, Job, State, lock};
use crate::wire::{
    ALREADY_COMPLETED, CANCELLATION_REQUESTED, ImageFile, ModelInput, ModelOutput, NOT_FOUND,
    OutputFormat, QueueStatus, RunMetrics, StatusAnswer, SubmitAnswer, error_type_status,
};

/// Namespaces whose endpoint ids carry one more segment in front of
/// `owner/alias` (`workflows/<owner>/<alias>/...`).
const NAMESPACES: [&str; 2] = ["workflows", "comfy"];

/// fal's routes. Request routes are served under `<owner>/<alias>` and
/// under one more leading segment (a namespace, or an advertised base's
/// path). The submit route catches every other POST, so it goes last.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/files/{name}", web::get().to(file))
        .route("/run/{tail:.*}", web::post().to(run));
    for app in ["/{owner}/{alias}", "/{ns}/{owner}/{alias}"] {
        cfg.route(
            &format!("{app}/requests/{{id}}/status/stream"),
            web::get().to(status_stream),
        )
        .route(
            &format!("{app}/requests/{{id}}/status"),
            web::get().to(status),
        )
        .route(
            &format!("{app}/requests/{{id}}/cancel"),
            web::put().to(cancel),
        )
        .route(&format!("{app}/requests/{{id}}"), web::get().to(result));
    }
    cfg.route("/{tail:.*}", web::post().to(submit));
}

/// A new `x-fal-request-id`: fal's servers send a unique one with every answer.
fn fal_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "fake-{}-{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `{id}` of a request route.
fn request_id(req: &HttpRequest) -> String {
    req.match_info().get("id").unwrap_or_default().to_owned()
}

/// Apply a fault that replaces the answer (as `Err`); `Ok(Some(action))`
/// hands back the faults the handler itself must act on.
async fn apply_fault(state: &State, op: Op) -> Result<Option<FaultAction>, HttpResponse> {
    match state.take_fault(op) {
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
        Some(FaultAction::Stall) if op != Op::Stream => {
            std::future::pending::<()>().await;
            Ok(None)
        }
        Some(FaultAction::MalformedJson) => Err(HttpResponse::Ok()
            .content_type("application/json")
            .insert_header(("x-fal-request-id", fal_id()))
            .body("{\"status\": \"COMPL")),
        Some(other) => Ok(Some(other)),
    }
}

/// A JSON answer from fal's servers (they send `x-fal-request-id`).
fn fal_json(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("x-fal-request-id", fal_id()))
        .json(body)
}

/// A 200 with a prebuilt JSON body, as [`fal_json`] would send it.
fn fal_body(body: Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("x-fal-request-id", fal_id()))
        .content_type("application/json")
        .body(body)
}

fn request_not_found() -> HttpResponse {
    fal_json(
        StatusCode::NOT_FOUND,
        &json!({"detail": "Request not found"}),
    )
}

/// A request body as JSON, `null` when it is not.
fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// `POST /<endpoint id>`: queue a job.
async fn submit(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let body = body_json(&body);
    state.record(&req, Op::Submit, Some(body.clone()));
    if let Err(res) = apply_fault(&state, Op::Submit).await {
        return res;
    }
    let path = req.path().trim_start_matches('/');
    let mut parts: Vec<&str> = path.split('/').collect();
    let namespace = if parts.len() > 2 && NAMESPACES.contains(&parts[0]) {
        Some(parts.remove(0))
    } else {
        None
    };
    let (Some(owner), Some(alias)) = (parts.first(), parts.get(1)) else {
        return fal_json(StatusCode::NOT_FOUND, &json!({"detail": "no such app"}));
    };
    let app = match namespace {
        Some(ns) => format!("{ns}/{owner}/{alias}"),
        None => format!("{owner}/{alias}"),
    };
    let endpoint = parts.join("/");
    let (schema, queue_ms) = match accepting(&state, &endpoint, alias) {
        Ok(accepted) => accepted,
        Err(refused) => return *refused,
    };
    // fal's start timeout: seconds, more than 1.
    let start_timeout = req
        .headers()
        .get("x-fal-request-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 1.0)
        .map(Duration::from_secs_f64);
    let input = match parse(schema, &body) {
        Ok(input) => input,
        Err(rejection) => return fal_json(StatusCode::UNPROCESSABLE_ENTITY, &rejection),
    };
    let id = format!(
        "{:08x}-fake-{}",
        state.next_id.fetch_add(1, Ordering::SeqCst),
        std::process::id()
    );
    let mut advertised = lock(&state.config).advertised_base.clone();
    if advertised.is_empty() {
        advertised = format!("http://127.0.0.1:{}", state.port.load(Ordering::Relaxed));
    }
    lock(&state.jobs).insert(
        id.clone(),
        Job {
            input,
            schema,
            queue_ms,
            submitted: std::time::Instant::now(),
            cancelled: false,
            failed: None,
            start_timeout,
        },
    );
    let base = format!("{advertised}/{app}/requests/{id}");
    fal_json(
        StatusCode::OK,
        &SubmitAnswer {
            request_id: id,
            status: QueueStatus::InQueue,
            queue_position: 0,
            status_url: format!("{base}/status"),
            response_url: base.clone(),
            cancel_url: format!("{base}/cancel"),
        },
    )
}

/// The status answer for job `id` in `status`.
fn status_answer(state: &State, id: &str, status: QueueStatus) -> StatusAnswer {
    let mut answer = StatusAnswer {
        status,
        request_id: id.to_owned(),
        queue_position: None,
        logs: None,
        metrics: None,
        error: None,
        error_type: None,
    };
    match status {
        QueueStatus::InQueue => answer.queue_position = Some(0),
        QueueStatus::InProgress => answer.logs = Some(Vec::new()),
        QueueStatus::Completed => {
            answer.logs = Some(Vec::new());
            answer.metrics = Some(RunMetrics {
                inference_time: 0.01,
            });
            if let Some(job) = lock(&state.jobs).get(id) {
                if job.cancelled {
                    answer.error = Some("Request was cancelled".into());
                    answer.error_type = Some("client_cancelled".into());
                } else if let Some(failure) = &job.failed {
                    answer.error = Some(failure.error.clone());
                    answer.error_type = Some(failure.error_type.clone());
                }
            }
        }
    }
    answer
}

/// The answer a status fault puts in place of the real one, if any: an
/// undocumented status value, or COMPLETED with an error.
fn status_fault(state: &State, id: &str, fault: Option<FaultAction>) -> Option<Value> {
    match fault? {
        FaultAction::UnknownStatus => Some(json!({"status": "EXPLODED"})),
        FaultAction::CompletedWithError {
            error,
            error_type,
            result_status,
            result_body,
        } => {
            let derived = result_status.is_none();
            let failure = Failure {
                result_status: result_status.unwrap_or_else(|| error_type_status(&error_type)),
                result_headers: if derived {
                    vec![("x-fal-error-type", error_type.clone())]
                } else {
                    Vec::new()
                },
                result_body: result_body.unwrap_or_else(|| {
                    json!({"detail": error, "error_type": error_type}).to_string()
                }),
                error,
                error_type,
            };
            if let Some(job) = lock(&state.jobs).get_mut(id) {
                job.failed = Some(failure);
            }
            state.changed();
            serde_json::to_value(status_answer(state, id, QueueStatus::Completed)).ok()
        }
        _ => None,
    }
}

/// `GET .../requests/<id>/status`: 202 while queued or running, 200 done.
async fn status(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
    state.record(&req, Op::Status, None);
    let id = &request_id(&req);
    let fault = match apply_fault(&state, Op::Status).await {
        Err(res) => return res,
        Ok(fault) => fault,
    };
    let Some((status, done)) = state.job_status(id) else {
        return request_not_found();
    };
    if let Some(body) = status_fault(&state, id, fault) {
        return fal_json(StatusCode::OK, &body);
    }
    let code = if done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    fal_json(code, &status_answer(&state, id, status))
}

/// One server-sent event carrying `body`.
fn event(body: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(body).unwrap_or_default();
    Bytes::from(format!("data: {json}\n\n"))
}

fn event_stream() -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::Ok();
    res.insert_header(("x-fal-request-id", fal_id()))
        .content_type("text/event-stream");
    res
}

/// `GET .../requests/<id>/status/stream`: an event per status change, a
/// `: keep-alive` comment every `stream_keepalive_ms` without one, closed
/// after COMPLETED.
async fn status_stream(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
    state.record(&req, Op::Stream, None);
    let fault = match apply_fault(&state, Op::Stream).await {
        Err(res) => return res,
        Ok(fault) => fault,
    };
    let id = request_id(&req);
    if state.job_status(&id).is_none() {
        return request_not_found();
    }
    if matches!(fault, Some(FaultAction::Stall)) {
        let silent = futures_util::stream::pending::<Result<Bytes, Infallible>>();
        return event_stream().streaming(silent);
    }
    if let Some(body) = status_fault(&state, &id, fault) {
        return event_stream().body(event(&body));
    }
    let keepalive = Duration::from_millis(lock(&state.config).stream_keepalive_ms.max(1));
    let state = state.into_inner();
    let events = futures_util::stream::unfold(
        (state, id, None::<QueueStatus>, false),
        move |(state, id, last, done)| async move {
            if done {
                return None;
            }
            let quiet_since = std::time::Instant::now();
            loop {
                let emit = {
                    // Registered before the status is read, so a change
                    // made after the read still wakes this stream.
                    let mut changed = std::pin::pin!(state.changed.notified());
                    changed.as_mut().enable();
                    let (status, finished, next) = state.job_status_next(&id)?;
                    let quiet = quiet_since.elapsed();
                    if Some(status) != last {
                        let chunk = event(&status_answer(&state, &id, status));
                        Some((chunk, Some(status), finished))
                    } else if quiet >= keepalive {
                        Some((Bytes::from_static(b": keep-alive\n\n"), last, false))
                    } else {
                        // Sleep until the clock changes the status, the next
                        // keep-alive or a change by a call (cancel, fault,
                        // reset, config): no polling keeps thousands of
                        // streams cheap.
                        let mut wait = keepalive - quiet;
                        if let Some(next) = next {
                            wait = wait.min(next.max(Duration::from_millis(1)));
                        }
                        let sleep = std::pin::pin!(tokio::time::sleep(wait));
                        futures_util::future::select(changed, sleep).await;
                        None
                    }
                };
                if let Some((chunk, last, finished)) = emit {
                    return Some((Ok::<_, Infallible>(chunk), (state, id, last, finished)));
                }
            }
        },
    );
    event_stream().streaming(events)
}

/// `GET .../requests/<id>`: the model output (whether or not the job is
/// done yet); for a failed job the model's error, for a cancelled one
/// fal's `client_cancelled` 499.
async fn result(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
    state.record(&req, Op::Result, None);
    let fault = match apply_fault(&state, Op::Result).await {
        Err(res) => return res,
        Ok(fault) => fault,
    };
    let id = request_id(&req);
    // Fails a job whose start timeout passed.
    let _ = state.job_status(&id);
    let (input, schema, failure, cancelled) = match lock(&state.jobs).get(id.as_str()) {
        Some(job) => (
            job.input.clone(),
            job.schema,
            job.failed.clone(),
            job.cancelled,
        ),
        None => return request_not_found(),
    };
    if cancelled {
        return HttpResponse::build(StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST))
            .insert_header(("x-fal-request-id", fal_id()))
            .insert_header(("x-fal-error-type", "client_cancelled"))
            .json(json!({"detail": "Request was cancelled", "error_type": "client_cancelled"}));
    }
    if let Some(failure) = failure {
        let mut res = HttpResponse::build(
            StatusCode::from_u16(failure.result_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        );
        res.insert_header(("x-fal-request-id", fal_id()))
            .content_type("application/json");
        for (k, v) in failure.result_headers {
            res.insert_header((k, v));
        }
        return res.body(failure.result_body);
    }
    billed(&state, &input, output(&state, schema, &input, fault))
}

/// The schema of `endpoint` and how long its jobs stay queued (when it is
/// slow), or the answer a submit to it gets instead (unknown: fal's 404;
/// gone, failing or full by its mode).
fn accepting(
    state: &State,
    endpoint: &str,
    alias: &str,
) -> Result<(Schema, Option<u64>), Box<HttpResponse>> {
    let mode = state.endpoint_mode(endpoint);
    if let Some(refused) = refusal(&mode, alias) {
        return Err(Box::new(refused));
    }
    let Some(schema) = schema_of(endpoint) else {
        return Err(Box::new(fal_json(
            StatusCode::NOT_FOUND,
            &json!({"detail": format!("Application '{alias}' not found")}),
        )));
    };
    let queue_ms = match mode {
        EndpointMode::Slow { queue_ms } => Some(queue_ms),
        _ => None,
    };
    Ok((schema, queue_ms))
}

/// `POST /run/<endpoint id>`: the synchronous host; waits the job's whole
/// queue and run time, then answers the output.
async fn run(state: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let body = body_json(&body);
    state.record(&req, Op::Run, Some(body.clone()));
    let fault = match apply_fault(&state, Op::Run).await {
        Err(res) => return res,
        Ok(fault) => fault,
    };
    let path = req
        .path()
        .trim_start_matches("/run/")
        .trim_start_matches('/');
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 2 && NAMESPACES.contains(&parts[0]) {
        parts.remove(0);
    }
    let endpoint = parts.join("/");
    let (schema, queue_ms) = match accepting(&state, &endpoint, parts.get(1).unwrap_or(&"")) {
        Ok(accepted) => accepted,
        Err(refused) => return *refused,
    };
    let input = match parse(schema, &body) {
        Ok(input) => input,
        Err(rejection) => return fal_json(StatusCode::UNPROCESSABLE_ENTITY, &rejection),
    };
    let total = {
        let cfg = lock(&state.config);
        queue_ms.unwrap_or(cfg.queue_ms) + cfg.run_ms
    };
    if total > 0 {
        tokio::time::sleep(Duration::from_millis(total)).await;
    }
    billed(&state, &input, output(&state, schema, &input, fault))
}

/// The file name an image is served under:
/// `<width>x<height>-<format>-<full size 0|1>-<noise>-<index>.<format>`.
fn file_name(size: (u32, u32), format: OutputFormat, full: bool, noise: u8, i: u8) -> String {
    let ext = format.as_str();
    format!(
        "{}x{}-{ext}-{}-{noise}-{i}.{ext}",
        size.0,
        size.1,
        u8::from(full)
    )
}

/// What [`file_name`] encodes: (size, format, full size, noise, index).
type FileShape = ((u32, u32), OutputFormat, bool, u8, u8);

/// What [`file_name`] encodes.
fn parse_file_name(name: &str) -> Option<FileShape> {
    let stem = name.split('.').next()?;
    let mut parts = stem.split('-');
    let (w, h) = parts.next()?.split_once('x')?;
    let size = (w.parse().ok()?, h.parse().ok()?);
    let format = OutputFormat::parse(parts.next()?)?;
    let full = parts.next()? == "1";
    let noise = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    Some((size, format, full, noise, index))
}

/// The picture size: the model's, or 1/16 of each side for fast tests.
fn dimensions(size: (u32, u32), full: bool) -> (u32, u32) {
    if full {
        size
    } else {
        ((size.0 / 16).max(1), (size.1 / 16).max(1))
    }
}

/// A successful output answer carries `X-Fal-Billable-Units`, as fal's do.
fn billed(state: &State, input: &ModelInput, mut res: HttpResponse) -> HttpResponse {
    let per_image = lock(&state.config).billable_units_per_image;
    if res.status().is_success() && per_image >= 0.0 {
        let units = per_image * f64::from(input.num_images);
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&units.to_string()) {
            res.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("x-fal-billable-units"),
                v,
            );
        }
    }
    res
}

/// The model's output for an input, shaped by a result fault if any.
fn output(
    state: &State,
    schema: Schema,
    input: &ModelInput,
    fault: Option<FaultAction>,
) -> HttpResponse {
    let format = input.output_format;
    let size = (input.width, input.height);
    let (full, noise) = {
        let cfg = lock(&state.config);
        (cfg.full_size_images, cfg.noise)
    };
    let (w, h) = dimensions(size, full);
    let shaped = |images: Vec<ImageFile>| ModelOutput {
        has_nsfw_concepts: flags_nsfw(schema).then(|| vec![false; images.len()]),
        images,
        description: describes(schema).then(String::new),
        seed: input.output_seed,
    };
    match fault {
        Some(FaultAction::NoImages) => {
            return fal_json(StatusCode::OK, &shaped(Vec::new()));
        }
        Some(FaultAction::BadDataUri) => {
            let url = "data:image/png;base64,@@not-base64@@";
            let body = json!({"images": [{"url": url, "width": w, "height": h}]});
            return fal_json(StatusCode::OK, &body);
        }
        _ => {}
    }
    // Answers without a fault are built once per shape: a 2 MB data-URI
    // answer is then a reference count rather than a base64 encode and a JSON
    // serialisation, so a benchmark measures the gateway, not the fake.
    let key = (
        schema,
        size.0,
        size.1,
        format,
        full,
        noise,
        input.num_images,
        input.sync_mode,
        input.output_seed,
    );
    if fault.is_none()
        && let Some(body) = lock(&state.answers).get(&key)
    {
        return fal_body(body.clone());
    }
    let port = state.port.load(Ordering::Relaxed);
    let data_uris = input.sync_mode && !matches!(fault, Some(FaultAction::UrlsInsteadOfDataUris));
    let mut images = Vec::with_capacity(usize::from(input.num_images));
    for i in 0..input.num_images {
        let Ok(bytes) = image_bytes(w, h, format, noise, i) else {
            return HttpResponse::InternalServerError().finish();
        };
        let url = if data_uris {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            format!("data:{};base64,{b64}", format.content_type())
        } else {
            let name = file_name(size, format, full, noise, i);
            format!("http://127.0.0.1:{port}/files/{name}")
        };
        images.push(ImageFile {
            url,
            content_type: format.content_type(),
            file_name: format!("{i}.{}", format.as_str()),
            file_size: bytes.len(),
            width: w,
            height: h,
        });
    }
    let output = shaped(images);
    match fault {
        None => {
            let Ok(body) = serde_json::to_vec(&output) else {
                return HttpResponse::InternalServerError().finish();
            };
            let body = Bytes::from(body);
            lock(&state.answers).insert(key, body.clone());
            fal_body(body)
        }
        Some(FaultAction::Huge { bytes }) => {
            let mut body = serde_json::to_value(&output).unwrap_or_default();
            body["padding"] = "x".repeat(bytes).into();
            fal_json(StatusCode::OK, &body)
        }
        Some(_) => fal_json(StatusCode::OK, &output),
    }
}

/// `GET /files/<name>`: an image a non-sync answer links to.
async fn file(state: web::Data<State>, req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    state.record(&req, Op::File, None);
    if let Err(res) = apply_fault(&state, Op::File).await {
        return res;
    }
    let Some((size, format, full, noise, index)) = parse_file_name(&name) else {
        return HttpResponse::NotFound().finish();
    };
    let (w, h) = dimensions(size, full);
    match image_bytes(w, h, format, noise, index) {
        Ok(bytes) => HttpResponse::Ok()
            .content_type(format.content_type())
            .body(bytes),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

/// `PUT .../requests/<id>/cancel`: 202 while the job is unfinished, 400
/// once done, 404 for an unknown id.
async fn cancel(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
    state.record(&req, Op::Cancel, None);
    if let Err(res) = apply_fault(&state, Op::Cancel).await {
        return res;
    }
    let id = &request_id(&req);
    let (code, answer) = match state.job_status(id).map(|(_, done)| done) {
        None => (StatusCode::NOT_FOUND, NOT_FOUND),
        Some(true) => (StatusCode::BAD_REQUEST, ALREADY_COMPLETED),
        Some(false) => {
            if let Some(job) = lock(&state.jobs).get_mut(id.as_str()) {
                job.cancelled = true;
            }
            state.changed();
            (StatusCode::ACCEPTED, CANCELLATION_REQUESTED)
        }
    };
    fal_json(code, &json!({"status": answer}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        for (size, format, full, noise, i) in [
            ((896, 1280), OutputFormat::Png, true, 0, 0),
            ((1024, 1536), OutputFormat::Jpeg, false, 24, 3),
        ] {
            let name = file_name(size, format, full, noise, i);
            assert_eq!(parse_file_name(&name), Some((size, format, full, noise, i)));
        }
        assert_eq!(
            file_name((896, 1280), OutputFormat::Png, true, 0, 0),
            "896x1280-png-1-0-0.png"
        );
        assert_eq!(parse_file_name("2x-png-1-0-0.png"), None);
        assert_eq!(parse_file_name("1x1-gif-1-0-0.gif"), None);
    }
}
