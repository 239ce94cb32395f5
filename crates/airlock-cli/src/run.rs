//! `airlock run`: one piece of code in one fresh VM, its output streamed
//! (or, with `--json`, the whole result printed), a progress line while
//! it boots, the files of `--download` saved after. The exit status is
//! the code's own, 124 when it timed out, 125 when Airlock failed.

use crate::error::CliError;
use crate::flags::VmFlags;
use crate::process::{self, exit_status, Detail, Interrupts, EXIT_AIRLOCK_FAILED, EXIT_TIMEOUT};
use crate::results::{OutputArgs, ResultWriter};
use crate::transfer;
use airlock::packages::CaBundle;
use airlock::spec::args::SandboxArgs;
use airlock::spec::DEFAULT_TENANT;
use airlock::{
    parse_env_pair, Config, ExposedAddr, OutputStream, RunObserver, RunRequest, RunResult,
    Scheduler, Stage,
};
use airlock_protocol::Language;
use clap::Args;
use nix::sys::signal::Signal;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Arguments of `airlock run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The code, or a file holding it (its extension picks the language).
    /// Without it and without -c, the code is read from stdin.
    pub code_or_file: Option<String>,
    /// A line of code (repeatable; lines are joined with newlines).
    #[arg(short = 'c', long = "code")]
    pub code: Vec<String>,
    /// python, javascript or raw (bash). Default: from the file extension,
    /// else the language of `--image`, else python.
    #[arg(short, long)]
    pub language: Option<String>,
    /// Timeout for the code, in seconds (boot not included).
    #[arg(short, long, default_value_t = 30.0)]
    pub timeout: f64,
    /// The sandbox: `-m/--memory`, `--cpus`, `--network`,
    /// `--allow-domain`, `--expose`, `--packages` (one definition for every
    /// front end: `airlock::spec::args`).
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// An environment variable for the code (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Print the whole result as JSON on stdout instead of streaming: the
    /// output, the exit code, the timings, the results (`results`: MIME
    /// bundles, binary ones base64; nothing is saved) and the uncaught
    /// exception (`error`: name, value, traceback).
    #[arg(long)]
    pub json: bool,
    /// `--output-dir DIR`: where images and other binary results go.
    #[command(flatten)]
    pub output: OutputArgs,
    /// `-q/--quiet`, `--debug`, `--cold` (as `airlock session`'s).
    #[command(flatten)]
    pub flags: VmFlags,
    /// Copy a host file into the sandbox home before the code runs:
    /// LOCAL:REMOTE (split at the last `:`; a bare LOCAL keeps its file
    /// name). Repeatable.
    #[arg(long, value_name = "LOCAL:REMOTE")]
    pub upload: Vec<String>,
    /// Copy a file of the sandbox home to the host after the code ended
    /// (also after a failure or a timeout): REMOTE:LOCAL (split at the
    /// first `:`; a bare REMOTE lands in the current directory). Written
    /// atomically. Repeatable.
    #[arg(long, value_name = "REMOTE:LOCAL")]
    pub download: Vec<String>,
    /// The CA bundle (PEM) guests with a network trust, instead of the
    /// host's system bundle (e.g. a TLS-inspecting proxy's CA with the
    /// public roots).
    #[arg(long = "ca-bundle", value_name = "PATH")]
    pub ca_bundle: Option<std::path::PathBuf>,
}

impl RunArgs {
    /// Turns the arguments into a request (reading the file or stdin).
    ///
    /// # Errors
    /// A refused argument ([`CliError::invalid_field`]) for a bad language,
    /// timeout, env pair or request, [`CliError::Io`] for an unreadable
    /// file, [`CliError::ReadStdin`] for unreadable stdin.
    pub fn to_request(&self, stdin: &mut dyn Read) -> Result<RunRequest, CliError> {
        let mut language = match &self.language {
            Some(name) => Some(
                name.parse::<Language>()
                    .map_err(|e| CliError::invalid("language", e.to_string()))?,
            ),
            None => None,
        };
        let code = if !self.code.is_empty() {
            if self.code_or_file.is_some() {
                return Err(CliError::invalid(
                    "code",
                    "give the code either as an argument or with -c, not both",
                ));
            }
            self.code.join("\n")
        } else if let Some(arg) = &self.code_or_file {
            let path = Path::new(arg);
            if looks_like_file(arg) && path.is_file() {
                if language.is_none() {
                    language = path
                        .extension()
                        .and_then(|e| e.to_str())
                        .and_then(Language::from_extension);
                }
                std::fs::read_to_string(path).map_err(|e| CliError::io("read", path, e))?
            } else {
                arg.clone()
            }
        } else {
            let mut code = String::new();
            stdin
                .read_to_string(&mut code)
                .map_err(|source| CliError::ReadStdin { source })?;
            code
        };
        let timeout = timeout_from_secs(self.timeout)?;
        let language = self.sandbox.shape.language(language, Language::Python);
        let spec = self.sandbox.to_spec(DEFAULT_TENANT, language)?;
        let mut request = RunRequest::in_sandbox(spec, code);
        request.timeout = timeout;
        for pair in &self.env {
            let (k, v) = parse_env_pair(pair)?;
            request.env.insert(k, v);
        }
        request.uploads = self
            .upload
            .iter()
            .map(|spec| transfer::read_upload(spec))
            .collect::<Result<_, _>>()?;
        request.downloads = self
            .download_targets()?
            .into_iter()
            .map(|t| t.remote)
            .collect();
        if let Some(path) = &self.ca_bundle {
            CaBundle::File(path.clone()).resolve()?;
        }
        request.validate()?;
        Ok(request)
    }

    /// The `--download` targets, checked (guest path, local directory).
    ///
    /// # Errors
    /// A refused argument (`downloads`).
    pub fn download_targets(&self) -> Result<Vec<transfer::DownloadTarget>, CliError> {
        self.download
            .iter()
            .map(|spec| transfer::parse_download(spec))
            .collect()
    }
}

/// A `-t/--timeout` in seconds as a duration (shared by `airlock run` and
/// `airlock session`).
///
/// # Errors
/// A refused argument (`timeout`) unless a finite positive number.
pub(crate) fn timeout_from_secs(secs: f64) -> Result<Duration, CliError> {
    if !secs.is_finite() || secs <= 0.0 {
        return Err(CliError::invalid(
            "timeout",
            format!("{secs} is not a positive number of seconds"),
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| CliError::invalid("timeout", e.to_string()))
}

/// Whether an argument is meant as a file name rather than code: no
/// whitespace or code punctuation, and a known extension or a path separator.
fn looks_like_file(arg: &str) -> bool {
    !arg.contains(|c: char| c.is_whitespace() || "()'\";{}=$`".contains(c))
        && (arg.contains('/')
            || Path::new(arg)
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| Language::from_extension(e).is_some()))
}

