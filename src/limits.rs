//! Per-client-key rate limits: requests per minute and images per minute,
//! as token buckets (governor's GCRA), answered like OpenAI with 429
//! `rate_limit_exceeded` and the `x-ratelimit-*` headers. Off unless
//! configured. Without client keys, the caller's IP address is the key.
//! A database key may carry its own limits, which replace the configured
//! ones for it (0: unlimited).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::error::{ApiError, RateLimitHeaders};
use crate::metrics::{Metrics, RateLimit};

type Limiter = RateLimiter<
    [u8; 32],
    DefaultKeyedStateStore<[u8; 32]>,
    DefaultClock,
    StateInformationMiddleware,
>;

struct Bucket {
    kind: RateLimit,
    per_minute: u32,
    limiter: Limiter,
}

/// How often stale keys are dropped from the buckets (in checks).
const PRUNE_EVERY: u64 = 4096;

pub struct KeyLimits {
    requests: Option<Bucket>,
    images: Option<Bucket>,
    checks: AtomicU64,
    /// Buckets of keys with limits of their own, by (key, kind).
    own: Mutex<OwnBuckets>,
}

/// Buckets of keys with limits of their own, by key and limit kind.
type OwnBuckets = HashMap<([u8; 32], &'static str), Arc<Bucket>>;

/// A key's own limits: requests and images per minute; `None` for the
/// configured limit, `Some(0)` for none.
pub type OwnLimits = (Option<u32>, Option<u32>);

impl Bucket {
    fn new(kind: RateLimit, per_minute: u32) -> Option<Self> {
        let n = NonZeroU32::new(per_minute)?;
        Some(Self {
            kind,
            per_minute,
            limiter: RateLimiter::dashmap(Quota::per_minute(n))
                .with_middleware::<StateInformationMiddleware>(),
        })
    }

    /// Take `cost` tokens; the headers to send either way.
    fn take(&self, key: &[u8; 32], cost: u32) -> Result<RateLimitHeaders, ApiError> {
        let seconds_per_token = 60.0 / f64::from(self.per_minute);
        let Some(n) = NonZeroU32::new(cost) else {
            return Ok(self.headers(self.per_minute, 0.0));
        };
        match self.limiter.check_key_n(key, n) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = f64::from(self.per_minute - remaining) * seconds_per_token;
                Ok(self.headers(remaining, refill))
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(ApiError::RateLimited {
                    retry_after_seconds: wait.as_secs_f64().ceil() as u64,
                    limit: self.headers(0, wait.as_secs_f64()),
                })
            }
            Err(_) => Err(ApiError::invalid(
                format!(
                    "'n' is {cost}, more than this API key may generate per minute ({}).",
                    self.per_minute
                ),
                "n",
            )),
        }
    }

    fn headers(&self, remaining: u32, reset_seconds: f64) -> RateLimitHeaders {
        RateLimitHeaders {
            kind: self.kind.as_str(),
            limit: self.per_minute,
            remaining,
            reset_seconds,
        }
    }
}

impl KeyLimits {
    pub fn new(requests_per_minute: u32, images_per_minute: u32) -> Self {
        Self {
            requests: Bucket::new(RateLimit::Requests, requests_per_minute),
            images: Bucket::new(RateLimit::Images, images_per_minute),
            checks: AtomicU64::new(0),
            own: Mutex::new(HashMap::new()),
        }
    }

