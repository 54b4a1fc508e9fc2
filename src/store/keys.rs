//! The key table: client keys made by the admin API or the CLI. A key's
//! secret (`sk-...`) is shown once when it is made; the table keeps only its
//! SHA-256. Keys are never deleted: revoking stamps `revoked_at`, so the
//! ledger always names a key that exists and a revoked key cannot come back.

use base64::Engine;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Dialect, Pool, Record, Store, StoreError, now, on_pool};

/// The period a key's budget covers; spend starts from zero at each new
/// one (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// The key's whole life.
    #[default]
    Total,
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
}

impl BudgetPeriod {
    pub const WORDS: &'static [&'static str] = &["total", "day", "month"];

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Total => "total",
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }

    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "total" => Some(BudgetPeriod::Total),
            "day" => Some(BudgetPeriod::Day),
            "month" => Some(BudgetPeriod::Month),
            _ => None,
        }
    }

    /// Unix seconds at which the period holding `at` began (0 for `total`).
    pub fn start(self, at: i64) -> i64 {
        let starts = PeriodStarts::at(at);
        match self {
            BudgetPeriod::Total => 0,
            BudgetPeriod::Day => starts.day,
            BudgetPeriod::Month => starts.month,
        }
    }
}

/// The start of the current UTC day and month, which queries pick from by
/// each key's own period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeriodStarts {
    pub day: i64,
    pub month: i64,
}

impl PeriodStarts {
    pub fn at(at: i64) -> Self {
        let date = OffsetDateTime::from_unix_timestamp(at)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .date();
        let midnight = |d: time::Date| d.midnight().assume_utc().unix_timestamp();
        Self {
            day: midnight(date),
            month: midnight(date.replace_day(1).unwrap_or(date)),
        }
    }
}

/// SQL for the start of a key row's current period, from `$day` and
/// `$month` parameters.
pub(crate) fn current_period_sql(day: &str, month: &str) -> String {
    format!("(CASE budget_period WHEN 'day' THEN {day} WHEN 'month' THEN {month} ELSE 0 END)")
}

/// One key as stored (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// The secret's SHA-256.
    pub secret_sha256: [u8; 32],
    /// The secret's first characters, to recognise it in a list.
    pub key_prefix: String,
    /// Model ids it may use; `None`: every model.
    pub models: Option<Vec<String>>,
    pub budget_micro_usd: Option<u64>,
    pub budget_period: BudgetPeriod,
    pub requests_per_minute: Option<u32>,
    pub images_per_minute: Option<u32>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub revoked_at: Option<i64>,
    pub period_start: i64,
    pub spent_micro_usd: u64,
    pub reserved_micro_usd: u64,
}

impl KeyRecord {
    /// Settled spend in the period holding `at`.
    pub fn spent_in_period(&self, at: i64) -> u64 {
        if self.period_start == self.budget_period.start(at) {
            self.spent_micro_usd
        } else {
            0
        }
    }

    pub fn is_expired(&self, at: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= at)
    }

    pub fn allows_model(&self, model_id: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|id| id == model_id))
    }
}

const COLUMNS: &str = "id, name, secret_sha256, key_prefix, models, budget_micro_usd, budget_period, \
    requests_per_minute, images_per_minute, expires_at, created_at, updated_at, revoked_at, \
    period_start, spent_micro_usd, reserved_micro_usd";

fn from_row(r: &impl Record) -> Result<KeyRecord, StoreError> {
    let bad = |what: &str| StoreError::Unavailable(format!("the key table holds a bad {what}"));
    let mut secret_sha256 = [0u8; 32];
    hex::decode_to_slice(r.text("secret_sha256")?, &mut secret_sha256)
        .map_err(|_| bad("secret hash"))?;
    let models = match r.opt_text("models")? {
        Some(json) => Some(serde_json::from_str(&json).map_err(|_| bad("model list"))?),
        None => None,
    };
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    let limit = |v: Option<i64>| v.map(|v| u32::try_from(v).unwrap_or(u32::MAX));
    Ok(KeyRecord {
        id: r.text("id")?,
        name: r.text("name")?,
        secret_sha256,
        key_prefix: r.text("key_prefix")?,
        models,
        budget_micro_usd: r.opt_int("budget_micro_usd")?.map(unsigned),
        budget_period: BudgetPeriod::parse(&r.text("budget_period")?)
            .ok_or_else(|| bad("budget period"))?,
        requests_per_minute: limit(r.opt_int("requests_per_minute")?),
        images_per_minute: limit(r.opt_int("images_per_minute")?),
        expires_at: r.opt_int("expires_at")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        revoked_at: r.opt_int("revoked_at")?,
        period_start: r.int("period_start")?,
        spent_micro_usd: unsigned(r.int("spent_micro_usd")?),
        reserved_micro_usd: unsigned(r.int("reserved_micro_usd")?),
    })
}

/// What a new key is made with.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    pub name: String,
    pub models: Option<Vec<String>>,
    pub budget_micro_usd: Option<u64>,
    pub budget_period: BudgetPeriod,
    pub requests_per_minute: Option<u32>,
    pub images_per_minute: Option<u32>,
    pub expires_at: Option<i64>,
}

