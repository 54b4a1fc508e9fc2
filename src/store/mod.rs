//! The database behind keys, budgets and the spend ledger: SQLite (the
//! embedded default, a file under `database.data_dir`) or PostgreSQL (for
//! replicas sharing one budget), through sqlx with runtime queries only.
//!
//! - [`keys`]: the key table (create, read, edit, revoke);
//! - [`budget`]: reserving a request's most possible cost, settling it to
//!   the real cost, releasing it, and expiring reservations of crashed
//!   replicas;
//! - [`ledger`]: spend totals;
//! - [`changes`]: the key table's version and PostgreSQL notifications, so
//!   every replica drops a changed key at once.
//!
//! Queries are written once in PostgreSQL's `$n` style and run unchanged on
//! SQLite as `?n`. Every query runs on the runtime the store was opened on
//! (the upstream runtime), whichever thread asks: a connection stays with
//! the runtime whose reactor it was registered with.
//!
//! Errors never carry the database URL or its password: sqlx's error is
//! reduced to its kind and the server's message.

use std::borrow::Cow;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};

use crate::config::DatabaseSettings;

pub mod budget;
pub mod changes;
pub mod keys;
pub mod ledger;
mod settle;

/// File name of the embedded database inside `database.data_dir`.
pub const SQLITE_FILE: &str = "image-gateway.db";

/// A database failure, safe to log and to show an operator.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Unavailable(String),
    /// The configuration cannot work (a bad URL, an unwritable directory).
    #[error("{0}")]
    Setup(String),
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(describe(&e))
    }
}

/// sqlx's error without anything from the URL: configuration errors can
/// quote it, so they are reduced to one fixed sentence.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(_) => "the database URL is not valid".into(),
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_owned(),
        },
        sqlx::Error::Io(io) => format!("I/O error: {}", io.kind()),
        sqlx::Error::Tls(_) => "TLS error talking to the database".into(),
        sqlx::Error::PoolTimedOut => "timed out waiting for a database connection".into(),
        sqlx::Error::PoolClosed => "the database pool is closed".into(),
        sqlx::Error::Protocol(_) => "database protocol error".into(),
        sqlx::Error::RowNotFound => "row not found".into(),
        sqlx::Error::ColumnDecode { index, .. } => format!("cannot decode column {index}"),
        sqlx::Error::Migrate(m) => format!("migration failed: {m}"),
        // The remaining kinds (decoding, column lookups, a crashed worker)
        // never quote connection settings.
        other => other.to_string(),
    }
}

