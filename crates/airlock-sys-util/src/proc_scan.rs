//! Finding processes by their command line, from `/proc`: how tests, the
//! fault soak and diagnostics look for the QEMU or gvproxy of one VM.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_by_its_own_command_line() {
        let me = std::process::id();
        let exe = std::env::args().next().expect("argv[0]");
        assert!(pids_whose_cmdline(|cmd| cmd.starts_with(&exe)).contains(&me));
        assert!(!pids_whose_cmdline(|cmd| cmd.contains("no-such-program-\u{1}")).contains(&me));
    }
}
