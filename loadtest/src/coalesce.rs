//! Cold-miss coalescing: N concurrent requests for one cold 2 MB segment
//! behind a slow origin (500 ms). Counts origin fetches and the waiters'
//! time to first byte.

use crate::openloop::percentile;
use crate::origin::Origin;
use std::time::Instant;

pub struct Coalesced {
    pub requests: usize,
    pub origin_fetches: u64,
    pub ok: usize,
    pub ttfb_p50_ms: f64,
    pub ttfb_p99_ms: f64,
}

pub async fn run(origin: &Origin, base: &str, tag: &str, n: usize) -> Coalesced {
    let path = format!("/slow/{tag}/2m.m4s");
    let url = format!("{base}{path}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()
        .expect("client");
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut resp = client.get(&url).send().await.ok()?;
                let first = resp.chunk().await.ok()??;
                let ttfb = start.elapsed().as_secs_f64() * 1000.0;
                let mut len = first.len();
                while let Ok(Some(c)) = resp.chunk().await {
                    len += c.len();
                }
                (len == 2_000_000).then_some(ttfb)
            })
        })
        .collect();
    let mut ttfb: Vec<u64> = Vec::new();
    for t in tasks {
        if let Ok(Some(ms)) = t.await {
            ttfb.push((ms * 1000.0) as u64);
        }
    }
    ttfb.sort_unstable();
    Coalesced {
        requests: n,
        origin_fetches: origin.hits(&path),
        ok: ttfb.len(),
        ttfb_p50_ms: percentile(&ttfb, 50.0) as f64 / 1000.0,
        ttfb_p99_ms: percentile(&ttfb, 99.0) as f64 / 1000.0,
    }
}
