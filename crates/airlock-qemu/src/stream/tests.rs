use super::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::io;

const TARGET: &str = "airlock-mem";
const OTHER: &str = "microvm.rom";
const PAGE: usize = PAGE_SIZE as usize;

/// A page's content: zero, or a pattern seeded by a number.
fn page_of(seed: u8) -> Vec<u8> {
    if seed == 0 {
        return vec![0; PAGE];
    }
    (0..PAGE)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
        .collect()
}

/// One page record of a synthetic stream.
#[derive(Debug, Clone)]
struct Record {
    block: &'static str,
    index: usize,
    seed: u8,
}

/// Writes a stream as QEMU 7.2 does: header, configuration, the RAM's
/// START (block list), PART and END sections of page records (zero
/// pages as a fill byte, the block named unless it continues the last
/// record's), footers, then `device` bytes.
fn stream(blocks: &[(&str, usize)], sections: &[Vec<Record>], device: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(STREAM_MAGIC.to_be_bytes());
    out.extend(STREAM_VERSION.to_be_bytes());
    out.push(CONFIGURATION);
    out.extend(7u32.to_be_bytes());
    out.extend(b"microvm");
    let name = |out: &mut Vec<u8>, n: &str| {
        out.push(n.len() as u8);
        out.extend(n.as_bytes());
    };
    out.push(SECTION_START);
    out.extend(2u32.to_be_bytes());
    name(&mut out, "ram");
    out.extend(0u32.to_be_bytes());
    out.extend(4u32.to_be_bytes());
    let total: u64 = blocks.iter().map(|(_, pages)| (*pages * PAGE) as u64).sum();
    out.extend((total | FLAG_MEM_SIZE).to_be_bytes());
    for (block, pages) in blocks {
        name(&mut out, block);
        out.extend(((*pages * PAGE) as u64).to_be_bytes());
    }
    out.extend(FLAG_EOS.to_be_bytes());
    out.push(SECTION_FOOTER);
    out.extend(2u32.to_be_bytes());
    let mut last: Option<&str> = None;
    for (i, records) in sections.iter().enumerate() {
        let end = i + 1 == sections.len();
        out.push(if end { SECTION_END } else { SECTION_PART });
        out.extend(2u32.to_be_bytes());
        for r in records {
            let kind = if r.seed == 0 { FLAG_ZERO } else { FLAG_PAGE };
            let cont = if last == Some(r.block) {
                FLAG_CONTINUE
            } else {
                0
            };
            out.extend(((r.index * PAGE) as u64 | kind | cont).to_be_bytes());
            if cont == 0 {
                name(&mut out, r.block);
                last = Some(r.block);
            }
            if r.seed == 0 {
                out.push(0);
            } else {
                out.extend(page_of(r.seed));
            }
        }
        out.extend(FLAG_EOS.to_be_bytes());
        out.push(SECTION_FOOTER);
        out.extend(2u32.to_be_bytes());
    }
    out.extend(device);
    out
}

