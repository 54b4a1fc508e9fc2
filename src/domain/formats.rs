//! The shapes an image can take: aspect ratio (with the pixel size Imagen 4
//! delivers for it), encoded format, and how it travels back to the client.

/// The aspect ratios Imagen 4 accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AspectRatio {
    Square,
    Landscape16x9,
    Portrait9x16,
    Landscape4x3,
    Portrait3x4,
}

impl AspectRatio {
    pub const ALL: [AspectRatio; 5] = [
        AspectRatio::Square,
        AspectRatio::Landscape16x9,
        AspectRatio::Portrait9x16,
        AspectRatio::Landscape4x3,
        AspectRatio::Portrait3x4,
    ];

    /// The `W:H` spelling (fal's `aspect_ratio` value).
    pub fn as_str(self) -> &'static str {
        match self {
            AspectRatio::Square => "1:1",
            AspectRatio::Landscape16x9 => "16:9",
            AspectRatio::Portrait9x16 => "9:16",
            AspectRatio::Landscape4x3 => "4:3",
            AspectRatio::Portrait3x4 => "3:4",
        }
    }

    /// Width over height.
    fn ratio(self) -> f64 {
        match self {
            AspectRatio::Square => 1.0,
            AspectRatio::Landscape16x9 => 16.0 / 9.0,
            AspectRatio::Portrait9x16 => 9.0 / 16.0,
            AspectRatio::Landscape4x3 => 4.0 / 3.0,
            AspectRatio::Portrait3x4 => 3.0 / 4.0,
        }
    }

    /// The ratio nearest to `width`:`height` in log space, so 2:1 and 1:2
    /// are equally far from 1:1.
    pub fn nearest(width: u32, height: u32) -> AspectRatio {
        let target = (f64::from(width) / f64::from(height)).ln();
        AspectRatio::ALL
            .into_iter()
            .min_by(|a, b| {
                let da = (a.ratio().ln() - target).abs();
                let db = (b.ratio().ln() - target).abs();
                da.total_cmp(&db)
            })
            .unwrap_or(AspectRatio::Square)
    }

    /// The pixel size Imagen 4 delivers for this ratio.
    pub fn imagen_dimensions(self) -> (u32, u32) {
        match self {
            AspectRatio::Square => (1024, 1024),
            AspectRatio::Landscape16x9 => (1408, 768),
            AspectRatio::Portrait9x16 => (768, 1408),
            AspectRatio::Landscape4x3 => (1280, 896),
            AspectRatio::Portrait3x4 => (896, 1280),
        }
    }
}

/// The encoded image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 3] = [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp];

    /// The name OpenAI and fal both use, also the file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Webp => "webp",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        OutputFormat::ALL.into_iter().find(|f| f.as_str() == name)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }

    /// The format encoded `bytes` are in, by their signature; `None` for
    /// anything that is not a PNG, JPEG or WebP file.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(OutputFormat::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(OutputFormat::Jpeg)
        } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
            Some(OutputFormat::Webp)
        } else {
            None
        }
    }
}

/// How images travel back to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseFormat {
    /// A link: the upstream's CDN URL, or the gateway's own file link.
    Url,
    /// The image itself, as standard base64.
    B64Json,
}

impl ResponseFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFormat::Url => "url",
            ResponseFormat::B64Json => "b64_json",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagen_dimensions_follow_the_ratio() {
        let table = [
            (AspectRatio::Square, (1024, 1024)),
            (AspectRatio::Landscape16x9, (1408, 768)),
            (AspectRatio::Portrait9x16, (768, 1408)),
            (AspectRatio::Landscape4x3, (1280, 896)),
            (AspectRatio::Portrait3x4, (896, 1280)),
        ];
        for (ratio, dims) in table {
            assert_eq!(ratio.imagen_dimensions(), dims);
            // Each ratio's own pixel size is nearest to itself.
            assert_eq!(AspectRatio::nearest(dims.0, dims.1), ratio);
        }
    }

    #[test]
    fn format_names_round_trip() {
        for f in OutputFormat::ALL {
            assert_eq!(OutputFormat::from_name(f.as_str()), Some(f));
        }
        assert_eq!(OutputFormat::from_name("gif"), None);
    }

    #[test]
    fn formats_are_told_by_their_signature() {
        assert_eq!(
            OutputFormat::sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some(OutputFormat::Png)
        );
        assert_eq!(
            OutputFormat::sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]),
            Some(OutputFormat::Jpeg)
        );
        assert_eq!(
            OutputFormat::sniff(b"RIFF\x10\0\0\0WEBPVP8 "),
            Some(OutputFormat::Webp)
        );
        for other in [
            &b""[..],
            b"# HELP image_gateway_build_info",
            b"RIFF\x10\0\0\0WAVEfmt ",
            b"GIF89a",
            b"<svg xmlns=",
        ] {
            assert_eq!(OutputFormat::sniff(other), None, "{other:?}");
        }
    }
}
