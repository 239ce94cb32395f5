//! QEMU's migration stream, read just far enough to drop the RAM pages a
//! base memory file already holds ([`delta_against_base`]).
//!
//! A whole-machine save (`x-ignore-shared` off) carries every page of
//! guest RAM. A VM that maps a template's memory file privately and loads
//! such a stream ends up with the saved RAM however much of it the
//! template already held; the same VM loading only the pages that differ
//! from the file ends up with the same RAM, shares the rest with every
//! other mapping of the file, and reads a fraction of the stream. A fork's
//! children load so (`airlock`'s `pause/fork`).
//!
//! The format is QEMU's version 3 stream as QEMU 7.2 writes it
//! (`migration/savevm.c`, `migration/ram.c`): a header, an optional
//! configuration section, the RAM's `START`, `PART` and `END` sections
//! (page records: a big-endian `offset | flags`, the block's name unless
//! it continues the last one, then one fill byte for a zero page or the
//! page), then device sections, copied untouched. Anything else (another
//! iterable section, compressed or XBZRLE pages, a capability subsection,
//! a RAM block the base does not match, RAM not wholly present) is refused
//! with [`StreamError`], and the caller loads the stream whole instead.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;

/// The first four bytes of a stream: `QEVM`.
pub const STREAM_MAGIC: u32 = 0x5145_564d;
/// The stream format version QEMU has written since 1.x.
pub const STREAM_VERSION: u32 = 3;
/// The guest page size of an x86 stream.
pub const PAGE_SIZE: u64 = 4096;

const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const SECTION_FOOTER: u8 = 0x7e;
const CONFIGURATION: u8 = 0x07;

const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
const FLAGS_MASK: u64 = PAGE_SIZE - 1;

/// Why a stream was not filtered (the caller loads it whole).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the stream or the base, or writing the delta, failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The stream holds something this reader does not know.
    #[error(
        "the saved state is not a stream this reader knows: {what} at byte {offset} \
         (hint: it is loaded whole instead)"
    )]
    Unsupported {
        /// What was found.
        what: String,
        /// Where, from the stream's start.
        offset: u64,
    },
    /// The RAM block to filter is not wholly in the stream: loaded over the
    /// base, the missing pages would be the base's, not the saved VM's.
    #[error("the saved state holds {present} of the {pages} pages of RAM block {block:?}")]
    Incomplete {
        /// The block.
        block: String,
        /// Pages it has.
        pages: u64,
        /// Pages the stream holds.
        present: u64,
    },
}

/// What [`delta_against_base`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Pages of the filtered block in the stream.
    pub pages: u64,
    /// Of them, those that differ from the base (kept).
    pub kept: u64,
    /// Bytes read from the stream.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

/// Copies the migration stream `input` to `output` without the pages of
/// RAM block `block` that `base` (a memory file of the block's exact
/// size) already holds at their offset; everything else is copied as it
/// is. Loaded into a VM whose RAM block `block` maps `base` privately,
/// the output gives the same machine as `input` loaded into empty RAM.
///
/// # Errors
/// [`StreamError`]: nothing written may then be loaded.
pub fn delta_against_base(
    input: impl Read,
    output: impl Write,
    block: &str,
    base: &File,
) -> Result<DeltaStats, StreamError> {
    let base = Base::open(base)?;
    let mut filter = Filter {
        input: Counting::new(BufReader::with_capacity(1 << 20, input)),
        output: Counting::new(BufWriter::with_capacity(1 << 20, output)),
        target: block.to_owned(),
        base,
        blocks: Vec::new(),
        last_in: None,
        last_out: None,
        target_block: None,
        covered: Vec::new(),
        stats: DeltaStats::default(),
    };
    filter.run()?;
    let mut stats = filter.stats;
    stats.bytes_in = filter.input.count;
    filter
        .output
        .inner
        .flush()
        .map_err(|source| StreamError::Io {
            action: "write the filtered state",
            source,
        })?;
    stats.bytes_out = filter.output.count;
    Ok(stats)
}

