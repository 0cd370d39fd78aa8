//! The workspace's one Ed25519 verification rule: ZIP-215, as
//! `ed25519-consensus` implements it (the cofactored equation
//! `[8][S]B = [8]R + [8][k]A`, any point encoding that decodes, `S`
//! canonical). It is the rule Malachite's signing crate applies to votes
//! and proposal parts, so a signature consensus accepted is accepted
//! again when the ledger reads it as double-sign evidence; and under it a
//! batch verdict always agrees with verifying one at a time, so whether an
//! ack passes never depends on the other acks in its batch. Signing stays
//! with `ed25519-dalek` (RFC 8032 signatures are deterministic and verify
//! under any rule); nothing else in the workspace verifies Ed25519 except
//! PASETO tokens, inside `pasetors`, where issuer and checker are the same
//! code.

use ed25519_consensus::{batch, Signature, VerificationKey, VerificationKeyBytes};

/// Whether `key` is a public key this rule can verify against (it decodes
/// to a curve point).
pub fn is_key(key: &[u8; 32]) -> bool {
    VerificationKey::try_from(*key).is_ok()
}

/// Whether `signature` is `key`'s over `message`.
pub fn verify(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    VerificationKey::try_from(*key)
        .and_then(|k| k.verify(&Signature::from(*signature), message))
        .is_ok()
}

/// One signature to check in a batch: key, message, signature.
pub type Item<'a> = (&'a [u8; 32], &'a [u8], &'a [u8; 64]);

/// Verifies many signatures at once; on failure, the index of the first
/// that fails on its own. The verdict is the same as checking each with
/// [`verify`].
pub fn verify_batch(items: &[Item<'_>]) -> Result<(), usize> {
    if items.len() < 2 {
        return match items.first() {
            Some((k, m, s)) if !verify(k, m, s) => Err(0),
            _ => Ok(()),
        };
    }
    let mut verifier = batch::Verifier::new();
    for (key, message, signature) in items {
        verifier.queue((
            VerificationKeyBytes::from(**key),
            Signature::from(**signature),
            message,
        ));
    }
    if verifier.verify(Coefficients::over(items)).is_ok() {
        return Ok(());
    }
    match items.iter().position(|(k, m, s)| !verify(k, m, s)) {
        Some(i) => Err(i),
        // A random linear combination of valid equations always holds,
        // so a failed batch has a failing member (unless BLAKE3 is broken).
        None => Ok(()),
    }
}

/// The batch's random coefficients, drawn from BLAKE3 of every item (as
/// ed25519-dalek draws them from a Merlin transcript): deterministic, no
/// OS randomness, and a forger cannot pick items to suit coefficients
/// that depend on them.
struct Coefficients(blake3::OutputReader);

impl Coefficients {
    fn over(items: &[Item<'_>]) -> Coefficients {
        let mut h = blake3::Hasher::new_derive_key("meshcast ed25519 batch coefficients v1");
        for (key, message, signature) in items {
            h.update(&key[..]);
            h.update(&(message.len() as u64).to_le_bytes());
            h.update(message);
            h.update(&signature[..]);
        }
        Coefficients(h.finalize_xof())
    }
}

impl rand_core::RngCore for Coefficients {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for Coefficients {}

/// The ZIP-215 test vectors: every canonical encoding of the eight
/// points of small order and the six non-canonical encodings of small
/// order points, as `A` and as `R`, with `S = 0`: 196 signatures
/// valid under ZIP-215 (over any message), most of which RFC 8032's
/// strict rule refuses. Public so every crate that verifies signatures
/// can test that it applies this rule.
pub fn zip215_vectors() -> Vec<([u8; 32], [u8; 64])> {
    let encodings: Vec<[u8; 32]> = SMALL_ORDER
        .iter()
        .map(|h| hex::decode(h).expect("hex").try_into().expect("32"))
        .collect();
    let mut out = Vec::new();
    for a in &encodings {
        for r in &encodings {
            let mut sig = [0; 64];
            sig[..32].copy_from_slice(r);
            out.push((*a, sig));
        }
    }
    out
}

const SMALL_ORDER: [&str; 14] = [
    // Canonical: the eight torsion points.
    "0100000000000000000000000000000000000000000000000000000000000000",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    // Non-canonical: a sign bit on x = 0, and y + p for y = 0, 1.
    "0100000000000000000000000000000000000000000000000000000000000080",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn every_zip215_vector_verifies_alone_and_in_any_batch() {
        let vectors = zip215_vectors();
        assert_eq!(vectors.len(), 196);
        let mut strict_refused = 0;
        for (a, sig) in &vectors {
            assert!(
                verify(a, b"Zcash", sig),
                "A {} R {}",
                hex::encode(a),
                hex::encode(&sig[..32])
            );
            let strict = ed25519_dalek::VerifyingKey::from_bytes(a).is_ok_and(|k| {
                k.verify_strict(b"Zcash", &ed25519_dalek::Signature::from_bytes(sig))
                    .is_ok()
            });
            strict_refused += usize::from(!strict);
        }
        // What the ledger's old rule did to evidence consensus accepts.
        assert!(strict_refused > 150, "{strict_refused}");
        let items: Vec<Item<'_>> = vectors.iter().map(|(a, s)| (a, &b"Zcash"[..], s)).collect();
        assert_eq!(verify_batch(&items), Ok(()));
    }

    #[test]
    fn a_batch_names_the_first_bad_signature_whatever_else_it_holds() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let public = key.verifying_key().to_bytes();
        let messages: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 40]).collect();
        let mut sigs: Vec<[u8; 64]> = messages.iter().map(|m| key.sign(m).to_bytes()).collect();
        sigs[5][10] ^= 1;
        let vectors = zip215_vectors();
        let mut items: Vec<Item<'_>> = messages
            .iter()
            .zip(&sigs)
            .map(|(m, s)| (&public, m.as_slice(), s))
            .collect();
        assert_eq!(verify_batch(&items), Err(5));
        // Small-order signatures beside it change nothing.
        items.extend(vectors.iter().take(20).map(|(a, s)| (a, &b"x"[..], s)));
        assert_eq!(verify_batch(&items), Err(5));
        items.remove(5);
        assert_eq!(verify_batch(&items), Ok(()));
        // A non-canonical S is refused alone and in a batch.
        let mut high_s = sigs[0];
        high_s[63] |= 0xf0;
        assert!(!verify(&public, &messages[0], &high_s));
        assert_eq!(
            verify_batch(&[items[1], (&public, &messages[0], &high_s)]),
            Err(1)
        );
        assert!(is_key(&public));
    }
}
