//! OpenAI's response JSON for a finished generation:
//! `{"created", "data": [{"url"} | {"b64_json"}], "output_format", "size"}`.
//!
//! Image payloads are never copied: the body is a list of chunks that share
//! the generation's bytes.

use bytes::Bytes;

use crate::domain::{Generation, Image};
use crate::files::PATH_PREFIX;

/// Largest piece of an image handed to actix at once. actix-http copies each
/// body chunk into the connection's write buffer and, after the response,
/// frees a buffer that grew past 128 KiB: an image handed over whole (2 MB)
/// costs an image-sized allocation per response, and as much memory per
/// client still reading. Slices of the shared bytes (no copy) keep that
/// buffer small and reused.
pub const BODY_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes as zero-copy slices of at most [`BODY_CHUNK_BYTES`].
pub fn slices(bytes: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    (0..bytes.len())
        .step_by(BODY_CHUNK_BYTES)
        .map(|start| bytes.slice(start..(start + BODY_CHUNK_BYTES).min(bytes.len())))
}

/// The link a client receives for a linked image: remote URLs as they are,
/// the gateway's own files under `base_url`.
pub fn image_link(image: &Image, base_url: &str) -> Option<String> {
    match image {
        Image::Url(url) => Some(url.to_string()),
        Image::File(name) => Some(format!("{base_url}{PATH_PREFIX}{name}")),
        Image::Base64(_) => None,
    }
}

/// The response as chunks: small framing strings around the image payloads,
/// which are shared, not copied. Returns (total length, chunks).
pub fn json_chunks(generation: &Generation, base_url: &str) -> (u64, Vec<Bytes>) {
    let mut chunks = Vec::with_capacity(generation.images.len() * 2 + 1);
    let mut text = format!("{{\"created\":{},\"data\":[", generation.created);
    for (i, image) in generation.images.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        match image {
            Image::Base64(b64) => {
                text.push_str("{\"b64_json\":\"");
                chunks.push(Bytes::from(std::mem::take(&mut text)));
                chunks.extend(slices(b64));
                text.push_str("\"}");
            }
            Image::Url(_) | Image::File(_) => {
                let url = image_link(image, base_url).unwrap_or_default();
                text.push_str("{\"url\":");
                text.push_str(&serde_json::Value::String(url).to_string());
                text.push('}');
            }
        }
    }
    text.push_str(&format!(
        "],\"output_format\":\"{}\",\"size\":\"{}\"}}",
        generation.output_format.as_str(),
        generation.size
    ));
    chunks.push(Bytes::from(text));
    let len = chunks.iter().map(|c| c.len() as u64).sum();
    (len, chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BackendKind, OutputFormat, ResponseFormat};

    fn generation(format: ResponseFormat, images: Vec<Image>) -> Generation {
        Generation {
            created: 1_700_000_000,
            produced_at: std::time::Instant::now(),
            size: "1408x768".into(),
            output_format: OutputFormat::Png,
            response_format: format,
            images,
            backend: BackendKind::Fal,
            endpoint: "fal-ai/imagen4/preview/fast".into(),
            seed: None,
            cost: crate::domain::MicroUsd::ZERO,
        }
    }

    fn joined(chunks: &[Bytes]) -> serde_json::Value {
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        serde_json::from_slice(&all).unwrap()
    }

    #[test]
    fn b64_answers_are_openai_json_sharing_the_image_bytes() {
        let first = Bytes::from_static(b"aGVsbG8=");
        let g = generation(
            ResponseFormat::B64Json,
            vec![
                Image::Base64(first.clone()),
                Image::Base64(Bytes::from_static(b"d29ybGQ=")),
            ],
        );
        let (len, chunks) = json_chunks(&g, "http://gw");
        assert_eq!(len, chunks.iter().map(|c| c.len() as u64).sum::<u64>());
        assert_eq!(
            joined(&chunks),
            serde_json::json!({"created":1_700_000_000,"data":[{"b64_json":"aGVsbG8="},{"b64_json":"d29ybGQ="}],
                               "output_format":"png","size":"1408x768"})
        );
        assert!(chunks.iter().any(|c| c.as_ptr() == first.as_ptr()));
    }

    #[test]
    fn large_images_go_out_in_shared_slices_of_at_most_64_kib() {
        let image = Bytes::from(vec![b'A'; 3 * BODY_CHUNK_BYTES + 5]);
        let parts: Vec<Bytes> = slices(&image).collect();
        assert_eq!(
            parts.iter().map(Bytes::len).collect::<Vec<_>>(),
            [BODY_CHUNK_BYTES, BODY_CHUNK_BYTES, BODY_CHUNK_BYTES, 5]
        );
        for (i, s) in parts.iter().enumerate() {
            assert_eq!(s.as_ptr(), image[i * BODY_CHUNK_BYTES..].as_ptr());
        }
        assert_eq!(slices(&Bytes::new()).count(), 0);
    }

    #[test]
    fn url_answers_make_gateway_files_absolute_and_keep_remote_urls() {
        let g = generation(
            ResponseFormat::Url,
            vec![
                Image::File("abc.png".into()),
                Image::Url("https://v3.fal.media/files/x.png".into()),
            ],
        );
        let (_, chunks) = json_chunks(&g, "http://gw:8080");
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            joined(&chunks)["data"],
            serde_json::json!([{"url":"http://gw:8080/v1/images/files/abc.png"},{"url":"https://v3.fal.media/files/x.png"}])
        );
    }
}
