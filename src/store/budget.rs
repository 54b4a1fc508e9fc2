//! Budgets that hold under concurrency, on one replica or many sharing
//! PostgreSQL.
//!
//! Before an upstream job, the most the request could cost is *reserved*:
//! one conditional `UPDATE` of the key's row adds it to the key's reserved
//! sum only if the key is live (not revoked, not expired) and its settled
//! spend in the current period plus everything reserved plus this request
//! stays within the budget. The database evaluates that condition on the
//! row it locks (PostgreSQL re-checks it on the newest row version; SQLite
//! runs one writer at a time), so two requests can never both take the last
//! dollar. A reservation row records the amount with an expiry, so a
//! replica that crashes between reserving and settling holds budget only
//! until [`Store::expire_reservations`] runs after the expiry.
//!
//! On completion the reservation *settles*: it is deleted, the key's
//! reserved sum drops by its amount, the real cost is added to the key's
//! spend and a ledger row written, in one transaction. On failure it is
//! *released*: deleted and dropped from the reserved sum, nothing spent.

use super::keys::{PeriodStarts, current_period_sql};
use super::settle::{Done, Pending, Queued, Refused};
use super::{Record, Store, StoreError, now, on_pool};

/// A held reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub id: String,
    pub key_id: String,
    pub amount_micro_usd: u64,
}

/// Why a reservation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such key.
    Unknown,
    Revoked,
    Expired,
    /// The request's most possible cost does not fit what is left.
    OverBudget {
        budget_micro_usd: u64,
        spent_micro_usd: u64,
        reserved_micro_usd: u64,
    },
}

/// One generation that reached the backend and succeeded, for the ledger.
#[derive(Clone, Debug, PartialEq)]
pub struct Charge {
    /// A database key's id, `cfg-<hex>` for a configured key, `None` for a
    /// caller without a key.
    pub key_id: Option<String>,
    pub model: String,
    pub endpoint: String,
    pub images: u32,
    pub cost_micro_usd: u64,
    /// fal's `X-Fal-Billable-Units`, summed over the request's jobs.
    pub billable_units: Option<f64>,
    pub request_id: Option<String>,
}

pub(super) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `reserved_micro_usd - $n`, never below zero, in both dialects.
pub(super) fn minus_sql(n: &str) -> String {
    format!("CASE WHEN reserved_micro_usd > {n} THEN reserved_micro_usd - {n} ELSE 0 END")
}

impl Store {
    /// Reserve `amount` against `key_id`'s budget for `ttl_seconds`.
    /// Reservations of crashed replicas that stand in the way are expired
    /// first and the reservation tried again.
    pub async fn reserve(
        &self,
        key_id: &str,
        amount_micro_usd: u64,
        ttl_seconds: u64,
    ) -> Result<Result<Reservation, Refusal>, StoreError> {
        let first = self
            .reserve_once(key_id, amount_micro_usd, ttl_seconds)
            .await?;
        match first {
            Err(Refusal::OverBudget {
                reserved_micro_usd, ..
            }) if reserved_micro_usd > 0 => {
                if self.expire_reservations().await? > 0 {
                    return self
                        .reserve_once(key_id, amount_micro_usd, ttl_seconds)
                        .await;
                }
                Ok(first)
            }
            other => Ok(other),
        }
    }

