//! The TCP door's lobby: a thread of its own accepts every TCP and TLS
//! connection and holds it, as a bare socket in its own epoll set, until
//! it has a request: on cleartext, its whole first head (`guest.rs`); on
//! TLS, its first byte. Only then does it get a task, buffers and the
//! pipeline ([`Arrival`], handed to the door on the worker threads), so a
//! client trickling its head wakes only this thread.
//!
//! Why not Pingora's accept loop: it spawns a task per connection at
//! accept whose future holds the TLS handshake state inline (8.8 KiB
//! before any byte, plain TCP included; heaptrack), so a silent connection
//! cost 16 KiB; here it costs its socket and one entry in [`Room`]. And a
//! flood of connections that reconnect whenever they are closed is
//! accepted, timed out and evicted on this thread, never on the threads
//! serving requests: when the edge is full, a newcomer stands (no slot)
//! and is seated, evicting the longest-seated guest, only if it
//! speaks within `grace` (a newcomer that speaks takes a seat, a silent
//! one never does). The lobby never stops accepting, so a viewer is never
//! left in the kernel's backlog behind attackers: when every standing
//! place is taken, the longest-standing guest goes. The thread runs at a
//! lower scheduling priority than the workers, so however fast attackers
//! reconnect, requests in progress are served first.
//!
//! Written by hand on `mio` (which tokio is built on): no crate parks
//! sockets without a task per socket.

use super::guest::{answer_and_close, reset, Guest, Heard};
use super::room::{Kind, Room};
use crate::connections::{Connections, Refusal, Slot};
use crate::metrics::Metrics;
use bytes::BytesMut;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use pingora_core::listeners::tls::Acceptor;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A connection that spoke: its socket, its place, and its listener's TLS.
pub struct Arrival {
    pub stream: std::net::TcpStream,
    pub slot: Slot,
    pub tls: Option<Arc<Acceptor>>,
    /// What the lobby read of the first request (cleartext only): a whole
    /// head, or as much as the door needs to refuse it.
    pub head: BytesMut,
}

/// A listening socket and, for TLS listeners, its acceptor.
pub struct Listening {
    pub socket: std::net::TcpListener,
    pub tls: Option<Arc<Acceptor>>,
}

#[derive(Debug, Clone)]
pub struct LobbySettings {
    pub header_timeout: Duration,
    /// How long a newcomer that arrived while the edge was full may take
    /// to speak.
    pub grace: Duration,
    /// The largest request head (the lobby reads no more of one).
    pub max_header_bytes: usize,
}

/// Stops the lobby's thread when dropped.
pub struct LobbyHandle {
    stop: Arc<AtomicBool>,
    waker: Waker,
}

impl Drop for LobbyHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// How the process gives freed memory back to the system; set by the
/// binary, which owns the allocator.
static TRIM: OnceLock<fn()> = OnceLock::new();

/// Sets how freed memory is given back. The lobby calls it on its own
/// thread (allocators keep per-thread free pages) whenever its guests have
/// fallen to half of their peak, so the memory a flood took comes back
/// once the flood is over.
pub fn set_memory_trim(trim: fn()) {
    let _ = TRIM.set(trim);
}

/// Guests below which the lobby does not bother to give memory back.
const TRIM_FLOOR: usize = 1024;

const WAKER: Token = Token(usize::MAX);
/// Listener `i` is `Token(FIRST_LISTENER - i)`; guests count up from 0.
const FIRST_LISTENER: usize = usize::MAX - 1;
/// Connections accepted from one listener before the lobby looks at its
/// guests again.
const ACCEPT_BATCH: usize = 256;
/// After accept fails (out of descriptors), wait this long before the
/// next try rather than spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// How much nicer than the workers the lobby's thread runs: under a flood
/// it may be busy accepting and closing, and requests come first.
const LOBBY_NICER: i32 = 10;

/// Lowers this thread's scheduling priority by [`LOBBY_NICER`].
fn lower_priority() {
    // SAFETY: gettid, getpriority and setpriority read or change only this
    // thread's niceness. Failing leaves the thread at the workers' level.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if libc::setpriority(libc::PRIO_PROCESS, tid, (now + LOBBY_NICER).min(19)) != 0 {
            tracing::warn!("cannot lower the TCP lobby's priority");
        }
    }
}

