//! The configuration sections, each with its built-in defaults. Every key
//! here is listed in `deploy/config.example.toml` with its default and its
//! environment variable (a test checks).

use serde::{Deserialize, Deserializer, Serialize};

use super::choice::choice;
use super::secret::{RedisUrl, Secret};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the API binds to.
    pub listen: String,
    /// Absolute base URL used to build links to images the gateway serves itself
    /// (`/v1/images/files/{id}`). Empty: see `trust_forwarded_headers`.
    pub public_base_url: String,
    /// With `public_base_url` empty, build those links from each request's
    /// `Forwarded` / `X-Forwarded-Host` / `X-Forwarded-Proto` / `Host`
    /// headers. Only behind a proxy that sets them; otherwise (the default)
    /// links use the address the client connected to.
    pub trust_forwarded_headers: bool,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest accepted prompt, in characters.
    pub max_prompt_chars: usize,
    /// Overall deadline for one generation, upstream polling included.
    pub request_timeout_seconds: u64,
    /// Time a client has to send its request head (slowloris guard).
    pub client_header_timeout_ms: u64,
    /// Time a client has to send its whole request body once the head arrived.
    pub client_body_timeout_ms: u64,
    /// Idle keep-alive for client connections.
    pub keep_alive_seconds: u64,
    /// On SIGTERM/SIGINT, time in-flight requests get to finish before the
    /// remaining upstream jobs are cancelled.
    pub shutdown_grace_seconds: u64,
    /// Interval of SSE comment keep-alives on `stream: true` answers while
    /// the image is generated (keeps proxies from closing idle streams).
    pub stream_keepalive_seconds: u64,
    /// Client connections open at once; past this, new connections wait in
    /// the listen backlog until one closes.
    pub max_connections: usize,
    /// Connection attempts the kernel queues for the API listener before
    /// they are accepted (the standard library's 128 drops bursts; Linux
    /// caps it at `net.core.somaxconn`, 4096 on recent kernels).
    pub listen_backlog: u32,
    /// Time a write to a client may stall (the client stopped reading its
    /// answer) before the connection is closed and the answer let go.
    pub client_write_timeout_seconds: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            public_base_url: String::new(),
            trust_forwarded_headers: false,
            workers: 0,
            max_body_bytes: 1024 * 1024,
            max_prompt_chars: 32_000,
            request_timeout_seconds: 300,
            client_header_timeout_ms: 5_000,
            client_body_timeout_ms: 10_000,
            keep_alive_seconds: 75,
            shutdown_grace_seconds: 30,
            stream_keepalive_seconds: 10,
            max_connections: 16_384,
            listen_backlog: 4_096,
            client_write_timeout_seconds: 30,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Client keys accepted as `Authorization: Bearer <key>`. Each entry is either
    /// the key itself or `sha256:<64 hex digits>` of it. A comma-separated string
    /// is accepted too (that is how the environment variable is written).
    /// Empty: the gateway is open to anyone who can reach it.
    #[serde(deserialize_with = "keys_from_list_or_csv")]
    pub api_keys: Vec<Secret>,
    /// Bearer key of the admin API (`/admin/v1/...`: keys, budgets, spend).
    /// Unset: the admin API is off and its paths answer 404.
    pub admin_key: Option<Secret>,
}

fn keys_from_list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    Ok(list_or_csv(d)?.into_iter().map(Secret::new).collect())
}

/// A TOML list, or one comma-separated string (as environment variables
/// write lists); entries trimmed, empty ones dropped.
fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        One(String),
    }
    let raw = Raw::deserialize(d)?;
    let items = match raw {
        Raw::List(items) => items,
        Raw::One(csv) => csv.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect())
}

