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

use airlock_protocol::result::{
    ExecResult, PixelEncoding, RawPixels, MAX_RAW_PIXEL_BYTES, RAW_PIXELS_MIME,
};
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
    /// A masked representation whose background is not one pixel.
    #[error("masked raw pixels with {channels} channels and a background of {got} bytes; hint: the guest images and this host library are out of step")]
    Background {
        /// Bytes per pixel.
        channels: u8,
        /// The background's length (0: none).
        got: usize,
    },
    /// A masked representation whose mask sets bits past the last pixel.
    #[error("masked raw pixels of {width}x{height} whose mask sets bits past the last pixel")]
    Mask {
        /// Columns.
        width: u32,
        /// Rows.
        height: u32,
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
        encoding,
        background: _,
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
    let count = want / usize::from(channels);
    // The most `data` may decode to: a mask over every pixel, then every
    // pixel. Base64 of n bytes is 4 * ceil(n / 3) long: a longer string is
    // refused before it is decoded (the payload cap bounds it anyway).
    let most = match encoding {
        PixelEncoding::Raw => want,
        PixelEncoding::Masked => count.div_ceil(8) + want,
    };
    if data.len() > most.div_ceil(3).saturating_mul(4) {
        return Err(PixelsError::Length {
            width,
            height,
            channels,
            want: most,
            got: data.len() / 4 * 3,
        });
    }
    let decoded = STANDARD
        .decode(data.as_bytes())
        .map_err(|source| PixelsError::Base64 { source })?;
    let pixels = match encoding {
        PixelEncoding::Raw => decoded,
        PixelEncoding::Masked => unmask(raw, &decoded)?,
    };
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

/// Every pixel of a [`PixelEncoding::Masked`] representation whose
/// `decoded` data is its mask then its pixels: a set bit takes the next
/// pixel, a clear one `background`. The caller has checked the size.
///
/// # Errors
/// [`PixelsError::Background`] when `background` is not one pixel,
/// [`PixelsError::Mask`] for bits set past the last pixel,
/// [`PixelsError::Length`] when the pixels after the mask are not as
/// many as its set bits.
fn unmask(raw: &RawPixels, decoded: &[u8]) -> Result<Vec<u8>, PixelsError> {
    let (width, height, channels) = (raw.width, raw.height, raw.channels);
    let size = usize::from(channels);
    let background = match raw.background.as_deref() {
        Some(pixel) if pixel.len() == size => pixel,
        other => {
            return Err(PixelsError::Background {
                channels,
                got: other.map_or(0, <[u8]>::len),
            })
        }
    };
    // Sizes were checked against MAX_RAW_PIXEL_BYTES: no overflow.
    let count = width as usize * height as usize;
    let length = |got: usize| PixelsError::Length {
        width,
        height,
        channels,
        want: count * size,
        got,
    };
    let mask_len = count.div_ceil(8);
    if decoded.len() < mask_len {
        return Err(length(decoded.len()));
    }
    let (mask, values) = decoded.split_at(mask_len);
    let spare = mask_len * 8 - count;
    if spare > 0 && mask[mask_len - 1] & ((1u8 << spare) - 1) != 0 {
        return Err(PixelsError::Mask { width, height });
    }
    let set: usize = mask.iter().map(|b| b.count_ones() as usize).sum();
    if values.len() != set * size {
        // What the pixels would have made: the mask's clear bits as
        // background, the bytes after it as they are.
        return Err(length((count - set) * size + values.len()));
    }
    let mut pixels = Vec::with_capacity(count * size);
    let mut next = values.chunks_exact(size);
    for i in 0..count {
        let pixel = if mask[i / 8] & (0x80 >> (i % 8)) != 0 {
            // As many as the set bits: counted above.
            next.next().unwrap_or(background)
        } else {
            background
        };
        pixels.extend_from_slice(pixel);
    }
    Ok(pixels)
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
                let line = (x as i64 - (y as i64) * 4 / 3 - 40).abs() < 2;
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
            encoding: PixelEncoding::Raw,
            background: None,
            data: STANDARD.encode(pixels),
        }
    }

    /// `pixels` masked as the python driver masks them: the pixels that
    /// differ from the first one after a bitmask of which ones do.
    fn masked(width: u32, height: u32, channels: u8, pixels: &[u8]) -> RawPixels {
        let size = usize::from(channels);
        let background = pixels[..size].to_vec();
        let count = pixels.len() / size;
        let mut mask = vec![0u8; count.div_ceil(8)];
        let mut values = Vec::new();
        for (i, pixel) in pixels.chunks_exact(size).enumerate() {
            if pixel != background.as_slice() {
                mask[i / 8] |= 0x80 >> (i % 8);
                values.extend_from_slice(pixel);
            }
        }
        mask.extend_from_slice(&values);
        RawPixels {
            width,
            height,
            channels,
            encoding: PixelEncoding::Masked,
            background: Some(background),
            data: STANDARD.encode(mask),
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
    fn masked_pixels_give_the_png_of_the_same_pixels_raw() {
        let rgba = chart(640, 480, 255);
        let rgb = rgb_of_rgba(&rgba);
        let mut translucent = chart(64, 48, 255);
        translucent[7] = 128;
        for (w, h, c, pixels) in [
            (640, 480, 4, &rgba),
            (640, 480, 3, &rgb),
            (64, 48, 4, &translucent),
        ] {
            let masked = masked(w, h, c, pixels);
            // A chart is mostly its background: far less to send.
            let sizes = (masked.data.len(), raw(w, h, c, pixels).data.len());
            assert!(sizes.0 * 5 < sizes.1, "{sizes:?}");
            assert_eq!(
                decode(&png_of_raw(&masked).unwrap()),
                decode(&png_of_raw(&raw(w, h, c, pixels)).unwrap())
            );
        }
        // 33 x 7 pixels: the mask ends inside a byte.
        let odd = rgb_of_rgba(&chart(33, 7, 255));
        assert_eq!(decode(&png_of_raw(&masked(33, 7, 3, &odd)).unwrap()).3, odd);
    }

    #[test]
    fn masked_pixels_with_a_bad_background_mask_or_length_are_refused() {
        let rgb = rgb_of_rgba(&chart(33, 7, 255));
        let good = masked(33, 7, 3, &rgb);
        let mut bad = good.clone();
        bad.background = None;
        let e = png_of_raw(&bad).unwrap_err();
        assert!(matches!(e, PixelsError::Background { got: 0, .. }), "{e}");
        bad.background = Some(vec![255; 4]);
        let e = png_of_raw(&bad).unwrap_err();
        assert!(matches!(e, PixelsError::Background { got: 4, .. }), "{e}");
        let bytes = STANDARD.decode(&good.data).unwrap();
        let mask_len = (33 * 7usize).div_ceil(8);
        let with = |bytes: &[u8]| RawPixels {
            data: STANDARD.encode(bytes),
            ..good.clone()
        };
        // A bit set past the 231st pixel.
        let mut past = bytes.clone();
        past[mask_len - 1] |= 1;
        past.extend_from_slice(&[0, 0, 0]);
        let e = png_of_raw(&with(&past)).unwrap_err();
        assert!(matches!(e, PixelsError::Mask { .. }), "{e}");
        // One pixel short, one too many, no room for the mask.
        for data in [
            &bytes[..bytes.len() - 3],
            &[bytes.as_slice(), &[1, 2, 3]].concat()[..],
            &bytes[..mask_len - 1],
        ] {
            let e = png_of_raw(&with(data)).unwrap_err();
            assert!(matches!(e, PixelsError::Length { .. }), "{e}");
        }
        // Longer than a mask and every pixel could be: refused undecoded.
        let e = png_of_raw(&with(&vec![0xff; mask_len + 33 * 7 * 3 + 3])).unwrap_err();
        assert!(matches!(e, PixelsError::Length { .. }), "{e}");
    }

    #[test]
    fn masked_pixels_travel_as_encoding_and_background_fields() {
        let value = serde_json::to_value(masked(2, 1, 3, &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(value["encoding"], "masked");
        assert_eq!(value["background"], serde_json::json!([1, 2, 3]));
        // The raw form keeps its old shape: a host still reads older guests.
        let value = serde_json::to_value(raw(1, 1, 3, &[1, 2, 3])).unwrap();
        assert_eq!(
            value.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["channels", "data", "height", "width"]
        );
    }

    proptest::proptest! {
        #[test]
        fn masking_any_pixels_gives_the_same_png(
            width in 1u32..40,
            height in 1u32..12,
            alpha in proptest::bool::ANY,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let channels = if alpha { 4 } else { 3 };
            let mut state = seed | 1;
            // Few colours, so that both the background and the others occur.
            let pixels: Vec<u8> = (0..width * height)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let shade = [0u8, 128, 255][(state % 3) as usize];
                    vec![shade; usize::from(channels)]
                })
                .collect();
            let from_raw = png_of_raw(&raw(width, height, channels, &pixels)).unwrap();
            let from_masked = png_of_raw(&masked(width, height, channels, &pixels)).unwrap();
            proptest::prop_assert_eq!(decode(&from_masked), decode(&from_raw));
        }
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
