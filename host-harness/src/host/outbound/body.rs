//! A response body as the host hands it to the guest: frames pass through
//! as they arrive, never buffered, but a body that goes quiet longer than the
//! between-bytes timeout, or grows past the operator's `response_body_bytes`,
//! ends with an error. The guest reads a stream either way, so a tenant
//! cannot make the host hold or pump more than that ceiling per response.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use wasmtime_wasi_http::Error;

/// `inner`, ended with [`Error::HttpResponseBodySize`] (carrying the
/// ceiling) once it would exceed `limit` bytes.
pub struct CappedBody<B> {
    inner: B,
    limit: u64,
    seen: u64,
    /// Set once the error was returned: the body is over.
    ended: bool,
}

impl<B> CappedBody<B> {
    /// `inner`, at most `limit` bytes of it.
    pub fn new(inner: B, limit: u64) -> CappedBody<B> {
        CappedBody { inner, limit, seen: 0, ended: false }
    }

    fn too_large(&mut self) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.ended = true;
        Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(self.limit)))))
    }
}

impl<B: Body<Data = Bytes, Error = Error> + Unpin> Body for CappedBody<B> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // A Content-Length above the ceiling fails before a byte is read.
        if this.seen == 0 && this.inner.size_hint().lower() > this.limit {
            return this.too_large();
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.limit {
                        return this.too_large();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// hyper's incoming body (as is, or wrapped so that its connection goes
/// back to the pool at its end), ended with [`Error::ConnectionReadTimeout`]
/// when no frame arrives for the between-bytes timeout.
pub struct TimedBody<B = hyper::body::Incoming> {
    incoming: B,
    quiet: tokio::time::Interval,
}

impl<B> TimedBody<B> {
    /// `incoming`, ended once no frame arrives for `between_bytes`.
    pub fn new(incoming: B, between_bytes: Duration) -> TimedBody<B> {
        // tokio's interval panics on zero; a nanosecond is as good as zero.
        let mut quiet = tokio::time::interval(between_bytes.max(Duration::from_nanos(1)));
        quiet.reset();
        TimedBody { incoming, quiet }
    }
}

impl<B: Body<Data = Bytes, Error = hyper::Error> + Unpin> Body for TimedBody<B> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.quiet.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_timeout() => Poll::Ready(Some(Err(Error::HttpResponseTimeout))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.quiet.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A body of chunks whose length is not known beforehand (chunked
    /// transfer encoding), ready at once.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Error;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    /// `chunks` under a ceiling of `limit`, read to their end: the bytes
    /// passed on and the error it ended with, if any.
    async fn read(chunks: &[&'static [u8]], limit: u64) -> (usize, Option<Error>) {
        let mut body = CappedBody::new(Chunks(chunks.iter().map(|c| Bytes::from_static(c)).collect()), limit);
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => bytes += f.into_data().map(|d| d.len()).unwrap_or(0),
                Err(e) => {
                    assert!(body.frame().await.is_none(), "nothing after the error");
                    return (bytes, Some(e));
                }
            }
        }
        (bytes, None)
    }

    #[tokio::test]
    async fn a_body_within_the_ceiling_passes_whole() {
        assert!(matches!(read(&[b"hello", b" world"], 11).await, (11, None)));
    }

    #[tokio::test]
    async fn a_body_past_the_ceiling_ends_with_an_error() {
        let (bytes, error) = read(&[b"hello", b" world", b"!!!"], 8).await;
        assert_eq!(bytes, 5, "the frame that crosses the ceiling is not passed on");
        assert!(matches!(error, Some(Error::HttpResponseBodySize(Some(8)))), "{error:?}");
    }

    #[tokio::test]
    async fn a_content_length_past_the_ceiling_fails_before_reading() {
        // Full knows its length, as hyper does from a Content-Length.
        let full = || http_body_util::Full::new(Bytes::from_static(b"0123456789")).map_err(|e| match e {});
        let mut body = CappedBody::new(full(), 9);
        assert!(matches!(body.frame().await, Some(Err(Error::HttpResponseBodySize(Some(9))))));
        assert!(body.frame().await.is_none());
        let mut body = CappedBody::new(full(), 10);
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap().len(), 10);
    }
}
