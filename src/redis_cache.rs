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
//!
//! Other replicas poll the entry with backoff (25 ms doubling to 200 ms)
//! rather than subscribe: polling needs no RESP3 or second connection, works
//! through Redis proxies, and costs one small round trip per waiting replica
//! per poll (local single-flight is in front), against a generation that
//! takes seconds.
//!
//! The entry format is a small binary frame (see [`encode`]): base64 images
//! are stored as their raw bytes (a quarter smaller; re-encoding a 2 MB PNG
//! takes about a millisecond) and not compressed further, since PNG, JPEG
//! and WebP are compressed already. Images the gateway serves itself
//! (`/v1/images/files/...` links, which only the replica holding them can
//! serve) are stored with their bytes; a replica reading such an entry puts
//! the bytes in its own file store and links to its own copy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::Generation;
use crate::files::FileStore;
use crate::mapping::{CacheKey, OutputFormat, ResponseFormat};
use crate::metrics::Metrics;
use crate::settings::{BackendKind, CacheSettings};

/// How often Redis is pinged (and, when down, reconnected).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// First and longest delay between two polls for another replica's answer.
const POLL_FIRST: Duration = Duration::from_millis(25);
const POLL_MAX: Duration = Duration::from_millis(200);
/// Calls that carry an entry's images may take this many times the timeout.
const PAYLOAD_TIMEOUT_FACTOR: u32 = 4;
/// An entry with less life left than this is not worth writing.
const MIN_ENTRY_LIFE: Duration = Duration::from_secs(1);

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
        format!("{}entry:{}", self.namespace, hex::encode(key.0))
    }

    fn lock_key(&self, key: &CacheKey) -> String {
        format!("{}lock:{}", self.namespace, hex::encode(key.0))
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
    async fn call<T, F, Fut>(&self, op: &'static str, limit: Duration, f: F) -> Result<T, Failure>
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

    async fn attempt<T, F, Fut>(&self, op: &'static str, limit: Duration, f: F) -> Result<T, ()>
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

    fn mark_down(&self, op: &str, cause: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                redis = %self.redacted_url,
                operation = op,
                error = cause,
                "Redis is unreachable: serving from the local cache and fal, without the shared cache, until it answers again"
            );
        }
    }

    fn count_error(&self, op: &str) {
        self.metrics.redis_errors.with_label_values(&[op]).inc();
    }

    fn failed(&self, op: &'static str, e: &RedisError) {
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
                tracing::warn!(operation = op, error = %describe(e), "Redis refused a call (logged once; see image_gateway_redis_errors_total)");
            } else {
                tracing::debug!(operation = op, error = %describe(e), "Redis refused a call");
            }
        } else {
            self.mark_down(op, &describe(e));
        }
    }

    fn failed_timeout(&self, op: &'static str, limit: Duration) {
        self.count_error(op);
        self.mark_down(op, &format!("no answer within {} ms", limit.as_millis()));
    }

    fn payload_timeout(&self) -> Duration {
        self.timeout * PAYLOAD_TIMEOUT_FACTOR
    }

    /// Ping Redis; when it does not answer, start over with a new connection.
    pub async fn probe(&self) {
        let ok = self
            .attempt("ping", self.timeout, |mut c| async move {
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
        let label = match &found {
            Ok(Some(_)) => "hit",
            Ok(None) => "miss",
            Err(_) => "error",
        };
        self.metrics.l2_lookups.with_label_values(&[label]).inc();
        found.ok().flatten()
    }

    /// Look `key` up without counting a lookup (a re-check under the lock).
    pub async fn recheck(&self, key: &CacheKey, files: &FileStore) -> Option<Generation> {
        self.read(key, files).await.ok().flatten()
    }

    async fn read(&self, key: &CacheKey, files: &FileStore) -> Result<Option<Generation>, Failure> {
        let k = self.entry_key(key);
        let bytes = self
            .call("get", self.payload_timeout(), |mut c| async move {
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
        match decode(bytes, now_unix_ms()) {
            Some(entry) => Ok(entry.into_generation(files).await),
            None => {
                self.count_error("decode");
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
            .call("set", self.payload_timeout(), |mut c| async move {
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
            .call("lock", self.timeout, |mut c| async move {
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
                .call("refresh", self.timeout, |mut c| async move {
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
            .call("unlock", self.timeout, |mut c| async move {
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
        let label = match &outcome {
            Wait::Ready(_) => Some("answered"),
            Wait::Free => Some("abandoned"),
            Wait::TimedOut => Some("timeout"),
            Wait::Unavailable => Some("error"),
            Wait::Cancelled => None,
        };
        if let Some(label) = label {
            self.metrics.l2_waits.with_label_values(&[label]).inc();
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
            let (ek, lk) = (self.entry_key(key), self.lock_key(key));
            // Atomic, so an owner that writes its entry and unlocks between
            // the two reads cannot look like one that left without an answer.
            let polled = self
                .call("poll", self.payload_timeout(), |mut c| async move {
                    redis::pipe()
                        .atomic()
                        .cmd("GET")
                        .arg(ek)
                        .cmd("EXISTS")
                        .arg(lk)
                        .query_async::<(Option<Vec<u8>>, bool)>(&mut c)
                        .await
                })
                .await;
            match polled {
                Ok((Some(bytes), _)) => {
                    return match self.materialize(&bytes, files).await {
                        Ok(g) => Wait::Ready(g),
                        Err(_) => Wait::Unavailable,
                    };
                }
                Ok((None, true)) => {}
                Ok((None, false)) => return Wait::Free,
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

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const MAGIC: &[u8; 4] = b"IGW1";

/// How one image is kept in an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Stored {
    /// Raw image bytes of a `b64_json` answer; base64-encoded again on read.
    Base64AsRaw = 0,
    /// An absolute URL (fal's CDN), kept as text.
    Url = 1,
    /// Raw bytes of an image this gateway serves at `/v1/images/files/...`;
    /// the reading replica keeps its own copy and links to it.
    File = 2,
}

/// A decoded entry, before its images are put back into shape.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    created: i64,
    age: Duration,
    size: String,
    output_format: OutputFormat,
    response_format: ResponseFormat,
    backend: BackendKind,
    images: Vec<(Stored, Bytes)>,
}

impl Entry {
    async fn into_generation(self, files: &FileStore) -> Generation {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut images = Vec::with_capacity(self.images.len());
        for (kind, bytes) in self.images {
            images.push(match kind {
                Stored::Base64AsRaw => Bytes::from(b64.encode(&bytes)),
                Stored::Url => bytes,
                Stored::File => {
                    let name = files.put(bytes, self.output_format).await;
                    Bytes::from(format!("{}{name}", crate::files::PATH_PREFIX))
                }
            });
        }
        let now = std::time::Instant::now();
        Generation {
            created: self.created,
            produced_at: now.checked_sub(self.age).unwrap_or(now),
            size: self.size,
            output_format: self.output_format,
            response_format: self.response_format,
            images,
            backend: self.backend,
        }
    }
}

/// The entry frame: magic `IGW1`, created (i64), produced-at unix ms (u64),
/// output format, response format and backend (one byte each), size (u16
/// length + text), image count (u16), then per image a kind byte, a u32
/// length and the bytes. Little-endian. `None` when the generation cannot be
/// shared (a linked file already gone from the store).
async fn encode(g: &Generation, files: &FileStore, now_ms: u64) -> Option<Vec<u8>> {
    let mut images: Vec<(Stored, Bytes)> = Vec::with_capacity(g.images.len());
    for image in &g.images {
        images.push(match g.response_format {
            ResponseFormat::B64Json => {
                match base64::engine::general_purpose::STANDARD.decode(image) {
                    Ok(raw) => (Stored::Base64AsRaw, Bytes::from(raw)),
                    Err(_) => return None,
                }
            }
            ResponseFormat::Url => match image.strip_prefix(crate::files::PATH_PREFIX.as_bytes()) {
                Some(name) => {
                    let name = std::str::from_utf8(name).ok()?;
                    (Stored::File, files.get(name).await?.bytes)
                }
                None => (Stored::Url, image.clone()),
            },
        });
    }
    let produced_ms = now_ms.saturating_sub(g.produced_at.elapsed().as_millis() as u64);
    frame(g, produced_ms, &images)
}

fn frame(g: &Generation, produced_ms: u64, images: &[(Stored, Bytes)]) -> Option<Vec<u8>> {
    let payload: usize = images.iter().map(|(_, b)| b.len() + 5).sum();
    let mut out = Vec::with_capacity(32 + g.size.len() + payload);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&g.created.to_le_bytes());
    out.extend_from_slice(&produced_ms.to_le_bytes());
    out.push(match g.output_format {
        OutputFormat::Png => 0,
        OutputFormat::Jpeg => 1,
        OutputFormat::Webp => 2,
    });
    out.push(match g.response_format {
        ResponseFormat::Url => 0,
        ResponseFormat::B64Json => 1,
    });
    out.push(match g.backend {
        BackendKind::Fal => 0,
        BackendKind::Local => 1,
    });
    out.extend_from_slice(&u16::try_from(g.size.len()).ok()?.to_le_bytes());
    out.extend_from_slice(g.size.as_bytes());
    out.extend_from_slice(&u16::try_from(images.len()).ok()?.to_le_bytes());
    for (kind, bytes) in images {
        out.push(*kind as u8);
        out.extend_from_slice(&u32::try_from(bytes.len()).ok()?.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    Some(out)
}

/// The inverse of [`frame`]; `None` for anything malformed.
fn decode(bytes: &[u8], now_ms: u64) -> Option<Entry> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return None;
    }
    let created = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let produced_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let output_format = match r.byte()? {
        0 => OutputFormat::Png,
        1 => OutputFormat::Jpeg,
        2 => OutputFormat::Webp,
        _ => return None,
    };
    let response_format = match r.byte()? {
        0 => ResponseFormat::Url,
        1 => ResponseFormat::B64Json,
        _ => return None,
    };
    let backend = match r.byte()? {
        0 => BackendKind::Fal,
        1 => BackendKind::Local,
        _ => return None,
    };
    let size_len = usize::from(r.u16()?);
    let size = String::from_utf8(r.take(size_len)?.to_vec()).ok()?;
    let count = usize::from(r.u16()?);
    let mut images = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        let kind = match r.byte()? {
            0 => Stored::Base64AsRaw,
            1 => Stored::Url,
            2 => Stored::File,
            _ => return None,
        };
        let len = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        images.push((kind, Bytes::copy_from_slice(r.take(len)?)));
    }
    if r.at != bytes.len() {
        return None;
    }
    Some(Entry {
        created,
        age: Duration::from_millis(now_ms.saturating_sub(produced_ms)),
        size,
        output_format,
        response_format,
        backend,
        images,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(format: ResponseFormat, images: Vec<Bytes>) -> Generation {
        Generation {
            created: 1_700_000_000,
            produced_at: std::time::Instant::now(),
            size: "1408x768".into(),
            output_format: OutputFormat::Webp,
            response_format: format,
            images,
            backend: BackendKind::Fal,
        }
    }

    fn files() -> FileStore {
        FileStore::new(1 << 20, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn b64_images_are_stored_as_raw_bytes_and_read_back_identical() {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let raw: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        let text = Bytes::from(b64.encode(&raw));
        let g = generation(ResponseFormat::B64Json, vec![text.clone(), text.clone()]);
        let files = files();

        let value = encode(&g, &files, 10_000).await.unwrap();
        // Two raw images plus a small header: a quarter smaller than base64.
        assert!(value.len() < 2 * raw.len() + 64, "{}", value.len());
        assert!(value.len() < 2 * text.len() * 3 / 4 + 64);

        let back = decode(&value, 10_250)
            .unwrap()
            .into_generation(&files)
            .await;
        assert_eq!(back.images, g.images);
        assert_eq!(back.created, g.created);
        assert_eq!(back.size, g.size);
        assert_eq!(back.output_format, OutputFormat::Webp);
        assert_eq!(back.response_format, ResponseFormat::B64Json);
        assert_eq!(back.backend, BackendKind::Fal);
        // It keeps the age it had: 250 ms.
        let age = back.produced_at.elapsed();
        assert!(age >= Duration::from_millis(250) && age < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn remote_urls_stay_text_and_gateway_files_travel_as_bytes() {
        let writer = files();
        let name = writer
            .put(Bytes::from_static(b"\x89PNG fake"), OutputFormat::Png)
            .await;
        let local = Bytes::from(format!("{}{name}", crate::files::PATH_PREFIX));
        let remote = Bytes::from_static(b"https://v3.fal.media/files/x.png");
        let g = generation(ResponseFormat::Url, vec![local.clone(), remote.clone()]);

        let value = encode(&g, &writer, 0).await.unwrap();
        let reader = files();
        let back = decode(&value, 0).unwrap().into_generation(&reader).await;

        assert_eq!(back.images[1], remote);
        let path = std::str::from_utf8(&back.images[0]).unwrap();
        let new_name = path.strip_prefix(crate::files::PATH_PREFIX).unwrap();
        assert_ne!(new_name, &*name, "the reader links to its own copy");
        assert_eq!(
            reader.get(new_name).await.unwrap().bytes,
            Bytes::from_static(b"\x89PNG fake")
        );
    }

    #[tokio::test]
    async fn an_answer_linking_to_a_file_already_gone_is_not_shared() {
        let g = generation(
            ResponseFormat::Url,
            vec![Bytes::from(format!(
                "{}{}",
                crate::files::PATH_PREFIX,
                "0123.png"
            ))],
        );
        assert!(encode(&g, &files(), 0).await.is_none());
    }

    #[test]
    fn malformed_or_foreign_values_are_refused() {
        let g = generation(ResponseFormat::Url, vec![Bytes::from_static(b"https://x")]);
        let good = frame(&g, 0, &[(Stored::Url, Bytes::from_static(b"https://x"))]).unwrap();
        assert!(decode(&good, 0).is_some());
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], 0).is_none(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer, 0).is_none());
        let mut other = good.clone();
        other[3] = b'2';
        assert!(decode(&other, 0).is_none());
        assert!(decode(b"{\"created\":1}", 0).is_none());
    }
}
