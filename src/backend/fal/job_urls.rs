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

    /// Whether `url` is an http(s) URL without query or fragment on the
    /// origin of `queue_url` or its backup.
    fn on_queue_origin(&self, url: &str) -> bool {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return false;
        };
        matches!(parsed.scheme(), "http" | "https")
            && parsed.query().is_none()
            && parsed.fragment().is_none()
            && self
                .queue_origins
                .contains(&parsed.origin().ascii_serialization())
    }
}
