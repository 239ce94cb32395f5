//! Batching and capping of process output: the pure part of the output
//! pumps of [`crate::exec`].
//!
//! Bytes go in as the pipe yields them; chunks come out when the batch
//! reaches the flush size, when the flush timer fires, or at the end. A
//! chunk does not end inside a UTF-8 character when that can be avoided, so
//! text output stays text on the wire. Past the cap the output is cut (at a
//! character boundary when possible), a marker line is added, and everything
//! later is dropped and counted.

use bytes::{Bytes, BytesMut};

/// Which stream a pump reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl StreamKind {
    /// `stdout` or `stderr`.
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// The marker line appended where output was cut.
pub fn truncation_marker(kind: StreamKind, cap_bytes: u64) -> String {
    airlock_protocol::truncation_marker(kind.name(), cap_bytes)
}

/// Length of the longest prefix of `buf` that does not end inside a UTF-8
/// character: a trailing lead byte with fewer continuation bytes than it
/// announces is left out. Anything else (ASCII, complete characters,
/// invalid bytes) counts as complete.
pub fn complete_utf8_prefix_len(buf: &[u8]) -> usize {
    // A character is at most 4 bytes: look at the last 3 for its lead byte.
    let start = buf.len().saturating_sub(3);
    for i in (start..buf.len()).rev() {
        let byte = buf[i];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for the lead
        }
        let needed = match byte {
            b if b & 0b1110_0000 == 0b1100_0000 => 2,
            b if b & 0b1111_0000 == 0b1110_0000 => 3,
            b if b & 0b1111_1000 == 0b1111_0000 => 4,
            _ => return buf.len(), // ASCII or invalid lead: nothing to hold
        };
        let have = buf.len() - i;
        return if have < needed { i } else { buf.len() };
    }
    buf.len()
}

/// Batches one stream's output and applies its cap.
#[derive(Debug)]
pub struct OutputBatcher {
    kind: StreamKind,
    cap_bytes: u64,
    flush_bytes: usize,
    pending: BytesMut,
    /// Output bytes accepted so far (the marker excluded).
    kept_bytes: u64,
    /// Bytes dropped after the cap.
    dropped_bytes: u64,
    truncated: bool,
}

impl OutputBatcher {
    /// A batcher flushing at `flush_bytes` (at least 1) and cutting at
    /// `cap_bytes`.
    pub fn new(kind: StreamKind, cap_bytes: u64, flush_bytes: usize) -> Self {
        Self {
            kind,
            cap_bytes,
            flush_bytes: flush_bytes.max(1),
            pending: BytesMut::new(),
            kept_bytes: 0,
            dropped_bytes: 0,
            truncated: false,
        }
    }

    /// Adds bytes read from the pipe; returns the chunks now full.
    pub fn push(&mut self, data: &[u8]) -> Vec<Bytes> {
        if self.truncated {
            self.dropped_bytes += data.len() as u64;
            return Vec::new();
        }
        let room = self.cap_bytes.saturating_sub(self.kept_bytes);
        if data.len() as u64 <= room {
            self.kept_bytes += data.len() as u64;
            self.pending.extend_from_slice(data);
            return self.full_chunks();
        }
        // `room` < data.len(), so it fits in usize.
        let room = usize::try_from(room).unwrap_or(data.len());
        // Cut before a character that would straddle the cap, when that
        // character starts inside `data` (the last 3 kept bytes decide).
        let mut tail: Vec<u8> = self.pending[self.pending.len().saturating_sub(3)..].to_vec();
        tail.extend_from_slice(&data[room.saturating_sub(3)..room]);
        let tail = &tail[tail.len().saturating_sub(3)..];
        let held = tail.len() - complete_utf8_prefix_len(tail);
        let cut = if held <= room { room - held } else { room };
        self.pending.extend_from_slice(&data[..cut]);
        self.kept_bytes += cut as u64;
        self.dropped_bytes += (data.len() - cut) as u64;
        self.truncated = true;
        self.pending
            .extend_from_slice(truncation_marker(self.kind, self.cap_bytes).as_bytes());
        // Everything up to and including the marker goes out now.
        let mut chunks = self.full_chunks();
        chunks.extend(self.finish());
        chunks
    }

