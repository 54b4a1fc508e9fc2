//! How a request was served: the `x-cache` and `x-cache-level` headers and
//! the cache lookup metric's label.

use crate::metrics::CacheResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// From this replica's memory.
    Hit,
    /// From the shared Redis cache (written by any replica).
    SharedHit,
    Miss,
    /// Joined an identical generation in progress, on this replica or (with
    /// Redis) on another one.
    Coalesced,
    /// Cache disabled, or `no-cache`: generated for this request alone.
    Bypass,
}

impl CacheStatus {
    /// The `x-cache` header value.
    pub fn header(self) -> &'static str {
        match self {
            CacheStatus::Hit | CacheStatus::SharedHit => "HIT",
            CacheStatus::Miss | CacheStatus::Bypass => "MISS",
            CacheStatus::Coalesced => "COALESCED",
        }
    }

    /// The `x-cache-level` header value of a hit: `l1` (this replica's
    /// memory) or `l2` (the shared Redis cache).
    pub fn level(self) -> Option<&'static str> {
        match self {
            CacheStatus::Hit => Some("l1"),
            CacheStatus::SharedHit => Some("l2"),
            _ => None,
        }
    }

    /// The `result` label of `image_gateway_cache_lookups_total`.
    pub fn result(self) -> CacheResult {
        match self {
            CacheStatus::Hit | CacheStatus::SharedHit => CacheResult::Hit,
            CacheStatus::Miss => CacheResult::Miss,
            CacheStatus::Coalesced => CacheResult::Coalesced,
            CacheStatus::Bypass => CacheResult::Bypass,
        }
    }
}