/// Runs `read` (a blocking read of stdin or of a file) on a thread of its
/// own and waits for its answer, so that the runtime keeps serving
/// meanwhile and the caller can stop waiting (an interrupt).
///
/// A thread, not `spawn_blocking`: a read of a terminal cannot be
/// cancelled, and the runtime's drop would wait for a blocking task
/// still in it. Abandoned, the thread is left in its read; it ends at
/// end of input or with this process, which exits right after.
///
/// # Errors
/// `read`'s error; [`CliError::ReadStdin`] when the thread cannot start.
pub(crate) async fn read_off_runtime<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, CliError> + Send + 'static,
) -> Result<T, CliError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("airlock-stdin".into())
        .spawn(move || {
            // The receiver is gone after an interrupt: nothing to tell.
            let _ = tx.send(read());
        })
        .map_err(|source| CliError::ReadStdin { source })?;
    rx.await.unwrap_or_else(|_| {
        Err(CliError::ReadStdin {
            source: std::io::Error::other("the reading thread ended without an answer"),
        })
    })
}

/// Turns `args` into a request off the runtime ([`read_off_runtime`]:
/// reading stdin or the code file blocks); `stop` (an interrupt) ends the
/// wait. Returns the signal when it came first.
async fn read_request<R: Read + Send + 'static>(
    args: RunArgs,
    mut stdin: R,
    stop: impl std::future::Future<Output = Signal>,
) -> Result<Result<RunRequest, CliError>, Signal> {
    tokio::select! {
        read = read_off_runtime(move || args.to_request(&mut stdin)) => Ok(read),
        stop = stop => Err(stop),
    }
}

