//! The disk tier: objects as hash-named files under `<dir>/objects/xx/`,
//! read and written through io_uring, with size-aware eviction.
//!
//! The index (which objects exist, their sizes and URLs) is rebuilt from the
//! meta files at start, in the background; until that scan is done a lookup
//! still finds an object by opening its hash-named file, so a restarted edge
//! serves its cache at once. Large bodies checked once may stay locked in
//! RAM and be served again without a read or a check (`locked.rs`).

use super::locked::{Kept, LockedSet, Ticket};
use super::mapped::MappedBody;
use super::object::{CorruptObject, MetaRecord};
use super::uring::Uring;
use crate::metrics::Metrics;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use tinyufo::TinyUfo;

/// Eviction weights are counted in 4KiB blocks (TinyUFO weights are u16, so
/// one object weighs at most 256MiB: larger ones are not admitted).
pub(super) const BLOCK: u64 = 4096;

pub struct DiskTier {
    root: PathBuf,
    uring: Uring,
    index: Mutex<HashMap<u64, IndexEntry>>,
    /// TinyUFO reports evictions by a hash of its own, not our key, so
    /// each entry carries its key as its value.
    policy: TinyUfo<u64, u64>,
    /// Which large bodies may stay locked once checked; `None` when
    /// `locked_size` is 0.
    locked: Option<LockedSet>,
    scanned: AtomicBool,
    tmp_seq: AtomicU64,
    /// Numbers each index entry's version (see [`Ticket`]).
    generations: AtomicU64,
    bytes: AtomicI64,
    metrics: &'static Metrics,
}

struct IndexEntry {
    hash_hex: String,
    url: String,
    size: u64,
    /// Changes whenever the object's files do (store, meta update).
    generation: u64,
    /// The body, locked in RAM since it was checked.
    kept: Option<Arc<Kept>>,
}

/// What a load found.
pub enum Loaded {
    /// A body checked on an earlier hit and locked since: nothing was read.
    Kept(Arc<Kept>),
    /// Read (or mapped) and checked now. With a ticket the body is a
    /// locked mapping the caller may [`DiskTier::keep`].
    Checked {
        record: MetaRecord,
        body: Body,
        ticket: Option<Ticket>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("corrupt cache object: {0}")]
    Corrupt(#[from] CorruptObject),
    #[error("disk read failed: {0}")]
    Io(#[from] io::Error),
}

pub fn weight(size: u64) -> Option<u16> {
    u16::try_from(size.div_ceil(BLOCK).max(1)).ok()
}

impl DiskTier {
    /// Opens (creating) the cache directory and starts the I/O thread.
    /// `locked` bytes of large checked bodies may stay locked in RAM.
    pub fn open(
        dir: &Path,
        capacity: u64,
        locked: u64,
        metrics: &'static Metrics,
    ) -> io::Result<Arc<Self>> {
        let root = dir.join("objects");
        for i in 0..=255u8 {
            std::fs::create_dir_all(root.join(format!("{i:02x}")))?;
        }
        let uring = Uring::start(256, metrics.uring_submissions.clone())?;
        let blocks = (capacity / BLOCK).max(1) as usize;
        let tier = Arc::new(DiskTier {
            root,
            uring,
            index: Mutex::new(HashMap::new()),
            policy: TinyUfo::new(blocks, (blocks / 16).max(64)),
            locked: LockedSet::new(locked),
            scanned: AtomicBool::new(false),
            tmp_seq: AtomicU64::new(0),
            generations: AtomicU64::new(0),
            bytes: AtomicI64::new(0),
            metrics,
        });
        let scanner = tier.clone();
        std::thread::Builder::new()
            .name("meshcast-cache-scan".into())
            .spawn(move || scanner.scan())?;
        Ok(tier)
    }

    pub(super) fn paths(&self, hash_hex: &str) -> (PathBuf, PathBuf) {
        let dir = self.root.join(&hash_hex[..2]);
        (
            dir.join(format!("{hash_hex}.meta")),
            dir.join(format!("{hash_hex}.body")),
        )
    }

    #[cfg(test)]
    pub(super) fn metrics_for_tests(&self) -> &'static Metrics {
        self.metrics
    }

    fn tmp_path(&self, path: &Path) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        path.with_extension(format!("tmp{}-{n}", std::process::id()))
    }

