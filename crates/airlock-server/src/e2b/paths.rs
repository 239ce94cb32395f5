//! E2B's paths and Airlock's: E2B's user home is `/home/user`, Airlock's
//! sandbox home is [`SANDBOX_HOME`]. Paths the SDKs send under
//! `/home/user` (or relative ones, which E2B resolves against the home)
//! name the sandbox home; paths the server sends back are shown under
//! `/home/user` again, so a client sees one consistent tree.

use airlock_protocol::abi::SANDBOX_HOME;

/// E2B's home directory, as the SDKs name it.
pub(crate) const E2B_HOME: &str = "/home/user";

/// The guest path `path` names: under [`E2B_HOME`] or relative, the same
/// place under the sandbox home; any other absolute path as it is.
pub(crate) fn to_guest(path: &str) -> String {
    match home_relative(path) {
        Some(rel) if rel.is_empty() => SANDBOX_HOME.to_owned(),
        Some(rel) => format!("{SANDBOX_HOME}/{rel}"),
        None => path.to_owned(),
    }
}

/// `path` relative to the sandbox home (`""` for the home itself), or
/// `None` when it is outside it (an absolute path elsewhere).
pub(crate) fn home_relative(path: &str) -> Option<String> {
    let rest = if !path.starts_with('/') {
        Some(path)
    } else {
        [E2B_HOME, SANDBOX_HOME].iter().find_map(|home| {
            let rest = path.strip_prefix(home)?;
            (rest.is_empty() || rest.starts_with('/')).then_some(rest)
        })
    }?;
    Some(
        rest.trim_start_matches('/')
            .trim_end_matches('/')
            .to_owned(),
    )
}

/// A guest path as E2B shows it: the sandbox home as [`E2B_HOME`].
pub(crate) fn to_e2b(guest: &str) -> String {
    match guest.strip_prefix(SANDBOX_HOME) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{E2B_HOME}{rest}"),
        _ => guest.to_owned(),
    }
}

/// `text` quoted for a POSIX shell: in single quotes, each `'` as `'\''`.
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2b_home_paths_and_relative_ones_name_the_sandbox_home() {
        assert_eq!(to_guest("/home/user/a.txt"), "/home/sandbox/a.txt");
        assert_eq!(to_guest("/home/user"), "/home/sandbox");
        assert_eq!(to_guest("a/b"), "/home/sandbox/a/b");
        assert_eq!(to_guest("/tmp/x"), "/tmp/x");
        assert_eq!(to_guest("/home/username"), "/home/username");
        assert_eq!(home_relative("/home/user/d/"), Some("d".into()));
        assert_eq!(home_relative("/home/sandbox/x"), Some("x".into()));
        assert_eq!(home_relative("/etc/passwd"), None);
    }

    #[test]
    fn paths_go_back_under_the_e2b_home() {
        assert_eq!(to_e2b("/home/sandbox/a.txt"), "/home/user/a.txt");
        assert_eq!(to_e2b("/home/sandbox"), "/home/user");
        assert_eq!(to_e2b("/home/sandboxes"), "/home/sandboxes");
        assert_eq!(to_e2b("/tmp"), "/tmp");
    }

    #[test]
    fn a_quoted_text_stays_one_word() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}