/// Runs `airlock run`; returns the exit status.
pub async fn run(args: RunArgs, interrupts: &mut Interrupts) -> i32 {
    let request = match read_request(args.clone(), std::io::stdin(), interrupts.first()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            process::report(
                e,
                Detail::FirstLine {
                    debug: args.flags.debug,
                },
            );
            return EXIT_AIRLOCK_FAILED;
        }
        Err(stop) => {
            eprintln!("airlock: interrupted ({stop}) while reading the code");
            return exit_status(stop);
        }
    };
    let config = Config {
        ca_bundle: args
            .ca_bundle
            .clone()
            .map_or_else(Default::default, CaBundle::File),
        ..args.flags.config()
    };
    let run_dir = config.run_dir.clone();
    let started = tokio::select! {
        started = Scheduler::start(config) => started,
        stop = interrupts.first() => {
            // The start-up future is dropped: the probes' children with it
            // (kill_on_drop), the manager's processes with its registry;
            // this process's overlay pool dir, if made, is removed.
            let _ = tokio::task::spawn_blocking(move || airlock::VmManager::remove_own_pool_dirs(&run_dir)).await;
            eprintln!("airlock: interrupted ({stop}) while starting: nothing was left behind");
            return exit_status(stop);
        }
    };
    let scheduler = match started {
        Ok(s) => s,
        Err(e) => {
            process::report(
                e,
                Detail::FirstLine {
                    debug: args.flags.debug,
                },
            );
            return EXIT_AIRLOCK_FAILED;
        }
    };
    let show_progress = !args.flags.quiet && !args.json && std::io::stderr().is_terminal();
    let results =
        (!args.json).then(|| ResultWriter::new(args.output.output_dir.clone(), args.flags.quiet));
    let mut observer = Terminal::new(show_progress, results, request.language());
    let result = tokio::select! {
        result = scheduler.run_observed(request, &mut observer) => result,
        stop = interrupts.first() => {
            observer.clear_progress();
            // Dropping the run handed its VM (or half-built VM) to the
            // reaper, which SIGKILLs its machines and removes its files;
            // the shutdown waits for that, and kills what is still
            // registered once it has given up. A second interrupt
            // meanwhile forces (`process.rs`).
            let stragglers = scheduler.shutdown().await;
            eprintln!(
                "airlock: interrupted ({stop}): the VM was stopped and its files removed{}",
                if stragglers == 0 { String::new() } else { format!(" ({stragglers} processes killed)") }
            );
            return exit_status(stop);
        }
    };
    observer.clear_progress();
    scheduler.shutdown().await;
    match result {
        Ok(result) => {
            let saved = save_downloads(&args, &result).await;
            if args.json {
                match serde_json::to_string_pretty(&result) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("airlock: error: cannot encode the result: {e}");
                        return EXIT_AIRLOCK_FAILED;
                    }
                }
            } else if !args.flags.quiet {
                let t = &result.timings;
                eprintln!(
                    "airlock: exit {}{} in {} ms (boot {} ms, exec {} ms, teardown {} ms)",
                    result.exit_code,
                    if result.timed_out { " (timed out)" } else { "" },
                    t.total_ms,
                    t.overlay_ms + t.spawn_ms + t.guest_ready_ms,
                    t.exec_ms,
                    t.teardown_ms
                );
            }
            if !saved {
                EXIT_AIRLOCK_FAILED
            } else if result.timed_out {
                EXIT_TIMEOUT
            } else {
                result.exit_code
            }
        }
        Err(e) => {
            process::report(
                e,
                Detail::FirstLine {
                    debug: args.flags.debug,
                },
            );
            EXIT_AIRLOCK_FAILED
        }
    }
}

