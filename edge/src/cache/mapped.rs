//! Disk-tier bodies mapped from their files instead of read into fresh
//! buffers, and the way such a body reaches a plaintext socket by
//! `sendfile` (page cache to socket, no copy through user space).
//!
//! A hit's body is a `Bytes` over the mapping: every door can send it, and
//! the check of its sum reads the page cache in place. A plaintext HTTP/1
//! connection (`tcp::Replay`) holds a [`Sendfile`] slot; while it serves a
//! request the slot is reachable from the cache lookup (a task-local set by
//! the door), and a mapped hit offers its file there. When Pingora then
//! writes a slice that lies inside that mapping, the bytes it holds are
//! exactly the file's at that offset (cache files are written whole under
//! a temporary name and renamed, never changed in place, and the mapping
//! is read-only), so the slot sends the same bytes from the file instead.
//! Anything else — a TLS or HTTP/2 connection, a slice of another buffer,
//! a short write — goes the ordinary way with the same bytes: the worst a
//! mistake here can do is copy.

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};
use parking_lot::Mutex;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

/// An object's body file, mapped read-only.
pub struct MappedBody {
    /// `None` for an empty body (an empty mapping is an error).
    map: Option<Mmap>,
    file: File,
    /// Set once the mapping is locked in RAM (`locked.rs`): the gauge of
    /// locked bytes, taken back when the mapping goes.
    locked: Option<prometheus::IntGauge>,
}

impl MappedBody {
    /// Maps `path`, faulting its pages in now (blocking: call from a
    /// blocking thread), so the check and the send that follow find them
    /// in memory.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let map = if len == 0 {
            None
        } else {
            // Safety: cache files are never written after their rename
            // into place (see the module comment); the mapping is
            // read-only, so its bytes cannot change under the `Bytes`.
            Some(unsafe { MmapOptions::new().populate().map(&file)? })
        };
        Ok(MappedBody {
            map,
            file,
            locked: None,
        })
    }

    /// Locks the mapped pages in RAM (blocking), counting them in `gauge`
    /// until the mapping is dropped. An empty body has nothing to lock.
    pub fn lock(&mut self, gauge: &prometheus::IntGauge) -> io::Result<()> {
        let Some(map) = &self.map else {
            return Ok(());
        };
        map.lock()?;
        gauge.add(map.len() as i64);
        self.locked = Some(gauge.clone());
        Ok(())
    }

    pub fn is_locked(&self) -> bool {
        self.locked.is_some()
    }

    pub fn as_slice(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// The body as `Bytes`, keeping the mapping alive while any slice is.
    pub fn bytes(this: &Arc<Self>) -> Bytes {
        Bytes::from_owner(Shared(this.clone()))
    }

    /// Where `buf` starts in the file, if it lies wholly inside the mapping.
    fn offset_of(&self, buf: &[u8]) -> Option<u64> {
        let map = self.map.as_ref()?;
        let base = map.as_ptr() as usize;
        let start = buf.as_ptr() as usize;
        let inside = start >= base && start + buf.len() <= base + map.len();
        inside.then(|| (start - base) as u64)
    }
}

impl Drop for MappedBody {
    fn drop(&mut self) {
        // The unmap that follows unlocks the pages.
        if let Some(gauge) = &self.locked {
            gauge.sub(self.len() as i64);
        }
    }
}

struct Shared(Arc<MappedBody>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Writes shorter than this go the ordinary way (gathered with the head).
pub const SENDFILE_MIN: usize = 16 * 1024;

/// A plaintext connection's offer box: the mapped body of the response it
/// is sending, if any.
pub struct Sendfile {
    body: Mutex<Option<Arc<MappedBody>>>,
    sent: prometheus::IntCounter,
}

tokio::task_local! {
    /// The connection being served, while its door runs the pipeline.
    static CONNECTION: Arc<Sendfile>;
}

impl std::fmt::Debug for Sendfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let offered = self.body.lock().as_ref().map(|b| b.len());
        f.debug_struct("Sendfile")
            .field("offered", &offered)
            .finish()
    }
}

