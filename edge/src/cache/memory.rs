//! The memory tier: TinyUFO (S3-FIFO + TinyLFU admission) weighted by size.
//! `benches/memory_tier.rs` compares it with moka on a Zipf workload.

use crate::metrics::Metrics;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_http::ResponseHeader;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tinyufo::TinyUfo;

/// Weights are KiB (TinyUFO weights are u16): objects over 64MiB stay on disk.
const UNIT: usize = 1024;

/// A complete object held in memory.
pub struct MemObject {
    /// The full cache-key hash, to tell apart keys whose first 8 bytes collide.
    pub hash: [u8; 16],
    pub url: String,
    pub meta: (Vec<u8>, Vec<u8>),
    /// `meta.1` decoded, so a hit does not unpack the header again.
    pub header: ResponseHeader,
    pub body: Bytes,
}

pub struct MemoryTier {
    ufo: TinyUfo<u64, Arc<MemObject>>,
    /// The tier's size in weight units.
    units: usize,
    /// Sizes and URLs of what TinyUFO holds, for accounting and prefix purges.
    entries: Mutex<HashMap<u64, (usize, String)>>,
    bytes: AtomicI64,
    metrics: &'static Metrics,
}

/// Bytes a decoded header holds, near enough: its names and values and
/// a map slot each.
pub(super) fn header_size(header: &ResponseHeader) -> usize {
    const SLOT: usize = 64;
    header
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + SLOT)
        .sum()
}

fn weight(obj: &MemObject) -> Option<u16> {
    let size = obj.body.len() + obj.meta.0.len() + obj.meta.1.len() + header_size(&obj.header);
    u16::try_from(size.div_ceil(UNIT).max(1)).ok()
}

impl MemoryTier {
    pub fn new(capacity: u64, metrics: &'static Metrics) -> Self {
        let units = (capacity as usize / UNIT).max(1);
        MemoryTier {
            ufo: TinyUfo::new(units, (units / 64).max(64)),
            units,
            entries: Mutex::new(HashMap::new()),
            bytes: AtomicI64::new(0),
            metrics,
        }
    }

    pub fn get(&self, key: u64, hash: &[u8; 16]) -> Option<Arc<MemObject>> {
        self.ufo.get(&key).filter(|o| &o.hash == hash)
    }

    /// Offers an object; TinyUFO may decline it or evict others for it.
    /// One heavier than the whole tier is not offered: TinyUFO would evict
    /// everything else before evicting it (its frequency check applies only
    /// when one object makes room), so each such disk hit would empty the tier.
    pub fn put(&self, key: u64, obj: Arc<MemObject>) {
        let Some(w) = weight(&obj).filter(|&w| usize::from(w) <= self.units) else {
            return;
        };
        self.remove(key);
        let size = obj.body.len();
        self.entries.lock().insert(key, (size, obj.url.clone()));
        self.bytes.fetch_add(size as i64, Ordering::Relaxed);
        // `evicted.key` is TinyUFO's own hash of the key, not the key.
        for evicted in self.ufo.put(key, obj, w) {
            self.forget(super::tier_key(&evicted.data.hash));
        }
        self.update_gauges();
    }

    fn forget(&self, key: u64) {
        if let Some((size, _)) = self.entries.lock().remove(&key) {
            self.bytes.fetch_sub(size as i64, Ordering::Relaxed);
        }
    }

    pub fn remove(&self, key: u64) -> bool {
        let had = self.ufo.remove(&key).is_some();
        self.forget(key);
        self.update_gauges();
        had
    }

    pub fn matching(&self, pred: impl Fn(&str) -> bool) -> Vec<u64> {
        self.entries
            .lock()
            .iter()
            .filter(|(_, (_, url))| pred(url))
            .map(|(k, _)| *k)
            .collect()
    }

    fn update_gauges(&self) {
        let objects = self.entries.lock().len() as i64;
        self.metrics
            .cache_objects
            .with_label_values(&["memory"])
            .set(objects);
        self.metrics
            .cache_bytes
            .with_label_values(&["memory"])
            .set(self.bytes.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(i: u8, size: usize) -> Arc<MemObject> {
        let mut hash = [0u8; 16];
        hash[0] = i;
        hash[15] = 1;
        Arc::new(MemObject {
            hash,
            url: format!("/o/{i}"),
            meta: (Vec::new(), Vec::new()),
            header: ResponseHeader::build(200, None).expect("a header"),
            body: Bytes::from(vec![i; size]),
        })
    }

    /// TinyUFO names what it evicts by a hash of its own: the tier must
    /// forget those objects anyway, or its accounting (and its map of
    /// URLs) grows past the configured size forever.
    #[test]
    fn the_tier_holds_no_more_than_its_size() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let tier = MemoryTier::new(1 << 20, metrics);
        for i in 0..64u8 {
            let o = object(i, 100_000);
            tier.put(super::super::tier_key(&o.hash), o);
        }
        let held = tier.entries.lock().len();
        let bytes = tier.bytes.load(Ordering::Relaxed);
        assert!(bytes <= 1 << 20, "{bytes} bytes accounted in a 1 MiB tier");
        assert!(
            (1..=10).contains(&held),
            "{held} objects of 100 KB in 1 MiB"
        );
        let present = (0..64u8)
            .filter(|&i| {
                let o = object(i, 1);
                tier.get(super::super::tier_key(&o.hash), &o.hash).is_some()
            })
            .count();
        assert_eq!(present, held, "the map lists exactly what TinyUFO holds");
    }

    #[test]
    fn an_object_larger_than_the_tier_evicts_nothing() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let tier = MemoryTier::new(1 << 20, metrics);
        let small: Vec<_> = (0..8u8).map(|i| object(i, 50_000)).collect();
        for o in &small {
            tier.put(super::super::tier_key(&o.hash), o.clone());
        }
        let big = object(100, 2 << 20);
        let big_key = super::super::tier_key(&big.hash);
        tier.put(big_key, big.clone());
        assert!(
            tier.get(big_key, &big.hash).is_none(),
            "2 MiB in a 1 MiB tier"
        );
        let kept = small
            .iter()
            .filter(|o| tier.get(super::super::tier_key(&o.hash), &o.hash).is_some())
            .count();
        assert_eq!(kept, small.len(), "the small objects stay");
    }
}