/// Writes each file of `--download` where it was asked (atomically), saying
/// what was saved on stderr; returns whether every one was.
async fn save_downloads(args: &RunArgs, result: &RunResult) -> bool {
    let targets = match args.download_targets() {
        Ok(targets) => targets,
        Err(e) => {
            process::report(
                e,
                Detail::FirstLine {
                    debug: args.flags.debug,
                },
            );
            return false;
        }
    };
    let mut all = true;
    for (target, downloaded) in targets.iter().zip(&result.downloads) {
        let saved = match (&downloaded.content, &downloaded.error) {
            (Some(content), _) => transfer::save_download(target.local.clone(), content.clone())
                .await
                .map_err(|e| e.to_string()),
            (None, error) => Err(error.clone().unwrap_or_else(|| "not read".into())),
        };
        match (saved, &downloaded.info) {
            (Ok(()), Some(info)) if !args.flags.quiet => eprintln!(
                "airlock: downloaded {} -> {} ({} bytes, sha256 {})",
                info.path,
                target.local.display(),
                info.size,
                info.sha256
            ),
            (Ok(()), _) => {}
            (Err(e), _) => {
                all = false;
                eprintln!("airlock: error: download {}: {e}", target.remote);
            }
        }
    }
    all
}

/// Streams output and results to the terminal (without `results`:
/// nothing, for `--json`) and shows a progress line while booting.
struct Terminal {
    progress: bool,
    results: Option<ResultWriter>,
    /// Whether stdout's last chunk left its line unfinished.
    open_line: bool,
    language: Language,
    started: Instant,
    spinner: Option<tokio::task::JoinHandle<()>>,
}

impl Terminal {
    fn new(progress: bool, results: Option<ResultWriter>, language: Language) -> Self {
        Self {
            progress,
            results,
            open_line: false,
            language,
            started: Instant::now(),
            spinner: None,
        }
    }