    /// The bucket of a key with a limit of its own (`None` when that limit
    /// is 0: unlimited), made anew when the limit changed.
    fn own_bucket(&self, key: &[u8; 32], kind: RateLimit, per_minute: u32) -> Option<Arc<Bucket>> {
        let mut own = self.own.lock().unwrap_or_else(PoisonError::into_inner);
        if per_minute == 0 {
            own.remove(&(*key, kind.as_str()));
            return None;
        }
        match own.get(&(*key, kind.as_str())) {
            Some(b) if b.per_minute == per_minute => Some(b.clone()),
            _ => {
                let fresh = Arc::new(Bucket::new(kind, per_minute)?);
                own.insert((*key, kind.as_str()), fresh.clone());
                Some(fresh)
            }
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.requests.is_some() || self.images.is_some()
    }

    /// Charge one request of `images` images to `key`. On success, the
    /// `x-ratelimit-*` headers to attach to the answer.
    pub fn check(
        &self,
        key: &[u8; 32],
        images: u32,
        metrics: &Metrics,
    ) -> Result<Vec<RateLimitHeaders>, ApiError> {
        self.check_with(key, images, None, metrics)
    }

    /// Like [`Self::check`], with the key's own limits where it has them.
    pub fn check_with(
        &self,
        key: &[u8; 32],
        images: u32,
        own: Option<OwnLimits>,
        metrics: &Metrics,
    ) -> Result<Vec<RateLimitHeaders>, ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            for bucket in [&self.requests, &self.images].into_iter().flatten() {
                bucket.limiter.retain_recent();
            }
        }
        let (own_requests, own_images) = own.unwrap_or((None, None));
        let mut headers = Vec::with_capacity(2);
        for (shared, own, kind, cost) in [
            (&self.requests, own_requests, RateLimit::Requests, 1),
            (&self.images, own_images, RateLimit::Images, images),
        ] {
            let own_bucket = own.and_then(|per_minute| self.own_bucket(key, kind, per_minute));
            let bucket: &Bucket = match (own, &own_bucket, shared) {
                (Some(_), Some(b), _) => b,
                (Some(_), None, _) => continue,
                (None, _, Some(b)) => b,
                (None, _, None) => continue,
            };
            match bucket.take(key, cost) {
                Ok(h) => headers.push(h),
                Err(e) => {
                    metrics
                        .rate_limited
                        .with_label_values(&[bucket.kind.as_str()])
                        .inc();
                    return Err(e);
                }
            }
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_limited_per_key_with_openai_headers() {
        let limits = KeyLimits::new(3, 0);
        let metrics = Metrics::new();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        for remaining in [2, 1, 0] {
            let h = limits.check(&a, 1, &metrics).unwrap();
            assert_eq!(
                (h[0].kind, h[0].limit, h[0].remaining),
                ("requests", 3, remaining)
            );
        }
        match limits.check(&a, 1, &metrics) {
            Err(ApiError::RateLimited {
                retry_after_seconds,
                limit,
            }) => {
                assert!(
                    (1..=20).contains(&retry_after_seconds),
                    "{retry_after_seconds}"
                );
                assert_eq!((limit.kind, limit.remaining), ("requests", 0));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            limits.check(&b, 1, &metrics).is_ok(),
            "another key has its own bucket"
        );
        assert_eq!(
            metrics.rate_limited.with_label_values(&["requests"]).get(),
            1
        );
    }

    #[test]
    fn images_are_counted_by_n() {
        let limits = KeyLimits::new(0, 10);
        let metrics = Metrics::new();
        let key = [3u8; 32];
        assert_eq!(limits.check(&key, 6, &metrics).unwrap()[0].remaining, 4);
        assert!(matches!(
            limits.check(&key, 6, &metrics),
            Err(ApiError::RateLimited { .. })
        ));
        assert!(limits.check(&key, 4, &metrics).is_ok());
        // More than a whole minute's worth can never pass: a 400 on `n`.
        let err = KeyLimits::new(0, 5).check(&key, 6, &metrics).unwrap_err();
        assert_eq!(err.param(), Some("n"));
    }

    #[test]
    fn a_key_with_limits_of_its_own_uses_them_instead() {
        let limits = KeyLimits::new(1, 0);
        let metrics = Metrics::new();
        let key = [4u8; 32];
        // Its own 3 requests a minute, not the configured 1.
        for _ in 0..3 {
            let h = limits
                .check_with(&key, 1, Some((Some(3), None)), &metrics)
                .unwrap();
            assert_eq!(h[0].limit, 3);
        }
        assert!(
            limits
                .check_with(&key, 1, Some((Some(3), None)), &metrics)
                .is_err()
        );
        // 0: unlimited, whatever the configuration says.
        for _ in 0..10 {
            assert!(
                limits
                    .check_with(&key, 1, Some((Some(0), None)), &metrics)
                    .is_ok()
            );
        }
        // An images limit of its own where none is configured.
        assert!(
            limits
                .check_with(&[5; 32], 4, Some((Some(0), Some(4))), &metrics)
                .is_ok()
        );
        assert!(matches!(
            limits.check_with(&[5; 32], 1, Some((Some(0), Some(4))), &metrics),
            Err(ApiError::RateLimited { .. })
        ));
        // No limit of its own: the configured one.
        assert!(
            limits
                .check_with(&[6; 32], 1, Some((None, None)), &metrics)
                .is_ok()
        );
        assert!(
            limits
                .check_with(&[6; 32], 1, Some((None, None)), &metrics)
                .is_err()
        );
    }

    #[test]
    fn disabled_limits_allow_everything() {
        let limits = KeyLimits::new(0, 0);
        assert!(!limits.is_enabled());
        for _ in 0..1000 {
            assert!(
                limits
                    .check(&[0; 32], 10, &Metrics::new())
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