/// TCP_DEFER_ACCEPT on `listener` (0: off). socket2 has no setter for it.
fn set_defer_accept(listener: &TcpListener, secs: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = secs as libc::c_int;
    // SAFETY: setsockopt reads `value` (a c_int, its size given) only.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

struct Lobby {
    poll: Poll,
    listeners: Vec<(TcpListener, Option<Arc<Acceptor>>)>,
    /// Listeners with connections perhaps still in the backlog (mio is
    /// edge-triggered: only a drained listener will be told again).
    pending: Vec<bool>,
    paused_until: Option<Instant>,
    /// The most guests since memory was last given back.
    peak: usize,
    /// TCP_DEFER_ACCEPT is on (the edge is full).
    deferring: bool,
    room: Room<Guest>,
    max_header_bytes: usize,
    standing_places: usize,
    connections: Arc<Connections>,
    handoff: mpsc::Sender<Arrival>,
    metrics: &'static Metrics,
    /// `meshcast_connections_waiting{kind="seated"|"standing"}`.
    waiting: [prometheus::IntGauge; 2],
    stop: Arc<AtomicBool>,
}

/// Starts the lobby's thread on `listeners`; arrivals go to `handoff`.
pub fn start(
    listeners: Vec<Listening>,
    connections: Arc<Connections>,
    settings: LobbySettings,
    metrics: &'static Metrics,
    handoff: mpsc::Sender<Arrival>,
) -> io::Result<LobbyHandle> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let mut mio_listeners = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        l.socket.set_nonblocking(true)?;
        let mut socket = TcpListener::from_std(l.socket);
        poll.registry()
            .register(&mut socket, Token(FIRST_LISTENER - i), Interest::READABLE)?;
        mio_listeners.push((socket, l.tls));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let lobby = Lobby {
        poll,
        pending: vec![true; mio_listeners.len()],
        listeners: mio_listeners,
        paused_until: None,
        deferring: false,
        peak: 0,
        room: Room::new(settings.header_timeout, settings.grace),
        max_header_bytes: settings.max_header_bytes,
        // A sixteenth more than the limit, from the descriptors the edge
        // keeps spare (a tenth of the open-files limit).
        standing_places: (connections.limit() / 16).max(16),
        connections,
        handoff,
        metrics,
        waiting: ["seated", "standing"]
            .map(|k| metrics.connections_waiting.with_label_values(&[k])),
        stop: stop.clone(),
    };
    std::thread::Builder::new()
        .name("meshcast-lobby".into())
        .spawn(move || lobby.run())?;
    Ok(LobbyHandle { stop, waker })
}

