//! Large disk-tier bodies kept mapped and locked in RAM once their sum has
//! been checked, so that later hits of the same object read nothing from
//! disk and hash nothing (`[cache] locked_size`).
//!
//! A disk hit checks the body's sum before its first byte goes out because
//! the page cache may drop a page and read it back from a disk that has
//! rotted since. A page locked by `mlock` cannot be dropped: the bytes
//! checked are the bytes that stay in RAM, so the check holds for as long
//! as the lock does. Cache files are written whole under a temporary name
//! and renamed, never changed in place (as `mapped.rs` assumes for every
//! mapped body); rewriting one in place is outside what this defends, as it
//! is for the sums themselves.
//!
//! What is kept belongs to the object's entry in the disk tier's index, so
//! whatever forgets or replaces the entry (eviction, purge, a new store)
//! drops it with it. A load takes a [`Ticket`] (the entry's generation)
//! before it reads, and the body is kept only if the entry still has that
//! generation afterwards: a purge or a revalidation that raced the load
//! cannot be undone by it. A kept body stays locked until the last
//! response sending it is done.
//!
//! What is kept is bounded by a budget, weighed in 4KiB blocks, with a
//! CLOCK of its own, written here because the policies on crates.io (and
//! TinyUFO, which both tiers use) admit a newcomer over an equally used
//! resident: in a full set under even load that swaps bodies on every hit,
//! each swap a lock and an unlock that save nothing. Here a body used since
//! the hand last passed it stays, and a newcomer is refused until the hand
//! finds one that was not. A body is admitted before it is locked, so a
//! refused one costs no lock. A process without `CAP_IPC_LOCK` can lock
//! only `RLIMIT_MEMLOCK` (systemd: `LimitMEMLOCK=`); a body that cannot be
//! locked is not kept, and is checked on each hit as without this set.

use super::mapped::MappedBody;
use super::object::MetaRecord;
use parking_lot::Mutex;
use pingora_http::ResponseHeader;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A body checked once and locked since, with its record and the response
/// header decoded from it (a kept hit decodes nothing).
pub struct Kept {
    pub record: MetaRecord,
    pub header: ResponseHeader,
    pub body: Arc<MappedBody>,
}

/// The generation of an index entry when a load began: a body is kept
/// only for the entry it was read for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(pub(super) u64);

/// Which objects may keep a locked body, within the budget.
pub struct LockedSet {
    clock: Mutex<Clock>,
    /// Set after the first refused lock, so the warning is said once.
    refused: AtomicBool,
}

/// How many residents an admission may pass before it gives up (so a
/// refused one costs a few steps, not a pass over every resident).
const HAND_STEPS: usize = 8;

struct Clock {
    /// The hand is at the front; a passed resident goes to the back.
    ring: VecDeque<u64>,
    residents: HashMap<u64, Resident>,
    weight: usize,
    limit: usize,
}

impl Clock {
    /// Drops the ring's places of removed residents (and the older place
    /// of one removed and admitted again), so a set that never fills,
    /// where the hand never moves, cannot grow its ring without bound.
    fn compact(&mut self) {
        let Clock {
            ring, residents, ..
        } = self;
        let mut seen = HashSet::new();
        ring.retain(|key| residents.contains_key(key) && seen.insert(*key));
    }
}

struct Resident {
    weight: u16,
    /// Hit since the hand last passed.
    used: bool,
}

impl LockedSet {
    /// A set of `budget` bytes; `None` when the budget holds no block.
    pub fn new(budget: u64) -> Option<Self> {
        let limit = (budget / super::disk::BLOCK) as usize;
        (limit > 0).then(|| LockedSet {
            clock: Mutex::new(Clock {
                ring: VecDeque::new(),
                residents: HashMap::new(),
                weight: 0,
                limit,
            }),
            refused: AtomicBool::new(false),
        })
    }

    /// Admits `key` (a body of `weight` blocks) if there is room or the
    /// hand makes some; returns whether it did and the keys it pushed out,
    /// whose bodies must no longer be kept.
    pub fn admit(&self, key: u64, weight: u16) -> (bool, Vec<u64>) {
        let mut clock = self.clock.lock();
        let weight_blocks = usize::from(weight);
        if clock.residents.contains_key(&key) {
            return (true, Vec::new());
        }
        if weight_blocks > clock.limit {
            return (false, Vec::new());
        }
        let mut out = Vec::new();
        // At most one pass: a resident used since the last is left alone.
        let steps_allowed = HAND_STEPS.min(clock.ring.len());
        let mut steps = 0;
        while clock.weight + weight_blocks > clock.limit {
            if steps == steps_allowed {
                return (false, out);
            }
            steps += 1;
            let Some(front) = clock.ring.pop_front() else {
                break;
            };
            match clock.residents.get_mut(&front) {
                Some(r) if r.used => {
                    r.used = false;
                    clock.ring.push_back(front);
                }
                Some(_) => {
                    let gone = clock.residents.remove(&front).map_or(0, |r| r.weight);
                    clock.weight -= usize::from(gone);
                    out.push(front);
                }
                // Removed since it was queued.
                None => {}
            }
        }
        // A newcomer counts as used: it survives the hand's next pass.
        clock.residents.insert(key, Resident { weight, used: true });
        if clock.ring.len() > 2 * clock.residents.len() + 64 {
            clock.compact();
        }
        clock.ring.push_back(key);
        clock.weight += weight_blocks;
        (true, out)
    }

