//! Values that must never be printed: secrets and URLs that carry them.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

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

/// A URL with credentials (Redis, the database) that never appear in
/// `Debug`, `Display` or `Serialize` output. Every place the gateway prints
/// such a URL (the start-up log, `--check-config`, the "Redis is
/// unreachable" warning, start-up and database errors) goes through
/// [`SecretUrl::redacted`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

/// `cache.redis_url`.
pub type RedisUrl = SecretUrl;
/// `database.url`.
pub type DatabaseUrl = SecretUrl;

/// Query parameters that carry nothing secret and help to read the URL.
const PLAIN_QUERY_KEYS: [&str; 3] = ["db", "protocol", "sslmode"];

impl SecretUrl {
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
    /// Whether it names a PostgreSQL server (`postgres://`, `postgresql://`).
    pub fn is_postgres(&self) -> bool {
        let url = self.expose();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }
    /// The URL with every place a credential can hide replaced by
    /// `[redacted]`, for every form the redis crate and sqlx read and for
    /// malformed ones alike:
    /// - the userinfo of `redis://user:pass@host` (TCP URLs), found at the
    ///   *last* `@`, so a password with an unencoded `/`, `?`, `#` or `@`
    ///   is covered whole;
    /// - every query value but `db`, `protocol` and `sslmode`
    ///   (`unix:///path?pass=...` and `&user=...` for Redis sockets,
    ///   `?password=...` for PostgreSQL);
    /// - a fragment other than `#insecure` (a password cut at an unencoded `#`).
    ///
    /// Scheme, host, port, database and socket or file path stay readable.
    pub fn redacted(&self) -> String {
        let url = self.expose();
        let Some((scheme, rest)) = url.split_once("://") else {
            // `sqlite:relative/path.db` and `sqlite::memory:` carry no
            // credentials; anything else that is not a URL we can take
            // apart is shown as nothing.
            return if url.is_empty() || (url.starts_with("sqlite:") && !url.contains('@')) {
                url.to_owned()
            } else {
                "[redacted]".into()
            };
        };
        let mut out = format!("{scheme}://");
        let rest = match rest.rfind('@') {
            Some(at) => {
                out.push_str("[redacted]@");
                &rest[at + 1..]
            }
            None => rest,
        };
        let (rest, fragment) = match rest.split_once('#') {
            Some((before, fragment)) => (before, Some(fragment)),
            None => (rest, None),
        };
        let (location, query) = match rest.split_once('?') {
            Some((before, query)) => (before, Some(query)),
            None => (rest, None),
        };
        out.push_str(location);
        if let Some(query) = query {
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, value))
                        if PLAIN_QUERY_KEYS.contains(&key.to_ascii_lowercase().as_str()) =>
                    {
                        format!("{key}={value}")
                    }
                    Some((key, _))
                        if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                    {
                        format!("{key}=[redacted]")
                    }
                    _ => "[redacted]".into(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        match fragment {
            Some("insecure") => out.push_str("#insecure"),
            Some(_) => out.push_str("#[redacted]"),
            None => {}
        }
        out
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every credential form the redis crate (1.8) reads, and malformed
    /// URLs whose password would otherwise show.
    const FORMS: &[(&str, &str)] = &[
        (
            "redis://user:pw-SECRET-1@redis:6379/0",
            "redis://[redacted]@redis:6379/0",
        ),
        (
            "redis://:pw-SECRET-2@10.0.0.5:6380",
            "redis://[redacted]@10.0.0.5:6380",
        ),
        ("redis://pw-SECRET-3@redis", "redis://[redacted]@redis"),
        (
            "redis://:pw%2FSECRET%40-4@redis/1",
            "redis://[redacted]@redis/1",
        ),
        (
            "redis://redis:6379/0?password=pw-SECRET-5",
            "redis://redis:6379/0?password=[redacted]",
        ),
        (
            "unix:///run/redis.sock?pass=pw-SECRET-6",
            "unix:///run/redis.sock?pass=[redacted]",
        ),
        (
            "unix:///run/redis.sock?db=2&user=bob-SECRET-7&pass=pw-SECRET-7",
            "unix:///run/redis.sock?db=2&user=[redacted]&pass=[redacted]",
        ),
        (
            "redis+unix:///run/redis.sock?pass=pw-SECRET-8&protocol=resp3",
            "redis+unix:///run/redis.sock?pass=[redacted]&protocol=resp3",
        ),
        (
            "valkey+unix:///run/valkey.sock?pass=pw-SECRET-9",
            "valkey+unix:///run/valkey.sock?pass=[redacted]",
        ),
        (
            "unix://:pw-SECRET-10@/run/redis.sock",
            "unix://[redacted]@/run/redis.sock",
        ),
        // Unencoded `/`, `?`, `#` and `@` inside the password.
        (
            "redis://:pw/SECRET/11@redis:6379",
            "redis://[redacted]@redis:6379",
        ),
        (
            "redis://:pw?SECRET?12@redis:6379",
            "redis://[redacted]@redis:6379",
        ),
        (
            "redis://:pw#SECRET#13@redis:6379",
            "redis://[redacted]@redis:6379",
        ),
        (
            "redis://u:pw@SECRET@14@redis:6379/3",
            "redis://[redacted]@redis:6379/3",
        ),
        (
            "unix:///run/redis.sock?pass=pw#SECRET-15",
            "unix:///run/redis.sock?pass=[redacted]#[redacted]",
        ),
        (
            "unix:///run/redis.sock?pass=pw&SECRET-16",
            "unix:///run/redis.sock?pass=[redacted]&[redacted]",
        ),
        (
            "rediss://:pw-SECRET-17@redis:6380/#insecure",
            "rediss://[redacted]@redis:6380/#insecure",
        ),
        ("pw-SECRET-18", "[redacted]"),
        (
            "valkey://default:pw-SECRET-19@valkey",
            "valkey://[redacted]@valkey",
        ),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("", ""),
    ];

    #[test]
    fn every_credential_form_is_redacted_and_the_rest_kept() {
        for (url, _) in FORMS {
            let u = RedisUrl::new(*url);
            for shown in [
                u.redacted(),
                format!("{u}"),
                format!("{u:?}"),
                toml::Value::try_from(&u).unwrap().to_string(),
            ] {
                assert!(!shown.contains("SECRET"), "{url} shown as {shown}");
            }
        }
        for (url, expected) in FORMS {
            assert_eq!(RedisUrl::new(*url).redacted(), *expected, "{url}");
        }
    }

    #[test]
    fn the_redis_crate_reads_these_forms_credentials_where_redaction_hides_them() {
        // The forms above are real: the client library takes a password
        // from each of these places.
        for (url, password) in [
            ("redis://user:pw-SECRET-1@redis:6379/0", "pw-SECRET-1"),
            ("redis://:pw%2FSECRET%40-4@redis/1", "pw/SECRET@-4"),
            ("unix:///run/redis.sock?pass=pw-SECRET-6", "pw-SECRET-6"),
            (
                "redis+unix:///run/redis.sock?pass=pw-SECRET-8",
                "pw-SECRET-8",
            ),
        ] {
            let info = redis::IntoConnectionInfo::into_connection_info(url).unwrap();
            assert_eq!(info.redis_settings().password(), Some(password), "{url}");
        }
    }
}
