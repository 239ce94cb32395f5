//! A fork's children, and a resumed session, over their template's
//! memory file.
//!
//! A session's RAM is a private mapping of its template's memory file (a
//! template clone) or anonymous (a resumed session), so the parent's save
//! holds all of it, and a child loading that stream copies every page into
//! memory of its own. But most of a session's RAM is still what its
//! template held: so the saved stream is filtered against the template's
//! memory file as QEMU writes it (`save.rs`, [`crate::pause::StateSink`];
//! [`airlock_qemu::delta_against_base`]: every page the file already
//! holds at its offset is dropped), and each child maps that file
//! privately, as a template clone does, and loads only the pages that
//! differ. The children then share, copy on write, every page of the
//! template none of them changed, and each reads a fraction of the stream.
//!
//! A resumed session does the same with its saved stream
//! ([`delta_of_saved`]): a pause keeps the whole stream (it must outlive
//! its template), and the resume filters it against the template's memory
//! file of the day. The filter compares content, so any file is a correct
//! base: pages it does not hold are kept.
//!
//! Why not one shared file of the parent's whole RAM (a *loader* QEMU
//! loading the stream into a shared memory file the children then map):
//! measured on QEMU 7.2, loading into a shared mapping allocates every
//! page of the file (QEMU reads each zero page to compare it, and a read
//! fault on a shared file allocates), which took 380 to 650 ms for a
//! 512 MiB VM, more than the four children's own loads
//! (`docs/persistence.md`).

use crate::error::BootError;
use crate::template::{Found, TemplateShape, Templates};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// A template's memory file that a stream was filtered against, and the
/// file it was when it was looked up: the VM that maps it is checked to
/// map that very file ([`BaseMemory::check_mapped_by`]), since a template
/// rebuilt under the same key meanwhile would hold other pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseMemory {
    /// Its path.
    pub path: PathBuf,
    /// Its device (`st_dev`).
    pub dev: u64,
    /// Its inode.
    pub ino: u64,
}

impl BaseMemory {
    /// Checks that QEMU `pid` maps this very file (a line of its
    /// `/proc/PID/maps` with this device and inode).
    ///
    /// # Errors
    /// [`BootError::TemplateMismatch`] when it maps none (the template was
    /// replaced between the lookup and QEMU's start), [`BootError::Io`]
    /// when the maps cannot be read.
    pub(crate) async fn check_mapped_by(&self, pid: u32) -> Result<(), BootError> {
        let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
        let maps = tokio::fs::read_to_string(&maps_path)
            .await
            .map_err(|e| BootError::io("read", &maps_path, e))?;
        if maps_this_file(&maps, self.dev, self.ino) {
            return Ok(());
        }
        Err(BootError::TemplateMismatch {
            reason: format!(
                "the template memory file {} changed after the saved state was filtered against it (rebuilt meanwhile); try again",
                self.path.display()
            ),
        })
    }
}

/// Whether a `/proc/PID/maps` text has a mapping of the file of device
/// `dev` and inode `ino` (pure). Its fields: range, perms, offset,
/// `major:minor` in hex, inode, path.
fn maps_this_file(maps: &str, dev: u64, ino: u64) -> bool {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    maps.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(3);
        let (Some(device), Some(inode)) = (fields.next(), fields.next()) else {
            return false;
        };
        let Some((maj, min)) = device.split_once(':') else {
            return false;
        };
        u64::from_str_radix(maj, 16) == Ok(major)
            && u64::from_str_radix(min, 16) == Ok(minor)
            && inode.parse::<u64>() == Ok(ino)
    })
}

/// The filtered stream the children load, in the fork's dir.
pub const DELTA_FILE: &str = "state.delta";

/// The memory file of the current template of `shape` (over the package
/// layer `layer`): what a fork's children (or a resumed session) map and
/// the stream is filtered against. `None` (logged) when there is none:
/// the whole stream is then loaded.
pub(crate) async fn template_memory(
    templates: &Templates,
    shape: TemplateShape,
    layer: Option<&str>,
    session_id: &str,
) -> Option<BaseMemory> {
    match templates.find_over(shape, layer).await {
        Ok(Found::Ready(template)) => {
            let path = template.memory_file();
            match tokio::fs::metadata(&path).await {
                Ok(meta) => Some(BaseMemory {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    path,
                }),
                Err(e) => {
                    tracing::warn!(session_id, file = %path.display(), error = %e, "the template's memory file is gone: the whole state is loaded");
                    None
                }
            }
        }
        Ok(Found::Build { .. }) => {
            tracing::debug!(
                session_id,
                "no template to fork over: the children load the whole state"
            );
            None
        }
        Err(e) => {
            tracing::warn!(session_id, error = %e, "no template to fork over: the children load the whole state");
            None
        }
    }
}

/// Filters the saved whole stream `state` against the memory file `base`
/// into `delta` (on a blocking thread); `base` again when it did, for the
/// VM to map. `None` (logged) when the filter refuses the stream or a file
/// cannot be read: then the whole stream is loaded, as before.
pub(crate) async fn delta_of_saved(
    state: PathBuf,
    base: BaseMemory,
    delta: PathBuf,
    session_id: &str,
) -> Option<BaseMemory> {
    let memory = base.path.clone();
    let filtered = crate::task::blocking("filter a saved state", move || {
        let open = |path: &PathBuf| {
            std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))
        };
        let (from, memory) = (open(&state)?, open(&memory)?);
        let to = std::fs::File::create(&delta)
            .map_err(|e| format!("create {}: {e}", delta.display()))?;
        airlock_qemu::delta_against_base(from, to, airlock_qemu::MEMORY_BACKEND_ID, &memory)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|filtered| filtered);
    match filtered {
        Ok(stats) => {
            tracing::debug!(
                session_id,
                kept = stats.kept,
                pages = stats.pages,
                "the saved state filtered against its template"
            );
            Some(base)
        }
        Err(error) => {
            tracing::warn!(session_id, %error, "the saved state is loaded whole");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_is_found_by_its_device_and_inode() {
        let maps = "7f00-7f10 r--p 00000000 fe:01 1234 /cache/templates/t/memory\n\
                    7f10-7f20 rw-p 00000000 00:00 0 \n";
        let dev = nix::sys::stat::makedev(0xfe, 0x01);
        assert!(maps_this_file(maps, dev, 1234));
        assert!(!maps_this_file(maps, dev, 1235), "another inode");
        assert!(!maps_this_file(
            maps,
            nix::sys::stat::makedev(0xfe, 0x02),
            1234
        ));
        assert!(!maps_this_file("garbage\n\n7f r--p 0 x 1", dev, 1234));
    }

    #[tokio::test]
    async fn this_process_maps_its_own_executable() {
        let exe = std::env::current_exe().unwrap();
        let meta = std::fs::metadata(&exe).unwrap();
        let base = BaseMemory {
            path: exe,
            dev: meta.dev(),
            ino: meta.ino(),
        };
        base.check_mapped_by(std::process::id()).await.unwrap();
        let other = BaseMemory {
            ino: meta.ino() + 1,
            ..base
        };
        let e = other.check_mapped_by(std::process::id()).await.unwrap_err();
        assert!(matches!(e, BootError::TemplateMismatch { .. }), "{e}");
    }
}
