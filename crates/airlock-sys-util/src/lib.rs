//! System helpers shared by every Airlock crate, in the way rust-vmm's crates
//! share `vmm-sys-util`: small, dependency-light pieces that would otherwise be
//! written once per crate. One module per concern:
//!
//! - [`dirs`]: where Airlock keeps its files (cache, guest images, probe
//!   cache, fetched binaries, per-VM run dirs), resolved in one documented
//!   order from the environment. `cargo xtask` and the `airlock` binary both
//!   call it, so images are built where they are looked for.
//! - [`id`]: the identifier check `[A-Za-z0-9_-]{1,128}` and the [`Id`]
//!   newtype that carries a checked one.
//! - [`exit`]: how a child ended, as a value ([`ChildExit`]), and its one
//!   readable form.
//! - [`tail`]: the end of a program's output or log, for error messages.
//! - [`process_group`]: signalling a child's whole process group.
//! - [`proc_scan`]: finding processes by their command line.
//! - [`executable`]: `PATH` candidates and the first executable among them.
//! - [`backoff`]: exponential back-off with jitter, and (feature `tokio`)
//!   a retry loop bounded by a deadline.
//! - [`child`] (feature `tokio`): a short helper program run to its end
//!   under a deadline.
//! - [`image_manifest`]: the format of the guest images' `manifest.json`,
//!   written by `cargo xtask images` and read by the orchestrator.
//! - [`io_error`]: [`IoError`], the one "could not {action} {path}" error
//!   every crate's error enum wraps, and [`IoResultExt::with_path`].
//! - [`digest`]: [`sha256_hex`] and [`sha256_file_hex`], the one spelling
//!   of a content hash.
//!
//! It does not spawn VMs, talk to QEMU or gvproxy, or hold any policy of its
//! own: it answers "where" and "how", never "whether". Its errors are one
//! enum, [`SysError`]; callers map them into their own. [`IoError`] is not
//! one of them: it is the piece other crates' errors share.
//!
//! Layer: the bottom of the workspace. It depends on no other Airlock crate;
//! every other crate (the guest agent included) may depend on it. Without
//! the `tokio` feature it needs only std, nix, serde, thiserror, sha2 and hex, which is what
//! the statically built guest agent takes.
//!
//! ```
//! use airlock_sys_util::dirs::{AirlockDirs, EnvSnapshot};
//! use airlock_sys_util::{ChildExit, Id};
//!
//! let env = EnvSnapshot { home: Some("/home/u".into()), ..EnvSnapshot::default() };
//! let dirs = AirlockDirs::resolve(&env, 1000).unwrap();
//! assert_eq!(dirs.images, std::path::Path::new("/home/u/.cache/airlock/images"));
//!
//! let vm = Id::new("vm-1").unwrap();
//! assert_eq!(vm.as_str(), "vm-1");
//! assert!(Id::new("../etc").is_err());
//!
//! assert_eq!(ChildExit::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
//! ```

pub mod backoff;
#[cfg(feature = "tokio")]
pub mod child;
pub mod digest;
pub mod dirs;
mod error;
pub mod executable;
pub mod exit;
pub mod id;
pub mod image_manifest;
pub mod io_error;
pub mod private_file;
pub mod privileges;
pub mod proc_scan;
pub mod process_group;
pub mod tail;

#[cfg(feature = "tokio")]
pub use backoff::retry_until;
pub use backoff::Backoff;
#[cfg(feature = "tokio")]
pub use child::{output_with_deadline, ChildOutput};
pub use digest::{sha256_file_hex, sha256_hex, Sha256Hex};
pub use dirs::AirlockDirs;
pub use error::SysError;
pub use executable::{find_executable, is_executable, path_candidates, which};
pub use exit::ChildExit;
pub use id::{check_id, is_valid_id, Id, MAX_ID_LEN};
pub use io_error::{IoError, IoResultExt};
pub use private_file::{unsafe_to_trust, write_private_atomic};
pub use process_group::{signal_group, GroupSignal};
pub use tail::{file_tail, tail_text, TailBuffer};
