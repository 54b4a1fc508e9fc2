//! The label every offline image carries, drawn into its pixels so no one
//! mistakes an offline render for an Imagen generation, or ships one: a
//! banner across the top saying it is an offline preview and not Imagen, the
//! model id, the size and the start of the prompt, and a strip along the
//! bottom repeating the first line (a crop rarely removes both).
//!
//! The font is a 5x7 bitmap drawn for this file (capitals, digits and common
//! punctuation; text is shown in capitals, anything else as `?`), scaled by a
//! whole factor so the text stays legible at every Imagen size.

use image::RgbImage;

/// What the label says about one image.
pub(super) struct Label<'a> {
    pub model: &'a str,
    pub width: u32,
    pub height: u32,
    pub prompt: &'a str,
}

pub(super) const HEADLINE: &str = "OFFLINE PREVIEW - NOT IMAGEN";

/// Glyph cell: 5x7 pixels, advanced by 6 across and 9 down (one pixel of
/// spacing between letters, two between lines).
const GLYPH_W: u32 = 5;
const GLYPH_H: u32 = 7;
const ADVANCE: u32 = 6;
const LINE: u32 = 9;
/// Prompt lines shown at most.
const PROMPT_LINES: usize = 2;
/// How much of the picture shows through under the text.
const SHADE: f32 = 0.3;

/// Each row of a glyph is five bits, the leftmost pixel the highest.
const FONT: &[(char, [u8; 7])] = &[
    (' ', [0, 0, 0, 0, 0, 0, 0]),
    ('A', [14, 17, 17, 31, 17, 17, 17]),
    ('B', [30, 17, 17, 30, 17, 17, 30]),
    ('C', [14, 17, 16, 16, 16, 17, 14]),
    ('D', [30, 17, 17, 17, 17, 17, 30]),
    ('E', [31, 16, 16, 30, 16, 16, 31]),
    ('F', [31, 16, 16, 30, 16, 16, 16]),
    ('G', [14, 17, 16, 23, 17, 17, 15]),
    ('H', [17, 17, 17, 31, 17, 17, 17]),
    ('I', [14, 4, 4, 4, 4, 4, 14]),
    ('J', [7, 2, 2, 2, 2, 18, 12]),
    ('K', [17, 18, 20, 24, 20, 18, 17]),
    ('L', [16, 16, 16, 16, 16, 16, 31]),
    ('M', [17, 27, 21, 21, 17, 17, 17]),
    ('N', [17, 17, 25, 21, 19, 17, 17]),
    ('O', [14, 17, 17, 17, 17, 17, 14]),
    ('P', [30, 17, 17, 30, 16, 16, 16]),
    ('Q', [14, 17, 17, 17, 21, 18, 13]),
    ('R', [30, 17, 17, 30, 20, 18, 17]),
    ('S', [15, 16, 16, 14, 1, 1, 30]),
    ('T', [31, 4, 4, 4, 4, 4, 4]),
    ('U', [17, 17, 17, 17, 17, 17, 14]),
    ('V', [17, 17, 17, 17, 17, 10, 4]),
    ('W', [17, 17, 17, 21, 21, 21, 10]),
    ('X', [17, 17, 10, 4, 10, 17, 17]),
    ('Y', [17, 17, 10, 4, 4, 4, 4]),
    ('Z', [31, 1, 2, 4, 8, 16, 31]),
    ('0', [14, 17, 19, 21, 25, 17, 14]),
    ('1', [4, 12, 4, 4, 4, 4, 14]),
    ('2', [14, 17, 1, 2, 4, 8, 31]),
    ('3', [31, 2, 4, 2, 1, 17, 14]),
    ('4', [2, 6, 10, 18, 31, 2, 2]),
    ('5', [31, 16, 30, 1, 1, 17, 14]),
    ('6', [6, 8, 16, 30, 17, 17, 14]),
    ('7', [31, 1, 2, 4, 8, 8, 8]),
    ('8', [14, 17, 17, 14, 17, 17, 14]),
    ('9', [14, 17, 17, 15, 1, 2, 12]),
    ('.', [0, 0, 0, 0, 0, 12, 12]),
    (',', [0, 0, 0, 0, 12, 4, 8]),
    (':', [0, 12, 12, 0, 12, 12, 0]),
    (';', [0, 12, 12, 0, 12, 4, 8]),
    ('-', [0, 0, 0, 31, 0, 0, 0]),
    ('_', [0, 0, 0, 0, 0, 0, 31]),
    ('/', [1, 1, 2, 4, 8, 16, 16]),
    ('(', [2, 4, 8, 8, 8, 4, 2]),
    (')', [8, 4, 2, 2, 2, 4, 8]),
    ('[', [14, 8, 8, 8, 8, 8, 14]),
    (']', [14, 2, 2, 2, 2, 2, 14]),
    ('\'', [4, 4, 8, 0, 0, 0, 0]),
    ('"', [10, 10, 0, 0, 0, 0, 0]),
    ('!', [4, 4, 4, 4, 4, 0, 4]),
    ('?', [14, 17, 1, 2, 4, 0, 4]),
    ('#', [10, 10, 31, 10, 31, 10, 10]),
    ('+', [0, 4, 4, 31, 4, 4, 0]),
    ('=', [0, 0, 31, 0, 31, 0, 0]),
    ('&', [12, 18, 20, 8, 21, 18, 13]),
    ('*', [0, 4, 21, 14, 21, 4, 0]),
    ('%', [24, 25, 2, 4, 8, 19, 3]),
    ('@', [14, 17, 1, 13, 21, 21, 14]),
    ('<', [2, 4, 8, 16, 8, 4, 2]),
    ('>', [8, 4, 2, 1, 2, 4, 8]),
    ('|', [4, 4, 4, 4, 4, 4, 4]),
];

