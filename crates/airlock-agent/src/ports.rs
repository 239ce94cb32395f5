//! The guest transport: virtio-serial ports found by name.
//!
//! The guest has no udev, so there are no `/dev/virtio-ports/NAME` links:
//! the agent reads `/sys/class/virtio-ports/*/name` (polling briefly, a name
//! can be empty right after the device appears) and opens the matching
//! `/dev/vportNpM`.
//!
//! While no host is connected to a port, reads return 0 (end of file). In
//! port mode that is not the end: [`EofRetry`] waits a little and reads
//! again, so a host that connects late or reconnects is served. Writes block
//! until a host is connected.

use crate::AgentError;
use airlock_sys_util::IoError;
use std::future::Future as _;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};

/// Where the kernel lists virtio-serial ports.
pub const SYS_VIRTIO_PORTS: &str = "/sys/class/virtio-ports";
/// Where their device nodes are.
pub const DEV_DIR: &str = "/dev";
/// How long to look for a port by name.
pub const PORT_WAIT: Duration = Duration::from_secs(5);
/// Between two looks.
const PORT_POLL: Duration = Duration::from_millis(20);
/// Pause before reading again after an end of file (no host connected).
pub const EOF_RETRY: Duration = Duration::from_millis(20);

/// Picks the device whose name matches among `(device, name)` pairs (the
/// pure part of the lookup). Names are compared without surrounding
/// whitespace (sysfs ends them with a newline).
pub fn match_port<'a>(ports: &'a [(String, String)], wanted: &str) -> Option<&'a str> {
    ports
        .iter()
        .find(|(_, name)| name.trim() == wanted)
        .map(|(device, _)| device.as_str())
}

/// Reads `(device, name)` pairs from a sysfs directory like
/// `/sys/class/virtio-ports`. Unreadable entries are skipped.
pub fn read_ports(sys_dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(sys_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
            Some((entry.file_name().to_string_lossy().into_owned(), name))
        })
        .collect()
}

/// Finds the device node of the port named `wanted`, polling until
/// `timeout`. Blocking (it sleeps between looks): call it at start-up.
///
/// # Errors
/// [`AgentError::PortNotFound`] when no port has that name in time.
pub fn find_port(
    sys_dir: &Path,
    dev_dir: &Path,
    wanted: &str,
    timeout: Duration,
) -> Result<PathBuf, AgentError> {
    let started = Instant::now();
    loop {
        if let Some(device) = match_port(&read_ports(sys_dir), wanted) {
            return Ok(dev_dir.join(device));
        }
        if started.elapsed() >= timeout {
            return Err(AgentError::PortNotFound {
                name: wanted.to_owned(),
                sys_dir: sys_dir.to_owned(),
                waited: timeout,
            });
        }
        std::thread::sleep(PORT_POLL);
    }
}

/// Opens a port device for reading (`write == false`) or writing.
///
/// # Errors
/// [`AgentError::Io`] naming the device.
pub async fn open_port(device: &Path, write: bool) -> Result<tokio::fs::File, AgentError> {
    tokio::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open(device)
        .await
        .map_err(|source| AgentError::from(IoError::new("open virtio-serial port", device, source)))
}

/// How long the host end of the command port may stay closed, once a host
/// has been there, before the agent takes it as gone for good and ends (and
/// init powers the VM off): the guest's own layer of "nothing outlives its
/// owner". Long enough for a restore from a template, where the new host
/// connects just after the VM resumes.
pub const HOST_GONE_GRACE: Duration = Duration::from_secs(10);

/// A reader for which end of file means "nobody there (yet)": it waits
/// [`EOF_RETRY`] and reads again. Once data has come, an end of file that
/// lasts past the grace given to [`EofRetry::with_host_gone_after`] is an
/// error of kind `ConnectionAborted`: the host is gone.
#[derive(Debug)]
pub struct EofRetry<R> {
    inner: R,
    pause: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `None`: wait forever.
    host_gone_after: Option<Duration>,
    seen_data: bool,
    eof_since: Option<tokio::time::Instant>,
}

impl<R> EofRetry<R> {
    /// Wraps `inner`, pausing `pause` after each end of file, forever.
    pub fn new(inner: R, pause: Duration) -> Self {
        Self {
            inner,
            pause,
            sleep: None,
            host_gone_after: None,
            seen_data: false,
            eof_since: None,
        }
    }

