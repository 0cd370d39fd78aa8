//! The edge's cache storage, plugged into `pingora-cache` through its
//! `Storage` trait: objects being fetched (readable while they stream in), a
//! size-bounded memory tier, and an io_uring disk tier whose objects carry
//! checksums and survive restarts; its large bodies are mapped, and sent
//! by `sendfile` on plaintext HTTP/1 (`mapped.rs`), and once checked may
//! stay locked in RAM to be served again without a read (`locked.rs`).

mod disk;
mod locked;
mod mapped;
mod memory;
mod object;
mod uring;

use crate::metrics::Metrics;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use disk::{Body, DiskTier, LoadError, Loaded};
use locked::Kept;
pub(crate) use mapped::MappedBody;
pub use mapped::Sendfile;
use memory::{MemObject, MemoryTier};
use object::{BodyCheck, MetaRecord};
use parking_lot::{Mutex, RwLock};
use pingora_cache::key::{CacheHashKey, CacheKey};
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheMeta;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use std::any::Any;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;

/// The `[cache]` sizes, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct TierSizes {
    pub disk: u64,
    pub memory: u64,
    /// Checked disk-tier bodies kept locked in RAM (`locked.rs`).
    pub locked: u64,
}

pub struct TieredStorage {
    memory: MemoryTier,
    disk: Option<Arc<DiskTier>>,
    /// Fills in progress, by key: (write id, object).
    writes: Mutex<HashMap<u64, (u64, Arc<PartialObject>)>>,
    next_write_id: AtomicU64,
    metrics: &'static Metrics,
}

