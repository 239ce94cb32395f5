//! Rich results of a cell: MIME bundles, as Jupyter's `execute_result` and
//! `display_data`, and the uncaught exception of a cell.
//!
//! A [`ExecResult`] maps MIME types to one representation each:
//! `text/plain`, `text/html`, `text/markdown`, `text/latex`,
//! `image/svg+xml` and `application/javascript` are strings,
//! `application/json` is any JSON value, and binary types (`image/png`,
//! `image/jpeg`, `application/pdf`, any other `image/*`) are base64 strings
//! ([`is_binary_mime`]). The agent sends one `result` event per value shown,
//! in order with the exec's output; `is_main_result` marks the value of the
//! cell's last expression. An uncaught exception is one [`CellError`]
//! (`cell_error` event), besides the traceback on stderr.
//!
//! Between the agent and the host only, a figure may travel as raw pixels
//! ([`RAW_PIXELS_MIME`], a [`RawPixels`]) rather than `image/png`: the
//! guest runs under TCG, where compressing a PNG costs a chart cell a
//! fifth of its time, and the host writes the PNG natively before any
//! front end sees the result. Nothing past the host library ever sees
//! this representation.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The largest a result may be, as the JSON of its [`ExecResult`]: its
/// event then fits the protocol's default line limit
/// ([`crate::DEFAULT_MAX_LINE_BYTES`], 16 MiB). The cell driver drops
/// representations (the largest first, `text/plain` last) to stay under it
/// and says so with [`ExecResult::truncated`].
pub const MAX_RESULT_BYTES: usize = crate::DEFAULT_MAX_LINE_BYTES - 1024;

/// The key of the internal raw-pixel representation of a figure in a
/// bundle from the agent: a [`RawPixels`] object, which the host library
/// turns into `image/png` as it receives the result (never seen by a
/// front end). Not a binary type: its value is an object, not base64.
pub const RAW_PIXELS_MIME: &str = "application/x-airlock-raw-pixels";

/// The most bytes of pixels ([`RawPixels::data`] decoded) a raw
/// representation may carry: the cell driver writes the PNG itself for a
/// larger figure, and the host refuses a larger one. Small enough that the
/// PNG the host writes from them (at most a little larger than the pixels)
/// stays far under [`MAX_RESULT_BYTES`] as base64.
pub const MAX_RAW_PIXEL_BYTES: usize = 4 * 1024 * 1024;

/// A figure's pixels as the cell driver sends them ([`RAW_PIXELS_MIME`]):
/// 8-bit RGB or RGBA, rows top to bottom, no padding, laid out in `data`
/// as [`PixelEncoding`] says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawPixels {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Bytes per pixel: 3 (RGB) or 4 (RGBA, straight alpha).
    pub channels: u8,
    /// How `data` holds the pixels (absent: [`PixelEncoding::Raw`]).
    #[serde(default, skip_serializing_if = "PixelEncoding::is_raw")]
    pub encoding: PixelEncoding,
    /// The `channels` bytes of every pixel a [`PixelEncoding::Masked`]
    /// mask leaves out (a chart's background); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<Vec<u8>>,
    /// The pixels, base64, as `encoding` lays them out.
    pub data: String,
}

/// How [`RawPixels::data`] holds the pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelEncoding {
    /// The `width * height * channels` bytes of every pixel.
    #[default]
    Raw,
    /// A bitmask of `width * height` bits, most significant bit first
    /// (numpy's `packbits`), padded with zero bits to a whole byte: a set
    /// bit is a pixel whose `channels` bytes follow the mask, in order; a
    /// clear one is [`RawPixels::background`]. A chart is mostly its
    /// background: a 640x480 pandas line chart is 1.2 MB of base64 raw
    /// and about 120 KB masked; under TCG, a cell that sent 1.2 MB took
    /// 110-150 ms more than one that sent 100 bytes.
    Masked,
}

impl PixelEncoding {
    /// Whether this is [`PixelEncoding::Raw`] (left off the wire).
    pub fn is_raw(&self) -> bool {
        *self == PixelEncoding::Raw
    }
}

