//! How a generation travels through the shared (Redis) cache: a small binary
//! frame. Base64 images are stored as their raw bytes (a quarter smaller;
//! re-encoding a 2 MB PNG takes about a millisecond) and not compressed
//! further, since PNG, JPEG and WebP are compressed already. Images the
//! gateway serves itself (`/v1/images/files/...` links, which only the
//! replica holding them can serve) travel as their bytes; the reading
//! replica keeps its own copy and links to it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;

use crate::domain::{BackendKind, Generation, Image, OutputFormat, ResponseFormat};
use crate::error::ApiError;
use crate::files::FileStore;

const MAGIC: &[u8; 4] = b"IGW3";
const FAILURE_MAGIC: &[u8; 4] = b"IGWF";

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How one image is kept in an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Stored {
    /// Raw image bytes of a `b64_json` answer; base64-encoded again on read.
    Base64AsRaw = 0,
    /// An absolute URL (fal's CDN), kept as text.
    Url = 1,
    /// Raw bytes of an image this gateway serves at `/v1/images/files/...`.
    File = 2,
}

/// A decoded entry, before its images are put back into shape.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    created: i64,
    age: Duration,
    size: String,
    output_format: OutputFormat,
    response_format: ResponseFormat,
    backend: BackendKind,
    endpoint: String,
    seed: Option<u64>,
    cost: u64,
    images: Vec<(Stored, Bytes)>,
}

impl Entry {
    /// The generation, with linked files put into this replica's store;
    /// `None` when a file is not an image.
    pub async fn into_generation(self, files: &FileStore) -> Option<Generation> {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut images = Vec::with_capacity(self.images.len());
        for (kind, bytes) in self.images {
            images.push(match kind {
                Stored::Base64AsRaw => Image::Base64(Bytes::from(b64.encode(&bytes))),
                Stored::Url => Image::Url(String::from_utf8_lossy(&bytes).into()),
                Stored::File => Image::File(files.put(bytes).await?),
            });
        }
        let now = std::time::Instant::now();
        Some(Generation {
            created: self.created,
            produced_at: now.checked_sub(self.age).unwrap_or(now),
            size: self.size,
            output_format: self.output_format,
            response_format: self.response_format,
            images,
            backend: self.backend,
            endpoint: self.endpoint.into(),
            seed: self.seed,
            // What making it cost where it was made: what this answer saves.
            cost: crate::domain::MicroUsd(self.cost),
        })
    }
}

/// The entry frame: magic `IGW3`, created (i64), produced-at unix ms (u64),
/// output format, response format and backend (one byte each), size (u16
/// length + text), the endpoint that produced it (u16 length + text), the
/// seed it reported (a presence byte, then a u64), what making it cost
/// (micro-USD, u64), image count
/// (u16), then per image a kind byte, a u32 length and the bytes.
/// Little-endian. `None` when the generation cannot be
/// shared (a linked file already gone from the store).
pub async fn encode(g: &Generation, files: &FileStore, now_ms: u64) -> Option<Vec<u8>> {
    let mut images: Vec<(Stored, Bytes)> = Vec::with_capacity(g.images.len());
    for image in &g.images {
        images.push(match image {
            Image::Base64(text) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()?;
                (Stored::Base64AsRaw, Bytes::from(raw))
            }
            Image::Url(url) => (Stored::Url, Bytes::copy_from_slice(url.as_bytes())),
            Image::File(name) => (Stored::File, files.get(name).await?.bytes),
        });
    }
    let produced_ms = now_ms.saturating_sub(g.produced_at.elapsed().as_millis() as u64);
    frame(g, produced_ms, &images)
}

fn output_format_code(f: OutputFormat) -> u8 {
    match f {
        OutputFormat::Png => 0,
        OutputFormat::Jpeg => 1,
        OutputFormat::Webp => 2,
    }
}

