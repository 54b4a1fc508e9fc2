//! Every Prometheus metric the gateway exports, declared once in the
//! [`families!`] table below: the struct field, the registration, the list
//! of family names (which the dashboard and docs tests read) and the series
//! that exist from the start all come from that one table.
//!
//! Names follow `image_gateway_<name>_<unit>[_total]`; every label is a
//! bounded set (route pattern, operation, outcome, configured model id,
//! configured endpoint id, or one of the label enums below), never a
//! prompt, a key, a raw path or a request id.

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Gateway request latency: cache hits answer in well under a millisecond,
/// misses take as long as the model (seconds, up to the 300 s deadline), so
/// the bounds run from 0.5 ms to 5 minutes.
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0, 60.0, 120.0, 300.0,
];

/// One upstream HTTP call (submit, status, result, cancel, download): fal
/// answers these in milliseconds, while sync-mode runs and large downloads
/// take seconds.
pub const UPSTREAM_CALL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A whole fal job, split into queue wait and run time: Imagen 4 fast runs
/// in a few seconds, ultra and busy queues in tens of seconds to minutes.
pub const JOB_DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0,
    180.0, 300.0,
];

/// A closed set of label values.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }
    };
}

label_enum!(
    /// `image_gateway_cache_lookups_total{result}`.
    CacheResult { Hit = "hit", Miss = "miss", Coalesced = "coalesced", Bypass = "bypass" }
);
label_enum!(
    /// `image_gateway_cache_evictions_total{cause}`.
    EvictionCause { Size = "size", Expired = "expired", Replaced = "replaced", Explicit = "explicit" }
);
label_enum!(
    /// `image_gateway_l2_cache_lookups_total{result}`.
    L2Result { Hit = "hit", Miss = "miss", Error = "error" }
);
label_enum!(
    /// `image_gateway_l2_cache_waits_total{outcome}`.
    L2Wait {
        Answered = "answered", Failed = "failed", Abandoned = "abandoned", Timeout = "timeout",
        Error = "error",
    }
);
label_enum!(
    /// `image_gateway_redis_errors_total{operation}`.
    RedisOp {
        Get = "get", Set = "set", Lock = "lock", Unlock = "unlock", Refresh = "refresh",
        Poll = "poll", Ping = "ping", Decode = "decode",
    }
);
label_enum!(
    /// `image_gateway_rate_limited_total{limit}`.
    RateLimit { Requests = "requests", Images = "images" }
);
label_enum!(
    /// `image_gateway_fallbacks_total{reason}`: why an endpoint of a
    /// model's chain did not serve (the first four moved the request on to
    /// the next endpoint; `marked_gone` and `sunset` skipped it unasked).
    FallbackReason {
        Gone = "gone", Failing = "failing", Capacity = "capacity",
        StartTimeout = "start_timeout", MarkedGone = "marked_gone", Sunset = "sunset",
    }
);
label_enum!(
    /// `image_gateway_upstream_cancellations_total{reason}`.
    CancelReason { Deadline = "deadline", Cancelled = "cancelled", Error = "error" }
);
label_enum!(
    /// `image_gateway_upstream_cancel_outcomes_total{outcome}`: fal's answer
    /// to a cancel, or `failed` when none came after retries.
    CancelOutcome {
        CancellationRequested = "cancellation_requested",
        AlreadyCompleted = "already_completed",
        NotFound = "not_found",
        Failed = "failed",
    }
);
label_enum!(
    /// `image_gateway_upstream_unconfirmed_total{operation}`: the paid calls.
    PaidCall { Submit = "submit", Run = "run" }
);

label_enum!(
    /// `image_gateway_spend_saved_usd_total{reason}`: why an answer cost nothing.
    SavedBy { Cache = "cache", Coalesced = "coalesced" }
);
label_enum!(
    /// `image_gateway_database_errors_total{operation}`.
    DbOp {
        KeyLookup = "key_lookup", Reserve = "reserve", Settle = "settle", Release = "release",
        Expire = "expire", Admin = "admin",
    }
);

/// How one kind of Prometheus collector is made from a table row.
trait Family: Collector + Clone + Sized + 'static {
    fn make(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> prometheus::Result<Self>;
}

