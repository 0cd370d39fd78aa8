//! The on-disk record of one cached object's metadata.
//!
//! Each object is two files named by the hash of its cache key: `<hash>.body`
//! (the bytes) and `<hash>.meta` (this record). The meta file is written
//! last, so it is the commit point, and it carries the length and a checksum
//! of the body plus a checksum of itself. Anything that fails either check
//! is corrupt: purged and refetched, never served.
//!
//! The checksums guard against the disk, not an adversary: whoever can
//! write the cache directory can rewrite a record and its checksum alike,
//! whatever the hash. So records written now (`MCMETA02`) use XXH3-128,
//! which runs at memory speed, where the first format (`MCMETA01`, still
//! read) used BLAKE3, which cost more CPU on every disk hit than sending the
//! body did.

use thiserror::Error;
use twox_hash::XxHash3_128;

const MAGIC_V1: &[u8; 8] = b"MCMETA01";
const MAGIC_V2: &[u8; 8] = b"MCMETA02";

/// How a body's integrity is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCheck {
    /// XXH3-128 of the body: what `MetaRecord::for_body` writes.
    Xxh3(u128),
    /// BLAKE3 of the body, in records written before `MCMETA02`.
    Blake3([u8; 32]),
}

impl BodyCheck {
    pub fn of(body: &[u8]) -> Self {
        BodyCheck::Xxh3(XxHash3_128::oneshot(body))
    }