/// Which SQL dialect a query runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// A query written with `$n` parameters, in this dialect (`?n` on SQLite,
    /// where `$n` would be a named parameter numbered by first appearance).
    pub fn sql(self, text: &str) -> Cow<'_, str> {
        if self == Dialect::Postgres || !text.contains('$') {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                out.push('?');
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Run `$body` with `$pool` bound to the concrete pool (the body is
/// compiled once per driver) and `$dialect` to its [`Dialect`].
macro_rules! on_pool {
    ($pool_enum:expr, |$pool:ident, $dialect:ident| $body:expr) => {
        match $pool_enum {
            $crate::store::Pool::Sqlite($pool) => {
                let $dialect = $crate::store::Dialect::Sqlite;
                $body
            }
            $crate::store::Pool::Postgres($pool) => {
                let $dialect = $crate::store::Dialect::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// Typed column access shared by both drivers' rows.
pub(crate) trait Record {
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
}

macro_rules! record_for {
    ($row:ty) => {
        impl Record for $row {
            fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(col)
            }
            fn text(&self, col: &str) -> Result<String, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(col)
            }
        }
    };
}
record_for!(SqliteRow);
record_for!(PgRow);

/// The migrations in `migrations/<dialect>/`, compiled into the binary.
#[derive(Debug)]
struct Embedded(Dialect);

const MIGRATIONS: &[(i64, &str, &str, &str)] = &[(
    1,
    "keys and spend",
    include_str!("../../migrations/sqlite/0001_keys_and_spend.sql"),
    include_str!("../../migrations/postgres/0001_keys_and_spend.sql"),
)];

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sqlite, postgres)| {
                let sql = match self.0 {
                    Dialect::Sqlite => sqlite,
                    Dialect::Postgres => postgres,
                };
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// The open database: a pool, and the runtime every query runs on.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: Pool,
    runtime: tokio::runtime::Handle,
    /// Settlements queue here for the ledger writer ([`settle`]).
    settlements: settle::Settlements,
    /// Where it is, for logs: a file path, or the URL without credentials.
    location: String,
}

impl Store {
    /// Open (creating the SQLite file and its directory when needed) and
    /// migrate. Call it on the runtime the store will run its queries on.
    pub async fn open(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        let runtime = tokio::runtime::Handle::current();
        let timeout = Duration::from_millis(settings.connect_timeout_ms);
        let (pool, location) = if settings.url.is_postgres() {
            let options = PgConnectOptions::from_str(settings.url.expose())
                .map_err(|_| {
                    StoreError::Setup(format!(
                        "database.url `{}` is not a valid PostgreSQL URL",
                        settings.url.redacted()
                    ))
                })?
                .application_name("image-gateway")
                .disable_statement_logging();
            let pool = PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(timeout)
                .connect_with(options)
                .await
                .map_err(|e| {
                    StoreError::Setup(format!(
                        "cannot connect to database.url `{}`: {}",
                        settings.url.redacted(),
                        describe(&e)
                    ))
                })?;
            (Pool::Postgres(pool), settings.url.redacted())
        } else {
            let options = if settings.url.is_set() {
                SqliteConnectOptions::from_str(settings.url.expose()).map_err(|_| {
                    StoreError::Setup(format!(
                        "database.url `{}` is not a valid sqlite: URL",
                        settings.url.redacted()
                    ))
                })?
            } else {
                let dir = std::path::Path::new(settings.data_dir.trim());
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Setup(format!(
                        "database.data_dir `{}` cannot be created: {e}",
                        dir.display()
                    ))
                })?;
                SqliteConnectOptions::new().filename(dir.join(SQLITE_FILE))
            };
            let url = settings.url.expose();
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let location = match options.get_filename().to_str() {
                _ if in_memory => "memory (gone when the gateway stops)".to_owned(),
                Some(path) => path.to_owned(),
                None => "an unnamed file".to_owned(),
            };
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(timeout.max(Duration::from_secs(5)))
                .foreign_keys(true)
                .disable_statement_logging();
            // An in-memory database lives as long as one connection to it:
            // keep exactly one, for good.
            let pool_options = if in_memory {
                SqlitePoolOptions::new()
                    .min_connections(1)
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
            } else {
                SqlitePoolOptions::new().max_connections(settings.max_connections)
            };
            let pool = pool_options
                .acquire_timeout(timeout)
                .connect_with(options)
                .await
                .map_err(|e| {
                    StoreError::Setup(format!(
                        "cannot open the SQLite database {location}: {}",
                        describe(&e)
                    ))
                })?;
            (Pool::Sqlite(pool), location)
        };
        let store = Store {
            settlements: settle::start(pool.clone(), &runtime, settle::LINGER, settle::MAX_LATER),
            pool,
            runtime,
            location,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let setup = |e: sqlx::migrate::MigrateError| {
            StoreError::Setup(format!(
                "cannot migrate the database {}: {}",
                self.location,
                describe(&sqlx::Error::Migrate(Box::new(e)))
            ))
        };
        on_pool!(&self.pool, |pool, dialect| {
            let migrator = Migrator::new(Embedded(dialect)).await.map_err(setup)?;
            migrator.run(pool).await.map_err(setup)
        })
    }

    pub fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres(_) => Dialect::Postgres,
        }
    }

    /// A file path or the URL without credentials.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Run `work` on the store's runtime and wait for it.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        match self.runtime.spawn(work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(
                "the database task did not finish".into(),
            )),
        }
    }

    /// Close every connection (at shutdown, after the last query).
    pub async fn close(&self) {
        let pool = self.pool.clone();
        let _ = self
            .run(async move {
                on_pool!(&pool, |p, _d| p.close().await);
                Ok(())
            })
            .await;
    }
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_parameters_become_numbered_sqlite_parameters() {
        let q = "SELECT $2, $1 FROM t WHERE a = $10 AND b = '$x'";
        assert_eq!(
            Dialect::Sqlite.sql(q),
            "SELECT ?2, ?1 FROM t WHERE a = ?10 AND b = '$x'"
        );
        assert_eq!(Dialect::Postgres.sql(q), q);
    }

    #[test]
    fn both_dialects_have_every_migration() {
        for (version, _, sqlite, postgres) in MIGRATIONS {
            assert!(*version > 0);
            for table in [
                "api_keys",
                "budget_reservations",
                "spend_ledger",
                "key_changes",
            ] {
                assert!(sqlite.contains(&format!("CREATE TABLE {table}")), "{table}");
                assert!(
                    postgres.contains(&format!("CREATE TABLE {table}")),
                    "{table}"
                );
            }
        }
    }
}
