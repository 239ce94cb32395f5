//! Rich results of cells (`result` and `cell_error` events), through the
//! real agent and the real drivers (`python3` and `node` of the host),
//! read line by line to see their order among the output events. The
//! display protocol is exercised with small fake objects, and matplotlib
//! with a fake `matplotlib` package (the host has neither matplotlib nor
//! pandas: those are tested in the VM).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use airlock_protocol::{EventBody, ExecMode, ExecRequest, ExecResult, Language, RequestBody};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// What a cell produced, output chunks of one stream merged.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Out(String),
    Err(String),
    Result(ExecResult),
    Error { name: String, value: String },
    Complete { exit_code: i32, state_lost: bool },
}

struct Cells {
    raw: RawAgent,
    _dir: tempfile::TempDir,
    _cgroups: Option<TestCgroupParent>,
    op: u64,
}

fn start(tag: &str, adjust: impl FnOnce(&mut airlock_agent::AgentConfig)) -> Cells {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cgroups = TestCgroupParent::new(tag);
    let raw = start_raw_with(|c| {
        c.cell_dir = dir.path().join("cells");
        c.exec_cgroup_parent = cgroups.as_ref().map(|g| g.path().to_owned());
        c.kill_grace = Duration::from_millis(1500);
        c.interrupt_grace = Duration::from_millis(1500);
        adjust(c);
    });
    Cells {
        raw,
        _dir: dir,
        _cgroups: cgroups,
        op: 0,
    }
}

impl Cells {
    async fn run(&mut self, language: Language, mode: ExecMode, code: &str) -> Vec<Seen> {
        self.op += 1;
        let request = ExecRequest {
            mode,
            ..ExecRequest::cell(language, code, 20_000)
        };
        self.raw.send(self.op, RequestBody::Exec(request)).await;
        let mut seen: Vec<Seen> = Vec::new();
        for body in self.raw.until_last_of(self.op).await {
            let next = match body {
                EventBody::Stdout { data } => Seen::Out(text(data.as_bytes())),
                EventBody::Stderr { data } => Seen::Err(text(data.as_bytes())),
                EventBody::Result(result) => Seen::Result(result),
                EventBody::CellError(e) => Seen::Error {
                    name: e.name,
                    value: e.value,
                },
                EventBody::Complete(c) => Seen::Complete {
                    exit_code: c.exit_code,
                    state_lost: c.state_lost,
                },
                other => panic!("unexpected {other:?}"),
            };
            match (seen.last_mut(), next) {
                (Some(Seen::Out(a)), Seen::Out(b)) | (Some(Seen::Err(a)), Seen::Err(b)) => {
                    a.push_str(&b)
                }
                (_, next) => seen.push(next),
            }
        }
        seen
    }

    async fn py(&mut self, code: &str) -> Vec<Seen> {
        self.run(Language::Python, ExecMode::Cell, code).await
    }

    async fn js(&mut self, code: &str) -> Vec<Seen> {
        self.run(Language::Javascript, ExecMode::Cell, code).await
    }
}

fn plain(text: &str, is_main_result: bool) -> Seen {
    Seen::Result(ExecResult {
        data: [("text/plain".to_owned(), serde_json::json!(text))].into(),
        is_main_result,
        truncated: false,
    })
}

fn done(exit_code: i32) -> Seen {
    Seen::Complete {
        exit_code,
        state_lost: false,
    }
}

fn out(text: &str) -> Seen {
    Seen::Out(text.to_owned())
}

#[tokio::test]
async fn python_shows_the_last_value_and_displays_in_order_with_output() {
    let mut cells = start("res-py", |_| {});
    assert_eq!(
        cells.py("print('a'); display(1); print('b')\n2").await,
        [
            out("a\n"),
            plain("1", false),
            out("b\n"),
            plain("2", true),
            done(0)
        ]
    );
    // None, a statement, a trailing `;`: nothing shown.
    assert_eq!(cells.py("x = 5").await, [done(0)]);
    assert_eq!(cells.py("None").await, [done(0)]);
    assert_eq!(cells.py("x;  # quiet").await, [done(0)]);
    assert_eq!(cells.py("print('x')").await, [out("x\n"), done(0)]);
    // Globals survive as before, and the value is repr's.
    assert_eq!(
        cells.py("x + 1, 'é'").await,
        [plain("(6, 'é')", true), done(0)]
    );
    // sys.exit is not an error, and shows nothing.
    assert_eq!(cells.py("import sys; sys.exit(3)").await, [done(3)]);
}

