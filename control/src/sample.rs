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
    let n = count as u64;
    // Rejection sampling keeps every index equally likely.
    let zone = u64::MAX - (u64::MAX % n);
    let mut out = Vec::with_capacity(k);
    let mut buf = [0u8; 8];
    while out.len() < k {
        t.challenge_bytes(b"index", &mut buf);
        let x = u64::from_le_bytes(buf);
        if x < zone {
            out.push((x % n) as usize);
        }
    }
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
