//! The TCP door: HTTP/1.1, h2c and TLS (HTTP/1.1 or HTTP/2 by ALPN),
//! guarded before the pipeline sees a byte.
//!
//! - The lobby (`lobby.rs`, a thread of its own) accepts every connection,
//!   admits it against `max_connections` and `max_connections_per_ip`
//!   ([`Connections`]) and holds it as a bare socket until its first byte
//!   (`header_timeout`); when the edge is full a newcomer that speaks
//!   within `header_timeout_when_full` takes the place of the longest
//!   silent one (`room.rs`), and a newcomer over its address's share gets
//!   503.
//! - A connection that spoke is handed to the door (`service.rs`) on a
//!   worker thread: TLS handshake (within `header_timeout`), then each
//!   HTTP/1 request head is read here (`head.rs`): whole within
//!   `header_timeout` of its first byte, the next one's first byte within
//!   `keepalive_timeout` of the last response, at most
//!   `max_request_header_size` (408 / 431 and close).
//! - HTTP/2 is told by ALPN or by the whole cleartext preface; a broken
//!   preface gets GOAWAY(PROTOCOL_ERROR).
//! - The bytes read are given back (`replay.rs`) and Pingora's HTTP code
//!   and the one `ProxyHttp` pipeline do the rest, connection reuse
//!   included. (Pingora, left alone, waited with no deadline for 24 bytes
//!   to tell HTTP/2 from HTTP/1, and spawned 8.8 KiB of task per
//!   connection before it had sent anything.)

mod guest;
mod head;
mod lobby;
mod replay;
mod room;
mod service;

pub use head::{Head, HeadScan, H2_PREFACE};
pub use lobby::set_memory_trim;
pub use service::{bind, TcpService};

use crate::cache::Sendfile;
use crate::connections::Slot;
use crate::metrics::Metrics;
use crate::pipeline::EdgePipeline;
use bytes::BytesMut;
use lobby::Arrival;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use replay::Replay;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::time::Instant;

/// The door's limits, read at start.
#[derive(Debug, Clone)]
pub struct TcpLimits {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
}

pub struct TcpDoor {
    proxy: Arc<HttpProxy<EdgePipeline>>,
    limits: TcpLimits,
    metrics: &'static Metrics,
}

/// What reading a head came to.
enum Read {
    Http1,
    Http2,
    /// Closed, or silent past its deadline before any byte: nothing to say.
    Gone,
    /// Waiting when a newcomer needed its place: closed without a word.
    Evicted,
    /// Answered and to be closed: the status and its reason.
    Refuse(u16, &'static str),
    /// A broken HTTP/2 preface.
    BadPreface,
}

/// Bytes read for a head at a time, at first; idle connections hold no
/// more than this (Pingora's own read buffer, 64 KiB, is turned off).
const FIRST_READ: usize = 1024;

impl TcpDoor {
    pub fn new(
        proxy: Arc<HttpProxy<EdgePipeline>>,
        limits: TcpLimits,
        metrics: &'static Metrics,
    ) -> Self {
        TcpDoor {
            proxy,
            limits,
            metrics,
        }
    }

