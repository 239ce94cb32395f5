//! Splitting a script into cells at Jupytext "percent" markers, the format
//! of Jupytext, VS Code and Spyder: a line that starts with `# %%` (Python,
//! raw) or `// %%` (JavaScript) begins a new cell. The marker line itself
//! is not part of the cell; text before the first marker is a cell of its
//! own; blank cells are skipped, and so are cells marked `[markdown]` or
//! `[md]` (their text is prose in comments).

use airlock_protocol::Language;

/// One cell of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// The 1-based line of the script where the cell's code starts.
    pub line: usize,
    /// The code, without the marker line.
    pub code: String,
}

/// The marker that starts a cell in `language`'s scripts.
pub fn marker(language: Language) -> &'static str {
    match language {
        Language::Python | Language::Raw => "# %%",
        Language::Javascript => "// %%",
    }
}

/// Splits `script` into its cells, in order (see the module docs).
pub fn split_cells(language: Language, script: &str) -> Vec<Cell> {
    let marker = marker(language);
    let mut cells = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    let mut skip = false;
    for (index, line) in script.split_inclusive('\n').enumerate() {
        if let Some(rest) = line.strip_prefix(marker) {
            push(&mut cells, &mut current, start, skip);
            start = index + 2;
            skip = is_markdown(rest);
        } else {
            current.push_str(line);
        }
    }
    push(&mut cells, &mut current, start, skip);
    cells
}

fn is_markdown(rest: &str) -> bool {
    let rest = rest.trim();
    rest.contains("[markdown]") || rest.contains("[md]")
}

fn push(cells: &mut Vec<Cell>, current: &mut String, line: usize, skip: bool) {
    let code = std::mem::take(current);
    if !skip && !code.trim().is_empty() {
        cells.push(Cell { line, code });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codes(cells: &[Cell]) -> Vec<&str> {
        cells.iter().map(|c| c.code.as_str()).collect()
    }

    #[test]
    fn python_cells_split_at_percent_markers_without_the_marker_line() {
        let script = "import os\n# %%\nx = 1\n# %% load data\nprint(x)\n";
        let cells = split_cells(Language::Python, script);
        assert_eq!(codes(&cells), ["import os\n", "x = 1\n", "print(x)\n"]);
        assert_eq!(cells.iter().map(|c| c.line).collect::<Vec<_>>(), [1, 3, 5]);
    }

    #[test]
    fn javascript_uses_the_double_slash_marker() {
        let script = "// %%\nlet a = 1\n// %%\nconsole.log(a)\n# %% not a marker here\n";
        let cells = split_cells(Language::Javascript, script);
        assert_eq!(
            codes(&cells),
            ["let a = 1\n", "console.log(a)\n# %% not a marker here\n"]
        );
    }

    #[test]
    fn blank_and_markdown_cells_are_skipped() {
        let script = "\n\n# %% [markdown]\n# # Title\n# %%\necho hi\n# %%\n   \n";
        assert_eq!(codes(&split_cells(Language::Raw, script)), ["echo hi\n"]);
    }

    #[test]
    fn a_script_without_markers_is_one_cell_and_an_indented_marker_is_code() {
        let script = "x = 1\n  # %% indented\nprint(x)";
        assert_eq!(codes(&split_cells(Language::Python, script)), [script]);
        assert!(split_cells(Language::Python, "").is_empty());
    }

    fn line() -> impl Strategy<Value = String> {
        // Lines that may look like markers but start otherwise.
        "[ a-z#%/=()]{0,12}".prop_filter("not a marker", |l| {
            !l.starts_with("# %%") && !l.starts_with("// %%")
        })
    }

    proptest! {
        /// Cells joined with markers split back into the same cells
        /// (blank ones dropped), whatever their text.
        #[test]
        fn joining_cells_with_markers_and_splitting_gives_them_back(
            cells in proptest::collection::vec(proptest::collection::vec(line(), 0..5), 0..6),
            language in prop_oneof![Just(Language::Python), Just(Language::Javascript), Just(Language::Raw)],
        ) {
            let bodies: Vec<String> = cells.iter().map(|lines| {
                lines.iter().map(|l| format!("{l}\n")).collect()
            }).collect();
            let script: String = bodies.iter().map(|b| format!("{} title\n{b}", marker(language))).collect();
            let expected: Vec<&str> = bodies.iter().map(String::as_str).filter(|b| !b.trim().is_empty()).collect();
            let split = split_cells(language, &script);
            prop_assert_eq!(codes(&split), expected);
        }

        /// No cell ever holds a marker line, and every code line of the
        /// script lands in exactly one cell, in order.
        #[test]
        fn every_non_marker_line_is_kept_once_in_order(script in "([ a-z#%/\n]{0,10}\n){0,12}") {
            let language = Language::Python;
            let split = split_cells(language, &script);
            for cell in &split {
                prop_assert!(cell.code.lines().all(|l| !l.starts_with(marker(language))));
            }
            let kept: String = split.iter().map(|c| c.code.as_str()).collect();
            let non_blank: String = script
                .split_inclusive('\n')
                .filter(|l| !l.starts_with(marker(language)))
                .collect();
            // Only blank cells are dropped.
            prop_assert_eq!(kept.split_whitespace().collect::<Vec<_>>(), non_blank.split_whitespace().collect::<Vec<_>>());
        }
    }
}
