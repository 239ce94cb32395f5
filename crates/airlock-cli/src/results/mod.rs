//! The rich results of `airlock run` and `airlock session` on a terminal
//! (`docs/outputs.md`): the value of the code's last expression printed on
//! stdout as Jupyter shows it, and binary results (a matplotlib figure, a
//! PIL image, a PDF) saved into the output dir and named on stderr:
//!
//! ```text
//! image/png 640x480 23 KiB -> airlock-output/1.png
//! ```
//!
//! Files are numbered from 1 (`1.png`, `2.svg`, ...) and never replace one
//! that exists: the next free number is taken. The dir is created when the
//! first file is saved. With `--json` nothing is saved or printed here:
//! the results are in the JSON, binary ones base64.

/// Image sizes from PNG, JPEG and GIF headers.
pub mod dimensions;
/// Images shown in the terminal too (kitty, iTerm2).
pub mod inline;

use airlock_protocol::{is_binary_mime, ExecResult};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The default output dir (relative: the current directory's).
pub const DEFAULT_OUTPUT_DIR: &str = "airlock-output";

/// `--output-dir`, shared by `airlock run` and `airlock session`.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Where images, PDFs and other binary results of the code are saved
    /// (a matplotlib figure, `display(img)`): N.png, N.jpg, N.svg,
    /// N.pdf, numbered from 1 and never replacing a file. Created when
    /// first needed. Each file is named on stderr (`image/png 640x480 23
    /// KiB -> airlock-output/1.png`; -q silences that, not the saving).
    /// The value of the code's last expression is printed on stdout as
    /// Jupyter shows it. On a terminal with an image protocol (kitty,
    /// iTerm2, WezTerm) images are also shown inline
    /// (AIRLOCK_INLINE_IMAGES=0 turns that off). With --json nothing is
    /// saved: the results are in the JSON, binary ones base64.
    #[arg(long = "output-dir", value_name = "DIR", default_value = DEFAULT_OUTPUT_DIR)]
    pub output_dir: PathBuf,
}

/// A result's file, once saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Its MIME type.
    pub mime: String,
    /// Where it was written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// Its pixel size, when its header says.
    pub dimensions: Option<dimensions::Dimensions>,
}

impl std::fmt::Display for Saved {
    /// `image/png 640x480 23 KiB -> airlock-output/1.png`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.mime)?;
        if let Some(size) = self.dimensions {
            write!(f, " {size}")?;
        }
        write!(f, " {} -> {}", human_size(self.bytes), self.path.display())
    }
}

/// What a terminal shows of a result (pure): the representations to
/// save (MIME type, bytes) and the text to print on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// Binary representations (and SVG), each to be saved as a file.
    pub files: Vec<(String, Vec<u8>)>,
    /// Representations that could not be decoded, with why.
    pub bad: Vec<String>,
    /// `text/plain` to print: the main result's, or a displayed value's
    /// that had nothing to save (`display("text")`).
    pub text: Option<String>,
}

/// What to do with `result` on a terminal (pure).
pub fn shown(result: &ExecResult) -> Shown {
    let mut files = Vec::new();
    let mut bad = Vec::new();
    for mime in result.mime_types() {
        if mime == "image/svg+xml" {
            match result.data.get(mime).and_then(serde_json::Value::as_str) {
                Some(svg) => files.push((mime.to_owned(), svg.as_bytes().to_vec())),
                None => bad.push(format!("{mime}: not a string")),
            }
        } else if is_binary_mime(mime) {
            match result.binary(mime) {
                Some(Ok(bytes)) => files.push((mime.to_owned(), bytes)),
                Some(Err(e)) => bad.push(e),
                None => {}
            }
        }
    }
    let text = (result.is_main_result || files.is_empty())
        .then(|| result.text().map(str::to_owned))
        .flatten();
    Shown { files, bad, text }
}

/// The file extension of a MIME type's files (pure): the usual one for
/// the common types, else the subtype's letters and digits, else `bin`.
pub fn extension(mime: &str) -> String {
    match mime {
        "image/png" => "png".into(),
        "image/jpeg" | "image/jpg" => "jpg".into(),
        "image/svg+xml" => "svg".into(),
        "image/gif" => "gif".into(),
        "image/webp" => "webp".into(),
        "image/bmp" => "bmp".into(),
        "image/tiff" => "tiff".into(),
        "application/pdf" => "pdf".into(),
        other => {
            let subtype = other.rsplit('/').next().unwrap_or_default();
            let clean: String = subtype
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(12)
                .collect::<String>()
                .to_ascii_lowercase();
            if clean.is_empty() || other == "application/octet-stream" {
                "bin".into()
            } else {
                clean
            }
        }
    }
}

