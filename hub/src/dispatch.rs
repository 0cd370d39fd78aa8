//! The job board of distributed transcoding, sans-IO: which chunk of which
//! video is waiting, leased to which worker until when, being checked, or
//! done, and by whom. Time comes in as Unix seconds, so leases, expiry and
//! late results are tested exactly.
//!
//! Rules: a lease names one worker and one attempt; every new lease of a
//! chunk is a new attempt, so a result for an older attempt is late and
//! refused. A lease runs out `lease_secs` after it was granted or last
//! renewed by progress; the chunk then waits again. A worker whose result
//! failed its check never gets that chunk again. A chunk is done once, and
//! paid once.

use serde::Serialize;
use std::collections::BTreeSet;

/// The HUB itself, as a lease holder of last resort.
pub const HUB: &str = "hub";

/// After this many failed checks a chunk is the HUB's to encode: workers
/// that keep failing it (or a source the check cannot judge) must not
/// hold a video back for ever.
pub const HUB_AFTER_FAILURES: u32 = 2;

/// Who holds a chunk now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ChunkState {
    Waiting,
    Leased {
        worker: String,
        expires: u64,
        #[serde(skip)]
        capability: String,
        progress: f64,
    },
    /// The worker committed; the HUB is checking its output.
    Checking {
        worker: String,
    },
    Done {
        worker: String,
    },
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub attempt: u32,
    pub worker: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkWork {
    pub index: u32,
    /// Seconds of the video this chunk covers.
    pub seconds: f64,
    pub attempt: u32,
    #[serde(flatten)]
    pub state: ChunkState,
    pub history: Vec<Attempt>,
    #[serde(skip)]
    excluded: BTreeSet<String>,
    /// Attempts whose result failed its check.
    #[serde(skip)]
    failures: u32,
}

impl ChunkWork {
    /// Whether `worker` may lease this chunk now.
    fn open_to(&self, worker: &str) -> bool {
        self.state == ChunkState::Waiting
            && !self.excluded.contains(worker)
            && (worker == HUB || self.failures < HUB_AFTER_FAILURES)
    }
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub video: String,
    pub chunk: u32,
    pub attempt: u32,
    pub expires: u64,
    pub capability: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LeaseError {
    #[error("no such job: video {0} chunk {1}")]
    Unknown(String, u32),
    #[error("late: chunk {chunk} is on attempt {current}, not {got} (its lease ran out and it was given again)")]
    Stale { chunk: u32, current: u32, got: u32 },
    #[error("chunk {0} is not leased to this worker")]
    NotYours(u32),
    #[error("the lease on chunk {0} ran out; the result is refused")]
    Expired(u32),
}

#[derive(Debug, Default)]
pub struct Board {
    /// Videos in the order they were added (oldest first).
    videos: Vec<(String, Vec<ChunkWork>)>,
}

impl Board {
    /// Puts a video's chunks on the board (`seconds` per chunk).
    pub fn add(&mut self, video: &str, seconds: &[f64]) {
        let chunks = seconds
            .iter()
            .enumerate()
            .map(|(i, s)| ChunkWork {
                index: i as u32,
                seconds: *s,
                attempt: 0,
                state: ChunkState::Waiting,
                history: Vec::new(),
                excluded: BTreeSet::new(),
                failures: 0,
            })
            .collect();
        self.videos.push((video.to_string(), chunks));
    }

    pub fn remove(&mut self, video: &str) -> Option<Vec<ChunkWork>> {
        let at = self.videos.iter().position(|(v, _)| v == video)?;
        Some(self.videos.remove(at).1)
    }

    pub fn chunks(&self, video: &str) -> Option<&Vec<ChunkWork>> {
        self.videos.iter().find(|(v, _)| v == video).map(|(_, c)| c)
    }

    fn chunk_mut(&mut self, video: &str, chunk: u32) -> Result<&mut ChunkWork, LeaseError> {
        self.videos
            .iter_mut()
            .find(|(v, _)| v == video)
            .and_then(|(_, c)| c.get_mut(chunk as usize))
            .ok_or_else(|| LeaseError::Unknown(video.to_string(), chunk))
    }

    /// Returns run-out leases to the board; says which.
    pub fn expire(&mut self, now: u64) -> Vec<(String, u32, String)> {
        let mut out = Vec::new();
        for (video, chunks) in self.videos.iter_mut() {
            for c in chunks.iter_mut() {
                if let ChunkState::Leased {
                    worker, expires, ..
                } = &c.state
                {
                    if *expires <= now {
                        out.push((video.clone(), c.index, worker.clone()));
                        c.history.push(Attempt {
                            attempt: c.attempt,
                            worker: worker.clone(),
                            outcome: "lease ran out".into(),
                        });
                        c.state = ChunkState::Waiting;
                    }
                }
            }
        }
        out
    }