fn frame(g: &Generation, produced_ms: u64, images: &[(Stored, Bytes)]) -> Option<Vec<u8>> {
    let payload: usize = images.iter().map(|(_, b)| b.len() + 5).sum();
    let mut out = Vec::with_capacity(32 + g.size.len() + payload);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&g.created.to_le_bytes());
    out.extend_from_slice(&produced_ms.to_le_bytes());
    out.push(output_format_code(g.output_format));
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
    out.extend_from_slice(&u16::try_from(g.endpoint.len()).ok()?.to_le_bytes());
    out.extend_from_slice(g.endpoint.as_bytes());
    match g.seed {
        Some(seed) => {
            out.push(1);
            out.extend_from_slice(&seed.to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&g.cost.0.to_le_bytes());
    out.extend_from_slice(&u16::try_from(images.len()).ok()?.to_le_bytes());
    for (kind, bytes) in images {
        out.push(*kind as u8);
        out.extend_from_slice(&u32::try_from(bytes.len()).ok()?.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    Some(out)
}

/// The inverse of [`frame`]; `None` for anything malformed.
pub fn decode(bytes: &[u8], now_ms: u64) -> Option<Entry> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return None;
    }
    let created = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let produced_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let code = r.byte()?;
    let output_format = OutputFormat::ALL
        .into_iter()
        .find(|f| output_format_code(*f) == code)?;
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
    let endpoint_len = usize::from(r.u16()?);
    let endpoint = String::from_utf8(r.take(endpoint_len)?.to_vec()).ok()?;
    let seed = match r.byte()? {
        0 => None,
        1 => Some(u64::from_le_bytes(r.take(8)?.try_into().ok()?)),
        _ => return None,
    };
    let cost = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
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
        endpoint,
        seed,
        cost,
        images,
    })
}

/// A failed generation as the waiting replicas receive it: `IGWF`, a kind
/// byte, a u64 (retry-after seconds), then the message. Only failures of the
/// generation itself travel; one replica's own condition (a client gone,
/// shutdown, overload, a bug) does not, and the waiters take over instead.
pub fn encode_failure(e: &ApiError) -> Option<Vec<u8>> {
    let (kind, retry, message): (u8, u64, &str) = match e {
        ApiError::ContentPolicy { message } => (0, 0, message),
        ApiError::Upstream { message } => (1, 0, message),
        ApiError::UpstreamTimeout { message } => (2, 0, message),
        ApiError::UpstreamAuth => (3, 0, ""),
        ApiError::UpstreamRateLimited {
            retry_after_seconds,
        } => (4, *retry_after_seconds, ""),
        ApiError::UpstreamUnavailable {
            message,
            retry_after_seconds,
        } => (5, *retry_after_seconds, message),
        _ => return None,
    };
    let mut out = Vec::with_capacity(13 + message.len());
    out.extend_from_slice(FAILURE_MAGIC);
    out.push(kind);
    out.extend_from_slice(&retry.to_le_bytes());
    out.extend_from_slice(message.as_bytes());
    Some(out)
}

