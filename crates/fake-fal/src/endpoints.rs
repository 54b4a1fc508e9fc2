//! Per-endpoint behaviour a test can set: an endpoint that is gone (404 as
//! for an application that does not exist, or 410 `EndpointDeprecated` as
//! fal answers for one turned off), failing (fal's own 5xx), out of capacity
//! (429), or slow to start (its jobs stay queued). Set with
//! [`crate::FakeFal::set_endpoint`] or `POST /_fake/endpoints`
//! (`{"<endpoint id>": {"mode": "gone_410"}, ...}`); `POST /_fake/reset`
//! clears them.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::{State, lock};

/// How an endpoint behaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum EndpointMode {
    /// As its schema says.
    Normal,
    /// 404 `{"detail": "Application '<alias>' not found"}` to every submit.
    #[serde(rename = "gone_404")]
    Gone404,
    /// 410 `{"detail": {"error": "EndpointDeprecated", ...}}` to every submit.
    #[serde(rename = "gone_410")]
    Gone410,
    /// fal's own failure to every submit: `status` (default 503) with
    /// `error_type` (default `runner_scheduling_failure`) in the body and
    /// `X-Fal-Error-Type`, and an `x-fal-request-id` (so not the ingress).
    Failing {
        #[serde(default = "service_unavailable")]
        status: u16,
        #[serde(default = "scheduling_failure")]
        error_type: String,
    },
    /// 429 to every submit (a queue full for `fal_max_queue_length`).
    Capacity,
    /// Jobs stay queued this long before they run (a start timeout the
    /// gateway sends passes first if shorter).
    Slow { queue_ms: u64 },
}

fn service_unavailable() -> u16 {
    503
}

fn scheduling_failure() -> String {
    "runner_scheduling_failure".into()
}

impl State {
    pub(crate) fn endpoint_mode(&self, endpoint: &str) -> EndpointMode {
        lock(&self.endpoints)
            .get(endpoint)
            .cloned()
            .unwrap_or(EndpointMode::Normal)
    }
}

/// The answer a submit to `endpoint` gets instead of a job, if its mode
/// says so; `alias` is the application name fal's 404 quotes.
pub(crate) fn refusal(mode: &EndpointMode, alias: &str) -> Option<HttpResponse> {
    let fal = |status: StatusCode| {
        let mut res = HttpResponse::build(status);
        res.insert_header(("x-fal-request-id", "fake-refusal"));
        res
    };
    Some(match mode {
        EndpointMode::Normal | EndpointMode::Slow { .. } => return None,
        EndpointMode::Gone404 => fal(StatusCode::NOT_FOUND)
            .json(json!({"detail": format!("Application '{alias}' not found")})),
        EndpointMode::Gone410 => fal(StatusCode::GONE).json(json!({"detail": {
            "error": "EndpointDeprecated",
            "message": "This endpoint is no longer supported. Please use the updated endpoint: fal-ai/nano-banana-2",
        }})),
        EndpointMode::Failing { status, error_type } => {
            fal(StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
                .insert_header(("x-fal-error-type", error_type.as_str()))
                .json(json!({"detail": "The request could not be processed", "error_type": error_type}))
        }
        EndpointMode::Capacity => fal(StatusCode::TOO_MANY_REQUESTS)
            .json(json!({"detail": "Queue is full for this application"})),
    })
}

/// `POST /_fake/endpoints` with `{"<endpoint id>": <mode>}`.
pub(crate) async fn set(
    state: web::Data<State>,
    modes: web::Json<HashMap<String, EndpointMode>>,
) -> HttpResponse {
    lock(&state.endpoints).extend(modes.into_inner());
    HttpResponse::NoContent().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_from_json_with_fal_like_defaults() {
        let modes: HashMap<String, EndpointMode> = serde_json::from_str(
            r#"{"a/b": {"mode": "gone_410"}, "c/d": {"mode": "failing"}, "e/f": {"mode": "slow", "queue_ms": 5}}"#,
        )
        .unwrap();
        assert_eq!(modes["a/b"], EndpointMode::Gone410);
        assert_eq!(
            modes["c/d"],
            EndpointMode::Failing {
                status: 503,
                error_type: "runner_scheduling_failure".into()
            }
        );
        assert_eq!(modes["e/f"], EndpointMode::Slow { queue_ms: 5 });
        assert!(refusal(&EndpointMode::Normal, "x").is_none());
        assert_eq!(refusal(&EndpointMode::Gone410, "x").unwrap().status(), 410);
        assert_eq!(refusal(&EndpointMode::Gone404, "x").unwrap().status(), 404);
        assert_eq!(refusal(&EndpointMode::Capacity, "x").unwrap().status(), 429);
    }
}
