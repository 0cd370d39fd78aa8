//! How many client connections the edge holds, in all and per address: a
//! connection takes a [`Slot`] before any byte of it is read and gives it
//! back when the slot drops (whatever ends the task, a panic included). One
//! table for every door (TCP, TLS, QUIC), so a client cannot double its
//! share by switching protocol.
//!
//! When the edge is full, a new connection is not simply refused: the
//! connection that has been *waiting* longest — connected with no request
//! in progress (silent, trickling a head, or idle between keep-alive
//! requests), for longer than the others — is told to close, and the
//! newcomer takes its place. A flood of idle connections then costs its
//! own members their places, not viewers, whose connections wait only
//! between a response and their next request; only when every connection
//! is busy is a newcomer refused. "Longest" is approximated as Redis
//! approximates LRU: the longest-waiting of 32 connections sampled (all of
//! them when there are few), so an eviction costs the same whatever the
//! number of connections, and nothing is done per request but two atomic
//! stores.

use parking_lot::Mutex;
use slab::Slab;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Full,
    /// `max_connections_per_ip` are open from this address.
    PerAddress,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "the edge is at its connection limit; try again shortly",
            Refusal::PerAddress => "too many connections from your address; close some first",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::PerAddress => "per_address",
        }
    }
}

/// The counts behind the slots.
#[derive(Debug)]
pub struct Connections {
    max_total: usize,
    max_per_address: usize,
    total: AtomicUsize,
    clock: AtomicU64,
    inner: Mutex<Inner>,
    /// Shows `total` (the edge's shared table; a door's own has none).
    gauge: Option<prometheus::IntGauge>,
}

#[derive(Debug, Default)]
struct Inner {
    per_address: HashMap<IpAddr, usize>,
    /// Every open connection not yet told to close.
    slots: Slab<Arc<State>>,
    /// Where the next eviction sample starts (a xorshift state).
    probe: u64,
}

/// What the table knows of one connection.
#[derive(Debug)]
struct State {
    /// A request is in progress: not to be evicted.
    busy: AtomicBool,
    /// When its current wait began, on the table's clock (a counter: only
    /// the order matters).
    since: AtomicU64,
    evict: Notify,
}

/// One admitted connection; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    table: Arc<Connections>,
    address: Option<IpAddr>,
    /// Its entry in the table's list (key and state), which the table's
    /// eviction samples; none while parked (`park`).
    listed: Option<(usize, Arc<State>)>,
}

impl Slot {
    /// Marks a request in progress (`true`) or the connection waiting for
    /// one (`false`; it may then be evicted when the edge is full, the
    /// longest waiting first). Nothing for a parked slot.
    pub fn set_busy(&self, busy: bool) {
        let Some((_, state)) = &self.listed else {
            return;
        };
        if !busy {
            let now = self.table.clock.fetch_add(1, Ordering::Relaxed);
            state.since.store(now, Ordering::Relaxed);
        }
        state.busy.store(busy, Ordering::Release);
    }

