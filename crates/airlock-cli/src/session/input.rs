//! When a REPL entry is complete: the multi-line rule of `airlock session`.
//!
//! An entry goes on to another line while it is plainly unfinished:
//! - a bracket `(`, `[` or `{` is open, or a string is (Python's triple
//!   quotes, JavaScript's template literal, any quote in bash), or (bash)
//!   an `if`, `case` or `do` lacks its `fi`, `esac` or `done`;
//! - the last line ends with `\`, or (Python) with `:`;
//! - (Python) a block was opened by a line ending with `:`: the entry ends
//!   at an empty line, as in Python's own REPL.
//!
//! An empty line always ends the entry (so a typo cannot trap the user:
//! the interpreter reports it). REPL commands (`:help`, ...) are one line.
//! Brackets and quotes inside comments are ignored.

use airlock_protocol::Language;

/// Whether `text` (the whole entry so far, lines joined with `\n`) is
/// ready to run.
pub fn is_complete(language: Language, text: &str) -> bool {
    if text.trim_start().starts_with(':') && !text.contains('\n') {
        return true;
    }
    // An empty last line ends the entry.
    if text.contains('\n')
        && text
            .rsplit('\n')
            .next()
            .is_some_and(|l| l.trim().is_empty())
    {
        return true;
    }
    let last = text.rsplit('\n').next().unwrap_or_default().trim_end();
    if last.ends_with('\\') {
        return false;
    }
    let scan = scan(language, text);
    if scan.open_brackets > 0 || scan.open_string {
        return false;
    }
    if language == Language::Python {
        if opens_block(last) {
            return false;
        }
        // Inside a block: wait for the empty line.
        if text.contains('\n') && text.lines().any(opens_block) {
            return false;
        }
    }
    true
}

/// Whether a Python line opens a block (ends with `:` outside a comment).
fn opens_block(line: &str) -> bool {
    let code = line.split('#').next().unwrap_or_default().trim_end();
    code.ends_with(':')
}

#[derive(Debug, Default)]
struct Scan {
    open_brackets: usize,
    open_string: bool,
}

