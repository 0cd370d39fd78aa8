//! Which nodes count: admission by stake (read from this HUB's chain) and
//! steering (which admitted edges a viewer's token names).
//!
//! Steering is rendezvous hashing (HRW) over the admitted edges that are
//! up, keyed by the viewer's address and the video: the same viewer asking
//! again gets the same edges (so asking repeatedly cannot shop for a
//! friendly edge), one edge leaving moves only its own viewers, and no
//! one — not the viewer, not an edge — picks the edge a HUB token pays.

use crate::nodes::{now_secs, HEARTBEAT_SECS, MISSED_HEARTBEATS};
use crate::registry::NodeRecord;
use crate::{Hub, HubError};
use meshcast_control::messages::Admission;
use std::net::IpAddr;

/// Edges a HUB token names: the first serves, the second is its fallback.
pub const STEERED_EDGES: usize = 2;

/// An admitted edge a viewer may be steered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub key: [u8; 32],
    pub addr: String,
}

/// The `n` candidates with the highest rendezvous score for (viewer, video).
pub fn steer(
    mut candidates: Vec<Candidate>,
    viewer: IpAddr,
    video: &str,
    n: usize,
) -> Vec<Candidate> {
    let score = |c: &Candidate| -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("meshcast steering v1");
        h.update(&c.key);
        h.update(video.as_bytes());
        h.update(b"\n");
        h.update(viewer.to_string().as_bytes());
        h.finalize().into()
    };
    candidates.sort_by_cached_key(|c| std::cmp::Reverse(score(c)));
    candidates.truncate(n);
    candidates
}

/// The node's key as bytes (records keep it as hex, written by this HUB).
pub fn node_key(n: &NodeRecord) -> Option<[u8; 32]> {
    let mut k = [0u8; 32];
    hex::decode_to_slice(&n.key, &mut k).ok()?;
    Some(k)
}

/// Heard from within the last few heartbeats.
pub fn is_up(n: &NodeRecord, now: u64) -> bool {
    now.saturating_sub(n.last_seen) <= MISSED_HEARTBEATS * HEARTBEAT_SECS
}

impl Hub {
    /// The node's bonded stake against what its roles need, as this HUB's
    /// chain has it now.
    pub fn admission(&self, n: &NodeRecord) -> Admission {
        let key = node_key(n).unwrap_or_default();
        self.ledger.admission(&key, &n.roles)
    }

    /// Why a node that is not admitted is refused, with what to do.
    pub fn not_admitted(n: &NodeRecord, a: Admission) -> String {
        format!(
            "node {} is not admitted: {} µMESH bonded on the ledger, its roles {:?} need {}; \
             bond {} more from its key (`meshcast ledger tx --key NODE_KEY --api HUB bond --amount {}`)",
            n.id,
            a.stake,
            n.roles,
            a.needed,
            a.needed - a.stake.min(a.needed),
            a.needed - a.stake.min(a.needed),
        )
    }

    /// Admitted edges that are up, in registration order.
    pub fn edge_candidates(&self) -> Result<Vec<Candidate>, HubError> {
        let now = now_secs();
        Ok(self
            .registry
            .nodes()?
            .into_iter()
            .filter(|n| n.roles.iter().any(|r| r == "edge") && is_up(n, now))
            .filter(|n| self.admission(n).admitted())
            .filter_map(|n| {
                Some(Candidate {
                    key: node_key(&n)?,
                    id: n.id,
                    addr: n.addr,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(n: u8) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: format!("node{i}"),
                key: [i; 32],
                addr: format!("http://edge{i}"),
            })
            .collect()
    }

    #[test]
    fn steering_is_stable_spread_and_moves_only_a_departed_edges_viewers() {
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
        let all = edges(8);
        // Asking again never changes the answer.
        assert_eq!(
            steer(all.clone(), ip(1), "v", 2),
            steer(all.clone(), ip(1), "v", 2)
        );
        // 4 000 viewers spread over 8 edges: each first choice near 500.
        let mut first = [0usize; 8];
        for i in 0..4000 {
            first[steer(all.clone(), ip(i), "v", 2)[0].key[0] as usize] += 1;
        }
        assert!(first.iter().all(|&c| (380..=620).contains(&c)), "{first:?}");
        // Edge 3 leaves: only viewers whose first choice was 3 move.
        let without: Vec<Candidate> = all.iter().filter(|c| c.key[0] != 3).cloned().collect();
        for i in 0..4000 {
            let before = steer(all.clone(), ip(i), "v", 1)[0].key[0];
            let after = steer(without.clone(), ip(i), "v", 1)[0].key[0];
            assert!(
                before == after || before == 3,
                "viewer {i} moved {before} → {after}"
            );
        }
        // Fewer candidates than asked for: all of them, no duplicates.
        let two = steer(edges(2), ip(9), "v", 5);
        assert_eq!(two.len(), 2);
        assert_ne!(two[0], two[1]);
    }
}
