//! The optional second-level cache in Redis, shared by every replica, and
//! the fleet-wide lock that lets one replica generate while the others wait.
//!
//! Redis is an optimisation, never a dependency: every call is bounded by
//! `cache.redis_timeout_ms`, any failure marks Redis down (logged once per
//! outage, counted per call), and while it is down the gateway skips it and
//! serves from its own memory and fal. A probe pings every second and
//! reconnects; the first answer turns the shared cache back on.
//!
//! Keys (`<prefix>` is `cache.redis_key_prefix`, `<backend>` is `fal` or
//! `local`, so replicas with different backends never share images):
//! - `<prefix><backend>:entry:<hex key>`: one answer, one value however many
//!   clients asked, with `PX` = what is left of `cache.ttl_seconds`.
//! - `<prefix><backend>:lock:<hex key>`: the generation lock, `SET NX PX`
//!   with a random token, refreshed while the owner works and deleted (only
//!   by its owner) once the entry is written or the generation failed.
//! - `<prefix><backend>:failed:<hex key>`: a failed generation's error,
//!   written just before the lock is released and read only by replicas
//!   waiting on that lock, so they answer the same error instead of each
//!   running the generation again (a few seconds of life).
//!
//! Other replicas poll the entry with backoff (25 ms doubling to 200 ms)
//! rather than subscribe: polling needs no RESP3 or second connection, works
//! through Redis proxies, and costs one small round trip per waiting replica
//! per poll (local single-flight is in front), against a generation that
//! takes seconds.
//!
//! The entry format is in [`super::codec`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{decode, decode_failure, encode, encode_failure, now_unix_ms};
use super::key::CacheKey;
use crate::config::CacheSettings;
use crate::domain::{BackendKind, Generation};
use crate::error::ApiError;
use crate::files::FileStore;
use crate::metrics::{L2Result, L2Wait, Metrics, RedisOp};

/// How often Redis is pinged (and, when down, reconnected).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// First and longest delay between two polls for another replica's answer.
const POLL_FIRST: Duration = Duration::from_millis(25);
const POLL_MAX: Duration = Duration::from_millis(200);
/// Calls that carry an entry's images may take this many times the timeout.
const PAYLOAD_TIMEOUT_FACTOR: u32 = 4;
/// An entry with less life left than this is not worth writing.
const MIN_ENTRY_LIFE: Duration = Duration::from_secs(1);
/// Life of a failure left for waiting replicas: they poll at least every
/// [`POLL_MAX`], so they read it long before it goes; new requests never
/// read it (errors are not cached).
const FAILURE_LIFE: Duration = Duration::from_secs(5);

const REFRESH_IF_OWNER: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
const DELETE_IF_OWNER: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// The outcome of taking the fleet-wide lock on a key.
pub enum Lock {
    /// This replica generates; others wait for its entry.
    Acquired(LockGuard),
    /// Another replica is generating.
    Held,
    /// Redis cannot tell: generate without it.
    Unavailable,
}

/// A held lock: its key and the token that proves ownership.
pub struct LockGuard {
    key: String,
    token: String,
}

/// The outcome of waiting for another replica's generation.
pub enum Wait {
    Ready(Generation),
    /// The owner's generation failed: the same error for these clients.
    Failed(ApiError),
    /// The owner is gone without an answer: try to take over.
    Free,
    TimedOut,
    Unavailable,
    Cancelled,
}

enum Failure {
    Skipped,
    Failed,
}

pub struct RedisCache {
    client: redis::Client,
    conn: Mutex<ConnectionManager>,
    config: ConnectionManagerConfig,
    /// `<prefix><backend>:`
    namespace: String,
    timeout: Duration,
    lock_ttl: Duration,
    wait_timeout: Duration,
    ttl: Duration,
    up: AtomicBool,
    server_error_logged: AtomicBool,
    redacted_url: String,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
}

