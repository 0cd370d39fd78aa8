//! meshcast-ledger owns the network's money as a deterministic state
//! machine: accounts, customer escrow, node stake with delayed unbonding,
//! rewards paid from escrow for delivery, storage and transcoding, slashing
//! with evidence, and transfers. Applying a block is a pure function of
//! state and block (`state.rs`); transactions are Ed25519-signed with a
//! chain id and a nonce (`tx.rs`); the app hash is a BLAKE3 Merkle root over
//! every account, so any node can prove a balance (`hash.rs`); `store.rs`
//! keeps it in redb; `node.rs` holds the mempool and commits decided
//! blocks; `api.rs` is the HTTP/JSON API as a router for the caller to
//! bind. Consensus (ordering blocks among HUBs) is `meshcast-consensus`,
//! on top of this crate: this one must not open sockets or decide what goes
//! in a block.

pub mod api;
pub mod hash;
pub mod node;
pub mod state;
pub mod store;
pub mod tx;

pub use state::{Account, BlockResult, Genesis, Params, State, TxError};
pub use tx::{vote_sign_bytes, Action, Block, Evidence, SignedProposal, SignedVote, Tx, Work};

/// Ed25519 public key of an account, validator or node.
pub type Address = [u8; 32];

/// Serde for 32-byte keys as hex strings.
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not 64 hex digits")))?;
        Ok(out)
    }
}

/// Serde for 64-byte signatures as hex strings.
pub mod hex64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 64];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|_| serde::de::Error::custom("signature is not 128 hex digits"))?;
        Ok(out)
    }
}
