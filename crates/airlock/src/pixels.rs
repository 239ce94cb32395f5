//! Figures the guest sends as raw pixels, written as `image/png` here.
//!
//! The python driver draws a matplotlib figure on its Agg canvas and, for a
//! figure of at most [`MAX_RAW_PIXEL_BYTES`], sends its pixels
//! ([`RAW_PIXELS_MIME`], a [`RawPixels`]) instead of compressing a PNG: the
//! guest runs under TCG, where zlib costs a chart cell 150-280 ms, and the
//! host does the same work natively in a few. [`encode_raw_pixels`] runs
//! on every result as the host library receives it (`vm::collect_exec`,
//! one-shot runs and session cells alike), so the CLI, the server and MCP
//! only ever see `image/png`.
//!
//! The PNG holds the same pixels as the figure (what matplotlib's savefig
//! writes at its defaults): 8-bit RGB when every pixel is opaque (a
//! quarter less to compress), RGBA otherwise, no metadata.

use airlock_protocol::result::{ExecResult, RawPixels, MAX_RAW_PIXEL_BYTES, RAW_PIXELS_MIME};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Why a raw-pixel representation could not become a PNG.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PixelsError {
    /// Its JSON is not a [`RawPixels`] object.
    #[error("raw pixels that are not {{width, height, channels, data}} ({source}); hint: the guest images and this host library are out of step: rebuild them with `cargo xtask images`")]
    Shape {
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A channel count other than 3 (RGB) or 4 (RGBA).
    #[error("raw pixels with {channels} channels, not 3 (RGB) or 4 (RGBA); hint: the guest images and this host library are out of step")]
    Channels {
        /// The count sent.
        channels: u8,
    },
    /// No pixels, or more than [`MAX_RAW_PIXEL_BYTES`].
    #[error("raw pixels of {width}x{height}x{channels}: {bytes} bytes, not within 1..={max}; hint: the guest writes larger figures as PNG itself")]
    Size {
        /// Columns.
        width: u32,
        /// Rows.
        height: u32,
        /// Bytes per pixel.
        channels: u8,
        /// What they make (saturated).
        bytes: u64,
        /// [`MAX_RAW_PIXEL_BYTES`].
        max: usize,
    },
    /// `data` is not base64.
    #[error("raw pixels whose data is not base64: {source}")]
    Base64 {
        /// The decoder's error.
        source: base64::DecodeError,
    },
    /// `data` does not hold `width * height * channels` bytes.
    #[error("raw pixels of {width}x{height}x{channels} need {want} bytes, got {got}; hint: the guest images and this host library are out of step")]
    Length {
        /// Columns.
        width: u32,
        /// Rows.
        height: u32,
        /// Bytes per pixel.
        channels: u8,
        /// `width * height * channels`.
        want: usize,
        /// What `data` decoded to.
        got: usize,
    },
    /// The encoder failed (it should not, on validated input).
    #[error("cannot write the PNG of {width}x{height} pixels: {source}")]
    Encode {
        /// Columns.
        width: u32,
        /// Rows.
        height: u32,
        /// The encoder's error.
        source: png::EncodingError,
    },
}

/// Whether `result` carries raw pixels for [`encode_raw_pixels`] (so that
/// a caller can move the work off an async thread only when there is some).
pub(crate) fn has_raw_pixels(result: &ExecResult) -> bool {
    result.data.contains_key(RAW_PIXELS_MIME)
}

/// Replaces `result`'s raw pixels, if any, by their `image/png` (base64);
/// an `image/png` the result already has is kept. On a bad representation
/// the pixels are dropped and the error note to show on stderr is
/// returned (`[airlock: ...]`, as the agent's own notes).
pub(crate) fn encode_raw_pixels(result: &mut ExecResult) -> Option<String> {
    let value = result.data.remove(RAW_PIXELS_MIME)?;
    let png = serde_json::from_value::<RawPixels>(value)
        .map_err(|source| PixelsError::Shape { source })
        .and_then(|raw| png_of_raw(&raw));
    match png {
        Ok(png) => {
            result
                .data
                .entry("image/png".to_owned())
                .or_insert_with(|| STANDARD.encode(png).into());
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "a figure's raw pixels were dropped");
            Some(format!(
                "\n[airlock: a figure could not be turned into image/png: {e}]\n"
            ))
        }
    }
}

