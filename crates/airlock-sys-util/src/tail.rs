//! The end of a program's output, for error messages: a trimmed string tail
//! ([`tail_text`]), a bounded buffer that keeps the last bytes of a stream
//! while it is drained ([`TailBuffer`]), and the end of a log file
//! ([`file_tail`]).

use std::collections::VecDeque;
use std::path::Path;

/// The last `max_bytes` (about) of `text`, trimmed: when cut, it starts at
/// a char boundary with `...`.
pub fn tail_text(text: &str, max_bytes: usize) -> String {
    let text = text.trim();
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// The last `max_bytes` of the file at `path`, as (lossy) text; `""` when
/// it cannot be read (a missing log is not an error worth a second one).
/// A symbolic link is not followed (`""`): the log may sit in a dir that
/// a less trusted process (a jailed QEMU) owns, and must not make this
/// process read another file. Only the end is read.
pub fn file_tail(path: &Path, max_bytes: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path);
    let Ok(mut file) = opened else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes as u64);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(max_bytes as u64).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last bytes written to a stream, at most `capacity` of them: drain a
/// pipe into it and never stop reading (a full pipe stalls the writer).
#[derive(Debug, Default, Clone)]
pub struct TailBuffer {
    bytes: VecDeque<u8>,
    capacity: usize,
}

impl TailBuffer {
    /// A buffer keeping the last `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            bytes: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends bytes, dropping the oldest beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(data);
    }

    /// The kept bytes as (lossy) text.
    pub fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// How many bytes are kept.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole_and_trimmed() {
        assert_eq!(tail_text("  hello \n", 10), "hello");
        assert_eq!(tail_text("short", 10), "short");
    }

    #[test]
    fn long_text_is_cut_at_a_char_boundary() {
        let t = tail_text("ééééé", 3);
        assert!(t.starts_with("..."));
        assert!(t.ends_with('é'));
    }

    #[test]
    fn the_buffer_keeps_the_last_bytes() {
        let mut t = TailBuffer::new(4);
        t.push(b"ab");
        t.push(b"cdef");
        assert_eq!(t.text(), "cdef");
        t.push(b"0123456789");
        assert_eq!(t.text(), "6789");
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_zero_capacity_buffer_keeps_nothing() {
        let mut t = TailBuffer::new(0);
        t.push(b"abc");
        assert!(t.is_empty());
    }

    #[test]
    fn file_tail_follows_no_symbolic_link() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "private").unwrap();
        let log = dir.path().join("console.log");
        std::os::unix::fs::symlink(&secret, &log).unwrap();
        assert_eq!(file_tail(&log, 100), "");
        assert_eq!(file_tail(&secret, 3), "ate");
    }

    #[test]
    fn file_tail_reads_the_end_and_is_empty_for_a_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        std::fs::write(&log, "first line\nlast line\n").expect("write");
        assert_eq!(file_tail(&log, 10), "last line\n");
        assert_eq!(file_tail(&dir.path().join("absent"), 10), "");
    }
}
