//! How many client connections the edge holds, in all and per address: a
//! connection takes a [`Slot`] before any byte of it is read and gives it
//! back when the slot drops (whatever ends the task, a panic included). One
//! table for every door (TCP, TLS, QUIC), so a client cannot double its
//! share by switching protocol.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    table: Arc<Connections>,
    address: Option<IpAddr>,
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
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        assert!(
            max_total >= 1 && max_per_address >= 1,
            "limits are validated"
        );
        Arc::new(Connections {
            max_total,
            max_per_address,
            total: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `peer` (unknown: counted in the total
    /// only), or why not.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Slot, Refusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if total >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        let address = peer.map(counted_as);
        if let Some(ip) = address {
            let mut map = self.per_address.lock();
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_address {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerAddress);
            }
            *n += 1;
        }
        Ok(Slot {
            table: self.clone(),
            address,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Addresses with a connection open now.
    pub fn addresses(&self) -> usize {
        self.per_address.lock().len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.address {
            let mut map = self.table.per_address.lock();
            if let Some(n) = map.get_mut(&ip) {
                debug_assert!(*n > 0, "a slot's address is counted");
                *n -= 1;
                if *n == 0 {
                    // Forget idle addresses: the map holds only open ones.
                    map.remove(&ip);
                }
            }
        }
        let before = self.table.total.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a slot is counted in the total");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn limits_in_all_and_per_address_and_places_come_back() {
        let t = Connections::new(3, 2);
        let a1 = t.admit(ip("10.0.0.1")).unwrap();
        let a2 = t.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(t.admit(ip("10.0.0.1")).unwrap_err(), Refusal::PerAddress);
        let b = t.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(t.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Full);
        assert_eq!(t.open(), 3, "refusals hold no place");
        drop(a1);
        let a3 = t.admit(ip("10.0.0.1")).unwrap();
        drop((a2, a3, b));
        assert_eq!((t.open(), t.addresses()), (0, 0), "nothing left behind");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_v4_as_v4() {
        let t = Connections::new(10, 1);
        let _a = t.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            t.admit(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            Refusal::PerAddress,
            "same /64"
        );
        let _b = t.admit(ip("2001:db8:1:3::1")).unwrap();
        let _c = t.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(
            t.admit(ip("::ffff:192.0.2.7")).unwrap_err(),
            Refusal::PerAddress
        );
    }

    #[test]
    fn a_panicking_task_gives_its_place_back() {
        let t = Connections::new(1, 1);
        let slot = t.admit(ip("10.0.0.1")).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = slot;
            panic!("connection task panics");
        }));
        assert!(r.is_err());
        assert!(t.admit(ip("10.0.0.1")).is_ok());
    }
}
