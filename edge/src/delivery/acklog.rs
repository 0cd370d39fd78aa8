//! The ack log: every accepted ack is written and fsync'd here before the
//! player hears "accepted", so an edge crash loses no acknowledged
//! delivery. One file per epoch (`{epoch:020}.log`), deleted once the HUB
//! has settled that epoch (`{epoch:020}.settled` keeps the outcome, for
//! `[node] settled_keep`).
//!
//! One writer thread does group commit: it drains every batch that queued
//! while it was syncing, writes them, and calls `fdatasync` once per file.
//!
//! Record: `len u32 | blake3(payload)[..16] | payload`, payload =
//! `token_len u16 | token | count u32 | (ack_len u16 | ack)*`. A torn tail
//! (a crash mid-write, never acknowledged) fails its checksum and is cut.

use meshcast_control::receipt::Ack;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tokio::sync::oneshot;

pub fn log_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{epoch:020}.log"))
}

pub fn settled_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{epoch:020}.settled"))
}

/// The epoch a `{epoch:020}.{extension}` file is for.
pub fn epoch_of_file(path: &Path, extension: &str) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(extension)?
        .strip_suffix('.')?
        .parse()
        .ok()
}

/// Deletes the outcomes of epochs before `before_epoch` whose log is gone
/// (an epoch that old takes no more acks, so nothing needs its marker).
pub fn prune_settled(dir: &Path, before_epoch: u64) -> std::io::Result<usize> {
    let mut pruned = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(epoch) = epoch_of_file(&path, "settled") else {
            continue;
        };
        if epoch < before_epoch && !log_path(dir, epoch).exists() {
            std::fs::remove_file(&path)?;
            pruned += 1;
        }
    }
    Ok(pruned)
}

pub fn encode(token: &str, acks: &[Ack]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + token.len() + acks.len() * 300);
    payload.extend_from_slice(&(token.len() as u16).to_be_bytes());
    payload.extend_from_slice(token.as_bytes());
    payload.extend_from_slice(&(acks.len() as u32).to_be_bytes());
    for a in acks {
        let e = a.encode();
        payload.extend_from_slice(&(e.len() as u16).to_be_bytes());
        payload.extend_from_slice(&e);
    }
    let mut rec = Vec::with_capacity(20 + payload.len());
    rec.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    rec.extend_from_slice(&blake3::hash(&payload).as_bytes()[..16]);
    rec.extend_from_slice(&payload);
    rec
}

fn decode_payload(p: &[u8]) -> Option<(String, Vec<Ack>)> {
    let mut r = p;
    let mut take = |n: usize| -> Option<&[u8]> {
        if r.len() < n {
            return None;
        }
        let (a, b) = r.split_at(n);
        r = b;
        Some(a)
    };
    let tl = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
    let token = std::str::from_utf8(take(tl)?).ok()?.to_string();
    let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    let mut acks = Vec::with_capacity(n.min(10_000));
    for _ in 0..n {
        let al = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        acks.push(Ack::decode(take(al)?).ok()?);
    }
    Some((token, acks))
}

/// Reads an epoch file back; cuts a torn tail. Returns (token, ack) pairs.
pub fn replay(path: &Path) -> std::io::Result<Vec<(String, Ack)>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut undecodable = false;
    while bytes.len() - at >= 20 {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
        let Some(payload) = bytes.get(at + 20..at + 20 + len) else {
            break;
        };
        if blake3::hash(payload).as_bytes()[..16] != bytes[at + 4..at + 20] {
            break;
        }
        let Some((token, acks)) = decode_payload(payload) else {
            undecodable = true;
            break;
        };
        out.extend(acks.into_iter().map(|a| (token.clone(), a)));
        at += 20 + len;
    }
    if at < bytes.len() {
        // A record cut short by a crash was never acknowledged: drop it.
        // Anything else (a whole record failing its checksum) is damage;
        // keep a copy of the file for the operator before cutting.
        let torn = bytes.len() - at < 20
            || 20 + u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize
                > bytes.len() - at;
        if torn && !undecodable {
            tracing::warn!(file = %path.display(), kept = at, dropped = bytes.len() - at,
                "cut a torn record from the ack log (written, never acknowledged)");
        } else {
            let (what, why) = if undecodable {
                ("undecodable", "is whole but does not decode (acks of an older receipt format, from before an upgrade?)")
            } else {
                ("damaged", "failed its checksum")
            };
            let copy = path.with_extension(format!("log.{what}-at-{at}"));
            std::fs::copy(path, &copy)?;
            tracing::error!(file = %path.display(), kept = at, copy = %copy.display(),
                "ack log record {why}; kept a copy, serving on with the records before it");
        }
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(at as u64)?;
    }
    Ok(out)
}

enum Job {
    Append {
        epoch: u64,
        record: Vec<u8>,
        done: oneshot::Sender<std::io::Result<()>>,
    },
    Close(u64),
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct AckLog {
    tx: mpsc::Sender<Job>,
}

impl AckLog {
    pub fn start(dir: PathBuf, fsyncs: prometheus::IntCounter) -> std::io::Result<AckLog> {
        std::fs::create_dir_all(&dir)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("meshcast-acklog".into())
            .spawn(move || writer(dir, rx, fsyncs))?;
        Ok(AckLog { tx })
    }

