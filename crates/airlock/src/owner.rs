//! Who owns a VM's work dir, written into it (`docs/architecture.md`,
//! "Nothing outlives its owner"): the owning Airlock process and the
//! processes it started for the VM, each as a pid *and* its start time, so
//! that a sweep can tell a live owner from a dead one even when the pid has
//! been reused since.
//!
//! The record is a small text file, one fact a line:
//!
//! ```text
//! airlock-owner 1
//! owner 4242 1234567
//! tenant default
//! process qemu 4250 1234570
//! process gvproxy 4245 1234568
//! ```
//!
//! `owner` and `process` lines hold a pid and its start time in clock ticks
//! since boot (field 22 of `/proc/PID/stat`). Processes are appended as
//! they start. Parsing and the liveness decision are pure; only
//! [`ProcessStamp::of`] and [`ProcessStamp::liveness`] read `/proc`, and
//! [`OwnerFile::read`] the record.

use std::fmt::Write as _;

/// First line of every record: the format and its version.
const MAGIC: &str = "airlock-owner 1";

/// A process, told apart from any later one with the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessStamp {
    /// Its pid.
    pub pid: u32,
    /// When it started, in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

/// What became of a recorded process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs: same pid, same start time, not a zombie.
    Alive,
    /// No process has its pid, or only its zombie is left.
    Dead,
    /// Its pid belongs to another process now (another start time): the
    /// recorded one is dead.
    Reused,
}

impl Liveness {
    /// Whether the recorded process still runs.
    pub fn is_alive(self) -> bool {
        self == Self::Alive
    }
}

/// The fields of `/proc/PID/stat` a stamp needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 22: start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat(text: &str) -> Option<StatFields> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ")": field 3 (state) first, so field 22 is the 20th.
    let state = fields.next()?.chars().next()?;
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(StatFields { state, start_ticks })
}

impl ProcessStamp {
    /// The stamp of the running process `pid`; `None` when it is gone.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields = parse_stat(&stat)?;
        Some(Self {
            pid,
            start_ticks: fields.start_ticks,
        })
    }

    /// The stamp of this process.
    pub fn current() -> Option<Self> {
        Self::of(std::process::id())
    }

    /// What `/proc/PID/stat` (its text, or `None` when there is no such
    /// process) says about this stamp's process. Pure.
    pub fn liveness_from(&self, stat: Option<&str>) -> Liveness {
        match stat.and_then(parse_stat) {
            None => Liveness::Dead,
            Some(f) if f.start_ticks != self.start_ticks => Liveness::Reused,
            // A zombie has ended; only its parent's wait is missing.
            Some(f) if matches!(f.state, 'Z' | 'X' | 'x') => Liveness::Dead,
            Some(_) => Liveness::Alive,
        }
    }

    /// Whether this stamp's process still runs, from `/proc`.
    pub fn liveness(&self) -> Liveness {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok();
        self.liveness_from(stat.as_deref())
    }
}

/// A process started for a VM: what it is and which one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedProcess {
    /// What it is: `qemu`, `gvproxy` (one word).
    pub role: String,
    /// Which process.
    pub stamp: ProcessStamp,
}

/// The owner record of a work dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRecord {
    /// The Airlock process that made the work dir.
    pub owner: ProcessStamp,
    /// The tenant of the VM's limits group (`airlock/<tenant>/<vm id>`,
    /// the vm id being the work dir's name).
    pub tenant: String,
    /// The processes started for the VM, in order.
    pub processes: Vec<OwnedProcess>,
}

impl OwnerRecord {
    /// The record of a fresh work dir: `owner` and `tenant`, no process yet.
    pub fn new(owner: ProcessStamp, tenant: &str) -> Self {
        Self {
            owner,
            tenant: tenant.to_owned(),
            processes: Vec::new(),
        }
    }

    /// The record as the file's text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{MAGIC}\nowner {} {}\ntenant {}\n",
            self.owner.pid, self.owner.start_ticks, self.tenant
        );
        for p in &self.processes {
            text.push_str(&process_line(&p.role, p.stamp));
        }
        text
    }

    /// Parses a record; `None` when it is not one (another format, a
    /// missing owner or tenant, a bad line). A truncated last line (a
    /// crash mid-append) is ignored.
    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.split_inclusive('\n');
        if lines.next()?.trim_end() != MAGIC {
            return None;
        }
        let (mut owner, mut tenant, mut processes) = (None, None, Vec::new());
        for line in lines {
            let Some(line) = line.strip_suffix('\n') else {
                break; // the unfinished append of a crashed writer
            };
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["owner", pid, start] => owner = Some(stamp(pid, start)?),
                ["tenant", name] if airlock_sys_util::is_valid_id(name) => {
                    tenant = Some((*name).to_owned());
                }
                ["process", role, pid, start] if is_role(role) => processes.push(OwnedProcess {
                    role: (*role).to_owned(),
                    stamp: stamp(pid, start)?,
                }),
                _ => return None,
            }
        }
        Some(Self {
            owner: owner?,
            tenant: tenant?,
            processes,
        })
    }
}