/// A size as people read it: `512 B`, `23 KiB`, `1.4 MiB` (pure).
pub fn human_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    if bytes < KIB {
        format!("{bytes} B")
    } else if bytes < KIB * KIB {
        format!("{} KiB", (bytes + KIB / 2) / KIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / (KIB * KIB) as f64)
    }
}

/// Writes `bytes` to the first `dir/N.ext` (N from `*next`) that does not
/// exist, creating `dir` when missing; `*next` is left after the number
/// used. Never replaces a file (`create_new`).
///
/// # Errors
/// Creating the dir or writing the file failed.
pub fn save_numbered(
    dir: &Path,
    next: &mut u64,
    ext: &str,
    bytes: &[u8],
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    // A bound, not a loop forever: a dir with this many numbered files is
    // a mistake to report.
    for _ in 0..100_000 {
        let path = dir.join(format!("{}.{ext}", *next));
        *next += 1;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(bytes)?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "no free file number in {} below {}",
        dir.display(),
        *next
    )))
}

/// Runs blocking file work from an observer callback: moved off the
/// async worker with `block_in_place` when on a multi-thread runtime (the
/// command's), inline otherwise (tests).
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Shows the results of a run or of a session's cells on the terminal:
/// text on stdout, files saved and named on stderr.
#[derive(Debug, Clone)]
pub struct ResultWriter {
    dir: PathBuf,
    quiet: bool,
    next: u64,
    /// How images are shown in the terminal too, if it can.
    inline: Option<inline::Protocol>,
}

impl ResultWriter {
    /// Files go to `dir`; `quiet` leaves out the stderr line of each.
    /// Images are also shown inline when stdout is a terminal with an
    /// image protocol ([`inline::detect`]).
    pub fn new(dir: PathBuf, quiet: bool) -> Self {
        Self {
            dir,
            quiet,
            next: 1,
            inline: inline::detect(),
        }
    }