    /// Chunks of `flush_bytes` while that much is pending, each shortened
    /// to end on a character boundary when that leaves something to send.
    fn full_chunks(&mut self) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        while self.pending.len() >= self.flush_bytes {
            let mut len = complete_utf8_prefix_len(&self.pending[..self.flush_bytes]);
            if len == 0 {
                len = self.flush_bytes;
            }
            chunks.push(self.pending.split_to(len).freeze());
        }
        chunks
    }

    /// The timer fired: what is pending goes out, except an unfinished
    /// character at the end when other bytes precede it (it waits one more
    /// period for its continuation bytes).
    pub fn flush_on_timer(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        let mut len = complete_utf8_prefix_len(&self.pending);
        if len == 0 {
            len = self.pending.len();
        }
        Some(self.pending.split_to(len).freeze())
    }

    /// The stream ended: everything pending.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.pending.split().freeze())
    }

    /// Whether bytes wait for the timer.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the cap was reached.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Bytes dropped after the cap.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn concat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn utf8_prefix_leaves_out_an_unfinished_character() {
        let e_acute = "é".as_bytes(); // 2 bytes
        let euro = "€".as_bytes(); // 3 bytes
        let smile = "😀".as_bytes(); // 4 bytes
        assert_eq!(complete_utf8_prefix_len(b"abc"), 3);
        assert_eq!(complete_utf8_prefix_len(b""), 0);
        assert_eq!(complete_utf8_prefix_len(&[b'a', e_acute[0]]), 1);
        assert_eq!(complete_utf8_prefix_len(&[b'a', euro[0], euro[1]]), 1);
        assert_eq!(complete_utf8_prefix_len(&smile[..3]), 0);
        assert_eq!(complete_utf8_prefix_len(smile), 4);
        assert_eq!(complete_utf8_prefix_len(&[0xff, 0xfe]), 2);
        assert_eq!(complete_utf8_prefix_len(&[0x80, 0x80, 0x80, 0x80]), 4);
    }

    #[test]
    fn chunks_are_cut_at_the_flush_size() {
        let mut b = OutputBatcher::new(StreamKind::Stdout, 1 << 20, 4);
        let chunks = b.push(b"0123456789");
        assert_eq!(chunks, vec![Bytes::from("0123"), Bytes::from("4567")]);
        assert_eq!(b.flush_on_timer(), Some(Bytes::from("89")));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn a_character_is_not_split_across_chunks() {
        let mut b = OutputBatcher::new(StreamKind::Stdout, 1 << 20, 4);
        let chunks = b.push("abcé".as_bytes()); // 5 bytes, é at 3..5
        assert_eq!(chunks, vec![Bytes::from("abc")]);
        assert_eq!(b.finish(), Some(Bytes::from("é")));
    }

    #[test]
    fn timer_holds_an_unfinished_character_once() {
        let mut b = OutputBatcher::new(StreamKind::Stdout, 1 << 20, 64);
        let euro = "€".as_bytes();
        assert!(b.push(&[b'x', euro[0]]).is_empty());
        assert_eq!(b.flush_on_timer(), Some(Bytes::from("x")));
        assert!(b.push(&euro[1..]).is_empty());
        assert_eq!(b.flush_on_timer(), Some(Bytes::from("€")));
        assert!(b.push(&[euro[0]]).is_empty());
        assert_eq!(b.flush_on_timer(), Some(Bytes::from(vec![euro[0]])));
    }

    #[test]
    fn cap_cuts_adds_the_marker_and_drops_the_rest() {
        let mut b = OutputBatcher::new(StreamKind::Stderr, 10, 4);
        let chunks = b.push(b"0123456789abc");
        let out = concat(&chunks);
        let marker = truncation_marker(StreamKind::Stderr, 10);
        assert_eq!(out, [&b"0123456789"[..], marker.as_bytes()].concat());
        assert!(b.truncated());
        assert!(b.push(b"more").is_empty());
        assert_eq!(b.dropped_bytes(), 7);
        assert_eq!(b.finish(), None);
        assert!(marker.contains("stderr truncated after 10 bytes"));
    }

    #[test]
    fn cap_does_not_split_a_character() {
        let mut b = OutputBatcher::new(StreamKind::Stdout, 4, 64);
        let out = concat(&b.push("abcé".as_bytes())); // é would straddle the cap
        assert!(out.starts_with(b"abc\n[airlock"));
    }

    proptest! {
        #[test]
        fn output_is_the_input_cut_at_the_cap(
            writes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..20),
            cap in 1u64..400,
            flush in 1usize..40,
            timer_every in 1usize..5,
        ) {
            let mut b = OutputBatcher::new(StreamKind::Stdout, cap, flush);
            let mut out = Vec::new();
            for (i, w) in writes.iter().enumerate() {
                for chunk in b.push(w) {
                    prop_assert!(!chunk.is_empty());
                    out.push(chunk);
                }
                if i % timer_every == 0 {
                    out.extend(b.flush_on_timer());
                }
            }
            out.extend(b.finish());
            let input: Vec<u8> = writes.concat();
            let got = concat(&out);
            if input.len() as u64 <= cap {
                prop_assert!(!b.truncated());
                prop_assert_eq!(got, input);
            } else {
                let marker = truncation_marker(StreamKind::Stdout, cap);
                prop_assert!(b.truncated());
                prop_assert!(got.ends_with(marker.as_bytes()));
                let kept = &got[..got.len() - marker.len()];
                prop_assert!(kept.len() as u64 <= cap && kept.len() as u64 + 3 >= cap.min(input.len() as u64));
                prop_assert_eq!(kept, &input[..kept.len()]);
                prop_assert_eq!(kept.len() as u64 + b.dropped_bytes(), input.len() as u64);
            }
        }

        #[test]
        fn text_stays_text_chunk_by_chunk(text in "\\PC{0,200}", flush in 4usize..40) {
            let mut b = OutputBatcher::new(StreamKind::Stdout, 1 << 20, flush);
            let mut chunks = b.push(text.as_bytes());
            chunks.extend(b.finish());
            for c in &chunks {
                prop_assert!(std::str::from_utf8(c).is_ok());
            }
            prop_assert_eq!(concat(&chunks), text.as_bytes());
        }
    }
}
