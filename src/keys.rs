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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::store::keys::KeyRecord;
use crate::store::{Store, StoreError};

/// Bound on cached digests (known and unknown); past it the memory starts
/// afresh (each digest then costs one database read again).
const MAX_CACHED: usize = 100_000;

/// What a digest was found to be, and when that stops being trusted.
struct Cached {
    key: Option<Arc<KeyRecord>>,
    until: Instant,
}

pub struct KeyDirectory {
    store: Store,
    /// Digest of a presented secret -> its key, or `None` for no key. A
    /// plain map under a read lock: a hit is one hash lookup, cheaper than
    /// a cache with its own bookkeeping, and this sits on every request.
    cache: RwLock<HashMap<[u8; 32], Cached>>,
    ttl: Duration,
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
            cache: RwLock::new(HashMap::new()),
            ttl,
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
        let now = Instant::now();
        if let Some(c) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
            && c.until > now
        {
            return Ok(c.key.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let found = self.store.key_by_digest(digest).await?.map(Arc::new);
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        // Only if the table did not change while it was read: what was read
        // may be stale then. (Checked under the lock that invalidation takes.)
        if self.epoch.load(Ordering::Acquire) == epoch {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(
                digest,
                Cached {
                    key: found.clone(),
                    until: now + self.ttl,
                },
            );
        }
        Ok(found)
    }

    /// Forget every cached key (the key table changed).
    pub fn invalidate_all(&self) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        cache.clear();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatabaseSettings, DatabaseUrl};
    use crate::store::keys::{KeyPatch, NewKey, secret_digest};

    #[tokio::test]
    async fn a_key_is_read_once_then_served_from_memory_until_a_change_or_its_ttl() {
        let store = Store::open(&DatabaseSettings {
            url: DatabaseUrl::new("sqlite::memory:"),
            ..Default::default()
        })
        .await
        .unwrap();
        let dir = KeyDirectory::new(store.clone(), Duration::from_millis(300), false);
        let (key, secret) = store
            .create_key(NewKey {
                name: "first".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let digest = secret_digest(secret.as_bytes());
        let name = async || dir.lookup(digest).await.unwrap().unwrap().name.clone();
        assert_eq!(name().await, "first");

        // Changed behind the directory's back: memory answers, no read...
        let rename = |to: &str| KeyPatch {
            name: Some(to.into()),
            ..Default::default()
        };
        store.update_key(&key.id, rename("second")).await.unwrap();
        assert_eq!(name().await, "first");
        // ...until the change is heard of,
        dir.invalidate_all();
        assert_eq!(name().await, "second");
        // or the entry outlives its TTL.
        store.update_key(&key.id, rename("third")).await.unwrap();
        assert_eq!(name().await, "second");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(name().await, "third");

        // An unknown digest is remembered as unknown.
        assert!(dir.lookup([7u8; 32]).await.unwrap().is_none());
        assert!(
            dir.cache
                .read()
                .unwrap()
                .get(&[7u8; 32])
                .is_some_and(|c| c.key.is_none())
        );
    }
}
