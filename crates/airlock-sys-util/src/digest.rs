//! sha256 digests as lowercase hex: the content hashes of files moved to
//! and from guests, template and layer keys, API key hashes and the
//! images' input hashes all use this one spelling.
//!
//! ```
//! use airlock_sys_util::sha256_hex;
//!
//! assert_eq!(
//!     sha256_hex(b"abc"),
//!     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
//! );
//! ```

use sha2::{Digest, Sha256};
use std::path::Path;

/// The sha256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A sha256 computed piece by piece, for content that is moved in chunks
/// and never held whole (a file streamed to or from a guest); its
/// [`Sha256Hex::finish`] spells the digest as [`sha256_hex`] does.
#[derive(Debug, Clone, Default)]
pub struct Sha256Hex {
    hasher: Sha256,
    bytes: u64,
}

impl Sha256Hex {
    /// A digest of nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next piece of the content.
    pub fn update(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.bytes += piece.len() as u64;
    }

    /// How many bytes were added so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The size and the digest of everything added, as 64 lowercase hex
    /// digits.
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

/// The sha256 of a file's content, as 64 lowercase hex digits. Streamed,
/// so a large file is not read into memory; blocking (call it off async
/// threads, e.g. in `spawn_blocking`).
///
/// # Errors
/// The I/O error of opening or reading the file.
pub fn sha256_file_hex(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_of_nothing_is_the_well_known_one() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_digest_fed_in_pieces_equals_the_digest_of_the_whole() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut streamed = Sha256Hex::new();
        for piece in content.chunks(7_777) {
            streamed.update(piece);
        }
        assert_eq!(streamed.bytes(), content.len() as u64);
        assert_eq!(
            streamed.finish(),
            (content.len() as u64, sha256_hex(&content))
        );
    }

    #[test]
    fn a_file_hashes_to_the_digest_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content = vec![0x5au8; 200_000];
        std::fs::write(&path, &content).unwrap();
        assert_eq!(sha256_file_hex(&path).unwrap(), sha256_hex(&content));
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_digest() {
        let err = sha256_file_hex(Path::new("/nonexistent/airlock-digest")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
