//! Proof of storage, the protocol side: which slices of which shards a
//! storage node must produce in an audit, and the verdict on its answer.
//! A challenge comes from a Merlin transcript over the latest ledger block
//! hash, the node's id and each shard it holds, so neither the node nor
//! the HUB picks it; the answer is judged against what the HUB itself
//! keeps (each shard's length and BLAKE3 root), not against anything the
//! node says. Time is passed in.
//!
//! Slice count: every audit draws `SLICES_PER_SHARD` distinct 1 KiB chunks
//! of every shard the node holds. A node that dropped or altered a share
//! `d` of a shard's chunks (dropping a share `d` of its bytes spoils at
//! least that share of chunks) passes one audit with probability at most
//! `(1 − d)^s` and `A` audits over independent block hashes with at most
//! `(1 − d)^(s·A)`. For `d = 10 %`, `A = 20` and a miss of at most 10⁻⁶:
//! `s ≥ ln 10⁻⁶ / (20 · ln 0.9) = 6.56`, so `s = 7` (0.9¹⁴⁰ = 3.9 · 10⁻⁷;
//! six would give 3.2 · 10⁻⁶). An answer costs the node about
//! `7 · (1 KiB + 64 B · log₂ chunks)` per shard: ~11 KiB for a 512 KiB
//! shard.
//!
//! What this does not prove: that the node holds the shard *alone*. A node
//! that kept nothing could rebuild the asked chunks from `k` other shards
//! at audit time; the deadline makes that cost `k` fetches per audit, and
//! the HUB pays only passed audits.

use crate::sample::draw_distinct;
use merlin::Transcript;
use meshcast_shards::{verify, CHUNK};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// HUB → storage node: the challenge (body: `Challenge`).
pub const AUDIT: &str = "meshcast-storage-audit-v1";
/// Storage node → HUB: its answer (body: `Answer`).
pub const AUDIT_ANSWER: &str = "meshcast-storage-answer-v1";

/// Chunks drawn from each shard in one audit.
pub const SLICES_PER_SHARD: usize = 7;

/// A shard as the HUB knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The shard's name in the placement map (`video/object/index`).
    pub shard: String,
    pub len: u64,
    #[serde(with = "hex::serde")]
    pub root: [u8; 32],
}

/// What the node must answer: per shard, the chunks (indices) asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub node: String,
    #[serde(with = "hex::serde")]
    pub block: [u8; 32],
    /// Unix milliseconds after which the answer is late.
    pub deadline_ms: u64,
    pub asked: Vec<(String, Vec<u64>)>,
}

/// The node's answer: each asked chunk's slice (bao slice encoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub node: String,
    #[serde(with = "hex::serde")]
    pub block: [u8; 32],
    pub slices: Vec<Slice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub shard: String,
    pub chunk: u64,
    #[serde(with = "hex::serde")]
    pub bytes: Vec<u8>,
}

/// The chunks of one shard an audit at `block` asks of `node`.
pub fn chunks_asked(block: &[u8; 32], node: &str, held: &Held) -> Vec<u64> {
    let mut t = Transcript::new(b"meshcast storage audit v1");
    t.append_message(b"block", block);
    t.append_message(b"node", node.as_bytes());
    t.append_message(b"shard", held.shard.as_bytes());
    t.append_message(b"root", &held.root);
    t.append_u64(b"len", held.len);
    draw_distinct(&mut t, b"chunk", held.len.div_ceil(CHUNK), SLICES_PER_SHARD)
}

/// The audit of `node` over everything it holds, at `block`.
pub fn challenge(node: &str, block: [u8; 32], held: &[Held], deadline_ms: u64) -> Challenge {
    Challenge {
        node: node.to_string(),
        block,
        deadline_ms,
        asked: held
            .iter()
            .map(|h| (h.shard.clone(), chunks_asked(&block, node, h)))
            .collect(),
    }
}

/// The slices a node holding the shards answers with (`read` gives a
/// shard's bytes and outboard tree, `None` if it lost them; one shard is
/// held at a time).
pub fn answer<D: AsRef<[u8]>>(
    c: &Challenge,
    mut read: impl FnMut(&str) -> Option<(D, D)>,
) -> Answer {
    let mut slices = Vec::new();
    for (shard, chunks) in &c.asked {
        let Some((data, tree)) = read(shard) else {
            continue;
        };
        for &chunk in chunks {
            let (data, tree) = (data.as_ref(), tree.as_ref());
            if let Ok(bytes) = meshcast_shards::extract(data, tree, chunk * CHUNK, CHUNK) {
                slices.push(Slice {
                    shard: shard.clone(),
                    chunk,
                    bytes,
                });
            }
        }
    }
    Answer {
        node: c.node.clone(),
        block: c.block,
        slices,
    }
}

/// How an audit went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// Received after the deadline (whatever it held).
    Late,
    /// The asked chunks it did not prove, by shard.
    Failed(Vec<(String, u64)>),
}

/// Judges `answer` to `c` against the HUB's own record of the shards,
/// received at `now_ms`.
pub fn judge(c: &Challenge, held: &[Held], answer: &Answer, now_ms: u64) -> Verdict {
    if now_ms > c.deadline_ms {
        return Verdict::Late;
    }
    let same_audit = answer.node == c.node && answer.block == c.block;
    let held: HashMap<&str, &Held> = held.iter().map(|h| (h.shard.as_str(), h)).collect();
    let mut given: HashMap<(&str, u64), &[u8]> = HashMap::new();
    for s in answer.slices.iter().filter(|_| same_audit) {
        given.entry((s.shard.as_str(), s.chunk)).or_insert(&s.bytes);
    }
    let mut failed = Vec::new();
    for (shard, chunks) in &c.asked {
        let Some(h) = held.get(shard.as_str()) else {
            continue;
        };
        for &chunk in chunks {
            let proven = given
                .get(&(shard.as_str(), chunk))
                .is_some_and(|b| verify(&h.root, h.len, (chunk * CHUNK, CHUNK), b).is_ok());
            if !proven {
                failed.push((shard.clone(), chunk));
            }
        }
    }
    if failed.is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed(failed)
    }
}
