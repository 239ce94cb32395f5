//! A session file as a response body, streamed from the guest as it is
//! read: the server holds about one chunk
//! ([`FILE_CHUNK_BYTES`]) of it, whatever its size.
//!
//! The read runs in a task that writes into a pipe; the response waits
//! for the first chunk to fill (or for the read to end) before it picks
//! its status, so a refusal (not found, busy, over the cap: the guest
//! tells the size when it opens the file) is an error answer, never a
//! 200 cut short. Then:
//! - a file that fits in the first chunk is answered whole, with
//!   `content-length` and its `x-sha256` header;
//! - a larger one is streamed (chunked), its sha256 sent as the
//!   `x-sha256` trailer once both sides agreed on it; a failure after the
//!   first chunk (the guest died, the checksums differ) cuts the
//!   response, so a client never takes a partial file for a whole one.
//!
//! The task is owned by the body: a client that goes away ends the read
//! (the guest is told to stop sending).

use crate::error::ServerError;
use airlock::FileInfo;
use airlock_protocol::client::FILE_CHUNK_BYTES;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body::Frame;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;

/// The header (or trailer) carrying the file's sha256 in hex.
const SHA256_HEADER: &str = "x-sha256";

type Read = Result<FileInfo, ServerError>;

/// Answers with the file `read` writes into the pipe it is given.
///
/// # Errors
/// `read`'s error when it fails before the first chunk is full (or the
/// file ends); an internal error when its task panics.
pub(crate) async fn respond<F, Fut>(read: F) -> Result<Response, ServerError>
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: Future<Output = Read> + Send + 'static,
{
    let (sink, mut pipe) = tokio::io::duplex(FILE_CHUNK_BYTES);
    let mut task = TaskGuard(tokio::spawn(read(sink)));
    let mut first = BytesMut::with_capacity(FILE_CHUNK_BYTES);
    // Read until the first chunk is full or the pipe ends (the task has
    // ended then: it owned the writing half).
    while first.len() < FILE_CHUNK_BYTES {
        let n = pipe
            .read_buf(&mut first)
            .await
            .map_err(|e| ServerError::internal("read the file pipe", e))?;
        if n == 0 {
            let info = task.finish().await?;
            return Ok(whole(first.freeze(), &info));
        }
    }
    let body = FileBody {
        first: Some(first.freeze()),
        pipe: Some(pipe),
        buf: BytesMut::new(),
        task: Some(task),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::TRAILER, SHA256_HEADER),
        ],
        Body::new(body),
    )
        .into_response())
}

/// A file that fitted in the first chunk: answered whole.
fn whole(bytes: Bytes, info: &FileInfo) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (HeaderName::from_static(SHA256_HEADER), info.sha256.clone()),
        ],
        bytes,
    )
        .into_response()
}

/// The read's task, aborted when dropped (the client went away).
struct TaskGuard(JoinHandle<Read>);

impl TaskGuard {
    async fn finish(&mut self) -> Read {
        joined((&mut self.0).await)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn joined(result: Result<Read, tokio::task::JoinError>) -> Read {
    result.unwrap_or_else(|e| Err(ServerError::internal("join the file read task", e)))
}

/// The body of a file larger than one chunk.
struct FileBody {
    first: Option<Bytes>,
    /// `None` once it ended.
    pipe: Option<DuplexStream>,
    buf: BytesMut,
    /// `None` once it ended and its result was sent.
    task: Option<TaskGuard>,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if let Some(pipe) = this.pipe.as_mut() {
            if this.buf.len() < FILE_CHUNK_BYTES {
                this.buf.resize(FILE_CHUNK_BYTES, 0);
            }
            let mut read = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(pipe).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n > 0 {
                let chunk = this.buf.split_to(n).freeze();
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            this.pipe = None;
        }
        let Some(task) = this.task.as_mut() else {
            return Poll::Ready(None);
        };
        let result = joined(ready!(Pin::new(&mut task.0).poll(cx)));
        this.task = None;
        match result {
            Ok(info) => {
                let mut trailers = HeaderMap::new();
                if let Ok(value) = HeaderValue::from_str(&info.sha256) {
                    trailers.insert(HeaderName::from_static(SHA256_HEADER), value);
                }
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            // Cut the response: what was sent is not the file.
            Err(e) => Poll::Ready(Some(Err(std::io::Error::other(e.to_string())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_sys_util::sha256_hex;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    fn info(content: &[u8]) -> FileInfo {
        FileInfo {
            path: "f".into(),
            size: content.len() as u64,
            sha256: sha256_hex(content),
        }
    }

    async fn written(content: Vec<u8>, fail_after: bool) -> Result<Response, ServerError> {
        respond(move |mut sink| async move {
            for chunk in content.chunks(10_000) {
                sink.write_all(chunk)
                    .await
                    .map_err(|e| ServerError::internal("write", e))?;
            }
            if fail_after {
                return Err(ServerError::internal("read", "the guest died"));
            }
            Ok(info(&content))
        })
        .await
    }

    #[tokio::test]
    async fn a_file_within_one_chunk_is_answered_whole_with_its_sha256_header() {
        let content = vec![9u8; 1000];
        let response = written(content.clone(), false).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[SHA256_HEADER],
            sha256_hex(&content).as_str()
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, content);
    }

    #[tokio::test]
    async fn a_larger_file_is_streamed_with_its_sha256_as_a_trailer() {
        let content: Vec<u8> = (0..FILE_CHUNK_BYTES * 3 + 17)
            .map(|i| (i % 253) as u8)
            .collect();
        let response = written(content.clone(), false).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().get(SHA256_HEADER).is_none());
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers[SHA256_HEADER], sha256_hex(&content).as_str());
        assert_eq!(collected.to_bytes(), content);
    }

    #[tokio::test]
    async fn a_failure_before_the_first_chunk_is_an_error_answer_not_a_200() {
        let err = written(vec![1u8; 500], true).await.unwrap_err();
        assert!(err.to_string().contains("the guest died"), "{err}");
    }

    #[tokio::test]
    async fn a_failure_after_the_first_chunk_cuts_the_body() {
        let response = written(vec![1u8; FILE_CHUNK_BYTES * 2], true)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let err = response.into_body().collect().await.unwrap_err();
        assert!(err.to_string().contains("the guest died"), "{err}");
    }

    #[tokio::test]
    async fn a_client_that_goes_away_ends_the_read() {
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let response = respond(move |mut sink| async move {
            // Holds `ended_tx` until aborted.
            let _ended = ended_tx;
            loop {
                sink.write_all(&[0u8; 4096])
                    .await
                    .map_err(|e| ServerError::internal("write", e))?;
            }
        })
        .await
        .unwrap();
        drop(response);
        // The task was aborted: its end dropped the sender.
        tokio::time::timeout(std::time::Duration::from_secs(5), ended_rx)
            .await
            .expect("the read task outlived its response")
            .unwrap_err();
    }
}