/// The PNG of `raw`, after checking its size against its data.
///
/// # Errors
/// [`PixelsError`]: a bad channel count or size, data that is not base64
/// or not `width * height * channels` bytes.
pub(crate) fn png_of_raw(raw: &RawPixels) -> Result<Vec<u8>, PixelsError> {
    let RawPixels {
        width,
        height,
        channels,
        ref data,
    } = *raw;
    if channels != 3 && channels != 4 {
        return Err(PixelsError::Channels { channels });
    }
    let bytes = u64::from(width)
        .saturating_mul(u64::from(height))
        .saturating_mul(u64::from(channels));
    let want = usize::try_from(bytes).unwrap_or(usize::MAX);
    if want == 0 || want > MAX_RAW_PIXEL_BYTES {
        return Err(PixelsError::Size {
            width,
            height,
            channels,
            bytes,
            max: MAX_RAW_PIXEL_BYTES,
        });
    }
    // Base64 of `want` bytes is 4 * ceil(want / 3) long: refuse a longer
    // string before decoding it (the payload cap bounds it anyway).
    if data.len() > want.div_ceil(3).saturating_mul(4) {
        return Err(PixelsError::Length {
            width,
            height,
            channels,
            want,
            got: data.len() / 4 * 3,
        });
    }
    let pixels = STANDARD
        .decode(data.as_bytes())
        .map_err(|source| PixelsError::Base64 { source })?;
    if pixels.len() != want {
        return Err(PixelsError::Length {
            width,
            height,
            channels,
            want,
            got: pixels.len(),
        });
    }
    let opaque = channels == 4 && pixels.chunks_exact(4).all(|p| p[3] == u8::MAX);
    let (color, pixels) = match channels {
        3 => (png::ColorType::Rgb, pixels),
        _ if opaque => (png::ColorType::Rgb, rgb_of_rgba(&pixels)),
        _ => (png::ColorType::Rgba, pixels),
    };
    encode(width, height, color, &pixels).map_err(|source| PixelsError::Encode {
        width,
        height,
        source,
    })
}

/// The RGB bytes of opaque RGBA pixels (alpha dropped).
fn rgb_of_rgba(rgba: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(rgba.len() / 4 * 3);
    for pixel in rgba.chunks_exact(4) {
        rgb.extend_from_slice(&pixel[..3]);
    }
    rgb
}

