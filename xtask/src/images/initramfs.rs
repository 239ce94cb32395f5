//! The initramfs: a newc cpio archive with `/init` (the static
//! `airlock-init`), the mount points it needs and `/dev/console`.
//!
//! Written here rather than with `cpio(1)` so the bytes depend only on the
//! init binary: fixed owners (root), fixed mtimes (0), fixed inode numbers.

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Path inside the archive, without a leading `/`.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path inside the archive.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Content.
        data: Vec<u8>,
    },
    /// A character device node.
    CharDev {
        /// Path inside the archive.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const TRAILER: &str = "TRAILER!!!";

/// The entries of the Airlock initramfs around the init binary.
pub fn airlock_entries(init: Vec<u8>) -> Vec<Entry> {
    let dir = |path: &str| Entry::Dir {
        path: path.into(),
        mode: 0o755,
    };
    vec![
        dir("dev"),
        Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        },
        dir("proc"),
        dir("sys"),
        dir("sysroot"),
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: init,
        },
    ]
}

/// The newc ("070701") archive of `entries`, in the given order, ended by
/// the trailer. Owners are root, mtimes 0, inode numbers count from 1.
pub fn write_newc(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let ino = u32::try_from(index + 1).unwrap_or(u32::MAX);
        match entry {
            Entry::Dir { path, mode } => {
                push_entry(
                    &mut out,
                    &Header {
                        ino,
                        mode: S_IFDIR | mode,
                        nlink: 2,
                        ..Header::default()
                    },
                    path,
                    &[],
                );
            }
            Entry::File { path, mode, data } => {
                let header = Header {
                    ino,
                    mode: S_IFREG | mode,
                    nlink: 1,
                    ..Header::default()
                };
                push_entry(&mut out, &header, path, data);
            }
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => {
                let header = Header {
                    ino,
                    mode: S_IFCHR | mode,
                    nlink: 1,
                    rdev_major: *major,
                    rdev_minor: *minor,
                };
                push_entry(&mut out, &header, path, &[]);
            }
        }
    }
    push_entry(&mut out, &Header::default(), TRAILER, &[]);
    out
}

#[derive(Default)]
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

fn push_entry(out: &mut Vec<u8>, h: &Header, name: &str, data: &[u8]) {
    let name_size = name.len() + 1;
    // Fields: magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check.
    let fields = [
        h.ino,
        h.mode,
        0,
        0,
        h.nlink,
        0,
        u32::try_from(data.len()).unwrap_or(u32::MAX),
        0,
        0,
        h.rdev_major,
        h.rdev_minor,
        u32::try_from(name_size).unwrap_or(u32::MAX),
        0,
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        write_newc(&airlock_entries(b"#!fake init\n".to_vec()))
    }

    /// Regenerate with `UPDATE_GOLDEN=1 cargo test -p xtask initramfs`, after
    /// checking the new archive with `cpio -itv < FILE`.
    #[test]
    fn matches_the_golden_archive() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/images/testdata/initramfs-sample.cpio");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, sample()).unwrap();
        }
        let golden = std::fs::read(&path).unwrap();
        assert_eq!(sample(), golden);
    }

    #[test]
    fn every_header_is_aligned_and_archive_ends_with_trailer() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("070701").count(), 7);
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn same_init_same_bytes() {
        assert_eq!(sample(), sample());
    }

    #[test]
    fn the_system_cpio_lists_what_we_wrote() {
        if airlock_sys_util::which("cpio").is_none() {
            return;
        }
        let mut child = std::process::Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &sample()).unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        assert_eq!(listing, "dev\ndev/console\nproc\nsys\nsysroot\ninit\n");
    }
}