/// What loading `stream` over `memory` gives: the RAM and the bytes after
/// the RAM's END (a loader written apart from the filter).
fn load(
    stream: &[u8],
    mut memory: HashMap<String, Vec<u8>>,
) -> (HashMap<String, Vec<u8>>, Vec<u8>) {
    let mut at = 8;
    let take = |at: &mut usize, n: usize| {
        let s = &stream[*at..*at + n];
        *at += n;
        s
    };
    let be32 = |at: &mut usize| u32::from_be_bytes(take(at, 4).try_into().unwrap());
    let be64 = |at: &mut usize| u64::from_be_bytes(take(at, 8).try_into().unwrap());
    let name = |at: &mut usize| {
        let n = take(at, 1)[0] as usize;
        String::from_utf8(take(at, n).to_vec()).unwrap()
    };
    let mut last = String::new();
    loop {
        let kind = take(&mut at, 1)[0];
        match kind {
            CONFIGURATION => {
                let n = be32(&mut at) as usize;
                take(&mut at, n);
            }
            SECTION_START => {
                be32(&mut at);
                assert_eq!(name(&mut at), "ram");
                be32(&mut at);
                be32(&mut at);
                let mut left = be64(&mut at) & !FLAGS_MASK;
                while left > 0 {
                    let block = name(&mut at);
                    let size = be64(&mut at);
                    assert_eq!(memory[&block].len() as u64, size);
                    left -= size;
                }
                assert_eq!(be64(&mut at), FLAG_EOS);
                assert_eq!(take(&mut at, 1)[0], SECTION_FOOTER);
                be32(&mut at);
            }
            SECTION_PART | SECTION_END => {
                be32(&mut at);
                loop {
                    let header = be64(&mut at);
                    let (offset, flags) = ((header & !FLAGS_MASK) as usize, header & FLAGS_MASK);
                    if flags == FLAG_EOS {
                        break;
                    }
                    if flags & FLAG_CONTINUE == 0 {
                        last = name(&mut at);
                    }
                    let ram = memory.get_mut(&last).unwrap();
                    if flags & FLAG_ZERO != 0 {
                        let fill = take(&mut at, 1)[0];
                        ram[offset..offset + PAGE].fill(fill);
                    } else {
                        ram[offset..offset + PAGE].copy_from_slice(take(&mut at, PAGE));
                    }
                }
                assert_eq!(take(&mut at, 1)[0], SECTION_FOOTER);
                be32(&mut at);
                if kind == SECTION_END {
                    return (memory, stream[at..].to_vec());
                }
            }
            other => panic!("section {other:#x}"),
        }
    }
}

fn memory_of(
    blocks: &[(&str, usize)],
    fill: impl Fn(&str, usize) -> u8,
) -> HashMap<String, Vec<u8>> {
    blocks
        .iter()
        .map(|(block, pages)| {
            let bytes = (0..*pages).flat_map(|i| page_of(fill(block, i))).collect();
            ((*block).to_owned(), bytes)
        })
        .collect()
}

/// A sparse base file: only its non-zero pages written.
fn base_file(seeds: &[u8]) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len((seeds.len() * PAGE) as u64).unwrap();
    for (i, &seed) in seeds.iter().enumerate() {
        if seed != 0 {
            file.as_file()
                .write_all_at(&page_of(seed), (i * PAGE) as u64)
                .unwrap();
        }
    }
    file
}

