//! Where a video's shards live, as the HUB tells the nodes that need it:
//! what it asks a storage node to keep (`Store`, in a HUB-signed envelope)
//! and what an edge reading from the network gets (`Placement`, with the
//! content key wrapped for that edge alone).

use serde::{Deserialize, Serialize};

/// HUB → storage node: keep this shard (the envelope rides in the
/// `meshcast-envelope` header of the PUT that carries the bytes).
pub const STORE: &str = "meshcast-storage-store-v1";
/// The header a shard's PUT carries its `Store` envelope in (hex).
pub const STORE_HEADER: &str = "meshcast-envelope";
/// Edge → HUB: where are this video's shards.
pub const PLACEMENT: &str = "meshcast-storage-placement-v1";

/// What a storage node is asked to keep: the shard's name, length and
/// root, against which it checks the bytes before it keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    pub shard: String,
    pub len: u64,
    #[serde(with = "hex::serde")]
    pub root: [u8; 32],
}

/// An edge's question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRequest {
    pub video: String,
}

/// A video's placement, for one edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub video: String,
    /// Reed–Solomon data and parity shards per object.
    pub data: usize,
    pub parity: usize,
    /// The content key wrapped for the asking edge (`meshcast_shards::WrappedKey` bytes).
    #[serde(with = "hex::serde")]
    pub key: Vec<u8>,
    pub objects: Vec<PlacedObject>,
}

/// One published object (a segment or init segment) and its shards, in
/// shard order (data first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedObject {
    /// Path under the video, e.g. "720p/seg_00003.m4s".
    pub path: String,
    /// The plaintext's length and BLAKE3 hash (the reader's last check).
    pub len: u64,
    #[serde(with = "hex::serde")]
    pub hash: [u8; 32],
    pub shards: Vec<PlacedShard>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedShard {
    pub node: String,
    /// The storage node's base URL.
    pub addr: String,
    pub name: String,
    pub len: u64,
    #[serde(with = "hex::serde")]
    pub root: [u8; 32],
}

/// A shard's name: the object's place and the shard's index.
pub fn shard_name(video: &str, path: &str, index: usize) -> String {
    format!("{video}/{path}/{index}")
}
