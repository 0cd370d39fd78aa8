//! Verified slices of a shard: BLAKE3 verified streaming (`bao`, with the
//! tree kept apart from the shard, "outboard"). The root is the shard's
//! plain BLAKE3 hash; a slice carries the tree nodes that prove it.

use crate::ShardError;
use std::io::{Cursor, Read};

/// The tree's leaf: a slice is checked in whole chunks of this many bytes.
pub const CHUNK: u64 = 1024;

/// A shard's BLAKE3 root.
pub type Root = [u8; 32];

/// The shard's outboard tree and its root.
pub fn outboard(shard: &[u8]) -> (Vec<u8>, Root) {
    let (tree, hash) = bao::encode::outboard(shard);
    (tree, *hash.as_bytes())
}

/// The slice of `len` bytes from `start`, with the whole chunks around it
/// and the tree nodes that prove them.
pub fn extract(shard: &[u8], tree: &[u8], start: u64, len: u64) -> Result<Vec<u8>, ShardError> {
    let mut out = Vec::new();
    bao::encode::SliceExtractor::new_outboard(Cursor::new(shard), Cursor::new(tree), start, len)
        .read_to_end(&mut out)
        .map_err(|_| ShardError::Slice)?;
    Ok(out)
}

/// The bytes `start..start + len` (cut at the shard's end) that a slice
/// of a `shard_len`-byte shard proves against `root`. A slice of another
/// shard or place, an altered byte, or one that proves less is refused.
pub fn verify(
    root: &Root,
    shard_len: u64,
    (start, len): (u64, u64),
    slice: &[u8],
) -> Result<Vec<u8>, ShardError> {
    if len == 0 || start >= shard_len {
        return Err(ShardError::Slice);
    }
    let mut out = Vec::new();
    bao::decode::SliceDecoder::new(slice, &bao::Hash::from(*root), start, len)
        .read_to_end(&mut out)
        .map_err(|_| ShardError::Slice)?;
    if out.len() as u64 != (start + len).min(shard_len) - start {
        return Err(ShardError::Slice);
    }
    Ok(out)
}

/// How many bytes a slice of one chunk of a `shard_len`-byte shard takes
/// on the wire: its chunk and the tree nodes above it.
pub fn slice_len(shard_len: u64) -> u64 {
    let chunks = shard_len.div_ceil(CHUNK).max(1);
    let depth = 64 - (chunks - 1).leading_zeros() as u64;
    8 + CHUNK + depth * 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_verify_against_their_root_and_nothing_else() {
        let shard: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let (tree, root) = outboard(&shard);
        assert_eq!(root, *blake3::hash(&shard).as_bytes());
        let n = shard.len() as u64;
        for (start, len) in [
            (0, 1024),
            (5 * 1024, 1024),
            (299_008, 1024),
            (100, 1),
            (2048, 5000),
        ] {
            let slice = extract(&shard, &tree, start, len).unwrap();
            assert!(slice.len() as u64 <= slice_len(n) * len.div_ceil(CHUNK).max(1) + 2048);
            let got = verify(&root, n, (start, len), &slice).unwrap();
            let end = (start + len).min(n) as usize;
            assert_eq!(got, shard[start as usize..end], "{start}+{len}");
            // The length header is proven only by the last chunk's path
            // (bao): altered, it may still give the same, true bytes.
            let mut header = slice.clone();
            header[0] ^= 0x40;
            let same = verify(&root, n, (start, len), &header);
            assert!(same.is_err() || same.as_ref() == Ok(&got), "{start}+{len}");
            // Any other altered byte is refused.
            for at in [8, slice.len() / 2, slice.len() - 1] {
                let mut bad = slice.clone();
                bad[at] ^= 0x40;
                assert_eq!(
                    verify(&root, n, (start, len), &bad),
                    Err(ShardError::Slice),
                    "byte {at}"
                );
            }
            // Another shard's root, or a slice of another place.
            let other = blake3::hash(b"other").as_bytes().to_owned();
            assert_eq!(
                verify(&other, n, (start, len), &slice),
                Err(ShardError::Slice)
            );
            if start >= 2048 {
                assert!(verify(&root, n, (start - 2048, len), &slice).is_err());
            }
        }
        // Past the end, or a slice cut short.
        let slice = extract(&shard, &tree, 0, 1024).unwrap();
        assert!(verify(&root, n, (n, 1024), &slice).is_err());
        assert!(verify(&root, n, (0, 1024), &slice[..slice.len() - 10]).is_err());
    }
}
