//! Start-up checks: every value that could fail later fails here instead,
//! with a message naming its key.

use std::net::SocketAddr;

use super::{BackendChoice, ConfigError, Settings};

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
        if self.backend == BackendChoice::Fal && self.fal.key.is_none() {
            return Err(ConfigError::new(
                "backend",
                "`fal` needs a fal API key: set FAL_KEY (or fal.key), or use `auto`/`local`",
            ));
        }
        // actix measures this against a clock refreshed every 500 ms, so
        // shorter values can expire before a prompt client finishes.
        if self.server.client_header_timeout_ms < 1000 {
            return Err(ConfigError::new(
                "server.client_header_timeout_ms",
                "must be at least 1000",
            ));
        }
        for (key, value) in self.must_be_positive() {
            positive(key, value)?;
        }
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
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(ConfigError::new("log.level", e.to_string()));
        }
        Ok(())
    }

    /// Values for which 0 means nothing sensible.
    fn must_be_positive(&self) -> [(&'static str, u64); 18] {
        let (server, fal) = (&self.server, &self.fal);
        [
            ("server.max_body_bytes", server.max_body_bytes as u64),
            ("server.max_prompt_chars", server.max_prompt_chars as u64),
            (
                "server.request_timeout_seconds",
                server.request_timeout_seconds,
            ),
            (
                "server.client_body_timeout_ms",
                server.client_body_timeout_ms,
            ),
            (
                "server.stream_keepalive_seconds",
                server.stream_keepalive_seconds,
            ),
            ("fal.poll_max_delay_ms", fal.poll_max_delay_ms),
            ("fal.retry_base_delay_ms", fal.retry_base_delay_ms),
            ("fal.retry_max_delay_ms", fal.retry_max_delay_ms),
            ("fal.connect_timeout_ms", fal.connect_timeout_ms),
            ("fal.call_timeout_seconds", fal.call_timeout_seconds),
            ("fal.max_response_bytes", fal.max_response_bytes as u64),
            ("cache.max_bytes", self.cache.max_bytes),
            ("cache.ttl_seconds", self.cache.ttl_seconds),
            ("cache.redis_timeout_ms", self.cache.redis_timeout_ms),
            ("cache.redis_lock_ttl_ms", self.cache.redis_lock_ttl_ms),
            ("files.ttl_seconds", self.files.ttl_seconds),
            ("files.max_bytes", self.files.max_bytes),
            (
                "limits.max_concurrent_jobs",
                self.limits.max_concurrent_jobs as u64,
            ),
        ]
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