/// A base memory file: its holes known, its data read a chunk at a time.
struct Base<'a> {
    file: &'a File,
    len: u64,
    /// Sorted, disjoint `[start, end)` ranges that may hold data.
    data: Vec<(u64, u64)>,
    chunk_start: u64,
    chunk: Vec<u8>,
}

/// A page of zeros to compare with.
static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

/// Bytes read from the base at once.
const CHUNK: u64 = 1 << 20;

impl<'a> Base<'a> {
    fn open(file: &'a File) -> Result<Self, StreamError> {
        let len = file
            .metadata()
            .map_err(|source| StreamError::Io {
                action: "measure the base memory file",
                source,
            })?
            .len();
        Ok(Self {
            file,
            len,
            data: data_ranges(file, len),
            chunk_start: u64::MAX,
            chunk: Vec::new(),
        })
    }

    fn in_hole(&self, offset: u64) -> bool {
        let after = self.data.partition_point(|&(start, _)| start <= offset);
        after == 0 || self.data[after - 1].1 <= offset
    }

    /// Whether the base's page at `offset` equals `page` (a page, or
    /// `None` for a page of `fill` bytes).
    fn holds(&mut self, offset: u64, page: Option<&[u8]>, fill: u8) -> Result<bool, StreamError> {
        if self.in_hole(offset) {
            return Ok(match page {
                Some(bytes) => bytes == ZERO_PAGE.as_slice(),
                None => fill == 0,
            });
        }
        let start = offset - offset % CHUNK;
        if start != self.chunk_start {
            let want = usize::try_from(CHUNK.min(self.len - start)).unwrap_or(0);
            self.chunk.resize(want, 0);
            self.file
                .read_exact_at(&mut self.chunk, start)
                .map_err(|source| StreamError::Io {
                    action: "read the base memory file",
                    source,
                })?;
            self.chunk_start = start;
        }
        let at = usize::try_from(offset - start).unwrap_or(usize::MAX);
        let Some(held) = self.chunk.get(at..at.saturating_add(PAGE_SIZE as usize)) else {
            return Ok(false);
        };
        Ok(match page {
            Some(bytes) => held == bytes,
            // Slice equality is one `memcmp`, even unoptimised.
            None if fill == 0 => held == ZERO_PAGE.as_slice(),
            None => held.iter().all(|&b| b == fill),
        })
    }
}

/// The ranges of `file` (of `len` bytes) that may hold data, from
/// `SEEK_DATA`/`SEEK_HOLE`; the whole file when it cannot tell.
fn data_ranges(file: &File, len: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut ranges = Vec::new();
    let mut at: i64 = 0;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while at < end {
        let start = match lseek(fd, at, Whence::SeekData) {
            Ok(start) => start,
            // No data past `at`.
            Err(nix::errno::Errno::ENXIO) => return ranges,
            // The file system cannot tell: read it all.
            Err(_) => return vec![(0, len)],
        };
        let Ok(stop) = lseek(fd, start, Whence::SeekHole) else {
            return vec![(0, len)];
        };
        let (s, e) = (
            u64::try_from(start).unwrap_or(0),
            u64::try_from(stop).unwrap_or(len),
        );
        ranges.push((s, e.min(len)));
        at = stop;
    }
    ranges
}

/// What `reader` holds buffered, filled when empty; nothing consumed.
fn buffered(reader: &mut impl io::BufRead) -> Result<&[u8], StreamError> {
    reader.fill_buf().map_err(|source| StreamError::Io {
        action: "read the saved state",
        source,
    })
}

/// A reader or writer that counts its bytes.
struct Counting<T> {
    inner: T,
    count: u64,
}

impl<T> Counting<T> {
    fn new(inner: T) -> Self {
        Self { inner, count: 0 }
    }
}

