// The allocator the meshcast binary uses (glibc's made fresh 2 MB buffers
// cost 15x more here, page faults on every iteration).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshcast_shards::*;
use std::hint::black_box;

const SEGMENT: usize = 2 * 1024 * 1024;

fn bench(c: &mut Criterion) {
    let plain: Vec<u8> = (0..SEGMENT).map(|i| (i * 31 % 251) as u8).collect();
    let key = ContentKey::random();
    let layout = Layout::new(4, 2).unwrap();
    let mut g = c.benchmark_group("2 MB segment, k=4 m=2");
    g.throughput(Throughput::Bytes(SEGMENT as u64));
    g.bench_function("store: seal + encode + roots", |b| {
        b.iter(|| {
            let shards = encode(layout, &seal(&key, "v/seg", black_box(&plain)));
            let roots: Vec<Root> = shards.iter().map(|s| outboard(s).1).collect();
            black_box(roots)
        })
    });
    let sealed = seal(&key, "v/seg", &plain);
    g.bench_function("part: seal", |b| b.iter(|| black_box(seal(&key, "v/seg", black_box(&plain)))));
    g.bench_function("part: encode", |b| b.iter(|| black_box(encode(layout, black_box(&sealed)))));
    g.bench_function("part: roots", |b| b.iter(|| black_box(outboard(black_box(&sealed)))));
    g.bench_function("part: blake3 hash", |b| b.iter(|| black_box(blake3::hash(black_box(&sealed)))));
    let parts: Vec<Vec<u8>> = sealed[..524288 * 4].chunks(524288).map(|c| c.to_vec()).collect();
    g.bench_function("part: rs only", |b| b.iter(|| black_box(reed_solomon_simd::encode(4, 2, black_box(&parts)).unwrap())));
    let shards = encode(layout, &sealed);
    let roots: Vec<Root> = shards.iter().map(|s| outboard(s).1).collect();
    let trees: Vec<Vec<u8>> = shards.iter().map(|s| outboard(s).0).collect();
    let slices: Vec<Vec<u8>> = shards
        .iter()
        .zip(&trees)
        .map(|(s, t)| extract(s, t, 0, s.len() as u64).unwrap())
        .collect();
    let len = shards[0].len() as u64;
    // The reader's path when two data shards are lost: verify four
    // slices, rebuild, open.
    g.bench_function("read: verify + decode (2 lost) + open", |b| {
        b.iter(|| {
            let got: Vec<Option<Vec<u8>>> = (0..6)
                .map(|i| (i >= 2).then(|| verify(&roots[i], len, (0, len), &slices[i]).unwrap()))
                .collect();
            let refs: Vec<Option<&[u8]>> = got.iter().map(|s| s.as_deref()).collect();
            black_box(open(&key, "v/seg", &decode(layout, &refs).unwrap()).unwrap())
        })
    });
    // Repair: rebuild the two lost shards from four verified ones.
    g.bench_function("repair: decode + re-encode the lost two", |b| {
        b.iter(|| {
            let refs: Vec<Option<&[u8]>> = (0..6).map(|i| (i >= 2).then(|| shards[i].as_slice())).collect();
            let object = decode(layout, &refs).unwrap();
            black_box(encode(layout, &object))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