/// An 8-bit PNG of `pixels`, no metadata: the `Fast` preset (fdeflate)
/// with adaptive row filters. On a 640x480 pandas line chart, natively
/// (release build): 37 KB in 1.2 ms, against 35 KB from the guest's zlib
/// level 1 over unfiltered rows (1.3 ms natively, 150-280 ms under TCG);
/// fdeflate without filters wrote 392 KB, with the Up filter 53 KB in
/// 0.5 ms, and zlib level 6 with adaptive filters 29 KB in 8.5 ms.
fn encode(
    width: u32,
    height: u32,
    color: png::ColorType,
    pixels: &[u8],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::with_capacity(pixels.len() / 16);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Adaptive);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_protocol::result::MimeBundle;

    /// A 640x480 chart-like image: white, a grey frame, a blue line, text-ish
    /// speckles; alpha 255 everywhere unless `alpha` says otherwise.
    fn chart(width: u32, height: u32, alpha: u8) -> Vec<u8> {
        let mut px = Vec::with_capacity((width * height * 4) as usize);
        for y in 0..height {
            for x in 0..width {
                let frame = x == 80 || y == 58 || x == 576 || y == 427;
                let line = (x as i64 - (y as i64) * 4 / 3).abs() < 2;
                let speck = (x * 7 + y * 13) % 97 == 0 && y > 430;
                let rgb = if line {
                    [31, 119, 180]
                } else if frame || speck {
                    [0, 0, 0]
                } else {
                    [255, 255, 255]
                };
                px.extend_from_slice(&rgb);
                px.push(alpha);
            }
        }
        px
    }

    fn raw(width: u32, height: u32, channels: u8, pixels: &[u8]) -> RawPixels {
        RawPixels {
            width,
            height,
            channels,
            data: STANDARD.encode(pixels),
        }
    }

    /// Decodes a PNG: (width, height, color type, bytes).
    fn decode(png: &[u8]) -> (u32, u32, png::ColorType, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, info.color_type, buf)
    }

    #[test]
    fn opaque_rgba_becomes_an_rgb_png_of_the_same_pixels() {
        let rgba = chart(640, 480, 255);
        let png = png_of_raw(&raw(640, 480, 4, &rgba)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let (w, h, color, got) = decode(&png);
        assert_eq!((w, h, color), (640, 480, png::ColorType::Rgb));
        assert_eq!(got, rgb_of_rgba(&rgba));
        // Compressed: far under the pixels.
        assert!(png.len() < rgba.len() / 10, "{}", png.len());
    }

    #[test]
    fn translucent_rgba_stays_rgba_with_its_alpha() {
        let mut rgba = chart(64, 48, 255);
        rgba[3] = 0;
        rgba[7] = 128;
        let (w, h, color, got) = decode(&png_of_raw(&raw(64, 48, 4, &rgba)).unwrap());
        assert_eq!((w, h, color), (64, 48, png::ColorType::Rgba));
        assert_eq!(got, rgba);
    }

    #[test]
    fn rgb_pixels_decode_to_themselves() {
        let rgb = rgb_of_rgba(&chart(33, 7, 255));
        let (w, h, color, got) = decode(&png_of_raw(&raw(33, 7, 3, &rgb)).unwrap());
        assert_eq!((w, h, color), (33, 7, png::ColorType::Rgb));
        assert_eq!(got, rgb);
    }

    #[test]
    fn data_of_the_wrong_length_is_refused() {
        let rgba = chart(10, 10, 255);
        for (w, h, c, bytes) in [
            (10, 10, 4, &rgba[..rgba.len() - 1]),
            (10, 11, 4, &rgba[..]),
            (10, 10, 3, &rgba[..]),
        ] {
            let e = png_of_raw(&raw(w, h, c, bytes)).unwrap_err();
            assert!(matches!(e, PixelsError::Length { .. }), "{e}");
            assert!(e.to_string().contains("need"), "{e}");
        }
    }

    #[test]
    fn bad_channels_sizes_and_base64_are_refused() {
        let e = png_of_raw(&raw(1, 1, 2, &[0, 0])).unwrap_err();
        assert!(matches!(e, PixelsError::Channels { channels: 2 }), "{e}");
        let e = png_of_raw(&raw(0, 5, 4, &[])).unwrap_err();
        assert!(matches!(e, PixelsError::Size { .. }), "{e}");
        // Over the cap, whatever the data: checked before decoding.
        let e = png_of_raw(&raw(u32::MAX, u32::MAX, 4, &[1, 2, 3])).unwrap_err();
        assert!(matches!(e, PixelsError::Size { .. }), "{e}");
        let side = 1025; // 1025 * 1025 * 4 > 4 MiB
        let e = png_of_raw(&raw(side, side, 4, &[])).unwrap_err();
        assert!(
            e.to_string().contains(&MAX_RAW_PIXEL_BYTES.to_string()),
            "{e}"
        );
        let mut bad = raw(2, 2, 3, &[0; 12]);
        bad.data = "!!!!!!!!!!!!!!!!".to_owned();
        let e = png_of_raw(&bad).unwrap_err();
        assert!(matches!(e, PixelsError::Base64 { .. }), "{e}");
    }

    #[test]
    fn the_largest_raw_figure_gives_a_png_within_the_result_cap() {
        // Noise compresses worst: the PNG of the largest figure allowed,
        // as base64, must still fit a result.
        let side = 1024u32; // 1024 * 1024 * 4 = MAX_RAW_PIXEL_BYTES
        let mut state = 0x2545_f491_u32;
        let noise: Vec<u8> = (0..side * side * 4)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        assert_eq!(noise.len(), MAX_RAW_PIXEL_BYTES);
        let png = png_of_raw(&raw(side, side, 4, &noise)).unwrap();
        let b64 = png.len().div_ceil(3) * 4;
        assert!(
            b64 + 1024 < airlock_protocol::result::MAX_RESULT_BYTES,
            "{b64}"
        );
        assert_eq!(decode(&png).3, noise);
    }

    #[test]
    fn a_result_with_raw_pixels_gets_image_png_instead() {
        let rgba = chart(40, 30, 255);
        let pixels = serde_json::to_value(raw(40, 30, 4, &rgba)).unwrap();
        let mut result = ExecResult {
            data: MimeBundle::from([
                (RAW_PIXELS_MIME.to_owned(), pixels),
                ("text/plain".to_owned(), "<Figure>".into()),
            ]),
            is_main_result: false,
            truncated: false,
        };
        assert!(has_raw_pixels(&result));
        assert_eq!(encode_raw_pixels(&mut result), None);
        assert!(!has_raw_pixels(&result));
        assert_eq!(
            result.mime_types().collect::<Vec<_>>(),
            ["image/png", "text/plain"]
        );
        let png = result.binary("image/png").unwrap().unwrap();
        assert_eq!(decode(&png).3, rgb_of_rgba(&rgba));
    }

    #[test]
    fn a_bad_representation_is_dropped_with_a_note_and_the_rest_kept() {
        let mut result = ExecResult {
            data: MimeBundle::from([
                (
                    RAW_PIXELS_MIME.to_owned(),
                    serde_json::json!({"width": 2, "height": 2, "channels": 4, "data": "AAAA"}),
                ),
                ("text/plain".to_owned(), "<Figure>".into()),
            ]),
            is_main_result: true,
            truncated: false,
        };
        let note = encode_raw_pixels(&mut result).unwrap();
        assert!(note.starts_with("\n[airlock: a figure could not be turned into image/png: raw pixels of 2x2x4 need 16 bytes, got 3"), "{note}");
        assert_eq!(result.mime_types().collect::<Vec<_>>(), ["text/plain"]);
        // Not an object at all.
        result.data.insert(RAW_PIXELS_MIME.to_owned(), "x".into());
        let note = encode_raw_pixels(&mut result).unwrap();
        assert!(note.contains("out of step"), "{note}");
        // Nothing to do.
        assert_eq!(encode_raw_pixels(&mut result), None);
    }

    #[test]
    fn an_image_png_already_there_is_kept() {
        let pixels = serde_json::to_value(raw(1, 1, 3, &[1, 2, 3])).unwrap();
        let mut result = ExecResult {
            data: MimeBundle::from([
                (RAW_PIXELS_MIME.to_owned(), pixels),
                ("image/png".to_owned(), "iVBORw==".into()),
            ]),
            is_main_result: false,
            truncated: false,
        };
        assert_eq!(encode_raw_pixels(&mut result), None);
        assert_eq!(result.data["image/png"], "iVBORw==");
        assert_eq!(result.data.len(), 1);
    }
}
