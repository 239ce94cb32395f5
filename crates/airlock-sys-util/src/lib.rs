//! System helpers shared by every Airlock crate, in the way rust-vmm's crates
//! share `vmm-sys-util`: small, dependency-light pieces that would otherwise be
//! written once per crate.
//!
//! - [`dirs`]: where Airlock keeps its files (cache, guest images, probe
//!   cache, fetched binaries, per-VM run dirs), resolved in one documented
//!   order from the environment. `cargo xtask` and the `airlock` binary both
//!   call it, so images are built where they are looked for.
//!
//! It does not spawn VMs, talk to QEMU or hold any policy of its own: it
//! answers "where" and "how", never "whether".
//!
//! Layer: the bottom of the workspace. It depends on no other Airlock crate;
//! every other crate (the guest agent included) may depend on it.
//!
//! ```
//! use airlock_sys_util::dirs::{AirlockDirs, EnvSnapshot};
//!
//! let env = EnvSnapshot { home: Some("/home/u".into()), ..EnvSnapshot::default() };
//! let dirs = AirlockDirs::resolve(&env, 1000).unwrap();
//! assert_eq!(dirs.images, std::path::Path::new("/home/u/.cache/airlock/images"));
//! ```

pub mod dirs;

pub use dirs::{AirlockDirs, DirsError};