/// What a work dir's `owner` file holds, as far as this version can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerFile {
    /// There is no owner file.
    Missing,
    /// A record this version reads.
    Record(OwnerRecord),
    /// A file that exists but cannot be read, or is no record this version
    /// knows (another format, a bad line, half-written): who owns the dir
    /// is unknown.
    Unrecognised {
        /// Why it could not be used.
        reason: String,
    },
}

impl OwnerFile {
    /// Reads the owner file at `path` (blocking). A file this process's
    /// user did not write (or a link) is not trusted: the work dir may
    /// belong to a jailed QEMU, which could put a record there naming
    /// host processes for the sweep to kill.
    pub fn read(path: &std::path::Path) -> Self {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path);
        let read = opened.and_then(|mut file| {
            let uid = file.metadata()?.uid();
            let me = nix::unistd::geteuid().as_raw();
            if uid != me {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("owned by uid {uid}, not by this process's user {me}"),
                ));
            }
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            Ok(text)
        });
        Self::from_read(read)
    }

    /// What the result of reading an owner file says. Pure.
    pub fn from_read(read: std::io::Result<String>) -> Self {
        match read {
            Ok(text) => OwnerRecord::parse(&text).map_or_else(
                || Self::Unrecognised {
                    reason: "not an owner record this version reads".to_owned(),
                },
                Self::Record,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::Missing,
            Err(e) => Self::Unrecognised {
                reason: format!("unreadable: {e}"),
            },
        }
    }

    /// The record, when there is one.
    pub fn record(&self) -> Option<&OwnerRecord> {
        match self {
            Self::Record(record) => Some(record),
            Self::Missing | Self::Unrecognised { .. } => None,
        }
    }
}

/// The line that records process `stamp` as `role` (appended to a record).
pub fn process_line(role: &str, stamp: ProcessStamp) -> String {
    let mut line = String::new();
    let _ = writeln!(line, "process {role} {} {}", stamp.pid, stamp.start_ticks);
    line
}

fn is_role(role: &str) -> bool {
    !role.is_empty() && role.bytes().all(|b| b.is_ascii_lowercase())
}

