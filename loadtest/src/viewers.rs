//! `viewers`: simulated HLS players against both servers. Each player loads
//! the master playlist, picks a rung from its measured throughput (a
//! throughput-based ABR with a 0.7 safety factor), fetches segments at real
//! time pace with a buffer model (stalls count as rebuffering), and reports
//! startup time, rebuffering and bitrate. Steps double the number of
//! viewers until more than 1 % of viewing time is rebuffering.

use crate::openloop::percentile;
use crate::origin::Origin;
use crate::servers::{self, Server};
use crate::Common;
use meshcast_player::Client;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub struct Options {
    pub common: Common,
    pub start: usize,
    pub max: usize,
}

#[derive(Default, Clone, Copy)]
struct Viewer {
    startup_ms: f64,
    rebuffer_s: f64,
    played_s: f64,
    bit_seconds: f64,
    failed: bool,
}

const MAX_BUFFER_SEGMENTS: f64 = 3.0;

/// Fetches through the player library (`meshcast play`'s client), which
/// also checks any `Meshcast-Receipt` against the bytes that arrived.
async fn fetch(client: &mut Client, url: &str) -> Option<(usize, Duration)> {
    let t = Instant::now();
    let url = url::Url::parse(url).ok()?;
    let b = client.get(&url).await.ok()?;
    Some((b.len(), t.elapsed()))
}

async fn viewer(base: String, seg_secs: f64, segments: usize) -> Viewer {
    let mut v = Viewer::default();
    let Ok(base_url) = url::Url::parse(&base) else {
        return Viewer { failed: true, ..v };
    };
    let mut client = Client::plain(reqwest::Client::new(), base_url);
    let t0 = Instant::now();
    let Some(text) = client
        .get(&url::Url::parse(&format!("{base}/hls/master.m3u8")).expect("a valid base"))
        .await
        .ok()
    else {
        return Viewer { failed: true, ..v };
    };
    let Ok(parsed) = m3u8_rs::parse_master_playlist_res(&text) else {
        return Viewer { failed: true, ..v };
    };
    let mut rungs: Vec<(u64, String)> = parsed
        .variants
        .iter()
        .map(|s| {
            (
                s.bandwidth,
                s.uri.trim_end_matches("index.m3u8").to_string(),
            )
        })
        .collect();
    rungs.sort();
    if rungs.is_empty() {
        return Viewer { failed: true, ..v };
    }
    let mut estimate: Option<f64> = None;
    let mut buffer = 0.0f64;
    let mut last = Instant::now();
    for i in 0..segments {
        let pick = match estimate {
            None => 0,
            Some(bps) => rungs
                .iter()
                .rposition(|(bw, _)| (*bw as f64) <= bps * 0.7)
                .unwrap_or(0),
        };
        let (bandwidth, prefix) = &rungs[pick];
        let url = format!("{base}/hls/{prefix}seg_{i:05}.m4s");
        let Some((bytes, took)) = fetch(&mut client, &url).await else {
            return Viewer { failed: true, ..v };
        };
        let sample = bytes as f64 * 8.0 / took.as_secs_f64().max(1e-6);
        estimate = Some(estimate.map_or(sample, |e| 0.5 * e + 0.5 * sample));
        let now = Instant::now();
        if i == 0 {
            v.startup_ms = (now - t0).as_secs_f64() * 1000.0;
        } else {
            buffer -= (now - last).as_secs_f64();
            if buffer < 0.0 {
                v.rebuffer_s += -buffer;
                buffer = 0.0;
            }
        }
        last = now;
        buffer += seg_secs;
        v.played_s += seg_secs;
        v.bit_seconds += *bandwidth as f64 * seg_secs;
        // Real-time pace: a full buffer waits for playback to drain it.
        let ceiling = MAX_BUFFER_SEGMENTS * seg_secs;
        if buffer > ceiling {
            tokio::time::sleep(Duration::from_secs_f64(buffer - ceiling)).await;
        }
    }
    v
}

struct Step {
    viewers: usize,
    rebuffer_ratio: f64,
    startup_p50_ms: f64,
    startup_p99_ms: f64,
    mean_kbps: f64,
    failed: usize,
}

