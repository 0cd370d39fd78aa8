//! Merkle commitments over batches (e.g. an epoch's acknowledgements):
//! rs_merkle with BLAKE3, leaves hashed under their own derived key so a
//! leaf can never be confused with an inner node.

use rs_merkle::{Hasher, MerkleProof, MerkleTree};

#[derive(Clone)]
pub struct Blake3Hasher;

impl Hasher for Blake3Hasher {
    type Hash = [u8; 32];
    fn hash(data: &[u8]) -> [u8; 32] {
        blake3::hash(data).into()
    }
}

pub fn leaf_hash(item: &[u8]) -> [u8; 32] {
    blake3::derive_key("meshcast merkle leaf v1", item)
}

pub struct Batch {
    tree: MerkleTree<Blake3Hasher>,
    len: usize,
}

impl Batch {
    pub fn new<T: AsRef<[u8]>>(items: &[T]) -> Self {
        let leaves: Vec<[u8; 32]> = items.iter().map(|i| leaf_hash(i.as_ref())).collect();
        Batch {
            tree: MerkleTree::<Blake3Hasher>::from_leaves(&leaves),
            len: leaves.len(),
        }
    }

    /// The root; all zeros for an empty batch.
    pub fn root(&self) -> [u8; 32] {
        self.tree.root().unwrap_or([0; 32])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A multi-proof for `indices` (sorted, deduplicated here).
    pub fn prove(&self, indices: &[usize]) -> Vec<u8> {
        let mut idx = indices.to_vec();
        idx.sort_unstable();
        idx.dedup();
        self.tree.proof(&idx).to_bytes()
    }
}

/// Checks that `items[i]` sits at `indices[i]` of a batch of `total` with `root`.
pub fn verify<T: AsRef<[u8]>>(
    root: [u8; 32],
    indices: &[usize],
    items: &[T],
    total: usize,
    proof: &[u8],
) -> bool {
    if indices.len() != items.len() || indices.iter().any(|i| *i >= total) {
        return false;
    }
    let mut pairs: Vec<(usize, [u8; 32])> = indices
        .iter()
        .copied()
        .zip(items.iter().map(|i| leaf_hash(i.as_ref())))
        .collect();
    pairs.sort_unstable_by_key(|p| p.0);
    pairs.dedup_by_key(|p| p.0);
    let (idx, leaves): (Vec<usize>, Vec<[u8; 32]>) = pairs.into_iter().unzip();
    match MerkleProof::<Blake3Hasher>::try_from(proof) {
        Ok(p) => p.verify(root, &idx, &leaves, total),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_and_tampering_fails() {
        let items: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| format!("ack {i}").into_bytes())
            .collect();
        let batch = Batch::new(&items);
        let idx = [3usize, 500, 999, 17];
        let proof = batch.prove(&idx);
        let chosen: Vec<&Vec<u8>> = idx.iter().map(|i| &items[*i]).collect();
        assert!(verify(batch.root(), &idx, &chosen, items.len(), &proof));
        let mut forged = chosen.clone();
        let fake = b"ack fabricated".to_vec();
        forged[1] = &fake;
        assert!(!verify(batch.root(), &idx, &forged, items.len(), &proof));
        assert!(!verify([9; 32], &idx, &chosen, items.len(), &proof));
        assert!(!verify(
            batch.root(),
            &idx,
            &chosen,
            items.len(),
            &proof[..proof.len() - 1]
        ));
        assert!(!verify(
            batch.root(),
            &[3, 500, 1000, 17],
            &chosen,
            items.len(),
            &proof
        ));
    }

    #[test]
    fn leaves_are_not_inner_nodes() {
        let a = leaf_hash(b"a");
        let b = leaf_hash(b"b");
        let mut pair = a.to_vec();
        pair.extend_from_slice(&b);
        assert_ne!(leaf_hash(&pair), Blake3Hasher::hash(&pair));
    }
}
