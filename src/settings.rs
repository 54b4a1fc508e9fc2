//! Layered configuration: built-in defaults, then an optional TOML file, then
//! `IMAGE_GATEWAY__SECTION__KEY` environment variables, then `FAL_KEY`.
//!
//! The names `server.listen`, `backend`, `fal.queue_url`, `fal.run_url` and
//! `auth.api_keys` are fixed by the design and relied on by the deploy files.
//! Every key here must also appear in `deploy/config.example.toml` (a test checks).

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that must never be printed: `Debug`, `Display` and `Serialize`
/// all write `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Which image backend serves generations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// `fal` when a fal key is configured, otherwise `local` (with a warning).
    #[default]
    Auto,
    Fal,
    Local,
}

/// The backend actually in use once `auto` is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Fal,
    Local,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Fal => "fal",
            BackendKind::Local => "local",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `auto`, `fal` or `local`.
    pub backend: BackendChoice,
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub fal: FalSettings,
    pub models: ModelSettings,
    pub cache: CacheSettings,
    pub files: FileSettings,
    pub local: LocalSettings,
    pub limits: LimitSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the API binds to.
    pub listen: String,
    /// Absolute base URL used to build links to images the gateway serves itself
    /// (`/v1/images/files/{id}`). Empty: derived from each request's `Host`.
    pub public_base_url: String,
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
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            public_base_url: String::new(),
            workers: 0,
            max_body_bytes: 1024 * 1024,
            max_prompt_chars: 32_000,
            request_timeout_seconds: 300,
            client_header_timeout_ms: 5_000,
            client_body_timeout_ms: 10_000,
            keep_alive_seconds: 75,
            shutdown_grace_seconds: 30,
            stream_keepalive_seconds: 10,
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
}

fn keys_from_list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
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
        .map(Secret)
        .collect())
}

/// How generations are sent to fal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FalMode {
    /// fal's queue: submit, watch status, fetch the result, cancel on deadline.
    #[default]
    Queue,
    /// fal's synchronous host: one POST that returns the output.
    Sync,
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
    /// Retries of one upstream call on what fal's own clients retry
    /// (408, 409, 429, ingress 502/503/504, transport errors).
    pub max_retries: u32,
    /// First retry delay; doubles each attempt, with jitter.
    pub retry_base_delay_ms: u64,
    /// Cap on one retry delay.
    pub retry_max_delay_ms: u64,
    /// TCP connect timeout to fal.
    pub connect_timeout_ms: u64,
    /// Timeout of one upstream HTTP call (never beyond the request deadline).
    pub call_timeout_seconds: u64,
    /// Largest upstream answer read (results carrying base64 images included).
    pub max_response_bytes: usize,
    /// Idle pooled connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
}

impl Default for FalSettings {
    fn default() -> Self {
        Self {
            key: None,
            queue_url: "https://queue.fal.run".into(),
            run_url: "https://fal.run".into(),
            mode: FalMode::Queue,
            status_stream: true,
            poll_initial_delay_ms: 50,
            poll_max_delay_ms: 1_000,
            max_retries: 5,
            retry_base_delay_ms: 100,
            retry_max_delay_ms: 10_000,
            connect_timeout_ms: 5_000,
            call_timeout_seconds: 60,
            max_response_bytes: 64 * 1024 * 1024,
            pool_max_idle_per_host: 256,
        }
    }
}

/// One public model and the fal endpoint that serves it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Public id clients send as `model`.
    pub id: String,
    /// fal endpoint id, `owner/alias[/path]`.
    pub endpoint: String,
    /// Other names that resolve to this model.
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Model used when a request names none.
    pub default: String,
    /// The model table. Setting it replaces the built-in table as a whole.
    pub catalog: Vec<ModelEntry>,
}