    /// Shows `result`: saves its files (naming each on stderr unless
    /// quiet; a failure is always said), and returns the text to print on
    /// stdout, if any, ending with a newline.
    pub fn show(&mut self, result: &ExecResult) -> Option<String> {
        let shown = shown(result);
        for problem in &shown.bad {
            eprintln!("airlock: error: a result could not be decoded: {problem}");
        }
        for (mime, bytes) in &shown.files {
            let (dir, ext) = (self.dir.clone(), extension(mime));
            let mut next = self.next;
            let saved = off_the_runtime(|| save_numbered(&dir, &mut next, &ext, bytes));
            self.next = next;
            match saved {
                Ok(path) => {
                    if !self.quiet {
                        let saved = Saved {
                            mime: mime.clone(),
                            path,
                            bytes: bytes.len(),
                            dimensions: dimensions::dimensions(mime, bytes),
                        };
                        eprintln!("{saved}");
                    }
                }
                Err(e) => eprintln!(
                    "airlock: error: cannot save a {mime} result in {}: {e}",
                    self.dir.display()
                ),
            }
            if let Some(protocol) = self.inline.filter(|p| p.shows(mime)) {
                off_the_runtime(|| {
                    let mut out = std::io::stdout().lock();
                    // A terminal that went away: the file is saved anyway.
                    let _ = out
                        .write_all(protocol.escape(bytes).as_bytes())
                        .and_then(|()| out.flush());
                });
            }
        }
        shown.text.map(|mut text| {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_protocol::MimeBundle;

    fn result(main: bool, data: &[(&str, serde_json::Value)]) -> ExecResult {
        ExecResult {
            data: data
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<MimeBundle>(),
            is_main_result: main,
            truncated: false,
        }
    }

    fn base64(bytes: &[u8]) -> serde_json::Value {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into()
    }

    #[test]
    fn a_main_value_prints_its_plain_text_and_saves_nothing() {
        let shown = shown(&result(
            true,
            &[
                ("text/plain", "   a\n0  1".into()),
                ("text/html", "<table/>".into()),
            ],
        ));
        assert_eq!(shown.text.as_deref(), Some("   a\n0  1"));
        assert!(shown.files.is_empty());
    }

    #[test]
    fn a_figure_is_saved_and_its_repr_not_printed() {
        let png = dimensions::tests::png_header(640, 480);
        let shown = shown(&result(
            false,
            &[
                ("image/png", base64(&png)),
                ("text/plain", "<Figure size 640x480 with 1 Axes>".into()),
            ],
        ));
        assert_eq!(shown.files, [("image/png".to_owned(), png)]);
        assert_eq!(shown.text, None);
    }

    #[test]
    fn a_displayed_text_is_printed_and_svg_and_pdf_are_files() {
        assert_eq!(
            shown(&result(false, &[("text/plain", "'hi'".into())]))
                .text
                .as_deref(),
            Some("'hi'")
        );
        let both = shown(&result(
            false,
            &[
                ("image/svg+xml", "<svg/>".into()),
                ("application/pdf", base64(b"%PDF")),
                ("image/png", serde_json::json!(3)),
            ],
        ));
        let mimes: Vec<&str> = both.files.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(mimes, ["application/pdf", "image/svg+xml"]);
        assert_eq!(both.bad.len(), 1, "a PNG that is not base64 is reported");
    }

    #[test]
    fn extensions_are_the_usual_ones_or_the_cleaned_subtype() {
        assert_eq!(extension("image/png"), "png");
        assert_eq!(extension("image/jpeg"), "jpg");
        assert_eq!(extension("image/svg+xml"), "svg");
        assert_eq!(extension("application/pdf"), "pdf");
        assert_eq!(extension("image/x-icon"), "xicon");
        assert_eq!(extension("image/../../etc"), "etc");
        assert_eq!(extension("application/octet-stream"), "bin");
        assert_eq!(extension("image/"), "bin");
    }

    #[test]
    fn sizes_read_as_bytes_kib_or_mib() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(23 * 1024 + 100), "23 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }

    #[test]
    fn the_stderr_line_names_type_size_and_path() {
        let saved = Saved {
            mime: "image/png".into(),
            path: "airlock-output/1.png".into(),
            bytes: 23 * 1024,
            dimensions: Some(dimensions::Dimensions {
                width: 640,
                height: 480,
            }),
        };
        assert_eq!(
            saved.to_string(),
            "image/png 640x480 23 KiB -> airlock-output/1.png"
        );
        let pdf = Saved {
            mime: "application/pdf".into(),
            dimensions: None,
            ..saved
        };
        assert_eq!(
            pdf.to_string(),
            "application/pdf 23 KiB -> airlock-output/1.png"
        );
    }

    #[test]
    fn files_are_numbered_in_a_dir_made_on_need_and_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("1.png"), b"mine").unwrap();
        let mut next = 1;
        let first = save_numbered(&dir, &mut next, "png", b"a").unwrap();
        assert_eq!(first, dir.join("2.png"));
        let second = save_numbered(&dir, &mut next, "svg", b"b").unwrap();
        assert_eq!(second, dir.join("3.svg"));
        assert_eq!(std::fs::read(dir.join("1.png")).unwrap(), b"mine");

        let fresh = tmp.path().join("new/deeper");
        let mut next = 1;
        let made = save_numbered(&fresh, &mut next, "png", b"c").unwrap();
        assert_eq!(made, fresh.join("1.png"));
        assert_eq!(std::fs::read(made).unwrap(), b"c");
    }

    #[test]
    fn the_writer_saves_files_and_returns_the_text_with_a_newline() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("airlock-output");
        let mut writer = ResultWriter::new(dir.clone(), true);
        let png = dimensions::tests::png_header(2, 3);
        assert_eq!(
            writer.show(&result(false, &[("image/png", base64(&png))])),
            None
        );
        assert_eq!(
            writer.show(&result(true, &[("text/plain", "2".into())])),
            Some("2\n".into())
        );
        assert_eq!(
            writer.show(&result(false, &[("image/png", base64(&png))])),
            None
        );
        assert_eq!(std::fs::read(dir.join("1.png")).unwrap(), png);
        assert!(dir.join("2.png").is_file(), "the next figure takes 2");
    }

    #[test]
    fn a_dir_that_cannot_be_made_loses_the_file_not_the_text() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let mut writer = ResultWriter::new(blocker.join("out"), false);
        let text = writer.show(&result(
            true,
            &[("image/png", base64(b"x")), ("text/plain", "<img>".into())],
        ));
        assert_eq!(text.as_deref(), Some("<img>\n"));
    }
}
