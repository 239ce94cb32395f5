//! Throughput of one spliced connection on loopback, for `cargo xtask bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::config::EgressConfig;
use super::proxy::EgressProxy;
use super::resolver::StaticResolver;
use super::sni::build::{client_hello, HelloSpec};
use crate::EgressError;

/// Name the measurement's ClientHello asks for.
const BENCH_NAME: &str = "bench.test";
/// Chunk the upstream writes and the client reads.
const CHUNK_BYTES: usize = 256 * 1024;

/// Sends `total_bytes` from an upstream on 127.0.0.1 through an allowed
/// port-443 connection of a fresh proxy to a client, and returns the rate in
/// MiB/s (the download direction, the one package installs use).
///
/// The client sends a generated ClientHello for `bench.test`; the upstream
/// reads it and then writes zeros. The clock runs from the ClientHello
/// write to the last byte received, so it includes the proxy's checks and
/// connect (negligible for large `total_bytes`). Everything runs on the
/// current tokio runtime; use a multi-threaded one and a release build for
/// meaningful numbers. The deadline is generous: 60 s plus 1 s per 10 MiB.
pub async fn measure_throughput(total_bytes: u64) -> Result<f64, EgressError> {
    let deadline = Duration::from_secs(60 + total_bytes / (10 * 1024 * 1024));
    match tokio::time::timeout(deadline, run(total_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(failed(
            "waiting for the transfer",
            std::io::ErrorKind::TimedOut.into(),
        )),
    }
}

fn failed(step: &'static str, source: std::io::Error) -> EgressError {
    EgressError::Measurement { step, source }
}

async fn run(total_bytes: u64) -> Result<f64, EgressError> {
    let hello = client_hello(&HelloSpec {
        server_name: Some(BENCH_NAME.as_bytes().to_vec()),
        ..HelloSpec::default()
    });
    let loopback = |step| async move {
        TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| failed(step, e))
    };
    let upstream = loopback("binding the upstream").await?;
    let upstream_addr = upstream
        .local_addr()
        .map_err(|e| failed("binding the upstream", e))?;

    let std_listener = |step| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| failed(step, e))?;
        Ok::<_, EgressError>(listener)
    };
    let config = EgressConfig {
        vm_id: "bench".into(),
        allow: Arc::new(|name| name == BENCH_NAME),
        resolver: Arc::new(StaticResolver::new().with(BENCH_NAME, [upstream_addr])),
        allow_private_for_tests: true,
        ..EgressConfig::default()
    };
    let proxy = EgressProxy::serve(
        std_listener("binding port 80")?,
        std_listener("binding port 443")?,
        config,
    )?;

    let hello_len = hello.len();
    let server = tokio::spawn(async move {
        let (mut conn, _) = upstream
            .accept()
            .await
            .map_err(|e| failed("accepting upstream", e))?;
        let mut received = vec![0u8; hello_len];
        conn.read_exact(&mut received)
            .await
            .map_err(|e| failed("reading the ClientHello", e))?;
        let chunk = vec![0u8; CHUNK_BYTES];
        let mut left = total_bytes;
        while left > 0 {
            let n = usize::try_from(left.min(CHUNK_BYTES as u64)).unwrap_or(CHUNK_BYTES);
            conn.write_all(&chunk[..n])
                .await
                .map_err(|e| failed("writing upstream", e))?;
            left -= n as u64;
        }
        conn.shutdown()
            .await
            .map_err(|e| failed("closing upstream", e))
    });

    let mut client = tokio::net::TcpStream::connect(proxy.https_addr())
        .await
        .map_err(|e| failed("connecting to the proxy", e))?;
    let started = Instant::now();
    client
        .write_all(&hello)
        .await
        .map_err(|e| failed("sending the ClientHello", e))?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut received = 0u64;
    while received < total_bytes {
        match client
            .read(&mut buf)
            .await
            .map_err(|e| failed("reading through the proxy", e))?
        {
            0 => break,
            n => received += n as u64,
        }
    }
    let elapsed = started.elapsed();
    proxy.stop().await;
    server
        .await
        .map_err(|e| failed("joining the upstream task", std::io::Error::other(e)))??;
    if received < total_bytes {
        return Err(failed(
            "reading through the proxy",
            std::io::ErrorKind::UnexpectedEof.into(),
        ));
    }
    let mib = total_bytes as f64 / (1024.0 * 1024.0);
    Ok(mib / elapsed.as_secs_f64().max(f64::EPSILON))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_measurement_completes_with_a_positive_rate() {
        let rate = measure_throughput(8 * 1024 * 1024)
            .await
            .expect("measurement runs");
        assert!(rate > 0.0);
    }
}
