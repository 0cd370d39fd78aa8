//! What an edge spends per ack and per receipt, on one core.
//!
//! `edge_accepts`: decode the receipt from its header, check it is ours
//! (keyed BLAKE3 tag), compute its id, and verify the viewer's signatures
//! for a batch (Ed25519 batch verification) — everything `POST /v1/acks`
//! does except the log write. `hub_opens`: the HUB's per-entry check of an
//! opened ack (the viewer's signature; the edge's is the claim's, one per
//! epoch). `edge_issues_one`: one receipt sealed and base64url-encoded,
//! what every paid response costs.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use meshcast_control::identity::NodeKey;
use meshcast_control::receipt::{verify_acks, Ack, ReceiptSealer, SealedReceipt};
use std::hint::black_box;

fn acks(n: usize) -> (ReceiptSealer, SigningKey, Vec<(String, Ack)>) {
    let edge = ReceiptSealer::new(NodeKey::from_seed([3; 32]));
    let session = SigningKey::from_bytes(&[9; 32]);
    let v = (0..n)
        .map(|i| {
            let r = edge.issue([1; 16], [2; 16], &format!("/v/0123456789abcdef/720p/seg{i:05}.m4s"), 0, 1_500_000, 1_795_000_000_000 + i as u64, i as u64);
            let header = r.header_value();
            (header, Ack::sign(&session, r))
        })
        .collect();
    (edge, session, v)
}

fn bench(c: &mut Criterion) {
    const BATCH: usize = 64;
    let (edge, session, batch) = acks(BATCH);
    let key = session.verifying_key().to_bytes();
    let mut g = c.benchmark_group("acks");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("edge_accepts_batch_of_64", |b| {
        b.iter(|| {
            let mut decoded = Vec::with_capacity(BATCH);
            for (header, ack) in &batch {
                let r = SealedReceipt::from_header(header).unwrap();
                edge.is_ours(&r).unwrap();
                black_box(r.id());
                decoded.push(Ack { receipt: r, sig: ack.sig });
            }
            verify_acks(&decoded, &vec![key; BATCH]).unwrap();
        })
    });
    g.bench_function("hub_opens_batch_of_64", |b| {
        b.iter_batched(
            || batch.iter().map(|(_, a)| a.encode()).collect::<Vec<_>>(),
            |leaves| {
                let decoded: Vec<Ack> = leaves.iter().map(|l| Ack::decode(l).unwrap()).collect();
                verify_acks(&decoded, &vec![key; BATCH]).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let mut g = c.benchmark_group("receipts");
    g.throughput(Throughput::Elements(1));
    let mut serial = 0u64;
    g.bench_function("edge_issues_one", |b| {
        b.iter(|| {
            serial += 1;
            black_box(edge.issue([1; 16], [2; 16], "/v/0123456789abcdef/720p/seg00001.m4s", 0, 1_500_000, 1_795_000_000_000, serial).header_value())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