/// OpenAI's own image model names, served by the default model so unchanged
/// client code works.
pub const OPENAI_MODEL_ALIASES: [&str; 6] = [
    "dall-e-2",
    "dall-e-3",
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
];

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            default: "imagen-4-fast".into(),
            catalog: vec![
                ModelEntry {
                    id: "imagen-4-fast".into(),
                    endpoint: "fal-ai/imagen4/preview/fast".into(),
                    aliases: OPENAI_MODEL_ALIASES.iter().map(|s| s.to_string()).collect(),
                },
                ModelEntry {
                    id: "imagen-4".into(),
                    endpoint: "fal-ai/imagen4/preview".into(),
                    aliases: vec![],
                },
                ModelEntry {
                    id: "imagen-4-ultra".into(),
                    endpoint: "fal-ai/imagen4/preview/ultra".into(),
                    aliases: vec![],
                },
            ],
        }
    }
}

/// Whether cached images are shared between client keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// One cache for everyone: the same request from two keys is generated once.
    #[default]
    Global,
    /// Entries are keyed by client key too: tenants never share images.
    PerKey,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Cache identical requests and coalesce concurrent identical misses.
    pub enabled: bool,
    /// Upper bound on the memory of cached answers: their bytes plus about
    /// 1 KiB of bookkeeping per entry (`cache::ENTRY_OVERHEAD_BYTES`).
    pub max_bytes: u64,
    /// How long an answer is reused. Keep it below the life of fal's result URLs.
    pub ttl_seconds: u64,
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
            enabled: true,
            max_bytes: 256 * 1024 * 1024,
            ttl_seconds: 1_800,
            scope: CacheScope::Global,
            redis_url: RedisUrl::default(),
            redis_key_prefix: "image-gateway:".into(),
            redis_timeout_ms: 250,
            redis_lock_ttl_ms: 10_000,
            redis_wait_timeout_ms: 60_000,
        }
    }
}

