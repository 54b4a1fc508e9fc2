//! Telling every replica that the key table changed: each change bumps
//! `key_changes.version` (every replica reads it every second) and, on
//! PostgreSQL, notifies the `image_gateway_keys` channel, which replicas
//! listen on so a revocation takes effect within milliseconds.

use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::keys::CHANNEL;
use super::{Pool, Record, Store, StoreError, on_pool};

/// How often the version is read: the bound on how long a change made
/// elsewhere (another replica on SQLite's shared file, the CLI) takes to be
/// seen without a notification.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

impl Store {
    /// The key table's version: changes whenever a key does.
    pub async fn key_version(&self) -> Result<i64, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            on_pool!(&pool, |p, _d| {
                let row = sqlx::query("SELECT version FROM key_changes WHERE id = 1")
                    .fetch_one(p)
                    .await?;
                Ok(row.int("version")?)
            })
        })
        .await
    }

    /// Call `changed` whenever the key table may have changed, until
    /// `stop`: on every new version, on every PostgreSQL notification, and
    /// whenever the notification connection was lost (notifications may
    /// have been missed). Runs on the store's runtime.
    pub fn watch_keys(
        &self,
        stop: CancellationToken,
        changed: impl Fn() + Send + Sync + 'static,
    ) -> BoxFuture<'static, ()> {
        let store = self.clone();
        Box::pin(async move {
            let changed = std::sync::Arc::new(changed);
            if let Pool::Postgres(pg) = &store.pool {
                let (pg, stop, changed) = (pg.clone(), stop.clone(), changed.clone());
                store.runtime.spawn(async move {
                    tokio::select! {
                        () = listen(pg, &*changed) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
            let mut seen = store.key_version().await.ok();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                    () = stop.cancelled() => return,
                }
                match store.key_version().await {
                    Ok(v) if Some(v) != seen => {
                        seen = Some(v);
                        changed();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot read the key table's version"),
                }
            }
        })
    }
}

/// Listen for notifications for as long as the pool lives, reconnecting
/// after a lost connection.
async fn listen(pool: sqlx::PgPool, changed: &(dyn Fn() + Send + Sync)) {
    let mut delay = Duration::from_millis(100);
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if listener.listen(CHANNEL).await.is_ok() {
                    delay = Duration::from_millis(100);
                    // Anything may have changed while nobody listened.
                    changed();
                    while listener.recv().await.is_ok() {
                        changed();
                    }
                }
                tracing::debug!("key notifications: connection lost; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %StoreError::from(e), "key notifications: cannot connect");
            }
        }
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
