//! Which committed entries a prover must reveal: indices drawn from a Merlin
//! transcript over the claim itself (Fiat–Shamir), so they are fixed once
//! the prover has committed and cannot be chosen by it.
//!
//! Sample size: if a fraction `f` of a claim's entries is fabricated, each
//! uniformly drawn index misses all of them with probability `1 − f`, so `k`
//! independent draws all miss with probability `(1 − f)^k`. Requiring that
//! to be at most `p` gives `k = ⌈ln p / ln(1 − f)⌉`; for `f = 1 %` and
//! `p = 10⁻⁹`, `k = 2062`. Draws are with replacement (the bound holds as
//! stated); a claim with no more entries than `k` is checked in full.

use merlin::Transcript;

/// `⌈ln p / ln(1 − f)⌉` draws catch a fabricated fraction `f` with
/// probability at least `1 − p`.
pub fn sample_size(fraction: f64, miss_probability: f64) -> usize {
    assert!(fraction > 0.0 && fraction < 1.0, "fraction in (0, 1)");
    assert!(
        miss_probability > 0.0 && miss_probability < 1.0,
        "probability in (0, 1)"
    );
    (miss_probability.ln() / (1.0 - fraction).ln()).ceil() as usize
}

/// Indices to reveal for a claim of `count` entries, derived from `claim`
/// (its canonical bytes: root, count, totals, epoch, node id).
pub fn challenge_indices(claim: &[u8], count: usize, k: usize) -> Vec<usize> {
    if count <= k {
        return (0..count).collect();
    }
    let mut t = Transcript::new(b"meshcast delivery audit v1");
    t.append_message(b"claim", claim);
    (0..k)
        .map(|_| draw_below(&mut t, b"index", count as u64) as usize)
        .collect()
}

/// A value below `n` (> 0) drawn from the transcript, every one equally
/// likely (rejection sampling).
pub fn draw_below(t: &mut Transcript, label: &'static [u8], n: u64) -> u64 {
    assert!(n > 0, "a draw from nothing");
    let zone = u64::MAX - (u64::MAX % n);
    let mut buf = [0u8; 8];
    loop {
        t.challenge_bytes(label, &mut buf);
        let x = u64::from_le_bytes(buf);
        if x < zone {
            return x % n;
        }
    }
}

/// `k` distinct values below `n`, ascending; all of them when `k ≥ n`.
pub fn draw_distinct(t: &mut Transcript, label: &'static [u8], n: u64, k: usize) -> Vec<u64> {
    if k as u64 >= n {
        return (0..n).collect();
    }
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < k {
        picked.insert(draw_below(t, label, n));
    }
    picked.into_iter().collect()
}

/// The full challenge for a delivery claim: `k` entries drawn uniformly
/// (catches fabricated *entries*) and `k` drawn in proportion to their bytes
/// (catches a few entries carrying fabricated *bytes*: each draw lands in
/// an inflated share `g` of the claimed bytes with probability `g`, so the
/// same bound holds for bytes). Sorted, without repeats.
pub fn delivery_challenge(transcript_input: &[u8], sizes: &[u64], k: usize) -> Vec<usize> {
    let n = sizes.len();
    if n <= k {
        return (0..n).collect();
    }
    let mut out = challenge_indices(transcript_input, n, k);
    let mut prefix = Vec::with_capacity(n);
    let mut total = 0u64;
    for s in sizes {
        total = total.saturating_add(*s);
        prefix.push(total);
    }
    if total > 0 {
        let mut t = Transcript::new(b"meshcast delivery audit bytes v1");
        t.append_message(b"claim", transcript_input);
        let zone = u64::MAX - (u64::MAX % total);
        let mut buf = [0u8; 8];
        let mut drawn = 0;
        while drawn < k {
            t.challenge_bytes(b"offset", &mut buf);
            let x = u64::from_le_bytes(buf);
            if x >= zone {
                continue;
            }
            let offset = x % total;
            // First entry whose cumulative end is past `offset`.
            out.push(prefix.partition_point(|end| *end <= offset));
            drawn += 1;
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_sample_size() {
        assert_eq!(sample_size(0.01, 1e-9), 2062);
        let k = sample_size(0.01, 1e-9);
        assert!(0.99f64.powi(k as i32) <= 1e-9);
        assert!(0.99f64.powi(k as i32 - 1) > 1e-9);
    }

    #[test]
    fn byte_weighted_draws_find_one_inflated_entry() {
        // 10 000 entries of 1 KB and one claiming as many bytes as all of them.
        let mut sizes = vec![1000u64; 10_000];
        sizes[4321] = 10_000_000;
        let picked = delivery_challenge(b"claim", &sizes, sample_size(0.01, 1e-9));
        assert!(picked.contains(&4321));
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(delivery_challenge(b"c", &[5, 6], 10), vec![0, 1]);
    }

    #[test]
    fn indices_are_fixed_by_the_claim() {
        let a = challenge_indices(b"claim A", 100_000, 50);
        assert_eq!(a, challenge_indices(b"claim A", 100_000, 50));
        assert_ne!(a, challenge_indices(b"claim B", 100_000, 50));
        assert!(a.iter().all(|i| *i < 100_000));
        assert_eq!(challenge_indices(b"x", 10, 50), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn five_percent_fabricated_is_always_caught() {
        let k = sample_size(0.01, 1e-9);
        for claim in 0..100u32 {
            let count = 50_000;
            // Entries whose index is ≡ 0 mod 20 are the fabricated 5 %.
            let hits = challenge_indices(&claim.to_le_bytes(), count, k)
                .iter()
                .filter(|i| *i % 20 == 0)
                .count();
            assert!(hits > 0, "claim {claim} escaped");
        }
    }
}
