//! Receipts out, acks in: what this edge has signed and what viewers have
//! acknowledged, grouped by epoch until the HUB settles each one.

use super::acklog::{self, AckLog};
use super::gate::TokenBook;
use crate::metrics::Metrics;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meshcast_control::messages::{issuer_allows, issuer_known, Issuer};
use meshcast_control::receipt::{verify_acks, Ack, ReceiptSealer, SealedReceipt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::RwLock;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Session signatures of the fresh acks, checked on the blocking pool (not
/// a Pingora worker thread): one batch check, then one by one if it fails.
async fn verify_sessions(
    candidates: Vec<(usize, Ack)>,
    session: [u8; 32],
    refused: &mut Vec<Refused>,
) -> Vec<(usize, Ack)> {
    if candidates.is_empty() {
        return candidates;
    }
    let checked = tokio::task::spawn_blocking(move || {
        let acks: Vec<Ack> = candidates.iter().map(|c| c.1.clone()).collect();
        if verify_acks(&acks, &vec![session; acks.len()]).is_ok() {
            return candidates
                .into_iter()
                .map(|c| (c, true))
                .collect::<Vec<_>>();
        }
        candidates
            .into_iter()
            .map(|(index, ack)| {
                let ok = verify_acks(std::slice::from_ref(&ack), &[session]).is_ok();
                ((index, ack), ok)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    let mut good = Vec::with_capacity(checked.len());
    for ((index, ack), ok) in checked {
        if ok {
            good.push((index, ack));
        } else {
            refused.push(Refused {
                index,
                reason: "ack signature does not verify with the token's session key".into(),
            });
        }
    }
    good
}

/// Fresh acks grouped by the epoch their receipt falls in.
fn by_epoch(book: &Book, acks: Vec<(usize, Ack)>) -> BTreeMap<u64, Vec<Ack>> {
    let mut out: BTreeMap<u64, Vec<Ack>> = BTreeMap::new();
    for (_, ack) in acks {
        out.entry(book.epoch_of(ack.receipt.receipt.time_ms))
            .or_default()
            .push(ack);
    }
    out
}

/// Most acks one POST may carry: bounds one request's verification work
/// (~256 signatures, a few milliseconds on the blocking pool). Players send
/// 8 (browser plugin) or 16 (meshcast play).
pub const MAX_BATCH: usize = 256;

#[derive(Deserialize)]
pub struct AckBatch {
    pub token: String,
    pub acks: Vec<WireAck>,
}

#[derive(Deserialize)]
pub struct WireAck {
    /// The `Meshcast-Receipt` header value as received.
    pub receipt: String,
    /// base64url of the session key's Ed25519 signature.
    pub sig: String,
}

#[derive(Debug, Serialize)]
pub struct Refused {
    pub index: usize,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct AckReply {
    pub accepted: usize,
    pub bytes: u64,
    pub refused: Vec<Refused>,
}

#[derive(Default)]
pub struct EpochAcks {
    pub acks: Vec<(String, Ack)>,
    pub ids: HashSet<[u8; 16]>,
}

#[derive(Default)]
pub struct Epochs {
    /// Epochs still taking acks (a mutex inside the lock: ack handlers
    /// insert while holding the lock shared).
    pub open: parking_lot::Mutex<BTreeMap<u64, EpochAcks>>,
    /// Epochs below this take no more acks; their acks await settlement.
    pub sealed_below: u64,
    pub sealed: BTreeMap<u64, Vec<(String, Ack)>>,
}

pub struct Book {
    pub sealer: ReceiptSealer,
    serial: AtomicU64,
    /// The network's epoch length (see `adopt_epoch_ms`).
    epoch_ms: AtomicU64,
    pub grace_ms: u64,
    /// How long settled epochs' outcomes are kept.
    pub settled_keep_ms: u64,
    pub dir: PathBuf,
    pub log: AckLog,
    /// Ack handlers hold it shared from dedup to fsync to insert; sealing
    /// holds it exclusively, so no ack lands in an epoch being claimed.
    pub epochs: RwLock<Epochs>,
}

impl Book {
    /// Opens the ack log directory and loads every unsettled epoch.
    pub fn open(
        sealer: ReceiptSealer,
        epoch_ms: u64,
        grace_ms: u64,
        settled_keep_ms: u64,
        dir: &Path,
        metrics: &Metrics,
    ) -> std::io::Result<Book> {
        let log = AckLog::start(dir.to_path_buf(), metrics.ack_fsyncs.clone())?;
        let epochs = Epochs::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(epoch) = acklog::epoch_of_file(&path, "log") else {
                continue;
            };
            if acklog::settled_path(dir, epoch).exists() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let acks = acklog::replay(&path)?;
            tracing::info!(
                epoch,
                acks = acks.len(),
                "recovered unsettled acks from the log"
            );
            let mut open = epochs.open.lock();
            let e = open.entry(epoch).or_default();
            for (t, a) in acks {
                if e.ids.insert(a.receipt.id()) {
                    e.acks.push((t, a));
                }
            }
        }
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
        let book = Book {
            sealer,
            serial: AtomicU64::new(u64::from_le_bytes(seed) >> 1),
            epoch_ms: AtomicU64::new(epoch_ms.max(1)),
            grace_ms,
            settled_keep_ms,
            dir: dir.to_path_buf(),
            log,
            epochs: RwLock::new(epochs),
        };
        book.prune_settled(now_ms());
        Ok(book)
    }

    pub fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Ordering::Relaxed)
    }

    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms.load(Ordering::Relaxed)
    }

    pub fn epoch_of(&self, time_ms: u64) -> u64 {
        time_ms / self.epoch_ms()
    }

    /// Takes the network's epoch length (from the HUB). Only while no acks
    /// are held: acks grouped under one length are claimed under it, so an
    /// edge with acks from before (an upgrade) keeps its length until they
    /// settle and adopts the network's at a later call. Returns whether the
    /// book now uses `ms`.
    pub async fn adopt_epoch_ms(&self, ms: u64, now_ms: u64) -> bool {
        if ms == 0 || ms == self.epoch_ms() {
            return ms != 0;
        }
        let mut epochs = self.epochs.write().await;
        let holding =
            !epochs.sealed.is_empty() || epochs.open.lock().values().any(|e| !e.acks.is_empty());
        if holding {
            return false;
        }
        epochs.open.lock().clear();
        self.epoch_ms.store(ms, Ordering::Relaxed);
        epochs.sealed_below = now_ms.saturating_sub(self.grace_ms) / ms;
        // Outcomes numbered under the old length mean nothing under the new.
        if let Ok(n) = acklog::prune_settled(&self.dir, u64::MAX) {
            tracing::info!(
                epoch_ms = ms,
                pruned = n,
                "adopted the network's epoch length"
            );
        }
        true
    }

    /// Deletes settled epochs' outcomes older than `settled_keep`.
    pub fn prune_settled(&self, now_ms: u64) {
        let before = self.epoch_of(now_ms.saturating_sub(self.settled_keep_ms));
        match acklog::prune_settled(&self.dir, before) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                pruned = n,
                before_epoch = before,
                "old settled epochs deleted"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot prune settled epochs"),
        }
    }

    /// Drops acks for epochs already closed ("late") and receipts already
    /// acknowledged in their epoch or earlier in this batch ("replayed").
    async fn drop_seen(
        &self,
        candidates: Vec<(usize, Ack)>,
        refused: &mut Vec<Refused>,
    ) -> Vec<(usize, Ack)> {
        let epochs = self.epochs.read().await;
        let open = epochs.open.lock();
        let mut batch_ids = HashSet::new();
        let mut fresh = Vec::with_capacity(candidates.len());
        for (index, ack) in candidates {
            let epoch = self.epoch_of(ack.receipt.receipt.time_ms);
            let id = ack.receipt.id();
            if epoch < epochs.sealed_below {
                refused.push(Refused {
                    index,
                    reason: format!("late: epoch {epoch} is already closed and claimed"),
                });
            } else if open.get(&epoch).is_some_and(|e| e.ids.contains(&id)) || !batch_ids.insert(id)
            {
                refused.push(Refused {
                    index,
                    reason: "replayed: this receipt was already acknowledged".into(),
                });
            } else {
                fresh.push((index, ack));
            }
        }
        fresh
    }

    /// Verifies a batch, logs the good acks durably, then counts them.
    pub async fn accept(
        &self,
        batch: AckBatch,
        tokens: &TokenBook,
        issuers: &[Issuer],
        metrics: &Metrics,
    ) -> Result<AckReply, (u16, String)> {
        if batch.acks.len() > MAX_BATCH {
            return Err((
                413,
                format!(
                    "{} acks in one batch; send at most {MAX_BATCH}",
                    batch.acks.len()
                ),
            ));
        }
        let known = |k: &[u8; 32]| issuer_known(issuers, k);
        let allows = |k: &[u8; 32], p: &str| issuer_allows(issuers, k, p);
        let token = tokens
            .verify(&batch.token, &known, &allows)
            .map_err(|e| (403, format!("ack batch token: {e}")))?;
        let session = token.claims.session;
        if !meshcast_control::ed25519::is_key(&session) {
            return Err((
                403,
                "the token's session key is not an Ed25519 key".to_string(),
            ));
        }
        let mut refused = Vec::new();
        let mut candidates: Vec<(usize, Ack)> = Vec::new();
        for (index, w) in batch.acks.iter().enumerate() {
            let mut refuse = |reason: String| refused.push(Refused { index, reason });
            let receipt = match SealedReceipt::from_header(&w.receipt) {
                Ok(r) => r,
                Err(e) => {
                    refuse(e.to_string());
                    continue;
                }
            };
            if let Err(e) = self.sealer.is_ours(&receipt) {
                refuse(e.to_string());
                continue;
            }
            if receipt.receipt.token != token.id {
                refuse("receipt was issued under another token".into());
                continue;
            }
            let sig: [u8; 64] = match URL_SAFE_NO_PAD
                .decode(&w.sig)
                .ok()
                .and_then(|s| s.try_into().ok())
            {
                Some(s) => s,
                None => {
                    refuse("sig is not 64 bytes of base64url".into());
                    continue;
                }
            };
            candidates.push((index, Ack { receipt, sig }));
        }
        // Replays and late acks are dropped before any signature is
        // checked, so a resent batch costs hash lookups, not verifications.
        let fresh = self.drop_seen(candidates, &mut refused).await;
        let fresh = verify_sessions(fresh, session, &mut refused).await;
        let mut accepted = 0;
        let mut bytes = 0;
        for (epoch, acks) in by_epoch(self, fresh) {
            // Shared lock from the check to the insert: sealing waits for
            // us, and batches from many viewers group-commit meanwhile.
            let guard = self.epochs.read().await;
            if epoch < guard.sealed_below {
                continue;
            }
            self.log
                .append(epoch, acklog::encode(&batch.token, &acks))
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot write the ack log");
                    (
                        503,
                        "this edge cannot record acks right now; retry".to_string(),
                    )
                })?;
            let mut open = guard.open.lock();
            let slot = open.entry(epoch).or_default();
            for a in acks {
                if slot.ids.insert(a.receipt.id()) {
                    accepted += 1;
                    bytes += a.receipt.receipt.len;
                    slot.acks.push((batch.token.clone(), a));
                }
            }
        }
        metrics
            .acks
            .with_label_values(&["accepted"])
            .inc_by(accepted as u64);
        metrics
            .acks
            .with_label_values(&["refused"])
            .inc_by(refused.len() as u64);
        refused.sort_by_key(|r| r.index);
        Ok(AckReply {
            accepted,
            bytes,
            refused,
        })
    }

    /// Closes every epoch whose grace has passed; returns how many.
    pub async fn seal_due(&self, now_ms: u64) -> usize {
        let mut epochs = self.epochs.write().await;
        let below = now_ms.saturating_sub(self.grace_ms) / self.epoch_ms();
        if below <= epochs.sealed_below {
            return 0;
        }
        epochs.sealed_below = below;
        let due = {
            let mut open = epochs.open.lock();
            let keep = open.split_off(&below);
            std::mem::replace(&mut *open, keep)
        };
        let n = due.len();
        for (epoch, e) in due {
            epochs.sealed.insert(epoch, e.acks);
        }
        n
    }
}

