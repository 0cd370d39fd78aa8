//! Sealing an object with its video's content key (ChaCha20-Poly1305, the
//! object's path as associated data).

use crate::ShardError;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

const TAG: usize = 16;

/// ChaCha20-Poly1305 under `key`.
pub(crate) fn aead(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key"))
}

/// A video's content key: 32 random bytes, never written in the clear
/// outside the HUB.
#[derive(Clone, PartialEq, Eq)]
pub struct ContentKey(pub(crate) [u8; 32]);

impl ContentKey {
    pub fn random() -> ContentKey {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).expect("the OS has randomness");
        ContentKey(k)
    }
    pub fn from_bytes(bytes: [u8; 32]) -> ContentKey {
        ContentKey(bytes)
    }
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKey(…)")
    }
}

/// `nonce ‖ ciphertext ‖ tag`. The 12-byte nonce is random: a video's key
/// seals a few thousand objects, far from the 2⁴⁸ where random nonces
/// could repeat, and a republished object needs no bookkeeping.
pub fn seal(key: &ContentKey, path: &str, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the OS has randomness");
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = aead(&key.0)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(path.as_bytes()),
            &mut out[NONCE_LEN..],
        )
        .expect("ChaCha20-Poly1305 seals any length this process holds");
    out.extend_from_slice(tag.as_ref());
    out
}

/// The plaintext of a sealed object, if it was sealed with `key` for `path`
/// and not altered since.
pub fn open(key: &ContentKey, path: &str, sealed: &[u8]) -> Result<Vec<u8>, ShardError> {
    if sealed.len() < NONCE_LEN + TAG {
        return Err(ShardError::Open);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[..NONCE_LEN]);
    let mut body = sealed[NONCE_LEN..].to_vec();
    let plain_len = aead(&key.0)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(path.as_bytes()),
            &mut body,
        )
        .map_err(|_| ShardError::Open)?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_key_and_path_open_an_unaltered_object() {
        let key = ContentKey::random();
        let plain = b"segment bytes".repeat(100);
        let sealed = seal(&key, "v/720p/seg_00001.m4s", &plain);
        assert!(!sealed.windows(13).any(|w| w == b"segment bytes"));
        assert_eq!(open(&key, "v/720p/seg_00001.m4s", &sealed).unwrap(), plain);
        assert_eq!(
            open(&key, "v/720p/seg_00002.m4s", &sealed),
            Err(ShardError::Open)
        );
        assert_eq!(
            open(&ContentKey::random(), "v/720p/seg_00001.m4s", &sealed),
            Err(ShardError::Open)
        );
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        assert_eq!(
            open(&key, "v/720p/seg_00001.m4s", &bad),
            Err(ShardError::Open)
        );
        assert_eq!(open(&key, "x", &[0; 10]), Err(ShardError::Open));
        assert_ne!(
            sealed,
            seal(&key, "v/720p/seg_00001.m4s", &plain),
            "fresh nonce"
        );
    }
}
