//! meshcast-ports owns one thing: choosing loopback ports for servers that
//! are written into configs before the processes that bind them start
//! (`meshcast up`, `meshcast ledger init`, the loadtest harness and the
//! integration tests). It binds only to probe and releases at once; it
//! must not hold sockets or know what the ports are for.

use std::sync::Mutex;

/// Every port below the ephemeral range is taken or unbindable.
#[derive(Debug, thiserror::Error)]
#[error("no free loopback port below {below} (the start of the kernel's ephemeral range)")]
pub struct NoFreePort {
    pub below: u16,
}

/// A port from one `Ports` shared by the whole process, so two callers in
/// one process never get the same port.
pub fn free_port() -> Result<u16, NoFreePort> {
    static PORTS: Mutex<Option<Ports>> = Mutex::new(None);
    // A caller that panicked holding the lock left the list intact.
    let mut ports = PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    ports.get_or_insert_with(Ports::new).take()
}

/// Ports drawn from just below the kernel's ephemeral range. A port
/// `bind(0)` hands out lies in that range, where every process's outgoing
/// connections take their local ports, so it can be taken before the
/// server it was meant for binds it; below it only listeners compete.
pub struct Ports {
    next: u32,
    low: u16,
    span: u32,
    given: Vec<u16>,
}

impl Default for Ports {
    fn default() -> Self {
        Self::new()
    }
}

impl Ports {
    pub fn new() -> Ports {
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768)
            .max(2048);
        Ports {
            next: std::process::id().wrapping_mul(7919),
            low,
            span: u32::from(low.min(16384)) - 1024,
            given: Vec::new(),
        }
    }

    /// A port free now for both TCP and UDP, not handed out before.
    pub fn take(&mut self) -> Result<u16, NoFreePort> {
        for _ in 0..self.span {
            self.next = self.next.wrapping_add(13);
            let port = (u32::from(self.low) - 1 - self.next % self.span) as u16;
            let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
            if free && !self.given.contains(&port) {
                self.given.push(port);
                return Ok(port);
            }
        }
        Err(NoFreePort { below: self.low })
    }
}

#[cfg(test)]
mod tests {
    use super::Ports;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let mut ports = Ports::new();
        let taken: Vec<u16> = (0..50).map(|_| ports.take().unwrap()).collect();
        let mut unique = taken.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), taken.len(), "{taken:?}");
        for p in taken {
            assert!(
                p < ports.low && p >= 1024,
                "{p} (ephemeral from {})",
                ports.low
            );
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn the_process_wide_ports_never_repeat() {
        let taken: Vec<u16> = (0..20).map(|_| super::free_port().unwrap()).collect();
        let mut unique = taken.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), taken.len(), "{taken:?}");
    }
}