/// An edit: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub models: Option<Option<Vec<String>>>,
    pub budget_micro_usd: Option<Option<u64>>,
    pub budget_period: Option<BudgetPeriod>,
    pub requests_per_minute: Option<Option<u32>>,
    pub images_per_minute: Option<Option<u32>>,
    pub expires_at: Option<Option<i64>>,
}

impl KeyPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.models.is_none()
            && self.budget_micro_usd.is_none()
            && self.budget_period.is_none()
            && self.requests_per_minute.is_none()
            && self.images_per_minute.is_none()
            && self.expires_at.is_none()
    }
}

/// A new secret: `sk-` and 256 random bits, URL-safe base64.
fn new_secret() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|_| StoreError::Unavailable("no randomness for a new key".into()))?;
    Ok(format!(
        "sk-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A new key id: `key_` and 96 random bits in hex (fits fal's tag values).
fn new_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes)
        .map_err(|_| StoreError::Unavailable("no randomness for a new key".into()))?;
    Ok(format!("key_{}", hex::encode(bytes)))
}

/// SHA-256 of a presented secret, as the table keeps it.
pub fn secret_digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn models_json(models: &Option<Vec<String>>) -> Option<String> {
    models
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()))
}

/// The statements that tell every replica the key table changed: a new
/// version, and on PostgreSQL a notification (sent at commit).
pub(crate) const CHANNEL: &str = "image_gateway_keys";