impl Sendfile {
    /// A slot counting what it sends in `sent`.
    pub fn new(sent: prometheus::IntCounter) -> Self {
        Sendfile {
            body: Mutex::new(None),
            sent,
        }
    }

    /// Runs `serve` with this slot reachable from the cache lookup.
    pub async fn serving<F: std::future::Future>(self: &Arc<Self>, serve: F) -> F::Output {
        CONNECTION.scope(self.clone(), serve).await
    }

    /// Forgets the last response's body (its file and mapping close).
    pub fn clear(&self) {
        *self.body.lock() = None;
    }

    /// Offers `body` to the connection being served; false if the request
    /// is not on a plaintext HTTP/1 connection.
    pub fn offer(body: &Arc<MappedBody>) -> bool {
        CONNECTION
            .try_with(|slot| *slot.body.lock() = Some(body.clone()))
            .is_ok()
    }

    /// Sends `buf` from the offered file if it is a slice of it: `None`
    /// when it is not (write it the ordinary way), else what `sendfile`
    /// returned (`WouldBlock` included: the caller then writes the bytes
    /// the ordinary way, which waits for the socket as usual).
    pub fn send(&self, socket: RawFd, buf: &[u8]) -> Option<io::Result<usize>> {
        if buf.len() < SENDFILE_MIN {
            return None;
        }
        // Held over the call: the slot is this connection's alone.
        let body = self.body.lock();
        let body = body.as_ref()?;
        let offset = body.offset_of(buf)?;
        let sent = sendfile(socket, body.file.as_raw_fd(), offset, buf.len());
        if let Ok(n) = sent {
            self.sent.inc_by(n as u64);
        }
        Some(sent)
    }
}

fn sendfile(socket: RawFd, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    // Safety: both descriptors are open for the call (the socket is the
    // caller's, the file is held by `body`), `off` is a valid pointer.
    let n = unsafe { libc::sendfile(socket, file, &mut off, len) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_file(name: &str, body: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("meshcast-map-{name}-{}", std::process::id()));
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn slices_of_the_mapping_are_located_and_others_are_not() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let path = body_file("locate", &data);
        let body = Arc::new(MappedBody::open(&path).unwrap());
        let bytes = MappedBody::bytes(&body);
        assert_eq!(&bytes[..], &data[..]);
        assert_eq!(body.offset_of(&bytes[1234..50_000]), Some(1234));
        assert_eq!(body.offset_of(&bytes[..]), Some(0));
        // The same bytes elsewhere are not the mapping's.
        assert_eq!(body.offset_of(&data[1234..50_000]), None);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_empty_body_maps_to_no_bytes() {
        let path = body_file("empty", b"");
        let body = Arc::new(MappedBody::open(&path).unwrap());
        assert_eq!(body.len(), 0);
        assert!(MappedBody::bytes(&body).is_empty());
        assert_eq!(body.offset_of(&[]), None);
        std::fs::remove_file(&path).unwrap();
    }

    /// Only inside `serving` can a body be offered; `clear` forgets it.
    #[tokio::test]
    async fn a_body_is_offered_only_to_the_connection_being_served() {
        let path = body_file("offer", &vec![7u8; 40_000]);
        let body = Arc::new(MappedBody::open(&path).unwrap());
        assert!(!Sendfile::offer(&body));
        let slot = Arc::new(Sendfile::new(
            prometheus::IntCounter::new("t", "t").unwrap(),
        ));
        assert!(slot.serving(async { Sendfile::offer(&body) }).await);
        assert!(slot.body.lock().is_some());
        slot.clear();
        assert!(slot.body.lock().is_none());
        std::fs::remove_file(&path).unwrap();
    }
}
