//! The pixel size of an image, read from its header: PNG's `IHDR`, JPEG's
//! start-of-frame, GIF's logical screen (pure; any bytes in, never a
//! panic: a truncated or garbled header gives `None`).

/// Width and height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl std::fmt::Display for Dimensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The size of the image in `bytes`, from the header its format has
/// (`image/png`, `image/jpeg`, `image/gif`); `None` for other types and for
/// a header that is not whole or not what its type says.
pub fn dimensions(mime: &str, bytes: &[u8]) -> Option<Dimensions> {
    match mime {
        "image/png" => png(bytes),
        "image/jpeg" | "image/jpg" => jpeg(bytes),
        "image/gif" => gif(bytes),
        _ => None,
    }
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let b: [u8; 2] = bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
    Some(u16::from_be_bytes(b))
}

/// PNG: the signature, then the first chunk, which must be `IHDR` (length
/// 13): width and height are its first two big-endian words.
fn png(bytes: &[u8]) -> Option<Dimensions> {
    if bytes.get(..8)? != PNG_SIGNATURE || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let (width, height) = (be_u32(bytes, 16)?, be_u32(bytes, 20)?);
    (width > 0 && height > 0).then_some(Dimensions { width, height })
}

/// JPEG: the segments after `SOI`, each `FF marker [length payload]`, up
/// to the first start-of-frame (`SOF0`..`SOF15` but `DHT`, `JPG`, `DAC`),
/// whose payload is precision, height, width. Scanning stops at the
/// start of scan or end of image (no frame header before them).
fn jpeg(bytes: &[u8]) -> Option<Dimensions> {
    if bytes.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut at = 2usize;
    loop {
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        // Fill bytes: any number of 0xFF before a marker.
        while *bytes.get(at)? == 0xFF {
            at += 1;
        }
        let marker = *bytes.get(at)?;
        at += 1;
        match marker {
            // Markers without a length: TEM, RST0..RST7.
            0x01 | 0xD0..=0xD7 => continue,
            // Start of scan, end of image: no frame header came.
            0xDA | 0xD9 => return None,
            _ => {}
        }
        let length = usize::from(be_u16(bytes, at)?);
        if length < 2 {
            return None;
        }
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let height = u32::from(be_u16(bytes, at + 3)?);
            let width = u32::from(be_u16(bytes, at + 5)?);
            return (width > 0 && height > 0).then_some(Dimensions { width, height });
        }
        at = at.checked_add(length)?;
    }
}

/// GIF: `GIF87a` or `GIF89a`, then the logical screen's width and height
/// (little-endian 16-bit).
fn gif(bytes: &[u8]) -> Option<Dimensions> {
    let magic = bytes.get(..6)?;
    if magic != b"GIF87a" && magic != b"GIF89a" {
        return None;
    }
    let le = |at: usize| -> Option<u32> {
        let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
        Some(u32::from(u16::from_le_bytes(b)))
    };
    let (width, height) = (le(6)?, le(8)?);
    (width > 0 && height > 0).then_some(Dimensions { width, height })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A PNG's signature and `IHDR` chunk (what the parser reads; the
    /// CRC is not checked).
    pub(crate) fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = PNG_SIGNATURE.to_vec();
        bytes.extend_from_slice(&13u32.to_be_bytes());
        bytes.extend_from_slice(b"IHDR");
        bytes.extend_from_slice(&width.to_be_bytes());
        bytes.extend_from_slice(&height.to_be_bytes());
        bytes.extend_from_slice(&[8, 6, 0, 0, 0]);
        bytes.extend_from_slice(&[0; 4]);
        bytes
    }

    /// A JPEG's `SOI`, an `APP0` segment, a `DQT`-like segment, then a
    /// baseline or progressive start of frame.
    fn jpeg_header(width: u16, height: u16, sof: u8) -> Vec<u8> {
        let mut bytes = vec![0xFF, 0xD8];
        bytes.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x10]);
        bytes.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xDB, 0x00, 0x03, 0x00]);
        bytes.extend_from_slice(&[0xFF, sof, 0x00, 0x11, 0x08]);
        bytes.extend_from_slice(&height.to_be_bytes());
        bytes.extend_from_slice(&width.to_be_bytes());
        bytes.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        bytes.extend_from_slice(&[0xFF, 0xD9]);
        bytes
    }

    #[test]
    fn a_png_header_gives_the_ihdr_size() {
        let size = dimensions("image/png", &png_header(640, 480)).unwrap();
        assert_eq!(size.to_string(), "640x480");
    }

    #[test]
    fn a_jpeg_gives_the_size_of_its_frame_past_other_segments_and_fill_bytes() {
        for sof in [0xC0, 0xC2] {
            assert_eq!(
                dimensions("image/jpeg", &jpeg_header(800, 600, sof)),
                Some(Dimensions {
                    width: 800,
                    height: 600
                })
            );
        }
        assert_eq!(
            dimensions("image/jpeg", &jpeg_header(800, 600, 0xC4)),
            None,
            "DHT is no frame header"
        );
    }

    #[test]
    fn a_gif_gives_its_screen_size() {
        let mut bytes = b"GIF89a".to_vec();
        bytes.extend_from_slice(&[0x20, 0x03, 0x58, 0x02]);
        assert_eq!(
            dimensions("image/gif", &bytes).map(|d| d.to_string()),
            Some("800x600".into())
        );
    }

    #[test]
    fn truncated_mislabelled_or_zero_sized_headers_give_none() {
        let png = png_header(640, 480);
        for cut in 0..png.len().min(24) {
            assert_eq!(dimensions("image/png", &png[..cut]), None, "{cut}");
        }
        assert_eq!(dimensions("image/jpeg", &png), None);
        assert_eq!(dimensions("image/png", &png_header(0, 480)), None);
        assert_eq!(dimensions("application/pdf", b"%PDF-1.4"), None);
        let jpeg = jpeg_header(1, 1, 0xC0);
        for cut in 0..jpeg.len() - 12 {
            assert_eq!(dimensions("image/jpeg", &jpeg[..cut]), None, "{cut}");
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(
            mime in prop_oneof![Just("image/png"), Just("image/jpeg"), Just("image/gif")],
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = dimensions(mime, &bytes);
        }

        #[test]
        fn garbage_after_a_valid_prefix_never_panics(
            prefix in 0usize..40,
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut jpeg = jpeg_header(3, 4, 0xC0);
            jpeg.truncate(prefix.min(jpeg.len()));
            jpeg.extend_from_slice(&tail);
            let _ = dimensions("image/jpeg", &jpeg);
            let mut png = png_header(3, 4);
            png.truncate(prefix.min(png.len()));
            png.extend_from_slice(&tail);
            let _ = dimensions("image/png", &png);
        }

        #[test]
        fn any_png_or_jpeg_size_is_read_back(width in 1u16.., height in 1u16..) {
            prop_assert_eq!(
                dimensions("image/png", &png_header(width.into(), height.into())),
                Some(Dimensions { width: width.into(), height: height.into() })
            );
            prop_assert_eq!(
                dimensions("image/jpeg", &jpeg_header(width, height, 0xC0)),
                Some(Dimensions { width: width.into(), height: height.into() })
            );
        }
    }
}