    /// Resolves when the table wants this connection closed for a
    /// newcomer (never, for a parked slot: its holder evicts it itself).
    pub async fn evicted(&self) {
        match &self.listed {
            Some((_, state)) => state.evict.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Lists a parked slot, so that the table's eviction may choose it
    /// (busy at first).
    pub fn list(&mut self) {
        if self.listed.is_none() {
            let state = self.table.new_state(true);
            let key = self.table.inner.lock().slots.insert(state.clone());
            self.listed = Some((key, state));
        }
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64 (one
/// host or one home network usually has a whole /64).
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Connections {
    /// A table of `max_total` connections, `max_per_address` per address;
    /// `gauge`, if given, follows how many are open.
    pub fn new(
        max_total: usize,
        max_per_address: usize,
        gauge: Option<prometheus::IntGauge>,
    ) -> Arc<Self> {
        assert!(
            max_total >= 1 && max_per_address >= 1,
            "limits are validated"
        );
        Arc::new(Connections {
            max_total,
            max_per_address,
            total: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            gauge,
            inner: Mutex::new(Inner {
                probe: 0x9E37_79B9_7F4A_7C15,
                ..Inner::default()
            }),
        })
    }

    /// A slot for a connection from `peer` (unknown: counted in the total
    /// only), or why not. At the limit, the longest-waiting connection is
    /// told to close and this one takes its place (the total may run over
    /// by the evictions still closing); with none waiting, `Full`. A new
    /// slot starts waiting; `busy` makes it exempt at once (QUIC).
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>, busy: bool) -> Result<Slot, Refusal> {
        self.take(peer, Some(busy))
    }

    /// Whether `peer` is under its share now (for a connection that holds
    /// no slot yet).
    pub fn address_has_room(&self, peer: IpAddr) -> bool {
        let inner = self.inner.lock();
        inner
            .per_address
            .get(&counted_as(peer))
            .copied()
            .unwrap_or(0)
            < self.max_per_address
    }

    /// A place for a connection that its holder keeps and evicts itself
    /// (the TCP lobby's silent guests): counted like any, but not listed
    /// for the table's eviction and with no state of its own (a few dozen
    /// bytes fewer for each of many parked connections) until
    /// [`Slot::list`]. `Full` at the limit.
    pub fn try_park(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Slot, Refusal> {
        self.take(peer, None)
    }

    /// `listed`: `Some(busy)` lists the slot for the table's eviction (and
    /// may evict to make room); `None` parks it (and never evicts).
    fn take(self: &Arc<Self>, peer: Option<IpAddr>, listed: Option<bool>) -> Result<Slot, Refusal> {
        let address = peer.map(counted_as);
        let mut inner = self.inner.lock();
        if let Some(ip) = address {
            if inner.per_address.get(&ip).copied().unwrap_or(0) >= self.max_per_address {
                return Err(Refusal::PerAddress);
            }
        }
        if self.total.load(Ordering::Acquire) >= self.max_total
            && !(listed.is_some() && inner.evict_longest_waiting())
        {
            return Err(Refusal::Full);
        }
        self.total.fetch_add(1, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.inc();
        }
        if let Some(ip) = address {
            *inner.per_address.entry(ip).or_insert(0) += 1;
        }
        let listed = listed.map(|busy| {
            let state = self.new_state(busy);
            (inner.slots.insert(state.clone()), state)
        });
        Ok(Slot {
            table: self.clone(),
            address,
            listed,
        })
    }

    fn new_state(&self, busy: bool) -> Arc<State> {
        Arc::new(State {
            busy: AtomicBool::new(busy),
            since: AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed)),
            evict: Notify::new(),
        })
    }

    /// The most connections the table admits.
    pub fn limit(&self) -> usize {
        self.max_total
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// Connections sampled per eviction.
const SAMPLE: usize = 32;

impl Inner {
    /// Tells the longest-waiting connection (of a sample) to close; whether
    /// there was one. It leaves the table's list at once (so it is asked
    /// only once); its place comes back when its task drops the slot.
    fn evict_longest_waiting(&mut self) -> bool {
        let waiting_since =
            |s: &State| (!s.busy.load(Ordering::Acquire)).then(|| s.since.load(Ordering::Relaxed));
        let mut best: Option<(u64, usize)> = None;
        if self.slots.len() > SAMPLE {
            let span = self.slots.capacity().max(1) as u64;
            for _ in 0..SAMPLE * 4 {
                // xorshift64: cheap, and no reader can steer it.
                self.probe ^= self.probe << 13;
                self.probe ^= self.probe >> 7;
                self.probe ^= self.probe << 17;
                let key = (self.probe % span) as usize;
                if let Some(t) = self.slots.get(key).and_then(|s| waiting_since(s)) {
                    best = best.min(Some((t, key))).or(Some((t, key)));
                }
            }
        }
        if best.is_none() {
            // Few connections, or the sample found every one busy.
            best = self
                .slots
                .iter()
                .filter_map(|(key, s)| waiting_since(s).map(|t| (t, key)))
                .min();
        }
        let Some((_, key)) = best else {
            return false;
        };
        self.slots.remove(key).evict.notify_one();
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.table.inner.lock();
        // Still listed (not evicted, its key not taken by another since).
        if let Some((key, state)) = &self.listed {
            if inner.slots.get(*key).is_some_and(|s| Arc::ptr_eq(s, state)) {
                inner.slots.remove(*key);
            }
        }
        if let Some(ip) = self.address {
            if let Some(n) = inner.per_address.get_mut(&ip) {
                debug_assert!(*n > 0, "a slot's address is counted");
                *n -= 1;
                if *n == 0 {
                    // Forget idle addresses: the map holds only open ones.
                    inner.per_address.remove(&ip);
                }
            }
        }
        drop(inner);
        if let Some(g) = &self.table.gauge {
            g.dec();
        }
        let before = self.table.total.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a slot is counted in the total");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Connections {
        fn addresses(&self) -> usize {
            self.inner.lock().per_address.len()
        }

        fn admit_waiting(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Slot, Refusal> {
            self.admit(peer, false)
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn limits_in_all_and_per_address_and_places_come_back() {
        let t = Connections::new(3, 2, None);
        let a1 = t.admit_waiting(ip("10.0.0.1")).unwrap();
        let a2 = t.admit_waiting(ip("10.0.0.1")).unwrap();
        assert_eq!(
            t.admit_waiting(ip("10.0.0.1")).unwrap_err(),
            Refusal::PerAddress
        );
        let b = t.admit_waiting(ip("10.0.0.2")).unwrap();
        for s in [&a1, &a2, &b] {
            s.set_busy(true);
        }
        assert_eq!(
            t.admit_waiting(ip("10.0.0.3")).unwrap_err(),
            Refusal::Full,
            "all busy"
        );
        assert_eq!(t.open(), 3, "refusals hold no place");
        drop(a1);
        let a3 = t.admit_waiting(ip("10.0.0.1")).unwrap();
        drop((a2, a3, b));
        assert_eq!((t.open(), t.addresses()), (0, 0), "nothing left behind");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_v4_as_v4() {
        let t = Connections::new(10, 1, None);
        let _a = t.admit_waiting(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            t.admit_waiting(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            Refusal::PerAddress,
            "same /64"
        );
        let _b = t.admit_waiting(ip("2001:db8:1:3::1")).unwrap();
        let _c = t.admit_waiting(ip("192.0.2.7")).unwrap();
        assert_eq!(
            t.admit_waiting(ip("::ffff:192.0.2.7")).unwrap_err(),
            Refusal::PerAddress
        );
    }

    #[tokio::test]
    async fn when_full_the_longest_waiting_connection_makes_room() {
        let within = std::time::Duration::from_secs(1);
        let t = Connections::new(3, 3, None);
        // `viewer` connected first but has just had a response; `idle`
        // connected later and has sent nothing since.
        let viewer = t.admit_waiting(ip("10.0.0.1")).unwrap();
        let busy = t.admit_waiting(ip("10.0.0.2")).unwrap();
        let idle = t.admit_waiting(ip("10.0.0.3")).unwrap();
        busy.set_busy(true);
        viewer.set_busy(true);
        viewer.set_busy(false);
        let newcomer = t.admit_waiting(ip("10.0.0.4")).expect("room is made");
        tokio::time::timeout(within, idle.evicted())
            .await
            .expect("the longest-waiting connection is told to close");
        assert_eq!(t.open(), 4, "over by the eviction still closing");
        drop(idle);
        assert_eq!(t.open(), 3);
        // Next: the viewer (waiting since before the newcomer came), never
        // the busy one.
        let second = t.admit_waiting(ip("10.0.0.5")).unwrap();
        tokio::time::timeout(within, viewer.evicted())
            .await
            .expect("then the next longest waiting");
        drop(viewer);
        newcomer.set_busy(true);
        second.set_busy(true);
        assert_eq!(t.admit_waiting(ip("10.0.0.6")).unwrap_err(), Refusal::Full);
        drop(busy);
        assert!(t.admit_waiting(ip("10.0.0.6")).is_ok(), "a place came back");
    }

    #[test]
    fn a_large_table_evicts_a_long_waiter_by_sampling() {
        // 1 000 connections, every tenth busy; a full table evicts one that
        // is waiting, and (sampling 32 of them) among the longer waiters.
        let t = Connections::new(1000, 1000, None);
        let slots: Vec<Slot> = (0..1000)
            .map(|_| t.admit_waiting(ip("10.0.0.1")).unwrap())
            .collect();
        for (i, s) in slots.iter().enumerate() {
            if i % 10 == 0 {
                s.set_busy(true);
            }
        }
        for s in slots.iter().skip(500) {
            s.set_busy(false); // these waited least: their wait began last
        }
        let _newcomer = t.admit(None, true).expect("room is made");
        let evicted: Vec<usize> = {
            let inner = t.inner.lock();
            (0..1000)
                .filter(|i| {
                    !inner
                        .slots
                        .get(slots[*i].listed.as_ref().unwrap().0)
                        .is_some_and(|s| Arc::ptr_eq(s, &slots[*i].listed.as_ref().unwrap().1))
                })
                .collect()
        };
        assert_eq!(evicted.len(), 1, "{evicted:?}");
        assert!(
            !evicted[0].is_multiple_of(10) && evicted[0] < 500,
            "{evicted:?}"
        );
    }

    #[tokio::test]
    async fn parked_slots_count_but_only_listed_ones_are_evicted_by_the_table() {
        let t = Connections::new(2, 2, None);
        let mut parked = t.try_park(ip("10.0.0.1")).unwrap();
        let _other = t.try_park(ip("10.0.0.1")).unwrap();
        assert_eq!(t.try_park(ip("10.0.0.2")).unwrap_err(), Refusal::Full);
        assert_eq!(
            t.admit_waiting(ip("10.0.0.3")).unwrap_err(),
            Refusal::Full,
            "parked ones are not the table's to evict"
        );
        assert!(!t.address_has_room("10.0.0.1".parse().unwrap()));
        parked.list();
        parked.set_busy(false);
        let _newcomer = t
            .admit_waiting(ip("10.0.0.3"))
            .expect("a listed waiting slot makes room");
        tokio::time::timeout(std::time::Duration::from_secs(1), parked.evicted())
            .await
            .expect("told to close");
    }

    #[test]
    fn a_panicking_task_gives_its_place_back() {
        let t = Connections::new(1, 1, None);
        let slot = t.admit_waiting(ip("10.0.0.1")).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = slot;
            panic!("connection task panics");
        }));
        assert!(r.is_err());
        assert!(t.admit_waiting(ip("10.0.0.1")).is_ok());
    }
}
