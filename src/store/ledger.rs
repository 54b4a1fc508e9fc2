//! Spend totals from the ledger, grouped by key, model or UTC day.

use super::{Record, Store, StoreError, on_pool};

/// What spend is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Model,
    Day,
}

impl GroupBy {
    pub const WORDS: &'static [&'static str] = &["key", "model", "day"];

    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "key" => Some(GroupBy::Key),
            "model" => Some(GroupBy::Model),
            "day" => Some(GroupBy::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }

    fn column(self) -> &'static str {
        match self {
            GroupBy::Key => "key_id",
            GroupBy::Model => "model",
            GroupBy::Day => "day",
        }
    }
}

/// Which ledger rows a report covers: `from <= created_at < to` (Unix
/// seconds), optionally one key's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendQuery {
    pub group_by: GroupBy,
    pub from: i64,
    pub to: i64,
    pub key_id: Option<String>,
}

/// One group's totals. `group` is `None` for spend without a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendRow {
    pub group: Option<String>,
    pub cost_micro_usd: u64,
    pub requests: u64,
    pub images: u64,
}

impl Store {
    /// Spend totals (settlements queued before the call included).
    pub async fn spend(&self, query: SpendQuery) -> Result<Vec<SpendRow>, StoreError> {
        self.flush_settlements().await;
        let pool = self.pool.clone();
        self.run(async move {
            let column = query.group_by.column();
            let key_filter = if query.key_id.is_some() {
                " AND key_id = $3"
            } else {
                ""
            };
            let sql = format!(
                "SELECT {column} AS grp, CAST(SUM(cost_micro_usd) AS BIGINT) AS cost, \
                 COUNT(*) AS requests, CAST(SUM(images) AS BIGINT) AS images FROM spend_ledger \
                 WHERE created_at >= $1 AND created_at < $2{key_filter} GROUP BY {column} ORDER BY {column}"
            );
            on_pool!(&pool, |p, d| {
                let sql = d.sql(&sql);
                let mut q = sqlx::query(&sql).bind(query.from).bind(query.to);
                if let Some(key) = &query.key_id {
                    q = q.bind(key);
                }
                let rows = q.fetch_all(p).await?;
                let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
                rows.iter()
                    .map(|r| {
                        Ok(SpendRow {
                            group: r.opt_text("grp")?,
                            cost_micro_usd: unsigned(r.int("cost")?),
                            requests: unsigned(r.int("requests")?),
                            images: unsigned(r.int("images")?),
                        })
                    })
                    .collect()
            })
        })
        .await
    }
}
