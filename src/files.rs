//! The in-memory image store behind `GET /v1/images/files/{id}`: how `url`
//! answers are served for images the gateway holds itself (the local backend,
//! or fal data URIs when a client asked for URLs). Bounded in bytes, with a TTL.
//!
//! Ids are 128 random bits, so a link is a capability: like OpenAI's own
//! signed image URLs, it works without an API key (browsers can load it).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use moka::future::Cache;

use crate::domain::OutputFormat;

/// Where the files are served; cached answers hold links as such paths.
pub const PATH_PREFIX: &str = "/v1/images/files/";

#[derive(Clone)]
pub struct StoredFile {
    pub bytes: Bytes,
    /// Read from the bytes themselves, never taken from a claim.
    pub format: OutputFormat,
}

pub struct FileStore {
    files: Cache<Arc<str>, StoredFile>,
    ttl: Duration,
}

impl FileStore {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let files = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &Arc<str>, v: &StoredFile| -> u32 {
                u32::try_from(v.bytes.len() + 64).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        Self { files, ttl }
    }

    /// Store an image; returns its file name (`<id>.<ext>`), or `None`
    /// when the bytes are no PNG, JPEG or WebP file (whatever was claimed).
    /// The format it is served as is read from the bytes.
    pub async fn put(&self, bytes: Bytes) -> Option<Arc<str>> {
        let format = OutputFormat::sniff(&bytes)?;
        let name: Arc<str> =
            format!("{}.{}", uuid::Uuid::new_v4().simple(), format.as_str()).into();
        self.files
            .insert(name.clone(), StoredFile { bytes, format })
            .await;
        Some(name)
    }

    pub async fn get(&self, name: &str) -> Option<StoredFile> {
        self.files.get(name).await
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Bytes held, as last counted (without applying pending evictions).
    pub fn bytes(&self) -> u64 {
        self.files.weighted_size()
    }

    /// (entries, bytes), after applying pending evictions.
    pub async fn usage(&self) -> (u64, u64) {
        self.files.run_pending_tasks().await;
        (self.files.entry_count(), self.files.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_are_kept_only_as_the_image_their_bytes_are() {
        let store = FileStore::new(1 << 20, Duration::from_secs(60));
        let jpeg = Bytes::from_static(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]);
        let name = store.put(jpeg).await.unwrap();
        assert!(name.ends_with(".jpeg"), "{name}");
        assert_eq!(
            store.get(&name).await.unwrap().format.content_type(),
            "image/jpeg"
        );
        let html = Bytes::from_static(b"<html><script>alert(1)</script></html>");
        assert!(store.put(html).await.is_none(), "not an image: not served");
    }
}