    /// Appends one record and waits until it is on disk.
    pub async fn append(&self, epoch: u64, record: Vec<u8>) -> std::io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Append {
                epoch,
                record,
                done,
            })
            .map_err(|_| std::io::Error::other("the ack log writer has stopped"))?;
        wait.await
            .map_err(|_| std::io::Error::other("the ack log writer has stopped"))?
    }

    /// Lets the writer drop its handle on a settled epoch's file.
    pub fn close(&self, epoch: u64) {
        let _ = self.tx.send(Job::Close(epoch));
    }
}

fn writer(dir: PathBuf, rx: mpsc::Receiver<Job>, fsyncs: prometheus::IntCounter) {
    let mut files: HashMap<u64, File> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let mut waiting: Vec<(u64, oneshot::Sender<std::io::Result<()>>)> = Vec::new();
        let mut failed: HashMap<u64, String> = HashMap::new();
        // Epoch files opened in this batch: their directory entry must be
        // durable too before an ack in them is answered.
        let mut opened: Vec<u64> = Vec::new();
        for job in jobs {
            match job {
                Job::Close(epoch) => {
                    files.remove(&epoch);
                }
                Job::Append {
                    epoch,
                    record,
                    done,
                } => {
                    let result = match files.entry(epoch) {
                        std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            opened.push(epoch);
                            OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(log_path(&dir, epoch))
                                .map(|f| v.insert(f))
                        }
                    }
                    .and_then(|f| {
                        // A record half-written must not sit in front of
                        // later ones (replay stops at the first bad record):
                        // cut the file back to where this record began.
                        let before = f.metadata()?.len();
                        f.write_all(&record).inspect_err(|_| {
                            let _ = f.set_len(before);
                        })
                    });
                    if let Err(e) = result {
                        failed.insert(epoch, e.to_string());
                    }
                    waiting.push((epoch, done));
                }
            }
        }
        let touched: std::collections::HashSet<u64> = waiting.iter().map(|w| w.0).collect();
        for epoch in touched {
            if failed.contains_key(&epoch) {
                continue;
            }
            if let Some(f) = files.get(&epoch) {
                fsyncs.inc();
                if let Err(e) = f.sync_data() {
                    failed.insert(epoch, e.to_string());
                }
            }
        }
        if !opened.is_empty() {
            if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                for epoch in opened {
                    failed.entry(epoch).or_insert_with(|| e.to_string());
                }
            }
        }
        for (epoch, done) in waiting {
            let r = match failed.get(&epoch) {
                Some(e) => {
                    // The file's tail is now unknown: reopen it next time.
                    files.remove(&epoch);
                    Err(std::io::Error::other(e.clone()))
                }
                None => Ok(()),
            };
            let _ = done.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcast_control::identity::NodeKey;
    use meshcast_control::receipt::ReceiptSealer;

    #[test]
    fn replay_keeps_whole_records_and_cuts_a_torn_tail() {
        let edge = ReceiptSealer::new(NodeKey::from_seed([1; 32]));
        let session = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        let ack = |i: u64| {
            Ack::sign(
                &session,
                edge.issue([0; 16], [0; 16], "/v/a/1.m4s", 0, 100 + i, i, i),
            )
        };
        let dir = std::env::temp_dir().join(format!("meshcast-acklog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = log_path(&dir, 5);
        let mut bytes = encode("tok-a", &[ack(1), ack(2)]);
        bytes.extend(encode("tok-b", &[ack(3)]));
        let whole = bytes.len() as u64;
        let third = encode("tok-c", &[ack(4)]);
        bytes.extend_from_slice(&third[..third.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();
        let back = replay(&path).unwrap();
        let tokens: Vec<&str> = back.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tokens, ["tok-a", "tok-a", "tok-b"]);
        assert_eq!(back[2].1, ack(3));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        // A flipped byte inside a record ends the replay there too, and the
        // damaged file is kept aside.
        let mut bad = std::fs::read(&path).unwrap();
        bad[30] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(replay(&path).unwrap().is_empty());
        assert_eq!(
            std::fs::read(path.with_extension("log.damaged-at-0")).unwrap(),
            bad
        );
        // A whole record this build cannot read (an ack of an older receipt
        // format) is kept aside too, under its own name.
        let mut old = ack(5);
        old.receipt.wire[2] = b'2';
        let mut bytes = encode("tok-a", &[ack(1)]);
        let first = bytes.len() as u64;
        bytes.extend(encode("tok-d", &[old]));
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(replay(&path).unwrap().len(), 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), first);
        assert_eq!(
            std::fs::read(path.with_extension(format!("log.undecodable-at-{first}"))).unwrap(),
            bytes
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn old_settled_epochs_are_pruned_unless_their_log_remains() {
        let dir = std::env::temp_dir().join(format!("meshcast-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for epoch in [3, 7, 9, 12] {
            std::fs::write(settled_path(&dir, epoch), b"{}").unwrap();
        }
        std::fs::write(log_path(&dir, 7), b"").unwrap();
        std::fs::write(dir.join("issuers.json"), b"[]").unwrap();
        assert_eq!(prune_settled(&dir, 10).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let expected = [
            "00000000000000000007.log",
            "00000000000000000007.settled",
            "00000000000000000012.settled",
            "issuers.json",
        ];
        assert_eq!(left, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
