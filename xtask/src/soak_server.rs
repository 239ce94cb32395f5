//! `cargo xtask soak --server`: the server under load from clients
//! without a key (issue 22's "done when"), on loopback only, bounded in
//! count and time.
//!
//! It starts `airlock serve` with a keys file on 127.0.0.1, then:
//! 1. times a keyed client's runs of `print(1)` (python, the default
//!    template) on a quiet server;
//! 2. opens [`IDLE`] idle connections (from 127.0.0.2-9, under the
//!    per-address cap) and [`SLOW`] clients that send their head a byte a
//!    second (from 127.0.0.10), each reconnecting when the server cuts
//!    it, and times the keyed client's runs again for [`LOAD_S`] seconds
//!    (goal: median <= 2x the quiet one, every run answered);
//! 3. streams 8 MiB of `\xff` to a client that reads nothing for
//!    [`STALL_S`] seconds, sampling the server's RSS (goal: growth <= 64
//!    MiB), then reads the stream to its end.
//!
//! The numbers go to stdout and, with `--write`, to their section of
//! `docs/reliability.md`.

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Idle connections without a key.
const IDLE: usize = 2000;
/// Source addresses of the idle connections (127.0.0.2 on).
const IDLE_SOURCES: usize = 8;
/// Clients sending their head a byte a second.
const SLOW: usize = 200;
/// Seconds of keyed runs under load.
const LOAD_S: u64 = 40;
/// Seconds the stream's client reads nothing.
const STALL_S: u64 = 20;
/// Seconds of keyed runs on the quiet server (the same loop as under
/// load, so the two medians compare).
const QUIET_S: u64 = 20;
/// Goal: run latency under load, as a multiple of the quiet one.
const LATENCY_GOAL: f64 = 2.0;
/// Goal: the server's RSS growth while a client does not read 8 MiB.
const RSS_GOAL_MIB: f64 = 64.0;
/// The heading of this soak's section of `docs/reliability.md`.
pub const SECTION: &str = "## The server under load (`cargo xtask soak --server`)";

