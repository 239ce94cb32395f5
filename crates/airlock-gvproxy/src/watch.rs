//! Waiting for files to appear in a directory, by inotify events.
#![allow(unsafe_code)]

use crate::GvproxyError;
use airlock_sys_util::{IoError, IoResultExt};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use tokio::io::unix::AsyncFd;

/// An inotify watch on a directory's new entries (created or moved in).
pub(crate) struct DirWatch(AsyncFd<InotifyFd>);

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl DirWatch {
    /// Starts watching `dir` (add the watch before the files can appear).
    pub(crate) fn new(dir: &Path) -> Result<Self, GvproxyError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .with_path("watch", dir)?;
        inotify
            .add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            .with_path("watch", dir)?;
        // SAFETY: the fd belongs to the `Inotify` moved into the AsyncFd,
        // which owns it: it stays open for the AsyncFd's whole life and is
        // closed only when the AsyncFd (and so the Inotify) is dropped.
        let fd = unsafe { AsyncFd::register(InotifyFd(inotify)) }
            .map_err(|e| IoError::new("watch", dir, e.into()))?;
        Ok(Self(fd))
    }

    /// Waits for at least one event, and drains what is queued.
    pub(crate) async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                Ok(Ok(_events)) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}
