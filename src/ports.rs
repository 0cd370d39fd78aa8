//! Free loopback ports for the servers `meshcast up` and `meshcast ledger
//! init` write into configs before the processes that bind them start.

use anyhow::bail;

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
    pub fn take(&mut self) -> anyhow::Result<u16> {
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
        bail!("no free loopback port below {}", self.low)
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
}
