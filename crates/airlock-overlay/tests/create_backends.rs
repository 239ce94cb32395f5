//! Measurement behind the choice of `qemu-img create` over a long-lived
//! `qemu-storage-daemon` driven over QMP (see the crate docs). Run with
//! `cargo test -p airlock-overlay --release --test create_backends -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use airlock_overlay::LatencySummary;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::process::Command;

const CREATES: usize = 50;
const SIZE_BYTES: u64 = 16 * 1024 * 1024;

struct Qmp {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    async fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await.unwrap();
        loop {
            let message = self.next().await;
            assert!(message.get("error").is_none(), "{command}: {message}");
            if let Some(ret) = message.get("return") {
                return ret.clone();
            }
        }
    }

    /// Waits for a job to conclude, checks it succeeded, dismisses it.
    async fn finish_job(&mut self, id: &str) {
        loop {
            let message = self.next().await;
            if message["event"] == "JOB_STATUS_CHANGE"
                && message["data"]["id"] == id
                && message["data"]["status"] == "concluded"
            {
                break;
            }
        }
        let jobs = self.execute("query-jobs", json!({})).await;
        let job = jobs.as_array().unwrap().iter().find(|j| j["id"] == id);
        assert!(job.unwrap().get("error").is_none(), "{job:?}");
        self.execute("job-dismiss", json!({ "id": id })).await;
    }
}

async fn create_with_daemon(qmp: &mut Qmp, base: &Path, out: &Path) {
    let out = out.to_str().unwrap();
    qmp.execute(
        "blockdev-create",
        json!({ "job-id": "file", "options": { "driver": "file", "filename": out, "size": 0 } }),
    )
    .await;
    qmp.finish_job("file").await;
    qmp.execute(
        "blockdev-add",
        json!({ "driver": "file", "node-name": "out", "filename": out }),
    )
    .await;
    qmp.execute(
        "blockdev-create",
        json!({ "job-id": "fmt", "options": {
            "driver": "qcow2", "file": "out", "size": SIZE_BYTES,
            "backing-file": base.to_str().unwrap(), "backing-fmt": "qcow2",
            "cluster-size": 65536, "lazy-refcounts": true,
        } }),
    )
    .await;
    qmp.finish_job("fmt").await;
    qmp.execute("blockdev-del", json!({ "node-name": "out" }))
        .await;
}

async fn create_with_qemu_img(base: &Path, out: &Path) {
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .args(["-o", "cluster_size=65536,lazy_refcounts=on"])
        .arg(out)
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check: run explicitly"]
async fn compare_qemu_img_with_qemu_storage_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg(SIZE_BYTES.to_string())
        .status()
        .await
        .unwrap();
    assert!(made.success());

    let mut samples = Vec::new();
    for i in 0..CREATES {
        let start = Instant::now();
        create_with_qemu_img(&base, &dir.path().join(format!("img-{i}.qcow2"))).await;
        samples.push(start.elapsed());
    }
    println!(
        "qemu-img create:       {:?}",
        LatencySummary::from_samples(&samples)
    );

    let socket = dir.path().join("qsd.sock");
    let started = Instant::now();
    let mut daemon = Command::new("qemu-storage-daemon")
        .arg("--chardev")
        .arg(format!(
            "socket,id=qmp,path={},server=on,wait=off",
            socket.display()
        ))
        .args(["--monitor", "chardev=qmp"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stream = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(stream) = UnixStream::connect(&socket).await {
                break stream;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    let (read, writer) = stream.into_split();
    let mut qmp = Qmp {
        lines: BufReader::new(read).lines(),
        writer,
    };
    qmp.next().await; // greeting
    qmp.execute("qmp_capabilities", json!({})).await;
    println!("qemu-storage-daemon start: {:?}", started.elapsed());

    let mut samples = Vec::new();
    for i in 0..CREATES {
        let start = Instant::now();
        create_with_daemon(&mut qmp, &base, &dir.path().join(format!("qsd-{i}.qcow2"))).await;
        samples.push(start.elapsed());
    }
    println!(
        "qemu-storage-daemon:   {:?}",
        LatencySummary::from_samples(&samples)
    );
    daemon.kill().await.unwrap();

    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(dir.path().join("qsd-0.qcow2"))
        .output()
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["backing-filename"], base.to_str().unwrap());
}