impl Lobby {
    fn run(mut self) {
        lower_priority();
        let mut events = Events::with_capacity(1024);
        while !self.stop.load(Ordering::Acquire) {
            if let Err(e) = self.poll.poll(&mut events, self.timeout(Instant::now())) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "the TCP lobby cannot poll; no more connections are accepted");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t > FIRST_LISTENER - self.listeners.len() => {
                        self.pending[FIRST_LISTENER - t] = true;
                    }
                    Token(t) => {
                        let gone = event.is_error() || event.is_read_closed();
                        self.spoke(t as u64, gone);
                    }
                }
            }
            let now = Instant::now();
            self.expire(now);
            self.accept(now);
            self.defer_when_full();
            self.show();
            self.trim_after_a_fall();
        }
    }

    /// How long to wait for events: not at all while the backlog may hold
    /// connections there is room for, else until the next guest's wait
    /// runs out (or the accept pause ends).
    fn timeout(&self, now: Instant) -> Option<Duration> {
        let paused = self.paused_until.filter(|t| *t > now);
        if paused.is_none() && self.pending.iter().any(|p| *p) {
            return Some(Duration::ZERO);
        }
        [self.room.next_deadline(), paused]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    fn accept(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| t > now) {
            return;
        }
        self.paused_until = None;
        for i in 0..self.listeners.len() {
            let mut taken = 0;
            while self.pending[i] && taken < ACCEPT_BATCH {
                match self.listeners[i].0.accept() {
                    Ok((stream, peer)) => {
                        taken += 1;
                        self.arrive(stream, peer, i, now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.pending[i] = false,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) => {}
                    Err(e) => {
                        // Out of descriptors, most likely: let closing
                        // connections give some back.
                        tracing::warn!(error = %e, "accept failed; pausing accepts");
                        self.paused_until = Some(now + ACCEPT_PAUSE);
                        return;
                    }
                }
            }
        }
    }

    /// A newcomer: seated if there is room, standing if the edge is full,
    /// refused if its address has its share.
    fn arrive(&mut self, stream: TcpStream, peer: SocketAddr, listener: usize, now: Instant) {
        let ip = peer.ip();
        let _ = stream.set_nodelay(true);
        let mut guest = Guest {
            stream,
            ip,
            listener: listener as u32,
            slot: None,
            head: None,
        };
        let kind = match self.connections.try_park(Some(ip)) {
            Ok(slot) => {
                guest.slot = Some(slot);
                Kind::Seated
            }
            Err(Refusal::Full) if self.connections.address_has_room(ip) => {
                let tls = self.listeners[listener].1.is_some();
                if tls && matches!(guest.stream.peek(&mut [0u8]), Ok(1)) {
                    // It has spoken already: no need to stand.
                    return self.speak(guest);
                }
                Kind::Standing
            }
            Err(refusal) => return self.refuse(guest, refusal),
        };
        let token = Token(self.room.next_token() as usize);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut guest.stream, token, Interest::READABLE)
        {
            tracing::warn!(error = %e, "cannot watch a new connection; closed");
            return;
        }
        let placed = match kind {
            Kind::Seated => self.room.seat(now, super::jitter(), guest),
            Kind::Standing => {
                // The longest-standing guest has had its chance to speak.
                if self.room.standing() >= self.standing_places {
                    if let Some(oldest) = self.room.evict_oldest_standing() {
                        reset(oldest);
                    }
                    self.refused("silent_when_full");
                }
                self.room.stand(now, guest)
            }
        };
        debug_assert_eq!(Token(placed as usize), token);
    }

    /// The guest behind `token` is readable: it spoke, or (`hung_up`) it
    /// may have closed its side, perhaps after sending a request.
    fn spoke(&mut self, token: u64, hung_up: bool) {
        let Some((kind, guest)) = self.room.guest_mut(token) else {
            return; // an event from before it left
        };
        if self.listeners[guest.listener as usize].1.is_some() {
            // TLS: the handshake is the workers'.
            return self.hand_over_at_first_byte(token, hung_up);
        }
        match guest.listen(self.max_header_bytes) {
            Heard::Nothing | Heard::More => {}
            Heard::Began => {
                // The whole head is due `header_timeout` from its first
                // byte, jittered as first bytes are.
                let due = self.room.due(Instant::now(), super::jitter());
                self.began_a_head(token, kind, due);
            }
            Heard::Gone => drop(self.leave(token)),
            Heard::Enough => {
                if let Some(guest) = self.leave(token) {
                    self.speak(guest);
                }
            }
        }
    }

    /// The guest behind `token` leaves the room and this epoll set.
    fn leave(&mut self, token: u64) -> Option<Guest> {
        let (_, mut guest) = self.room.leave(token)?;
        let _ = self.poll.registry().deregister(&mut guest.stream);
        Some(guest)
    }

    /// A TLS guest that spoke goes to the door (one gone without a byte
    /// leaves nothing to do).
    fn hand_over_at_first_byte(&mut self, token: u64, hung_up: bool) {
        let Some(guest) = self.leave(token) else {
            return;
        };
        if hung_up && !matches!(guest.stream.peek(&mut [0u8]), Ok(1)) {
            return;
        }
        self.speak(guest);
    }

    /// The guest behind `token` sent the first part of a head: now due
    /// whole at `due`, seated first if it was standing.
    fn began_a_head(&mut self, token: u64, kind: Kind, due: Instant) {
        if kind == Kind::Seated {
            return self.room.reschedule(token, due);
        }
        let Some((_, mut guest)) = self.room.leave(token) else {
            return;
        };
        match self.admit_speaker(guest.ip) {
            Ok(slot) => guest.slot = Some(slot),
            Err(refusal) => {
                let _ = self.poll.registry().deregister(&mut guest.stream);
                return self.refuse(guest, refusal);
            }
        }
        let seat = self.room.next_token();
        let registry = self.poll.registry();
        if registry
            .reregister(&mut guest.stream, Token(seat as usize), Interest::READABLE)
            .is_err()
        {
            return; // closed: its slot goes with it
        }
        let placed = self.room.seat_until(due, guest);
        debug_assert_eq!(placed, seat);
    }

    /// Hands a guest that spoke to the door, seating it first if it was
    /// standing.
    fn speak(&mut self, mut guest: Guest) {
        let slot = match guest.slot.take() {
            Some(slot) => slot,
            None => match self.admit_speaker(guest.ip) {
                Ok(slot) => slot,
                Err(refusal) => return self.refuse(guest, refusal),
            },
        };
        let tls = self.listeners[guest.listener as usize].1.clone();
        let head = guest.head.take().map(|h| h.bytes).unwrap_or_default();
        // SAFETY: the descriptor moves from the mio stream to the std one;
        // nothing else owns it.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(guest.stream.into_raw_fd()) };
        if self
            .handoff
            .blocking_send(Arrival {
                stream,
                slot,
                tls,
                head,
            })
            .is_err()
        {
            self.stop.store(true, Ordering::Release); // the door is gone
        }
    }

    /// A place for a standing guest that spoke: the longest-seated silent
    /// guest makes room; with none, a connection waiting between requests
    /// (the table's own eviction).
    fn admit_speaker(&mut self, ip: IpAddr) -> Result<Slot, Refusal> {
        match self.connections.try_park(Some(ip)) {
            Err(Refusal::Full) => {
                if let Some(oldest) = self.room.evict_oldest_seated() {
                    reset(oldest);
                    self.refused("evicted");
                }
                self.connections.admit(Some(ip), true)
            }
            placed => placed,
        }
    }

    /// Gives memory back once the guests have fallen to half their peak.
    fn trim_after_a_fall(&mut self) {
        let guests = self.room.seated() + self.room.standing();
        if guests > self.peak {
            self.peak = guests;
        } else if self.peak >= TRIM_FLOOR && guests <= self.peak / 2 {
            if let Some(trim) = TRIM.get() {
                trim();
            }
            self.peak = guests;
        }
    }

    /// While the edge is full, the kernel holds a new connection until
    /// its first byte (TCP_DEFER_ACCEPT, for about `header_timeout`): a
    /// silent newcomer then costs the edge no descriptor and no work for
    /// that long, and one that speaks reaches the lobby at once instead of
    /// queueing in the backlog behind silent ones. Turned off again a little below the limit, so that it
    /// does not flap.
    fn defer_when_full(&mut self) {
        let (open, limit) = (self.connections.open(), self.connections.limit());
        let full = if self.deferring {
            open + limit / 64 >= limit
        } else {
            open >= limit
        };
        if full == self.deferring {
            return;
        }
        self.deferring = full;
        // The kernel counts this in SYN-ACK retransmissions (after 1, 3,
        // 7, 15, 31 s): a silent newcomer reaches the lobby at the first of
        // those past `header_timeout` — the first-byte deadline of every
        // connection — and stands for `grace` more.
        let secs = if full {
            self.room.header_timeout().as_secs().max(1) as u32
        } else {
            0
        };
        for (listener, _) in &self.listeners {
            if let Err(e) = set_defer_accept(listener, secs) {
                tracing::warn!(error = %e, "cannot set TCP_DEFER_ACCEPT");
            }
        }
        tracing::info!(
            full,
            open,
            limit,
            "the edge is at its connection limit: new connections are let in when they speak"
        );
    }

    /// Closes guests whose wait ran out, without a word.
    fn expire(&mut self, now: Instant) {
        for guest in self.room.expire(now) {
            if guest.has_spoken() {
                // Its head did not arrive in time: 408, as the door says.
                self.refused("header_timeout");
                let answer = super::refusal_bytes(408, "the request head did not arrive in time");
                answer_and_close(guest, Some(&answer));
                continue;
            }
            self.refused(if guest.slot.is_some() {
                "silent"
            } else {
                "silent_when_full"
            });
            reset(guest);
        }
    }

    /// 503 with the reason (on cleartext; a TLS guest is only closed), then
    /// close.
    fn refuse(&self, guest: Guest, refusal: Refusal) {
        self.refused(refusal.label());
        let cleartext = self.listeners[guest.listener as usize].1.is_none();
        let answer = cleartext.then(|| super::refusal_bytes(503, refusal.reason()));
        answer_and_close(guest, answer.as_deref());
    }

    fn refused(&self, reason: &str) {
        self.metrics
            .connections_refused
            .with_label_values(&[reason])
            .inc();
    }

    fn show(&self) {
        let [seated, standing] = &self.waiting;
        seated.set(self.room.seated() as i64);
        standing.set(self.room.standing() as i64);
    }
}
