//! The `[database]` section: where keys and the spend ledger live.

use serde::{Deserialize, Serialize};

pub use super::secret::DatabaseUrl;

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
                "postgresql://[redacted]@db/gw?password=[redacted]&sslmode=require",
            ),
            (
                "postgres://db/gw?password=pw",
                "postgres://db/gw?password=[redacted]",
            ),
            // An unencoded `/` in the password: the userinfo ends at the
            // last `@`, not at the first `/`.
            ("postgres://gw:pa/ss@db/gw", "postgres://[redacted]@db/gw"),
            ("postgres://gw:pa?ss@db/gw", "postgres://[redacted]@db/gw"),
            (
                "sqlite:///var/lib/gw/ledger.db",
                "sqlite:///var/lib/gw/ledger.db",
            ),
            ("sqlite:ledger.db", "sqlite:ledger.db"),
            ("sqlite::memory:", "sqlite::memory:"),
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