    fn clear_progress(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

impl RunObserver for Terminal {
    fn stage(&mut self, stage: Stage) {
        match stage {
            Stage::Booting if self.progress => {
                let language = self.language;
                let started = self.started;
                self.spinner = Some(tokio::spawn(async move {
                    const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
                    let mut i = 0;
                    loop {
                        eprint!(
                            "\r\x1b[2K{} booting a {language} VM... {:.1}s",
                            FRAMES[i % FRAMES.len()],
                            started.elapsed().as_secs_f64()
                        );
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }));
            }
            Stage::BuildingTemplate if self.progress => {
                eprintln!(
                    "airlock: building the {} memory template for this shape (once; later runs restore it)...",
                    self.language
                );
            }
            Stage::InstallingPackages if self.progress => {
                eprintln!(
                    "airlock: installing the packages into a layer (once per list; later runs attach it)..."
                );
            }
            Stage::Running | Stage::TearingDown => self.clear_progress(),
            Stage::Booting | Stage::BuildingTemplate | Stage::InstallingPackages => {}
        }
    }

    fn exposed(&mut self, ports: &[ExposedAddr]) {
        self.clear_progress();
        for port in ports {
            eprintln!(
                "airlock: guest port {} is served at {}",
                port.guest_port, port.host
            );
        }
    }

    fn output(&mut self, stream: OutputStream, bytes: &[u8]) {
        if self.results.is_some() {
            if stream == OutputStream::Stdout && !bytes.is_empty() {
                self.open_line = !bytes.ends_with(b"\n");
            }
            write_output(stream, bytes);
        }
    }

    fn result(&mut self, result: &airlock_protocol::ExecResult) {
        self.clear_progress();
        if let Some(text) = self.results.as_mut().and_then(|w| w.show(result)) {
            write_result_text(&mut self.open_line, &text);
        }
    }
}

/// Prints a result's text on stdout, on a line of its own.
pub(crate) fn write_result_text(open_line: &mut bool, text: &str) {
    let text = if std::mem::take(open_line) {
        format!("\n{text}")
    } else {
        text.to_owned()
    };
    write_output(OutputStream::Stdout, text.as_bytes());
}

/// Writes a chunk of the guest's output to our stdout or stderr, flushed.
/// A closed stdout (e.g. `| head`) must not abort a run or a session: a
/// failed write is ignored.
pub(crate) fn write_output(stream: OutputStream, bytes: &[u8]) {
    let _ = match stream {
        OutputStream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        }
        OutputStream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(bytes).and_then(|()| err.flush())
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> RunArgs {
        let mut argv = vec!["airlock", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn code_argument_defaults_to_python() {
        let r = parse(&["print(1)"])
            .to_request(&mut std::io::empty())
            .unwrap();
        assert_eq!(r.language(), Language::Python);
        assert_eq!(r.code, "print(1)");
    }

    #[test]
    fn the_data_image_alone_runs_python_on_its_disk() {
        let r = parse(&["--image", "python-data", "import pandas"])
            .to_request(&mut std::io::empty())
            .unwrap();
        assert_eq!(r.language(), Language::Python);
        assert_eq!(r.spec.image(), airlock::Image::PythonData);
        let raw = parse(&["--image", "raw", "echo 1"])
            .to_request(&mut std::io::empty())
            .unwrap();
        assert_eq!(raw.language(), Language::Raw, "an image picks its language");
    }

    #[test]
    fn repeated_dash_c_lines_are_joined() {
        let r = parse(&["-l", "raw", "-c", "echo a", "-c", "echo b"])
            .to_request(&mut std::io::empty())
            .unwrap();
        assert_eq!(r.code, "echo a\necho b");
        assert_eq!(r.language(), Language::Raw);
    }

    #[test]
    fn a_file_argument_is_read_and_its_extension_picks_the_language() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hello.js");
        std::fs::write(&file, "console.log(1)").unwrap();
        let r = parse(&[file.to_str().unwrap()])
            .to_request(&mut std::io::empty())
            .unwrap();
        assert_eq!(r.language(), Language::Javascript);
        assert_eq!(r.code, "console.log(1)");
    }

    #[test]
    fn stdin_is_read_without_code_arguments() {
        let r = parse(&["-l", "js"])
            .to_request(&mut "console.log(2)".as_bytes())
            .unwrap();
        assert_eq!(r.code, "console.log(2)");
    }

    #[test]
    fn options_map_to_the_request() {
        let r = parse(&[
            "-t", "2.5", "-m", "256", "--cpus", "2", "-e", "A=1", "-e", "B=x=y", "1",
        ])
        .to_request(&mut std::io::empty())
        .unwrap();
        assert_eq!(r.timeout, Duration::from_millis(2500));
        assert_eq!((r.spec.shape.memory_mib, r.spec.shape.vcpus), (256, 2));
        assert_eq!(r.env.get("B").map(String::as_str), Some("x=y"));
    }

    #[test]
    fn bad_input_fails_before_any_vm_with_the_field_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["-l", "cobol", "x"], "language"),
            (&[""], "code"),
            (&["-m", "1", "x"], "memory_mib"),
            (&["-l", "js", "--image", "python-data", "x"], "image"),
            (
                &["--image", "python-data", "--packages", "six==1.16.0", "x"],
                "packages",
            ),
            (&["-t", "0", "x"], "timeout"),
            (&["-t", "nan", "x"], "timeout"),
            (&["-e", "NOEQUALS", "x"], "env"),
            (&["-e", "1BAD=v", "x"], "env"),
            (&["-c", "a", "b"], "code"),
            (&["--allow-domain", "bad..name", "x"], "network"),
            (&["--allow-domain", "*.*.example.com", "x"], "network"),
            (&["--expose", "0", "x"], "network"),
            (&["--expose", "70000", "x"], "network"),
            (
                &["--expose", "80:8080", "--expose", "81:8080", "x"],
                "network",
            ),
        ];
        for (args, field) in cases {
            match parse(args).to_request(&mut std::io::empty()) {
                Err(e) => assert_eq!(e.invalid_field(), Some(*field), "{args:?}: {e:?}"),
                Ok(r) => panic!("{args:?}: expected a refused argument, got {r:?}"),
            }
        }
    }

    #[test]
    fn network_flags_map_to_modes_and_defaults() {
        use airlock_gvproxy::NetworkMode;
        let none = parse(&["x"]).to_request(&mut std::io::empty()).unwrap();
        assert_eq!(none.spec.network.mode(), NetworkMode::None);
        let ports = parse(&["--expose", "8080", "x"])
            .to_request(&mut std::io::empty())
            .unwrap();
        assert_eq!(ports.spec.network.mode(), NetworkMode::Ports);
        let py = parse(&["--network", "x"])
            .to_request(&mut std::io::empty())
            .unwrap();
        let names: Vec<String> = py
            .spec
            .network
            .allow
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(names, ["pypi.org", "files.pythonhosted.org"]);
        let raw = parse(&["-l", "raw", "--network", "x"])
            .to_request(&mut std::io::empty())
            .unwrap();
        assert_eq!(
            raw.spec.network.mode(),
            NetworkMode::None,
            "raw has no default domains"
        );
        let one = parse(&["--allow-domain", "*.Example.com", "x"])
            .to_request(&mut std::io::empty())
            .unwrap();
        assert_eq!(one.spec.network.mode(), NetworkMode::Allowlist);
    }

    /// Stdin that blocks until `release` is dropped (like a terminal
    /// nobody types into), then ends.
    struct HeldStdin(std::sync::mpsc::Receiver<()>);

    impl Read for HeldStdin {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(0)
        }
    }