    /// Serves HTTP/1 requests on `stream` until the connection ends; each
    /// head is read here, then replayed to Pingora.
    async fn serve_http1(
        &self,
        mut conn: Replay,
        first_head: BytesMut,
        slot: &Slot,
        shutdown: &ShutdownWatch,
        cleartext: bool,
    ) {
        let sendfile = conn.sendfile_slot();
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        // One head buffer for the connection, starting with what the lobby
        // read: each head is split off and replayed, and once Pingora has
        // read it the allocation is free to take the next (no allocation
        // per keep-alive request).
        let mut buf = first_head;
        let mut watch = shutdown.clone();
        loop {
            let idle = if first {
                self.limits.header_timeout
            } else {
                self.limits.keepalive_timeout
            };
            // Waiting for a request: the oldest such connection makes room
            // when the edge is full.
            slot.set_busy(false);
            let read = tokio::select! {
                biased;
                r = self.read_head(conn.inner(), &mut buf, idle, first && cleartext) => r,
                _ = slot.evicted() => Read::Evicted,
                _ = wait_shutdown(&mut watch) => Read::Gone,
            };
            slot.set_busy(true);
            match read {
                Read::Http1 => {}
                Read::Evicted => {
                    self.refused("evicted");
                    return;
                }
                Read::Http2 => {
                    conn.replay(buf.split().freeze());
                    // Pingora peeks the replayed preface and serves h2.
                    let _ = ServerApp::process_new(&self.proxy, Box::new(conn), shutdown).await;
                    return;
                }
                Read::Gone => return,
                Read::Refuse(status, reason) => {
                    self.refused(label(status));
                    refuse_http1(conn.inner(), status, reason).await;
                    return;
                }
                Read::BadPreface => {
                    self.refused("bad_preface");
                    goaway_protocol_error(conn.inner()).await;
                    return;
                }
            }
            conn.replay(buf.split().freeze());
            let mut session = ServerSession::new_http1(Box::new(conn));
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => session.set_keepalive(Some(self.limits.keepalive_timeout.as_secs())),
            }
            let served = self.proxy.process_new_http(session, shutdown);
            let reused = match &sendfile {
                // The cache lookup may offer a mapped body to this connection.
                Some(slot) => {
                    let reused = slot.serving(served).await;
                    slot.clear();
                    reused
                }
                None => served.await,
            };
            let Some(reused) = reused else {
                return;
            };
            let (stream, persisted) = reused.consume();
            let Ok(replay) = stream.into_any().downcast::<Replay>() else {
                unreachable!("the door hands Pingora only Replay streams");
            };
            conn = *replay;
            settings = persisted;
            first = false;
        }
    }

    fn refused(&self, reason: &str) {
        self.metrics
            .connections_refused
            .with_label_values(&[reason])
            .inc();
    }

    /// Reads one head into `buf`: its first byte within `idle`, all of it
    /// within `header_timeout` of that byte, at most `max_header_bytes`.
    async fn read_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        idle: Duration,
        h2c: bool,
    ) -> Read {
        let max = self.limits.max_header_bytes;
        let mut scan = HeadScan::new(max, h2c);
        let mut deadline = Instant::now() + idle;
        if !buf.is_empty() {
            // Read by the lobby, within its own deadlines.
            match scan.scan(buf) {
                Head::Partial => deadline = Instant::now() + self.limits.header_timeout,
                verdict => return Self::read_of(verdict),
            }
        }
        loop {
            // The scan refuses a head at `max`, so the buffer never grows
            // past it.
            debug_assert!(buf.len() < max);
            if buf.capacity() == buf.len() {
                buf.reserve(buf.len().max(FIRST_READ).min(max - buf.len()));
            }
            let started = buf.is_empty();
            let n = match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                Err(_) if started => return Read::Gone,
                Err(_) => return Read::Refuse(408, "the request head did not arrive in time"),
                Ok(Err(_)) | Ok(Ok(0)) => return Read::Gone,
                Ok(Ok(n)) => n,
            };
            debug_assert!(n > 0);
            if started {
                // Up to a tenth early, as the lobby's first-byte deadlines:
                // trickling connections that came in one burst would
                // otherwise all be answered 408, reconnect and trickle in
                // step, waking the workers in bursts.
                let early = self.limits.header_timeout.mul_f64(jitter() / 10.0);
                deadline = Instant::now() + self.limits.header_timeout - early;
            }
            match scan.scan(buf) {
                Head::Partial => continue,
                verdict => return Self::read_of(verdict),
            }
        }
    }

    /// What a head that is not partial comes to.
    fn read_of(verdict: Head) -> Read {
        match verdict {
            Head::Http1 => Read::Http1,
            Head::Http2 => Read::Http2,
            Head::BadPreface => Read::BadPreface,
            Head::TooLarge => Read::Refuse(431, "the request head is too large"),
            Head::Partial => unreachable!("a partial head is read on"),
        }
    }
}