fn stamp(pid: &str, start: &str) -> Option<ProcessStamp> {
    Some(ProcessStamp {
        pid: pid.parse().ok().filter(|pid| *pid > 1)?,
        start_ticks: start.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_file_of_another_user_or_a_link_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, record().render()).unwrap();
        assert!(OwnerFile::read(&real).record().is_some());
        let link = dir.path().join("owner");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            OwnerFile::read(&link),
            OwnerFile::Unrecognised { .. }
        ));
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::lchown(&real, Some(4242), Some(4242)).unwrap();
            let OwnerFile::Unrecognised { reason } = OwnerFile::read(&real) else {
                panic!("a record written by uid 4242 was trusted");
            };
            assert!(reason.contains("uid 4242"), "{reason}");
        }
    }
    use proptest::prelude::*;

    fn stat_line(comm: &str, state: char, start: u64) -> String {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime priority nice threads
        // itrealvalue starttime vsize ...
        format!("42 ({comm}) {state} 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 10")
    }

    fn record() -> OwnerRecord {
        let mut r = OwnerRecord::new(
            ProcessStamp {
                pid: 4242,
                start_ticks: 1_234_567,
            },
            "default",
        );
        r.processes.push(OwnedProcess {
            role: "qemu".into(),
            stamp: ProcessStamp {
                pid: 4250,
                start_ticks: 1_234_570,
            },
        });
        r
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record();
        let text = r.render();
        assert_eq!(
            text,
            "airlock-owner 1\nowner 4242 1234567\ntenant default\nprocess qemu 4250 1234570\n"
        );
        assert_eq!(OwnerRecord::parse(&text), Some(r));
    }

    #[test]
    fn an_appended_process_line_extends_the_record() {
        let mut text = record().render();
        let gv = ProcessStamp {
            pid: 4245,
            start_ticks: 9,
        };
        text.push_str(&process_line("gvproxy", gv));
        let parsed = OwnerRecord::parse(&text).unwrap();
        assert_eq!(parsed.processes.len(), 2);
        assert_eq!(parsed.processes[1].role, "gvproxy");
        assert_eq!(parsed.processes[1].stamp, gv);
    }

    #[test]
    fn a_half_written_last_line_is_ignored() {
        let text = format!("{}process gvproxy 12", record().render());
        assert_eq!(OwnerRecord::parse(&text), Some(record()));
    }

    #[test]
    fn other_formats_and_bad_lines_are_not_records() {
        for bad in [
            "",
            "12345\n",
            "airlock-owner 2\nowner 1 2\ntenant t\n",
            "airlock-owner 1\ntenant t\n",
            "airlock-owner 1\nowner 4242 1\n",
            "airlock-owner 1\nowner x 1\ntenant t\n",
            "airlock-owner 1\nowner 1 5\ntenant t\n",
            "airlock-owner 1\nowner 4242 1\ntenant ../t\n",
            "airlock-owner 1\nowner 4242 1\ntenant t\nprocess QEMU 1 2\n",
            "airlock-owner 1\nowner 4242 1\ntenant t\nsomething else\n",
        ] {
            assert_eq!(OwnerRecord::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_owner_file_is_missing_a_record_or_unrecognised() {
        let r = record();
        assert_eq!(
            OwnerFile::from_read(Ok(r.render())),
            OwnerFile::Record(r.clone())
        );
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(OwnerFile::from_read(Err(missing)), OwnerFile::Missing);
        for text in ["", "airlock-owner 2\nowner 4242 1\ntenant t\n", "junk"] {
            let file = OwnerFile::from_read(Ok(text.to_owned()));
            assert!(
                matches!(file, OwnerFile::Unrecognised { .. }),
                "{text:?}: {file:?}"
            );
            assert_eq!(file.record(), None);
        }
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        match OwnerFile::from_read(Err(denied)) {
            OwnerFile::Unrecognised { reason } => {
                assert!(reason.contains("unreadable"), "{reason}")
            }
            other => panic!("expected Unrecognised, got {other:?}"),
        }
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let f = parse_stat(&stat_line("qemu) S 1 2 (x", 'R', 777)).unwrap();
        assert_eq!(f.state, 'R');
        assert_eq!(f.start_ticks, 777);
        assert_eq!(parse_stat("42 (short) S 1"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn a_live_owner_is_alive_a_dead_one_dead_and_a_reused_pid_reused() {
        let stamp = ProcessStamp {
            pid: 42,
            start_ticks: 500,
        };
        let same = stat_line("airlock", 'S', 500);
        let other = stat_line("bash", 'S', 900);
        let zombie = stat_line("airlock", 'Z', 500);
        assert_eq!(stamp.liveness_from(Some(&same)), Liveness::Alive);
        assert_eq!(stamp.liveness_from(None), Liveness::Dead);
        assert_eq!(stamp.liveness_from(Some(&zombie)), Liveness::Dead);
        assert_eq!(stamp.liveness_from(Some(&other)), Liveness::Reused);
        assert_eq!(stamp.liveness_from(Some("garbage")), Liveness::Dead);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_a_reused_pid() {
        let me = ProcessStamp::current().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.liveness(), Liveness::Alive);
        let earlier = ProcessStamp {
            start_ticks: me.start_ticks.wrapping_sub(1),
            ..me
        };
        assert_eq!(earlier.liveness(), Liveness::Reused);
        let nobody = ProcessStamp {
            pid: 999_999_999,
            start_ticks: 1,
        };
        assert_eq!(nobody.liveness(), Liveness::Dead);
    }

    #[test]
    fn a_killed_child_not_yet_waited_for_is_dead() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let stamp = ProcessStamp::of(child.id()).unwrap();
        assert!(stamp.liveness().is_alive());
        child.kill().unwrap();
        // Until the wait below it is a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stamp.liveness().is_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(stamp.liveness(), Liveness::Dead);
        child.wait().unwrap();
        assert_eq!(stamp.liveness(), Liveness::Dead);
    }

    proptest! {
        #[test]
        fn any_record_round_trips(
            pid in 2u32..4_194_304,
            start in any::<u64>(),
            tenant in "[A-Za-z0-9_-]{1,20}",
            procs in proptest::collection::vec(("[a-z]{1,8}", 2u32..4_194_304, any::<u64>()), 0..4),
        ) {
            let mut r = OwnerRecord::new(ProcessStamp { pid, start_ticks: start }, &tenant);
            for (role, pid, start) in procs {
                r.processes.push(OwnedProcess { role, stamp: ProcessStamp { pid, start_ticks: start } });
            }
            prop_assert_eq!(OwnerRecord::parse(&r.render()), Some(r));
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,200}") {
            let _ = OwnerRecord::parse(&text);
            let _ = parse_stat(&text);
        }
    }
}
