//! Guest stdout/stderr: captured per execution, capped, and forwarded live to a callback.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::async_trait;
use wasmtime_wasi_io::bytes::Bytes;
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamResult};

use crate::execution::Stream;

/// Receives output chunks as the guest writes them. Chunks are whole UTF-8 text (a character
/// split across two writes is held back until it is complete). Called on the executing
/// thread: keep it quick (push into a channel, for example).
pub type OutputCallback = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// The state both streams of one context write into; reset for every execution.
#[derive(Default)]
pub(crate) struct Capture {
    stdout: StreamBuf,
    stderr: StreamBuf,
    limit: usize,
    on_output: Option<OutputCallback>,
}

#[derive(Default)]
struct StreamBuf {
    text: String,
    /// Bytes of an incomplete UTF-8 character at the end of the last write.
    partial: Vec<u8>,
    truncated: bool,
}

/// What one execution wrote.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

pub(crate) type SharedCapture = Arc<Mutex<Capture>>;

/// Starts capturing one execution (or start-up turn) of at most `limit` bytes per stream.
pub(crate) fn start(capture: &SharedCapture, limit: usize) {
    start_streaming(capture, limit, None);
}

/// Like [`start`], forwarding each chunk to `on_output` as it is written.
pub(crate) fn start_streaming(
    capture: &SharedCapture,
    limit: usize,
    on_output: Option<OutputCallback>,
) {
    crate::sync::lock(capture).start(limit, on_output);
}

/// Ends the capture and returns what was written.
pub(crate) fn finish(capture: &SharedCapture) -> Captured {
    crate::sync::lock(capture).finish()
}

impl Capture {
    pub(crate) fn start(&mut self, limit: usize, on_output: Option<OutputCallback>) {
        *self = Capture {
            limit,
            on_output,
            ..Capture::default()
        };
    }

    pub(crate) fn finish(&mut self) -> Captured {
        for stream in [Stream::Stdout, Stream::Stderr] {
            // A dangling partial character at the very end becomes U+FFFD.
            if !self.buf(stream).partial.is_empty() {
                self.buf(stream).partial.clear();
                self.push_text(stream, "\u{FFFD}");
            }
        }
        self.on_output = None;
        let stdout = std::mem::take(&mut self.stdout);
        let stderr = std::mem::take(&mut self.stderr);
        Captured {
            stdout: stdout.text,
            stderr: stderr.text,
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
        }
    }

    fn buf(&mut self, stream: Stream) -> &mut StreamBuf {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    /// Appends raw guest bytes; returns the text to forward to the callback.
    fn write(&mut self, stream: Stream, bytes: &[u8]) -> String {
        let mut pending = std::mem::take(&mut self.buf(stream).partial);
        pending.extend_from_slice(bytes);
        let mut text = String::new();
        let mut rest = &pending[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).expect("valid prefix"));
                    match e.error_len() {
                        Some(n) => {
                            text.push('\u{FFFD}');
                            rest = &after[n..];
                        }
                        None => {
                            rest = after; // incomplete character: wait for more bytes
                            break;
                        }
                    }
                }
            }
        }
        self.buf(stream).partial = rest.to_vec();
        self.push_text(stream, &text)
    }

    /// Keeps as much of `text` as the limit allows; returns the part kept.
    fn push_text(&mut self, stream: Stream, text: &str) -> String {
        let limit = self.limit;
        let buf = self.buf(stream);
        if buf.truncated {
            return String::new();
        }
        let room = limit.saturating_sub(buf.text.len());
        let mut keep = text.len().min(room);
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        if keep < text.len() {
            buf.truncated = true;
        }
        buf.text.push_str(&text[..keep]);
        text[..keep].to_string()
    }
}

/// One guest stream (stdout or stderr) writing into a shared [`Capture`].
#[derive(Clone)]
pub(crate) struct GuestStream {
    capture: SharedCapture,
    stream: Stream,
}

impl GuestStream {
    pub(crate) fn new(capture: SharedCapture, stream: Stream) -> GuestStream {
        GuestStream { capture, stream }
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    // Writes land in the capture synchronously. The default adapter would hand every write
    // to a background task and wait for it: two thread switches per `print`.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl GuestStream {
    fn write_now(&self, buf: &[u8]) {
        let (chunk, callback) = {
            let mut capture = crate::sync::lock(&self.capture);
            let chunk = capture.write(self.stream, buf);
            (chunk, capture.on_output.clone())
        };
        if let Some(callback) = callback
            && !chunk.is_empty()
        {
            callback(self.stream, &chunk);
        }
    }
}

/// Largest write the guest is offered at once; the capture takes any size.
const WRITE_PERMIT: usize = 1 << 20;

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        // Past the limit the bytes are dropped but reported as written: the guest goes on.
        self.write_now(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_now(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_utf8_is_joined_and_limit_cuts_on_a_char_boundary() {
        let mut c = Capture::default();
        c.start(5, None);
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(c.write(Stream::Stdout, &euro[..2]), "");
        assert_eq!(c.write(Stream::Stdout, &euro[2..]), "€");
        assert_eq!(c.write(Stream::Stdout, "a€".as_bytes()), "a");
        assert_eq!(c.write(Stream::Stdout, b"more"), "");
        c.write(Stream::Stderr, b"\xffok");
        let out = c.finish();
        assert_eq!(out.stdout, "€a");
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr, "\u{FFFD}ok");
        assert!(!out.stderr_truncated);
    }
}
