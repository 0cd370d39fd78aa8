//! Signed envelopes: every node-to-HUB message is one. The signature covers
//! a domain string (so a signature for one purpose is useless for another),
//! the sender's key, a timestamp and a random nonce; the verifier refuses
//! bad signatures, stale timestamps and replays. Sans-IO: time is passed in.

use crate::identity::{KeyError, NodeKey};
use ed25519_dalek::{Signer, VerifyingKey};
use std::collections::HashMap;

const CONTEXT: &[u8] = b"meshcast-envelope-v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub domain: String,
    pub sender: [u8; 32],
    /// Unix seconds when sealed.
    pub timestamp: u64,
    pub nonce: [u8; 16],
    pub body: Vec<u8>,
    pub signature: [u8; 64],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    #[error("envelope is for {got:?}, expected {expected:?}")]
    WrongDomain { expected: String, got: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("timestamp is {0} s away from now (allowed: {1} s)")]
    Stale(u64, u64),
    #[error("replayed envelope (this sender already used this nonce)")]
    Replay,
}

fn signed_bytes(
    domain: &str,
    sender: &[u8; 32],
    timestamp: u64,
    nonce: &[u8; 16],
    body: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + domain.len() + 64 + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&(domain.len() as u16).to_be_bytes());
    m.extend_from_slice(domain.as_bytes());
    m.extend_from_slice(sender);
    m.extend_from_slice(&timestamp.to_be_bytes());
    m.extend_from_slice(nonce);
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

impl Envelope {
    pub fn seal(
        key: &NodeKey,
        domain: &str,
        body: Vec<u8>,
        now: u64,
    ) -> Result<Envelope, KeyError> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
        let sender = key.public().to_bytes();
        let signature = key
            .signing()
            .sign(&signed_bytes(domain, &sender, now, &nonce, &body))
            .to_bytes();
        Ok(Envelope {
            domain: domain.to_string(),
            sender,
            timestamp: now,
            nonce,
            body,
            signature,
        })
    }

    /// Whether the sender signed this envelope (signature only: no clock,
    /// no replay check). For evidence, read long after it was sent.
    pub fn verify_signature(&self) -> Result<VerifyingKey, EnvelopeError> {
        let key = VerifyingKey::from_bytes(&self.sender)
            .map_err(|_| EnvelopeError::Malformed("sender is not an Ed25519 key"))?;
        let message = signed_bytes(
            &self.domain,
            &self.sender,
            self.timestamp,
            &self.nonce,
            &self.body,
        );
        if !crate::ed25519::verify(&self.sender, &message, &self.signature) {
            return Err(EnvelopeError::BadSignature);
        }
        Ok(key)
    }

    /// Wire form: the signed bytes followed by the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = signed_bytes(
            &self.domain,
            &self.sender,
            self.timestamp,
            &self.nonce,
            &self.body,
        );
        out.extend_from_slice(&self.signature);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let rest = bytes
            .strip_prefix(CONTEXT)
            .ok_or(EnvelopeError::Malformed("not a meshcast envelope"))?;
        let mut r = rest;
        let mut take = |n: usize| -> Result<&[u8], EnvelopeError> {
            if r.len() < n {
                return Err(EnvelopeError::Malformed("truncated"));
            }
            let (a, b) = r.split_at(n);
            r = b;
            Ok(a)
        };
        let dlen = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let domain = std::str::from_utf8(take(dlen)?)
            .map_err(|_| EnvelopeError::Malformed("domain is not UTF-8"))?
            .to_string();
        let sender: [u8; 32] = take(32)?.try_into().expect("32 bytes");
        let timestamp = u64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        let nonce: [u8; 16] = take(16)?.try_into().expect("16 bytes");
        let blen = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let body = take(blen)?.to_vec();
        let signature: [u8; 64] = take(64)?.try_into().expect("64 bytes");
        if !r.is_empty() {
            return Err(EnvelopeError::Malformed("trailing bytes"));
        }
        Ok(Envelope {
            domain,
            sender,
            timestamp,
            nonce,
            body,
            signature,
        })
    }
}

/// Checks envelopes for one domain; remembers nonces for twice the allowed
/// clock skew, after which the timestamp check alone refuses a replay.
pub struct Verifier {
    domain: String,
    max_skew: u64,
    seen: HashMap<([u8; 32], [u8; 16]), u64>,
}

impl Verifier {
    pub fn new(domain: &str, max_skew_secs: u64) -> Self {
        Verifier {
            domain: domain.to_string(),
            max_skew: max_skew_secs,
            seen: HashMap::new(),
        }
    }

    /// Verifies and records `env`; returns the sender's key.
    pub fn verify(&mut self, env: &Envelope, now: u64) -> Result<VerifyingKey, EnvelopeError> {
        if env.domain != self.domain {
            return Err(EnvelopeError::WrongDomain {
                expected: self.domain.clone(),
                got: env.domain.clone(),
            });
        }
        let key = env.verify_signature()?;
        let skew = now.abs_diff(env.timestamp);
        if skew > self.max_skew {
            return Err(EnvelopeError::Stale(skew, self.max_skew));
        }
        let horizon = now.saturating_sub(2 * self.max_skew);
        self.seen.retain(|_, ts| *ts >= horizon);
        if self
            .seen
            .insert((env.sender, env.nonce), env.timestamp)
            .is_some()
        {
            return Err(EnvelopeError::Replay);
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_refusal() {
        let key = NodeKey::from_seed([7; 32]);
        let env = Envelope::seal(&key, "heartbeat", b"load=0.3".to_vec(), 1_000).unwrap();
        let wire = env.encode();
        assert_eq!(Envelope::decode(&wire).unwrap(), env);
        let mut v = Verifier::new("heartbeat", 30);
        assert_eq!(v.verify(&env, 1_010).unwrap(), key.public());
        assert_eq!(v.verify(&env, 1_011), Err(EnvelopeError::Replay));
        let late = Envelope::seal(&key, "heartbeat", b"x".to_vec(), 1_000).unwrap();
        assert_eq!(v.verify(&late, 1_100), Err(EnvelopeError::Stale(100, 30)));
        let mut tampered = Envelope::seal(&key, "heartbeat", b"load=0.3".to_vec(), 1_000).unwrap();
        tampered.body = b"load=0.0".to_vec();
        assert_eq!(v.verify(&tampered, 1_000), Err(EnvelopeError::BadSignature));
        let other = Envelope::seal(&key, "register", b"x".to_vec(), 1_000).unwrap();
        assert!(matches!(
            v.verify(&other, 1_000),
            Err(EnvelopeError::WrongDomain { .. })
        ));
        // Re-labelling the domain breaks the signature: domains are signed.
        let mut relabel = other.clone();
        relabel.domain = "heartbeat".into();
        assert_eq!(v.verify(&relabel, 1_000), Err(EnvelopeError::BadSignature));
        assert_eq!(
            Envelope::decode(&wire[..wire.len() - 1]),
            Err(EnvelopeError::Malformed("truncated"))
        );
        assert!(Envelope::decode(b"garbage").is_err());
    }
}
