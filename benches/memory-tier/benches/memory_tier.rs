//! TinyUFO vs moka as the edge's memory tier.
//!
//! Workload: a video catalogue of 50,000 objects whose popularity follows a
//! Zipf law (s = 0.9), sizes from 1 KiB playlists to 2 MiB segments
//! (log-uniform), a 256 MiB tier. Each request is a get; a miss is followed
//! by a put, as the edge does after an origin fetch. Reported: object and
//! byte hit ratios (printed first), then criterion timings of the
//! get-or-put step single-threaded and from two threads.

use criterion::{criterion_group, Criterion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::sync::Arc;

const OBJECTS: usize = 50_000;
const CAPACITY: usize = 256 << 20;
const KIB: usize = 1024;

fn sizes() -> Vec<usize> {
    let mut rng = SmallRng::seed_from_u64(7);
    (0..OBJECTS).map(|_| (2f64.powf(rng.random_range(10.0..21.0))) as usize).collect()
}

fn trace(n: usize, seed: u64) -> Vec<u64> {
    let zipf = Zipf::new(OBJECTS as f64, 0.9).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| zipf.sample(&mut rng) as u64 - 1).collect()
}

trait Tier: Send + Sync {
    fn get_or_put(&self, key: u64, size: usize) -> bool;
}

struct Ufo(tinyufo::TinyUfo<u64, Arc<[u8; 0]>>);
impl Tier for Ufo {
    fn get_or_put(&self, key: u64, size: usize) -> bool {
        if self.0.get(&key).is_some() {
            return true;
        }
        self.0.put(key, Arc::new([]), size.div_ceil(KIB).max(1) as u16);
        false
    }
}

struct Moka(moka::sync::Cache<u64, usize>);
impl Tier for Moka {
    fn get_or_put(&self, key: u64, size: usize) -> bool {
        if self.0.get(&key).is_some() {
            return true;
        }
        self.0.insert(key, size);
        false
    }
}

fn ufo() -> Ufo {
    Ufo(tinyufo::TinyUfo::new(CAPACITY / KIB, 4096))
}

fn moka() -> Moka {
    Moka(
        moka::sync::Cache::builder()
            .max_capacity((CAPACITY / KIB) as u64)
            .weigher(|_, size: &usize| size.div_ceil(KIB).max(1) as u32)
            .build(),
    )
}

fn hit_ratios(name: &str, tier: &dyn Tier, sizes: &[usize]) {
    let warm = trace(200_000, 1);
    for &k in &warm {
        tier.get_or_put(k, sizes[k as usize]);
    }
    let (mut hits, mut hit_bytes, mut bytes) = (0usize, 0usize, 0usize);
    let run = trace(1_000_000, 2);
    for &k in &run {
        let size = sizes[k as usize];
        bytes += size;
        if tier.get_or_put(k, size) {
            hits += 1;
            hit_bytes += size;
        }
    }
    println!(
        "{name:8} object hit ratio {:.3}  byte hit ratio {:.3}",
        hits as f64 / run.len() as f64,
        hit_bytes as f64 / bytes as f64
    );
}

fn bench(c: &mut Criterion) {
    let sizes = sizes();
    let keys = trace(100_000, 3);
    let tiers: [(&str, Box<dyn Tier>); 2] = [("tinyufo", Box::new(ufo())), ("moka", Box::new(moka()))];
    let mut group = c.benchmark_group("memory_tier");
    for (name, tier) in &tiers {
        for &k in &keys {
            tier.get_or_put(k, sizes[k as usize]);
        }
        group.bench_function(format!("{name}/1-thread"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                tier.get_or_put(keys[i], sizes[keys[i] as usize])
            })
        });
        group.bench_function(format!("{name}/2-threads"), |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                std::thread::scope(|s| {
                    for t in 0..2 {
                        let (tier, keys, sizes) = (tier.as_ref(), &keys, &sizes);
                        s.spawn(move || {
                            for i in 0..iters as usize {
                                let k = keys[(i * 2 + t) % keys.len()];
                                tier.get_or_put(k, sizes[k as usize]);
                            }
                        });
                    }
                });
                start.elapsed() / 2
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    let sizes = sizes();
    hit_ratios("tinyufo", &ufo(), &sizes);
    let m = moka();
    hit_ratios("moka", &m, &sizes);
    benches();
    Criterion::default().configure_from_args().final_summary();
}