fn every_page(blocks: &[(&'static str, usize)], seeds: impl Fn(&str, usize) -> u8) -> Vec<Record> {
    blocks
        .iter()
        .flat_map(|&(block, pages)| (0..pages).map(move |index| (block, index)))
        .map(|(block, index)| Record {
            block,
            index,
            seed: seeds(block, index),
        })
        .collect()
}

fn filter(
    input: &[u8],
    base: &tempfile::NamedTempFile,
) -> Result<(Vec<u8>, DeltaStats), StreamError> {
    filter_in_reads_of(input, base, usize::MAX)
}

/// A reader that gives at most `most` bytes a read (a pipe's way): pages
/// then lie across the filter's buffer ends.
struct Chunked<'a> {
    rest: &'a [u8],
    most: usize,
}

impl io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.rest.len().min(buf.len()).min(self.most);
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

fn filter_in_reads_of(
    input: &[u8],
    base: &tempfile::NamedTempFile,
    most: usize,
) -> Result<(Vec<u8>, DeltaStats), StreamError> {
    let mut out = Vec::new();
    let reader = Chunked { rest: input, most };
    let stats = delta_against_base(reader, &mut out, TARGET, base.as_file())?;
    Ok((out, stats))
}

proptest! {
    #[test]
    fn the_delta_over_its_base_loads_the_same_machine(
        base_seeds in proptest::collection::vec(0u8..4, 1..24),
        changes in proptest::collection::vec(proptest::option::of(0u8..6), 1..24),
        other_seeds in proptest::collection::vec(0u8..3, 0..4),
        order in any::<u64>(),
        cuts in proptest::collection::vec(any::<u16>(), 0..4),
        device in proptest::collection::vec(any::<u8>(), 0..64),
        most in prop_oneof![Just(usize::MAX), 1usize..9000],
    ) {
        let pages = base_seeds.len();
        let blocks: Vec<(&'static str, usize)> = if other_seeds.is_empty() {
            vec![(TARGET, pages)]
        } else {
            vec![(TARGET, pages), (OTHER, other_seeds.len())]
        };
        // The saved VM's pages: its base's, or changed.
        let parent = |block: &str, i: usize| match block {
            TARGET => changes.get(i).copied().flatten().unwrap_or(base_seeds[i]),
            _ => other_seeds[i],
        };
        let mut records = every_page(&blocks, parent);
        // A shuffled order, cut into sections.
        let mut state = order | 1;
        for i in (1..records.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            records.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut sections = Vec::new();
        let mut rest = records.as_slice();
        for cut in &cuts {
            let at = usize::from(*cut) % (rest.len() + 1);
            sections.push(rest[..at].to_vec());
            rest = &rest[at..];
        }
        sections.push(rest.to_vec());
        let input = stream(&blocks, &sections, &device);
        let base = base_file(&base_seeds);

        let (delta, stats) = filter_in_reads_of(&input, &base, most).unwrap();

        let (want, want_device) = load(&input, memory_of(&blocks, |_, _| 0));
        let (got, got_device) = load(&delta, memory_of(&blocks, |block, i| match block {
            TARGET => base_seeds[i],
            _ => 0,
        }));
        prop_assert!(want == got, "the machines differ");
        prop_assert_eq!(want_device, got_device);
        let differing = (0..pages).filter(|&i| parent(TARGET, i) != base_seeds[i]).count();
        prop_assert_eq!(stats.pages, pages as u64);
        prop_assert_eq!(stats.kept, differing as u64);
        prop_assert_eq!(stats.bytes_in, input.len() as u64);
        prop_assert_eq!(stats.bytes_out, delta.len() as u64);
    }

    #[test]
    fn any_bytes_are_refused_or_filtered_never_a_panic(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let base = base_file(&[1, 0]);
        let _ = filter(&input, &base);
    }
}

#[test]
fn a_stream_without_every_page_of_the_block_is_refused() {
    let blocks = [(TARGET, 3)];
    let mut records = every_page(&blocks, |_, i| i as u8);
    records.remove(1);
    let input = stream(&blocks, &[records], b"");
    let err = filter(&input, &base_file(&[0, 0, 0])).unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Incomplete {
                pages: 3,
                present: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_base_of_another_size_is_refused() {
    let blocks = [(TARGET, 2)];
    let input = stream(&blocks, &[every_page(&blocks, |_, _| 1)], b"");
    let err = filter(&input, &base_file(&[1, 1, 1])).unwrap_err();
    assert!(err.to_string().contains("base of"), "{err}");
}

#[test]
fn compressed_pages_and_other_iterable_sections_are_refused() {
    let blocks = [(TARGET, 1)];
    let mut input = stream(&blocks, &[Vec::new()], b"");
    // The END section's first record becomes an XBZRLE page.
    let end = input.len() - 13;
    input.splice(end..end, 0x40u64.to_be_bytes());
    let err = filter(&input, &base_file(&[0])).unwrap_err();
    assert!(err.to_string().contains("page flags 0x40"), "{err}");

    let mut other = stream(&blocks, &[every_page(&blocks, |_, _| 0)], b"");
    let at = other.windows(4).position(|w| w == b"\x03ram").unwrap() + 1;
    other[at..at + 3].copy_from_slice(b"blk");
    let err = filter(&other, &base_file(&[0])).unwrap_err();
    assert!(err.to_string().contains("\"blk\""), "{err}");
}

#[test]
fn pages_the_base_holds_are_dropped_and_the_rest_kept() {
    let blocks = [(TARGET, 4)];
    let base = [0u8, 2, 3, 0];
    let parent = [0u8, 2, 5, 1];
    let input = stream(&blocks, &[every_page(&blocks, |_, i| parent[i])], b"dev");
    let (delta, stats) = filter(&input, &base_file(&base)).unwrap();
    assert_eq!((stats.pages, stats.kept), (4, 2));
    assert!(delta.len() < input.len() - PAGE);
    assert!(delta.ends_with(b"dev"));
}