    fn matches(&self, body: &[u8]) -> bool {
        match self {
            BodyCheck::Xxh3(sum) => XxHash3_128::oneshot(body) == *sum,
            BodyCheck::Blake3(sum) => blake3::hash(body).as_bytes() == sum,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRecord {
    /// The cache key's combined hash, hex; must match the file name.
    pub hash_hex: String,
    /// The URL-derived primary key, kept for prefix purges.
    pub url: String,
    pub body_len: u64,
    pub body_check: BodyCheck,
    /// `CacheMeta::serialize()` output.
    pub meta: (Vec<u8>, Vec<u8>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CorruptObject {
    #[error("meta record truncated")]
    Truncated,
    #[error("meta record has the wrong magic number")]
    Magic,
    #[error("meta record checksum mismatch")]
    MetaChecksum,
    #[error("body is {got} bytes, meta says {want}")]
    BodyLength { got: u64, want: u64 },
    #[error("body checksum mismatch")]
    BodyChecksum,
    #[error("meta record belongs to another key")]
    WrongKey,
}

impl MetaRecord {
    /// Writes the record in the format of its body check (a record read
    /// from the first format and rewritten after a revalidation keeps it:
    /// its body was never hashed with XXH3).
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(96 + self.url.len() + self.meta.0.len() + self.meta.1.len());
        let v2 = matches!(self.body_check, BodyCheck::Xxh3(_));
        out.extend_from_slice(if v2 { MAGIC_V2 } else { MAGIC_V1 });
        put_bytes(&mut out, self.hash_hex.as_bytes());
        put_bytes(&mut out, self.url.as_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
        match &self.body_check {
            BodyCheck::Xxh3(sum) => out.extend_from_slice(&sum.to_le_bytes()),
            BodyCheck::Blake3(sum) => out.extend_from_slice(sum),
        }
        put_bytes(&mut out, &self.meta.0);
        put_bytes(&mut out, &self.meta.1);
        let (own, len) = record_sum(v2, &out);
        out.extend_from_slice(&own[..len]);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptObject> {
        let v2 = match bytes.get(..MAGIC_V2.len()) {
            Some(m) if m == MAGIC_V2 => true,
            Some(m) if m == MAGIC_V1 => false,
            Some(_) if bytes.len() >= MAGIC_V2.len() + 16 => return Err(CorruptObject::Magic),
            _ => return Err(CorruptObject::Truncated),
        };
        let trailer = if v2 { 16 } else { 32 };
        if bytes.len() < MAGIC_V2.len() + trailer {
            return Err(CorruptObject::Truncated);
        }
        let (content, sum) = bytes.split_at(bytes.len() - trailer);
        let (own, len) = record_sum(v2, content);
        if own[..len] != *sum {
            return Err(CorruptObject::MetaChecksum);
        }
        let mut r = Reader(&content[MAGIC_V2.len()..]);
        let hash_hex =
            String::from_utf8(r.bytes()?.to_vec()).map_err(|_| CorruptObject::Truncated)?;
        let url = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| CorruptObject::Truncated)?;
        let body_len = u64::from_le_bytes(r.array()?);
        let body_check = if v2 {
            BodyCheck::Xxh3(u128::from_le_bytes(r.array()?))
        } else {
            BodyCheck::Blake3(r.array()?)
        };
        let meta = (r.bytes()?.to_vec(), r.bytes()?.to_vec());
        Ok(MetaRecord {
            hash_hex,
            url,
            body_len,
            body_check,
            meta,
        })
    }

    /// Checks a body read from disk against this record.
    pub fn verify_body(&self, body: &[u8]) -> Result<(), CorruptObject> {
        if body.len() as u64 != self.body_len {
            return Err(CorruptObject::BodyLength {
                got: body.len() as u64,
                want: self.body_len,
            });
        }
        if !self.body_check.matches(body) {
            return Err(CorruptObject::BodyChecksum);
        }
        Ok(())
    }
}

/// A record's checksum of itself: XXH3-128 in `MCMETA02`, BLAKE3 in
/// `MCMETA01`; the sum and how many of its bytes are used.
fn record_sum(v2: bool, content: &[u8]) -> ([u8; 32], usize) {
    let mut sum = [0u8; 32];
    if v2 {
        sum[..16].copy_from_slice(&XxHash3_128::oneshot(content).to_le_bytes());
        (sum, 16)
    } else {
        (*blake3::hash(content).as_bytes(), 32)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptObject> {
        if self.0.len() < n {
            return Err(CorruptObject::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CorruptObject> {
        self.take(N)?
            .try_into()
            .map_err(|_| CorruptObject::Truncated)
    }
    fn bytes(&mut self) -> Result<&'a [u8], CorruptObject> {
        let len = u32::from_le_bytes(self.array()?);
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body_check: BodyCheck) -> MetaRecord {
        MetaRecord {
            hash_hex: "ab".repeat(16),
            url: "example.com/v/1/seg.m4s".into(),
            body_len: 5,
            body_check,
            meta: (vec![1, 2, 3], vec![4, 5]),
        }
    }

    fn both() -> [MetaRecord; 2] {
        [
            record(BodyCheck::of(b"hello")),
            record(BodyCheck::Blake3(*blake3::hash(b"hello").as_bytes())),
        ]
    }

    #[test]
    fn round_trip() {
        for r in both() {
            assert_eq!(MetaRecord::decode(&r.encode()).unwrap(), r);
            assert!(r.verify_body(b"hello").is_ok());
        }
        assert_eq!(&both()[0].encode()[..8], MAGIC_V2);
        assert_eq!(
            &both()[1].encode()[..8],
            MAGIC_V1,
            "an old record stays old"
        );
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        for r in both() {
            let bytes = r.encode();
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x40;
                assert!(
                    MetaRecord::decode(&bad).is_err(),
                    "flip at {i} went unnoticed"
                );
            }
            assert_eq!(
                MetaRecord::decode(&bytes[..10]),
                Err(CorruptObject::Truncated)
            );
        }
    }

    #[test]
    fn body_checks() {
        for r in both() {
            assert_eq!(r.verify_body(b"hellO"), Err(CorruptObject::BodyChecksum));
            assert_eq!(
                r.verify_body(b"hell"),
                Err(CorruptObject::BodyLength { got: 4, want: 5 })
            );
        }
    }

    #[test]
    fn every_flipped_bit_of_a_body_is_detected() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let r = MetaRecord {
            body_len: body.len() as u64,
            ..record(BodyCheck::of(&body))
        };
        for i in (0..body.len()).step_by(997) {
            for bit in 0..8 {
                let mut bad = body.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(r.verify_body(&bad), Err(CorruptObject::BodyChecksum));
            }
        }
    }
}