choice! {
    /// How generations are sent to fal.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum FalMode {
        /// fal's queue: submit, watch status, fetch the result, cancel on deadline.
        #[default]
        Queue = "queue",
        /// fal's synchronous host: one POST that returns the output.
        Sync = "sync",
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FalSettings {
    /// The fal API key. Normally left unset here and given as `FAL_KEY`.
    pub key: Option<Secret>,
    /// Base URL of fal's queue host.
    pub queue_url: String,
    /// Base URL of fal's synchronous host.
    pub run_url: String,
    /// `queue` or `sync`.
    pub mode: FalMode,
    /// Watch job status over fal's server-sent-event stream instead of polling;
    /// polling remains the fallback when the stream fails.
    pub status_stream: bool,
    /// Delay before the first status poll; later polls back off from it.
    pub poll_initial_delay_ms: u64,
    /// Longest delay between two status polls.
    pub poll_max_delay_ms: u64,
    /// Backup host of `queue_url`, tried once when connecting to it fails
    /// (fal's clients fail over to `https://queue.falrun.com`). Empty: fal's
    /// backup when `queue_url` is fal's default, none otherwise. The fal key
    /// is sent there too.
    pub backup_queue_url: String,
    /// Backup host of `run_url` (fal's is `https://falrun.com`); empty: as
    /// for `backup_queue_url`.
    pub backup_run_url: String,
    /// Retries of one upstream call on what fal's own clients retry
    /// (408, 409, 429, ingress 502/503/504, transport errors). A submit that
    /// may have reached fal (a timeout or reset after it was sent) is never
    /// retried: a repeated submit is a second paid job.
    pub max_retries: u32,
    /// First retry delay; doubles each attempt, with jitter (50%-150%).
    pub retry_base_delay_ms: u64,
    /// Cap on one retry delay.
    pub retry_max_delay_ms: u64,
    /// Longest time the retries of one call may take, from its first
    /// attempt (never past the request deadline). fal's Python client
    /// spends about 23-68 s.
    pub retry_budget_seconds: u64,
    /// A status event stream silent for this long (fal sends a comment
    /// every 15 s) is dropped for polling.
    pub status_stream_idle_timeout_ms: u64,
    /// Send `x-app-fal-disable-fallback: true`: fal must not reroute a job
    /// to an "equivalent" endpoint (and bill that one).
    pub disable_fallback: bool,
    /// Let fal keep a copy of inputs and outputs (30 days, its default).
    /// `false` sends `X-Fal-Store-IO: 0` (prompts and images are not kept).
    pub store_io: bool,
    /// Expiry of the CDN files of a job, sent as
    /// `X-Fal-Object-Lifecycle-Preference`; the `url`s handed to clients stop
    /// working after it. 0: fal's account setting. At least
    /// `cache.ttl_seconds` when set.
    pub object_expiration_seconds: u64,
    /// fal queue priority (`X-Fal-Queue-Priority`): `normal`, or `low` to
    /// wait behind every normal request (batch work).
    pub queue_priority: QueuePriority,
    /// Submit with `fal_max_queue_length=N`: fal answers 429 (passed on, not
    /// retried) instead of queueing behind N waiting jobs. 0: off.
    pub max_queue_length: u32,
    /// TCP connect timeout to fal.
    pub connect_timeout_ms: u64,
    /// Timeout of one upstream HTTP call (never beyond the request deadline).
    pub call_timeout_seconds: u64,
    /// Largest upstream answer read (results carrying base64 images included).
    pub max_response_bytes: usize,
    /// Idle pooled connections kept per upstream host by each thread's
    /// client (each HTTP worker calls fal with its own pool); 0: as many as
    /// `limits.max_concurrent_jobs` (a running job holds one connection
    /// while it watches its status, so every one can be reused).
    pub pool_max_idle_per_host: usize,
    /// Hosts whose image links the gateway downloads when a client needs
    /// the image inline and fal sent a link instead. Each entry matches
    /// itself and its subdomains. A comma-separated string is accepted too.
    #[serde(deserialize_with = "list_or_csv")]
    pub download_hosts: Vec<String>,
    /// Download from loopback, private, link-local and other non-public
    /// addresses too (checked after DNS resolution). Off, such links are
    /// refused whatever their host name; only for tests and private mirrors.
    pub download_private_networks: bool,
}

impl Default for FalSettings {
    fn default() -> Self {
        Self {
            key: None,
            queue_url: FAL_QUEUE_URL.into(),
            run_url: FAL_RUN_URL.into(),
            mode: FalMode::Queue,
            status_stream: true,
            poll_initial_delay_ms: 50,
            poll_max_delay_ms: 1_000,
            backup_queue_url: String::new(),
            backup_run_url: String::new(),
            max_retries: 9,
            retry_base_delay_ms: 100,
            retry_max_delay_ms: 10_000,
            retry_budget_seconds: 30,
            status_stream_idle_timeout_ms: 30_000,
            disable_fallback: true,
            store_io: true,
            object_expiration_seconds: 0,
            queue_priority: QueuePriority::Normal,
            max_queue_length: 0,
            connect_timeout_ms: 5_000,
            call_timeout_seconds: 60,
            max_response_bytes: 64 * 1024 * 1024,
            pool_max_idle_per_host: 0,
            download_hosts: vec!["fal.media".into()],
            download_private_networks: false,
        }
    }
}

choice! {
    /// fal's queue priorities (`X-Fal-Queue-Priority`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum QueuePriority {
        #[default]
        Normal = "normal",
        /// Waits behind every normal request.
        Low = "low",
    }
}

