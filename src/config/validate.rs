//! Start-up checks: every value that could fail later fails here instead,
//! with a message naming its key.
//!
//! Every numeric setting has a row in [`RANGES`] (a test checks): its
//! allowed minimum and maximum, which `--check-config` and start-up enforce
//! and every message about that key states. The maxima keep each value
//! where the code using it cannot overflow or panic (a deadline past the
//! clock's end, a cache TTL over moka's limit, thousands of worker threads).

use std::net::SocketAddr;

use super::{BackendChoice, ConfigError, Settings};

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// The allowed values of one numeric setting, bounds included.
#[derive(Debug)]
pub(crate) struct Range {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
}

const fn range(key: &'static str, min: u64, max: u64) -> Range {
    Range { key, min, max }
}

/// Every numeric setting and its allowed values. Add a row with each new
/// numeric setting (`numeric_settings_all_have_a_range` fails otherwise).
pub(crate) const RANGES: &[Range] = &[
    // Threads: more than this is a typo, and actix refuses absurd counts by panicking.
    range("server.workers", 0, 1024),
    range("server.max_body_bytes", 1, GIB),
    range("server.max_prompt_chars", 1, 1_000_000),
    range("server.request_timeout_seconds", 1, DAY),
    // actix measures this against a clock refreshed every 500 ms, so
    // shorter values can expire before a prompt client finishes.
    range("server.client_header_timeout_ms", 1_000, 10 * MINUTE * 1000),
    range("server.client_body_timeout_ms", 1, HOUR * 1000),
    range("server.keep_alive_seconds", 0, HOUR),
    range("server.shutdown_grace_seconds", 0, HOUR),
    range("server.stream_keepalive_seconds", 1, HOUR),
    // Each costs memory (buffers) and a file descriptor.
    range("server.max_connections", 1, 1_000_000),
    // listen(2) takes an int; Linux caps it at net.core.somaxconn anyway.
    range("server.listen_backlog", 1, 65_535),
    range("server.client_write_timeout_seconds", 1, HOUR),
    range("fal.poll_initial_delay_ms", 0, MINUTE * 1000),
    range("fal.poll_max_delay_ms", 1, 10 * MINUTE * 1000),
    range("fal.max_retries", 0, 20),
    range("fal.retry_base_delay_ms", 1, MINUTE * 1000),
    range("fal.retry_max_delay_ms", 1, 10 * MINUTE * 1000),
    range("fal.connect_timeout_ms", 1, 5 * MINUTE * 1000),
    range("fal.call_timeout_seconds", 1, DAY),
    range("fal.retry_budget_seconds", 1, HOUR),
    range("fal.status_stream_idle_timeout_ms", 1, HOUR * 1000),
    range("fal.object_expiration_seconds", 0, 100 * 365 * DAY),
    range("fal.max_queue_length", 0, u32::MAX as u64),
    range("fal.max_response_bytes", 1, 4 * GIB),
    range("fal.pool_max_idle_per_host", 0, 65_536),
    range("cache.max_bytes", 1, TIB),
    range("cache.ttl_seconds", 1, 365 * DAY),
    range("cache.redis_timeout_ms", 1, MINUTE * 1000),
    range("cache.redis_lock_ttl_ms", 3, HOUR * 1000),
    range("cache.redis_wait_timeout_ms", 0, HOUR * 1000),
    range("files.ttl_seconds", 1, 365 * DAY),
    range("files.max_bytes", 1, TIB),
    range("local.delay_ms", 0, 10 * MINUTE * 1000),
    // tokio's semaphore holds at most usize::MAX >> 3 permits; a million is plenty.
    range("limits.max_concurrent_jobs", 1, 1_000_000),
    range("limits.max_queued_jobs", 0, 100_000_000),
    // At least one answer of a few large images.
    range("limits.max_memory_bytes", 16 * MIB, TIB),
    range("limits.memory_overcommit", 1, 1_000),
    range("limits.requests_per_minute", 0, u32::MAX as u64),
    range("limits.images_per_minute", 0, u32::MAX as u64),
    range("models.gone_skip_seconds", 1, DAY),
    // fal's start timeout must be more than one second.
    range("models.start_timeout_seconds", 2, HOUR),
    range("database.max_connections", 1, 1_000),
    range("database.connect_timeout_ms", 1, 10 * MINUTE * 1000),
    range("database.key_cache_ttl_seconds", 1, DAY),
];

/// Every setting that takes one word of a fixed set, and its words (the
/// documentation test lists them).
#[cfg(test)]
pub(crate) fn choices() -> Vec<(&'static str, &'static [&'static str])> {
    use super::{CacheMode, CacheScope, FalMode, LogFormat, QueuePriority, Successors};
    vec![
        ("backend", BackendChoice::WORDS),
        ("fal.mode", FalMode::WORDS),
        ("fal.queue_priority", QueuePriority::WORDS),
        ("cache.mode", CacheMode::WORDS),
        ("cache.scope", CacheScope::WORDS),
        ("log.format", LogFormat::WORDS),
        ("models.successors", Successors::WORDS),
    ]
}

/// The range declared for `key`, if it is numeric.
pub(crate) fn range_of(key: &str) -> Option<&'static Range> {
    RANGES.iter().find(|r| r.key == key)
}