    // One runtime thread: a read blocking it would stop the timer below.
    #[tokio::test(flavor = "current_thread")]
    async fn an_interrupt_while_stdin_is_read_stops_the_wait() {
        let (release, held) = std::sync::mpsc::channel();
        let stop = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Signal::SIGINT
        };
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            read_request(parse(&["-l", "raw"]), HeldStdin(held), stop),
        )
        .await;
        drop(release);
        assert!(
            matches!(read, Ok(Err(Signal::SIGINT))),
            "{:?}",
            read.map(|r| r.map(|_| ()))
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stdin_read_off_the_runtime_gives_the_request() {
        let read = read_request(
            parse(&["-l", "raw"]),
            std::io::Cursor::new(b"echo 3".to_vec()),
            std::future::pending(),
        )
        .await;
        let request = read.unwrap().unwrap();
        assert_eq!(request.code, "echo 3");
        assert_eq!(request.language(), Language::Raw);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_bad_request_read_off_the_runtime_is_its_error() {
        let read = read_request(
            parse(&["-t", "0", "x"]),
            std::io::empty(),
            std::future::pending(),
        )
        .await;
        match read {
            Ok(Err(e)) => assert_eq!(e.invalid_field(), Some("timeout"), "{e:?}"),
            other => panic!(
                "expected a refused timeout, got {:?}",
                other.map(|r| r.map(|_| ()))
            ),
        }
    }

    #[test]
    fn code_that_mentions_a_file_is_still_code() {
        assert!(!looks_like_file("print(open('/etc/x').read())"));
        assert!(looks_like_file("script.py"));
        assert!(looks_like_file("./run"));
    }
}
