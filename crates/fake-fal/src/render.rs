//! The fake's pictures: one deterministic image per (size, image index,
//! noise), encoded as PNG, JPEG or WebP and kept for the life of the process,
//! so a benchmark measures the gateway rather than the fake's encoder.
//!
//! `noise` adds pseudo-random grain that PNG cannot compress away: at 7 a
//! 1024x1024 PNG is about 1.5 MB (Imagen's real PNGs are this large), at 24
//! about 2.4 MB. scripts/bench and tests/alloc.rs rely on these sizes.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, ImageError, RgbImage};

use crate::state::lock;
use crate::wire::OutputFormat;

/// (width, height, format, noise, image index).
type ImageKey = (u32, u32, OutputFormat, u8, u8);

/// The encoded image number `index` of an answer. Indices repeat every four
/// pictures (Imagen's most per call).
pub(crate) fn image_bytes(
    width: u32,
    height: u32,
    format: OutputFormat,
    noise: u8,
    index: u8,
) -> Result<Bytes, ImageError> {
    static CACHE: OnceLock<Mutex<HashMap<ImageKey, Bytes>>> = OnceLock::new();
    let key = (width, height, format, noise, index % 4);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(bytes) = lock(cache).get(&key) {
        return Ok(bytes.clone());
    }
    let bytes = encode(&picture(width, height, noise, key.4), format)?;
    lock(cache).insert(key, bytes.clone());
    Ok(bytes)
}

/// Two colours for each image index: the diagonal gradient runs between them.
const PALETTE: [([f32; 3], [f32; 3]); 4] = [
    ([32.0, 64.0, 160.0], [240.0, 160.0, 64.0]),
    ([16.0, 120.0, 96.0], [230.0, 230.0, 140.0]),
    ([120.0, 24.0, 72.0], [250.0, 190.0, 200.0]),
    ([40.0, 40.0, 48.0], [150.0, 210.0, 250.0]),
];

/// A diagonal gradient with soft ripples and a glowing sun whose place
/// depends on `index`, plus `noise` grain.
fn picture(width: u32, height: u32, noise: u8, index: u8) -> RgbImage {
    let (from, to) = PALETTE[usize::from(index % 4)];
    let (w, h) = (width as f32, height as f32);
    let scale = w.min(h);
    let sun = [w * (0.2 + 0.2 * f32::from(index % 4)), h * 0.3];
    let radius = 0.12 * scale;
    let mut img = RgbImage::from_fn(width, height, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let t = (xf / w + yf / h) / 2.0;
        let ripple = 12.0 * (xf / scale * 19.0).sin() * (yf / scale * 13.0).cos();
        let (dx, dy) = ((xf - sun[0]) / radius, (yf - sun[1]) / radius);
        let glow = (1.5 - (dx * dx + dy * dy).sqrt()).clamp(0.0, 1.0);
        image::Rgb(std::array::from_fn(|c| {
            let base = from[c] * (1.0 - t) + to[c] * t + ripple;
            (base * (1.0 - glow) + 255.0 * glow).clamp(0.0, 255.0) as u8
        }))
    });
    if noise > 0 {
        // xorshift64: fast, and the same grain on every run.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for channel in img.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *channel = channel.wrapping_add((x % u64::from(noise)) as u8);
        }
    }
    img
}

/// PNG (fast compression, adaptive filters), JPEG at quality 90, or lossless
/// WebP (the `image` crate has no lossy WebP encoder).
fn encode(img: &RgbImage, format: OutputFormat) -> Result<Bytes, ImageError> {
    let (w, h) = img.dimensions();
    let mut out = Cursor::new(Vec::with_capacity((w * h) as usize));
    let pixels = img.as_raw();
    match format {
        OutputFormat::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
                .write_image(pixels, w, h, ExtendedColorType::Rgb8)
        }
        OutputFormat::Jpeg => JpegEncoder::new_with_quality(&mut out, 90).write_image(
            pixels,
            w,
            h,
            ExtendedColorType::Rgb8,
        ),
        OutputFormat::Webp => {
            WebPEncoder::new_lossless(&mut out).write_image(pixels, w, h, ExtendedColorType::Rgb8)
        }
    }?;
    Ok(Bytes::from(out.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_decode_as_their_format_and_size_and_differ_by_index() {
        for (format, expected) in [
            (OutputFormat::Png, image::ImageFormat::Png),
            (OutputFormat::Jpeg, image::ImageFormat::Jpeg),
            (OutputFormat::Webp, image::ImageFormat::WebP),
        ] {
            let bytes = image_bytes(88, 48, format, 0, 0).unwrap();
            assert_eq!(image::guess_format(&bytes).unwrap(), expected);
            let decoded = image::load_from_memory(&bytes).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (88, 48));
        }
        let first = image_bytes(88, 48, OutputFormat::Png, 0, 0).unwrap();
        assert_eq!(
            first,
            encode(&picture(88, 48, 0, 0), OutputFormat::Png).unwrap()
        );
        assert_ne!(first, image_bytes(88, 48, OutputFormat::Png, 0, 1).unwrap());
        assert_eq!(first, image_bytes(88, 48, OutputFormat::Png, 0, 4).unwrap());
    }

    /// The benchmark's `--noise 7` stands for Imagen's ~1.5 MB PNGs.
    #[test]
    fn noise_makes_a_full_size_png_realistically_large() {
        let smooth = image_bytes(1024, 1024, OutputFormat::Png, 0, 0).unwrap();
        let noisy = image_bytes(1024, 1024, OutputFormat::Png, 7, 0).unwrap();
        assert!(
            smooth.len() < 600_000,
            "{} bytes without noise",
            smooth.len()
        );
        assert!(
            (1_300_000..1_800_000).contains(&noisy.len()),
            "{} bytes at noise 7",
            noisy.len()
        );
    }
}