    async fn reserve_once(
        &self,
        key_id: &str,
        amount_micro_usd: u64,
        ttl_seconds: u64,
    ) -> Result<Result<Reservation, Refusal>, StoreError> {
        let (pool, key_id) = (self.pool.clone(), key_id.to_owned());
        self.run(async move {
            let at = now();
            let starts = PeriodStarts::at(at);
            let mut id_bytes = [0u8; 16];
            getrandom::fill(&mut id_bytes)
                .map_err(|_| StoreError::Unavailable("no randomness for a reservation".into()))?;
            let id = format!("res_{}", hex::encode(id_bytes));
            let current = current_period_sql("$3", "$4");
            let spent_now =
                format!("(CASE WHEN period_start = {current} THEN spent_micro_usd ELSE 0 END)");
            let update = format!(
                "UPDATE api_keys SET spent_micro_usd = {spent_now}, period_start = {current}, \
                 reserved_micro_usd = reserved_micro_usd + $2 \
                 WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $5) \
                 AND (budget_micro_usd IS NULL OR {spent_now} + reserved_micro_usd + $2 <= budget_micro_usd) \
                 RETURNING id"
            );
            let reserved = on_pool!(&pool, |p, d| {
                let mut tx = p.begin().await?;
                let row = sqlx::query(&d.sql(&update))
                    .bind(&key_id)
                    .bind(as_i64(amount_micro_usd))
                    .bind(starts.day)
                    .bind(starts.month)
                    .bind(at)
                    .fetch_optional(&mut *tx)
                    .await?;
                if row.is_some() {
                    sqlx::query(&d.sql(
                        "INSERT INTO budget_reservations (id, key_id, amount_micro_usd, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    ))
                    .bind(&id)
                    .bind(&key_id)
                    .bind(as_i64(amount_micro_usd))
                    .bind(at)
                    .bind(at.saturating_add(i64::try_from(ttl_seconds).unwrap_or(i64::MAX)))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    true
                } else {
                    tx.rollback().await?;
                    false
                }
            });
            if reserved {
                return Ok(Ok(Reservation {
                    id,
                    key_id,
                    amount_micro_usd,
                }));
            }
            // Refused: say why, from the row as it is now.
            let Some(key) = super::keys::get(&pool, &key_id).await? else {
                return Ok(Err(Refusal::Unknown));
            };
            Ok(Err(if key.revoked_at.is_some() {
                Refusal::Revoked
            } else if key.is_expired(at) {
                Refusal::Expired
            } else {
                Refusal::OverBudget {
                    budget_micro_usd: key.budget_micro_usd.unwrap_or(0),
                    spent_micro_usd: key.spent_in_period(at),
                    reserved_micro_usd: key.reserved_micro_usd,
                }
            }))
        })
        .await
    }

    /// Settle a request: drop its reservation (if it had one), add the real
    /// cost to its key's spend and write the ledger row, atomically; written
    /// together with the settlements queued beside it (see `settle`).
    pub async fn settle(
        &self,
        reservation: Option<&Reservation>,
        charge: Charge,
    ) -> Result<(), StoreError> {
        let (done, written) = tokio::sync::oneshot::channel();
        let pending = Pending {
            reservation: reservation.cloned(),
            charge,
            done: Done::Waiting(done),
        };
        if self.settlements.send(Queued::Settle(pending)).is_err() {
            return Err(writer_stopped());
        }
        written.await.unwrap_or_else(|_| Err(writer_stopped()))
    }

    /// Queue the settlement of a request without a reservation and return
    /// at once; `done` hears (on the writer's task) how it went. When too
    /// many such settlements wait to be written (the database is behind),
    /// the charge is given back, unqueued: settle it with [`Self::settle`],
    /// which waits.
    pub fn settle_later(
        &self,
        charge: Charge,
        done: impl FnOnce(Result<(), StoreError>) + Send + Sync + 'static,
    ) -> Result<(), Box<Charge>> {
        let pending = Pending {
            reservation: None,
            charge,
            done: Done::Later(Box::new(done)),
        };
        match self.settlements.send(Queued::Settle(pending)) {
            Ok(()) => Ok(()),
            Err(Refused::Full(pending)) => Err(Box::new(pending.charge)),
            Err(Refused::Stopped(refused)) => {
                if let Queued::Settle(pending) = *refused {
                    pending.done.send(Err(writer_stopped()));
                }
                Ok(())
            }
        }
    }

    /// Wait until every settlement queued so far is written (or refused).
    pub async fn flush_settlements(&self) {
        let (tx, flushed) = tokio::sync::oneshot::channel();
        if self.settlements.send(Queued::Flush(tx)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Give a reservation back: nothing was spent.
    pub async fn release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        let r = reservation.clone();
        self.run(async move {
            let update = format!(
                "UPDATE api_keys SET reserved_micro_usd = {} WHERE id = $1",
                minus_sql("$2")
            );
            on_pool!(&pool, |p, d| {
                let mut tx = p.begin().await?;
                let held = sqlx::query(&d.sql(
                    "DELETE FROM budget_reservations WHERE id = $1 RETURNING amount_micro_usd",
                ))
                .bind(&r.id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = held {
                    sqlx::query(&d.sql(&update))
                        .bind(&r.key_id)
                        .bind(row.int("amount_micro_usd")?)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// Drop every expired reservation and give its amount back to its key;
    /// returns how many there were. Safe to run on every replica at once:
    /// each reservation is deleted, and given back, exactly once.
    pub async fn expire_reservations(&self) -> Result<u64, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let at = now();
            let update = format!(
                "UPDATE api_keys SET reserved_micro_usd = {} WHERE id = $1",
                minus_sql("$2")
            );
            on_pool!(&pool, |p, d| {
                let mut tx = p.begin().await?;
                let rows = sqlx::query(&d.sql(
                    "DELETE FROM budget_reservations WHERE expires_at <= $1 RETURNING key_id, amount_micro_usd",
                ))
                .bind(at)
                .fetch_all(&mut *tx)
                .await?;
                let mut per_key: std::collections::BTreeMap<String, i64> = Default::default();
                for row in &rows {
                    *per_key.entry(row.text("key_id")?).or_default() += row.int("amount_micro_usd")?;
                }
                for (key_id, amount) in &per_key {
                    sqlx::query(&d.sql(&update))
                        .bind(key_id)
                        .bind(*amount)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                if !rows.is_empty() {
                    tracing::info!(
                        expired = rows.len(),
                        keys = per_key.len(),
                        "budget reservations of unfinished requests expired and were given back"
                    );
                }
                Ok(rows.len() as u64)
            })
        })
        .await
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the ledger writer has stopped".into())
}
