//! One block of 1 000 transfers among 1 000 accounts, applied to a fresh
//! state: signature checks, nonce and balance checks, and the app hash.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use meshcast_ledger::state::GenesisAccount;
use meshcast_ledger::tx::TxBody;
use meshcast_ledger::{Action, Block, Genesis, Params, State};

fn bench(c: &mut Criterion) {
    const N: usize = 1000;
    let keys: Vec<SigningKey> = (0..N)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect();
    let genesis = Genesis {
        chain_id: "bench".into(),
        params: Params {
            delivery_price_per_gb: 1,
            storage_price_per_gb_hour: 1,
            transcode_price_per_second: 1,
            unbond_delay: 1,
            slash_bps: 0,
            min_stake: Default::default(),
            epoch_secs: 0,
        },
        accounts: keys
            .iter()
            .map(|k| GenesisAccount { address: k.verifying_key().to_bytes(), balance: 1_000_000, stake: 0 })
            .collect(),
        authorities: vec![],
        validators: vec![],
    };
    let txs: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            TxBody {
                chain_id: "bench".into(),
                from: k.verifying_key().to_bytes(),
                nonce: 0,
                action: Action::Transfer { to: keys[(i + 1) % N].verifying_key().to_bytes(), amount: 5 },
            }
            .sign(k)
        })
        .collect();
    let block = Block { height: 1, time_ms: 0, proposer: [0; 32], txs };
    let state = State::from_genesis(&genesis).unwrap();
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("apply_block_of_1000_transfers", |b| {
        b.iter_batched(
            || state.clone(),
            |mut s| {
                let r = s.apply_block(&block);
                assert!(r.results.iter().all(Option::is_none));
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
