//! The offline backend: real images rendered in-process, so the gateway works
//! end to end with no `FAL_KEY`. Each image is a deterministic function of
//! (prompt, seed, image index), drawn at the size the job's endpoint would
//! deliver (its profile: Imagen 4's 1408x768 for 16:9, FLUX's exact size,
//! ...), encoded in the format that endpoint would deliver, and labelled in
//! its pixels as an offline preview ([`stamp`]).

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use sha2::{Digest, Sha256};

use super::{GeneratedImage, ImageBackend, ImageContent, JobContext, JobOutput};
use crate::domain::profile::SeedSupport;
use crate::domain::{BackendKind, Job, OutputFormat};
use crate::error::ApiError;

mod stamp;

pub struct LocalBackend {
    delay: Duration,
}

impl LocalBackend {
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }
}

impl ImageBackend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn generate<'a>(
        &'a self,
        job: &'a Job,
        ctx: &'a JobContext,
    ) -> BoxFuture<'a, Result<JobOutput, ApiError>> {
        async move {
            let started = tokio::time::Instant::now();
            if !self.delay.is_zero() {
                ctx.sleep(self.delay).await.map_err(|s| ctx.error(s))?;
            }
            ctx.room_for_answer().await?;
            // The size and format the job's endpoint would deliver (its profile).
            let (width, height) = job.expected_size;
            let prompt = job.prompt.clone();
            let model = job.model_id.clone();
            let seed = job.seed;
            let format = job.delivered_format;
            let count = job.num_images;
            let render = tokio::task::spawn_blocking(move || {
                (0..count)
                    .map(|i| {
                        let mut img = render(&prompt, seed, i, width, height);
                        let label = stamp::Label {
                            model: &model,
                            width,
                            height,
                            prompt: &prompt,
                        };
                        stamp::stamp(&mut img, &label);
                        encode(&img, format)
                    })
                    .collect::<Result<Vec<Bytes>, ApiError>>()
            });
            let encoded = ctx
                .race(render)
                .await
                .map_err(|s| ctx.error(s))?
                .map_err(|_| ApiError::Internal)??;
            Ok(JobOutput {
                images: encoded
                    .into_iter()
                    .map(|bytes| GeneratedImage {
                        content: ImageContent::Raw(bytes),
                        width: Some(width),
                        height: Some(height),
                        format: Some(format),
                    })
                    .collect(),
                queued: Some(Duration::ZERO),
                running: Some(started.elapsed()),
                // What an endpoint that reports its seed would say.
                seed: (job.profile.input.seed == SeedSupport::InputOutput)
                    .then_some(job.seed.map(u64::from))
                    .flatten(),
                // Offline renders cost nothing.
                billable_units: Some(0.0),
            })
        }
        .boxed()
    }
}

/// A small deterministic generator seeded from a digest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn color(&mut self) -> [f32; 3] {
        // Saturated colours: pick a hue, convert from HSV with high S and V.
        let h = self.unit() * 6.0;
        let s = 0.55 + 0.4 * self.unit();
        let v = 0.6 + 0.4 * self.unit();
        let c = v * s;
        let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
        let (r, g, b) = match h as u32 {
            0 => (c, x, 0.0),
            1 => (x, c, 0.0),
            2 => (0.0, c, x),
            3 => (0.0, x, c),
            4 => (x, 0.0, c),
            _ => (c, 0.0, x),
        };
        let m = v - c;
        [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
    }
}

