//! Open-loop load: requests at a fixed rate, each timed from when it was
//! due, not when it was sent, so queueing is not hidden by a slow client
//! (coordinated omission).

use std::time::{Duration, Instant};

pub struct OpenLoop {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `connections` connections share the rate; request k of connection c is
/// due at `start + (k * connections + c) / rps`, as wrk2 schedules them.
/// As wrk does, every connection is opened (one untimed request) before
/// the clock starts: what is timed is requests, not connection set-up.
pub async fn run(url: &str, rps: f64, secs: f64, connections: usize) -> OpenLoop {
    let total = (rps * secs).max(connections as f64) as usize;
    let per_conn = total / connections;
    let interval = Duration::from_secs_f64(1.0 / rps.max(1.0));
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .expect("client");
        if let Ok(r) = client.get(url).send().await {
            let _ = r.bytes().await;
        }
        clients.push(client);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            let url = url.to_string();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_conn);
                let mut errors = 0u64;
                for k in 0..per_conn {
                    let due = start + interval.mul_f64((k * connections + c) as f64);
                    tokio::time::sleep_until(due.into()).await;
                    // An error answer (a 503 from a full server) is an
                    // error, not a fast success.
                    let ok = match client.get(&url).send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        lat.push(due.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    OpenLoop {
        offered_rps: rps,
        achieved_rps: all.len() as f64 / elapsed,
        p50_us: percentile(&all, 50.0),
        p99_us: percentile(&all, 99.0),
        errors,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(super::percentile(&v, 50.0), 51);
        assert_eq!(super::percentile(&v, 99.0), 99);
        assert_eq!(super::percentile(&[], 99.0), 0);
    }
}
