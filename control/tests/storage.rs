//! Proof of storage played against every cheater, deterministically: real
//! sealed, erasure-coded shards; block hashes from a counter; time passed in.

use meshcast_control::storage::{answer, challenge, judge, Held, Verdict, SLICES_PER_SHARD};
use meshcast_shards::{encode, outboard, seal, ContentKey, Layout, CHUNK};

struct Stored {
    held: Held,
    data: Vec<u8>,
    tree: Vec<u8>,
}

/// The six shards of one 256 KiB object (k = 4, m = 2: 64 KiB each).
fn shards(name: &str) -> Vec<Stored> {
    let plain: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sealed = seal(&ContentKey::random(), name, &plain);
    encode(Layout::new(4, 2).unwrap(), &sealed)
        .into_iter()
        .enumerate()
        .map(|(i, data)| {
            let (tree, root) = outboard(&data);
            Stored {
                held: Held {
                    shard: format!("{name}/{i}"),
                    len: data.len() as u64,
                    root,
                },
                data,
                tree,
            }
        })
        .collect()
}

fn block(n: u64) -> [u8; 32] {
    *blake3::hash(&n.to_le_bytes()).as_bytes()
}

const NOW: u64 = 1_000_000;

fn audit(node: &str, stored: &[Stored], n: u64) -> Verdict {
    let held: Vec<Held> = stored.iter().map(|s| s.held.clone()).collect();
    let c = challenge(node, block(n), &held, NOW + 5_000);
    let a = answer(&c, |name| {
        stored
            .iter()
            .find(|s| s.held.shard == name)
            .map(|s| (s.data.as_slice(), s.tree.as_slice()))
    });
    judge(&c, &held, &a, NOW + 1_000)
}

#[test]
fn the_slice_count_meets_the_bound_and_one_fewer_would_not() {
    let miss = |s: usize| 0.9f64.powi((s * 20) as i32);
    assert!(miss(SLICES_PER_SHARD) <= 1e-6, "{}", miss(SLICES_PER_SHARD));
    assert!(miss(SLICES_PER_SHARD - 1) > 1e-6);
}

#[test]
fn an_honest_node_is_never_flagged() {
    let stored: Vec<Stored> = ["v1/seg1", "v1/seg2"]
        .iter()
        .flat_map(|n| shards(n))
        .collect();
    for n in 0..200 {
        assert_eq!(audit("honest", &stored, n), Verdict::Passed, "block {n}");
    }
}

/// Spoils a tenth of a shard's chunks, each of the three ways a node
/// could: drop its tail, zero every tenth chunk, flip a byte in a tenth
/// of the chunks chosen at random.
fn spoil(s: &mut Stored, how: usize, seed: u64) {
    let chunks = s.data.len() / CHUNK as usize;
    let tenth = chunks.div_ceil(10);
    match how {
        0 => s.data.truncate((chunks - tenth) * CHUNK as usize),
        1 => {
            for c in (0..chunks).step_by(10) {
                s.data[c * CHUNK as usize..(c + 1) * CHUNK as usize].fill(0);
            }
        }
        _ => {
            let mut order: Vec<usize> = (0..chunks).collect();
            order.sort_by_key(|c| {
                blake3::hash(&[seed.to_le_bytes(), (*c as u64).to_le_bytes()].concat()).as_bytes()
                    [0..8]
                    .to_vec()
            });
            for c in &order[..tenth] {
                s.data[c * CHUNK as usize + 17] ^= 0x01;
            }
        }
    }
}

#[test]
fn a_node_that_lost_a_tenth_of_a_shard_is_caught_within_twenty_audits() {
    for trial in 0..150u64 {
        let mut stored = shards("v2/seg1");
        spoil(
            &mut stored[(trial % 6) as usize],
            (trial % 3) as usize,
            trial,
        );
        let caught = (0..20).find(|a| audit("cheat", &stored, trial * 100 + a) != Verdict::Passed);
        assert!(caught.is_some(), "trial {trial} escaped twenty audits");
    }
}

#[test]
fn a_flipped_byte_fails_every_audit_that_asks_for_its_chunk() {
    let mut stored = shards("v3/seg1");
    stored[2].data[5 * CHUNK as usize + 3] ^= 0x80;
    let held: Vec<Held> = stored.iter().map(|s| s.held.clone()).collect();
    let mut asked = 0;
    for n in 0..300 {
        let c = challenge("flip", block(n), &held, NOW + 5_000);
        let asks = c.asked[2].1.contains(&5);
        let verdict = audit("flip", &stored, n);
        if asks {
            asked += 1;
            assert_eq!(verdict, Verdict::Failed(vec![(held[2].shard.clone(), 5)]));
        } else {
            assert_eq!(verdict, Verdict::Passed);
        }
    }
    assert!(asked > 0, "300 audits never drew chunk 5");
}

#[test]
fn late_swapped_and_replayed_answers_fail() {
    let stored = shards("v4/seg1");
    let held: Vec<Held> = stored.iter().map(|s| s.held.clone()).collect();
    let read = |name: &str| {
        stored
            .iter()
            .find(|s| s.held.shard == name)
            .map(|s| (s.data.as_slice(), s.tree.as_slice()))
    };
    let c = challenge("n", block(1), &held, NOW + 5_000);
    let good = answer(&c, read);
    assert_eq!(judge(&c, &held, &good, NOW + 5_000), Verdict::Passed);
    assert_eq!(judge(&c, &held, &good, NOW + 5_001), Verdict::Late);
    // Shard 1's slices offered as shard 0's.
    let mut swapped = good.clone();
    for s in &mut swapped.slices {
        if s.shard == held[0].shard {
            let chunk = s.chunk;
            s.bytes =
                meshcast_shards::extract(&stored[1].data, &stored[1].tree, chunk * CHUNK, CHUNK)
                    .unwrap();
        }
    }
    assert!(
        matches!(judge(&c, &held, &swapped, NOW), Verdict::Failed(f) if f.len() == SLICES_PER_SHARD)
    );
    // Yesterday's answer to today's challenge.
    let today = challenge("n", block(2), &held, NOW + 5_000);
    assert!(matches!(
        judge(&today, &held, &good, NOW),
        Verdict::Failed(_)
    ));
    // Another node's answer.
    let theirs = answer(&challenge("m", block(1), &held, NOW + 5_000), read);
    assert!(matches!(judge(&c, &held, &theirs, NOW), Verdict::Failed(_)));
    // Nothing at all.
    let empty = answer(&c, |_| None::<(&[u8], &[u8])>);
    assert!(
        matches!(judge(&c, &held, &empty, NOW), Verdict::Failed(f) if f.len() == 6 * SLICES_PER_SHARD)
    );
}
