//! Write coalescing under the WebSocket: frames written in a burst are gathered and handed to
//! the kernel in one write at the next flush, instead of one syscall (and one TCP segment) per
//! frame. The buffer exists only between a write and its flush: an idle connection holds none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Above this many buffered bytes, writes go to the kernel before more are taken.
const MAX_BUFFERED: usize = 64 * 1024;

/// An I/O stream whose writes are buffered until flushed.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
}

impl<T> Coalesce<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out the buffer, then frees it.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut done = 0;
        while done < self.buf.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf[done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.buf.drain(..done);
                    return Poll::Pending;
                }
            }
        }
        self.buf = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > MAX_BUFFERED {
            ready!(this.poll_write_out(cx))?;
            if data.len() > MAX_BUFFERED {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn writes_reach_the_peer_only_at_flush_and_in_order() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesce::new(a);
        w.write_all(b"one ").await.expect("write");
        w.write_all(b"two").await.expect("write");
        let mut got = [0u8; 7];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), b.read_exact(&mut got))
                .await;
        assert!(early.is_err(), "nothing before the flush");
        w.flush().await.expect("flush");
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"one two");
        assert_eq!(w.buf.capacity(), 0, "no buffer kept once flushed");
        let big = vec![7u8; 3 * MAX_BUFFERED];
        w.write_all(&big).await.expect("big write");
        w.flush().await.expect("flush");
        let mut back = vec![0u8; big.len()];
        b.read_exact(&mut back).await.expect("read");
        assert_eq!(back, big);
    }
}
