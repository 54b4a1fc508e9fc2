//! The headers fal reads and sends beside a job's JSON: its per-request
//! controls, the invoice tag naming the key that pays, and the billable
//! units it reports back.

use reqwest::header::{HeaderMap, HeaderValue};

use crate::backend::JobContext;
use crate::config::{FalSettings, QueuePriority};

/// fal's per-request controls (PROTOCOLS.md section B, "Request headers
/// fal understands"), as the settings ask for them.
pub(super) fn controls(settings: &FalSettings) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    if settings.disable_fallback {
        h.insert(
            "x-app-fal-disable-fallback",
            HeaderValue::from_static("true"),
        );
    }
    if !settings.store_io {
        h.insert("x-fal-store-io", HeaderValue::from_static("0"));
    }
    if settings.object_expiration_seconds > 0 {
        let value = format!(
            r#"{{"expiration_duration_seconds":{}}}"#,
            settings.object_expiration_seconds
        );
        h.insert(
            "x-fal-object-lifecycle-preference",
            HeaderValue::from_str(&value).map_err(|e| e.to_string())?,
        );
    }
    if settings.queue_priority == QueuePriority::Low {
        h.insert("x-fal-queue-priority", HeaderValue::from_static("low"));
    }
    Ok(h)
}

/// The tag key under which fal's usage and billing reports show the
/// gateway's key.
const TAG_KEY: &str = "gateway_key";

/// `X-Fal-Tags: gateway_key=<account>` for the job's payer: its key's id,
/// never the secret, within fal's limits (a value of at most 256
/// characters; only `[A-Za-z0-9._-]` here, so no `,` or `=` can break the
/// list). `None` without a key.
pub(super) fn fal_tags(ctx: &JobContext) -> Option<HeaderValue> {
    let account = ctx.account.as_deref()?;
    let fits = !account.is_empty()
        && account.len() <= 256
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    fits.then(|| HeaderValue::from_str(&format!("{TAG_KEY}={account}")).ok())
        .flatten()
}

/// fal's `X-Fal-Billable-Units` (the units the request is billed for), when
/// it sent a sensible one.
pub(super) fn billable_units(headers: &HeaderMap) -> Option<f64> {
    headers
        .get("x-fal-billable-units")?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|u| u.is_finite() && *u >= 0.0)
}