/// What the soak measured.
#[derive(Debug, Default)]
struct Numbers {
    quiet_ms: Vec<f64>,
    load_ms: Vec<f64>,
    load_failed: usize,
    peak_open: u64,
    refused: u64,
    closed: String,
    attacker_connects: u64,
    rss_before_mib: f64,
    rss_peak_mib: f64,
    stream_bytes: usize,
    stream_end: String,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the server soak with `airlock` (a built binary).
///
/// # Errors
/// When the server cannot start, a step fails, or a goal is missed.
pub fn run(airlock: &Path, write: bool) -> Result<()> {
    raise_own_nofile(IDLE + SLOW + 512)?;
    let dir = PathBuf::from(format!("/run/airlock-soak-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = soak(airlock, &dir);
    drop(std::fs::remove_dir_all(&dir));
    let numbers = result?;
    let report = render(&numbers);
    eprintln!("{report}");
    if write {
        let path = crate::host::workspace_root()
            .join("docs")
            .join("reliability.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let (before, section) = split_section(&old);
        let after = &old[before.len() + section.map_or(0, str::len)..];
        let mut doc = format!("{}\n\n{report}", before.trim_end());
        if !after.is_empty() {
            doc = format!("{doc}\n{after}");
        }
        std::fs::write(&path, doc).with_context(|| format!("write {}", path.display()))?;
        eprintln!("xtask: wrote {}", path.display());
    }
    let quiet = median(&numbers.quiet_ms);
    let load = median(&numbers.load_ms);
    let growth = numbers.rss_peak_mib - numbers.rss_before_mib;
    if numbers.load_failed > 0 || load > LATENCY_GOAL * quiet || growth > RSS_GOAL_MIB {
        bail!(
            "server soak missed a goal: {} failed run(s) under load, median {load:.0} ms vs {quiet:.0} ms quiet, RSS growth {growth:.1} MiB",
            numbers.load_failed
        );
    }
    Ok(())
}

/// `doc` cut at this soak's section: what comes before it, and the
/// section (to the next `## ` heading or the end), if there is one.
pub fn split_section(doc: &str) -> (&str, Option<&str>) {
    let Some(start) = doc.find(SECTION) else {
        return (doc, None);
    };
    let after = &doc[start + SECTION.len()..];
    let end = after
        .find("\n## ")
        .map_or(doc.len(), |i| start + SECTION.len() + i + 1);
    (&doc[..start], Some(&doc[start..end]))
}

/// Raises this process's descriptor limit to at least `want`.
fn raise_own_nofile(want: usize) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("read RLIMIT_NOFILE")?;
    if hard < want as u64 {
        bail!("the soak needs {want} descriptors; the hard limit is {hard} (ulimit -Hn)");
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raise RLIMIT_NOFILE")?;
    Ok(())
}

/// The server process, ended (SIGTERM, then waited for) when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

fn start_server(airlock: &Path, dir: &Path) -> Result<(Server, String)> {
    let keys = dir.join("keys.toml");
    let out = Command::new(airlock)
        .args(["serve", "keys", "add", "--tenant", "soak", "--keys-file"])
        .arg(&keys)
        .stderr(Stdio::null())
        .output()
        .context("airlock serve keys add")?;
    if !out.status.success() {
        bail!("airlock serve keys add failed");
    }
    let key = String::from_utf8(out.stdout)?.trim().to_owned();
    let mut child = Command::new(airlock)
        .args(["serve", "--listen", "127.0.0.1:0", "--keys-file"])
        .arg(&keys)
        .args([
            "--max-concurrent-vms",
            "2",
            "--quota-requests-per-minute",
            "100000",
        ])
        .env("AIRLOCK_RUN_DIR", dir.join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {} serve", airlock.display()))?;
    let (url, drain) = crate::bench_server::until_listening(&mut child)?;
    let addr = match url.strip_prefix("http://").map(str::parse::<SocketAddr>) {
        Some(Ok(addr)) => addr,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("not a listen address: {url}");
        }
    };
    Ok((
        Server {
            child,
            addr,
            drain: Some(drain),
        },
        key,
    ))
}

fn soak(airlock: &Path, dir: &Path) -> Result<Numbers> {
    let (server, key) = start_server(airlock, dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    let pid = server.child.id();
    let numbers = runtime.block_on(measure(server.addr, &key, pid));
    drop(runtime);
    drop(server);
    numbers
}

async fn measure(addr: SocketAddr, key: &str, pid: u32) -> Result<Numbers> {
    let mut n = Numbers::default();
    let run = r#"{"language": "python", "code": "print(1)"}"#;
    // Warm-up: the template and the pool.
    for _ in 0..2 {
        request(addr, "POST", "/v1/runs", key, run, "").await?;
    }
    eprintln!("xtask: soak --server: quiet runs");
    let mut quiet_failed = 0;
    keyed_runs(
        addr,
        key,
        QUIET_S,
        &mut n.quiet_ms,
        &mut quiet_failed,
        &mut 0,
    )
    .await;
    if quiet_failed > 0 {
        bail!("{quiet_failed} run(s) failed on the quiet server");
    }
    eprintln!("xtask: soak --server: {IDLE} idle and {SLOW} slow-header clients");
    let stop = tokio::sync::watch::channel(false).0;
    let connects = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..IDLE {
        let source = format!("127.0.0.{}", 2 + i % IDLE_SOURCES);
        attackers.spawn(attacker(
            addr,
            source,
            false,
            stop.clone(),
            connects.clone(),
        ));
    }
    for _ in 0..SLOW {
        attackers.spawn(attacker(
            addr,
            "127.0.0.10".into(),
            true,
            stop.clone(),
            connects.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    keyed_runs(
        addr,
        key,
        LOAD_S,
        &mut n.load_ms,
        &mut n.load_failed,
        &mut n.peak_open,
    )
    .await;
    let _ = stop.send(true);
    while attackers.join_next().await.is_some() {}
    n.attacker_connects = connects.load(std::sync::atomic::Ordering::Relaxed);
    let (_, metrics) = request(addr, "GET", "/metrics", "", "", "").await?;
    n.refused = metrics
        .lines()
        .filter(|l| l.starts_with("airlock_connections_refused_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    n.closed = metrics
        .lines()
        .filter(|l| l.starts_with("airlock_connections_closed_total"))
        .map(|l| l.trim_start_matches("airlock_connections_closed_total"))
        .collect::<Vec<_>>()
        .join(", ");

    eprintln!(
        "xtask: soak --server: 8 MiB of \\xff to a client that reads nothing for {STALL_S} s"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    n.rss_before_mib = rss_mib(pid)?;
    n.rss_peak_mib = n.rss_before_mib;
    let code = r#"{"language": "python", "timeout_s": 120, "code": "import sys\nsys.stdout.buffer.write(b'\\xff' * (8 << 20))\nsys.stdout.flush()"}"#;
    let mut stream = connect(addr, "127.0.0.1").await?;
    let head = format!(
        "POST /v1/runs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{code}",
        code.len()
    );
    stream.write_all(head.as_bytes()).await?;
    let stall_until = Instant::now() + Duration::from_secs(STALL_S);
    while Instant::now() < stall_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        n.rss_peak_mib = n.rss_peak_mib.max(rss_mib(pid)?);
    }
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(300), stream.read_to_end(&mut body))
        .await
        .context("the stream did not end within 300 s once read")??;
    n.stream_bytes = body.len();
    let text = String::from_utf8_lossy(&body);
    n.stream_end = ["cut", "done", "error"]
        .into_iter()
        .filter(|e| {
            text.contains(&format!("event: {e}\n")) || text.contains(&format!("event:{e}\n"))
        })
        .collect::<Vec<_>>()
        .join(" + ");
    Ok(n)
}

/// The keyed client: runs of `print(1)` one after another for `seconds`,
/// each followed by a scrape of `/metrics` (`peak_open`: the most
/// connections open seen).
async fn keyed_runs(
    addr: SocketAddr,
    key: &str,
    seconds: u64,
    latencies_ms: &mut Vec<f64>,
    failed: &mut usize,
    peak_open: &mut u64,
) {
    let run = r#"{"language": "python", "code": "print(1)"}"#;
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        let started = Instant::now();
        match request(addr, "POST", "/v1/runs", key, run, "").await {
            Ok((200, _)) => latencies_ms.push(started.elapsed().as_secs_f64() * 1000.0),
            Ok((status, body)) => {
                eprintln!("xtask: a run answered {status}: {body}");
                *failed += 1;
            }
            Err(e) => {
                eprintln!("xtask: a run failed: {e:#}");
                *failed += 1;
            }
        }
        if let Ok((_, metrics)) = request(addr, "GET", "/metrics", "", "", "").await {
            *peak_open = (*peak_open).max(metric(&metrics, "airlock_connections_open "));
        }
    }
}

/// One client without a key: holds a connection (idle, or sending its
/// head a byte a second), reconnecting when the server closes it, until
/// `stop`.
async fn attacker(
    addr: SocketAddr,
    source: String,
    slow: bool,
    stop: tokio::sync::watch::Sender<bool>,
    connects: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut stopped = stop.subscribe();
    let head = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    loop {
        if *stopped.borrow() {
            return;
        }
        let Ok(mut conn) = connect(addr, &source).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut buf = [0u8; 256];
        let mut sent = 0;
        loop {
            tokio::select! {
                _ = stopped.changed() => return,
                read = conn.read(&mut buf) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        break;
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)), if slow => {
                    let byte = head.get(sent).copied().unwrap_or(b'x');
                    sent += 1;
                    if conn.write_all(&[byte]).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

async fn connect(addr: SocketAddr, source: &str) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    Ok(tokio::time::timeout(Duration::from_secs(10), socket.connect(addr)).await??)
}

/// One request (`Connection: close`), answered within 120 s: the status
/// and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
    accept: &str,
) -> Result<(u16, String)> {
    let mut conn = connect(addr, "127.0.0.1").await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !key.is_empty() {
        let _ = write!(head, "Authorization: Bearer {key}\r\n");
    }
    if !accept.is_empty() {
        let _ = write!(head, "Accept: {accept}\r\n");
    }
    if !body.is_empty() {
        let _ = write!(
            head,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    head.push_str("\r\n");
    head.push_str(body);
    conn.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), conn.read_to_end(&mut answer))
        .await
        .context("no answer within 120 s")??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text:.200}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// A metric's value from the text exposition, 0 when absent.
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// `pid`'s resident set, in MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

fn render(n: &Numbers) -> String {
    let quiet = median(&n.quiet_ms);
    let load = median(&n.load_ms);
    let max_load = n.load_ms.iter().copied().fold(0.0, f64::max);
    let growth = n.rss_peak_mib - n.rss_before_mib;
    let (date, commit) = crate::soak::date_and_commit();
    let mut d = String::new();
    let _ = writeln!(d, "{SECTION}\n");
    let _ = writeln!(
        d,
        "Written by `cargo xtask soak --server --write` on {date} at commit {commit}: `airlock serve` with a keys file on \
         127.0.0.1 (2 VM slots, the default listener limits: header 10 s, idle 60 s, 256 connections per address), a keyed \
         client's python `print(1)` runs, {IDLE} idle connections (from {IDLE_SOURCES} loopback addresses) and {SLOW} \
         clients sending their head a byte a second, all without a key and reconnecting whenever cut, for {LOAD_S} s.\n"
    );
    let _ = writeln!(d, "| measure | value | goal | |");
    let _ = writeln!(d, "|---|---|---|---|");
    let _ = writeln!(
        d,
        "| keyed run, median, quiet ({} runs in {QUIET_S} s) | {quiet:.0} ms | | |",
        n.quiet_ms.len()
    );
    let _ = writeln!(
        d,
        "| keyed run, median under load ({} runs in {LOAD_S} s, max {max_load:.0} ms) | {load:.0} ms ({:.2}x) | <= {LATENCY_GOAL}x | {} |",
        n.load_ms.len(),
        load / quiet,
        crate::bench_server::verdict(load <= LATENCY_GOAL * quiet)
    );
    let _ = writeln!(
        d,
        "| keyed runs failed under load | {} | 0 | {} |",
        n.load_failed,
        crate::bench_server::verdict(n.load_failed == 0)
    );
    let _ = writeln!(
        d,
        "| server RSS growth, 8 MiB of `\\xff` to a client reading nothing for {STALL_S} s | {growth:.1} MiB ({:.1} -> {:.1}) | <= {RSS_GOAL_MIB} MiB | {} |",
        n.rss_before_mib,
        n.rss_peak_mib,
        crate::bench_server::verdict(growth <= RSS_GOAL_MIB)
    );
    let _ = writeln!(
        d,
        "\nUnder load: at most {} connections open at once (sampled), {} attacker connections made in all, {} refused at accept by a cap; closed by a deadline: {}. \
         The stalled stream, read after the stall: {} bytes, ending with `{}`. Both medians come from the same loop of \
         sequential runs (each followed by a scrape of `/metrics`); on this shared 2-core host their noise (other builds, \
         the warm pool refilling) can exceed what the load costs, so a ratio under 1 means no measurable cost.",
        n.peak_open,
        n.attacker_connects,
        n.refused,
        if n.closed.is_empty() { "none".to_owned() } else { n.closed.clone() },
        n.stream_bytes,
        n.stream_end
    );
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_found_and_cut_at_the_next_heading() {
        let doc = format!("# R\n\n## A\n\na\n\n{SECTION}\n\nx\n\n## B\n\nb\n");
        let (before, section) = split_section(&doc);
        assert_eq!(before, "# R\n\n## A\n\na\n\n");
        assert_eq!(section.unwrap(), format!("{SECTION}\n\nx\n\n"));
        assert_eq!(split_section("# R\n").1, None);
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