/// Draw one picture: a two-colour sky gradient, soft glowing discs and a
/// horizon band, all placed by the prompt's digest.
fn render(prompt: &str, seed: Option<u32>, index: u8, width: u32, height: u32) -> RgbImage {
    let mut h = Sha256::new();
    h.update(prompt.as_bytes());
    h.update(seed.map_or([0xff; 5], |s| {
        let b = s.to_le_bytes();
        [0, b[0], b[1], b[2], b[3]]
    }));
    h.update([index]);
    let digest = h.finalize();
    let mut seed_bytes = [0u8; 8];
    seed_bytes.copy_from_slice(&digest[..8]);
    let mut rng = Rng(u64::from_le_bytes(seed_bytes));

    let top = rng.color();
    let bottom = rng.color();
    let horizon = 0.45 + 0.3 * rng.unit();
    let band = rng.color();
    let discs: Vec<([f32; 2], f32, [f32; 3])> = (0..4 + (rng.next() % 4) as usize)
        .map(|_| {
            let centre = [rng.unit(), rng.unit() * horizon];
            let radius = 0.05 + 0.2 * rng.unit();
            (centre, radius, rng.color())
        })
        .collect();

    let (wf, hf) = (width as f32, height as f32);
    let scale = wf.min(hf);
    let mut img = RgbImage::new(width, height);
    for (y, row) in img.rows_mut().enumerate() {
        let v = y as f32 / hf;
        let base: [f32; 3] = if v < horizon {
            let t = v / horizon;
            std::array::from_fn(|c| top[c] * (1.0 - t) + bottom[c] * t)
        } else {
            let t = ((v - horizon) / (1.0 - horizon)).min(1.0);
            std::array::from_fn(|c| band[c] * (1.0 - 0.6 * t))
        };
        for (x, px) in row.enumerate() {
            let mut rgb = base;
            for (centre, radius, colour) in &discs {
                let dx = (x as f32 - centre[0] * wf) / scale;
                let dy = (y as f32 - centre[1] * hf) / scale;
                let d2 = (dx * dx + dy * dy) / (radius * radius);
                if d2 < 4.0 {
                    // A bright core with a soft halo.
                    let a = if d2 < 1.0 {
                        0.85
                    } else {
                        0.85 * (4.0 - d2) / 3.0
                    };
                    for c in 0..3 {
                        rgb[c] = rgb[c] * (1.0 - a) + colour[c] * a;
                    }
                }
            }
            px.0 = rgb.map(|c| c.clamp(0.0, 255.0) as u8);
        }
    }
    img
}

/// Encode as PNG, JPEG or WebP (lossless; the `image` crate has no lossy WebP).
fn encode(img: &RgbImage, format: OutputFormat) -> Result<Bytes, ApiError> {
    let mut out = Cursor::new(Vec::with_capacity((img.width() * img.height()) as usize));
    let (w, h) = img.dimensions();
    let result =
        match format {
            OutputFormat::Png => image::codecs::png::PngEncoder::new_with_quality(
                &mut out,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            )
            .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8),
            OutputFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8),
            OutputFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
                .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8),
        };
    result.map_err(|e| {
        tracing::error!(error = %e, "local backend could not encode an image");
        ApiError::Internal
    })?;
    Ok(Bytes::from(out.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_are_deterministic_and_vary_with_prompt_seed_and_index() {
        let a = render("a lighthouse", None, 0, 64, 48);
        assert_eq!(a, render("a lighthouse", None, 0, 64, 48));
        assert_ne!(a, render("a lighthouse!", None, 0, 64, 48));
        assert_ne!(a, render("a lighthouse", Some(1), 0, 64, 48));
        assert_ne!(a, render("a lighthouse", None, 1, 64, 48));
    }

    #[test]
    fn encodings_decode_back_to_the_requested_format_and_size() {
        let img = render("x", None, 0, 128, 72);
        for (format, expected) in [
            (OutputFormat::Png, image::ImageFormat::Png),
            (OutputFormat::Jpeg, image::ImageFormat::Jpeg),
            (OutputFormat::Webp, image::ImageFormat::WebP),
        ] {
            let bytes = encode(&img, format).unwrap();
            assert_eq!(image::guess_format(&bytes).unwrap(), expected);
            let decoded = image::load_from_memory(&bytes).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (128, 72));
        }
    }
}