impl Range {
    /// The unit the key's name ends with, spelled out (or empty).
    pub(crate) fn unit(&self) -> &'static str {
        match self.key.rsplit('_').next() {
            Some("seconds") => "seconds",
            Some("ms") => "milliseconds",
            Some("bytes") => "bytes",
            _ => "",
        }
    }

    /// `a whole number from 1 to 86400 (seconds)`
    pub(crate) fn describe(&self) -> String {
        let text = format!("a whole number from {} to {}", self.min, self.max);
        match self.unit() {
            "" => text,
            unit => format!("{text} ({unit})"),
        }
    }
}

/// Every leaf of the settings as (`section.key`, value); a list (the model
/// table) is one leaf.
fn leaves(settings: &Settings) -> Vec<(String, serde_json::Value)> {
    fn walk(prefix: &str, value: serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            leaf => out.push((prefix.to_owned(), leaf)),
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_json::to_value(settings) {
        walk("", value, &mut out);
    }
    out
}

/// Every setting's key, `backend` and `server.listen` alike.
pub(crate) fn setting_keys(settings: &Settings) -> Vec<String> {
    leaves(settings).into_iter().map(|(k, _)| k).collect()
}

/// Every numeric setting as (`section.key`, value).
pub(crate) fn numeric_settings(settings: &Settings) -> Vec<(String, Option<u64>)> {
    leaves(settings)
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::Number(n) => Some((k, n.as_u64())),
            _ => None,
        })
        .collect()
}

impl Settings {
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
        for host in &self.fal.download_hosts {
            check_host("fal.download_hosts", host)?;
        }
        for (key, value) in [
            ("fal.backup_queue_url", &self.fal.backup_queue_url),
            ("fal.backup_run_url", &self.fal.backup_run_url),
        ] {
            if !value.is_empty() {
                parse_http_url(key, value)?;
            }
        }
        if self.fal.object_expiration_seconds > 0
            && self.fal.object_expiration_seconds < self.cache.ttl_seconds
        {
            return Err(ConfigError::new(
                "fal.object_expiration_seconds",
                format!(
                    "must be 0 (fal's account setting) or at least cache.ttl_seconds ({}), or cached answers would link to expired files",
                    self.cache.ttl_seconds
                ),
            ));
        }
        if self.backend == BackendChoice::Fal && self.fal.key.is_none() {
            return Err(ConfigError::new(
                "backend",
                "`fal` needs a fal API key: set FAL_KEY (or fal.key), or use `auto`/`local`",
            ));
        }
        self.check_ranges()?;
        self.validate_redis()?;
        if self.files.ttl_seconds < self.cache.ttl_seconds {
            return Err(ConfigError::new(
                "files.ttl_seconds",
                format!(
                    "must be at least cache.ttl_seconds ({}), or cached answers would link to expired images",
                    self.cache.ttl_seconds
                ),
            ));
        }
        self.models.validate()?;
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
        self.validate_keys_and_database()?;
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(ConfigError::new("log.level", e.to_string()));
        }
        Ok(())
    }

    fn validate_keys_and_database(&self) -> Result<(), ConfigError> {
        if let Some(admin) = &self.auth.admin_key {
            let key = admin.expose().trim();
            if key.chars().count() < 16 || key.chars().any(char::is_whitespace) {
                return Err(ConfigError::new(
                    "auth.admin_key",
                    "must be at least 16 characters without spaces (it guards every key and budget); e.g. `openssl rand -hex 32`",
                ));
            }
            if self.auth.api_keys.iter().any(|k| k.expose() == key) {
                return Err(ConfigError::new(
                    "auth.admin_key",
                    "must differ from every client key in auth.api_keys",
                ));
            }
        }
        let url = &self.database.url;
        if url.is_set() && !url.is_postgres() && !url.expose().starts_with("sqlite:") {
            return Err(ConfigError::new(
                "database.url",
                format!(
                    "`{}` is neither a postgres:// nor a sqlite: URL (empty: the embedded SQLite database in database.data_dir)",
                    url.redacted()
                ),
            ));
        }
        if !url.is_set() && self.database.data_dir.trim().is_empty() {
            return Err(ConfigError::new(
                "database.data_dir",
                "must name a directory when database.url is empty",
            ));
        }
        Ok(())
    }

    fn validate_redis(&self) -> Result<(), ConfigError> {
        let c = &self.cache;
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
}

impl Settings {
    /// Every numeric setting within its [`RANGES`] row.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        for (key, value) in numeric_settings(self) {
            let Some(range) = range_of(&key) else {
                continue;
            };
            match value {
                Some(v) if (range.min..=range.max).contains(&v) => {}
                shown => {
                    let shown = shown.map_or_else(|| "the value".to_owned(), |v| format!("`{v}`"));
                    return Err(ConfigError::new(
                        &key,
                        format!("{shown} is out of range; allowed: {}", range.describe()),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn parse_listen(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse::<SocketAddr>().map_err(|_| {
        ConfigError::new(
            key,
            format!("`{value}` is not an address like 0.0.0.0:8080 or [::1]:8080"),
        )
    })
}

/// A bare host name or IP address (no scheme, port or path).
fn check_host(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let name = value.trim_end_matches('.').to_ascii_lowercase();
    let parsed = reqwest::Url::parse(&format!("http://{name}/"));
    match parsed {
        Ok(url) if url.host_str() == Some(name.as_str()) && url.port().is_none() => Ok(()),
        _ => Err(ConfigError::new(
            key,
            format!("`{value}` is not a bare host name like fal.media or an IP address"),
        )),
    }
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