/// The inverse of [`encode_failure`]; `None` for anything else.
pub fn decode_failure(bytes: &[u8]) -> Option<ApiError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != FAILURE_MAGIC {
        return None;
    }
    let kind = r.byte()?;
    let retry_after_seconds = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let message = String::from_utf8(bytes[r.at..].to_vec()).ok()?;
    Some(match kind {
        0 => ApiError::ContentPolicy { message },
        1 => ApiError::Upstream { message },
        2 => ApiError::UpstreamTimeout { message },
        3 => ApiError::UpstreamAuth,
        4 => ApiError::UpstreamRateLimited {
            retry_after_seconds,
        },
        5 => ApiError::UpstreamUnavailable {
            message,
            retry_after_seconds,
        },
        _ => return None,
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
    use actix_web::ResponseError;

    fn generation(format: ResponseFormat, images: Vec<Image>) -> Generation {
        Generation {
            created: 1_700_000_000,
            produced_at: std::time::Instant::now(),
            size: "1408x768".into(),
            output_format: OutputFormat::Webp,
            response_format: format,
            images,
            backend: BackendKind::Fal,
            endpoint: "fal-ai/nano-banana-2".into(),
            seed: Some(42),
            cost: crate::domain::MicroUsd(80_000),
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
        let g = generation(
            ResponseFormat::B64Json,
            vec![Image::Base64(text.clone()), Image::Base64(text.clone())],
        );
        let files = files();

        let value = encode(&g, &files, 10_000).await.unwrap();
        // Two raw images plus a small header (with the endpoint's id): a
        // quarter smaller than base64.
        assert!(value.len() < 2 * raw.len() + 96, "{}", value.len());
        assert!(value.len() < 2 * text.len() * 3 / 4 + 96);

        let back = decode(&value, 10_250)
            .unwrap()
            .into_generation(&files)
            .await
            .unwrap();
        assert_eq!(back.images, g.images);
        assert_eq!(back.created, g.created);
        assert_eq!(back.size, g.size);
        assert_eq!(back.output_format, OutputFormat::Webp);
        assert_eq!(back.response_format, ResponseFormat::B64Json);
        assert_eq!(back.backend, BackendKind::Fal);
        assert_eq!(&*back.endpoint, "fal-ai/nano-banana-2");
        assert_eq!(back.seed, Some(42));
        assert_eq!(back.cost, crate::domain::MicroUsd(80_000), "what it saves");
        // It keeps the age it had: 250 ms.
        let age = back.produced_at.elapsed();
        assert!(age >= Duration::from_millis(250) && age < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn remote_urls_stay_text_and_gateway_files_travel_as_bytes() {
        let writer = files();
        let name = writer
            .put(Bytes::from_static(b"\x89PNG\r\n\x1a\n fake"))
            .await
            .unwrap();
        let remote = Image::Url("https://v3.fal.media/files/x.png".into());
        let g = generation(
            ResponseFormat::Url,
            vec![Image::File(name.clone()), remote.clone()],
        );

        let value = encode(&g, &writer, 0).await.unwrap();
        let reader = files();
        let back = decode(&value, 0)
            .unwrap()
            .into_generation(&reader)
            .await
            .unwrap();

        assert_eq!(back.images[1], remote);
        let Image::File(new_name) = &back.images[0] else {
            panic!("{:?}", back.images[0]);
        };
        assert_ne!(new_name, &name, "the reader links to its own copy");
        assert_eq!(
            reader.get(new_name).await.unwrap().bytes,
            Bytes::from_static(b"\x89PNG\r\n\x1a\n fake")
        );
    }

    #[tokio::test]
    async fn an_answer_linking_to_a_file_already_gone_is_not_shared() {
        let g = generation(ResponseFormat::Url, vec![Image::File("0123.png".into())]);
        assert!(encode(&g, &files(), 0).await.is_none());
    }

    #[test]
    fn failures_of_the_generation_travel_and_local_conditions_do_not() {
        let shared = [
            ApiError::ContentPolicy {
                message: "flagged".into(),
            },
            ApiError::Upstream {
                message: "fal failed".into(),
            },
            ApiError::UpstreamTimeout {
                message: "too slow".into(),
            },
            ApiError::UpstreamAuth,
            ApiError::UpstreamRateLimited {
                retry_after_seconds: 7,
            },
            ApiError::UpstreamUnavailable {
                message: "no runner".into(),
                retry_after_seconds: 3,
            },
        ];
        for e in shared {
            let back = decode_failure(&encode_failure(&e).unwrap()).unwrap();
            assert_eq!(back.body_json(), e.body_json());
            assert_eq!(back.status_code(), e.status_code());
        }
        for e in [
            ApiError::ShuttingDown,
            ApiError::ClientClosedRequest,
            ApiError::Overloaded {
                retry_after_seconds: 1,
            },
            ApiError::Internal,
        ] {
            assert!(encode_failure(&e).is_none(), "{e:?}");
        }
        assert!(decode_failure(b"IGW1....").is_none());
        assert!(decode_failure(b"IGWF").is_none());
    }

    #[test]
    fn malformed_or_foreign_values_are_refused() {
        let g = generation(ResponseFormat::Url, vec![Image::Url("https://x".into())]);
        let good = frame(&g, 0, &[(Stored::Url, Bytes::from_static(b"https://x"))]).unwrap();
        assert!(decode(&good, 0).is_some());
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], 0).is_none(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer, 0).is_none());
        let mut other = good.clone();
        other[3] = b'1';
        assert!(decode(&other, 0).is_none());
        assert!(decode(b"{\"created\":1}", 0).is_none());
    }
}