    /// The oldest waiting chunk `worker` may take, leased to it until
    /// `now + lease_secs`.
    pub fn lease(
        &mut self,
        worker: &str,
        now: u64,
        lease_secs: u64,
        capability: impl FnOnce() -> String,
    ) -> Option<Lease> {
        self.lease_in(None, worker, now, lease_secs, capability)
    }

    /// `lease`, of `only`'s chunks when given.
    pub fn lease_in(
        &mut self,
        only: Option<&str>,
        worker: &str,
        now: u64,
        lease_secs: u64,
        capability: impl FnOnce() -> String,
    ) -> Option<Lease> {
        self.expire(now);
        for (video, chunks) in self.videos.iter_mut() {
            if only.is_some_and(|o| o != video) {
                continue;
            }
            let Some(c) = chunks.iter_mut().find(|c| c.open_to(worker)) else {
                continue;
            };
            c.attempt += 1;
            let capability = capability();
            c.state = ChunkState::Leased {
                worker: worker.to_string(),
                expires: now + lease_secs,
                capability: capability.clone(),
                progress: 0.0,
            };
            return Some(Lease {
                video: video.clone(),
                chunk: c.index,
                attempt: c.attempt,
                expires: now + lease_secs,
                capability,
            });
        }
        None
    }

    /// Whether `worker` holds `attempt` of the chunk now.
    pub fn check_lease(
        &mut self,
        video: &str,
        chunk: u32,
        attempt: u32,
        worker: &str,
        now: u64,
    ) -> Result<(), LeaseError> {
        self.expire(now);
        let c = self.chunk_mut(video, chunk)?;
        if c.attempt != attempt {
            return Err(LeaseError::Stale {
                chunk,
                current: c.attempt,
                got: attempt,
            });
        }
        match &c.state {
            ChunkState::Leased { worker: w, .. } if w == worker => Ok(()),
            ChunkState::Waiting => Err(LeaseError::Expired(chunk)),
            _ => Err(LeaseError::NotYours(chunk)),
        }
    }

    /// Whether `capability` opens `attempt` of the chunk (source download,
    /// output upload) while it is leased.
    pub fn authorizes(&self, video: &str, chunk: u32, attempt: u32, capability: &str) -> bool {
        let Some(c) = self.chunks(video).and_then(|c| c.get(chunk as usize)) else {
            return false;
        };
        matches!(&c.state, ChunkState::Leased { capability: cap, .. }
            if c.attempt == attempt && !cap.is_empty()
                && constant_time_eq(cap.as_bytes(), capability.as_bytes()))
    }

    /// Progress from the lease holder; renews the lease.
    pub fn progress(
        &mut self,
        (video, chunk, attempt): (&str, u32, u32),
        worker: &str,
        fraction: f64,
        now: u64,
        lease_secs: u64,
    ) -> Result<(), LeaseError> {
        self.check_lease(video, chunk, attempt, worker, now)?;
        if let ChunkState::Leased {
            expires, progress, ..
        } = &mut self.chunk_mut(video, chunk)?.state
        {
            *expires = now + lease_secs;
            *progress = fraction.clamp(0.0, 1.0);
        }
        Ok(())
    }

    /// The lease holder committed: its lease stops running out while the
    /// HUB checks.
    pub fn begin_check(
        &mut self,
        (video, chunk, attempt): (&str, u32, u32),
        worker: &str,
        now: u64,
    ) -> Result<(), LeaseError> {
        self.check_lease(video, chunk, attempt, worker, now)?;
        self.chunk_mut(video, chunk)?.state = ChunkState::Checking {
            worker: worker.to_string(),
        };
        Ok(())
    }

    /// The check's verdict: done, or waiting again for another worker.
    pub fn finish(&mut self, video: &str, chunk: u32, passed: bool, outcome: &str) {
        let Ok(c) = self.chunk_mut(video, chunk) else {
            return;
        };
        let ChunkState::Checking { worker } = c.state.clone() else {
            return;
        };
        c.history.push(Attempt {
            attempt: c.attempt,
            worker: worker.clone(),
            outcome: outcome.to_string(),
        });
        if passed {
            c.state = ChunkState::Done { worker };
        } else {
            c.excluded.insert(worker);
            c.failures += 1;
            c.state = ChunkState::Waiting;
        }
    }

    /// Whether a chunk of `video` waits that only the HUB may take now.
    pub fn needs_hub(&self, video: &str) -> bool {
        self.chunks(video).is_some_and(|c| {
            c.iter()
                .any(|c| c.open_to(HUB) && c.failures >= HUB_AFTER_FAILURES)
        })
    }

    pub fn is_done(&self, video: &str) -> bool {
        self.chunks(video)
            .is_some_and(|c| c.iter().all(|c| matches!(c.state, ChunkState::Done { .. })))
    }