/// fal's hosts and their documented backups.
pub const FAL_QUEUE_URL: &str = "https://queue.fal.run";
pub const FAL_RUN_URL: &str = "https://fal.run";
const FAL_BACKUP_QUEUE_URL: &str = "https://queue.falrun.com";
const FAL_BACKUP_RUN_URL: &str = "https://falrun.com";

impl FalSettings {
    /// (primary, backup) base URLs, without trailing slashes.
    pub fn backup_origins(&self) -> Vec<(String, String)> {
        let pick = |primary: &str, backup: &str, default: &str, fal_backup: &str| {
            let primary = primary.trim_end_matches('/');
            let backup = backup.trim_end_matches('/');
            if !backup.is_empty() {
                Some((primary.to_owned(), backup.to_owned()))
            } else if primary == default {
                Some((primary.to_owned(), fal_backup.to_owned()))
            } else {
                None
            }
        };
        [
            pick(
                &self.queue_url,
                &self.backup_queue_url,
                FAL_QUEUE_URL,
                FAL_BACKUP_QUEUE_URL,
            ),
            pick(
                &self.run_url,
                &self.backup_run_url,
                FAL_RUN_URL,
                FAL_BACKUP_RUN_URL,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

choice! {
    /// Which requests the cache answers and coalesces.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum CacheMode {
        /// Every request: an identical request gets the cached image.
        #[default]
        All = "all",
        /// Only requests that carry a `seed`: without one each call is a
        /// fresh sample, as with OpenAI.
        Seeded = "seeded",
        /// None: every request generates.
        Off = "off",
    }
}

impl CacheScope {
    /// The scope in force: `auto` is `per_key` with client keys, else `global`.
    pub fn resolve(self, keys_configured: bool) -> CacheScope {
        match self {
            CacheScope::Auto if keys_configured => CacheScope::PerKey,
            CacheScope::Auto => CacheScope::Global,
            scope => scope,
        }
    }
}

choice! {
    /// Whether cached images are shared between client keys.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum CacheScope {
        /// `per_key` when client keys are configured, else `global`.
        #[default]
        Auto = "auto",
        /// One cache for everyone: the same request from two keys is generated
        /// once, and one key can tell (`x-cache: HIT`, timing) that another
        /// already asked for a prompt.
        Global = "global",
        /// Entries are keyed by client key too: tenants never share images.
        PerKey = "per_key",
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// `all`: identical requests are answered from the cache and concurrent
    /// identical misses coalesced; `seeded`: only those that carry a `seed`;
    /// `off`: every request generates.
    pub mode: CacheMode,
    /// Deprecated: `false` is `mode = "off"`. Read, never written.
    #[serde(skip_serializing)]
    pub enabled: Option<bool>,
    /// Upper bound on the memory of cached answers: their bytes plus about
    /// 1 KiB of bookkeeping per entry (`cache::ENTRY_OVERHEAD_BYTES`).
    pub max_bytes: u64,
    /// How long an answer is reused. Keep it below the life of fal's result URLs.
    pub ttl_seconds: u64,
    /// `auto` (`per_key` when client keys are configured, else `global`),
    /// `global` or `per_key`.
    pub scope: CacheScope,
    /// Redis as a second-level cache shared by every replica, e.g.
    /// `redis://:password@redis:6379/0`. Empty: off (each replica has only its
    /// own in-memory cache). Its password is never printed.
    pub redis_url: RedisUrl,
    /// Prefix of every key the gateway writes in Redis (entries and locks), so
    /// several deployments can share one Redis database.
    pub redis_key_prefix: String,
    /// Bound on one Redis call (lookup, lock, probe). Reading or writing an
    /// entry, which carries the images, may take four times as long. A call
    /// that fails or takes longer marks Redis down until a probe succeeds.
    pub redis_timeout_ms: u64,
    /// Life of the fleet-wide generation lock. The replica generating
    /// refreshes it every third of this, so it only bounds how long a
    /// crashed replica can keep the others waiting.
    pub redis_lock_ttl_ms: u64,
    /// Longest time a replica waits for another replica's identical
    /// generation before generating the image itself.
    pub redis_wait_timeout_ms: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            mode: CacheMode::All,
            enabled: None,
            max_bytes: 256 * 1024 * 1024,
            ttl_seconds: 1_800,
            scope: CacheScope::Auto,
            redis_url: RedisUrl::default(),
            redis_key_prefix: "image-gateway:".into(),
            redis_timeout_ms: 250,
            redis_lock_ttl_ms: 10_000,
            redis_wait_timeout_ms: 60_000,
        }
    }
}

/// The in-memory store behind `GET /v1/images/files/{id}`, which serves `url`
/// answers for images the gateway holds itself (local backend, or fal data URIs).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSettings {
    /// How long a served image stays downloadable. Must be at least `cache.ttl_seconds`.
    pub ttl_seconds: u64,
    /// Upper bound on the bytes held.
    pub max_bytes: u64,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            ttl_seconds: 3_600,
            max_bytes: 512 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalSettings {
    /// Artificial time each local generation takes, to imitate a real model.
    pub delay_ms: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Upstream generations (fal jobs, or local renders) running at once; a
    /// request of more jobs than this runs them this many at a time.
    pub max_concurrent_jobs: usize,
    /// Generations waiting for a slot; past this the gateway answers 429 at once.
    pub max_queued_jobs: usize,
    /// Bound on the memory of work in flight, beside the caches' own bounds:
    /// request bodies being read, answers being made and written (a small
    /// room while the jobs wait at fal, the most the plan can legitimately
    /// take from its first answer until the real answer is known, then its
    /// real size until its last byte is written), and fal answers being
    /// read. New requests that find no room get 429 with retry-after; a
    /// finished job's answer waits, in turn, until its room is free.
    pub max_memory_bytes: u64,
    /// How many times `max_memory_bytes` the answers of generations whose
    /// jobs wait at fal may need at most, added up (each counted at the
    /// most its plan can take): jobs wait seconds at fal and their answers
    /// are read in milliseconds, so more can wait than can be read at once,
    /// and they take turns. Past it new generations get 429. 1 admits only
    /// what can be read at once; higher lets more `b64_json` jobs run at
    /// fal per replica, and a burst's answers wait longer for their turn.
    pub memory_overcommit: u32,
    /// Per client key; 0 disables.
    pub requests_per_minute: u32,
    /// Per client key, counted in images (`n`); 0 disables.
    pub images_per_minute: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_concurrent_jobs: 4_096,
            max_queued_jobs: 16_384,
            max_memory_bytes: 256 * 1024 * 1024,
            memory_overcommit: 4,
            requests_per_minute: 0,
            images_per_minute: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `GET /metrics`.
    pub enabled: bool,
    /// Serve `/metrics` on this separate admin address instead of the API listener.
    /// Empty: on the API listener.
    pub listen: String,
    /// Serve `/metrics` without a client key even when keys are configured.
    pub public: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: String::new(),
            public: false,
        }
    }
}

choice! {
    /// How log lines are written.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum LogFormat {
        /// Human-readable lines.
        #[default]
        Text = "text",
        /// One JSON object per line, for log shippers.
        Json = "json",
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter such as `info` or `image_gateway=debug`; `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}
