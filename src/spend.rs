//! Who pays for a generation, and the money around it: the budget
//! reservation made before any upstream job, the settlement to the real
//! cost (the spend ledger and the spend metric) or the release on failure,
//! and what a request could cost and did cost at the endpoints' prices.
//!
//! Only a request that makes a job pays. A cache hit and a request that
//! joins an identical generation in flight cost nothing and are answered
//! even when the key's budget is spent (they are counted as money saved).
//! The atomicity lives in the database ([`crate::store::budget`]).

use std::sync::Arc;
use std::time::Duration;

use crate::backend::JobOutput;
use crate::domain::{Job, MicroUsd};
use crate::error::ApiError;
use crate::metrics::{DbOp, Metrics};
use crate::store::budget::{Charge, Refusal, Reservation};
use crate::store::keys::{BudgetPeriod, KeyRecord};
use crate::store::{Store, StoreError, now};

/// The caller a generation is made for.
#[derive(Clone, Debug, Default)]
pub struct Payer {
    /// How the ledger and fal's invoice tags name the caller's key: a
    /// database key's id, `cfg-<hex>` for a key from `auth.api_keys`;
    /// `None` without a key (an open gateway).
    pub account: Option<Arc<str>>,
    /// A database key: its budget is reserved against before any job.
    pub key: Option<Arc<KeyRecord>>,
    /// The request's id, kept in the ledger row.
    pub request_id: Option<Arc<str>>,
}

/// Retries of a settlement the database refused (then the reservation
/// expires, and the error log names the charge for the operator).
const SETTLE_ATTEMPTS: u32 = 3;

pub struct Spend {
    store: Store,
    metrics: Arc<Metrics>,
    /// Life of a reservation: longer than any request may take, so only a
    /// crashed replica's reservations ever expire.
    reservation_ttl_seconds: u64,
}

impl Spend {
    pub fn new(store: Store, metrics: Arc<Metrics>, request_timeout: Duration) -> Self {
        Self {
            store,
            metrics,
            reservation_ttl_seconds: reservation_ttl(request_timeout),
        }
    }

    /// Reserve `amount` against the payer's budget (database keys only;
    /// others need no reservation). Refused: `insufficient_quota`, or 401
    /// for a key revoked or expired since it was cached.
    pub async fn reserve(
        &self,
        payer: &Payer,
        amount: MicroUsd,
    ) -> Result<Option<Reservation>, ApiError> {
        let Some(key) = &payer.key else {
            return Ok(None);
        };
        match self
            .store
            .reserve(&key.id, amount.0, self.reservation_ttl_seconds)
            .await
        {
            Ok(Ok(reservation)) => Ok(Some(reservation)),
            Ok(Err(refusal)) => Err(self.refused(key, amount, refusal)),
            Err(e) => {
                tracing::error!(error = %e, key_id = %key.id, "cannot reserve budget");
                self.metrics.database_error(DbOp::Reserve);
                Err(ApiError::StoreUnavailable)
            }
        }
    }

    fn refused(&self, key: &KeyRecord, amount: MicroUsd, refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::Revoked => ApiError::Unauthorized {
                message: "This API key has been revoked.",
            },
            Refusal::Expired => ApiError::Unauthorized {
                message: "This API key has expired.",
            },
            Refusal::Unknown => ApiError::Unauthorized {
                message: crate::auth::INCORRECT_KEY,
            },
            Refusal::OverBudget {
                budget_micro_usd,
                spent_micro_usd,
                reserved_micro_usd,
            } => {
                self.metrics.budget_refusals.inc();
                let left = budget_micro_usd
                    .saturating_sub(spent_micro_usd)
                    .saturating_sub(reserved_micro_usd);
                ApiError::InsufficientQuota {
                    message: quota_message(
                        key.budget_period,
                        MicroUsd(budget_micro_usd),
                        MicroUsd(left),
                        amount,
                        reserved_micro_usd > 0,
                    ),
                }
            }
        }
    }

    /// Settle a generation that reached the backend and succeeded: the
    /// reservation (if any) becomes the real cost, a ledger row is written
    /// and the spend metric counts it. With a reservation this waits for the
    /// commit (the key's next request must see the real cost); without one
    /// it returns at once and the row follows within the writer's next
    /// group, gathered for up to 100 ms (reads of spend wait for it), unless
    /// 8,192 such rows already wait to be written: then it waits too. The
    /// database is retried briefly; if it still refuses, the reservation
    /// expires on its own and the error log names the charge.
    pub async fn settle(&self, reservation: Option<Reservation>, charge: Charge) {
        self.metrics
            .spend
            .with_label_values(&[&charge.model])
            .inc_by(charge.cost_micro_usd as f64 / 1_000_000.0);
        match reservation {
            Some(reservation) => {
                settle_retrying(&self.store, &self.metrics, Some(reservation), charge, 1).await;
            }
            None => {
                let (store, metrics) = (self.store.clone(), self.metrics.clone());
                let again = charge.clone();
                let queued = self.store.settle_later(charge, move |result| {
                    if result.is_err() {
                        metrics.database_error(DbOp::Settle);
                        // On the writer's runtime, which outlives the workers.
                        tokio::spawn(async move {
                            settle_retrying(&store, &metrics, None, again, 2).await;
                        });
                    }
                });
                // The database is behind: this request waits for its own
                // settlement rather than queue another.
                if let Err(charge) = queued {
                    settle_retrying(&self.store, &self.metrics, None, *charge, 1).await;
                }
            }
        }
    }

    /// Wait until every settlement queued so far is written: what a read of
    /// spend calls first.
    pub async fn flush(&self) {
        self.store.flush_settlements().await;
    }

    /// Give a reservation back: nothing was made (a failure, or an answer
    /// that came from the shared cache or another replica).
    pub async fn release(&self, reservation: Reservation) {
        if let Err(e) = self.store.release(&reservation).await {
            self.metrics.database_error(DbOp::Release);
            tracing::warn!(
                error = %e,
                key_id = %reservation.key_id,
                "cannot release a budget reservation; it expires on its own"
            );
        }
    }
}

