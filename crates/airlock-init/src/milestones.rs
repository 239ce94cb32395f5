//! The one console line that reports how the boot went.

use airlock_protocol::abi::INIT_LOG_PREFIX as LOG_PREFIX;

/// Boot milestones, in milliseconds since the kernel started
/// (`CLOCK_BOOTTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Milestones {
    /// When init started: the kernel's own boot time.
    pub kernel_ms: u64,
    /// When the root disk was mounted and switched to.
    pub root_ms: u64,
    /// When the agent process was started.
    pub agent_ms: u64,
}

impl Milestones {
    /// The line init prints once the agent runs, e.g.
    /// `airlock-init: ready kernel_ms=812 root_ms=840 agent_ms=845`.
    /// Hosts parse it as `key=value` words; keys are never removed.
    pub fn ready_line(&self) -> String {
        format!(
            "{LOG_PREFIX} ready kernel_ms={} root_ms={} agent_ms={}",
            self.kernel_ms, self.root_ms, self.agent_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_lists_milestones_in_boot_order() {
        let m = Milestones {
            kernel_ms: 812,
            root_ms: 840,
            agent_ms: 845,
        };
        assert_eq!(
            m.ready_line(),
            "airlock-init: ready kernel_ms=812 root_ms=840 agent_ms=845"
        );
    }

    #[test]
    fn ready_line_is_one_line() {
        let m = Milestones {
            kernel_ms: u64::MAX,
            root_ms: 0,
            agent_ms: 1,
        };
        assert!(!m.ready_line().contains('\n'));
    }
}