    /// Rebuilds the index from the meta files; deletes leftovers of
    /// interrupted writes and objects whose meta is unreadable.
    fn scan(self: Arc<Self>) {
        let mut objects = 0u64;
        for i in 0..=255u8 {
            let Ok(entries) = std::fs::read_dir(self.root.join(format!("{i:02x}"))) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
                if ext.starts_with("tmp") {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                if ext != "meta" {
                    continue;
                }
                let record = std::fs::read(&path)
                    .ok()
                    .and_then(|b| MetaRecord::decode(&b).ok());
                let body = path.with_extension("body");
                let body_len = std::fs::metadata(&body).map(|m| m.len()).ok();
                match record {
                    Some(r)
                        if body_len == Some(r.body_len)
                            && path.file_stem().is_some_and(|s| s == r.hash_hex.as_str()) =>
                    {
                        let Some(key) = key_of_hex(&r.hash_hex) else {
                            continue;
                        };
                        self.admit(key, r.hash_hex, r.url, r.body_len);
                        objects += 1;
                    }
                    _ => {
                        tracing::warn!(path = %path.display(), "removing unreadable cache object");
                        let _ = std::fs::remove_file(&path);
                        let _ = std::fs::remove_file(&body);
                    }
                }
            }
        }
        self.scanned.store(true, Ordering::Release);
        tracing::info!(
            objects,
            bytes = self.bytes.load(Ordering::Relaxed),
            "disk cache index loaded"
        );
    }