impl TcpDoor {
    /// A connection the lobby handed over (it has spoken): TLS handshake
    /// if its listener has TLS, then HTTP/2 (by ALPN) or HTTP/1 requests
    /// until it ends. The slot goes when this returns.
    pub async fn serve_arrival(&self, arrival: Arrival, shutdown: &ShutdownWatch) {
        let Arrival {
            stream,
            mut slot,
            tls,
            head,
        } = arrival;
        // From here the table's eviction may choose it between requests.
        slot.list();
        let Ok(tcp) = tokio::net::TcpStream::from_std(stream) else {
            return;
        };
        let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
        let mut l4 = pingora_core::protocols::l4::stream::Stream::from(tcp);
        l4.set_socket_digest(digest);
        let Some(acceptor) = tls else {
            // No write buffer on this stream: the replay gathers small writes.
            let sendfile = Sendfile::new(self.metrics.sendfile_bytes.clone());
            let conn = Replay::coalescing(Box::new(l4)).with_sendfile(Arc::new(sendfile));
            return self.serve_http1(conn, head, &slot, shutdown, true).await;
        };
        let handshake = acceptor.tls_handshake(l4);
        let stream: Stream = match tokio::time::timeout(self.limits.header_timeout, handshake).await
        {
            Ok(Ok(tls)) => Box::new(tls),
            _ => return self.refused("tls_handshake"),
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // The door cannot see HTTP/2 streams come and go: never evicted.
            slot.set_busy(true);
            let _ = ServerApp::process_new(&self.proxy, stream, shutdown).await;
        } else {
            self.serve_http1(Replay::new(stream), head, &slot, shutdown, false)
                .await;
        }
    }

    pub(crate) async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// A fraction in [0, 1), different for each call (splitmix64 over a
/// shared counter: it only spreads deadlines, nothing depends on it being
/// unpredictable).
fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
    let mut z = NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Resolves once the server is shutting down.
async fn wait_shutdown(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn label(status: u16) -> &'static str {
    match status {
        408 => "header_timeout",
        431 => "head_too_large",
        _ => "other",
    }
}

/// How long the door spends telling a client why it closes.
const FAREWELL: Duration = Duration::from_secs(5);

/// Answers `status` with `reason` in plain HTTP/1.1, and closes.
async fn refuse_http1(stream: &mut Stream, status: u16, reason: &str) {
    farewell(stream, &refusal_bytes(status, reason)).await;
}

/// The edge's own HTTP/1.1 answer `status`, saying `reason`, closing.
fn refusal_bytes(status: u16, reason: &str) -> Vec<u8> {
    let text = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = format!("{reason}\n");
    format!(
        "HTTP/1.1 {status} {text}\r\nServer: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\n\
         Connection: close\r\n\r\n{body}",
        crate::replies::server_name(),
        body.len()
    )
    .into_bytes()
}

/// The server's preface (an empty SETTINGS) and GOAWAY(PROTOCOL_ERROR),
/// as RFC 9113 §3.4 asks for an invalid client preface; then close.
async fn goaway_protocol_error(stream: &mut Stream) {
    const DEBUG: &[u8] = b"invalid connection preface";
    let mut frames = Vec::with_capacity(9 + 9 + 8 + DEBUG.len());
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS, stream 0
    let len = (8 + DEBUG.len()) as u32;
    frames.extend_from_slice(&len.to_be_bytes()[1..]);
    frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]); // GOAWAY, no flags, stream 0
    frames.extend_from_slice(&0u32.to_be_bytes()); // last stream id
    frames.extend_from_slice(&1u32.to_be_bytes()); // PROTOCOL_ERROR
    frames.extend_from_slice(DEBUG);
    farewell(stream, &frames).await;
}

async fn farewell(stream: &mut Stream, bytes: &[u8]) {
    let _ = tokio::time::timeout(FAREWELL, async {
        stream.write_all(bytes).await?;
        stream.flush().await?;
        std::io::Result::Ok(())
    })
    .await;
    let _ = tokio::time::timeout(FAREWELL, stream.shutdown()).await;
}