async fn step(server: &Server, n: usize, seg_secs: f64, segments: usize) -> Step {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let base = server.base.clone();
            tokio::spawn(async move {
                // Arrivals spread over one segment, as real audiences are.
                tokio::time::sleep(Duration::from_secs_f64(seg_secs * i as f64 / n as f64)).await;
                viewer(base, seg_secs, segments).await
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.push(t.await.unwrap_or(Viewer {
            failed: true,
            ..Default::default()
        }));
    }
    let failed = all.iter().filter(|v| v.failed).count();
    let ok: Vec<&Viewer> = all.iter().filter(|v| !v.failed).collect();
    let rebuffer: f64 = ok.iter().map(|v| v.rebuffer_s).sum();
    let played: f64 = ok.iter().map(|v| v.played_s).sum();
    let mut startup: Vec<u64> = ok.iter().map(|v| (v.startup_ms * 1000.0) as u64).collect();
    startup.sort_unstable();
    Step {
        viewers: n,
        rebuffer_ratio: if failed > 0 {
            1.0
        } else {
            rebuffer / (played + rebuffer).max(1e-9)
        },
        startup_p50_ms: percentile(&startup, 50.0) as f64 / 1000.0,
        startup_p99_ms: percentile(&startup, 99.0) as f64 / 1000.0,
        mean_kbps: ok.iter().map(|v| v.bit_seconds).sum::<f64>() / played.max(1e-9) / 1000.0,
        failed,
    }
}

async fn ramp(server: &Server, o: &Options, seg_secs: f64, segments: usize) -> (usize, Vec<Step>) {
    let mut held = 0;
    let mut steps = Vec::new();
    let mut n = o.start.max(1);
    while n <= o.max {
        eprintln!("{}: {n} viewers…", server.name);
        let s = step(server, n, seg_secs, segments).await;
        let ok = s.rebuffer_ratio <= 0.01;
        steps.push(s);
        if !ok {
            break;
        }
        held = n;
        n *= 2;
    }
    (held, steps)
}

fn steps_json(steps: &[Step]) -> Value {
    Value::Array(
        steps
            .iter()
            .map(|s| {
                json!({"viewers": s.viewers, "rebuffer_ratio": (s.rebuffer_ratio * 10000.0).round() / 10000.0,
                       "startup_p50_ms": s.startup_p50_ms, "startup_p99_ms": s.startup_p99_ms,
                       "mean_kbps": s.mean_kbps.round(), "failed": s.failed})
            })
            .collect(),
    )
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let (seg_secs, segments) = if o.common.quick { (1.0, 4) } else { (2.0, 10) };
    let dir = std::env::temp_dir().join(format!("meshcast-viewers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let origin = Origin::start(seg_secs, segments).await?;
    let edge = servers::start_edge(&o.common, origin.addr, &dir).await?;
    let nginx = servers::start_nginx(&o.common, origin.addr, &dir).await?;
    let (held_m, steps_m) = ramp(&edge, &o, seg_secs, segments).await;
    let (held_n, steps_n) = ramp(&nginx, &o, seg_secs, segments).await;
    let ratio = if held_n > 0 {
        held_m as f64 / held_n as f64
    } else {
        0.0
    };
    let capped = held_m * 2 > o.max && held_n * 2 > o.max;
    if o.common.json {
        println!(
            "{}",
            json!({"segment_s": seg_secs, "segments_per_viewer": segments, "max_tried": o.max,
                   "meshcast": {"viewers_held": held_m, "steps": steps_json(&steps_m)},
                   "nginx": {"viewers_held": held_n, "steps": steps_json(&steps_n)},
                   "ratio": (ratio * 100.0).round() / 100.0, "both_reached_max": capped})
        );
    } else {
        println!("| server | viewers | rebuffer % | startup p50 ms | startup p99 ms | mean kbps | failed |\n|---|---|---|---|---|---|---|");
        for (name, steps) in [("meshcast", &steps_m), ("nginx", &steps_n)] {
            for s in steps {
                println!(
                    "| {name} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {} |",
                    s.viewers,
                    s.rebuffer_ratio * 100.0,
                    s.startup_p50_ms,
                    s.startup_p99_ms,
                    s.mean_kbps,
                    s.failed
                );
            }
        }
        println!("\nViewers held (rebuffering ≤ 1 %): meshcast {held_m}, nginx {held_n} (ratio {ratio:.2}){}", if capped { "; both reached the largest step tried" } else { "" });
    }
    drop(edge);
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
