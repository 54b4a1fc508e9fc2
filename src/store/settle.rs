//! Settlements, written in groups.
//!
//! Every generation that made images settles before its answer goes out:
//! its reservation (if any) is deleted and dropped from its key's reserved
//! sum, the real cost added to the key's spend, and a ledger row written.
//! One transaction per request cost more CPU than the generation itself
//! under load (three round trips to SQLite's worker thread, each a pair of
//! thread wake-ups). So requests queue their settlement and one writer task
//! writes whatever has queued in one transaction, with one multi-row insert
//! into the ledger, then tells each request it is done. A settlement
//! somebody waits for is written at once: grouping adds it no wait, it
//! only shares the transactions that queue up while one is being written.
//! A group of settlements nobody waits for lingers up to 100 ms for more
//! (at thousands of misses a second, tens of rows per transaction instead
//! of one or two). A request with a reservation waits for its settlement
//! to be committed (the next request against its budget must see the real
//! cost); one without (no budget to keep) is answered at once, and told of
//! a refusal by a callback. Reads
//! of spend first [`flush`] what is queued, so they see every request
//! answered before them.
//!
//! A group the database refuses is written again one settlement at a time,
//! so one bad settlement never fails the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::budget::{Charge, Reservation, as_i64, minus_sql};
use super::keys::{PeriodStarts, current_period_sql};
use super::{Pool, Record, StoreError, now, on_pool};

/// Most settlements written in one transaction (9 parameters each keeps a
/// group's insert far below SQLite's 32,766 and PostgreSQL's 65,535).
const MAX_GROUP: usize = 128;

/// How long a group of settlements nobody waits for may wait for more
/// before it is written (a settlement with a reservation, or a read of
/// spend, writes the group at once).
pub(super) const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// Most settlements nobody waits for that may be queued and not yet
/// written (about 64 groups; a few hundred bytes each). Past it, a request
/// waits for its own settlement like one with a reservation, so a database
/// that falls behind slows requests down instead of growing a queue
/// without end.
pub(super) const MAX_LATER: usize = 8192;

/// One request's settlement, and where to say it was written.
pub(super) struct Pending {
    pub reservation: Option<Reservation>,
    pub charge: Charge,
    pub done: Done,
}

/// Who hears how a settlement went.
pub(super) enum Done {
    /// A request waiting for its commit.
    Waiting(oneshot::Sender<Result<(), StoreError>>),
    /// Called on the writer's task once it is written or refused.
    Later(Box<dyn FnOnce(Result<(), StoreError>) + Send + Sync>),
}

impl Done {
    pub(super) fn send(self, result: Result<(), StoreError>) {
        match self {
            Done::Waiting(tx) => {
                let _ = tx.send(result);
            }
            Done::Later(tell) => tell(result),
        }
    }
}

