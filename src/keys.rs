//! Database keys on the hot path: a request's key is found in memory, so
//! the auth check costs no database round trip. A key read from the
//! database stays cached for `database.key_cache_ttl_seconds`; unknown
//! digests are cached too (so a flood of wrong keys cannot reach the
//! database). Any change to the key table (made here, on another replica
//! or by the CLI) drops the whole cache at once ([`crate::store::changes`]).
//!
//! Revocation is also enforced where money moves: a budget reservation
//! refuses a revoked or expired key atomically in the database, so a key
//! revoked elsewhere can never start a paid job, even in the instant before
//! this replica hears of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;

use crate::store::keys::KeyRecord;
use crate::store::{Store, StoreError};

/// Bound on cached digests (known and unknown).
const MAX_CACHED: u64 = 100_000;

pub struct KeyDirectory {
    store: Store,
    /// Digest of a presented secret -> its key, or `None` for no key.
    cache: Cache<[u8; 32], Option<Arc<KeyRecord>>>,
    /// Bumped by every invalidation: a lookup that raced one does not leave
    /// what it read in the cache.
    epoch: AtomicU64,
    /// Whether any key was ever made: then every API request needs a key.
    has_keys: AtomicBool,
}

impl KeyDirectory {
    pub fn new(store: Store, ttl: Duration, has_keys: bool) -> Arc<Self> {
        Arc::new(Self {
            store,
            cache: Cache::builder()
                .max_capacity(MAX_CACHED)
                .time_to_live(ttl)
                .build(),
            epoch: AtomicU64::new(0),
            has_keys: AtomicBool::new(has_keys),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key a presented secret's SHA-256 belongs to (revoked and expired
    /// ones included: the caller says why it refuses them).
    pub async fn lookup(&self, digest: [u8; 32]) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        if let Some(found) = self.cache.get(&digest).await {
            return Ok(found);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let found = self.store.key_by_digest(digest).await?.map(Arc::new);
        self.cache.insert(digest, found.clone()).await;
        if self.epoch.load(Ordering::Acquire) != epoch {
            // The table changed while it was read: what was read may be stale.
            self.cache.invalidate(&digest).await;
        }
        Ok(found)
    }

    /// Forget every cached key (the key table changed).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    /// Whether clients need a key because the database holds keys.
    pub fn has_keys(&self) -> bool {
        self.has_keys.load(Ordering::Acquire)
    }

    /// A key was made here: clients need keys from now on.
    pub fn key_made(&self) {
        self.has_keys.store(true, Ordering::Release);
        self.invalidate_all();
    }

    /// A key made elsewhere was seen (a request presented it before this
    /// replica heard of the change): clients need keys from now on.
    pub fn keys_exist(&self) {
        if !self.has_keys.swap(true, Ordering::AcqRel) {
            tracing::info!("a client key was made: every API request now needs a key");
        }
    }

    /// After a change elsewhere: drop the cache and learn whether keys now
    /// exist.
    pub async fn refresh(&self) {
        self.invalidate_all();
        if !self.has_keys() {
            match self.store.has_keys().await {
                Ok(true) => {
                    self.has_keys.store(true, Ordering::Release);
                    tracing::info!("a client key was made: every API request now needs a key");
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the key table"),
            }
        }
    }
}