fn glyph(c: char) -> [u8; 7] {
    let c = c.to_ascii_uppercase();
    let c = if c.is_whitespace() { ' ' } else { c };
    FONT.iter()
        .find(|(g, _)| *g == c)
        .or_else(|| FONT.iter().find(|(g, _)| *g == '?'))
        .map_or([0; 7], |(_, rows)| *rows)
}

/// The whole-pixel scale of the font for an image: about 1/256 of its
/// shorter side, so a line holds some 40 characters at every Imagen size.
pub(super) fn scale(width: u32, height: u32) -> u32 {
    (width.min(height) / 256).max(1)
}

/// Characters that fit on one line of an image this wide.
fn columns(width: u32, scale: u32) -> usize {
    (width.saturating_sub(2 * padding(scale)) / (ADVANCE * scale)) as usize
}

fn padding(scale: u32) -> u32 {
    3 * scale
}

/// `text` cut to `max` characters, ending in `...` when cut.
fn fit(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_owned();
    }
    let keep = max.saturating_sub(3);
    chars[..keep].iter().collect::<String>() + "..."
}

/// `text` wrapped at spaces into lines of at most `width` characters (a
/// longer word is split), at most `max_lines` of them, the last ending in
/// `...` when text was left out.
fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let word: Vec<char> = word.chars().collect();
        for piece in word.chunks(width) {
            let piece: String = piece.iter().collect();
            let len = line.chars().count();
            if len > 0 && len + 1 + piece.chars().count() <= width {
                line.push(' ');
                line.push_str(&piece);
            } else {
                if len > 0 {
                    lines.push(std::mem::take(&mut line));
                }
                line = piece;
            }
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            *last = fit(&format!("{last}..."), width);
        }
    }
    lines
}

/// The lines of the top banner.
pub(super) fn banner_lines(label: &Label<'_>, columns: usize) -> Vec<String> {
    let mut lines = vec![
        fit(HEADLINE, columns),
        fit(&format!("MODEL: {}", label.model), columns),
        fit(&format!("SIZE: {}X{}", label.width, label.height), columns),
    ];
    lines.extend(wrap(
        &format!("PROMPT: {}", label.prompt),
        columns.max(1),
        PROMPT_LINES,
    ));
    lines
}

/// Draw the label onto `img`.
pub(super) fn stamp(img: &mut RgbImage, label: &Label<'_>) {
    let (w, h) = img.dimensions();
    let s = scale(w, h);
    let cols = columns(w, s);
    let pad = padding(s);
    let lines = banner_lines(label, cols);
    let banner_h = (2 * pad + lines.len() as u32 * LINE * s).min(h);
    shade(img, 0, banner_h);
    for (i, line) in lines.iter().enumerate() {
        text(img, pad, pad + i as u32 * LINE * s, s, line);
    }
    let strip_h = 2 * pad + GLYPH_H * s;
    if banner_h + strip_h <= h {
        shade(img, h - strip_h, h);
        text(img, pad, h - strip_h + pad, s, &fit(HEADLINE, cols));
    }
}

/// Darken rows `from..to` so white text reads on any picture.
fn shade(img: &mut RgbImage, from: u32, to: u32) {
    for y in from..to {
        for x in 0..img.width() {
            let px = img.get_pixel_mut(x, y);
            px.0 = px.0.map(|c| (c as f32 * SHADE) as u8);
        }
    }
}