impl RedisCache {
    /// Set up the connection (lazily: Redis need not be up at start-up).
    /// Its background tasks run on `runtime`, like every call made through it.
    pub fn new(
        settings: &CacheSettings,
        backend: BackendKind,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, String> {
        let redacted_url = settings.redis_url.redacted();
        let client = redis::Client::open(settings.redis_url.expose())
            .map_err(|_| format!("cache.redis_url `{redacted_url}` is not a valid Redis URL"))?;
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            // Our own per-call bounds apply; payload calls need longer.
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let conn = {
            let _in_runtime = runtime.enter();
            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .map_err(|e| format!("cannot set up the Redis connection: {}", describe(&e)))?
        };
        Ok(Self {
            client,
            conn: Mutex::new(conn),
            config,
            namespace: format!("{}{}:", settings.redis_key_prefix, backend.as_str()),
            timeout,
            lock_ttl: Duration::from_millis(settings.redis_lock_ttl_ms),
            wait_timeout: Duration::from_millis(settings.redis_wait_timeout_ms),
            ttl: Duration::from_secs(settings.ttl_seconds),
            up: AtomicBool::new(true),
            server_error_logged: AtomicBool::new(false),
            redacted_url,
            metrics,
            runtime,
        })
    }

    /// The URL without credentials, for logs.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// Whether the last call (or probe) reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }

    fn entry_key(&self, key: &CacheKey) -> String {
        format!("{}entry:{}", self.namespace, key.hex())
    }

    fn failure_key(&self, key: &CacheKey) -> String {
        format!("{}failed:{}", self.namespace, key.hex())
    }

    fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}lock:{}", self.namespace, key.hex())
    }

    fn conn(&self) -> ConnectionManager {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A fresh connection manager, dropping the old one (and whatever
    /// half-dead socket it holds).
    fn reconnect(&self) {
        let _in_runtime = self.runtime.enter();
        if let Ok(fresh) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        {
            *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        }
    }

    /// Run one call, bounded by `limit`, unless Redis is known to be down.
    async fn call<T, F, Fut>(&self, op: RedisOp, limit: Duration, f: F) -> Result<T, Failure>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(Failure::Skipped);
        }
        self.attempt(op, limit, f)
            .await
            .map_err(|()| Failure::Failed)
    }

    async fn attempt<T, F, Fut>(&self, op: RedisOp, limit: Duration, f: F) -> Result<T, ()>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(limit, f(self.conn())).await {
            Ok(Ok(v)) => {
                self.mark_up();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.failed(op, &e);
                Err(())
            }
            Err(_) => {
                self.failed_timeout(op, limit);
                Err(())
            }
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(redis = %self.redacted_url, "Redis answers again: the shared cache is back on");
        }
    }

    fn mark_down(&self, op: RedisOp, cause: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                redis = %self.redacted_url,
                operation = op.as_str(),
                error = cause,
                "Redis is unreachable: serving from the local cache and fal, without the shared cache, until it answers again"
            );
        }
    }

    fn count_error(&self, op: RedisOp) {
        self.metrics
            .redis_errors
            .with_label_values(&[op.as_str()])
            .inc();
    }

    fn failed(&self, op: RedisOp, e: &RedisError) {
        self.count_error(op);
        // A server that answered with an error (out of memory, a disabled
        // command) is reachable: count it, but keep using it for reads.
        let answered = matches!(e.kind(), ErrorKind::Server(kind) if !matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::MasterDown
                | ServerErrorKind::TryAgain
        ));
        if answered {
            if !self.server_error_logged.swap(true, Ordering::AcqRel) {
                tracing::warn!(operation = op.as_str(), error = %describe(e), "Redis refused a call (logged once; see image_gateway_redis_errors_total)");
            } else {
                tracing::debug!(operation = op.as_str(), error = %describe(e), "Redis refused a call");
            }
        } else {
            self.mark_down(op, &describe(e));
        }
    }

    fn failed_timeout(&self, op: RedisOp, limit: Duration) {
        self.count_error(op);
        self.mark_down(op, &format!("no answer within {} ms", limit.as_millis()));
    }

    fn payload_timeout(&self) -> Duration {
        self.timeout * PAYLOAD_TIMEOUT_FACTOR
    }

    /// Ping Redis; when it does not answer, start over with a new connection.
    pub async fn probe(&self) {
        let ok = self
            .attempt(RedisOp::Ping, self.timeout, |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await;
        if ok.is_err() {
            self.reconnect();
        }
    }

    /// Probe every [`PROBE_INTERVAL`] until `stop` fires.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.probe().await;
            tokio::select! {
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Look `key` up, counting the result.
    pub async fn lookup(&self, key: &CacheKey, files: &FileStore) -> Option<Generation> {
        let found = self.read(key, files).await;
        let result = match &found {
            Ok(Some(_)) => L2Result::Hit,
            Ok(None) => L2Result::Miss,
            Err(_) => L2Result::Error,
        };
        self.metrics
            .l2_lookups
            .with_label_values(&[result.as_str()])
            .inc();
        found.ok().flatten()
    }

    /// Look `key` up without counting a lookup (a re-check under the lock).
    pub async fn recheck(&self, key: &CacheKey, files: &FileStore) -> Option<Generation> {
        self.read(key, files).await.ok().flatten()
    }

    async fn read(&self, key: &CacheKey, files: &FileStore) -> Result<Option<Generation>, Failure> {
        let k = self.entry_key(key);
        let bytes = self
            .call(RedisOp::Get, self.payload_timeout(), |mut c| async move {
                redis::cmd("GET")
                    .arg(k)
                    .query_async::<Option<Vec<u8>>>(&mut c)
                    .await
            })
            .await?;
        match bytes {
            None => Ok(None),
            Some(bytes) => self.materialize(&bytes, files).await.map(Some),
        }
    }

    async fn materialize(&self, bytes: &[u8], files: &FileStore) -> Result<Generation, Failure> {
        let generation = match decode(bytes, now_unix_ms()) {
            Some(entry) => entry.into_generation(files).await,
            None => None,
        };
        match generation {
            Some(g) => Ok(g),
            None => {
                self.count_error(RedisOp::Decode);
                tracing::debug!("unreadable entry in Redis (another version's format?): ignored");
                Err(Failure::Failed)
            }
        }
    }

    /// Write an answer for every replica (once, whatever the number of clients).
    pub async fn store(&self, key: &CacheKey, generation: &Generation, files: &FileStore) {
        let life = self.ttl.saturating_sub(generation.produced_at.elapsed());
        if life < MIN_ENTRY_LIFE {
            return;
        }
        let Some(value) = encode(generation, files, now_unix_ms()).await else {
            return;
        };
        let k = self.entry_key(key);
        let ms = life.as_millis() as u64;
        let _ = self
            .call(RedisOp::Set, self.payload_timeout(), |mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }

    /// Leave a failed generation's error for the replicas waiting on `key`
    /// (call before releasing the lock). Errors that are this replica's own
    /// condition are not shared: the waiters take over instead.
    pub async fn share_failure(&self, key: &CacheKey, error: &ApiError) {
        let Some(value) = encode_failure(error) else {
            return;
        };
        let k = self.failure_key(key);
        let ms = FAILURE_LIFE.as_millis() as u64;
        let _ = self
            .call(RedisOp::Set, self.timeout, |mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }

    /// Take the generation lock on `key`.
    pub async fn try_lock(&self, key: &CacheKey) -> Lock {
        let guard = LockGuard {
            key: self.lock_key(key),
            token: uuid::Uuid::new_v4().simple().to_string(),
        };
        let (k, token, ttl) = (
            guard.key.clone(),
            guard.token.clone(),
            self.lock_ttl.as_millis() as u64,
        );
        let set = self
            .call(RedisOp::Lock, self.timeout, |mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await;
        match set {
            Ok(Some(_)) => Lock::Acquired(guard),
            Ok(None) => Lock::Held,
            Err(_) => Lock::Unavailable,
        }
    }

    /// Keep `lock` alive while its owner works; never returns.
    pub async fn keep(&self, lock: &LockGuard) -> std::convert::Infallible {
        let every = self.lock_ttl / 3;
        loop {
            tokio::time::sleep(every).await;
            let (k, token, ttl) = (
                lock.key.clone(),
                lock.token.clone(),
                self.lock_ttl.as_millis() as u64,
            );
            let _ = self
                .call(RedisOp::Refresh, self.timeout, |mut c| async move {
                    redis::cmd("EVAL")
                        .arg(REFRESH_IF_OWNER)
                        .arg(1)
                        .arg(k)
                        .arg(token)
                        .arg(ttl)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await;
        }
    }

    /// Give the lock up (only if it is still ours).
    pub async fn release(&self, lock: LockGuard) {
        let LockGuard { key, token } = lock;
        let _ = self
            .call(RedisOp::Unlock, self.timeout, |mut c| async move {
                redis::cmd("EVAL")
                    .arg(DELETE_IF_OWNER)
                    .arg(1)
                    .arg(key)
                    .arg(token)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
    }

    /// Wait for the replica holding the lock on `key` to write its entry,
    /// polling with backoff, until `until` or cancellation.
    pub async fn wait_for(
        &self,
        key: &CacheKey,
        until: Instant,
        cancel: &CancellationToken,
        files: &FileStore,
    ) -> Wait {
        let outcome = self.poll_until(key, until, cancel, files).await;
        let counted = match &outcome {
            Wait::Ready(_) => Some(L2Wait::Answered),
            Wait::Failed(_) => Some(L2Wait::Failed),
            Wait::Free => Some(L2Wait::Abandoned),
            Wait::TimedOut => Some(L2Wait::Timeout),
            Wait::Unavailable => Some(L2Wait::Error),
            Wait::Cancelled => None,
        };
        if let Some(outcome) = counted {
            self.metrics
                .l2_waits
                .with_label_values(&[outcome.as_str()])
                .inc();
        }
        outcome
    }

    async fn poll_until(
        &self,
        key: &CacheKey,
        until: Instant,
        cancel: &CancellationToken,
        files: &FileStore,
    ) -> Wait {
        let mut delay = POLL_FIRST;
        loop {
            let next = (Instant::now() + delay).min(until);
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = cancel.cancelled() => return Wait::Cancelled,
            }
            if Instant::now() >= until {
                return Wait::TimedOut;
            }
            delay = (delay * 2).min(POLL_MAX);
            let (ek, lk, fk) = (
                self.entry_key(key),
                self.lock_key(key),
                self.failure_key(key),
            );
            // Atomic, so an owner that writes its entry (or its failure)
            // and unlocks between the reads cannot look like one that left
            // without an answer.
            let polled = self
                .call(RedisOp::Poll, self.payload_timeout(), |mut c| async move {
                    redis::pipe()
                        .atomic()
                        .cmd("GET")
                        .arg(ek)
                        .cmd("EXISTS")
                        .arg(lk)
                        .cmd("GET")
                        .arg(fk)
                        .query_async::<(Option<Vec<u8>>, bool, Option<Vec<u8>>)>(&mut c)
                        .await
                })
                .await;
            match polled {
                Ok((Some(bytes), _, _)) => {
                    return match self.materialize(&bytes, files).await {
                        Ok(g) => Wait::Ready(g),
                        Err(_) => Wait::Unavailable,
                    };
                }
                Ok((None, true, _)) => {}
                Ok((None, false, Some(failure))) => {
                    return match decode_failure(&failure) {
                        Some(e) => Wait::Failed(e),
                        None => Wait::Free,
                    };
                }
                Ok((None, false, None)) => return Wait::Free,
                Err(_) => return Wait::Unavailable,
            }
        }
    }
}

/// What went wrong, in words that carry nothing from the URL.
fn describe(e: &RedisError) -> String {
    if e.is_connection_refusal() {
        return "connection refused".into();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connection_dropped() {
        return "connection dropped".into();
    }
    match e.kind() {
        ErrorKind::Io => "I/O error".into(),
        ErrorKind::AuthenticationFailed => "authentication failed".into(),
        kind @ ErrorKind::Server(_) => format!("{kind:?}: {}", e.detail().unwrap_or("")),
        kind => format!("{kind:?}"),
    }
}
