//! Content as the network stores it. A published object (a segment, an
//! init segment) is sealed with its video's content key
//! (ChaCha20-Poly1305, the object's path as associated data), cut into
//! `k` data and `m` parity shards (Reed–Solomon over GF(2¹⁶),
//! `reed-solomon-simd`), and each shard gets a BLAKE3 verified-streaming
//! root (`bao`, outboard tree), so a reader or an auditor checks any
//! 1 KiB-aligned slice of a shard against 32 bytes the HUB keeps. A
//! content key reaches the nodes allowed to serve the video wrapped for
//! each (X25519 with a fresh ephemeral key, a BLAKE3-derived key, the same
//! AEAD); storage nodes only ever hold ciphertext.
//!
//! Sans-IO: bytes in, bytes out. This crate must not touch the network,
//! the disk or the clock; which node holds which shard, when audits run
//! and what they pay belong to the HUB and `meshcast-control`.

mod code;
mod seal;
mod slice;
mod wrap;

pub use code::{decode, encode, Layout};
pub use seal::{open, seal, ContentKey};
pub use slice::{extract, outboard, slice_len, verify, Root, CHUNK};
pub use wrap::{public_key, unwrap_key, wrap_key, WrappedKey};

/// Why shard data was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("bad layout: {0}")]
    Layout(String),
    #[error("{0} of the {1} shards needed are missing")]
    TooFew(usize, usize),
    #[error("shard {0} is {1} bytes; the others are {2}")]
    Size(usize, usize, usize),
    #[error("the shards do not decode to an object (corrupt or from different objects)")]
    Corrupt,
    #[error("the object does not open with this key (wrong key, wrong path, or altered bytes)")]
    Open,
    #[error("the slice does not verify against the shard's root")]
    Slice,
    #[error("the wrapped key does not unwrap with this node's key")]
    Unwrap,
}
