//! Streams an upload into a sandbox's home directory without holding it in memory. The file
//! appears atomically when complete; a failed upload leaves the previous file as it was. The
//! chunks come from any stream (an HTTP body, a multipart part), so every front end writes
//! files the same way.

use std::io::{self, Read};

use codebox::HomeDir;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::SandboxError;

/// Writes `body` to `path` in `home`, refusing more than `limit` bytes. `expected_len` is the
/// announced size (0 when unknown).
pub(crate) async fn write_stream<B, E>(
    home: HomeDir,
    path: String,
    body: impl Stream<Item = Result<B, E>> + Send + Unpin,
    expected_len: u64,
    limit: u64,
) -> Result<(), SandboxError>
where
    B: AsRef<[u8]> + Send + 'static,
    E: std::fmt::Display,
{
    if expected_len > limit {
        return Err(SandboxError::UploadTooLarge { limit });
    }
    let (tx, rx) = mpsc::channel::<io::Result<B>>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            current: None,
            offset: 0,
        };
        home.write_from(&path, &mut reader, expected_len)
    });
    let mut body = body;
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let item = match chunk {
            Ok(bytes) => {
                total += bytes.as_ref().len() as u64;
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
            Err(SandboxError::UploadTooLarge { limit })
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(SandboxError::Internal(e.to_string())),
    }
}

/// Reads the chunks the async side sends.
struct ChannelReader<B> {
    rx: mpsc::Receiver<io::Result<B>>,
    current: Option<B>,
    /// How much of `current` was read.
    offset: usize,
}

impl<B: AsRef<[u8]>> Read for ChannelReader<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(chunk) = &self.current {
                let rest = &chunk.as_ref()[self.offset..];
                if !rest.is_empty() {
                    let n = buf.len().min(rest.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.offset += n;
                    return Ok(n);
                }
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.current = Some(chunk);
                    self.offset = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_are_joined_and_the_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let home = HomeDir::new(dir.path(), 1 << 20).unwrap();
        let chunks = || {
            futures_util::stream::iter(
                ["ab", "", "cde"].map(|c| Ok::<_, std::convert::Infallible>(c.as_bytes())),
            )
        };
        write_stream(home.clone(), "f.txt".into(), chunks(), 0, 5)
            .await
            .unwrap();
        assert_eq!(home.read("f.txt").unwrap(), b"abcde");
        let refused = write_stream(home.clone(), "f.txt".into(), chunks(), 0, 4).await;
        assert!(matches!(
            refused,
            Err(SandboxError::UploadTooLarge { limit: 4 })
        ));
        let announced = write_stream(home.clone(), "g.txt".into(), chunks(), 9, 5).await;
        assert!(matches!(
            announced,
            Err(SandboxError::UploadTooLarge { limit: 5 })
        ));
        assert_eq!(home.read("f.txt").unwrap(), b"abcde");
    }
}
