//! Reed–Solomon: `k` data shards and `m` parity shards of one sealed
//! object, any `k` of which give the object back.

use crate::ShardError;

/// Shards are padded to a multiple of this (the codec wants an even
/// length and runs fastest on whole 64-byte blocks).
const ALIGN: usize = 64;
/// The object's length, ahead of it in the data shards.
const HEADER: usize = 8;

/// How many data (`k`) and parity (`m`) shards an object is cut into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub data: usize,
    pub parity: usize,
}

impl Layout {
    /// `k` ≥ 1, `m` ≥ 1 and at most 255 shards in all (each goes to its
    /// own node).
    pub fn new(data: usize, parity: usize) -> Result<Layout, ShardError> {
        if data == 0 || parity == 0 {
            return Err(ShardError::Layout(format!(
                "k = {data}, m = {parity}: both must be at least 1"
            )));
        }
        if data + parity > 255 {
            return Err(ShardError::Layout(format!(
                "k + m = {} shards; at most 255",
                data + parity
            )));
        }
        Ok(Layout { data, parity })
    }

    pub fn total(&self) -> usize {
        self.data + self.parity
    }

    /// The length of every shard of an object of `len` bytes.
    pub fn shard_len(&self, len: usize) -> usize {
        (HEADER + len).div_ceil(self.data).div_ceil(ALIGN) * ALIGN
    }
}

/// The `k + m` shards of `object`, data shards first.
pub fn encode(layout: Layout, object: &[u8]) -> Vec<Vec<u8>> {
    let len = layout.shard_len(object.len());
    let mut framed = Vec::with_capacity(len * layout.data);
    framed.extend_from_slice(&(object.len() as u64).to_le_bytes());
    framed.extend_from_slice(object);
    framed.resize(len * layout.data, 0);
    let data: Vec<Vec<u8>> = framed.chunks(len).map(<[u8]>::to_vec).collect();
    let parity = reed_solomon_simd::encode(layout.data, layout.parity, &data)
        .expect("a valid layout and equal, aligned shards encode");
    data.into_iter().chain(parity).collect()
}

/// The object from any `k` of its shards (`None` where one is missing).
/// Each shard must have been verified against its root first: the codec
/// cannot tell a wrong shard from a right one, and the object would
/// then fail to open.
pub fn decode(layout: Layout, shards: &[Option<&[u8]>]) -> Result<Vec<u8>, ShardError> {
    if shards.len() != layout.total() {
        return Err(ShardError::Layout(format!(
            "{} shards given for a layout of {}",
            shards.len(),
            layout.total()
        )));
    }
    let len = same_len(shards)?;
    let present = shards.iter().filter(|s| s.is_some()).count();
    if present < layout.data {
        return Err(ShardError::TooFew(layout.data - present, layout.data));
    }
    let mut data: Vec<Vec<u8>> = Vec::with_capacity(layout.data);
    let missing = shards[..layout.data].iter().any(Option::is_none);
    let restored = if missing {
        let original = shards[..layout.data]
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)));
        let recovery = shards[layout.data..]
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)));
        reed_solomon_simd::decode(layout.data, layout.parity, original, recovery)
            .map_err(|_| ShardError::Corrupt)?
    } else {
        Default::default()
    };
    for (i, s) in shards[..layout.data].iter().enumerate() {
        match s {
            Some(s) => data.push(s.to_vec()),
            None => data.push(restored.get(&i).ok_or(ShardError::Corrupt)?.clone()),
        }
    }
    unframe(data.concat(), len * layout.data)
}

fn same_len(shards: &[Option<&[u8]>]) -> Result<usize, ShardError> {
    let mut len = None;
    for (i, s) in shards.iter().enumerate() {
        let Some(s) = s else { continue };
        match len {
            None if s.is_empty() || s.len() % ALIGN != 0 => {
                return Err(ShardError::Size(i, s.len(), ALIGN))
            }
            None => len = Some(s.len()),
            Some(l) if l != s.len() => return Err(ShardError::Size(i, s.len(), l)),
            Some(_) => {}
        }
    }
    len.ok_or(ShardError::TooFew(1, 1))
}

fn unframe(mut framed: Vec<u8>, total: usize) -> Result<Vec<u8>, ShardError> {
    let mut header = [0u8; HEADER];
    header.copy_from_slice(&framed[..HEADER]);
    let len = u64::from_le_bytes(header);
    if len > (total - HEADER) as u64 {
        return Err(ShardError::Corrupt);
    }
    framed.truncate(HEADER + len as usize);
    Ok(framed.split_off(HEADER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn any_k_of_k_plus_m_give_the_object_back() {
        let layout = Layout::new(4, 2).unwrap();
        for n in [0, 1, 63, 64, 1000, 200_003] {
            let obj = object(n);
            let shards = encode(layout, &obj);
            assert_eq!(shards.len(), 6);
            assert!(shards.iter().all(|s| s.len() == layout.shard_len(n)));
            // Every way of losing two.
            for a in 0..6 {
                for b in a + 1..6 {
                    let kept: Vec<Option<&[u8]>> = (0..6)
                        .map(|i| (i != a && i != b).then(|| shards[i].as_slice()))
                        .collect();
                    assert_eq!(
                        decode(layout, &kept).unwrap(),
                        obj,
                        "n {n} without {a}, {b}"
                    );
                }
            }
            let three: Vec<Option<&[u8]>> = (0..6)
                .map(|i| (i > 2).then(|| shards[i].as_slice()))
                .collect();
            assert_eq!(decode(layout, &three), Err(ShardError::TooFew(1, 4)));
        }
    }

    #[test]
    fn bad_layouts_and_mismatched_shards_are_refused() {
        assert!(Layout::new(0, 2).is_err());
        assert!(Layout::new(4, 0).is_err());
        assert!(Layout::new(200, 56).is_err());
        let layout = Layout::new(2, 1).unwrap();
        let shards = encode(layout, &object(500));
        let short = &shards[1][..64];
        let given = [Some(shards[0].as_slice()), Some(short), None];
        assert!(matches!(
            decode(layout, &given),
            Err(ShardError::Size(1, 64, _))
        ));
        assert!(decode(layout, &[None, None]).is_err());
    }
}