/// Counts open brackets and strings, skipping comments and string contents.
fn scan(language: Language, text: &str) -> Scan {
    let chars: Vec<char> = text.chars().collect();
    let mut depth: usize = 0;
    let mut i = 0;
    let mut in_comment = false;
    // The closing delimiter of the string we are in, if any.
    let mut string: Option<&'static str> = None;
    while i < chars.len() {
        let c = chars[i];
        let rest = &chars[i..];
        let starts = |s: &str| rest.iter().take(s.chars().count()).copied().eq(s.chars());
        if c == '\n' {
            in_comment = false;
        }
        if in_comment {
            i += 1;
            continue;
        }
        if let Some(end) = string {
            if c == '\\' && (language != Language::Raw || end == "\"") {
                i += 2;
                continue;
            }
            if starts(end) {
                i += end.chars().count();
                string = None;
            } else {
                i += 1;
            }
            continue;
        }
        match (language, c) {
            (Language::Python, '#') | (Language::Raw, '#')
                if is_comment_start(language, &chars, i) =>
            {
                in_comment = true;
            }
            (Language::Javascript, '/') if starts("//") => in_comment = true,
            (Language::Javascript, '/') if starts("/*") => {
                string = Some("*/");
                i += 2;
                continue;
            }
            (Language::Python, '\'' | '"') if starts("'''") || starts("\"\"\"") => {
                string = Some(if c == '\'' { "'''" } else { "\"\"\"" });
                i += 3;
                continue;
            }
            (_, '\'') => string = Some("'"),
            (_, '"') => string = Some("\""),
            (Language::Javascript, '`') => string = Some("`"),
            (Language::Raw, c) if c.is_ascii_alphabetic() && is_word_start(&chars, i) => {
                let word: String = rest
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                if at_command_position(&chars, i) {
                    match word.as_str() {
                        "if" | "case" | "do" => depth += 1,
                        "fi" | "esac" | "done" => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                }
                i += word.chars().count();
                continue;
            }
            (_, '(' | '[' | '{') => depth += 1,
            (_, ')' | ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    // A one-line string left open in Python or JavaScript is a syntax error,
    // not a continuation; multi-line ones (triple quotes, template
    // literals, any quote in bash, block comments) continue.
    let open_string = match string {
        Some("'''" | "\"\"\"" | "`" | "*/") => true,
        Some(_) => language == Language::Raw,
        None => false,
    };
    Scan {
        open_brackets: depth,
        open_string,
    }
}

/// Whether `chars[i]` starts a word (bash keywords count only as words
/// of their own).
fn is_word_start(chars: &[char], i: usize) -> bool {
    i == 0 || chars[i - 1].is_whitespace() || matches!(chars[i - 1], ';' | '(' | '&' | '|')
}

/// Whether the word at `chars[i]` is where bash reads a command (so that a
/// keyword is one): at the start, after a newline, `;`, `&`, `|`, `(`, `{`,
/// or after a keyword that a command follows (`then`, `do`, `else`, `elif`).
fn at_command_position(chars: &[char], i: usize) -> bool {
    let mut j = i;
    while j > 0 && matches!(chars[j - 1], ' ' | '\t') {
        j -= 1;
    }
    if j == 0 || matches!(chars[j - 1], '\n' | ';' | '&' | '|' | '(' | '{') {
        return true;
    }
    let end = j;
    while j > 0 && (chars[j - 1].is_ascii_alphanumeric() || chars[j - 1] == '_') {
        j -= 1;
    }
    let previous: String = chars[j..end].iter().collect();
    matches!(previous.as_str(), "then" | "do" | "else" | "elif")
}

/// A `#` starts a comment in Python anywhere outside strings; in bash only
/// at the start of a word.
fn is_comment_start(language: Language, chars: &[char], i: usize) -> bool {
    language == Language::Python || i == 0 || chars[i - 1].is_whitespace()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PY: Language = Language::Python;
    const JS: Language = Language::Javascript;
    const SH: Language = Language::Raw;

    #[test]
    fn one_line_statements_are_complete() {
        assert!(is_complete(PY, "print(1)"));
        assert!(is_complete(JS, "console.log(1)"));
        assert!(is_complete(SH, "echo hi"));
        assert!(is_complete(PY, ":upload a b"));
    }

    #[test]
    fn open_brackets_continue_until_closed() {
        assert!(!is_complete(PY, "x = [1,"));
        assert!(is_complete(PY, "x = [1,\n 2]"));
        assert!(!is_complete(JS, "function f() {"));
        assert!(!is_complete(JS, "function f() {\n  return 1"));
        assert!(is_complete(JS, "function f() {\n  return 1\n}"));
        assert!(!is_complete(SH, "f() {"));
    }

    #[test]
    fn bash_compound_commands_continue_until_closed() {
        assert!(!is_complete(SH, "for i in 1 2; do"));
        assert!(!is_complete(SH, "for i in 1 2; do\n  echo $i"));
        assert!(is_complete(SH, "for i in 1 2; do\n  echo $i\ndone"));
        assert!(!is_complete(SH, "if true; then"));
        assert!(is_complete(SH, "if true; then echo y; fi"));
        assert!(!is_complete(SH, "case $x in"));
        assert!(is_complete(SH, "echo done; echo undo doing"));
        assert!(is_complete(SH, "echo if case do"));
        assert!(!is_complete(SH, "while true\ndo"));
        assert!(is_complete(SH, "if true; then if false; then :; fi; fi"));
    }

    #[test]
    fn python_blocks_continue_until_an_empty_line() {
        assert!(!is_complete(PY, "def f():"));
        assert!(!is_complete(PY, "def f():\n    return 1"));
        assert!(is_complete(PY, "def f():\n    return 1\n"));
        assert!(!is_complete(PY, "for i in range(3):  # loop"));
    }

    #[test]
    fn a_trailing_backslash_continues() {
        assert!(!is_complete(SH, "echo a \\"));
        assert!(!is_complete(PY, "x = 1 + \\"));
        assert!(is_complete(SH, "echo a \\\nb"));
    }

    #[test]
    fn brackets_and_colons_in_strings_and_comments_do_not_count() {
        assert!(is_complete(PY, "print('(')"));
        assert!(is_complete(PY, "x = 1  # note: ("));
        assert!(is_complete(JS, "console.log(\"{\") // {"));
        assert!(is_complete(SH, "echo '(' # ("));
        assert!(is_complete(SH, "echo a#b"));
    }

    #[test]
    fn multi_line_strings_continue() {
        assert!(!is_complete(PY, "s = \"\"\"first"));
        assert!(is_complete(PY, "s = \"\"\"first\nsecond\"\"\""));
        assert!(!is_complete(JS, "const s = `a"));
        assert!(!is_complete(JS, "/* note"));
        assert!(!is_complete(SH, "echo 'a"));
        // A one-line string left open is the interpreter's error to report.
        assert!(is_complete(PY, "x = 'a"));
    }

    #[test]
    fn an_empty_line_always_ends_the_entry() {
        assert!(is_complete(PY, "x = [1,\n"));
        assert!(is_complete(JS, "f(\n   "));
    }

    proptest! {
        /// Whatever is typed, appending an empty line completes it: the
        /// user can always get out.
        #[test]
        fn an_empty_line_completes_anything(text in "[ -~\n]{0,40}", lang in 0usize..3) {
            let language = Language::ALL[lang];
            let entry = format!("{text}\n");
            prop_assert!(is_complete(language, &entry));
        }

        /// The scan never panics on arbitrary text, multibyte included.
        #[test]
        fn the_scan_accepts_any_text(text in "\\PC{0,60}", lang in 0usize..3) {
            let _ = is_complete(Language::ALL[lang], &text);
        }
    }
}