fn text(img: &mut RgbImage, x0: u32, y0: u32, s: u32, line: &str) {
    for (i, c) in line.chars().enumerate() {
        let rows = glyph(c);
        let gx = x0 + i as u32 * ADVANCE * s;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - col)) == 0 {
                    continue;
                }
                for dy in 0..s {
                    for dx in 0..s {
                        let (x, y) = (gx + col * s + dx, y0 + r as u32 * s + dy);
                        if x < img.width() && y < img.height() {
                            img.put_pixel(x, y, image::Rgb([255, 255, 255]));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the text back from the pixels, glyph cell by glyph cell: what a
    /// person sees in the image, not what the code meant to draw.
    fn read_line(img: &RgbImage, x0: u32, y0: u32, s: u32) -> String {
        let mut out = String::new();
        let mut x = x0;
        while x + GLYPH_W * s <= img.width() {
            let mut rows = [0u8; 7];
            for (r, row) in rows.iter_mut().enumerate() {
                for col in 0..GLYPH_W {
                    let px = img.get_pixel(x + col * s + s / 2, y0 + r as u32 * s + s / 2);
                    if px.0.iter().all(|&c| c > 200) {
                        *row |= 1 << (GLYPH_W - 1 - col);
                    }
                }
            }
            match FONT.iter().find(|(_, g)| *g == rows) {
                Some((c, _)) => out.push(*c),
                None => out.push('~'),
            }
            x += ADVANCE * s;
        }
        out.trim_end().to_owned()
    }

    fn read_banner(img: &RgbImage) -> Vec<String> {
        let s = scale(img.width(), img.height());
        let pad = padding(s);
        (0..6)
            .map(|i| read_line(img, pad, pad + i * LINE * s, s))
            .take_while(|l| !l.is_empty() && !l.contains('~'))
            .collect()
    }

    fn picture(w: u32, h: u32) -> RgbImage {
        // The worst background for white text: white.
        RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]))
    }

    #[test]
    fn every_glyph_is_distinct() {
        for (i, (a, ga)) in FONT.iter().enumerate() {
            for (b, gb) in &FONT[i + 1..] {
                assert_ne!(ga, gb, "{a:?} and {b:?} look alike");
                assert_ne!(a, b);
            }
            assert!(ga.iter().all(|row| *row < 32), "{a:?} is wider than 5");
        }
    }

    #[test]
    fn the_banner_reads_offline_preview_model_size_and_prompt_at_every_imagen_size() {
        for (w, h) in [
            (1024, 1024),
            (1408, 768),
            (768, 1408),
            (1280, 896),
            (896, 1280),
        ] {
            let mut img = picture(w, h);
            let label = Label {
                model: "imagen-4-fast",
                width: w,
                height: h,
                prompt: "a lighthouse at dusk",
            };

            stamp(&mut img, &label);

            assert_eq!(
                read_banner(&img),
                [
                    "OFFLINE PREVIEW - NOT IMAGEN".to_owned(),
                    "MODEL: IMAGEN-4-FAST".to_owned(),
                    format!("SIZE: {w}X{h}"),
                    "PROMPT: A LIGHTHOUSE AT DUSK".to_owned(),
                ],
                "{w}x{h}"
            );
            let s = scale(w, h);
            let strip_y = h - 2 * padding(s) - GLYPH_H * s + padding(s);
            assert_eq!(read_line(&img, padding(s), strip_y, s), HEADLINE, "{w}x{h}");
        }
    }

    #[test]
    fn a_long_prompt_is_cut_to_two_lines_ending_in_dots() {
        let mut img = picture(1024, 1024);
        let prompt = "a very long prompt ".repeat(20);
        stamp(
            &mut img,
            &Label {
                model: "imagen-4-ultra",
                width: 1024,
                height: 1024,
                prompt: &prompt,
            },
        );

        let lines = read_banner(&img);

        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(
            lines[3].starts_with("PROMPT: A VERY LONG PROMPT"),
            "{lines:?}"
        );
        assert!(lines[4].ends_with("..."), "{lines:?}");
        let cols = columns(1024, scale(1024, 1024));
        assert!(lines.iter().all(|l| l.chars().count() <= cols));
    }

    #[test]
    fn prompts_wrap_at_spaces() {
        assert_eq!(
            wrap("PROMPT: a lighthouse at dusk", 16, 2),
            ["PROMPT: a", "lighthouse at..."]
        );
        assert_eq!(wrap("PROMPT: a b", 40, 2), ["PROMPT: a b"]);
        assert_eq!(wrap("abcdefghij", 4, 3), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("abcdefghij", 4, 2), ["abcd", "e..."]);
    }

    #[test]
    fn characters_outside_the_font_show_as_question_marks_and_lowercase_as_capitals() {
        let mut img = picture(1024, 1024);
        stamp(
            &mut img,
            &Label {
                model: "m",
                width: 1,
                height: 1,
                prompt: "café 東京\tok",
            },
        );
        assert_eq!(read_banner(&img)[3], "PROMPT: CAF? ?? OK");
    }

    #[test]
    fn the_label_fits_tiny_images_without_panicking() {
        for (w, h) in [(1, 1), (8, 8), (64, 16), (16, 300)] {
            let mut img = picture(w, h);
            stamp(
                &mut img,
                &Label {
                    model: "imagen-4-fast",
                    width: w,
                    height: h,
                    prompt: "x",
                },
            );
        }
    }
}
