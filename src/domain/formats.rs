//! The shapes an image can take, in no endpoint's terms: the size and
//! quality a client asked for, the encoded format, how images travel back,
//! and the bounded ratio labels of metrics.

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

/// The size a client asked for: its pixels, or `auto` (the endpoint's
/// default shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SizeRequest {
    Auto,
    Exact { width: u32, height: u32 },
}

impl SizeRequest {
    /// The longer side asked for; `None` for `auto`.
    pub fn longer_side(self) -> Option<u32> {
        match self {
            SizeRequest::Auto => None,
            SizeRequest::Exact { width, height } => Some(width.max(height)),
        }
    }
}

/// OpenAI's `quality`, including 2026's `xhigh` and `max`. It never changes
/// the model; where an endpoint has resolution tiers it sets the least tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quality {
    Auto,
    Standard,
    Low,
    Medium,
    High,
    Hd,
    Xhigh,
    Max,
}

impl Quality {
    pub const ALL: [Quality; 8] = [
        Quality::Auto,
        Quality::Standard,
        Quality::Low,
        Quality::Medium,
        Quality::High,
        Quality::Hd,
        Quality::Xhigh,
        Quality::Max,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Auto => "auto",
            Quality::Standard => "standard",
            Quality::Low => "low",
            Quality::Medium => "medium",
            Quality::High => "high",
            Quality::Hd => "hd",
            Quality::Xhigh => "xhigh",
            Quality::Max => "max",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Quality::ALL.into_iter().find(|q| q.as_str() == name)
    }

    /// The least resolution scale (thousandths of `1K`) this quality asks
    /// for: `hd`/`high` 2K, `xhigh` 4K, `max` the largest there is.
    pub fn min_scale_milli(self) -> Option<u32> {
        match self {
            Quality::High | Quality::Hd => Some(2000),
            Quality::Xhigh => Some(4000),
            Quality::Max => Some(u32::MAX),
            _ => None,
        }
    }
}

/// OpenAI's `moderation`: `low` asks for less restrictive filtering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Moderation {
    #[default]
    Auto,
    Low,
}

/// The common ratios a delivered size is labelled with in metrics (a
/// bounded set, whatever sizes endpoints deliver).
const RATIO_LABELS: [(&str, u32, u32); 11] = [
    ("21:9", 21, 9),
    ("16:9", 16, 9),
    ("3:2", 3, 2),
    ("4:3", 4, 3),
    ("5:4", 5, 4),
    ("1:1", 1, 1),
    ("4:5", 4, 5),
    ("3:4", 3, 4),
    ("2:3", 2, 3),
    ("9:16", 9, 16),
    ("9:21", 9, 21),
];

/// The common ratio nearest to `width`:`height` in log space.
pub fn ratio_label(width: u32, height: u32) -> &'static str {
    let target = (f64::from(width.max(1)) / f64::from(height.max(1))).ln();
    RATIO_LABELS
        .iter()
        .min_by(|a, b| {
            let da = ((f64::from(a.1) / f64::from(a.2)).ln() - target).abs();
            let db = ((f64::from(b.1) / f64::from(b.2)).ln() - target).abs();
            da.total_cmp(&db)
        })
        .map_or("1:1", |r| r.0)
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
    fn format_names_round_trip() {
        for f in OutputFormat::ALL {
            assert_eq!(OutputFormat::from_name(f.as_str()), Some(f));
        }
        assert_eq!(OutputFormat::from_name("gif"), None);
        for q in Quality::ALL {
            assert_eq!(Quality::from_name(q.as_str()), Some(q));
        }
    }

    #[test]
    fn delivered_sizes_get_a_bounded_ratio_label() {
        for (w, h, label) in [
            (1024, 1024, "1:1"),
            (1408, 768, "16:9"),
            (1264, 848, "3:2"),
            (900, 1200, "3:4"),
            (1584, 672, "21:9"),
            (3072, 1024, "21:9"),
            (768, 1376, "9:16"),
        ] {
            assert_eq!(ratio_label(w, h), label, "{w}x{h}");
        }
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
