//! Finding processes by their command line, from `/proc`: how tests, the
//! fault soak and diagnostics look for the QEMU or gvproxy of one VM; and
//! what one process costs the host (CPU time from `/proc/PID/stat`,
//! memory from `/proc/PID/smaps_rollup`), for the idle-cost tests and
//! benchmarks.

/// The pids of live processes whose command line (arguments joined by
/// spaces) satisfies `matches`. A zombie's command line is empty, so it
/// only matches a predicate that accepts the empty string.
pub fn pids_whose_cmdline(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let text = String::from_utf8_lossy(&raw).replace('\0', " ");
                !text.is_empty() && matches(text.trim_end())
            })
        })
        .collect()
}

/// The CPU time (user + system, in clock ticks: see
/// [`clock_ticks_per_second`]) of process `pid` so far, or `None` when it
/// is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime + stime` of a `/proc/PID/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last
/// `)`: state is field 3, utime 14 and stime 15.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// The kernel's clock ticks per second (`_SC_CLK_TCK`, 100 when unknown).
pub fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(100)
}

/// A process's memory from `/proc/PID/smaps_rollup`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryRollup {
    /// Resident set.
    pub rss_kib: u64,
    /// Proportional set: shared pages divided among their users.
    pub pss_kib: u64,
    /// Private pages not written since read (e.g. read from a file).
    pub private_clean_kib: u64,
    /// Private pages written (anonymous memory, copy-on-write copies),
    /// and page-cache pages that are dirty and mapped by this process
    /// alone (a file just written counts here until written back).
    pub private_dirty_kib: u64,
    /// Anonymous pages: heap, stacks, and copy-on-write copies of pages of
    /// privately mapped files (what the process really wrote).
    pub anonymous_kib: u64,
}

impl MemoryRollup {
    /// `Private_Clean + Private_Dirty`: what this process alone holds.
    pub fn private_kib(&self) -> u64 {
        self.private_clean_kib + self.private_dirty_kib
    }
}

/// The memory rollup of process `pid`, or `None` when it is gone.
pub fn memory_rollup(pid: u32) -> Option<MemoryRollup> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .map(|text| parse_smaps_rollup(&text))
}

/// Parses the `Name:   N kB` lines of `smaps_rollup` that
/// [`MemoryRollup`] keeps; others are ignored, missing ones are 0.
pub fn parse_smaps_rollup(text: &str) -> MemoryRollup {
    let mut rollup = MemoryRollup::default();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let Some(kib) = value
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        match name.trim() {
            "Rss" => rollup.rss_kib = kib,
            "Pss" => rollup.pss_kib = kib,
            "Private_Clean" => rollup.private_clean_kib = kib,
            "Private_Dirty" => rollup.private_dirty_kib = kib,
            "Anonymous" => rollup.anonymous_kib = kib,
            _ => {}
        }
    }
    rollup
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_count_fields_after_the_last_parenthesis() {
        let stat = "42 (qemu (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("42 (short) S 1"), None);
        assert_eq!(parse_stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn this_process_has_cpu_ticks_and_a_memory_rollup() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        let rollup = memory_rollup(me).expect("smaps_rollup of this process");
        assert!(rollup.rss_kib > 0 && rollup.private_kib() > 0, "{rollup:?}");
        assert!(clock_ticks_per_second() > 0);
        assert_eq!(cpu_ticks(u32::MAX), None);
    }

    #[test]
    fn smaps_rollup_keeps_rss_pss_and_private_lines() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:  158000 kB\n\
                    Pss:  120000 kB\nPss_Anon:  1 kB\nShared_Clean: 9 kB\n\
                    Private_Clean:  4000 kB\nPrivate_Dirty:  134000 kB\nbogus\n\
                    Anonymous:  90000 kB\n";
        let rollup = parse_smaps_rollup(text);
        assert_eq!(
            rollup,
            MemoryRollup {
                rss_kib: 158_000,
                pss_kib: 120_000,
                private_clean_kib: 4000,
                private_dirty_kib: 134_000,
                anonymous_kib: 90_000,
            }
        );
        assert_eq!(rollup.private_kib(), 138_000);
    }

    proptest::proptest! {
        #[test]
        fn the_proc_parsers_never_panic(text in ".{0,300}") {
            let _ = parse_stat_cpu_ticks(&text);
            let _ = parse_smaps_rollup(&text);
        }
    }

    #[test]
    fn this_process_is_found_by_its_own_command_line() {
        let me = std::process::id();
        let exe = std::env::args().next().expect("argv[0]");
        assert!(pids_whose_cmdline(|cmd| cmd.starts_with(&exe)).contains(&me));
        assert!(!pids_whose_cmdline(|cmd| cmd.contains("no-such-program-\u{1}")).contains(&me));
    }
}