impl Family for IntCounter {
    fn make(name: &str, help: &str, _: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        IntCounter::new(name, help)
    }
}

impl Family for IntGauge {
    fn make(name: &str, help: &str, _: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        IntGauge::new(name, help)
    }
}

impl Family for IntCounterVec {
    fn make(name: &str, help: &str, labels: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        IntCounterVec::new(Opts::new(name, help), labels)
    }
}

impl Family for CounterVec {
    fn make(name: &str, help: &str, labels: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        CounterVec::new(Opts::new(name, help), labels)
    }
}

impl Family for IntGaugeVec {
    fn make(name: &str, help: &str, labels: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        IntGaugeVec::new(Opts::new(name, help), labels)
    }
}

impl Family for HistogramVec {
    fn make(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> prometheus::Result<Self> {
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
    }
}

/// Make and register one family. Panics only on a programming error in the
/// table (a bad name or a duplicate), which every test run catches.
fn declare<F: Family>(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> F {
    let family = F::make(name, help, labels, buckets)
        .and_then(|f| r.register(Box::new(f.clone())).map(|()| f));
    family.unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

/// The table: `field: Type = "name", "help", [labels], buckets, zeros`.
/// `zeros` names a label enum whose every value gets a series at start-up,
/// so `rate()` and dashboards see zeros instead of gaps.
macro_rules! families {
    ($(
        $field:ident: $kind:ident = $name:literal, $help:literal
        $(, [$($label:literal),*])? $(, buckets = $buckets:expr)? $(, zeros = $zeros:ident)?;
    )*) => {
        pub struct Metrics {
            registry: Registry,
            $(pub $field: $kind,)*
        }

        impl Metrics {
            /// Every family name, in declaration order.
            pub const FAMILIES: &'static [&'static str] = &[$($name),*];

            fn declare_all() -> Self {
                let registry = Registry::new();
                let m = Self {
                    $($field: declare(
                        &registry,
                        $name,
                        $help,
                        &[$($($label),*)?],
                        families!(@buckets $($buckets)?),
                    ),)*
                    registry,
                };
                $($(for value in $zeros::ALL {
                    m.$field.with_label_values(&[value.as_str()]);
                })?)*
                m
            }
        }
    };
    (@buckets $buckets:expr) => { $buckets };
    (@buckets) => { &[] };
}

families! {
    http_requests: IntCounterVec = "image_gateway_http_requests_total",
        "HTTP requests answered, by route pattern, method and status code.",
        ["route", "method", "status"];
    http_duration: HistogramVec = "image_gateway_http_request_duration_seconds",
        "Time from request to response head, by route pattern and method.",
        ["route", "method"], buckets = HTTP_DURATION_BUCKETS;
    http_in_flight: IntGauge = "image_gateway_http_requests_in_flight",
        "HTTP requests being handled now.";
    upstream_requests: IntCounterVec = "image_gateway_upstream_requests_total",
        "HTTP calls to fal, by operation (submit, status, stream, result, cancel, run, download) and outcome.",
        ["operation", "outcome"];
    upstream_duration: HistogramVec = "image_gateway_upstream_request_duration_seconds",
        "Duration of one HTTP call to fal, by operation.",
        ["operation"], buckets = UPSTREAM_CALL_BUCKETS;
    upstream_retries: IntCounterVec = "image_gateway_upstream_retries_total",
        "Upstream calls retried after a retryable failure, by operation.",
        ["operation"];
    upstream_cancels: IntCounterVec = "image_gateway_upstream_cancellations_total",
        "Upstream jobs the gateway asked fal to cancel, by reason: deadline (the request deadline passed), cancelled (nobody waits any more: clients gone, a sibling job failed, or shutdown) or error (the gateway gave up watching the job after an upstream error).",
        ["reason"], zeros = CancelReason;
    upstream_cancel_outcomes: IntCounterVec = "image_gateway_upstream_cancel_outcomes_total",
        "Cancellations by fal's answer (retried as fal's clients retry): cancellation_requested, already_completed (fal had finished, and bills, the job), not_found, or failed (no answer).",
        ["outcome"], zeros = CancelOutcome;
    upstream_unconfirmed: IntCounterVec = "image_gateway_upstream_unconfirmed_total",
        "Paid calls (submit, run) sent to fal that got no answer (a timeout or a reset after the request went out): fal may run and bill the job; they are never repeated.",
        ["operation"], zeros = PaidCall;
    jobs: IntCounterVec = "image_gateway_upstream_jobs_total",
        "Upstream generation jobs finished, by model, the endpoint that ran them and outcome.",
        ["model", "endpoint", "outcome"];
    generations: IntCounterVec = "image_gateway_generations_total",
        "Generation answers with images (cache hits included), by model id and the upstream endpoint that produced the images.",
        ["model", "endpoint"];
    fallbacks: IntCounterVec = "image_gateway_fallbacks_total",
        "Endpoints of a model's chain that did not serve a request, by model, endpoint and reason: gone (404/410 at submit), failing (5xx or unreachable after retries), capacity (429 after retries), start_timeout (the job did not start in time), marked_gone (skipped: it answered gone within models.gone_skip_seconds), sunset (skipped: past its sunset date).",
        ["model", "endpoint", "reason"];
    job_duration: HistogramVec = "image_gateway_upstream_job_duration_seconds",
        "Upstream job time by model and phase (queued, running, total).",
        ["model", "phase"], buckets = JOB_DURATION_BUCKETS;
    jobs_in_flight: IntGauge = "image_gateway_upstream_jobs_in_flight",
        "Upstream generations holding a concurrency slot now.";
    jobs_queued: IntGauge = "image_gateway_upstream_jobs_queued",
        "Generations waiting for a concurrency slot now.";
    load_shed: IntCounter = "image_gateway_load_shed_total",
        "Requests refused with 429 because the upstream slots and wait queue were full, or the memory budget (limits.max_memory_bytes) had no room.";
    memory_shed: IntCounter = "image_gateway_memory_shed_total",
        "Requests refused with 429 because the memory budget (limits.max_memory_bytes) had no room for their body or generation, or the answers promised to jobs waiting at fal reached limits.memory_overcommit times it.";
    memory_reserved: IntGauge = "image_gateway_memory_reserved_bytes",
        "Bytes of the memory budget held now by request bodies, answers being made or written, and upstream answers being read.";
    memory_limit: IntGauge = "image_gateway_memory_limit_bytes",
        "Configured memory budget for work in flight (limits.max_memory_bytes).";
    memory_trims: IntCounter = "image_gateway_memory_trims_total",
        "Times freed memory was given back to the system because resident memory was above limits.max_memory_bytes + cache.max_bytes + the image files' bytes held + 32 MiB.";
    rate_limited: IntCounterVec = "image_gateway_rate_limited_total",
        "Requests refused by a per-key limit, by limit (requests, images).",
        ["limit"], zeros = RateLimit;
    client_disconnects: IntCounter = "image_gateway_client_disconnects_total",
        "Clients that went away before their generation finished.";
    client_write_timeouts: IntCounter = "image_gateway_client_write_timeouts_total",
        "Connections closed because the client stopped reading its answer for server.client_write_timeout_seconds.";
    cache_lookups: IntCounterVec = "image_gateway_cache_lookups_total",
        "Generation requests by cache result: hit (from this replica's memory or the shared Redis cache; see image_gateway_l2_cache_lookups_total), miss, coalesced (joined an identical job in flight, here or on another replica) or bypass (no-cache, or cache disabled).",
        ["result"], zeros = CacheResult;
    cache_entries: IntGauge = "image_gateway_cache_entries",
        "Answers held in the cache.";
    cache_size: IntGauge = "image_gateway_cache_size_bytes",
        "Bytes of answers held in the cache.";
    cache_capacity: IntGauge = "image_gateway_cache_capacity_bytes",
        "Configured cache bound (cache.max_bytes).";
    cache_evictions: IntCounterVec = "image_gateway_cache_evictions_total",
        "Cache entries removed, by cause (size, expired, replaced, explicit).",
        ["cause"];
    l2_lookups: IntCounterVec = "image_gateway_l2_cache_lookups_total",
        "Lookups in the shared Redis cache after a local miss, by result: hit, miss, or error (Redis down, slow, or an unreadable entry).",
        ["result"], zeros = L2Result;
    l2_waits: IntCounterVec = "image_gateway_l2_cache_waits_total",
        "Waits for another replica's identical generation, by outcome: answered (its result arrived through Redis), failed (its generation failed; the same error was answered here), abandoned (it finished without a result or its lock expired; this replica generated), timeout (cache.redis_wait_timeout_ms passed; this replica generated) or error (Redis failed; this replica generated).",
        ["outcome"], zeros = L2Wait;
    redis_errors: IntCounterVec = "image_gateway_redis_errors_total",
        "Failed or timed-out Redis calls, by operation (get, set, lock, unlock, refresh, poll, ping, decode).",
        ["operation"], zeros = RedisOp;
    files_entries: IntGauge = "image_gateway_files_entries",
        "Images held for GET /v1/images/files/{id}.";
    files_size: IntGauge = "image_gateway_files_size_bytes",
        "Bytes of images held for GET /v1/images/files/{id}.";
    images_generated: IntCounterVec = "image_gateway_images_generated_total",
        "Images produced by the backend (cache hits not counted), by model, aspect ratio and output format.",
        ["model", "aspect_ratio", "output_format"];
    stream_requests: IntCounter = "image_gateway_stream_requests_total",
        "Generation requests answered as server-sent events.";
    spend: CounterVec = "image_gateway_spend_usd_total",
        "USD spent at fal on generations this replica made (what the ledger records: fal's billable units where the price is per unit, else the delivered images at the endpoint's price), by model.",
        ["model"];
    saved: CounterVec = "image_gateway_spend_saved_usd_total",
        "USD that answers without a fal job would otherwise have cost (what making them cost), by model and reason: cache (a hit, from memory or the shared Redis cache) or coalesced (joined an identical generation in flight).",
        ["model", "reason"];
    budget_refusals: IntCounter = "image_gateway_budget_refusals_total",
        "Requests refused with 429 insufficient_quota: their key's budget could not cover the most they could cost; no fal job was made.";
    database_errors: IntCounterVec = "image_gateway_database_errors_total",
        "Failed calls to the key and spend database, by operation (key_lookup, reserve, settle, release, expire, admin).",
        ["operation"], zeros = DbOp;
    build_info: IntGaugeVec = "image_gateway_build_info",
        "Always 1; the labels carry the version and backend.",
        ["version", "backend"];
}

impl Metrics {
    /// Every family of the table, plus the process collector (Linux).
    pub fn new() -> Self {
        let m = Self::declare_all();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = m.registry.register(Box::new(pc)) {
                tracing::warn!(error = %e, "process metrics unavailable");
            }
        }
        m
    }

    /// The text exposition format (0.0.4).
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        buf
    }