    /// Records an object in the index and the eviction policy; deletes what
    /// the policy evicts (possibly the object itself, if not admitted).
    fn admit(self: &Arc<Self>, key: u64, hash_hex: String, url: String, size: u64) {
        let Some(w) = weight(size) else {
            self.delete_files_later(hash_hex);
            return;
        };
        let entry = IndexEntry {
            hash_hex,
            url,
            size,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            kept: None,
        };
        let size = size as i64;
        if let Some(old) = self.index.lock().insert(key, entry) {
            self.bytes.fetch_sub(old.size as i64, Ordering::Relaxed);
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        for evicted in self.policy.put(key, key, w) {
            if let Some(gone) = self.forget(evicted.data) {
                self.delete_files_later(gone.hash_hex);
            }
        }
        self.update_gauges();
    }

    fn forget(&self, key: u64) -> Option<IndexEntry> {
        let gone = self.index.lock().remove(&key)?;
        if let Some(locked) = &self.locked {
            locked.remove(key);
        }
        self.bytes.fetch_sub(gone.size as i64, Ordering::Relaxed);
        Some(gone)
    }

    fn update_gauges(&self) {
        let objects = self.index.lock().len() as i64;
        self.metrics
            .cache_objects
            .with_label_values(&["disk"])
            .set(objects);
        self.metrics
            .cache_bytes
            .with_label_values(&["disk"])
            .set(self.bytes.load(Ordering::Relaxed));
    }

    fn delete_files_later(self: &Arc<Self>, hash_hex: String) {
        let (meta, body) = self.paths(&hash_hex);
        // Plain unlinks from a blocking thread when no runtime is around
        // (the start-up scan); io_uring otherwise.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let this = self.clone();
                rt.spawn(async move {
                    let _ = this.uring.unlink(&meta).await;
                    let _ = this.uring.unlink(&body).await;
                });
            }
            Err(_) => {
                let _ = std::fs::remove_file(meta);
                let _ = std::fs::remove_file(body);
            }
        }
    }

    /// Loads and verifies an object. `Ok(None)` is a plain miss. A body
    /// kept locked since its check is returned as it is. Otherwise, when
    /// the index knows the body's size, meta and body are fetched at once;
    /// the record still decides what is valid, and the body's sum is
    /// checked before any byte is served.
    pub async fn load(&self, key: u64, hash_hex: &str) -> Result<Option<Loaded>, LoadError> {
        let indexed = match self.index.lock().get(&key) {
            Some(IndexEntry {
                kept: Some(kept), ..
            }) => Some(Err(kept.clone())),
            Some(e) => Some(Ok((e.size, Ticket(e.generation)))),
            None => None,
        };
        let (size, ticket) = match indexed {
            // The tier key is 64 bits of the hash: a crafted collision
            // must not be served another key's body.
            Some(Err(kept)) if kept.record.hash_hex != hash_hex => {
                return Err(CorruptObject::WrongKey.into());
            }
            Some(Err(kept)) => {
                self.policy.get(&key);
                if let Some(locked) = &self.locked {
                    locked.touch(key);
                }
                return Ok(Some(Loaded::Kept(kept)));
            }
            Some(Ok((size, ticket))) => (Some(size), Some(ticket)),
            None if self.scanned.load(Ordering::Acquire) => return Ok(None),
            None => (None, None),
        };
        let lock = size.filter(|size| self.may_lock(key, *size)).map(|_| key);
        let (meta_path, body_path) = self.paths(hash_hex);
        let (meta, body) = match size {
            Some(size) => {
                let (meta, body) = tokio::join!(
                    self.uring.read(&meta_path, 1024),
                    self.body(&body_path, size, lock)
                );
                (meta, Some(body))
            }
            None => (self.uring.read(&meta_path, 1024).await, None),
        };
        let meta = match meta {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let record = MetaRecord::decode(&meta)?;
        if record.hash_hex != hash_hex {
            return Err(CorruptObject::WrongKey.into());
        }
        let body = match body {
            Some(fetched) => fetched,
            None => self.body(&body_path, record.body_len, None).await,
        };
        let body = match body {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CorruptObject::BodyLength {
                    got: 0,
                    want: record.body_len,
                }
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        // Locked before this check: the bytes checked are those kept.
        record.verify_body(body.as_slice())?;
        self.policy.get(&key);
        let ticket = ticket.filter(|_| matches!(&body, Body::Mapped(m) if m.is_locked()));
        Ok(Some(Loaded::Checked {
            record,
            body,
            ticket,
        }))
    }

    /// Whether a body of `size` bytes is to be locked as it is mapped: a
    /// mapped one the locked set admits.
    fn may_lock(&self, key: u64, size: u64) -> bool {
        let (Some(locked), Some(w)) = (&self.locked, weight(size)) else {
            return false;
        };
        if size < MAP_FROM {
            return false;
        }
        let (admitted, pushed_out) = locked.admit(key, w);
        if !pushed_out.is_empty() {
            let mut index = self.index.lock();
            for key in pushed_out {
                if let Some(entry) = index.get_mut(&key) {
                    entry.kept = None;
                }
            }
        }
        admitted
    }

    /// Keeps a body checked by a load that took `ticket`, unless the
    /// object changed or went since; true if kept.
    pub fn keep(&self, key: u64, ticket: Ticket, kept: Kept) -> bool {
        debug_assert!(kept.body.is_locked(), "only locked bodies are kept");
        let mut index = self.index.lock();
        match index.get_mut(&key) {
            Some(entry) if entry.generation == ticket.0 => {
                entry.kept = Some(Arc::new(kept));
                true
            }
            _ => false,
        }
    }

    /// A body of about `size` bytes: read into a buffer through io_uring,
    /// or mapped from `MAP_FROM` up (`mapped.rs`), and then locked in RAM
    /// if it is to be kept as `lock_for`'s (a refused lock leaves it
    /// unlocked and not kept). A read asks for one byte more than the size,
    /// so a grown file shows as a wrong length.
    async fn body(&self, path: &Path, size: u64, lock_for: Option<u64>) -> io::Result<Body> {
        if size < MAP_FROM {
            let read = self.uring.read(path, size as usize + 1).await?;
            return Ok(Body::Read(Bytes::from(read)));
        }
        let path = path.to_owned();
        let gauge = lock_for.map(|_| self.metrics.cache_bytes.with_label_values(&["locked"]));
        // Mapping faults the pages in: on a blocking thread, not a worker.
        let mapped = tokio::task::spawn_blocking(move || {
            let mut mapped = MappedBody::open(&path)?;
            let refused = match gauge {
                Some(gauge) => mapped.lock(&gauge).err(),
                None => None,
            };
            Ok::<_, io::Error>((mapped, refused))
        })
        .await
        .map_err(io::Error::other)?;
        let (mapped, refused) = mapped?;
        if let (Some(error), Some(locked), Some(key)) = (refused, &self.locked, lock_for) {
            locked.refused(&error);
            locked.remove(key);
        }
        Ok(Body::Mapped(Arc::new(mapped)))
    }

    /// Writes an object: body first, then the meta record as the commit.
    pub async fn store(
        self: &Arc<Self>,
        key: u64,
        record: MetaRecord,
        body: Vec<Bytes>,
    ) -> io::Result<()> {
        if weight(record.body_len).is_none() {
            return Ok(());
        }
        let (meta_path, body_path) = self.paths(&record.hash_hex);
        self.uring
            .write_atomic(&body_path, &self.tmp_path(&body_path), body)
            .await?;
        let encoded = Bytes::from(record.encode());
        self.uring
            .write_atomic(&meta_path, &self.tmp_path(&meta_path), vec![encoded])
            .await?;
        self.admit(key, record.hash_hex, record.url, record.body_len);
        Ok(())
    }

    /// Rewrites the meta record of a stored object (after a revalidation);
    /// a kept body goes with the old record, and a load that read the old
    /// one cannot keep its body.
    pub async fn update_meta(
        &self,
        key: u64,
        hash_hex: &str,
        meta: (Vec<u8>, Vec<u8>),
    ) -> Result<bool, LoadError> {
        let (meta_path, _) = self.paths(hash_hex);
        let mut record = match self.uring.read(&meta_path, 1024).await {
            Ok(m) => MetaRecord::decode(&m)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        record.meta = meta;
        let encoded = Bytes::from(record.encode());
        self.uring
            .write_atomic(&meta_path, &self.tmp_path(&meta_path), vec![encoded])
            .await?;
        // After the write: a load that began before it holds the old
        // generation, one that began after it reads the new record.
        if let Some(entry) = self.index.lock().get_mut(&key) {
            entry.generation = self.generations.fetch_add(1, Ordering::Relaxed);
            entry.kept = None;
        }
        Ok(true)
    }

    /// Removes an object; true if it was indexed.
    pub async fn remove(&self, key: u64, hash_hex: &str) -> bool {
        let known = self.forget(key).is_some();
        self.policy.remove(&key);
        let (meta, body) = self.paths(hash_hex);
        let meta_gone = self.uring.unlink(&meta).await.is_ok();
        let _ = self.uring.unlink(&body).await;
        self.update_gauges();
        known || meta_gone
    }

    /// Keys and hashes of indexed objects whose URL key satisfies `pred`.
    pub fn matching(&self, pred: impl Fn(&str) -> bool) -> Vec<(u64, String)> {
        self.index
            .lock()
            .iter()
            .filter(|(_, e)| pred(&e.url))
            .map(|(k, e)| (*k, e.hash_hex.clone()))
            .collect()
    }
}

/// Bodies this large are mapped instead of read: copying them out of the
/// page cache and into the socket costs more than a trip to a blocking
/// thread, a map and an unmap; below it the read (one copy, into a buffer
/// the memory tier then keeps) is cheaper. Measured in BENCHMARKS.md
/// ("Disk hits").
pub const MAP_FROM: u64 = 256 * 1024;

/// A loaded body: read into memory, or mapped from its file.
pub enum Body {
    Read(Bytes),
    Mapped(Arc<MappedBody>),
}

impl Body {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Body::Read(b) => b,
            Body::Mapped(m) => m.as_slice(),
        }
    }
}

