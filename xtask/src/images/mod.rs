//! `cargo xtask images`: guest kernel, initramfs and root disks (built in a later change).

use anyhow::Result;

/// Options of `cargo xtask images`.
#[derive(clap::Args, Debug, Default)]
pub struct ImagesArgs {}

/// Builds the images.
pub fn run(_args: &ImagesArgs) -> Result<()> {
    anyhow::bail!("images: not built yet")
}