struct Filter<'a, R: io::BufRead, W: Write> {
    input: Counting<R>,
    output: Counting<W>,
    target: String,
    base: Base<'a>,
    /// The stream's RAM blocks and their sizes, in the setup's order.
    blocks: Vec<(String, u64)>,
    /// The block (its index in `blocks`) of the last page record read,
    /// and written: a page record that continues its block names none,
    /// and costs no lookup.
    last_in: Option<usize>,
    last_out: Option<usize>,
    /// The index of the block filtered (named `target`), once set up.
    target_block: Option<usize>,
    /// Which pages of the target block the stream held.
    covered: Vec<bool>,
    stats: DeltaStats,
}

impl<R: io::BufRead, W: Write> Filter<'_, R, W> {
    fn run(&mut self) -> Result<(), StreamError> {
        let magic = self.be32()?;
        let version = self.be32()?;
        if magic != STREAM_MAGIC || version != STREAM_VERSION {
            return Err(self.unsupported(format!("header {magic:#x} version {version}")));
        }
        self.put(&magic.to_be_bytes())?;
        self.put(&version.to_be_bytes())?;
        let mut ram_section = None;
        loop {
            let kind = self.byte()?;
            match kind {
                CONFIGURATION if ram_section.is_none() => {
                    let len = self.be32()?;
                    let name = self.bytes(len as usize)?;
                    self.put(&[kind])?;
                    self.put(&len.to_be_bytes())?;
                    self.put(&name)?;
                }
                SECTION_START if ram_section.is_none() => {
                    let id = self.be32()?;
                    let name = self.name()?;
                    let instance = self.be32()?;
                    let version = self.be32()?;
                    if name != "ram" {
                        return Err(self.unsupported(format!("an iterable section {name:?}")));
                    }
                    self.put(&[kind])?;
                    self.put(&id.to_be_bytes())?;
                    self.put_name(&name)?;
                    self.put(&instance.to_be_bytes())?;
                    self.put(&version.to_be_bytes())?;
                    self.ram_setup()?;
                    self.footer(id)?;
                    ram_section = Some(id);
                }
                SECTION_PART | SECTION_END if ram_section.is_some() => {
                    let id = self.be32()?;
                    if Some(id) != ram_section {
                        return Err(self.unsupported(format!("section {id} besides the RAM's")));
                    }
                    self.put(&[kind])?;
                    self.put(&id.to_be_bytes())?;
                    self.pages()?;
                    self.footer(id)?;
                    if kind == SECTION_END {
                        return self.finish();
                    }
                }
                other => {
                    return Err(self.unsupported(format!("section type {other:#x}")));
                }
            }
        }
    }

    /// The RAM's setup: its size, then each block's name and size.
    fn ram_setup(&mut self) -> Result<(), StreamError> {
        let header = self.be64()?;
        if header & FLAGS_MASK != FLAG_MEM_SIZE {
            return Err(self.unsupported(format!("RAM setup flags {:#x}", header & FLAGS_MASK)));
        }
        self.put(&header.to_be_bytes())?;
        let mut left = header & !FLAGS_MASK;
        while left > 0 {
            let name = self.name()?;
            let size = self.be64()?;
            if size > left || size % PAGE_SIZE != 0 {
                return Err(self.unsupported(format!("RAM block {name:?} of {size} bytes")));
            }
            left -= size;
            self.put_name(&name)?;
            self.put(&size.to_be_bytes())?;
            if self.blocks.iter().any(|(known, _)| *known == name) {
                return Err(self.unsupported(format!("RAM block {name:?} twice")));
            }
            self.blocks.push((name, size));
        }
        let Some(target) = self
            .blocks
            .iter()
            .position(|(name, _)| *name == self.target)
        else {
            return Err(self.unsupported(format!("no RAM block {:?}", self.target)));
        };
        self.target_block = Some(target);
        let size = self.blocks[target].1;
        if size != self.base.len {
            return Err(self.unsupported(format!(
                "RAM block {:?} of {size} bytes over a base of {}",
                self.target, self.base.len
            )));
        }
        self.covered = vec![false; usize::try_from(size / PAGE_SIZE).unwrap_or(0)];
        let eos = self.be64()?;
        if eos != FLAG_EOS {
            return Err(self.unsupported(format!("{eos:#x} after the RAM setup")));
        }
        self.put(&eos.to_be_bytes())
    }

    /// Page records up to the section's end-of-section mark.
    fn pages(&mut self) -> Result<(), StreamError> {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        loop {
            let header = self.be64()?;
            let (offset, flags) = (header & !FLAGS_MASK, header & FLAGS_MASK);
            if flags == FLAG_EOS {
                return self.put(&header.to_be_bytes());
            }
            let kind = flags & !FLAG_CONTINUE;
            if kind != FLAG_ZERO && kind != FLAG_PAGE {
                return Err(self.unsupported(format!("page flags {flags:#x}")));
            }
            let block = if flags & FLAG_CONTINUE != 0 {
                match self.last_in {
                    Some(block) => block,
                    None => return Err(self.unsupported("a page continuing no block".into())),
                }
            } else {
                let name = self.name()?;
                let Some(block) = self.blocks.iter().position(|(known, _)| *known == name) else {
                    return Err(self.unsupported(format!("a page of unknown block {name:?}")));
                };
                self.last_in = Some(block);
                block
            };
            let size = self.blocks[block].1;
            if offset >= size {
                let name = &self.blocks[block].0;
                return Err(self.unsupported(format!("page {offset:#x} past block {name:?}")));
            }
            let target = Some(block) == self.target_block;
            // A page of the target compared where the reader holds it:
            // `Some(held)`; `None` when it is not whole in the buffer.
            let compared = if target && kind == FLAG_PAGE {
                self.held_in_place(offset)?
            } else {
                None
            };
            if compared == Some(true) {
                continue;
            }
            let fill = if kind == FLAG_ZERO {
                self.byte()?
            } else {
                self.read_into(&mut page)?;
                0
            };
            let data = (kind == FLAG_PAGE).then_some(page.as_slice());
            if target {
                self.cover(offset);
                let held = match compared {
                    Some(held) => held,
                    None => self.base.holds(offset, data, fill)?,
                };
                if held {
                    continue;
                }
                self.stats.kept += 1;
            }
            let same = self.last_out == Some(block);
            let flags_out = kind | if same { FLAG_CONTINUE } else { 0 };
            self.put(&(offset | flags_out).to_be_bytes())?;
            if !same {
                let name = self.blocks[block].0.clone();
                self.put_name(&name)?;
                self.last_out = Some(block);
            }
            match data {
                Some(bytes) => self.put(bytes)?,
                None => self.put(&[fill])?,
            }
        }
    }

    /// Counts the target block's page at `offset` as present in the stream.
    fn cover(&mut self, offset: u64) {
        let index = usize::try_from(offset / PAGE_SIZE).unwrap_or(usize::MAX);
        if let Some(seen) = self.covered.get_mut(index) {
            *seen = true;
        }
        self.stats.pages += 1;
    }

    /// Compares the target block's page at `offset`, about to be read,
    /// where the reader's buffer holds it: `None` when the buffer does not
    /// hold it whole (it is then read and compared as any page);
    /// `Some(true)` when the base holds the same page, which is then
    /// counted and skipped without a copy; `Some(false)` when it differs
    /// (nothing consumed: it is read and kept). Most pages of a fork's
    /// stream are the base's: comparing them in place spares copying
    /// some 70 MB.
    fn held_in_place(&mut self, offset: u64) -> Result<Option<bool>, StreamError> {
        let page = PAGE_SIZE as usize;
        let buffered = buffered(&mut self.input.inner)?;
        let Some(bytes) = buffered.get(..page) else {
            return Ok(None);
        };
        if !self.base.holds(offset, Some(bytes), 0)? {
            return Ok(Some(false));
        }
        self.input.inner.consume(page);
        self.input.count += PAGE_SIZE;
        self.cover(offset);
        Ok(Some(true))
    }

    /// A section footer, when the stream has them.
    fn footer(&mut self, id: u32) -> Result<(), StreamError> {
        let mut next = [0u8; 1];
        if !self.peek(&mut next)? || next[0] != SECTION_FOOTER {
            return Ok(());
        }
        self.byte()?;
        let footer_id = self.be32()?;
        if footer_id != id {
            return Err(self.unsupported(format!("footer of section {footer_id} in section {id}")));
        }
        self.put(&[SECTION_FOOTER])?;
        self.put(&footer_id.to_be_bytes())
    }

    /// After the RAM's last section: every page present, the device
    /// sections copied as they are.
    fn finish(&mut self) -> Result<(), StreamError> {
        let present = self.covered.iter().filter(|&&seen| seen).count() as u64;
        let pages = self.covered.len() as u64;
        if present != pages {
            return Err(StreamError::Incomplete {
                block: self.target.clone(),
                pages,
                present,
            });
        }
        let copied = io::copy(&mut self.input.inner, &mut self.output.inner).map_err(|source| {
            StreamError::Io {
                action: "copy the device state",
                source,
            }
        })?;
        self.input.count += copied;
        self.output.count += copied;
        Ok(())
    }

    fn unsupported(&self, what: String) -> StreamError {
        StreamError::Unsupported {
            what,
            offset: self.input.count,
        }
    }

    fn read_into(&mut self, buf: &mut [u8]) -> Result<(), StreamError> {
        self.input.inner.read_exact(buf).map_err(|source| {
            if source.kind() == io::ErrorKind::UnexpectedEof {
                StreamError::Unsupported {
                    what: "the end of the stream".into(),
                    offset: self.input.count,
                }
            } else {
                StreamError::Io {
                    action: "read the saved state",
                    source,
                }
            }
        })?;
        self.input.count += buf.len() as u64;
        Ok(())
    }

    /// Whether a next byte exists; it is left unread in `buf`.
    fn peek(&mut self, buf: &mut [u8; 1]) -> Result<bool, StreamError> {
        match buffered(&mut self.input.inner)?.first() {
            Some(&b) => {
                buf[0] = b;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn byte(&mut self) -> Result<u8, StreamError> {
        let mut b = [0u8; 1];
        self.read_into(&mut b)?;
        Ok(b[0])
    }

    fn be32(&mut self) -> Result<u32, StreamError> {
        let mut b = [0u8; 4];
        self.read_into(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn be64(&mut self) -> Result<u64, StreamError> {
        let mut b = [0u8; 8];
        self.read_into(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn bytes(&mut self, len: usize) -> Result<Vec<u8>, StreamError> {
        let mut b = vec![0u8; len];
        self.read_into(&mut b)?;
        Ok(b)
    }

    /// A length byte and that many bytes of name.
    fn name(&mut self) -> Result<String, StreamError> {
        let len = self.byte()?;
        let raw = self.bytes(usize::from(len))?;
        String::from_utf8(raw).map_err(|_| self.unsupported("a name that is not UTF-8".into()))
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.output
            .inner
            .write_all(bytes)
            .map_err(|source| StreamError::Io {
                action: "write the filtered state",
                source,
            })?;
        self.output.count += bytes.len() as u64;
        Ok(())
    }

    fn put_name(&mut self, name: &str) -> Result<(), StreamError> {
        let len = u8::try_from(name.len())
            .map_err(|_| self.unsupported(format!("a name of {} bytes", name.len())))?;
        self.put(&[len])?;
        self.put(name.as_bytes())
    }
}

#[cfg(test)]
mod tests;