/// The driver finds a cell's last statement from its last line at column 0
/// when it can (no AST); lines that only look like a statement's start
/// (in a bracket, in a string, after a `;`) must not fool it.
#[tokio::test]
async fn python_last_value_is_found_past_lines_that_look_like_statements() {
    let mut cells = start("res-last", |_| {});
    assert_eq!(
        cells.py("[y for y in range(4)\nif y > 1]").await,
        [plain("[2, 3]", true), done(0)]
    );
    assert_eq!(
        cells.py("'''a\nimport b'''").await,
        [plain(r"'a\nimport b'", true), done(0)]
    );
    assert_eq!(cells.py("import os; 7").await, [plain("7", true), done(0)]);
    assert_eq!(cells.py("def f():\n    return 8\n").await, [done(0)]);
    assert_eq!(
        cells.py("def f():\n    return 8\n\nf()  # call\n").await,
        [plain("8", true), done(0)]
    );
    assert_eq!(
        cells.py("x = {\n'k': 9}\nx['k']").await,
        [plain("9", true), done(0)]
    );
    assert_eq!(cells.py("if True:\n    10\n").await, [done(0)]);
    assert_eq!(cells.py("x = 1\nx;").await, [done(0)]);
    // The tail's line numbers are the cell's.
    let seen = cells.py("a = 1\n\n1 / 0").await;
    assert!(
        matches!(&seen[0], Seen::Err(e) if e.contains("line 3")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn python_rich_display_protocol_gives_each_representation() {
    let mut cells = start("res-rich", |_| {});
    let define = r#"
class Rich:
    def _repr_html_(self): return "<b>rich</b>"
    def _repr_png_(self): return b"\x89PNG\r\n"
    def _repr_markdown_(self): return None
    def _repr_latex_(self): return ("$x$", {"meta": 1})
    def _repr_json_(self): return {"bad": float("nan")}
    def __repr__(self): return "Rich()"

class Bundle:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": "B", "application/json": {"a": [1, 2]}, "image/jpeg": b"\xff\xd8"}, {}

class Broken:
    def _repr_html_(self): raise ValueError("no html")
    def __repr__(self): return "Broken()"

class Anything:
    def __getattr__(self, name): return lambda *a, **k: "<i>fake</i>"
    def __repr__(self): return "Anything()"
"#;
    assert_eq!(cells.py(define).await, [done(0)]);

    let seen = cells.py("Rich()").await;
    let Seen::Result(rich) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert!(rich.is_main_result);
    assert_eq!(rich.data["text/html"], "<b>rich</b>");
    assert_eq!(rich.data["text/latex"], "$x$");
    assert_eq!(rich.data["text/plain"], "Rich()");
    assert_eq!(rich.binary("image/png"), Some(Ok(b"\x89PNG\r\n".to_vec())));
    // None and a JSON that is not JSON (NaN) are left out.
    assert!(!rich.data.contains_key("text/markdown"));
    assert!(!rich.data.contains_key("application/json"));

    let seen = cells.py("display(Bundle())").await;
    let Seen::Result(bundle) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert!(!bundle.is_main_result);
    assert_eq!(bundle.data["text/plain"], "B");
    assert_eq!(
        bundle.data["application/json"],
        serde_json::json!({"a": [1, 2]})
    );
    assert_eq!(bundle.binary("image/jpeg"), Some(Ok(vec![0xff, 0xd8])));

    // A failing method is skipped with a note; repr still shows.
    let seen = cells.py("Broken()").await;
    assert!(
        matches!(&seen[0], Seen::Err(e) if e.contains("Broken._repr_html_() failed")),
        "{seen:?}"
    );
    assert_eq!(seen[1..], [plain("Broken()", true), done(0)]);

    // Objects that answer any attribute, and classes, show repr only.
    assert_eq!(
        cells.py("Anything()").await,
        [plain("Anything()", true), done(0)]
    );
    assert_eq!(
        cells.py("Rich").await,
        [plain("<class '__main__.Rich'>", true), done(0)]
    );

    // include / exclude and raw bundles.
    assert_eq!(
        cells.py("display(Rich(), include=['text/plain'])").await,
        [plain("Rich()", false), done(0)]
    );
    assert_eq!(
        cells
            .py("display({'text/markdown': '**m**', 'image/png': b'P'}, raw=True)")
            .await,
        [
            Seen::Result(ExecResult {
                data: [
                    ("text/markdown".to_owned(), serde_json::json!("**m**")),
                    ("image/png".to_owned(), serde_json::json!("UA==")),
                ]
                .into(),
                is_main_result: false,
                truncated: false,
            }),
            done(0)
        ]
    );
}

#[tokio::test]
async fn python_exceptions_are_cell_errors_after_their_traceback() {
    let mut cells = start("res-err", |_| {});
    let seen = cells
        .py("print('before')\ndef f():\n    raise KeyError('k')\nf()")
        .await;
    assert_eq!(seen[0], out("before\n"));
    assert!(
        matches!(&seen[1], Seen::Err(e) if e.contains("Traceback") && e.contains("KeyError: 'k'")),
        "{seen:?}"
    );
    assert_eq!(
        seen[2..],
        [
            Seen::Error {
                name: "KeyError".into(),
                value: "'k'".into()
            },
            done(1)
        ]
    );
    let seen = cells.py("1 +").await;
    assert!(
        matches!(&seen[seen.len() - 2], Seen::Error { name, .. } if name == "SyntaxError"),
        "{seen:?}"
    );
    // The interpreter goes on.
    assert_eq!(cells.py("41 + 1").await, [plain("42", true), done(0)]);
}

#[tokio::test]
async fn matplotlib_figures_are_shown_as_png_in_order_and_closed() {
    let mut cells = start("res-mpl", |_| {});
    // A fake matplotlib: figures whose PNG is their number.
    let fake = r#"
import os, sys, tempfile
root = tempfile.mkdtemp()
os.makedirs(os.path.join(root, "matplotlib"))
files = {
    "__init__.py": "",
    "figure.py": (
        "class Figure:\n"
        "    def __init__(self, n): self.n = n\n"
        "    def savefig(self, buf, format=None, **kwargs): buf.write(b'PNG%d' % self.n)\n"
        "    def __repr__(self): return '<Figure %d>' % self.n\n"
    ),
    "pyplot.py": (
        "from matplotlib.figure import Figure\n"
        "figs = {}\n"
        "def figure(num=None):\n"
        "    num = num or max(figs, default=0) + 1\n"
        "    return figs.setdefault(num, Figure(num))\n"
        "def get_fignums(): return sorted(figs)\n"
        "def close(what=None):\n"
        "    if what == 'all': figs.clear()\n"
        "    else: figs.pop(what.n, None)\n"
        "def show(*a, **k): print('the original show')\n"
    ),
}
for name, text in files.items():
    with open(os.path.join(root, "matplotlib", name), "w") as f:
        f.write(text)
sys.path.insert(0, root)
"#;
    assert_eq!(cells.py(fake).await, [done(0)]);
    let png = |n: u8| {
        use base64::Engine as _;
        Seen::Result(ExecResult {
            data: [
                (
                    "image/png".to_owned(),
                    serde_json::json!(
                        base64::engine::general_purpose::STANDARD.encode(format!("PNG{n}"))
                    ),
                ),
                (
                    "text/plain".to_owned(),
                    serde_json::json!(format!("<Figure {n}>")),
                ),
            ]
            .into(),
            is_main_result: false,
            truncated: false,
        })
    };
    // plt.show() shows the open figures (the import hook replaced it);
    // figures left open are shown after the cell's value.
    let seen = cells
        .py("import matplotlib.pyplot as plt\nplt.figure(); plt.figure()\nprint('x')\nplt.show()\nplt.figure()\n'end'")
        .await;
    assert_eq!(
        seen,
        [
            out("x\n"),
            png(1),
            png(2),
            plain("'end'", true),
            // Numbered 1 again: pyplot numbers from 1 once all are closed.
            png(1),
            done(0)
        ]
    );
    // All closed: nothing is shown twice. A figure as the value is shown
    // once, as the main result.
    assert_eq!(
        cells.py("plt.get_fignums()").await,
        [plain("[]", true), done(0)]
    );
    let seen = cells.py("fig = plt.figure()\nfig").await;
    let Seen::Result(main) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert!(main.is_main_result && main.data.contains_key("image/png"));
    assert_eq!(seen[1..], [done(0)]);
    // Figures are shown after an exception too.
    let seen = cells.py("plt.figure()\n1 / 0").await;
    assert!(
        matches!(&seen[seen.len() - 3], Seen::Error { name, .. } if name == "ZeroDivisionError"),
        "{seen:?}"
    );
    assert!(matches!(&seen[seen.len() - 2], Seen::Result(r) if r.data.contains_key("image/png")));
}

#[tokio::test]
async fn javascript_shows_the_last_value_with_inspect_and_errors() {
    let mut cells = start("res-js", |_| {});
    assert_eq!(
        cells.js("console.log('a'); ({a: [1, {b: 2}]})").await,
        [out("a\n"), plain("{ a: [ 1, { b: 2 } ] }", true), done(0)]
    );
    assert_eq!(cells.js("let x = 1").await, [done(0)]);
    assert_eq!(cells.js("undefined").await, [done(0)]);
    assert_eq!(
        cells.js("await Promise.resolve(x + 6)").await,
        [plain("7", true), done(0)]
    );
    let seen = cells.js("throw new TypeError('bad')").await;
    assert!(
        seen.contains(&Seen::Error {
            name: "TypeError".into(),
            value: "bad".into()
        }),
        "{seen:?}"
    );
    assert_eq!(seen.last(), Some(&done(1)));
}

#[tokio::test]
async fn one_shot_runs_have_results_and_process_execs_and_bash_do_not() {
    let mut cells = start("res-modes", |_| {});
    assert_eq!(
        cells
            .run(Language::Python, ExecMode::OneShot, "6 * 7")
            .await,
        [plain("42", true), done(0)]
    );
    assert_eq!(
        cells
            .run(Language::Python, ExecMode::Process, "6 * 7")
            .await,
        [done(0)]
    );
    assert_eq!(
        cells
            .run(Language::Raw, ExecMode::Cell, "echo 1; true")
            .await,
        [out("1\n"), done(0)]
    );
}

#[tokio::test]
async fn results_past_the_cap_are_dropped_with_one_marker() {
    let mut cells = start("res-cap", |c| c.results_cap_bytes = 200);
    let seen = cells
        .py("display('a'); display('x' * 300); display('y' * 300); 'b'")
        .await;
    assert_eq!(seen[0], plain("'a'", false));
    let Seen::Err(marker) = &seen[1] else {
        panic!("{seen:?}")
    };
    assert!(
        marker.contains("dropped") && marker.contains("200 bytes"),
        "{marker}"
    );
    assert_eq!(seen[2..], [plain("'b'", true), done(0)]);
    assert_eq!(marker.matches("[airlock:").count(), 1, "{marker}");
}

#[tokio::test]
async fn a_forged_payload_for_another_cell_costs_only_the_state() {
    let mut cells = start("res-forge", |_| {});
    assert_eq!(cells.py("y = 1").await, [done(0)]);
    let seen = cells
        .py("import os; os.write(4, b'result 0000000000000000 2\\n{}')")
        .await;
    assert!(
        matches!(
            seen.last(),
            Some(Seen::Complete {
                state_lost: true,
                ..
            })
        ),
        "{seen:?}"
    );
    // A fresh interpreter: y is gone, results work.
    let seen = cells.py("'y' in globals()").await;
    assert_eq!(seen.first(), Some(&plain("False", true)), "{seen:?}");
}
