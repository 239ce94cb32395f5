//! The flags `airlock run` and `airlock session` share besides the
//! sandbox's own (`airlock::spec::args`): what is shown on stderr and how
//! the one VM of the command starts.

use airlock::Config;
use clap::Args;

/// `-q/--quiet`, `--debug`, `--cold`.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct VmFlags {
    /// No progress, status, summary or saved-result lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the kernel and init log to stderr, and full error details.
    #[arg(long)]
    pub debug: bool,
    /// Boot the VM from scratch instead of restoring the memory template
    /// of its shape (VMs with a network always boot cold).
    #[arg(long)]
    pub cold: bool,
}

impl VmFlags {
    /// The orchestrator's configuration for a command that runs one VM:
    /// no overlay pool (creating its overlay on demand is cheaper than
    /// filling a pool that would be thrown away), templates unless
    /// `--cold`, the console echoed with `--debug`.
    pub fn config(self) -> Config {
        Config {
            debug_console: self.debug,
            overlay_pool_target: 0,
            restore_templates: !self.cold,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_turns_templates_off_and_debug_echoes_the_console() {
        let config = VmFlags {
            quiet: false,
            debug: true,
            cold: true,
        }
        .config();
        assert!(!config.restore_templates);
        assert!(config.debug_console);
        assert_eq!(config.overlay_pool_target, 0);
        assert!(VmFlags::default().config().restore_templates);
    }
}