/// The tier key of a hash written as hex in a meta record.
fn key_of_hex(hash_hex: &str) -> Option<u64> {
    let mut hash = [0u8; 16];
    hex::decode_to_slice(hash_hex, &mut hash).ok()?;
    Some(super::tier_key(&hash))
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::object::BodyCheck;
    use super::*;

    /// A tier in a fresh directory, `locked` bytes of it lockable.
    pub(in super::super) fn tier(name: &str, locked: u64) -> (Arc<DiskTier>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("meshcast-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let tier = DiskTier::open(&dir, 64 << 20, locked, metrics).expect("io_uring");
        // The start-up scan deletes objects whose body does not match its
        // record: let it finish before a test rewrites a body in place.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !tier.scanned.load(Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline, "the scan finishes");
            std::thread::yield_now();
        }
        (tier, dir)
    }

    pub(in super::super) fn record(
        hash: [u8; 16],
        body: &[u8],
        body_check: BodyCheck,
    ) -> MetaRecord {
        MetaRecord {
            hash_hex: hex::encode(hash),
            url: "example.com/seg.m4s".into(),
            body_len: body.len() as u64,
            body_check,
            meta: (vec![1, 2, 3], vec![4, 5, 6]),
        }
    }

    /// A cache written before XXH3 sums (`MCMETA01`, BLAKE3) is still
    /// served after the upgrade, and still checked: a flipped byte in such
    /// a body is corrupt, not served. (Nothing is locked here: a locked
    /// body is not read again, see `locked.rs` for how that is checked.)
    #[tokio::test]
    async fn objects_of_both_record_formats_load_and_are_checked() {
        let (tier, dir) = tier("formats", 0);
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let old = BodyCheck::Blake3(*blake3::hash(&body).as_bytes());
        for (i, check) in [(1u8, BodyCheck::of(&body)), (2u8, old)] {
            let hash = [i; 16];
            let key = super::super::tier_key(&hash);
            let rec = record(hash, &body, check);
            tier.store(key, rec.clone(), vec![Bytes::from(body.clone())])
                .await
                .expect("stored");
            let loaded = tier.load(key, &rec.hash_hex).await.expect("loads");
            let Some(Loaded::Checked {
                record: loaded,
                body: got,
                ticket: None,
            }) = loaded
            else {
                panic!("a checked body, not for keeping");
            };
            assert_eq!(loaded, rec);
            assert_eq!(got.as_slice(), &body[..]);
            assert!(matches!(got, Body::Mapped(_)), "300 KB is mapped");

            let (_, body_path) = tier.paths(&rec.hash_hex);
            let mut bad = body.clone();
            bad[150_000] ^= 1;
            std::fs::write(&body_path, &bad).unwrap();
            assert!(matches!(
                tier.load(key, &rec.hash_hex).await,
                Err(LoadError::Corrupt(CorruptObject::BodyChecksum))
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