    /// Share of the video's seconds done, counting progress of leases.
    pub fn fraction_done(&self, video: &str) -> f64 {
        let Some(chunks) = self.chunks(video) else {
            return 0.0;
        };
        let total: f64 = chunks.iter().map(|c| c.seconds).sum();
        let done: f64 = chunks
            .iter()
            .map(|c| match &c.state {
                ChunkState::Done { .. } | ChunkState::Checking { .. } => c.seconds,
                ChunkState::Leased { progress, .. } => c.seconds * progress,
                ChunkState::Waiting => 0.0,
            })
            .sum();
        if total > 0.0 {
            done / total
        } else {
            0.0
        }
    }

    /// Every video's chunks, oldest video first.
    pub fn all(&self) -> impl Iterator<Item = (&str, &Vec<ChunkWork>)> {
        self.videos.iter().map(|(v, c)| (v.as_str(), c))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(s: &'static str) -> impl FnOnce() -> String {
        move || s.to_string()
    }

    #[test]
    fn two_workers_share_a_video_and_a_silent_one_loses_its_chunk() {
        let mut b = Board::default();
        b.add("v", &[8.0, 8.0, 4.0]);
        let a = b.lease("A", 100, 30, cap("ca")).unwrap();
        let c = b.lease("B", 100, 30, cap("cb")).unwrap();
        assert_eq!((a.chunk, a.attempt, c.chunk), (0, 1, 1));
        assert!(b.authorizes("v", 0, 1, "ca") && !b.authorizes("v", 0, 1, "cb"));
        // A reports progress (renewing to 140); B goes silent.
        b.progress(("v", 0, 1), "A", 0.5, 110, 30).unwrap();
        assert!((b.fraction_done("v") - 4.0 / 20.0).abs() < 1e-9);
        assert_eq!(b.expire(129), vec![]);
        assert_eq!(b.expire(130), vec![("v".into(), 1, "B".into())]);
        // Chunk 2 first (older than nothing: both wait; the lowest index goes).
        let again = b.lease("C", 131, 30, cap("cc")).unwrap();
        assert_eq!(
            (again.chunk, again.attempt),
            (1, 2),
            "the silent worker's chunk, a new attempt"
        );
        // B's late result is refused however it comes.
        assert_eq!(
            b.begin_check(("v", 1, 1), "B", 132),
            Err(LeaseError::Stale {
                chunk: 1,
                current: 2,
                got: 1
            })
        );
        assert!(!b.authorizes("v", 1, 1, "cb"), "its capability is dead too");
        b.begin_check(("v", 1, 2), "C", 133).unwrap();
        b.finish("v", 1, true, "passed");
        assert_eq!(
            b.begin_check(("v", 0, 1), "C", 134),
            Err(LeaseError::NotYours(0))
        );
        b.begin_check(("v", 0, 1), "A", 135).unwrap();
        b.finish("v", 0, true, "passed");
        let last = b.lease("A", 136, 30, cap("x")).unwrap();
        b.begin_check(("v", last.chunk, 1), "A", 137).unwrap();
        b.finish("v", 2, true, "passed");
        assert!(b.is_done("v"));
        assert!(b.lease("A", 138, 30, cap("y")).is_none(), "nothing left");
        let history = &b.chunks("v").unwrap()[1].history;
        assert_eq!(history[0].outcome, "lease ran out");
        assert_eq!(history[1].worker, "C");
    }

    #[test]
    fn a_failed_check_gives_the_chunk_to_someone_else_and_never_back() {
        let mut b = Board::default();
        b.add("v", &[4.0]);
        b.lease("cheat", 0, 30, cap("c1")).unwrap();
        b.begin_check(("v", 0, 1), "cheat", 1).unwrap();
        assert_eq!(
            b.expire(1_000),
            vec![],
            "a chunk being checked does not run out"
        );
        b.finish("v", 0, false, "SSIM below the reference");
        assert!(!b.is_done("v"));
        assert!(
            b.lease("cheat", 1_001, 30, cap("c2")).is_none(),
            "not for the cheater again"
        );
        let l = b.lease("honest", 1_001, 30, cap("c3")).unwrap();
        assert_eq!(l.attempt, 2);
        // A result after the lease ran out is refused, not taken.
        assert_eq!(
            b.begin_check(("v", 0, 2), "honest", 1_031),
            Err(LeaseError::Expired(0))
        );
    }

    #[test]
    fn older_videos_go_first() {
        let mut b = Board::default();
        b.add("first", &[4.0]);
        b.add("second", &[4.0, 4.0]);
        let only = b.lease_in(Some("second"), "A", 0, 30, cap("s")).unwrap();
        assert_eq!((only.video.as_str(), only.chunk), ("second", 0));
        assert_eq!(b.lease("A", 0, 30, cap("a")).unwrap().video, "first");
        let next = b.lease("A", 0, 30, cap("b")).unwrap();
        assert_eq!((next.video.as_str(), next.chunk), ("second", 1));
        assert!(b.remove("first").is_some() && b.chunks("first").is_none());
    }
}
