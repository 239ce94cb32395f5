//! Byte payloads in JSON: plain text when the bytes are UTF-8 and the sender
//! allows it, base64 (`{"base64": "..."}`) otherwise.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A byte payload (process output, file chunk).
///
/// On the wire it is a JSON string when it was built with
/// [`Data::text_or_base64`] and the bytes are valid UTF-8, else an object
/// `{"base64": "..."}`. Decoding accepts both forms.
///
/// Two payloads are equal when their bytes are, whatever their wire form.
#[derive(Clone, Default)]
pub struct Data {
    bytes: Bytes,
    force_base64: bool,
}

impl Data {
    /// Payload sent as text when it is valid UTF-8 (process output).
    pub fn text_or_base64(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            force_base64: false,
        }
    }

    /// Payload always sent as base64 (file contents).
    pub fn base64(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            force_base64: true,
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Consumes the payload into its bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether the payload goes on the wire as plain text.
    pub fn is_text(&self) -> bool {
        !self.force_base64 && std::str::from_utf8(&self.bytes).is_ok()
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.bytes) {
            Ok(text) if text.len() <= 64 => write!(f, "Data({text:?})"),
            _ => write!(f, "Data({} bytes)", self.bytes.len()),
        }
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !self.force_base64 {
            if let Ok(text) = std::str::from_utf8(&self.bytes) {
                return serializer.serialize_str(text);
            }
        }
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("base64", &STANDARD.encode(&self.bytes))?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an object {\"base64\": \"...\"}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Data, E> {
        Ok(Data::text_or_base64(Bytes::copy_from_slice(v.as_bytes())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Data, E> {
        Ok(Data::text_or_base64(Bytes::from(v.into_bytes())))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
        let mut decoded = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "base64" {
                return Err(de::Error::unknown_field(&key, &["base64"]));
            }
            let text: String = map.next_value()?;
            let bytes = STANDARD
                .decode(text.as_bytes())
                .map_err(|e| de::Error::custom(format!("invalid base64: {e}")))?;
            decoded = Some(Data::base64(bytes));
        }
        decoded.ok_or_else(|| de::Error::missing_field("base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_output_is_plain_text() {
        let json = serde_json::to_string(&Data::text_or_base64("héllo\n")).unwrap();
        assert_eq!(json, "\"héllo\\n\"");
    }

    #[test]
    fn non_utf8_output_is_base64() {
        let json = serde_json::to_string(&Data::text_or_base64(vec![0xff, 0x00])).unwrap();
        assert_eq!(json, r#"{"base64":"/wA="}"#);
    }

    #[test]
    fn file_data_is_always_base64() {
        let json = serde_json::to_string(&Data::base64("abc")).unwrap();
        assert_eq!(json, r#"{"base64":"YWJj"}"#);
    }

    #[test]
    fn both_forms_decode_to_the_same_bytes() {
        let a: Data = serde_json::from_str("\"abc\"").unwrap();
        let b: Data = serde_json::from_str(r#"{"base64":"YWJj"}"#).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn invalid_base64_is_an_error() {
        assert!(serde_json::from_str::<Data>(r#"{"base64":"!!"}"#).is_err());
        assert!(serde_json::from_str::<Data>(r#"{"hex":"00"}"#).is_err());
        assert!(serde_json::from_str::<Data>("12").is_err());
    }
}