#[cfg(test)]
mod epoch_tests {
    use super::*;
    use meshcast_control::identity::NodeKey;

    #[tokio::test]
    async fn the_networks_epoch_length_is_taken_only_while_no_acks_are_held() {
        let dir = std::env::temp_dir().join(format!("meshcast-book-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = Box::leak(Box::new(Metrics::new()));
        let sealer = ReceiptSealer::new(NodeKey::from_seed([3; 32]));
        let book = Book::open(sealer, 60_000, 3_000, 3_600_000, &dir, metrics).unwrap();
        let now = 1_000_000_000_000;
        // Empty: the network's 2 s applies at once, and sealing follows it.
        assert!(book.adopt_epoch_ms(2_000, now).await);
        assert_eq!(book.epoch_of(now), now / 2_000);
        assert_eq!(book.epochs.read().await.sealed_below, (now - 3_000) / 2_000);
        // Holding acks grouped by 2 s epochs: a new length waits.
        let receipt = book
            .sealer
            .issue([1; 16], [2; 16], "/v/a/1.m4s", 0, 10, now, 1);
        let ack = Ack::sign(&ed25519_dalek::SigningKey::from_bytes(&[4; 32]), receipt);
        {
            let epochs = book.epochs.read().await;
            let mut open = epochs.open.lock();
            open.entry(book.epoch_of(now))
                .or_default()
                .acks
                .push(("t".into(), ack));
        }
        assert!(!book.adopt_epoch_ms(10_000, now).await);
        assert_eq!(book.epoch_ms(), 2_000);
        assert!(book.adopt_epoch_ms(2_000, now).await, "the length in use");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
