//! Every Prometheus metric the gateway exports, declared once with its help
//! text. Names follow `image_gateway_<name>_<unit>[_total]`; every label is a
//! bounded set (route pattern, operation, outcome, configured model id), never
//! a prompt, a key, a raw path or a request id.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_retries: IntCounterVec,
    pub upstream_cancels: IntCounterVec,
    pub jobs: IntCounterVec,
    pub job_duration: HistogramVec,
    pub jobs_in_flight: IntGauge,
    pub jobs_queued: IntGauge,
    pub load_shed: IntCounter,
    pub rate_limited: IntCounterVec,
    pub client_disconnects: IntCounter,
    pub cache_lookups: IntCounterVec,
    pub cache_entries: IntGauge,
    pub cache_size: IntGauge,
    pub cache_capacity: IntGauge,
    pub cache_evictions: IntCounterVec,
    pub l2_lookups: IntCounterVec,
    pub l2_waits: IntCounterVec,
    pub redis_errors: IntCounterVec,
    pub files_entries: IntGauge,
    pub files_size: IntGauge,
    pub images_generated: IntCounterVec,
    pub stream_requests: IntCounter,
    pub build_info: IntGaugeVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let m = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    m
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let m = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    m
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let m = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    m
}

impl Metrics {
    /// Declares every family. Panics only on a programming error in the
    /// declarations above (a bad name or a duplicate), which every test catches.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let r = Registry::new();
        let m = Self {
            http_requests: counter_vec(
                &r,
                "image_gateway_http_requests_total",
                "HTTP requests answered, by route pattern, method and status code.",
                &["route", "method", "status"],
            ),
            http_duration: histogram_vec(
                &r,
                "image_gateway_http_request_duration_seconds",
                "Time from request to response head, by route pattern and method.",
                &["route", "method"],
                HTTP_DURATION_BUCKETS,
            ),
            http_in_flight: gauge(
                &r,
                "image_gateway_http_requests_in_flight",
                "HTTP requests being handled now.",
            ),
            upstream_requests: counter_vec(
                &r,
                "image_gateway_upstream_requests_total",
                "HTTP calls to fal, by operation (submit, status, stream, result, cancel, run, download) and outcome.",
                &["operation", "outcome"],
            ),
            upstream_duration: histogram_vec(
                &r,
                "image_gateway_upstream_request_duration_seconds",
                "Duration of one HTTP call to fal, by operation.",
                &["operation"],
                UPSTREAM_CALL_BUCKETS,
            ),
            upstream_retries: counter_vec(
                &r,
                "image_gateway_upstream_retries_total",
                "Upstream calls retried after a retryable failure, by operation.",
                &["operation"],
            ),
            upstream_cancels: counter_vec(
                &r,
                "image_gateway_upstream_cancellations_total",
                "Upstream jobs the gateway asked fal to cancel, by reason: deadline (the request deadline passed) or cancelled (nobody waits any more: clients gone, a sibling job failed, or shutdown).",
                &["reason"],
            ),
            jobs: counter_vec(
                &r,
                "image_gateway_upstream_jobs_total",
                "Upstream generation jobs finished, by model and outcome.",
                &["model", "outcome"],
            ),
            job_duration: histogram_vec(
                &r,
                "image_gateway_upstream_job_duration_seconds",
                "Upstream job time by model and phase (queued, running, total).",
                &["model", "phase"],
                JOB_DURATION_BUCKETS,
            ),
            jobs_in_flight: gauge(
                &r,
                "image_gateway_upstream_jobs_in_flight",
                "Upstream generations holding a concurrency slot now.",
            ),
            jobs_queued: gauge(
                &r,
                "image_gateway_upstream_jobs_queued",
                "Generations waiting for a concurrency slot now.",
            ),
            load_shed: counter(
                &r,
                "image_gateway_load_shed_total",
                "Requests refused with 429 because the upstream slots and wait queue were full.",
            ),
            rate_limited: counter_vec(
                &r,
                "image_gateway_rate_limited_total",
                "Requests refused by a per-key limit, by limit (requests, images).",
                &["limit"],
            ),
            client_disconnects: counter(
                &r,
                "image_gateway_client_disconnects_total",
                "Clients that went away before their generation finished.",
            ),
            cache_lookups: counter_vec(
                &r,
                "image_gateway_cache_lookups_total",
                "Generation requests by cache result: hit (from this replica's memory or the shared Redis cache; see image_gateway_l2_cache_lookups_total), miss, coalesced (joined an identical job in flight, here or on another replica) or bypass (no-cache, or cache disabled).",
                &["result"],
            ),
            cache_entries: gauge(
                &r,
                "image_gateway_cache_entries",
                "Answers held in the cache.",
            ),
            cache_size: gauge(
                &r,
                "image_gateway_cache_size_bytes",
                "Bytes of answers held in the cache.",
            ),
            cache_capacity: gauge(
                &r,
                "image_gateway_cache_capacity_bytes",
                "Configured cache bound (cache.max_bytes).",
            ),
            cache_evictions: counter_vec(
                &r,
                "image_gateway_cache_evictions_total",
                "Cache entries removed, by cause (size, expired, replaced, explicit).",
                &["cause"],
            ),
            l2_lookups: counter_vec(
                &r,
                "image_gateway_l2_cache_lookups_total",
                "Lookups in the shared Redis cache after a local miss, by result: hit, miss, or error (Redis down, slow, or an unreadable entry).",
                &["result"],
            ),
            l2_waits: counter_vec(
                &r,
                "image_gateway_l2_cache_waits_total",
                "Waits for another replica's identical generation, by outcome: answered (its result arrived through Redis), abandoned (it finished without a result or its lock expired; this replica generated), timeout (cache.redis_wait_timeout_ms passed; this replica generated) or error (Redis failed; this replica generated).",
                &["outcome"],
            ),
            redis_errors: counter_vec(
                &r,
                "image_gateway_redis_errors_total",
                "Failed or timed-out Redis calls, by operation (get, set, lock, unlock, refresh, poll, ping, decode).",
                &["operation"],
            ),
            files_entries: gauge(
                &r,
                "image_gateway_files_entries",
                "Images held for GET /v1/images/files/{id}.",
            ),
            files_size: gauge(
                &r,
                "image_gateway_files_size_bytes",
                "Bytes of images held for GET /v1/images/files/{id}.",
            ),
            images_generated: counter_vec(
                &r,
                "image_gateway_images_generated_total",
                "Images produced by the backend (cache hits not counted), by model, aspect ratio and output format.",
                &["model", "aspect_ratio", "output_format"],
            ),
            stream_requests: counter(
                &r,
                "image_gateway_stream_requests_total",
                "Generation requests answered as server-sent events.",
            ),
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "image_gateway_build_info",
                        "Always 1; the labels carry the version and backend.",
                    ),
                    &["version", "backend"],
                )
                .expect("build_info");
                r.register(Box::new(g.clone())).expect("build_info");
                g
            },
            registry: r,
        };
        // Series that exist from the start, so dashboards and `rate()` see
        // zeros instead of gaps.
        for result in ["hit", "miss", "coalesced", "bypass"] {
            m.cache_lookups.with_label_values(&[result]);
        }
        for result in ["hit", "miss", "error"] {
            m.l2_lookups.with_label_values(&[result]);
        }
        for outcome in ["answered", "abandoned", "timeout", "error"] {
            m.l2_waits.with_label_values(&[outcome]);
        }
        for op in [
            "get", "set", "lock", "unlock", "refresh", "poll", "ping", "decode",
        ] {
            m.redis_errors.with_label_values(&[op]);
        }
        for limit in ["requests", "images"] {
            m.rate_limited.with_label_values(&[limit]);
        }
        for reason in ["deadline", "cancelled"] {
            m.upstream_cancels.with_label_values(&[reason]);
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            m.registry
                .register(Box::new(pc))
                .expect("process collector");
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

    /// Every metric family name this gateway declares (histograms and
    /// counters by their base name), whether or not it has series yet.
    pub fn family_names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 27] = [
            &self.http_requests,
            &self.http_duration,
            &self.http_in_flight,
            &self.upstream_requests,
            &self.upstream_duration,
            &self.upstream_retries,
            &self.upstream_cancels,
            &self.jobs,
            &self.job_duration,
            &self.jobs_in_flight,
            &self.jobs_queued,
            &self.load_shed,
            &self.rate_limited,
            &self.client_disconnects,
            &self.cache_lookups,
            &self.cache_entries,
            &self.cache_size,
            &self.cache_capacity,
            &self.cache_evictions,
            &self.l2_lookups,
            &self.l2_waits,
            &self.redis_errors,
            &self.files_entries,
            &self.files_size,
            &self.images_generated,
            &self.stream_requests,
            &self.build_info,
        ];
        let mut names: Vec<String> = collectors
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn observe_job(&self, model: &str, outcome: &str) {
        self.jobs.with_label_values(&[model, outcome]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
