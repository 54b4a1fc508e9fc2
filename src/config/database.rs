//! The `[database]` section: where keys and the spend ledger live, and the
//! URL type that never prints its password.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A database URL whose credentials never appear in `Debug`, `Display` or
/// `Serialize` output: `postgres://[redacted]@db:5432/gateway`. A password
/// given as a query parameter hides the whole query.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
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

    /// The URL with any userinfo (and a query carrying a password) replaced
    /// by `[redacted]`.
    pub fn redacted(&self) -> String {
        let url = self.expose();
        let Some((scheme, rest)) = url.split_once("://") else {
            // `sqlite:relative/path.db` and the like carry no credentials;
            // anything else that is not a URL is shown as nothing.
            return if url.is_empty() || (url.starts_with("sqlite:") && !url.contains('@')) {
                url.to_owned()
            } else {
                "[redacted]".into()
            };
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rfind('@') {
            Some(at) => format!("[redacted]{}", &authority[at..]),
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) if query.contains("password") || query.contains("user") => {
                format!("{path}?[redacted]")
            }
            _ => tail.to_owned(),
        };
        format!("{scheme}://{authority}{tail}")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Keys, budgets and the spend ledger.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:5432/db` for several replicas (they
    /// share keys, budgets and the ledger); `sqlite:///path/file.db` for a
    /// file of your choosing. Empty: the embedded SQLite database
    /// `image-gateway.db` in `data_dir`. Its password is never printed.
    pub url: DatabaseUrl,
    /// Directory of the embedded SQLite database (created if missing), when
    /// `url` is empty.
    pub data_dir: String,
    /// Connections the gateway keeps to the database.
    pub max_connections: u32,
    /// Bound on connecting, and on waiting for a free connection.
    pub connect_timeout_ms: u64,
    /// How long a database key stays in memory after it was read, so a
    /// request with it needs no database round trip. Edits and revocations
    /// reach every replica at once regardless (PostgreSQL notifications,
    /// and a check of the key table's version every second).
    pub key_cache_ttl_seconds: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::default(),
            data_dir: "data".into(),
            max_connections: 8,
            connect_timeout_ms: 5_000,
            key_cache_ttl_seconds: 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_redacted_in_every_form() {
        for (url, shown) in [
            ("", ""),
            ("postgres://db:5432/gw", "postgres://db:5432/gw"),
            (
                "postgres://gw:pa@ss@db:5432/gw?sslmode=require",
                "postgres://[redacted]@db:5432/gw?sslmode=require",
            ),
            (
                "postgresql://gw@db/gw?password=pw&sslmode=require",
                "postgresql://[redacted]@db/gw?[redacted]",
            ),
            (
                "postgres://db/gw?password=pw",
                "postgres://db/gw?[redacted]",
            ),
            (
                "sqlite:///var/lib/gw/ledger.db",
                "sqlite:///var/lib/gw/ledger.db",
            ),
            ("sqlite:ledger.db", "sqlite:ledger.db"),
            ("host=db password=pw", "[redacted]"),
        ] {
            let u = DatabaseUrl::new(url);
            assert_eq!(u.redacted(), shown, "{url}");
            assert_eq!(u.to_string(), shown);
            assert_eq!(format!("{u:?}"), format!("{shown:?}"));
        }
        assert!(DatabaseUrl::new(" postgresql://x/y ").is_postgres());
        assert!(!DatabaseUrl::new("sqlite::memory:").is_postgres());
    }
}
