//! The real pixel size of a delivered image, for the answer's `size`: read
//! from the image's own header when the gateway holds its bytes, else the
//! backend's word for it when that is plausible. An upstream that says
//! `0x0` (or nothing) cannot make the gateway say so.

use std::io::Cursor;

use base64::Engine;

use crate::backend::{GeneratedImage, ImageContent};

/// The widest side an answer may claim without its bytes to show it.
const MAX_SIDE: u32 = 16_384;

/// Bytes read to find the size in a header; a JPEG with large metadata
/// before its frame header is decoded whole instead.
const HEADER_BYTES: usize = 4 * 1024;

/// The pixel size of `image`, when it can be known or believed.
pub fn dimensions(image: &GeneratedImage) -> Option<(u32, u32)> {
    let from_bytes = match &image.content {
        ImageContent::Raw(raw) => header_dimensions(raw),
        ImageContent::Base64(text) => {
            let b64 = &base64::engine::general_purpose::STANDARD;
            let prefix = &text[..text.len().min(HEADER_BYTES / 3 * 4)];
            b64.decode(prefix)
                .ok()
                .and_then(|head| header_dimensions(&head))
                .or_else(|| {
                    (prefix.len() < text.len())
                        .then(|| b64.decode(text).ok())
                        .flatten()
                        .and_then(|all| header_dimensions(&all))
                })
        }
        ImageContent::Url(_) => None,
    };
    from_bytes.or_else(|| {
        image
            .width
            .zip(image.height)
            .filter(|&(w, h)| (1..=MAX_SIDE).contains(&w) && (1..=MAX_SIDE).contains(&h))
    })
}

fn header_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
        .filter(|&(w, h)| w > 0 && h > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn encoded(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image::RgbImage::new(w, h)
            .write_to(&mut out, format)
            .unwrap();
        out.into_inner()
    }

    fn image(content: ImageContent, claimed: Option<(u32, u32)>) -> GeneratedImage {
        GeneratedImage {
            content,
            width: claimed.map(|c| c.0),
            height: claimed.map(|c| c.1),
            format: None,
        }
    }

    #[test]
    fn sizes_come_from_the_bytes_whatever_the_upstream_claims() {
        let b64 = &base64::engine::general_purpose::STANDARD;
        for format in [
            image::ImageFormat::Png,
            image::ImageFormat::Jpeg,
            image::ImageFormat::WebP,
        ] {
            let bytes = encoded(40, 24, format);
            let raw = image(ImageContent::Raw(Bytes::from(bytes.clone())), Some((0, 0)));
            assert_eq!(dimensions(&raw), Some((40, 24)), "{format:?}");
            let text = Bytes::from(b64.encode(&bytes));
            let inline = image(ImageContent::Base64(text), Some((1024, 1024)));
            assert_eq!(dimensions(&inline), Some((40, 24)), "{format:?}");
        }
    }

    #[test]
    fn links_keep_a_plausible_claim_and_drop_an_absurd_one() {
        let link = |claim| {
            image(
                ImageContent::Url("https://v3.fal.media/x.png".into()),
                claim,
            )
        };
        assert_eq!(dimensions(&link(Some((1408, 768)))), Some((1408, 768)));
        assert_eq!(dimensions(&link(Some((0, 0)))), None);
        assert_eq!(dimensions(&link(Some((1, 100_000)))), None);
        assert_eq!(dimensions(&link(None)), None);
    }
}
