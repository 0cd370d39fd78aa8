//! The on-disk record of one cached object's metadata.
//!
//! Each object is two files named by the hash of its cache key: `<hash>.body`
//! (the bytes) and `<hash>.meta` (this record). The meta file is written
//! last, so it is the commit point, and it carries the BLAKE3 hash and length
//! of the body plus a BLAKE3 hash of itself. Anything that fails either check
//! is corrupt: purged and refetched, never served.

use thiserror::Error;

const MAGIC: &[u8; 8] = b"MCMETA01";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRecord {
    /// The cache key's combined hash, hex; must match the file name.
    pub hash_hex: String,
    /// The URL-derived primary key, kept for prefix purges.
    pub url: String,
    pub body_len: u64,
    pub body_hash: [u8; 32],
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
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(96 + self.url.len() + self.meta.0.len() + self.meta.1.len());
        out.extend_from_slice(MAGIC);
        put_bytes(&mut out, self.hash_hex.as_bytes());
        put_bytes(&mut out, self.url.as_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(&self.body_hash);
        put_bytes(&mut out, &self.meta.0);
        put_bytes(&mut out, &self.meta.1);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptObject> {
        if bytes.len() < MAGIC.len() + 32 {
            return Err(CorruptObject::Truncated);
        }
        let (content, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(content).as_bytes() != sum {
            return Err(CorruptObject::MetaChecksum);
        }
        let mut r = Reader(content);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(CorruptObject::Magic);
        }
        let hash_hex =
            String::from_utf8(r.bytes()?.to_vec()).map_err(|_| CorruptObject::Truncated)?;
        let url = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| CorruptObject::Truncated)?;
        let body_len = u64::from_le_bytes(
            r.take(8)?
                .try_into()
                .map_err(|_| CorruptObject::Truncated)?,
        );
        let body_hash: [u8; 32] = r
            .take(32)?
            .try_into()
            .map_err(|_| CorruptObject::Truncated)?;
        let meta = (r.bytes()?.to_vec(), r.bytes()?.to_vec());
        Ok(MetaRecord {
            hash_hex,
            url,
            body_len,
            body_hash,
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
        if blake3::hash(body).as_bytes() != &self.body_hash {
            return Err(CorruptObject::BodyChecksum);
        }
        Ok(())
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
    fn bytes(&mut self) -> Result<&'a [u8], CorruptObject> {
        let len = u32::from_le_bytes(
            self.take(4)?
                .try_into()
                .map_err(|_| CorruptObject::Truncated)?,
        );
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> MetaRecord {
        MetaRecord {
            hash_hex: "ab".repeat(16),
            url: "example.com/v/1/seg.m4s".into(),
            body_len: 5,
            body_hash: *blake3::hash(b"hello").as_bytes(),
            meta: (vec![1, 2, 3], vec![4, 5]),
        }
    }

    #[test]
    fn round_trip() {
        let r = record();
        assert_eq!(MetaRecord::decode(&r.encode()).unwrap(), r);
        assert!(r.verify_body(b"hello").is_ok());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = record().encode();
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

    #[test]
    fn body_checks() {
        let r = record();
        assert_eq!(r.verify_body(b"hellO"), Err(CorruptObject::BodyChecksum));
        assert_eq!(
            r.verify_body(b"hell"),
            Err(CorruptObject::BodyLength { got: 4, want: 5 })
        );
    }
}
