//! Proof of transcoding, the protocol side: what a worker commits to for a
//! chunk (every output segment's rung, number, duration and BLAKE3 hash
//! under one Merkle root), which segments the HUB then checks (drawn from
//! a Merlin transcript over the commitment and a nonce the HUB picks after
//! it holds the commitment), and how many.
//!
//! Sample size, without replacement: a chunk of `n` segments of which a
//! cheater replaced `b = ⌈f·n⌉` escapes `k` draws with probability
//! `C(n−b, k) / C(n, k) = Π_{j<k} (n−b−j)/(n−j)`; the HUB draws the
//! smallest `k` that makes this at most `p`. For `f = 5 %` and `p = 10⁻³`
//! that is 135 draws for a chunk of 100 000 segments (the with-replacement
//! bound `⌈ln p / ln(1−f)⌉`), fewer for smaller chunks, and every segment
//! of a chunk of up to 20 (where one replaced segment is already 5 %
//! and must not escape: `k = n`).

//!
//! Within a checked segment the HUB compares `FRAMES_PER_SEGMENT` frames,
//! drawn from a transcript over the same root and nonce and the segment's
//! index (so anyone holding the evidence can redraw them). A segment
//! replaced whole fails on any frame. A cheater who spoils a share `q` of
//! the frames inside segments escapes `s` checked segments with
//! probability about `(1 − q)^(2s)`: for a chunk of 32 segments (31
//! checked) 10⁻³ at `q` ≈ 10 %, and tighter as chunks grow.

use crate::merkle::Batch;
use merlin::Transcript;
use serde::{Deserialize, Serialize};

/// Envelope domains of the worker protocol.
pub const LEASE: &str = "meshcast-transcode-lease-v1";
pub const PROGRESS: &str = "meshcast-transcode-progress-v1";
pub const COMMIT: &str = "meshcast-transcode-commit-v1";

/// Share of a chunk's segments a cheater may replace, and the chance it
/// may escape with that, that the sample is sized for.
pub const CHEAT_FRACTION: f64 = 0.05;
pub const MISS_PROBABILITY: f64 = 1e-3;

/// One output segment as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    pub rung: String,
    /// Segment number in the rendition (the video's first is 1).
    pub number: u32,
    /// Duration in the rendition's timescale.
    pub ticks: u64,
    #[serde(with = "hex::serde")]
    pub hash: [u8; 32],
}

impl SegmentEntry {
    /// The leaf bytes: every field, length-prefixed.
    pub fn leaf(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.rung.len() + 48);
        b.extend_from_slice(&(self.rung.len() as u32).to_be_bytes());
        b.extend_from_slice(self.rung.as_bytes());
        b.extend_from_slice(&self.number.to_be_bytes());
        b.extend_from_slice(&self.ticks.to_be_bytes());
        b.extend_from_slice(&self.hash);
        b
    }
}

/// A worker's commitment to a chunk's output (the body of a `COMMIT`
/// envelope): which lease it answers and every segment it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    pub video: String,
    pub chunk: u32,
    /// The lease's attempt number: a result for an older attempt is late.
    pub attempt: u32,
    /// Init segment hash per rung (rung name, BLAKE3 hex).
    pub inits: Vec<(String, String)>,
    pub segments: Vec<SegmentEntry>,
    #[serde(with = "hex::serde")]
    pub root: [u8; 32],
}

impl Commitment {
    pub fn new(
        video: String,
        chunk: u32,
        attempt: u32,
        inits: Vec<(String, String)>,
        segments: Vec<SegmentEntry>,
    ) -> Commitment {
        let root = root(&segments);
        Commitment {
            video,
            chunk,
            attempt,
            inits,
            segments,
            root,
        }
    }

    /// Whether `root` is the Merkle root of `segments`.
    pub fn is_consistent(&self) -> bool {
        root(&self.segments) == self.root
    }
}

/// The Merkle root over segment entries, in order.
pub fn root(segments: &[SegmentEntry]) -> [u8; 32] {
    let leaves: Vec<Vec<u8>> = segments.iter().map(SegmentEntry::leaf).collect();
    Batch::new(&leaves).root()
}

/// Smallest `k` for which `k` draws without replacement from `n`, `⌈f·n⌉`
/// of them bad, all miss with probability at most `p`.
pub fn sample_size(n: usize, fraction: f64, miss_probability: f64) -> usize {
    let bad = ((fraction * n as f64).ceil() as usize).max(1).min(n);
    let mut escape = 1.0f64;
    for k in 0..n {
        // Probability the first k+1 draws all miss.
        escape *= (n - bad - k.min(n - bad)) as f64 / (n - k) as f64;
        if escape <= miss_probability {
            return k + 1;
        }
    }
    n
}

/// The transcript every draw of one check starts from: the commitment's
/// root and the HUB's nonce.
fn audit_transcript(root: &[u8; 32], nonce: &[u8; 32]) -> Transcript {
    let mut t = Transcript::new(b"meshcast transcode audit v1");
    t.append_message(b"root", root);
    t.append_message(b"nonce", nonce);
    t
}

/// The segments to check: `sample_size` distinct indices of `n`, sorted,
/// drawn from a transcript over the commitment's root and the HUB's nonce.
pub fn challenge(root: &[u8; 32], nonce: &[u8; 32], n: usize) -> Vec<usize> {
    let k = sample_size(n, CHEAT_FRACTION, MISS_PROBABILITY);
    if k >= n {
        return (0..n).collect();
    }
    let mut t = audit_transcript(root, nonce);
    t.append_u64(b"n", n as u64);
    crate::sample::draw_distinct(&mut t, b"index", n as u64, k)
        .into_iter()
        .map(|i| i as usize)
        .collect()
}