struct PartialObject {
    meta: (Vec<u8>, Vec<u8>),
    header: ResponseHeader,
    chunks: RwLock<Vec<Bytes>>,
    progress: watch::Sender<Progress>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Progress {
    Writing(usize),
    Done(usize),
    Failed,
}

/// The 64-bit tier key and the full hash of a cache key. Hex (for file
/// names) is only made when the disk tier is involved.
fn hash_of(key: &impl CacheHashKey) -> (u64, [u8; 16]) {
    let bin = key.combined_bin();
    (tier_key(&bin), bin)
}

/// The 64-bit key both tiers index by: the first 8 bytes of the key hash.
pub(super) fn tier_key(hash: &[u8; 16]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

/// A hit's `CacheMeta` from the serialized internal part and the header
/// decoded when the object was stored. Unpacking a stored header (zstd,
/// then parsing every field) is most of `CacheMeta::deserialize`; a
/// placeholder header stands in for it and the kept one is put back.
fn hit_meta(internal: &[u8], header: &ResponseHeader) -> Result<CacheMeta> {
    let mut meta = CacheMeta::deserialize(internal, placeholder_header())?;
    *meta.response_header_mut() = header.clone();
    Ok(meta)
}

/// The smallest serialized header: `hit_meta`'s stand-in.
fn placeholder_header() -> &'static [u8] {
    static PLACEHOLDER: OnceLock<Vec<u8>> = OnceLock::new();
    PLACEHOLDER.get_or_init(|| {
        let header = ResponseHeader::build(200, Some(0)).expect("a bare 200 header builds");
        let epoch = std::time::UNIX_EPOCH;
        CacheMeta::new(epoch, epoch, 0, 0, header)
            .serialize()
            .expect("a bare 200 header serializes")
            .1
    })
}

fn internal(msg: impl Into<String>) -> Box<Error> {
    Error::explain(ErrorType::InternalError, msg.into())
}

impl TieredStorage {
    /// Builds the storage. A disk tier that cannot start (no io_uring, no
    /// permission on `dir`) is logged and left out: the edge serves from
    /// memory rather than not at all.
    pub fn new(dir: &Path, sizes: TierSizes, metrics: &'static Metrics) -> Self {
        let disk = match DiskTier::open(dir, sizes.disk, sizes.locked, metrics) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "disk cache unavailable; serving from memory only");
                None
            }
        };
        TieredStorage {
            memory: MemoryTier::new(sizes.memory, metrics),
            disk,
            writes: Mutex::new(HashMap::new()),
            next_write_id: AtomicU64::new(1),
            metrics,
        }
    }

    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    fn partial_hit(obj: &Arc<PartialObject>) -> Result<Option<(CacheMeta, HitHandler)>> {
        let meta = hit_meta(&obj.meta.0, &obj.header)?;
        let hit = PartialHit {
            obj: obj.clone(),
            progress: obj.progress.subscribe(),
            next: 0,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    /// A disk hit's body as sent. A mapped body a plaintext connection
    /// will `sendfile` costs less from the page cache than a memory hit
    /// would (a copy into the socket): it is not promoted. Others are; a
    /// mapped one as a copy (the memory tier holds memory, not mappings).
    /// `entry` gives the record and header a promoted copy is kept with;
    /// it is called only then.
    fn disk_body(
        &self,
        k: u64,
        hash: [u8; 16],
        body: Body,
        entry: impl FnOnce() -> (MetaRecord, ResponseHeader),
    ) -> Bytes {
        let (promote, body) = match body {
            Body::Read(read) => (Some(read.clone()), read),
            Body::Mapped(mapped) => {
                let sent_from_file = Sendfile::offer(&mapped);
                let copy = (!sent_from_file).then(|| Bytes::copy_from_slice(mapped.as_slice()));
                (copy, MappedBody::bytes(&mapped))
            }
        };
        if let Some(body) = promote {
            let (record, header) = entry();
            let obj = Arc::new(MemObject {
                hash,
                url: record.url,
                meta: record.meta,
                header,
                body,
            });
            self.memory.put(k, obj);
        }
        body
    }

    /// Purges every object whose URL key satisfies `pred`; returns how many.
    pub async fn purge_matching(&self, pred: impl Fn(&str) -> bool) -> usize {
        let mut keys: Vec<(u64, Option<String>)> = self
            .memory
            .matching(&pred)
            .into_iter()
            .map(|k| (k, None))
            .collect();
        if let Some(disk) = &self.disk {
            for (k, hex) in disk.matching(&pred) {
                match keys.iter_mut().find(|(key, _)| *key == k) {
                    Some(entry) => entry.1 = Some(hex),
                    None => keys.push((k, Some(hex))),
                }
            }
        }
        for (key, hex) in &keys {
            self.memory.remove(*key);
            if let (Some(disk), Some(hex)) = (&self.disk, hex) {
                disk.remove(*key, hex).await;
            }
        }
        keys.len()
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let (k, bin) = hash_of(key);
        let partial = self.writes.lock().get(&k).map(|(_, o)| o.clone());
        if let Some(obj) = partial {
            self.metrics.hits_partial.inc();
            return Self::partial_hit(&obj);
        }
        if let Some(obj) = self.memory.get(k, &bin) {
            self.metrics.hits_memory.inc();
            let meta = hit_meta(&obj.meta.0, &obj.header)?;
            return Ok(Some((meta, Box::new(CompleteHit::new(obj.body.clone())))));
        }
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        let hex = hex::encode(bin);
        match disk.load(k, &hex).await {
            Ok(Some(Loaded::Kept(kept))) => {
                self.metrics.hits_locked.inc();
                let meta = hit_meta(&kept.record.meta.0, &kept.header)?;
                let body = self.disk_body(k, bin, Body::Mapped(kept.body.clone()), || {
                    (kept.record.clone(), kept.header.clone())
                });
                Ok(Some((meta, Box::new(CompleteHit::new(body)))))
            }
            Ok(Some(Loaded::Checked {
                record,
                body,
                ticket,
            })) => {
                let meta = match CacheMeta::deserialize(&record.meta.0, &record.meta.1) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(key = %hex, error = %e, "undecodable cache meta; purging");
                        self.metrics.corrupt_objects.inc();
                        disk.remove(k, &hex).await;
                        return Ok(None);
                    }
                };
                if let (Some(ticket), Body::Mapped(mapped)) = (ticket, &body) {
                    let kept = Kept {
                        record: record.clone(),
                        header: meta.response_header_copy(),
                        body: mapped.clone(),
                    };
                    disk.keep(k, ticket, kept);
                }
                let body = self.disk_body(k, bin, body, || (record, meta.response_header_copy()));
                self.metrics.hits_disk.inc();
                Ok(Some((meta, Box::new(CompleteHit::new(body)))))
            }
            Ok(None) => Ok(None),
            Err(LoadError::Corrupt(why)) => {
                tracing::warn!(key = %hex, reason = %why, "corrupt cache object purged; refetching");
                self.metrics.corrupt_objects.inc();
                disk.remove(k, &hex).await;
                Ok(None)
            }
            Err(LoadError::Io(e)) => {
                tracing::error!(key = %hex, error = %e, "disk cache read failed; treating as a miss");
                self.metrics.disk_errors.inc();
                Ok(None)
            }
        }
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(id) = tag
            .and_then(|t| U64WriteId::try_from(t).ok())
            .map(u64::from)
        else {
            return self.lookup(key, trace).await;
        };
        let (k, _) = hash_of(key);
        let partial = self
            .writes
            .lock()
            .get(&k)
            .filter(|(wid, _)| *wid == id)
            .map(|(_, o)| o.clone());
        match partial {
            Some(obj) => Self::partial_hit(&obj),
            None => Ok(None),
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (k, bin) = hash_of(key);
        let url = key.primary_key_str().unwrap_or_default().to_string();
        let (progress, _) = watch::channel(Progress::Writing(0));
        let obj = Arc::new(PartialObject {
            meta: meta.serialize()?,
            header: meta.response_header_copy(),
            chunks: RwLock::new(Vec::new()),
            progress,
        });
        let id = self.next_write_id.fetch_add(1, Ordering::Relaxed);
        self.writes.lock().insert(k, (id, obj.clone()));
        Ok(Box::new(Fill {
            storage: self,
            key: k,
            hash: bin,
            url,
            id,
            tag: id.into(),
            obj,
            finished: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _why: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let (k, bin) = hash_of(target.key());
        let hex = hex::encode(bin);
        let in_flight = self.writes.lock().remove(&k).is_some();
        let in_memory = self.memory.remove(k);
        let on_disk = match &self.disk {
            Some(d) => d.remove(k, &hex).await,
            None => false,
        };
        Ok(if in_flight || in_memory || on_disk {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let (k, bin) = hash_of(key);
        let hex = hex::encode(bin);
        let serialized = meta.serialize()?;
        let mut updated = false;
        if let Some(old) = self.memory.get(k, &bin) {
            self.memory.put(
                k,
                Arc::new(MemObject {
                    hash: old.hash,
                    url: old.url.clone(),
                    meta: serialized.clone(),
                    header: meta.response_header_copy(),
                    body: old.body.clone(),
                }),
            );
            updated = true;
        }
        if let Some(disk) = &self.disk {
            match disk.update_meta(k, &hex, serialized).await {
                Ok(u) => updated |= u,
                Err(e) => {
                    tracing::error!(key = %hex, error = %e, "could not update cached meta on disk");
                    self.metrics.disk_errors.inc();
                }
            }
        }
        Ok(updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// A hit on a complete object, seekable for ranges.
struct CompleteHit {
    body: Bytes,
    range: (usize, usize),
    done: bool,
}

impl CompleteHit {
    fn new(body: Bytes) -> Self {
        let len = body.len();
        CompleteHit {
            body,
            range: (0, len),
            done: false,
        }
    }
}

#[async_trait]
impl HandleHit for CompleteHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.0..self.range.1)))
    }

    async fn finish(
        self: Box<Self>,
        _: &'static (dyn Storage + Sync),
        _: &CacheKey,
        _: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len {
            return Err(internal(format!(
                "seek start {start} beyond body of {len} bytes"
            )));
        }
        self.range = (start, end.map_or(len, |e| e.min(len)));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// A hit on an object still being fetched: yields chunks as they arrive.
struct PartialHit {
    obj: Arc<PartialObject>,
    progress: watch::Receiver<Progress>,
    next: usize,
}

#[async_trait]
impl HandleHit for PartialHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            let state = *self.progress.borrow_and_update();
            let available = match state {
                Progress::Writing(n) | Progress::Done(n) => n,
                Progress::Failed => {
                    return Err(internal(
                        "the origin fetch this response was streaming from failed",
                    ))
                }
            };
            if self.next < available {
                let chunk = self.obj.chunks.read()[self.next].clone();
                self.next += 1;
                return Ok(Some(chunk));
            }
            if matches!(state, Progress::Done(_)) {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                return Err(internal(
                    "the origin fetch this response was streaming from went away",
                ));
            }
        }
    }

    async fn finish(
        self: Box<Self>,
        _: &'static (dyn Storage + Sync),
        _: &CacheKey,
        _: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn should_count_access(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Writes a fetched object: visible to readers chunk by chunk, then stored
/// in memory and on disk when complete.
struct Fill {
    storage: &'static TieredStorage,
    key: u64,
    hash: [u8; 16],
    url: String,
    id: u64,
    tag: U64WriteId,
    obj: Arc<PartialObject>,
    finished: bool,
}

impl Fill {
    fn unregister(&self) {
        let mut writes = self.storage.writes.lock();
        if writes.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            writes.remove(&self.key);
        }
    }
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        let n = {
            let mut chunks = self.obj.chunks.write();
            if !data.is_empty() {
                chunks.push(data);
            }
            chunks.len()
        };
        self.obj.progress.send_replace(if eof {
            Progress::Done(n)
        } else {
            Progress::Writing(n)
        });
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let chunks = self.obj.chunks.read().clone();
        self.obj.progress.send_replace(Progress::Done(chunks.len()));
        let size: usize = chunks.iter().map(Bytes::len).sum();
        let body = if chunks.len() == 1 {
            chunks[0].clone()
        } else {
            let mut all = BytesMut::with_capacity(size);
            chunks.iter().for_each(|c| all.extend_from_slice(c));
            all.freeze()
        };
        let obj = Arc::new(MemObject {
            hash: self.hash,
            url: self.url.clone(),
            meta: self.obj.meta.clone(),
            header: self.obj.header.clone(),
            body: body.clone(),
        });
        self.storage.memory.put(self.key, obj);
        if let Some(disk) = &self.storage.disk {
            let record = MetaRecord {
                hash_hex: hex::encode(self.hash),
                url: self.url.clone(),
                body_len: size as u64,
                body_check: BodyCheck::of(&body),
                meta: self.obj.meta.clone(),
            };
            if let Err(e) = disk.store(self.key, record, vec![body]).await {
                tracing::error!(key = %hex::encode(self.hash), error = %e, "disk cache write failed; object kept in memory only");
                self.storage.metrics.disk_errors.inc();
            }
        }
        self.finished = true;
        self.unregister();
        Ok(MissFinishType::Created(size))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        if !self.finished {
            self.obj.progress.send_replace(Progress::Failed);
            self.unregister();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_hit_rebuilt_from_the_kept_header_is_the_stored_meta() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let mut header = ResponseHeader::build(206, Some(4)).expect("header");
        header
            .insert_header("content-type", "video/mp4")
            .expect("ct");
        header.insert_header("etag", "\"abc\"").expect("etag");
        header
            .append_header("vary", "accept-encoding")
            .expect("vary");
        let mut stored = CacheMeta::new(at(2_000), at(1_000), 30, 60, header);
        stored.set_epoch_override(at(1_500));
        stored.set_variance([7u8; 16]);
        let bytes = stored.serialize().expect("serialize");

        let decoded = CacheMeta::deserialize(&bytes.0, &bytes.1).expect("deserialize");
        let hit = hit_meta(&bytes.0, decoded.response_header()).expect("hit meta");
        assert_eq!(hit.created(), at(1_000));
        assert_eq!(hit.epoch(), at(1_500));
        assert!(hit.is_fresh(at(2_000)) && !hit.is_fresh(at(2_001)));
        assert_eq!(hit.variance(), Some([7u8; 16]));
        assert_eq!(
            hit.serialize().expect("reserialize"),
            bytes,
            "every field, header included, as stored"
        );
    }

    #[test]
    fn a_kept_header_counts_in_the_memory_tier_weight() {
        let mut header = ResponseHeader::build(200, None).expect("header");
        header
            .insert_header("x-long", "v".repeat(3000))
            .expect("long header");
        assert!(memory::header_size(&header) >= 3000);
    }
}