/// A Redis URL whose password (and username) never appear in `Debug`,
/// `Display` or `Serialize` output: `redis://:[redacted]@host:6379/0`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    /// The URL with its credentials, for connecting only.
    pub fn expose(&self) -> &str {
        self.0.trim()
    }
    pub fn is_set(&self) -> bool {
        !self.expose().is_empty()
    }
    /// The URL with any userinfo replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        let url = self.expose();
        let Some((scheme, rest)) = url.split_once("://") else {
            // Not a URL we can take apart: print nothing of it.
            return if url.is_empty() {
                String::new()
            } else {
                "[redacted]".into()
            };
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => format!("{scheme}://[redacted]{}", &rest[at..]),
            None => {
                // A password can also travel as a query parameter.
                if rest.contains("password=") || rest.contains("user=") {
                    format!("{scheme}://{}?[redacted]", &rest[..authority_end])
                } else {
                    url.to_owned()
                }
            }
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
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
    /// Upstream generations (fal jobs, or local renders) running at once.
    pub max_concurrent_jobs: usize,
    /// Generations waiting for a slot; past this the gateway answers 429 at once.
    pub max_queued_jobs: usize,
    /// Per client key; 0 disables.
    pub requests_per_minute: u32,
    /// Per client key, counted in images (`n`); 0 disables.
    pub images_per_minute: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_concurrent_jobs: 1_024,
            max_queued_jobs: 4_096,
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Settings {
    /// Load defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, vars)
    }

    /// Like [`Settings::load`] with an explicit environment (tests use this).
    pub fn load_from(
        file: Option<&std::path::Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut env = config::Map::new();
        let mut fal_key = None;
        for (k, v) in vars {
            if k == "FAL_KEY" {
                if !v.trim().is_empty() {
                    fal_key = Some(Secret(v.trim().to_owned()));
                }
            } else if k.starts_with("IMAGE_GATEWAY__") {
                env.insert(k, v);
            }
        }
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::new(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("IMAGE_GATEWAY")
                .prefix_separator("__")
                .separator("__")
                .source(Some(env)),
        );
        let cfg = builder.build().map_err(config_error)?;
        let mut settings: Settings = cfg.try_deserialize().map_err(config_error)?;
        if fal_key.is_some() {
            settings.fal.key = fal_key;
        }
        if settings
            .fal
            .key
            .as_ref()
            .is_some_and(|k| k.expose().trim().is_empty())
        {
            settings.fal.key = None;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// The backend in use once `auto` is resolved.
    pub fn backend_kind(&self) -> BackendKind {
        match self.backend {
            BackendChoice::Fal => BackendKind::Fal,
            BackendChoice::Local => BackendKind::Local,
            BackendChoice::Auto if self.fal.key.is_some() => BackendKind::Fal,
            BackendChoice::Auto => BackendKind::Local,
        }
    }

    /// Checks every value that could fail later, so start-up fails instead.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_listen("server.listen", &self.server.listen)?;
        if !self.metrics.listen.is_empty() {
            parse_listen("metrics.listen", &self.metrics.listen)?;
        }
        if !self.server.public_base_url.is_empty() {
            parse_http_url("server.public_base_url", &self.server.public_base_url)?;
        }
        parse_http_url("fal.queue_url", &self.fal.queue_url)?;
        parse_http_url("fal.run_url", &self.fal.run_url)?;
        if self.backend == BackendChoice::Fal && self.fal.key.is_none() {
            return Err(ConfigError::new(
                "backend",
                "`fal` needs a fal API key: set FAL_KEY (or fal.key), or use `auto`/`local`",
            ));
        }
        positive("server.max_body_bytes", self.server.max_body_bytes as u64)?;
        positive(
            "server.max_prompt_chars",
            self.server.max_prompt_chars as u64,
        )?;
        positive(
            "server.request_timeout_seconds",
            self.server.request_timeout_seconds,
        )?;
        // actix measures this against a clock refreshed every 500 ms, so
        // shorter values can expire before a prompt client finishes.
        if self.server.client_header_timeout_ms < 1000 {
            return Err(ConfigError::new(
                "server.client_header_timeout_ms",
                "must be at least 1000",
            ));
        }
        positive(
            "server.client_body_timeout_ms",
            self.server.client_body_timeout_ms,
        )?;
        positive(
            "server.stream_keepalive_seconds",
            self.server.stream_keepalive_seconds,
        )?;
        positive("fal.poll_max_delay_ms", self.fal.poll_max_delay_ms)?;
        positive("fal.retry_base_delay_ms", self.fal.retry_base_delay_ms)?;
        positive("fal.retry_max_delay_ms", self.fal.retry_max_delay_ms)?;
        positive("fal.connect_timeout_ms", self.fal.connect_timeout_ms)?;
        positive("fal.call_timeout_seconds", self.fal.call_timeout_seconds)?;
        positive("fal.max_response_bytes", self.fal.max_response_bytes as u64)?;
        positive("cache.max_bytes", self.cache.max_bytes)?;
        positive("cache.ttl_seconds", self.cache.ttl_seconds)?;
        self.validate_redis()?;
        positive("files.ttl_seconds", self.files.ttl_seconds)?;
        positive("files.max_bytes", self.files.max_bytes)?;
        positive(
            "limits.max_concurrent_jobs",
            self.limits.max_concurrent_jobs as u64,
        )?;
        if self.files.ttl_seconds < self.cache.ttl_seconds {
            return Err(ConfigError::new(
                "files.ttl_seconds",
                format!(
                    "must be at least cache.ttl_seconds ({}), or cached answers would link to expired images",
                    self.cache.ttl_seconds
                ),
            ));
        }
        self.validate_models()?;
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            if let Some(hash) = key.expose().strip_prefix("sha256:")
                && (hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(ConfigError::new(
                    "auth.api_keys",
                    format!(
                        "entry {} starts with `sha256:` but is not followed by 64 hex digits",
                        i + 1
                    ),
                ));
            }
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(ConfigError::new("log.level", e.to_string()));
        }
        Ok(())
    }

    fn validate_redis(&self) -> Result<(), ConfigError> {
        let c = &self.cache;
        positive("cache.redis_timeout_ms", c.redis_timeout_ms)?;
        positive("cache.redis_lock_ttl_ms", c.redis_lock_ttl_ms)?;
        if c.redis_lock_ttl_ms < 3 * c.redis_timeout_ms {
            return Err(ConfigError::new(
                "cache.redis_lock_ttl_ms",
                format!(
                    "must be at least three times cache.redis_timeout_ms ({}), so the lock can be refreshed in time",
                    c.redis_timeout_ms
                ),
            ));
        }
        if !c.redis_url.is_set() {
            return Ok(());
        }
        let url = c.redis_url.expose();
        let scheme = url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("redis" | "redis+unix" | "unix") => {}
            Some("rediss" | "valkeys") => {
                return Err(ConfigError::new(
                    "cache.redis_url",
                    "TLS (rediss://) is not built in: reach Redis over a private network or a TLS sidecar",
                ));
            }
            _ => {
                return Err(ConfigError::new(
                    "cache.redis_url",
                    format!(
                        "`{}` is not a redis:// (or unix://) URL",
                        c.redis_url.redacted()
                    ),
                ));
            }
        }
        if redis::Client::open(url).is_err() {
            return Err(ConfigError::new(
                "cache.redis_url",
                format!(
                    "`{}` is not a valid Redis URL (redis://[:password@]host[:port][/db])",
                    c.redis_url.redacted()
                ),
            ));
        }
        Ok(())
    }

    fn validate_models(&self) -> Result<(), ConfigError> {
        if self.models.catalog.is_empty() {
            return Err(ConfigError::new(
                "models.catalog",
                "needs at least one model",
            ));
        }
        let mut names = BTreeSet::new();
        for m in &self.models.catalog {
            if m.id.trim().is_empty() {
                return Err(ConfigError::new(
                    "models.catalog",
                    "a model has an empty `id`",
                ));
            }
            if crate::mapping::EndpointId::parse(&m.endpoint).is_none() {
                return Err(ConfigError::new(
                    "models.catalog",
                    format!(
                        "model `{}`: endpoint `{}` is not of the form owner/alias[/path]",
                        m.id, m.endpoint
                    ),
                ));
            }
            for name in std::iter::once(&m.id).chain(&m.aliases) {
                if !names.insert(name.as_str()) {
                    return Err(ConfigError::new(
                        "models.catalog",
                        format!("the name `{name}` is used twice"),
                    ));
                }
            }
        }
        if !names.contains(self.models.default.as_str()) {
            return Err(ConfigError::new(
                "models.default",
                format!(
                    "`{}` is not a model id or alias in models.catalog",
                    self.models.default
                ),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn config_error(e: config::ConfigError) -> ConfigError {
    // The config crate's messages name the key ("... for key `server.listen`").
    let text = e.to_string();
    let key = text
        .split("for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
        .or_else(|| {
            text.split("unknown field `")
                .nth(1)
                .and_then(|rest| rest.split('`').next())
                .map(|f| format!("{f} (unknown key)"))
        })
        .unwrap_or_else(|| "configuration".into());
    ConfigError { key, message: text }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}

fn parse_listen(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse::<SocketAddr>().map_err(|_| {
        ConfigError::new(
            key,
            format!("`{value}` is not an address like 0.0.0.0:8080 or [::1]:8080"),
        )
    })
}

fn parse_http_url(key: &str, value: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(value)
        .map_err(|e| ConfigError::new(key, format!("`{value}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::new(
            key,
            format!("`{value}` must be an http:// or https:// URL with a host"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(key, "must not carry a query or fragment"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_pick_the_local_backend_without_a_key() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.server.listen, "0.0.0.0:8080");
        assert_eq!(s.fal.queue_url, "https://queue.fal.run");
        assert_eq!(s.fal.run_url, "https://fal.run");
        assert_eq!(s.backend, BackendChoice::Auto);
        assert_eq!(s.backend_kind(), BackendKind::Local);
    }

    #[test]
    fn fixed_environment_names_are_honoured() {
        let s = Settings::load_from(
            None,
            env(&[
                ("IMAGE_GATEWAY__SERVER__LISTEN", "127.0.0.1:9999"),
                ("IMAGE_GATEWAY__BACKEND", "fal"),
                ("IMAGE_GATEWAY__FAL__QUEUE_URL", "http://127.0.0.1:1234"),
                ("IMAGE_GATEWAY__FAL__RUN_URL", "http://127.0.0.1:1235"),
                ("IMAGE_GATEWAY__AUTH__API_KEYS", "sk-one, sk-two,,"),
                ("IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS", "12"),
                ("IMAGE_GATEWAY__CACHE__ENABLED", "false"),
                ("FAL_KEY", "fal-secret"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:9999");
        assert_eq!(s.backend_kind(), BackendKind::Fal);
        assert_eq!(s.fal.queue_url, "http://127.0.0.1:1234");
        assert_eq!(s.fal.run_url, "http://127.0.0.1:1235");
        let keys: Vec<&str> = s.auth.api_keys.iter().map(Secret::expose).collect();
        assert_eq!(keys, ["sk-one", "sk-two"]);
        assert_eq!(s.server.request_timeout_seconds, 12);
        assert!(!s.cache.enabled);
        assert_eq!(s.fal.key.as_ref().map(Secret::expose), Some("fal-secret"));
    }

    #[test]
    fn a_single_numeric_client_key_stays_a_string() {
        let s =
            Settings::load_from(None, env(&[("IMAGE_GATEWAY__AUTH__API_KEYS", "12345")])).unwrap();
        assert_eq!(s.auth.api_keys[0].expose(), "12345");
    }

    #[test]
    fn the_file_layer_sits_between_defaults_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:7000\"\nmax_prompt_chars = 100\n[auth]\napi_keys = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&path),
            env(&[("IMAGE_GATEWAY__SERVER__LISTEN", "127.0.0.1:7001")]),
        )
        .unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:7001");
        assert_eq!(s.server.max_prompt_chars, 100);
        assert_eq!(s.auth.api_keys.len(), 2);
    }

    #[test]
    fn backend_fal_without_a_key_refuses_to_start() {
        let err = Settings::load_from(None, env(&[("IMAGE_GATEWAY__BACKEND", "fal")])).unwrap_err();
        assert_eq!(err.key, "backend");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            (
                "IMAGE_GATEWAY__SERVER__LISTEN",
                "not-an-address",
                "server.listen",
            ),
            ("IMAGE_GATEWAY__FAL__QUEUE_URL", "ftp://x", "fal.queue_url"),
            ("IMAGE_GATEWAY__FAL__RUN_URL", "nope", "fal.run_url"),
            (
                "IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS",
                "soon",
                "server.request_timeout_seconds",
            ),
            (
                "IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS",
                "0",
                "server.request_timeout_seconds",
            ),
            ("IMAGE_GATEWAY__BACKEND", "openai", "backend"),
            (
                "IMAGE_GATEWAY__AUTH__API_KEYS",
                "sha256:abc",
                "auth.api_keys",
            ),
            ("IMAGE_GATEWAY__MODELS__DEFAULT", "nope", "models.default"),
            ("IMAGE_GATEWAY__LOG__LEVEL", "=[", "log.level"),
        ];
        for (var, value, key) in cases {
            let err = Settings::load_from(None, env(&[(var, value)])).unwrap_err();
            assert!(
                err.key.starts_with(key),
                "{var}={value}: expected key {key}, got {err}"
            );
        }
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let err =
            Settings::load_from(None, env(&[("IMAGE_GATEWAY__SERVER__LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn the_annotated_example_holds_every_key_with_its_default_and_env_name() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml");
        let loaded = Settings::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(
            loaded.to_redacted_toml(),
            Settings::default().to_redacted_toml()
        );

        let text = std::fs::read_to_string(&path).unwrap();
        let defaults: toml::Table =
            toml::from_str(&Settings::default().to_redacted_toml()).unwrap();
        let mut checked = 0;
        for (section, value) in &defaults {
            let keys: Vec<(String, String)> = match value {
                toml::Value::Table(t) => t
                    .keys()
                    .filter(|k| !(section == "models" && *k == "catalog"))
                    .map(|k| {
                        (
                            format!("{section}.{k}"),
                            format!(
                                "IMAGE_GATEWAY__{}__{}",
                                section.to_uppercase(),
                                k.to_uppercase()
                            ),
                        )
                    })
                    .collect(),
                _ => vec![(
                    section.clone(),
                    format!("IMAGE_GATEWAY__{}", section.to_uppercase()),
                )],
            };
            for (key, var) in keys {
                assert!(
                    text.contains(&format!("# env: {var}")),
                    "{key}: no `# env: {var}` line"
                );
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} keys checked");
        assert!(text.contains("# env: FAL_KEY"));
    }

    /// README's configuration table is generated from the example by
    /// `scripts/config-table`; this fails when they disagree.
    #[test]
    fn the_readme_configuration_table_matches_the_example() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let defaults: toml::Table =
            toml::from_str(&Settings::default().to_redacted_toml()).unwrap();
        let mut missing = Vec::new();
        for (section, value) in &defaults {
            let entries: Vec<(String, String, String)> = match value {
                toml::Value::Table(t) => t
                    .iter()
                    .filter(|(k, _)| !(section == "models" && *k == "catalog"))
                    .map(|(k, v)| {
                        (
                            format!("{section}.{k}"),
                            v.to_string(),
                            format!(
                                "IMAGE_GATEWAY__{}__{}",
                                section.to_uppercase(),
                                k.to_uppercase()
                            ),
                        )
                    })
                    .collect(),
                v => vec![(
                    section.clone(),
                    v.to_string(),
                    format!("IMAGE_GATEWAY__{}", section.to_uppercase()),
                )],
            };
            for (key, default, env) in entries {
                let row = format!("| `{key}` | `{default}` | `{env}` |");
                if !readme.contains(&row) {
                    missing.push(row);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "README.md lacks (run scripts/config-table):\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn the_redis_url_is_read_from_the_environment_and_its_password_never_shown() {
        let s = Settings::load_from(
            None,
            env(&[(
                "IMAGE_GATEWAY__CACHE__REDIS_URL",
                "redis://gw:redis-pass-SECRET@cache.internal:6380/2",
            )]),
        )
        .unwrap();
        assert_eq!(
            s.cache.redis_url.expose(),
            "redis://gw:redis-pass-SECRET@cache.internal:6380/2"
        );
        let shown = [
            s.to_redacted_toml(),
            format!("{s:?}"),
            s.cache.redis_url.to_string(),
        ];
        for text in &shown {
            assert!(!text.contains("redis-pass-SECRET"), "{text}");
            assert!(!text.contains("gw:"), "{text}");
        }
        assert!(shown[0].contains("redis://[redacted]@cache.internal:6380/2"));
    }

    #[test]
    fn redis_urls_are_redacted_in_every_form() {
        let cases = [
            ("", ""),
            ("redis://localhost:6379", "redis://localhost:6379"),
            ("redis://:pw@h:1/0", "redis://[redacted]@h:1/0"),
            ("redis://user:p@ss@h/0", "redis://[redacted]@h/0"),
            ("redis://h:1/0?password=pw", "redis://h:1?[redacted]"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            ("not a url with pw", "[redacted]"),
        ];
        for (url, shown) in cases {
            assert_eq!(RedisUrl::new(url).redacted(), shown, "{url}");
        }
    }

    #[test]
    fn bad_redis_settings_name_their_key_without_the_password() {
        for (var, value, key) in [
            (
                "IMAGE_GATEWAY__CACHE__REDIS_URL",
                "rediss://:pw-SECRET@h:6379",
                "cache.redis_url",
            ),
            (
                "IMAGE_GATEWAY__CACHE__REDIS_URL",
                "http://:pw-SECRET@h:6379",
                "cache.redis_url",
            ),
            (
                "IMAGE_GATEWAY__CACHE__REDIS_URL",
                "redis://:pw-SECRET@h:notaport",
                "cache.redis_url",
            ),
            (
                "IMAGE_GATEWAY__CACHE__REDIS_TIMEOUT_MS",
                "0",
                "cache.redis_timeout_ms",
            ),
            (
                "IMAGE_GATEWAY__CACHE__REDIS_LOCK_TTL_MS",
                "500",
                "cache.redis_lock_ttl_ms",
            ),
        ] {
            let err = Settings::load_from(None, env(&[(var, value)])).unwrap_err();
            assert_eq!(err.key, key, "{var}={value}: {err}");
            assert!(!err.to_string().contains("pw-SECRET"), "{err}");
        }
    }

    #[test]
    fn redacted_output_never_shows_secrets() {
        let s = Settings::load_from(
            None,
            env(&[
                ("FAL_KEY", "fal-very-secret"),
                ("IMAGE_GATEWAY__AUTH__API_KEYS", "sk-client-secret"),
            ]),
        )
        .unwrap();
        let text = s.to_redacted_toml();
        assert!(!text.contains("fal-very-secret"));
        assert!(!text.contains("sk-client-secret"));
        assert!(text.contains("[redacted]"));
        assert!(!format!("{s:?}").contains("secret"));
    }
}
