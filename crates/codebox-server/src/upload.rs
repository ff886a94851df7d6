//! Streams an upload into a sandbox's home directory without holding it in memory. The file
//! appears atomically when complete; a failed upload leaves the previous file as it was.

use std::io::{self, Read};

use axum::body::Bytes;
use axum::http::StatusCode;
use codebox::HomeDir;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::error::{ApiError, ApiResult};

/// Writes `body` to `path` in `home`, refusing more than `limit` bytes.
pub(crate) async fn write_stream<E: std::fmt::Display>(
    home: HomeDir,
    path: String,
    body: impl Stream<Item = Result<Bytes, E>> + Send + Unpin,
    expected_len: u64,
    limit: u64,
) -> ApiResult<()> {
    if expected_len > limit {
        return Err(too_large(limit));
    }
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        home.write_from(&path, &mut reader, expected_len)
    });
    let mut body = body;
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let item = match chunk {
            Ok(bytes) => {
                total += bytes.len() as u64;
                if total > limit {
                    Err(io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        "upload too large",
                    ))
                } else {
                    Ok(bytes)
                }
            }
            Err(e) => Err(io::Error::other(format!("the upload was interrupted: {e}"))),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            break; // the writer stopped (quota, bad path) or the upload is refused
        }
    }
    drop(tx);
    match writer.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(codebox::Error::Io { source, .. }))
            if source.kind() == io::ErrorKind::FileTooLarge =>
        {
            Err(too_large(limit))
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!("the upload is larger than the {limit}-byte limit"),
    )
}

/// Reads the chunks the async side sends.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
