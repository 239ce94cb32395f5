//! Brings the loopback interface `lo` up (part of the `airlock-init` binary).
//!
//! The kernel creates `lo` down and gives it 127.0.0.1/8 only once it is
//! up. Its IP autoconfiguration (the `ip=` argument) would bring it up, but
//! that runs only for VMs with a network, and user code needs 127.0.0.1 in
//! every VM. There is no `ip` tool in the initramfs: init does it with the
//! two interface-flag ioctls on an `AF_INET` datagram socket.
#![allow(unsafe_code)] // SIOCGIFFLAGS / SIOCSIFFLAGS have no safe wrapper in nix.

use airlock_init::InitError;
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use std::os::fd::{AsRawFd, OwnedFd};

/// The loopback interface's name.
const LOOPBACK: &str = "lo";

/// Sets `IFF_UP` on `lo` (a no-op when it is already up); the kernel then
/// assigns 127.0.0.1/8 and the local routes.
pub(crate) fn bring_up() -> Result<(), InitError> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|source| sys("open an AF_INET socket to configure lo", source))?;
    let flags = flags(&sock)?;
    let up = flags | short_flag(libc::IFF_UP);
    if up != flags {
        set_flags(&sock, up)?;
    }
    Ok(())
}

/// `lo`'s current interface flags (`SIOCGIFFLAGS`).
fn flags(sock: &OwnedFd) -> Result<libc::c_short, InitError> {
    let mut req = request(0);
    // SAFETY: `sock` is an open socket, `req` is a valid, initialised
    // `ifreq` that outlives the call, and SIOCGIFFLAGS writes only within it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(rc).map_err(|source| sys("read the flags of lo (SIOCGIFFLAGS)", source))?;
    // SAFETY: every member of the union is plain data, and SIOCGIFFLAGS
    // succeeded, so the kernel stored the flags in `ifru_flags`.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

/// Sets `lo`'s interface flags (`SIOCSIFFLAGS`).
fn set_flags(sock: &OwnedFd, flags: libc::c_short) -> Result<(), InitError> {
    let req = request(flags);
    // SAFETY: `sock` is an open socket and `req` is a valid, initialised
    // `ifreq` that outlives the call; SIOCSIFFLAGS only reads it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(rc)
        .map(drop)
        .map_err(|source| sys("bring lo up (SIOCSIFFLAGS)", source))
}

/// An `ifreq` naming `lo` and carrying `flags`.
fn request(flags: libc::c_short) -> libc::ifreq {
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, src) in name.iter_mut().zip(LOOPBACK.bytes()) {
        *dst = src as libc::c_char;
    }
    libc::ifreq {
        ifr_name: name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: flags },
    }
}

/// An `IFF_*` constant as the `short` that `ifr_flags` holds (all the
/// flags `SIOCSIFFLAGS` takes fit in 16 bits).
fn short_flag(flag: libc::c_int) -> libc::c_short {
    libc::c_short::try_from(flag).unwrap_or(0)
}

fn sys(what: &str, source: nix::Error) -> InitError {
    InitError::Sys {
        what: what.into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_lo_nul_terminated() {
        let req = request(0);
        let name: Vec<u8> = req.ifr_name.iter().map(|&c| c as u8).collect();
        assert_eq!(&name[..3], b"lo\0");
        assert!(name[3..].iter().all(|&b| b == 0));
    }

    #[test]
    fn flags_of_the_hosts_lo_say_loopback() {
        // Reading flags needs no privilege; `lo` exists in every namespace.
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let flags = flags(&sock).unwrap();
        assert_ne!(flags & short_flag(libc::IFF_LOOPBACK), 0, "{flags:#x}");
    }
}
