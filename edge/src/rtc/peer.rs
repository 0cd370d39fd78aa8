//! One browser's WebRTC connection: the task that drives str0m's sans-IO
//! `Rtc` with a UDP socket and a clock, turns request frames from the data
//! channel into pipeline sessions (`session.rs`), and writes their
//! response frames back while the channel's buffered amount allows.

use super::session::RtcSession;
use meshcast_control::rtc::{self, Frame, RequestHead};
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::pipeline::EdgePipeline;

/// Requests in flight per peer; more are answered with an error frame.
pub const MAX_REQUESTS: usize = 32;
/// A request body (acks) larger than this is refused.
const MAX_REQUEST_BODY: usize = 2 << 20;
/// Writes stop above this much buffered on the channel and resume below
/// `LOW_WATER` (the channel's buffered-amount-low event). Buffered bytes
/// are unacknowledged ones, so this caps what is in flight: 256 KiB is
/// 40 Mbit/s at a 50 ms round trip, and more costs CPU, not speed
/// (sctp-proto scans its in-flight queue per packet; BENCHMARKS.md).
const HIGH_WATER: usize = 256 << 10;
/// str0m's cap on buffered (unacknowledged) bytes: above the high-water
/// mark, so a frame is refused only when the peer is truly behind.
pub const SCTP_BUFFER: usize = HIGH_WATER + 2 * meshcast_control::rtc::MAX_FRAME;
const LOW_WATER: usize = 64 << 10;
/// Response frames queued between the pipeline and this task.
const OUT_QUEUE: usize = 64;

/// What a request's session and this task both see.
#[derive(Default)]
pub struct Shared {
    /// The client cancelled, or the peer is gone: the session's writes fail.
    pub cancelled: AtomicBool,
    /// The session sent its `End`.
    pub finished: AtomicBool,
}

pub enum Out {
    Frame(u32, Frame),
    /// The pipeline is done with this request.
    Done(u32),
}

struct Request {
    body: Option<mpsc::UnboundedSender<bytes::Bytes>>,
    body_bytes: usize,
    shared: Arc<Shared>,
}

