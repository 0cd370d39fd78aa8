//! The bodies nodes and HUBs exchange inside signed envelopes, and the
//! envelope domains that keep one kind from being accepted as another.

use serde::{Deserialize, Serialize};

pub const REGISTER: &str = "meshcast-register-v1";
pub const HEARTBEAT: &str = "meshcast-heartbeat-v1";
pub const CLAIM: &str = "meshcast-claim-v1";
pub const OPENING: &str = "meshcast-opening-v1";

/// How far a node's clock may be from the HUB's.
pub const MAX_SKEW_SECS: u64 = 120;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    /// Base URL viewers reach this node at, e.g. "http://203.0.113.5:8080".
    pub addr: String,
    pub roles: Vec<String>,
    pub capacity_bytes: u64,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Requests in flight per worker thread, roughly.
    pub load: f64,
    pub cache_bytes: u64,
    pub bytes_out: u64,
}

/// A key allowed to sign playback tokens for paths under `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuer {
    pub key: String,
    pub prefix: String,
}

/// A node's stake on the HUB's chain and what its roles need (µMESH).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub stake: u64,
    pub needed: u64,
}

impl Admission {
    /// Admitted: steered to and paid. Otherwise neither.
    pub fn admitted(&self) -> bool {
        self.stake >= self.needed
    }
}

/// The HUB's answer to a registration or heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HubInfo {
    pub hub: String,
    pub node: String,
    pub issuers: Vec<Issuer>,
    /// Whether the node is admitted (absent from HUBs before admission).
    #[serde(default)]
    pub admission: Option<Admission>,
    /// The network's delivery epoch in seconds, if its genesis sets one.
    #[serde(default)]
    pub epoch_secs: Option<u64>,
}

/// The HUB's answer to a claim: which entries to open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    pub epoch: u64,
    pub indices: Vec<usize>,
}

/// Whether `key` is in `issuers` at all (for any prefix).
pub fn issuer_known(issuers: &[Issuer], key: &[u8; 32]) -> bool {
    let k = key_hex(key);
    issuers.iter().any(|i| i.key.as_bytes() == k)
}

/// Whether `issuers` lets `key` sign a token for `prefix`.
pub fn issuer_allows(issuers: &[Issuer], key: &[u8; 32], prefix: &str) -> bool {
    let k = key_hex(key);
    issuers
        .iter()
        .any(|i| i.key.as_bytes() == k && prefix.starts_with(&i.prefix))
}

/// `key` in lowercase hex, as issuer lists write it, on the stack: these
/// are asked on every tokened request, against lists of many owners.
fn key_hex(key: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    hex::encode_to_slice(key, &mut k).expect("64 hex digits for 32 bytes");
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_matched_by_key_and_prefix() {
        let key = [0xab; 32];
        let issuers = vec![
            Issuer {
                key: "not hex".into(),
                prefix: "/".into(),
            },
            Issuer {
                key: hex::encode(key),
                prefix: "/v/one/".into(),
            },
        ];
        assert!(issuer_known(&issuers, &key));
        assert!(!issuer_known(&issuers, &[0xac; 32]));
        assert!(issuer_allows(&issuers, &key, "/v/one/"));
        assert!(!issuer_allows(&issuers, &key, "/v/two/"));
        assert!(!issuer_allows(&issuers, &[0; 32], "/v/one/"));
    }
}