macro_rules! mark_changed {
    ($dialect:expr, $tx:expr) => {{
        sqlx::query("UPDATE key_changes SET version = version + 1 WHERE id = 1")
            .execute(&mut *$tx)
            .await?;
        if $dialect == Dialect::Postgres {
            sqlx::query(&format!("SELECT pg_notify('{CHANNEL}', '')"))
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

impl Store {
    /// Make a key; returns it with its secret, which is not kept.
    pub async fn create_key(&self, new: NewKey) -> Result<(KeyRecord, String), StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let secret = new_secret()?;
            let id = new_id()?;
            let at = now();
            let digest = hex::encode(secret_digest(secret.as_bytes()));
            let prefix: String = secret.chars().take(7).collect();
            let models = models_json(&new.models);
            let period_start = new.budget_period.start(at);
            on_pool!(&pool, |p, d| {
                let mut tx = p.begin().await?;
                sqlx::query(&d.sql(
                    "INSERT INTO api_keys (id, name, secret_sha256, key_prefix, models, budget_micro_usd, \
                     budget_period, requests_per_minute, images_per_minute, expires_at, created_at, \
                     updated_at, period_start) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12)",
                ))
                .bind(&id)
                .bind(&new.name)
                .bind(&digest)
                .bind(&prefix)
                .bind(models)
                .bind(new.budget_micro_usd.map(|b| b as i64))
                .bind(new.budget_period.as_str())
                .bind(new.requests_per_minute.map(i64::from))
                .bind(new.images_per_minute.map(i64::from))
                .bind(new.expires_at)
                .bind(at)
                .bind(period_start)
                .execute(&mut *tx)
                .await?;
                mark_changed!(d, tx);
                tx.commit().await?;
            });
            let record = get(&pool, &id).await?.ok_or(StoreError::NotFound)?;
            Ok((record, secret))
        })
        .await
    }

    /// A key with its spend (settlements queued before the call included).
    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.flush_settlements().await;
        let (pool, id) = (self.pool.clone(), id.to_owned());
        self.run(async move { get(&pool, &id).await }).await
    }

    /// The key whose secret has this SHA-256, revoked or not.
    pub async fn key_by_digest(&self, digest: [u8; 32]) -> Result<Option<KeyRecord>, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            on_pool!(&pool, |p, d| {
                let row = sqlx::query(&d.sql(&format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE secret_sha256 = $1"
                )))
                .bind(hex::encode(digest))
                .fetch_optional(p)
                .await?;
                row.as_ref().map(from_row).transpose()
            })
        })
        .await
    }

    /// Every key, oldest first (settlements queued before the call included).
    pub async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.flush_settlements().await;
        let pool = self.pool.clone();
        self.run(async move {
            on_pool!(&pool, |p, _d| {
                let rows = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id"
                ))
                .fetch_all(p)
                .await?;
                rows.iter().map(from_row).collect()
            })
        })
        .await
    }

    /// Whether any key was ever made (revoked ones count: revoking the last
    /// key must not open the gateway).
    pub async fn has_keys(&self) -> Result<bool, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            on_pool!(&pool, |p, _d| {
                let row = sqlx::query("SELECT COUNT(*) AS n FROM api_keys")
                    .fetch_one(p)
                    .await?;
                Ok(row.int("n")? > 0)
            })
        })
        .await
    }

    /// Apply an edit; `None` when there is no such key. A new budget period
    /// counts the spend already in the ledger for the period now running.
    pub async fn update_key(
        &self,
        id: &str,
        patch: KeyPatch,
    ) -> Result<Option<KeyRecord>, StoreError> {
        // A budget set now must count spend already made.
        self.flush_settlements().await;
        let (pool, id) = (self.pool.clone(), id.to_owned());
        self.run(async move {
            let at = now();
            on_pool!(&pool, |p, d| {
                let mut sets: Vec<String> = vec!["updated_at = $2".into()];
                let mut n = 2;
                let mut next = || {
                    n += 1;
                    format!("${n}")
                };
                let name = patch.name.as_ref().map(|v| (format!("name = {}", next()), v));
                let models = patch
                    .models
                    .as_ref()
                    .map(|v| (format!("models = {}", next()), models_json(v)));
                let budget = patch
                    .budget_micro_usd
                    .map(|v| (format!("budget_micro_usd = {}", next()), v.map(|b| b as i64)));
                let rpm = patch.requests_per_minute.map(|v| {
                    (format!("requests_per_minute = {}", next()), v.map(i64::from))
                });
                let ipm = patch
                    .images_per_minute
                    .map(|v| (format!("images_per_minute = {}", next()), v.map(i64::from)));
                let expires = patch
                    .expires_at
                    .map(|v| (format!("expires_at = {}", next()), v));
                let period = patch.budget_period.map(|v| {
                    let (pp, start) = (next(), next());
                    (
                        format!(
                            "budget_period = {pp}, period_start = {start}, spent_micro_usd = \
                             (SELECT COALESCE(CAST(SUM(cost_micro_usd) AS BIGINT), 0) FROM spend_ledger \
                             WHERE key_id = $1 AND created_at >= {start})"
                        ),
                        v,
                    )
                });
                for set in [
                    name.as_ref().map(|x| &x.0),
                    models.as_ref().map(|x| &x.0),
                    budget.as_ref().map(|x| &x.0),
                    rpm.as_ref().map(|x| &x.0),
                    ipm.as_ref().map(|x| &x.0),
                    expires.as_ref().map(|x| &x.0),
                    period.as_ref().map(|x| &x.0),
                ]
                .into_iter()
                .flatten()
                {
                    sets.push(set.clone());
                }
                let sql = format!("UPDATE api_keys SET {} WHERE id = $1", sets.join(", "));
                let sql = d.sql(&sql);
                let mut q = sqlx::query(&sql).bind(&id).bind(at);
                if let Some((_, v)) = name {
                    q = q.bind(v.clone());
                }
                if let Some((_, v)) = models {
                    q = q.bind(v);
                }
                if let Some((_, v)) = budget {
                    q = q.bind(v);
                }
                if let Some((_, v)) = rpm {
                    q = q.bind(v);
                }
                if let Some((_, v)) = ipm {
                    q = q.bind(v);
                }
                if let Some((_, v)) = expires {
                    q = q.bind(v);
                }
                if let Some((_, v)) = period {
                    q = q.bind(v.as_str()).bind(v.start(at));
                }
                let mut tx = p.begin().await?;
                let done = q.execute(&mut *tx).await?;
                if done.rows_affected() == 0 {
                    return Ok(None);
                }
                mark_changed!(d, tx);
                tx.commit().await?;
            });
            get(&pool, &id).await
        })
        .await
    }

    /// Revoke a key at once (idempotent); `None` when there is no such key.
    pub async fn revoke_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let (pool, id) = (self.pool.clone(), id.to_owned());
        self.run(async move {
            let at = now();
            on_pool!(&pool, |p, d| {
                let mut tx = p.begin().await?;
                let done = sqlx::query(&d.sql(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2), updated_at = $2 WHERE id = $1",
                ))
                .bind(&id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Ok(None);
                }
                mark_changed!(d, tx);
                tx.commit().await?;
            });
            get(&pool, &id).await
        })
        .await
    }
}

pub(crate) async fn get(pool: &Pool, id: &str) -> Result<Option<KeyRecord>, StoreError> {
    on_pool!(pool, |p, d| {
        let row = sqlx::query(&d.sql(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1")))
            .bind(id)
            .fetch_optional(p)
            .await?;
        row.as_ref().map(from_row).transpose()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_utc_midnight_and_the_first_of_the_month() {
        // 2026-12-15T13:45:10Z
        let at = 1_797_342_310;
        assert_eq!(BudgetPeriod::Total.start(at), 0);
        assert_eq!(BudgetPeriod::Day.start(at), 1_797_292_800); // 2026-12-15T00:00Z
        assert_eq!(BudgetPeriod::Month.start(at), 1_796_083_200); // 2026-12-01T00:00Z
        for word in BudgetPeriod::WORDS {
            assert_eq!(BudgetPeriod::parse(word).unwrap().as_str(), *word);
        }
        assert_eq!(BudgetPeriod::parse("week"), None);
    }

    #[test]
    fn secrets_and_ids_are_random_and_well_formed() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("sk-") && a.len() == 46, "{a}");
        let id = new_id().unwrap();
        assert!(id.starts_with("key_") && id.len() == 28, "{id}");
        assert!(id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    }
}
