//! Where a queued job lives: its status, result and cancel URLs, taken from
//! fal's submit answer when they point at a configured fal origin (the
//! `Authorization: Key` header never goes anywhere else) and built from
//! `queue_url` otherwise.

use super::Shared;
use super::errors::protocol;
use super::fallback::classify;
use super::transport::{Answer, Operation};
use super::wire::{Submitted, app_path};
use crate::domain::Job;
use crate::error::ApiError;

/// Where a queued job's status, result and cancel live.
#[derive(Clone, Debug)]
pub(super) struct JobUrls {
    pub(super) id: String,
    pub(super) status: String,
    pub(super) response: String,
    pub(super) cancel: String,
}

impl Shared {
    /// The job's URLs from a submit answer.
    pub(super) fn job_urls(&self, job: &Job, answer: &Answer) -> Result<JobUrls, ApiError> {
        if !answer.status.is_success() {
            return Err(classify(Operation::Submit, answer));
        }
        let submitted: Submitted = serde_json::from_slice(&answer.body)
            .map_err(|_| protocol("a submit answer without request_id"))?;
        let id = submitted.request_id;
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(protocol("a malformed request_id"));
        }
        let built = format!(
            "{}/{}/requests/{id}",
            self.queue_url,
            app_path(job.endpoint.full())
        );
        let pick = |given: Option<String>, fallback: String| match given {
            Some(url) if self.on_queue_origin(&url) => url,
            Some(_) => {
                tracing::warn!(
                    fal_request_id = id.as_str(),
                    "fal's submit answer points outside the configured fal hosts; building the URL instead"
                );
                fallback
            }
            None => fallback,
        };
        Ok(JobUrls {
            status: pick(submitted.status_url, format!("{built}/status")),
            cancel: pick(submitted.cancel_url, format!("{built}/cancel")),
            response: pick(submitted.response_url, built),
            id,
        })
    }

    /// Whether `url` is on the origin of `queue_url` or its backup.
    fn on_queue_origin(&self, url: &str) -> bool {
        on_origin(url, &self.queue_origins)
    }
}

/// Whether `url` is written as one of `origins` (each an http(s) origin as
/// the URL standard serializes it: `scheme://host[:port]`, lowercase, no
/// default port) followed by a path, without query or fragment. A string
/// check, not a parse (three URLs a miss, each parsed again by the HTTP
/// client): whatever follows the origin must start the path, so the host
/// cannot continue (`queue.fal.run.evil.example`), take a port or hide
/// behind userinfo (`queue.fal.run@evil.example`). A URL written another
/// way to the same origin (upper case, `:443`) is refused too, which only
/// means the gateway builds that URL itself.
fn on_origin(url: &str, origins: &[String]) -> bool {
    !url.contains(['?', '#'])
        && origins.iter().any(|origin| {
            (origin.starts_with("https://") || origin.starts_with("http://"))
                && url
                    .strip_prefix(origin.as_str())
                    .is_some_and(|path| path.starts_with('/'))
        })
}

#[cfg(test)]
mod tests {
    use super::on_origin;

    #[test]
    fn only_urls_on_a_configured_origin_are_taken_from_fal() {
        let origins = vec![
            "https://queue.fal.run".to_owned(),
            "http://127.0.0.1:18999".to_owned(),
        ];
        for taken in [
            "https://queue.fal.run/fal-ai/imagen4/preview/requests/abc/status",
            "https://queue.fal.run/fal-ai/imagen4/preview/requests/abc",
            "http://127.0.0.1:18999/fal-ai/x/requests/1/cancel",
        ] {
            assert!(on_origin(taken, &origins), "{taken}");
        }
        for refused in [
            "https://queue.fal.run.evil.example/requests/abc",
            "https://queue.fal.run@evil.example/requests/abc",
            "https://queue.fal.run:8443/requests/abc",
            "https://queue.fal.run",
            "http://queue.fal.run/requests/abc",
            "https://evil.example/https://queue.fal.run/requests/abc",
            "https://queue.fal.run/requests/abc?x=1",
            "https://queue.fal.run/requests/abc#x",
            "http://127.0.0.1:1899/fal-ai/x/requests/1",
            "http://127.0.0.1:189990/fal-ai/x/requests/1",
            " https://queue.fal.run/requests/abc",
            "HTTPS://QUEUE.FAL.RUN/requests/abc",
            "",
        ] {
            assert!(!on_origin(refused, &origins), "{refused}");
        }
        // An origin that did not parse (serialized as "" or "null") never
        // admits anything.
        for bad in ["", "null"] {
            assert!(!on_origin("https://queue.fal.run/x", &[bad.to_owned()]));
            assert!(!on_origin("/x", &[bad.to_owned()]));
        }
    }
}