/// Settle, making attempts `first..=SETTLE_ATTEMPTS` with a growing pause
/// between them; the last refusal is logged with the charge.
async fn settle_retrying(
    store: &Store,
    metrics: &Metrics,
    reservation: Option<Reservation>,
    charge: Charge,
    first: u32,
) {
    let mut delay = Duration::from_millis(100) * 4u32.pow(first.saturating_sub(1));
    if first > 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for attempt in first..=SETTLE_ATTEMPTS {
        match store.settle(reservation.as_ref(), charge.clone()).await {
            Ok(()) => return,
            Err(e) => {
                metrics.database_error(DbOp::Settle);
                if attempt == SETTLE_ATTEMPTS {
                    log_unsettled(&e, &charge);
                    return;
                }
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
    }
}

fn log_unsettled(e: &StoreError, charge: &Charge) {
    tracing::error!(
        error = %e,
        key_id = charge.key_id.as_deref().unwrap_or("-"),
        model = %charge.model,
        cost_usd = %MicroUsd(charge.cost_micro_usd).usd_string(),
        "a generation's cost could not be written to the spend ledger"
    );
}

/// A reservation outlives the request deadline by a minute.
pub fn reservation_ttl(request_timeout: Duration) -> u64 {
    request_timeout.as_secs().saturating_add(60)
}

/// What a client over budget reads.
fn quota_message(
    period: BudgetPeriod,
    budget: MicroUsd,
    left: MicroUsd,
    wanted: MicroUsd,
    others_in_flight: bool,
) -> String {
    let period_text = match period {
        BudgetPeriod::Total => "",
        BudgetPeriod::Day => " daily",
        BudgetPeriod::Month => " monthly",
    };
    let mut text = format!(
        "This API key's budget cannot cover this request: it may cost up to {wanted}, and {left} of the key's {budget}{period_text} budget is left"
    );
    if others_in_flight {
        text.push_str(" (its requests in flight hold the rest until they finish)");
    }
    text.push('.');
    match period {
        BudgetPeriod::Total => {
            text.push_str(" Ask the gateway's operator to raise it.");
        }
        BudgetPeriod::Day | BudgetPeriod::Month => {
            let renews = next_period_start(period, now());
            if let serde_json::Value::String(at) = crate::admin::rfc3339(renews) {
                text.push_str(&format!(" It renews at {at}."));
            }
        }
    }
    text
}

/// When the period after the one holding `at` begins (UTC midnight of the
/// next day, or of the first of the next month).
fn next_period_start(period: BudgetPeriod, at: i64) -> i64 {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(at) else {
        return 0;
    };
    let date = t.date();
    let next = match period {
        BudgetPeriod::Total => return 0,
        BudgetPeriod::Day => date.next_day(),
        BudgetPeriod::Month => {
            let year = match date.month() {
                time::Month::December => date.year() + 1,
                _ => date.year(),
            };
            time::Date::from_calendar_date(year, date.month().next(), 1).ok()
        }
    };
    next.map_or(0, |d| d.midnight().assume_utc().unix_timestamp())
}

/// What one job's output cost: fal's billable units where the endpoint's
/// price is per unit, else its delivered images at the endpoint's price (at
/// the size each image came in, or the size the job asked for).
pub fn delivered_cost(job: &Job, output: &JobOutput) -> MicroUsd {
    // Images past what the job asked for are dropped, and not counted.
    let sizes: Vec<(u32, u32)> = output
        .images
        .iter()
        .take(usize::from(job.num_images))
        .map(|i| i.width.zip(i.height).unwrap_or(job.expected_size))
        .collect();
    job.delivered_cost(&sizes, output.billable_units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_periods_renew_at_the_next_utc_day_or_month() {
        let at = 1_797_342_310; // 2026-12-15T13:45:10Z
        assert_eq!(next_period_start(BudgetPeriod::Day, at), 1_797_379_200); // 12-16
        assert_eq!(next_period_start(BudgetPeriod::Month, at), 1_798_761_600); // 2027-01-01
        let leap = 1_835_395_200; // 2028-02-29T00:00:00Z
        assert_eq!(next_period_start(BudgetPeriod::Day, leap), 1_835_481_600); // 03-01
        assert_eq!(next_period_start(BudgetPeriod::Month, leap), 1_835_481_600);
        assert_eq!(next_period_start(BudgetPeriod::Total, leap), 0);
        let msg = quota_message(
            BudgetPeriod::Total,
            MicroUsd(5_000_000),
            MicroUsd(30_000),
            MicroUsd(80_000),
            false,
        );
        assert_eq!(
            msg,
            "This API key's budget cannot cover this request: it may cost up to $0.08, and $0.03 of the key's $5 budget is left. Ask the gateway's operator to raise it."
        );
        let msg = quota_message(
            BudgetPeriod::Day,
            MicroUsd(5_000_000),
            MicroUsd(0),
            MicroUsd(20_000),
            true,
        );
        assert!(msg.contains("$5 daily budget"), "{msg}");
        assert!(msg.contains("requests in flight"), "{msg}");
        assert!(msg.contains("It renews at 20"), "{msg}");
    }

    #[test]
    fn a_reservation_outlives_the_request_deadline() {
        assert_eq!(reservation_ttl(Duration::from_secs(300)), 360);
    }
}
