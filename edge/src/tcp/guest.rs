//! A connection waiting in the lobby, and what the lobby does with its
//! socket: read its first request head (cleartext only), answer and close
//! it, or reset it.
//!
//! On a cleartext listener the lobby reads the whole first head before
//! handing the connection over, so a client that trickles its head
//! (slowloris) costs the lobby's low-priority thread a read per trickle
//! and the workers nothing: they see a connection only when it has a
//! request to serve. A TLS connection is handed over at its first byte
//! (its head cannot be read before the handshake, which is the workers').

use super::head::{Head, HeadScan};
use crate::connections::Slot;
use bytes::BytesMut;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::Duration;

pub(super) struct Guest {
    pub stream: TcpStream,
    pub ip: IpAddr,
    pub listener: u32,
    /// Seated guests hold their place; standing ones have none yet.
    pub slot: Option<Slot>,
    /// The first head so far, once its first byte came (cleartext only).
    pub head: Option<Box<Speech>>,
}

/// A first request head that has started to arrive.
pub(super) struct Speech {
    pub bytes: BytesMut,
    scan: HeadScan,
}

/// What a guest's socket had to say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard {
    /// Nothing to read after all: as silent as before.
    Nothing,
    /// Closed or broken, before its head was whole: nothing to answer.
    Gone,
    /// The first part of a head (its deadline starts now); more is to
    /// come.
    Began,
    /// More of a head begun before; more is to come.
    More,
    /// A head the door can act on: whole, the h2 preface, a broken
    /// preface, or one past the size limit (the door answers those).
    Enough,
}

/// Bytes read from a guest at a time.
const READ: usize = 4096;

impl Guest {
    /// Reads what the guest sent, until the socket would block or its
    /// head is whole (at most `max` bytes of head).
    pub fn listen(&mut self, max: usize) -> Heard {
        let began = self.head.is_none();
        let mut chunk = [0u8; READ];
        loop {
            let speech = self.head.get_or_insert_with(|| {
                Box::new(Speech {
                    bytes: BytesMut::new(),
                    // A connection's first request may be h2 (prior
                    // knowledge) on a cleartext door.
                    scan: HeadScan::new(max, true),
                })
            });
            let room = READ.min(max.saturating_sub(speech.bytes.len())).max(1);
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return Heard::Gone,
                Ok(n) => {
                    speech.bytes.extend_from_slice(&chunk[..n]);
                    if speech.scan.scan(&speech.bytes) != Head::Partial {
                        return Heard::Enough;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if speech.bytes.is_empty() {
                        self.head = None;
                        return Heard::Nothing;
                    }
                    return if began { Heard::Began } else { Heard::More };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Heard::Gone,
            }
        }
    }

    /// Whether the guest has sent part of a head.
    pub fn has_spoken(&self) -> bool {
        self.head.is_some()
    }
}

/// Closes a guest that never spoke with a reset rather than a FIN (as
/// nginx's `reset_timedout_connection`): nothing is lost, and the edge
/// keeps no TIME_WAIT state or FIN exchange for it — a silent flood's
/// closes cost one packet each.
pub(super) fn reset(guest: Guest) {
    let socket = socket2::SockRef::from(&guest.stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
}

/// Sends `answer` (if any) and closes. What the client already sent is
/// read first, so that the close is a FIN and not a reset that could lose
/// the answer. Never blocks: an answer that does not fit the socket's
/// buffer is cut short.
pub(super) fn answer_and_close(mut guest: Guest, answer: Option<&[u8]>) {
    let mut sink = [0u8; READ];
    for _ in 0..16 {
        match guest.stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    if let Some(bytes) = answer {
        let _ = guest.stream.write_all(bytes);
    }
    let _ = guest.stream.shutdown(std::net::Shutdown::Write);
}
