//! A content key wrapped for one node: X25519 between a fresh ephemeral
//! key and the node's, a key derived from the shared secret and both
//! public keys (BLAKE3 `derive_key`), and ChaCha20-Poly1305 over the
//! content key with the video's id as associated data. The ephemeral key
//! is used once, so the AEAD's nonce may be fixed (as in HPKE's base mode).

use crate::{ContentKey, ShardError};
use ring::aead::{Aad, Nonce, NONCE_LEN};
use x25519_dalek::{PublicKey, StaticSecret};

const CONTEXT: &str = "meshcast 2026 content key wrap v1";

/// What a node receives: the ephemeral public key and the sealed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub ephemeral: [u8; 32],
    pub sealed: Vec<u8>,
}

impl WrappedKey {
    pub fn to_bytes(&self) -> Vec<u8> {
        [self.ephemeral.as_slice(), &self.sealed].concat()
    }
    pub fn from_bytes(b: &[u8]) -> Result<WrappedKey, ShardError> {
        if b.len() != 32 + 32 + 16 {
            return Err(ShardError::Unwrap);
        }
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&b[..32]);
        Ok(WrappedKey {
            ephemeral,
            sealed: b[32..].to_vec(),
        })
    }
}

fn cipher(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> ring::aead::LessSafeKey {
    let key = blake3::derive_key(CONTEXT, &[shared.as_slice(), ephemeral, recipient].concat());
    crate::seal::aead(&key)
}

/// The one nonce each derived key is used with.
fn once() -> Nonce {
    Nonce::assume_unique_for_key([0; NONCE_LEN])
}

/// The X25519 public key of a node's secret.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// `key` wrapped for the node whose X25519 public key is `recipient`.
pub fn wrap_key(
    key: &ContentKey,
    recipient: &[u8; 32],
    video: &str,
) -> Result<WrappedKey, ShardError> {
    let mut e = [0u8; 32];
    getrandom::fill(&mut e).expect("the OS has randomness");
    let ephemeral = StaticSecret::from(e);
    let public = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&PublicKey::from(*recipient));
    // A low-order "public key" gives everyone the same secret.
    if !shared.was_contributory() {
        return Err(ShardError::Unwrap);
    }
    let mut sealed = key.0.to_vec();
    cipher(shared.as_bytes(), &public, recipient)
        .seal_in_place_append_tag(once(), Aad::from(video.as_bytes()), &mut sealed)
        .expect("ChaCha20-Poly1305 seals 32 bytes");
    Ok(WrappedKey {
        ephemeral: public,
        sealed,
    })
}

/// The content key, if `wrapped` was made for this node's `secret` and
/// this video.
pub fn unwrap_key(
    wrapped: &WrappedKey,
    secret: &[u8; 32],
    video: &str,
) -> Result<ContentKey, ShardError> {
    let secret = StaticSecret::from(*secret);
    let mine = PublicKey::from(&secret).to_bytes();
    let shared = secret.diffie_hellman(&PublicKey::from(wrapped.ephemeral));
    if !shared.was_contributory() {
        return Err(ShardError::Unwrap);
    }
    let mut body = wrapped.sealed.clone();
    let plain = cipher(shared.as_bytes(), &wrapped.ephemeral, &mine)
        .open_in_place(once(), Aad::from(video.as_bytes()), &mut body)
        .map_err(|_| ShardError::Unwrap)?;
    let bytes: [u8; 32] = (&*plain).try_into().map_err(|_| ShardError::Unwrap)?;
    Ok(ContentKey(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> [u8; 32] {
        let mut s = [0u8; 32];
        getrandom::fill(&mut s).unwrap();
        s
    }

    #[test]
    fn only_the_node_it_was_wrapped_for_unwraps_it_for_that_video() {
        let key = ContentKey::random();
        let (edge, other) = (secret(), secret());
        let w = wrap_key(&key, &public_key(&edge), "vid1").unwrap();
        assert_eq!(unwrap_key(&w, &edge, "vid1").unwrap(), key);
        assert_eq!(unwrap_key(&w, &other, "vid1"), Err(ShardError::Unwrap));
        assert_eq!(unwrap_key(&w, &edge, "vid2"), Err(ShardError::Unwrap));
        let round = WrappedKey::from_bytes(&w.to_bytes()).unwrap();
        assert_eq!(unwrap_key(&round, &edge, "vid1").unwrap(), key);
        let mut bad = w.clone();
        bad.sealed[3] ^= 1;
        assert_eq!(unwrap_key(&bad, &edge, "vid1"), Err(ShardError::Unwrap));
        assert_ne!(
            w,
            wrap_key(&key, &public_key(&edge), "vid1").unwrap(),
            "fresh ephemeral"
        );
        // A low-order point is no one's key.
        assert_eq!(wrap_key(&key, &[0u8; 32], "vid1"), Err(ShardError::Unwrap));
        assert!(WrappedKey::from_bytes(&[0; 10]).is_err());
    }
}