    /// Ends with a `ConnectionAborted` error when, after some data came,
    /// reads keep finding the end of file for `grace`.
    pub fn with_host_gone_after(mut self, grace: Duration) -> Self {
        self.host_gone_after = Some(grace);
        self
    }
}

/// Whether `err` is [`EofRetry`]'s "the host is gone".
pub fn is_host_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::ConnectionAborted && err.to_string().starts_with(HOST_GONE_MESSAGE)
}

const HOST_GONE_MESSAGE: &str = "the host end of the command port stayed closed";

impl<R: AsyncRead + Unpin> AsyncRead for EofRetry<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                    if let (true, Some(grace)) = (this.seen_data, this.host_gone_after) {
                        let since = *this.eof_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= grace {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                format!("{HOST_GONE_MESSAGE} for {grace:?}"),
                            )));
                        }
                    }
                    this.sleep = Some(Box::pin(tokio::time::sleep(this.pause)));
                }
                Poll::Ready(Ok(())) => {
                    if buf.filled().len() > before {
                        this.seen_data = true;
                        this.eof_since = None;
                    }
                    return Poll::Ready(Ok(()));
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn port_is_matched_by_trimmed_name() {
        let ports = vec![
            ("vport0p1".to_owned(), "airlock.event\n".to_owned()),
            ("vport0p2".to_owned(), "\n".to_owned()),
            ("vport0p3".to_owned(), "airlock.cmd\n".to_owned()),
        ];
        assert_eq!(match_port(&ports, "airlock.cmd"), Some("vport0p3"));
        assert_eq!(match_port(&ports, "airlock.event"), Some("vport0p1"));
        assert_eq!(match_port(&ports, "other"), None);
        assert_eq!(match_port(&ports, ""), Some("vport0p2"));
    }

    #[test]
    fn find_port_reads_sysfs_and_waits_for_a_late_name() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir(sys.path().join("vport0p1")).unwrap();
        std::fs::write(sys.path().join("vport0p1/name"), "").unwrap();
        let path = sys.path().join("vport0p1/name");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(path, "airlock.cmd\n").unwrap();
        });
        let found = find_port(
            sys.path(),
            Path::new("/dev"),
            "airlock.cmd",
            Duration::from_secs(5),
        );
        writer.join().unwrap();
        assert_eq!(found.unwrap(), Path::new("/dev/vport0p1"));
        let missing = find_port(
            sys.path(),
            Path::new("/dev"),
            "nope",
            Duration::from_millis(50),
        );
        assert!(matches!(missing, Err(AgentError::PortNotFound { .. })));
    }

    /// A reader that reports end of file a few times, then has data.
    struct Flaky {
        eofs_left: usize,
        data: &'static [u8],
    }

    impl AsyncRead for Flaky {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.eofs_left > 0 {
                self.eofs_left -= 1;
            } else {
                let n = self.data.len().min(buf.remaining());
                buf.put_slice(&self.data[..n]);
                self.data = &self.data[n..];
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_host_that_stays_gone_after_data_ends_the_reader() {
        let mut reader = EofRetry::new(
            Flaky {
                eofs_left: 0,
                data: b"hi",
            },
            Duration::from_millis(5),
        )
        .with_host_gone_after(Duration::from_millis(60));
        let mut buf = [0u8; 16];
        assert_eq!(reader.read(&mut buf).await.unwrap(), 2);
        // The data is used up: end of file from now on.
        let started = Instant::now();
        let err = reader.read(&mut buf).await.unwrap_err();
        assert!(is_host_gone(&err), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    #[tokio::test]
    async fn end_of_file_before_any_data_is_waited_out_past_the_grace() {
        let mut reader = EofRetry::new(
            Flaky {
                eofs_left: 20,
                data: b"late",
            },
            Duration::from_millis(5),
        )
        .with_host_gone_after(Duration::from_millis(20));
        let mut buf = [0u8; 16];
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"late", "no host yet is not a host gone");
    }

    #[tokio::test]
    async fn end_of_file_is_waited_out() {
        let mut reader = EofRetry::new(
            Flaky {
                eofs_left: 3,
                data: b"hello",
            },
            Duration::from_millis(5),
        );
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert!(started.elapsed() >= Duration::from_millis(15));
    }
}
