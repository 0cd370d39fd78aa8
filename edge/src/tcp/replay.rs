//! A client stream that first gives back bytes the door already read (the
//! request head it waited for), then reads on from the socket. Everything
//! else is the inner stream's. Pingora's own rewind exists only on plain
//! TCP streams; this works the same over TLS, so both go one way.
//!
//! For sockets from the lobby (`lobby.rs`; they have no write buffer) it also gathers small writes, as tokio's `BufWriter` would, so
//! a response head and a small body leave in one send; its buffer is
//! allocated at the first write, so a parked connection holds none.
//! Those plaintext streams may also carry a [`Sendfile`] slot: a large
//! write that is a slice of a mapped disk-cache body the pipeline offered
//! goes out by `sendfile` from the file (`cache/mapped.rs`).

use crate::cache::Sendfile;
use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct Replay {
    replay: Bytes,
    inner: Stream,
    /// Gathered writes (`coalescing` streams only) and how much of them
    /// is sent.
    gather: Option<(Vec<u8>, usize)>,
    /// Plaintext streams only: the body the pipeline offered to send from
    /// its file.
    sendfile: Option<Arc<Sendfile>>,
}

/// Writes smaller than this are gathered (Pingora's own write buffer size).
const GATHER: usize = 1460;

impl Replay {
    pub fn new(inner: Stream) -> Self {
        Replay {
            replay: Bytes::new(),
            inner,
            gather: None,
            sendfile: None,
        }
    }

    /// A stream whose small writes are gathered (it has no buffer of its
    /// own).
    pub fn coalescing(inner: Stream) -> Self {
        Replay {
            gather: Some((Vec::new(), 0)),
            ..Replay::new(inner)
        }
    }

    /// A plaintext stream that sends offered cache bodies from their
    /// files (see [`Sendfile`]).
    pub fn with_sendfile(mut self, slot: Arc<Sendfile>) -> Self {
        self.sendfile = Some(slot);
        self
    }

    /// The slot the door runs the pipeline with, if this stream has one.
    pub fn sendfile_slot(&self) -> Option<Arc<Sendfile>> {
        self.sendfile.clone()
    }

    /// `buf` sent from the offered file: `None` to write it the ordinary
    /// way (not a slice of that file, or the socket is full: the ordinary
    /// write then waits for it as tokio does).
    fn send_from_file(&mut self, buf: &[u8]) -> Option<io::Result<usize>> {
        let slot = self.sendfile.as_ref()?;
        match slot.send(self.inner.id(), buf)? {
            Ok(0) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            sent => Some(sent),
        }
    }

    /// Sends what is gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((buf, sent)) = &mut self.gather else {
            return Poll::Ready(Ok(()));
        };
        while *sent < buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        buf.clear();
        *sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Bytes to be read again before any from the socket.
    pub fn replay(&mut self, bytes: Bytes) {
        debug_assert!(self.replay.is_empty(), "the last head was read whole");
        self.replay = bytes;
    }

    /// The inner stream, for reads the door makes itself.
    pub fn inner(&mut self) -> &mut Stream {
        &mut self.inner
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replay.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.replay.len().min(buf.remaining());
        buf.put_slice(&self.replay[..n]);
        self.replay.advance(n);
        if self.replay.is_empty() {
            // Let go of the door's head buffer so it can be reused.
            self.replay = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        let gathered = match &me.gather {
            None => return Pin::new(&mut me.inner).poll_write(cx, buf),
            Some((g, _)) => g.len(),
        };
        if gathered + buf.len() > GATHER {
            ready!(me.poll_drain(cx))?;
        }
        if buf.len() >= GATHER {
            // Gathered bytes went first (above): the order holds.
            if let Some(sent) = me.send_from_file(buf) {
                return Poll::Ready(sent);
            }
            return Pin::new(&mut me.inner).poll_write(cx, buf);
        }
        if let Some((g, _)) = &mut me.gather {
            if g.capacity() == 0 {
                g.reserve_exact(GATHER);
            }
            g.extend_from_slice(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.gather.is_some() {
            // One slice at a time through the gathering path.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.gather.is_none() && self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Replay {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
        self.inner.shutdown().await
    }
}

impl UniqueID for Replay {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Replay {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Replay {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Replay {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Replay {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Replay {
    /// Pingora peeks for the h2c preface: answered from the replayed bytes
    /// (the door has read it), never by waiting on the socket.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.replay.len() < buf.len() {
            return Ok(false);
        }
        buf.copy_from_slice(&self.replay[..buf.len()]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, (server, _)) =
            tokio::join!(client, async { listener.accept().await.unwrap() });
        let server: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(server));
        (server, client.unwrap())
    }

    #[tokio::test]
    async fn replayed_bytes_come_first_and_gathered_writes_keep_their_order() {
        let (server, mut client) = pair().await;
        let mut conn = Replay::coalescing(server);
        conn.replay(Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"));
        client.write_all(b"then the socket").await.unwrap();
        let mut got = vec![0u8; 18];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
        let mut rest = vec![0u8; 15];
        conn.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"then the socket");

        // Small writes are gathered, a large one goes out after them.
        let large = vec![b'x'; 10_000];
        conn.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        conn.write_all(b"Content-Length: 10005\r\n\r\n")
            .await
            .unwrap();
        conn.write_all(b"small").await.unwrap();
        conn.write_all(&large).await.unwrap();
        conn.flush().await.unwrap();
        let want = [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10005\r\n\r\nsmall"[..],
            &large,
        ]
        .concat();
        let mut seen = vec![0u8; want.len()];
        client.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, want);

        // Nothing stays behind at shutdown.
        conn.write_all(b"bye").await.unwrap();
        Shutdown::shutdown(&mut conn).await;
        let mut tail = Vec::new();
        client.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, b"bye");
    }

    /// A mapped cache body offered to the connection leaves by `sendfile`
    /// after the gathered head, in order and whole, the socket filling
    /// and draining meanwhile; the same bytes from another buffer are
    /// written the ordinary way.
    #[tokio::test]
    async fn offered_bodies_go_out_from_their_file_after_the_head() {
        use crate::cache::MappedBody as Mapped;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let path = std::env::temp_dir().join(format!("meshcast-replay-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let body = Arc::new(Mapped::open(&path).unwrap());
        let bytes = Mapped::bytes(&body);
        let sent = prometheus::IntCounter::new("sent", "sent").unwrap();
        let slot = Arc::new(Sendfile::new(sent.clone()));

        let (server, mut client) = pair().await;
        let mut conn = Replay::coalescing(server).with_sendfile(slot.clone());
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n";
        let write = slot.serving(async {
            assert!(Sendfile::offer(&body));
            conn.write_all(head).await.unwrap();
            conn.write_all(&bytes[..]).await.unwrap();
            // Not the mapping's memory: written the ordinary way.
            conn.write_all(&data[..20_000]).await.unwrap();
            conn.flush().await.unwrap();
        });
        let mut seen = vec![0u8; head.len() + data.len() + 20_000];
        let read = client.read_exact(&mut seen);
        let (_, read) = tokio::join!(write, read);
        read.unwrap();
        assert_eq!(&seen[..head.len()], head);
        assert_eq!(&seen[head.len()..head.len() + data.len()], &data[..]);
        assert_eq!(&seen[head.len() + data.len()..], &data[..20_000]);
        // Most of the body went by sendfile (a write after a full socket
        // may go the ordinary way), none of the other buffer.
        assert!(sent.get() > 1_000_000, "sent {}", sent.get());
        assert!(sent.get() <= data.len() as u64);
        std::fs::remove_file(&path).unwrap();
    }
}
