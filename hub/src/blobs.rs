//! Content-addressed media: each file stored once under its BLAKE3 hash.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct BlobStore {
    dir: PathBuf,
    tmp_seq: AtomicU64,
}

impl BlobStore {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            tmp_seq: AtomicU64::new(0),
        })
    }

    /// Where the blob with this hex hash lives (which need not exist).
    pub fn path(&self, hash: &str) -> Option<PathBuf> {
        let valid = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.dir.join(&hash[..2]).join(hash))
    }

    /// Copies `src` in, hashing as it goes; returns (hash, size).
    pub fn put_file(&self, src: &Path) -> std::io::Result<(String, u64)> {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let mut input = std::fs::File::open(src)?;
        let mut output = std::fs::File::create(&tmp)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let k = input.read(&mut buf)?;
            if k == 0 {
                break;
            }
            hasher.update(&buf[..k]);
            output.write_all(&buf[..k])?;
            size += k as u64;
        }
        output.sync_all()?;
        let hash = hasher.finalize().to_hex().to_string();
        let dest = self
            .path(&hash)
            .expect("a BLAKE3 hex digest is a valid name");
        std::fs::create_dir_all(dest.parent().expect("blob paths have a parent"))?;
        if dest.exists() {
            std::fs::remove_file(&tmp)?;
        } else {
            std::fs::rename(&tmp, &dest)?;
        }
        Ok((hash, size))
    }
}
