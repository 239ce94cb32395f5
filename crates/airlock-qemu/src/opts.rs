//! QEMU option strings (`driver,key=value,key=value`) with value escaping.
//!
//! QEMU splits an option string on `,`; a literal comma inside a value is
//! written `,,`. Every value this crate puts into such a string goes through
//! [`escape_value`], so a path like `/tmp/a,b` cannot smuggle in an extra
//! option (`/tmp/a,readonly=off` stays one file name).
//!
//! Options that QEMU takes whole (`-kernel`, `-initrd`, `-append`) are not
//! option strings and are passed verbatim.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Escapes a value for a QEMU option string: every `,` becomes `,,`.
pub fn escape_value(value: &OsStr) -> OsString {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 4);
    for &b in bytes {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// Builds one option string. Keys are this crate's constants; values are
/// escaped.
#[derive(Debug, Clone)]
pub(crate) struct OptList {
    buf: OsString,
}

impl OptList {
    /// Starts with a bare leading word (driver or machine type), unescaped:
    /// callers pass constants only.
    pub(crate) fn new(head: &str) -> Self {
        Self {
            buf: OsString::from(head),
        }
    }

    /// Starts with no leading word.
    pub(crate) fn empty() -> Self {
        Self {
            buf: OsString::new(),
        }
    }

    /// Appends `key=value` with `value` escaped.
    pub(crate) fn set(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        if !self.buf.is_empty() {
            self.buf.push(",");
        }
        self.buf.push(key);
        self.buf.push("=");
        self.buf.push(escape_value(value.as_ref()));
        self
    }

    /// Appends `key=on` or `key=off`.
    pub(crate) fn flag(self, key: &str, on: bool) -> Self {
        self.set(key, if on { "on" } else { "off" })
    }

    /// The finished option string.
    pub(crate) fn finish(self) -> OsString {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Splits an option string the way QEMU's `qemu_opts_parse` does: on a
    /// single `,`, with `,,` standing for a literal comma.
    fn qemu_split(s: &[u8]) -> Vec<Vec<u8>> {
        let mut parts = vec![Vec::new()];
        let mut i = 0;
        while i < s.len() {
            if s[i] == b',' {
                if s.get(i + 1) == Some(&b',') {
                    parts.last_mut().unwrap().push(b',');
                    i += 2;
                    continue;
                }
                parts.push(Vec::new());
            } else {
                parts.last_mut().unwrap().push(s[i]);
            }
            i += 1;
        }
        parts
    }

    #[test]
    fn escape_doubles_every_comma() {
        assert_eq!(
            escape_value(OsStr::new("/a,b,,c")),
            OsStr::new("/a,,b,,,,c")
        );
    }

    #[test]
    fn escape_leaves_other_bytes_alone() {
        assert_eq!(escape_value(OsStr::new("/x/y=z:w")), OsStr::new("/x/y=z:w"));
        assert_eq!(escape_value(OsStr::new("")), OsStr::new(""));
    }

    #[test]
    fn escape_handles_non_utf8_bytes() {
        let raw = OsStr::from_bytes(b"/tmp/\xff,x");
        assert_eq!(escape_value(raw).as_bytes(), b"/tmp/\xff,,x");
    }

    #[test]
    fn path_with_injected_option_stays_one_value() {
        let opts = OptList::new("file")
            .set("id", "console")
            .set("path", "/tmp/a,append=on")
            .finish();
        let parts = qemu_split(opts.as_bytes());
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], b"path=/tmp/a,append=on");
    }

    #[test]
    fn empty_list_has_no_leading_comma() {
        let opts = OptList::empty().set("a", "1").flag("b", false).finish();
        assert_eq!(opts, OsStr::new("a=1,b=off"));
    }

    proptest! {
        #[test]
        fn escaped_value_splits_back_to_the_original(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let opts = OptList::new("drv").set("k", OsStr::from_bytes(&value)).set("z", "1").finish();
            let parts = qemu_split(opts.as_bytes());
            prop_assert_eq!(parts.len(), 3);
            let mut expected = b"k=".to_vec();
            expected.extend_from_slice(&value);
            prop_assert_eq!(&parts[1], &expected);
            prop_assert_eq!(&parts[2], &b"z=1".to_vec());
        }
    }
}