/// Frames compared in each checked segment.
pub const FRAMES_PER_SEGMENT: usize = 2;

/// The frames (ascending indices) to compare in the checked segment at
/// `index` of a commitment, which has `frames` frames: `FRAMES_PER_SEGMENT`
/// distinct ones drawn like the challenge, or all of a shorter segment.
pub fn frames_to_check(root: &[u8; 32], nonce: &[u8; 32], index: usize, frames: u32) -> Vec<u32> {
    let k = FRAMES_PER_SEGMENT;
    let mut t = audit_transcript(root, nonce);
    t.append_u64(b"segment", index as u64);
    crate::sample::draw_distinct(&mut t, b"frame", frames as u64, k)
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

/// A job the HUB leases to a worker: one chunk of one video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub video: String,
    pub chunk: u32,
    pub attempt: u32,
    /// Unix seconds the lease runs out; a result after it is refused.
    pub expires: u64,
    /// Where to fetch the chunk's cut and put the output, with the
    /// capability that authorises both (a bearer secret for this lease).
    pub source_path: String,
    pub upload_path: String,
    pub capability: String,
    /// Encode settings: the chunk's span and the ladder (opaque to this
    /// crate: the transcoder's own serialisation).
    pub spec: serde_json::Value,
}

/// A worker's progress on a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub video: String,
    pub chunk: u32,
    pub attempt: u32,
    pub fraction: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escape(n: usize, bad: usize, k: usize) -> f64 {
        (0..k)
            .map(|j| (n - bad).saturating_sub(j) as f64 / (n - j) as f64)
            .product()
    }

    #[test]
    fn the_documented_sample_sizes() {
        assert_eq!(sample_size(100_000, 0.05, 1e-3), 135);
        for n in 1..=20 {
            assert_eq!(
                sample_size(n, 0.05, 1e-3),
                n,
                "small chunks are checked whole"
            );
        }
        for n in [20, 45, 90, 300, 5_400] {
            let k = sample_size(n, 0.05, 1e-3);
            let bad = (0.05 * n as f64).ceil() as usize;
            assert!(escape(n, bad, k) <= 1e-3, "n={n} k={k}");
            assert!(
                k == 1 || escape(n, bad, k - 1) > 1e-3,
                "n={n}: {k} is the smallest"
            );
        }
        assert!(sample_size(90, 0.05, 1e-3) < 90);
    }

    #[test]
    fn the_challenge_is_fixed_by_the_commitment_and_the_nonce() {
        let seg = |i: u32| SegmentEntry {
            rung: "720p".into(),
            number: i,
            ticks: 51_200,
            hash: [i as u8; 32],
        };
        let c = Commitment::new("v".into(), 0, 1, vec![], (1..=400).map(seg).collect());
        assert!(c.is_consistent());
        let a = challenge(&c.root, &[1; 32], 400);
        assert_eq!(a, challenge(&c.root, &[1; 32], 400));
        assert_ne!(
            a,
            challenge(&c.root, &[2; 32], 400),
            "a fresh nonce, a fresh sample"
        );
        assert_eq!(a.len(), sample_size(400, 0.05, 1e-3));
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|i| *i < 400));
        let mut other = c.clone();
        other.segments[7].hash = [0xee; 32];
        assert!(!other.is_consistent(), "a changed entry breaks the root");
        assert_eq!(challenge(&c.root, &[1; 32], 6), (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn the_frames_checked_are_fixed_by_the_root_nonce_and_segment() {
        let (root, nonce) = ([3; 32], [4; 32]);
        let f = frames_to_check(&root, &nonce, 5, 100);
        assert_eq!(f.len(), FRAMES_PER_SEGMENT);
        assert!(f.windows(2).all(|w| w[0] < w[1]) && f.iter().all(|n| *n < 100));
        assert_eq!(f, frames_to_check(&root, &nonce, 5, 100), "redrawn alike");
        let draws: std::collections::BTreeSet<Vec<u32>> = (0..20)
            .map(|i| frames_to_check(&root, &nonce, i, 100))
            .chain((0..20).map(|b| frames_to_check(&root, &[b; 32], 5, 100)))
            .collect();
        assert!(draws.len() > 30, "other segments or nonces, other frames");
        assert_eq!(
            frames_to_check(&root, &nonce, 0, 1),
            vec![0],
            "a one-frame segment"
        );
        // Over many segments every frame position is drawn: none is safe.
        let mut seen = [false; 100];
        for i in 0..1000 {
            for n in frames_to_check(&root, &nonce, i, 100) {
                seen[n as usize] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn a_cheater_replacing_five_percent_is_caught_every_time_in_a_thousand_tries() {
        let n = 600;
        let mut escaped = 0;
        for trial in 0..1000u32 {
            let mut nonce = [0u8; 32];
            nonce[..4].copy_from_slice(&trial.to_le_bytes());
            // The replaced 5 %: every twentieth segment.
            if !challenge(&[9; 32], &nonce, n).iter().any(|i| i % 20 == 0) {
                escaped += 1;
            }
        }
        assert!(
            escaped <= 3,
            "{escaped} of 1000 escaped; the bound is 1 in 1000"
        );
    }
}
