//! One object through the whole path a segment takes: sealed, coded,
//! rooted, stored on six "nodes", two of them lost and one lying, read
//! back from the rest.

use meshcast_shards::*;

#[test]
fn an_object_survives_lost_and_lying_shards_and_no_shard_holds_plaintext() {
    let marker = b"MESHCAST-PLAINTEXT-MARKER";
    let plain: Vec<u8> = marker.iter().copied().cycle().take(2_000_000).collect();
    let key = ContentKey::random();
    let path = "vid/1080p/seg_00007.m4s";
    let layout = Layout::new(4, 2).unwrap();
    let shards = encode(layout, &seal(&key, path, &plain));
    let roots: Vec<Root> = shards.iter().map(|s| outboard(s).1).collect();
    for s in &shards {
        assert!(
            !s.windows(marker.len()).any(|w| w == marker),
            "a shard holds plaintext"
        );
    }
    // What the reader gets: shard 0 and 3 lost, shard 1 altered by its node.
    let mut got: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
    got[0] = None;
    got[3] = None;
    if let Some(s) = got[1].as_mut() {
        s[1000] ^= 1;
    }
    // The reader checks each against its root and keeps what verifies.
    let len = layout.shard_len(plain.len() + 40) as u64;
    let checked: Vec<Option<&[u8]>> = got
        .iter()
        .zip(&roots)
        .map(|(s, root)| {
            s.as_deref().filter(|s| {
                let (tree, _) = outboard(s);
                let slice = extract(s, &tree, 0, s.len() as u64).unwrap();
                verify(root, s.len() as u64, (0, s.len() as u64), &slice).is_ok()
            })
        })
        .collect();
    assert!(checked[1].is_none(), "the altered shard fails its root");
    assert_eq!(checked.iter().flatten().count(), 3);
    assert_eq!(decode(layout, &checked), Err(ShardError::TooFew(1, 4)));
    // With the lost parity shard found again, three data + one parity do.
    let mut enough = checked.clone();
    enough[3] = Some(&shards[3]);
    let sealed = decode(layout, &enough).unwrap();
    assert_eq!(open(&key, path, &sealed).unwrap(), plain);
    assert_eq!(len, shards[0].len() as u64);
}
