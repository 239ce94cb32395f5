//! Reading and writing cgroup control files, and parsing their contents
//! (the parsers are pure).

use std::fs;
use std::io;
use std::path::Path;

/// The value of `key` in a flat keyed file (`key value` per line), as in
/// `memory.events`, `cpu.stat` and v1 `memory.oom_control`.
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The pids listed in a `cgroup.procs`/`tasks` text (one per line); other
/// lines are ignored.
pub fn parse_pids(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The controllers named in a `cgroup.controllers` or
/// `cgroup.subtree_control` text.
pub fn parse_controllers(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// The controllers of `required` that `available` lacks, in order.
pub fn missing_controllers<'a>(available: &str, required: &[&'a str]) -> Vec<&'a str> {
    let have = parse_controllers(available);
    required
        .iter()
        .copied()
        .filter(|c| !have.contains(c))
        .collect()
}

/// Writes a value to a control file in one `write` (cgroup files take one
/// value per write).
pub fn write_value(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
}

/// Reads a control file; `Ok(None)` if it does not exist (an optional
/// interface, or a kernel without it).
pub fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a file holding one unsigned number (`max` reads as `u64::MAX`).
pub fn read_u64_optional(path: &Path) -> io::Result<Option<u64>> {
    Ok(read_optional(path)?.and_then(|s| {
        let s = s.trim();
        if s == "max" {
            Some(u64::MAX)
        } else {
            s.parse().ok()
        }
    }))
}

/// The pids in a group directory's `cgroup.procs` (empty if the directory
/// or file is gone).
pub fn group_pids(dir: &Path) -> Vec<u32> {
    match read_optional(&dir.join("cgroup.procs")) {
        Ok(Some(text)) => parse_pids(&text),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_keyed_values() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(2));
        assert_eq!(keyed_value(events, "oom"), Some(3), "exact key match");
        assert_eq!(keyed_value(events, "missing"), None);
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        assert_eq!(keyed_value(oom_control, "oom_kill"), Some(1));
        let cpu_stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(keyed_value(cpu_stat, "usage_usec"), Some(123_456));
    }

    #[test]
    fn parses_pid_lists() {
        assert_eq!(parse_pids("12\n 34\n\nx\n"), vec![12, 34]);
        assert!(parse_pids("").is_empty());
    }

    #[test]
    fn finds_missing_controllers() {
        let have = "cpuset cpu io memory hugetlb pids rdma misc\n";
        assert!(missing_controllers(have, &["memory", "cpu", "pids"]).is_empty());
        assert_eq!(
            missing_controllers("cpuset io", &["memory", "cpu", "pids"]),
            vec!["memory", "cpu", "pids"]
        );
        assert_eq!(
            missing_controllers("", &["memory"]),
            vec!["memory"],
            "an empty file means no controllers"
        );
    }

    #[test]
    fn reads_numbers_and_max() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pids.max");
        fs::write(&p, "max\n").unwrap();
        assert_eq!(read_u64_optional(&p).unwrap(), Some(u64::MAX));
        fs::write(&p, "42\n").unwrap();
        assert_eq!(read_u64_optional(&p).unwrap(), Some(42));
        assert_eq!(read_u64_optional(&dir.path().join("nope")).unwrap(), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,300}", key in "[a-z_]{1,12}") {
            let _ = keyed_value(&text, &key);
            let _ = parse_pids(&text);
            let _ = missing_controllers(&text, &["memory", "cpu"]);
        }
    }
}