/// What the writer is sent.
pub(super) enum Queued {
    Settle(Pending),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// The writer's two inboxes. Settlements nobody waits for go to `later`,
/// which the writer leaves alone while a group lingers (a send to a
/// channel nobody is polling wakes no thread); a settlement somebody waits
/// for and a flush go to `now`, which wakes the writer at once.
#[derive(Clone, Debug)]
pub(super) struct Settlements {
    now: mpsc::UnboundedSender<Queued>,
    later: mpsc::UnboundedSender<Pending>,
    /// Settlements sent to `later` and not yet written.
    unwritten: Arc<AtomicUsize>,
    max_later: usize,
}

/// Why a settlement was given back.
pub(super) enum Refused {
    /// The writer has stopped.
    Stopped(Box<Queued>),
    /// `later` holds its most ([`MAX_LATER`]): wait for this one instead.
    Full(Box<Pending>),
}

impl Settlements {
    /// Queue `one`.
    pub(super) fn send(&self, one: Queued) -> Result<(), Refused> {
        match one {
            Queued::Settle(pending) if matches!(pending.done, Done::Later(_)) => {
                if self.unwritten.fetch_add(1, Ordering::Relaxed) >= self.max_later {
                    self.unwritten.fetch_sub(1, Ordering::Relaxed);
                    return Err(Refused::Full(Box::new(pending)));
                }
                self.later.send(pending).map_err(|refused| {
                    self.unwritten.fetch_sub(1, Ordering::Relaxed);
                    Refused::Stopped(Box::new(Queued::Settle(refused.0)))
                })
            }
            one => self
                .now
                .send(one)
                .map_err(|refused| Refused::Stopped(Box::new(refused.0))),
        }
    }
}

/// Start the writer on `runtime`; a group nobody waits for lingers for
/// `linger` ([`LINGER`]), and at most `max_later` ([`MAX_LATER`]) of them
/// wait to be written. It stops when every sender is gone, after writing
/// what was queued.
pub(super) fn start(
    pool: Pool,
    runtime: &tokio::runtime::Handle,
    linger: std::time::Duration,
    max_later: usize,
) -> Settlements {
    let (now_tx, mut now_rx) = mpsc::unbounded_channel::<Queued>();
    let (later_tx, mut later_rx) = mpsc::unbounded_channel::<Pending>();
    let unwritten = Arc::new(AtomicUsize::new(0));
    let written = unwritten.clone();
    runtime.spawn(async move {
        let mut queued = Vec::with_capacity(MAX_GROUP);
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut flushes = Vec::new();
        let mut open = true;
        while open {
            tokio::select! {
                biased;
                n = now_rx.recv_many(&mut queued, MAX_GROUP) => open = n > 0,
                n = later_rx.recv_many(&mut group, MAX_GROUP) => {
                    open = n > 0;
                    // Nobody waits on these: let the group grow for a
                    // moment, so a busy gateway writes tens of rows per
                    // transaction instead of one or two.
                    if open {
                        tokio::select! {
                            biased;
                            n = now_rx.recv_many(&mut queued, MAX_GROUP) => open = n > 0,
                            () = tokio::time::sleep(linger) => {}
                        }
                    }
                }
            }
            for one in queued.drain(..) {
                match one {
                    Queued::Settle(pending) => group.push(pending),
                    Queued::Flush(tx) => flushes.push(tx),
                }
            }
            // Everything sent to `later` before a flush was sent is here
            // now; so is everything sent before the last sender went.
            while let Ok(pending) = later_rx.try_recv() {
                group.push(pending);
            }
            while !group.is_empty() {
                let rest = group.split_off(group.len().min(MAX_GROUP));
                let part = std::mem::replace(&mut group, rest);
                let later = part
                    .iter()
                    .filter(|p| matches!(p.done, Done::Later(_)))
                    .count();
                write_and_tell(&pool, part).await;
                written.fetch_sub(later, Ordering::Relaxed);
            }
            for tx in flushes.drain(..) {
                let _ = tx.send(());
            }
        }
    });
    Settlements {
        now: now_tx,
        later: later_tx,
        unwritten,
        max_later,
    }
}

/// Write `group` and tell each settlement how it went; a refused group is
/// written again one settlement at a time.
async fn write_and_tell(pool: &Pool, group: Vec<Pending>) {
    let result = write(pool, &group).await;
    if result.is_err() && group.len() > 1 {
        for one in group {
            let result = write(pool, std::slice::from_ref(&one)).await;
            one.done.send(result);
        }
    } else {
        for one in group {
            one.done.send(result.clone());
        }
    }
}

/// Write `group` in one transaction.
async fn write(pool: &Pool, group: &[Pending]) -> Result<(), StoreError> {
    let at = now();
    let starts = PeriodStarts::at(at);
    let day = time::OffsetDateTime::from_unix_timestamp(at)
        .map(|t| t.date().to_string())
        .unwrap_or_default();
    let current = current_period_sql("$4", "$5");
    let spend = format!(
        "UPDATE api_keys SET spent_micro_usd = \
         (CASE WHEN period_start = {current} THEN spent_micro_usd ELSE 0 END) + $2, \
         period_start = {current}, reserved_micro_usd = {} WHERE id = $1",
        minus_sql("$3")
    );
    // SQLite's parameters are anonymous `?` here: it finds a numbered
    // parameter's slot by a scan of every parameter name, which made
    // binding a 128-row insert (1,152 parameters) cost more than writing it.
    let sqlite = matches!(pool, Pool::Sqlite(_));
    let mut insert = String::from(
        "INSERT INTO spend_ledger (created_at, day, key_id, model, endpoint, images, \
         cost_micro_usd, billable_units, request_id) VALUES ",
    );
    for i in 0..group.len() {
        if i > 0 {
            insert.push_str(", ");
        }
        insert.push('(');
        for column in 1..=9 {
            if column > 1 {
                insert.push_str(", ");
            }
            if sqlite {
                insert.push('?');
            } else {
                insert.push_str(&format!("${}", i * 9 + column));
            }
        }
        insert.push(')');
    }
    // A database key's row to charge, per settlement: a configured key or
    // an anonymous caller has none; only a database key's spend is counted
    // on its row.
    let key_rows: Vec<Option<&str>> = group
        .iter()
        .map(|one| {
            one.reservation
                .as_ref()
                .map(|r| r.key_id.as_str())
                .or_else(|| {
                    one.charge
                        .key_id
                        .as_deref()
                        .filter(|k| k.starts_with("key_"))
                })
        })
        .collect();
    // (A reservation always names its key.)
    let touches_keys = key_rows.iter().any(Option::is_some);
    on_pool!(pool, |p, d| {
        // Not kept prepared: a statement per group size (up to 128 rows of
        // 9 parameters) filled the driver's statement cache with large
        // programs, and RSS grew for minutes (the soak caught it).
        let mut rows = sqlx::query(&insert).persistent(false);
        for Pending { charge, .. } in group {
            rows = rows
                .bind(at)
                .bind(&day)
                .bind(&charge.key_id)
                .bind(&charge.model)
                .bind(&charge.endpoint)
                .bind(i64::from(charge.images))
                .bind(as_i64(charge.cost_micro_usd))
                .bind(charge.billable_units.map(|u| u.to_string()))
                .bind(&charge.request_id);
        }
        if !touches_keys {
            // Ledger rows only: one statement is its own transaction.
            rows.execute(p).await?;
            return Ok(());
        }
        let mut tx = p.begin().await?;
        for (one, key_row) in group.iter().zip(&key_rows) {
            let held = match &one.reservation {
                Some(r) => sqlx::query(&d.sql(
                    "DELETE FROM budget_reservations WHERE id = $1 RETURNING amount_micro_usd",
                ))
                .bind(&r.id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.int("amount_micro_usd"))
                .transpose()?
                .unwrap_or(0),
                None => 0,
            };
            if let Some(key_id) = key_row {
                sqlx::query(&d.sql(&spend))
                    .bind(key_id)
                    .bind(as_i64(one.charge.cost_micro_usd))
                    .bind(held)
                    .bind(starts.day)
                    .bind(starts.month)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        rows.execute(&mut *tx).await?;
        tx.commit().await?;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::keys::{BudgetPeriod, NewKey};
    use super::super::ledger::{GroupBy, SpendQuery};
    use super::super::{Store, now};
    use super::*;
    use crate::config::{DatabaseSettings, DatabaseUrl};

    fn charge(key_id: Option<&str>, cost: u64, n: usize) -> Charge {
        Charge {
            key_id: key_id.map(str::to_owned),
            model: "imagen-4-fast".into(),
            endpoint: "fal-ai/imagen4/preview/fast".into(),
            images: 1,
            cost_micro_usd: cost,
            billable_units: None,
            request_id: Some(format!("req-{n}")),
        }
    }

    async fn in_memory() -> Store {
        Store::open(&DatabaseSettings {
            url: DatabaseUrl::new("sqlite::memory:"),
            ..DatabaseSettings::default()
        })
        .await
        .unwrap()
    }

    /// A second writer on `store`'s pool whose groups linger longer than
    /// any test runs, holding at most `max_later` unwritten.
    fn lingering_writer(store: &Store, max_later: usize) -> Settlements {
        start(
            store.pool.clone(),
            &tokio::runtime::Handle::current(),
            std::time::Duration::from_secs(600),
            max_later,
        )
    }

    /// Spend per key, of every row so far.
    fn by_key() -> SpendQuery {
        SpendQuery {
            group_by: GroupBy::Key,
            from: 0,
            to: now() + 60,
            key_id: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_settlements_are_grouped_and_every_one_is_written() {
        let store = in_memory().await;
        let (key, _) = store
            .create_key(NewKey {
                name: "grouped".into(),
                models: None,
                budget_micro_usd: Some(100_000_000),
                budget_period: BudgetPeriod::Total,
                requests_per_minute: None,
                images_per_minute: None,
                expires_at: None,
            })
            .await
            .unwrap();
        // 200 settlements at once: half reserved against the key (each
        // reserved 0.04 and settled at 0.02), half without a key.
        let mut tasks = Vec::new();
        for n in 0..200 {
            let store = store.clone();
            let key_id = key.id.clone();
            tasks.push(tokio::spawn(async move {
                if n % 2 == 0 {
                    let r = store.reserve(&key_id, 40_000, 60).await.unwrap().unwrap();
                    store
                        .settle(Some(&r), charge(Some(&key_id), 20_000, n))
                        .await
                } else {
                    store.settle(None, charge(None, 30_000, n)).await
                }
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let key = store.key(&key.id).await.unwrap().unwrap();
        assert_eq!(key.spent_micro_usd, 100 * 20_000);
        assert_eq!(key.reserved_micro_usd, 0, "every reservation settled");
        let rows = store.spend(by_key()).await.unwrap();
        let of = |group: Option<&str>| {
            rows.iter()
                .find(|r| r.group.as_deref() == group)
                .map(|r| (r.requests, r.cost_micro_usd))
        };
        assert_eq!(of(Some(&key.id)), Some((100, 2_000_000)));
        assert_eq!(of(None), Some((100, 3_000_000)));
    }

    /// Settlements nobody waits for (no reservation) are all in the next
    /// read of spend, and each one's callback heard it was written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settlements_answered_at_once_are_in_the_next_read_of_spend() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let store = in_memory().await;
        let written = std::sync::Arc::new(AtomicUsize::new(0));
        for n in 0..300 {
            let written = written.clone();
            let queued = store.settle_later(charge(None, 10_000, n), move |result| {
                if result.is_ok() {
                    written.fetch_add(1, Ordering::SeqCst);
                }
            });
            assert!(queued.is_ok(), "300 are far below the backlog's bound");
        }
        let rows = store.spend(by_key()).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].requests, rows[0].cost_micro_usd), (300, 3_000_000));
        assert_eq!(written.load(Ordering::SeqCst), 300);
    }

    /// A group nobody waits for lingers; one somebody waits for is written
    /// at once, and takes the lingering ones with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waited_settlement_does_not_wait_for_the_linger() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let store = in_memory().await;
        let writer = lingering_writer(&store, MAX_LATER);
        let written = std::sync::Arc::new(AtomicUsize::new(0));
        for n in 0..5 {
            let written = written.clone();
            let pending = Pending {
                reservation: None,
                charge: charge(None, 10_000, n),
                done: Done::Later(Box::new(move |result| {
                    if result.is_ok() {
                        written.fetch_add(1, Ordering::SeqCst);
                    }
                })),
            };
            assert!(writer.send(Queued::Settle(pending)).is_ok());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(written.load(Ordering::SeqCst), 0, "still lingering");

        let (done, told) = oneshot::channel();
        let waited = Pending {
            reservation: None,
            charge: charge(None, 20_000, 5),
            done: Done::Waiting(done),
        };
        assert!(writer.send(Queued::Settle(waited)).is_ok());
        tokio::time::timeout(std::time::Duration::from_secs(60), told)
            .await
            .expect("written long before the linger ends")
            .unwrap()
            .unwrap();
        let rows = store.spend(by_key()).await.unwrap();
        assert_eq!((rows[0].requests, rows[0].cost_micro_usd), (6, 70_000));
        assert_eq!(written.load(Ordering::SeqCst), 5);
    }

    /// Past `max_later` unwritten settlements nobody waits for, the next
    /// one is given back (its request waits for it instead); written ones
    /// make room again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settlements_nobody_waits_for_are_bounded() {
        let store = in_memory().await;
        let writer = lingering_writer(&store, 3);
        let later = |n| Pending {
            reservation: None,
            charge: charge(None, 10_000, n),
            done: Done::Later(Box::new(|_| {})),
        };
        for n in 0..3 {
            assert!(writer.send(Queued::Settle(later(n))).is_ok());
        }
        match writer.send(Queued::Settle(later(3))) {
            Err(Refused::Full(given_back)) => {
                assert_eq!(given_back.charge.request_id.as_deref(), Some("req-3"));
            }
            _ => panic!("a fourth unwritten settlement is given back"),
        }
        // A flush writes the three (the linger is not waited out)...
        let (flushed, told) = oneshot::channel();
        assert!(writer.send(Queued::Flush(flushed)).is_ok());
        tokio::time::timeout(std::time::Duration::from_secs(60), told)
            .await
            .expect("a flush does not wait for the linger")
            .unwrap();
        let rows = store.spend(by_key()).await.unwrap();
        assert_eq!((rows[0].requests, rows[0].cost_micro_usd), (3, 30_000));
        // ...which makes room for three more.
        for n in 4..7 {
            assert!(writer.send(Queued::Settle(later(n))).is_ok());
        }
        assert!(matches!(
            writer.send(Queued::Settle(later(7))),
            Err(Refused::Full(_))
        ));
    }
}