    /// Marks a kept body as hit, so the hand leaves it.
    pub fn touch(&self, key: u64) {
        if let Some(r) = self.clock.lock().residents.get_mut(&key) {
            r.used = true;
        }
    }

    pub fn remove(&self, key: u64) {
        let mut clock = self.clock.lock();
        if let Some(r) = clock.residents.remove(&key) {
            clock.weight -= usize::from(r.weight);
        }
        // Its place in the ring goes when the hand reaches it, or when
        // the ring is compacted.
    }

    /// Logs a refused lock once, with what to change.
    pub fn refused(&self, error: &std::io::Error) {
        if !self.refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %error,
                "could not lock a checked disk-cache body in RAM; such bodies are checked on every hit. \
                 Raise RLIMIT_MEMLOCK to [cache] locked_size (systemd: LimitMEMLOCK=) or set locked_size = 0"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::disk::tests::{record, tier};
    use super::super::disk::{Body, DiskTier, Loaded};
    use super::super::object::BodyCheck;
    use super::*;
    use bytes::Bytes;

    const LEN: usize = 300_000;

    fn body(seed: u8) -> Vec<u8> {
        (0..LEN as u32).map(|i| (i % 241) as u8 ^ seed).collect()
    }

    /// Stores `body` under key `[n; 16]`; returns the key and its hex.
    async fn store(tier: &Arc<DiskTier>, n: u8, body: &[u8]) -> (u64, MetaRecord) {
        let hash = [n; 16];
        let key = super::super::tier_key(&hash);
        let rec = record(hash, body, BodyCheck::of(body));
        let bytes = vec![Bytes::copy_from_slice(body)];
        tier.store(key, rec.clone(), bytes).await.expect("stored");
        (key, rec)
    }

    /// Loads and keeps what can be kept; returns the bytes served.
    async fn hit(tier: &DiskTier, key: u64, rec: &MetaRecord) -> (Vec<u8>, &'static str) {
        match tier.load(key, &rec.hash_hex).await.expect("loads") {
            Some(Loaded::Kept(kept)) => (kept.body.as_slice().to_vec(), "kept"),
            Some(Loaded::Checked {
                record,
                body,
                ticket,
            }) => {
                if let (Some(ticket), Body::Mapped(mapped)) = (ticket, &body) {
                    assert!(tier.keep(key, ticket, kept(record, mapped.clone())));
                }
                (body.as_slice().to_vec(), "checked")
            }
            None => (Vec::new(), "miss"),
        }
    }

    fn kept(record: MetaRecord, body: Arc<MappedBody>) -> Kept {
        let header = ResponseHeader::build(200, None).expect("a header");
        Kept {
            record,
            header,
            body,
        }
    }

    fn locked_bytes(tier: &DiskTier) -> i64 {
        tier.metrics_for_tests()
            .cache_bytes
            .with_label_values(&["locked"])
            .get()
    }

    /// The second hit reads nothing (no io_uring submission) and serves the
    /// locked body; a purge unlocks it; a restart forgets what was kept,
    /// so a body rotted on disk meanwhile is caught by its check.
    #[tokio::test]
    async fn a_checked_body_is_kept_locked_and_its_next_hit_reads_nothing() {
        let (tier, dir) = tier("kept", 16 << 20);
        let want = body(0);
        let (key, rec) = store(&tier, 1, &want).await;
        assert_eq!(hit(&tier, key, &rec).await, (want.clone(), "checked"));
        assert_eq!(locked_bytes(&tier), LEN as i64);
        let submissions = tier.metrics_for_tests().uring_submissions.get();
        assert_eq!(hit(&tier, key, &rec).await, (want.clone(), "kept"));
        assert_eq!(
            tier.metrics_for_tests().uring_submissions.get(),
            submissions
        );
        // Another key sharing the 64-bit tier key is not given this body.
        let other = hex::encode([0xee; 16]);
        assert!(matches!(
            tier.load(key, &other).await,
            Err(super::super::disk::LoadError::Corrupt(
                super::super::object::CorruptObject::WrongKey
            ))
        ));

        assert!(tier.remove(key, &rec.hash_hex).await);
        assert_eq!(locked_bytes(&tier), 0, "a purge unlocks the body");
        assert_eq!(hit(&tier, key, &rec).await.1, "miss");

        let (key, rec) = store(&tier, 1, &want).await;
        assert_eq!(hit(&tier, key, &rec).await.1, "checked");
        let (_, body_path) = tier.paths(&rec.hash_hex);
        drop(tier);
        let mut bad = want.clone();
        bad[LEN / 2] ^= 1;
        std::fs::write(&body_path, &bad).unwrap();
        let metrics: &'static crate::metrics::Metrics =
            Box::leak(Box::new(crate::metrics::Metrics::new()));
        let tier = DiskTier::open(&dir, 64 << 20, 16 << 20, metrics).expect("io_uring");
        assert!(matches!(
            tier.load(key, &rec.hash_hex).await,
            Err(super::super::disk::LoadError::Corrupt(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A load whose object was purged, stored anew or revalidated while it
    /// read cannot keep what it read: the next hit reads the object again.
    #[tokio::test]
    async fn a_load_raced_by_a_purge_a_store_or_a_revalidation_keeps_nothing() {
        let (tier, dir) = tier("race", 16 << 20);
        let (key, rec) = store(&tier, 2, &body(0)).await;
        let ticket = |loaded: Option<Loaded>| match loaded {
            Some(Loaded::Checked {
                record,
                body: Body::Mapped(m),
                ticket: Some(t),
            }) => (t, kept(record, m)),
            _ => panic!("a lockable checked body"),
        };

        let (t, k) = ticket(tier.load(key, &rec.hash_hex).await.unwrap());
        tier.remove(key, &rec.hash_hex).await;
        assert!(!tier.keep(key, t, k), "purged meanwhile");

        let (key, rec) = store(&tier, 2, &body(0)).await;
        let (t, k) = ticket(tier.load(key, &rec.hash_hex).await.unwrap());
        let (key, rec) = store(&tier, 2, &body(7)).await;
        assert!(!tier.keep(key, t, k), "stored anew meanwhile");
        assert_eq!(hit(&tier, key, &rec).await, (body(7), "checked"));

        let (key, rec) = store(&tier, 3, &body(0)).await;
        let (t, k) = ticket(tier.load(key, &rec.hash_hex).await.unwrap());
        let updated = tier
            .update_meta(key, &rec.hash_hex, (vec![9], vec![9]))
            .await;
        assert!(updated.unwrap());
        assert!(!tier.keep(key, t, k), "revalidated meanwhile");
        assert_eq!(hit(&tier, key, &rec).await.1, "checked");
        // Kept, then revalidated: the kept body goes with the old record.
        assert_eq!(hit(&tier, key, &rec).await.1, "kept");
        tier.update_meta(key, &rec.hash_hex, (vec![8], vec![8]))
            .await
            .unwrap();
        assert_eq!(hit(&tier, key, &rec).await.1, "checked");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two bodies, room to lock one: what stays locked is within budget,
    /// and the body not kept is still served, checked on each hit.
    #[tokio::test]
    async fn what_stays_locked_is_within_the_budget() {
        let budget = 512 << 10;
        let (tier, dir) = tier("budget", budget);
        let (a, rec_a) = store(&tier, 4, &body(1)).await;
        let (b, rec_b) = store(&tier, 5, &body(2)).await;
        let mut kept_hits = 0;
        for _ in 0..4 {
            for (key, rec, want) in [(a, &rec_a, body(1)), (b, &rec_b, body(2))] {
                let (got, how) = hit(&tier, key, rec).await;
                assert_eq!(got, want);
                kept_hits += usize::from(how == "kept");
                assert!(locked_bytes(&tier) <= budget as i64);
            }
        }
        assert!(kept_hits >= 3, "one of the two stays kept: {kept_hits}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_used_resident_stays_and_an_unused_one_makes_room() {
        assert!(LockedSet::new(0).is_none());
        assert!(LockedSet::new(4095).is_none());
        let set = LockedSet::new(4 * 4096).unwrap();
        assert_eq!(set.admit(1, 3), (true, vec![]));
        assert_eq!(set.admit(1, 3), (true, vec![]), "already in");
        assert_eq!(set.admit(9, 5), (false, vec![]), "larger than the budget");
        // 1 is hit: 2 is refused, and refused again while 1 is hit.
        set.touch(1);
        assert_eq!(set.admit(2, 3), (false, vec![]));
        set.touch(1);
        assert_eq!(set.admit(2, 3), (false, vec![]));
        // 1 not hit since the hand passed: it makes room for 2.
        assert_eq!(set.admit(2, 3), (true, vec![1]));
        // A removed resident's blocks are free again.
        set.remove(2);
        assert_eq!(set.admit(3, 4), (true, vec![]));
        // Removed residents' places do not pile up in a set that never
        // fills (the hand never moves there).
        let roomy = LockedSet::new(100 * 4096).unwrap();
        assert_eq!(roomy.admit(1, 1), (true, vec![]));
        for key in 100..10_000 {
            assert_eq!(roomy.admit(key, 1), (true, vec![]));
            roomy.remove(key);
        }
        assert!(roomy.clock.lock().ring.len() <= 2 * 2 + 64 + 1);
        assert_eq!(roomy.admit(1, 1), (true, vec![]), "the resident stays");
    }
}