pub struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    remote: Option<SocketAddr>,
    channel: Option<ChannelId>,
    requests: HashMap<u32, Request>,
    out_tx: mpsc::Sender<Out>,
    out_rx: mpsc::Receiver<Out>,
    /// A frame the channel did not take yet.
    unsent: Option<Vec<u8>>,
    proxy: Arc<HttpProxy<EdgePipeline>>,
    shutdown: ShutdownWatch,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("WebRTC: {0}")]
    Rtc(#[from] str0m::RtcError),
    #[error("UDP: {0}")]
    Io(#[from] std::io::Error),
    #[error("data channel: {0}")]
    Frame(#[from] rtc::FrameError),
}

impl Peer {
    pub fn new(
        rtc: Rtc,
        socket: UdpSocket,
        proxy: Arc<HttpProxy<EdgePipeline>>,
        shutdown: ShutdownWatch,
    ) -> std::io::Result<Peer> {
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        Ok(Peer {
            rtc,
            local: socket.local_addr()?,
            socket,
            remote: None,
            channel: None,
            requests: HashMap::new(),
            out_tx,
            out_rx,
            unsent: None,
            proxy,
            shutdown,
        })
    }

    /// Runs until the peer disconnects, ICE gives up, or the edge stops.
    pub async fn run(mut self) -> Result<(), PeerError> {
        let mut buf = vec![0u8; 2048];
        loop {
            let Some(deadline) = self.drive().await? else {
                return Ok(());
            };
            self.flush()?;
            let writable = self.unsent.is_none() && self.room() > 0;
            let deadline = tokio::time::Instant::from_std(deadline);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let (n, source) = r?;
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.local,
                        contents,
                    });
                    // Only the peer's own packets name the client: any
                    // stranger can send this port a datagram.
                    if self.rtc.accepts(&input) {
                        self.remote = Some(source);
                        self.rtc.handle_input(input)?;
                    }
                }
                Some(out) = self.out_rx.recv(), if writable => self.take(out)?,
                _ = tokio::time::sleep_until(deadline) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                }
                _ = self.shutdown.changed() => {
                    self.rtc.disconnect();
                    return Ok(());
                }
            }
        }
    }

    /// Sends what str0m has to send and handles its events; the next
    /// deadline, or None when the connection is over.
    async fn drive(&mut self) -> Result<Option<Instant>, PeerError> {
        loop {
            if !self.rtc.is_alive() {
                return Ok(None);
            }
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(Some(t)),
                Output::Transmit(t) => {
                    // A lost datagram is SCTP's to resend, as on the wire.
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(e) => {
                    if !self.on_event(e)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn on_event(&mut self, e: Event) -> Result<bool, PeerError> {
        match e {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => return Ok(false),
            Event::ChannelOpen(id, label) if label == rtc::LABEL => {
                self.channel = Some(id);
                if let Some(mut ch) = self.rtc.channel(id) {
                    ch.set_buffered_amount_low_threshold(LOW_WATER);
                }
            }
            Event::ChannelData(d) if Some(d.id) == self.channel => self.on_message(&d.data)?,
            Event::ChannelClose(id) if Some(id) == self.channel => return Ok(false),
            _ => {}
        }
        Ok(true)
    }

    /// Bytes the channel takes before the high-water mark.
    fn room(&mut self) -> usize {
        match self.channel.and_then(|id| self.rtc.channel(id)) {
            Some(mut ch) => HIGH_WATER.saturating_sub(ch.buffered_amount()),
            None => 0,
        }
    }

    /// Writes the frame the channel refused last time, if it takes it now.
    fn flush(&mut self) -> Result<(), PeerError> {
        let (Some(msg), Some(id)) = (&self.unsent, self.channel) else {
            return Ok(());
        };
        if let Some(mut ch) = self.rtc.channel(id) {
            if ch.write(true, msg)? {
                self.unsent = None;
            }
        }
        Ok(())
    }

    fn take(&mut self, out: Out) -> Result<(), PeerError> {
        match out {
            Out::Frame(id, frame) => {
                if self.requests.contains_key(&id) {
                    self.unsent = Some(frame.encode(id));
                    self.flush()?;
                }
            }
            Out::Done(id) => {
                if let Some(r) = self.requests.remove(&id) {
                    if !r.shared.finished.load(Ordering::Relaxed)
                        && !r.shared.cancelled.load(Ordering::Relaxed)
                    {
                        let why = "the edge could not complete this response".to_string();
                        self.unsent = Some(Frame::Error(why).encode(id));
                        self.flush()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends an error frame for `id` straight away (it bypasses the queue,
    /// so it is dropped when the channel is full: the client times out).
    fn refuse(&mut self, id: u32, why: String) -> Result<(), PeerError> {
        tracing::debug!(id, %why, "WebRTC request refused");
        if let Some(mut ch) = self.channel.and_then(|c| self.rtc.channel(c)) {
            let _ = ch.write(true, &Frame::Error(why).encode(id))?;
        }
        Ok(())
    }

    fn on_message(&mut self, msg: &[u8]) -> Result<(), PeerError> {
        let (id, frame) = match Frame::decode(msg) {
            Ok(f) => f,
            Err(e) => {
                let id = msg
                    .get(1..5)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                return self.refuse(id, e.to_string());
            }
        };
        match frame {
            Frame::Request(head) => self.start(id, head)?,
            Frame::Body(b) => {
                let over = match self.requests.get_mut(&id) {
                    Some(r) => {
                        r.body_bytes += b.len();
                        match &r.body {
                            Some(tx) if r.body_bytes <= MAX_REQUEST_BODY => {
                                let _ = tx.send(b);
                                false
                            }
                            _ => true,
                        }
                    }
                    None => false,
                };
                if over {
                    self.cancel(id);
                    self.refuse(id, format!("request body over {MAX_REQUEST_BODY} bytes"))?;
                }
            }
            Frame::End => {
                if let Some(r) = self.requests.get_mut(&id) {
                    r.body = None;
                }
            }
            Frame::Cancel => self.cancel(id),
            Frame::Response(_) | Frame::Error(_) => {
                self.refuse(id, "a client sends requests, not responses".into())?
            }
        }
        Ok(())
    }

    fn cancel(&mut self, id: u32) {
        if let Some(r) = self.requests.remove(&id) {
            r.shared.cancelled.store(true, Ordering::Relaxed);
        }
    }

    fn start(&mut self, id: u32, head: RequestHead) -> Result<(), PeerError> {
        if self.requests.contains_key(&id) {
            return self.refuse(id, format!("request {id} is already in flight"));
        }
        if self.requests.len() >= MAX_REQUESTS {
            return self.refuse(id, format!("at most {MAX_REQUESTS} requests in flight"));
        }
        let shared = Arc::new(Shared::default());
        let (body_tx, body_rx) = if head.body {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let client = self.remote.unwrap_or(self.local);
        let session = match RtcSession::new(
            id,
            head,
            body_rx,
            self.out_tx.clone(),
            shared.clone(),
            client,
        ) {
            Ok(s) => s,
            Err(e) => return self.refuse(id, format!("bad request: {e}")),
        };
        self.requests.insert(
            id,
            Request {
                body: body_tx,
                body_bytes: 0,
                shared,
            },
        );
        let (proxy, shutdown, done) = (
            self.proxy.clone(),
            self.shutdown.clone(),
            self.out_tx.clone(),
        );
        tokio::spawn(async move {
            let _ = proxy
                .process_new_http(ServerSession::new_custom(Box::new(session)), &shutdown)
                .await;
            let _ = done.send(Out::Done(id)).await;
        });
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for r in self.requests.values() {
            r.shared.cancelled.store(true, Ordering::Relaxed);
        }
    }
}