/// MIME type -> representation.
pub type MimeBundle = BTreeMap<String, serde_json::Value>;

/// One value shown by a cell (its last expression, `display(...)`, a
/// figure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct ExecResult {
    /// The representations, by MIME type (binary ones base64).
    pub data: MimeBundle,
    /// Whether this is the value of the cell's last expression (Jupyter's
    /// `execute_result`) rather than a displayed value (`display_data`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_main_result: bool,
    /// Whether representations were dropped because the result was over
    /// its size cap (what is left is at least `text/plain` when it fit).
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ExecResult {
    /// The `text/plain` representation, if any.
    pub fn text(&self) -> Option<&str> {
        self.data
            .get("text/plain")
            .and_then(serde_json::Value::as_str)
    }

    /// The MIME types present, in the bundle's (sorted) order.
    pub fn mime_types(&self) -> impl Iterator<Item = &str> {
        self.data.keys().map(String::as_str)
    }

    /// The decoded bytes of a binary representation (`image/png`, ...).
    /// `None` when `mime` is absent or not a binary type.
    ///
    /// # Errors
    /// When its base64 (or its JSON type) is invalid.
    pub fn binary(&self, mime: &str) -> Option<Result<Vec<u8>, String>> {
        if !is_binary_mime(mime) {
            return None;
        }
        let value = self.data.get(mime)?;
        Some(match value.as_str() {
            Some(text) => STANDARD
                .decode(text.trim().as_bytes())
                .map_err(|e| format!("{mime}: invalid base64: {e}")),
            None => Err(format!("{mime}: not a base64 string")),
        })
    }
}

/// Whether a MIME type's representation is binary, i.e. base64 on the wire:
/// every `image/*` but `image/svg+xml`, `application/pdf`, and
/// `application/octet-stream`.
pub fn is_binary_mime(mime: &str) -> bool {
    (mime.starts_with("image/") && mime != "image/svg+xml")
        || mime == "application/pdf"
        || mime == "application/octet-stream"
}

/// A cell's uncaught exception, as E2B's `ExecutionError` and Jupyter's
/// `error` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct CellError {
    /// The exception's type (`ZeroDivisionError`, `TypeError`).
    pub name: String,
    /// Its message (`division by zero`).
    pub value: String,
    /// The traceback as printed on stderr.
    pub traceback: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_types_are_the_images_but_svg_and_pdf() {
        for mime in ["image/png", "image/jpeg", "image/gif", "application/pdf"] {
            assert!(is_binary_mime(mime), "{mime}");
        }
        for mime in [
            "image/svg+xml",
            "text/plain",
            "text/html",
            "application/json",
            "text/latex",
        ] {
            assert!(!is_binary_mime(mime), "{mime}");
        }
    }

    #[test]
    fn binary_representations_decode_from_base64() {
        let result = ExecResult {
            data: MimeBundle::from([
                ("image/png".to_owned(), serde_json::json!("iVBORw==")),
                ("text/plain".to_owned(), serde_json::json!("<Figure>")),
                ("image/jpeg".to_owned(), serde_json::json!(3)),
            ]),
            is_main_result: false,
            truncated: false,
        };
        assert_eq!(
            result.binary("image/png"),
            Some(Ok(vec![0x89, b'P', b'N', b'G']))
        );
        assert!(result.binary("text/plain").is_none());
        assert!(result.binary("image/gif").is_none());
        assert!(matches!(result.binary("image/jpeg"), Some(Err(_))));
        assert_eq!(result.text(), Some("<Figure>"));
    }

    #[test]
    fn flags_are_left_off_the_wire_when_false() {
        let result = ExecResult {
            data: MimeBundle::from([("text/plain".to_owned(), serde_json::json!("2"))]),
            is_main_result: false,
            truncated: false,
        };
        assert_eq!(
            serde_json::to_string(&result).unwrap(),
            r#"{"data":{"text/plain":"2"}}"#
        );
    }
}