    /// Every metric family name this gateway declares, sorted.
    pub fn family_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Self::FAMILIES.iter().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    pub fn observe_job(&self, model: &str, endpoint: &str, outcome: &str) {
        self.jobs
            .with_label_values(&[model, endpoint, outcome])
            .inc();
    }

    pub fn database_error(&self, op: DbOp) {
        self.database_errors.with_label_values(&[op.as_str()]).inc();
    }

    pub fn count_lookup(&self, result: CacheResult) {
        self.cache_lookups
            .with_label_values(&[result.as_str()])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_registers_every_family_once_with_zeros_where_declared() {
        let m = Metrics::new();
        let registered: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        // Families without series are not gathered; those with zeros are.
        for name in [
            "image_gateway_cache_lookups_total",
            "image_gateway_redis_errors_total",
            "image_gateway_http_requests_in_flight",
        ] {
            assert!(registered.iter().any(|r| r == name), "{name}");
        }
        let text = String::from_utf8(m.render()).unwrap();
        for v in RedisOp::ALL {
            let series = format!(
                "image_gateway_redis_errors_total{{operation=\"{}\"}} 0",
                v.as_str()
            );
            assert!(text.contains(&series), "{series}");
        }
        let mut unique = Metrics::FAMILIES.to_vec();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), Metrics::FAMILIES.len());
    }
}
