//! `wasi:cli/stderr` for a guest: kept, never passed to the host's own
//! stderr. Inherited, a guest's stderr went to the host's as written: a
//! hostile guest could clear the operator's terminal, or write lines that
//! read as `run`'s own log lines (another tenant's tick, a stop). What it
//! writes is kept instead (the first [`MAX_STDERR_BYTES`]; the rest counted)
//! and shown cleaned, where the host reports the tick: a warning of its
//! report, or the end of its error's message (a panicking component's
//! message is how its failure is understood).

use crate::guest_text;
use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The most bytes of a guest's stderr kept per tick (a panic's message
/// fits); what it writes beyond is counted, not kept.
pub const MAX_STDERR_BYTES: usize = 4096;

/// What one instance wrote to its stderr. Clones share it: the host reads
/// it after the instance is gone.
#[derive(Clone, Default)]
pub struct GuestStderr(Arc<Mutex<Kept>>);

#[derive(Default)]
struct Kept {
    bytes: Vec<u8>,
    dropped: u64,
}

impl GuestStderr {
    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keep(&self, bytes: &[u8]) {
        let mut kept = self.kept();
        let room = MAX_STDERR_BYTES.saturating_sub(kept.bytes.len()).min(bytes.len());
        kept.bytes.extend_from_slice(&bytes[..room]);
        kept.dropped = kept.dropped.saturating_add((bytes.len() - room) as u64);
    }

    /// What the guest wrote, as the host shows it (one bounded, inert line),
    /// or `None` when it wrote nothing.
    pub fn text(&self) -> Option<String> {
        let kept = self.kept();
        let text = String::from_utf8_lossy(&kept.bytes);
        let text = text.trim();
        if text.is_empty() && kept.dropped == 0 {
            return None;
        }
        let more = match kept.dropped {
            0 => String::new(),
            n => format!(" ({n} more bytes not kept)"),
        };
        Some(format!("{}{more}", guest_text::message(text)))
    }
}

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    /// Kept as each write arrives: nothing is in flight when the host reads.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestStderr {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    /// Always room: what is past the bound is dropped, never refused, so a
    /// guest's panic message is never the cause of another failure.
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_STDERR_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStderr {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestStderr {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.keep(buf);
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
    fn what_a_guest_writes_is_kept_bounded_and_shown_inert() {
        let stderr = GuestStderr::default();
        assert_eq!(stderr.text(), None, "nothing written");
        let mut stream = stderr.p2_stream();
        stream
            .write(Bytes::from_static(b"\x1b[2J\ntime=2026-01-01T00:00:00Z level=info tenant=other msg=tick\n"))
            .unwrap();
        assert_eq!(stderr.text().unwrap(), "\\u{1b}[2J time=2026-01-01T00:00:00Z level=info tenant=other msg=tick");
        for _ in 0..100 {
            stream.write(Bytes::from(vec![b'x'; 1000])).unwrap();
        }
        assert_eq!(stream.check_write().unwrap(), MAX_STDERR_BYTES, "never refused");
        let text = stderr.text().unwrap();
        assert!(text.ends_with(" more bytes not kept)"), "{text}");
        assert!(text.chars().count() < guest_text::MAX_MESSAGE_CHARS + 50, "{}", text.len());
    }
}
