//! `rtc`: objects fetched over the WebRTC door's data channel against
//! HTTP/1.1 from the same edge, one request at a time (as a player fetches
//! segments): time to first byte and throughput, memory-tier hits. The HUB
//! is there only to signal; the edge's site is the loadtest's origin.

use crate::origin::Origin;
use crate::servers;
use crate::transcode::{spawn, wait_admitted, wait_hub, Procs};
use crate::Common;
use anyhow::Context;
use meshcast_control::identity::NodeKey;
use meshcast_control::token::{self, TokenClaims};
use meshcast_player::rtc::RtcChannel;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub struct Options {
    pub common: Common,
    pub requests: usize,
    pub rounds: usize,
}

const OBJECTS: [&str; 2] = ["/obj/100k.bin", "/obj/2m.m4s"];

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Per-request time to first byte (ms) and the run's bytes per second.
struct Run {
    ttfb_ms: Vec<f64>,
    bytes_per_sec: f64,
}

async fn over_rtc(ch: &RtcChannel, path: &str, n: usize) -> anyhow::Result<Run> {
    let (mut ttfb_ms, mut bytes) = (Vec::new(), 0u64);
    let start = Instant::now();
    for _ in 0..n {
        let headers = vec![("host".to_string(), "bench".to_string())];
        let r = ch
            .request("GET", path, headers, None)
            .await
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(r.status == 200, "{path} over WebRTC: {}", r.status);
        ttfb_ms.push(r.ttfb.as_secs_f64() * 1e3);
        bytes += r.body.len() as u64;
    }
    Ok(Run {
        ttfb_ms,
        bytes_per_sec: bytes as f64 / start.elapsed().as_secs_f64(),
    })
}

async fn over_http(http: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<Run> {
    let (mut ttfb_ms, mut bytes) = (Vec::new(), 0u64);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let resp = http.get(url).send().await?;
        ttfb_ms.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(resp.status() == 200, "{url}: {}", resp.status());
        bytes += resp.bytes().await?.len() as u64;
    }
    Ok(Run {
        ttfb_ms,
        bytes_per_sec: bytes as f64 / start.elapsed().as_secs_f64(),
    })
}

/// A hub with `key` bonded at genesis, in `dir`.
async fn start_hub(
    o: &Options,
    dir: &std::path::Path,
    key: &str,
) -> anyhow::Result<(Procs, String)> {
    let port = servers::free_port()?;
    let hub = format!("http://127.0.0.1:{port}");
    std::fs::write(
        dir.join("hub.toml"),
        format!(
            "[hub]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nedges = [\"http://127.0.0.1:9\"]\n[ledger]\nbonded_nodes = [\"{key}\"]\n",
            dir.join("data").display()
        ),
    )?;
    let exe = servers::meshcast_binary(&o.common)?;
    let child = spawn(
        &exe,
        &["hub", "--config", &dir.join("hub.toml").to_string_lossy()],
        &dir.join("hub.log"),
    )?;
    let procs = Procs(vec![child]);
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_hub(&reqwest::Client::new(), &hub, dir, deadline).await?;
    Ok((procs, hub))
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("meshcast-rtc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let origin = Origin::start(2.0, 10).await?;
    let node = NodeKey::generate()?;
    node.save(&dir.join("node.key"))?;
    let node_hex = hex::encode(node.public().to_bytes());
    let (_hub_proc, hub) = start_hub(&o, &dir, &node_hex).await?;
    let edge = servers::start_edge_custom(
        &o.common,
        origin.addr,
        &dir,
        "webrtc = true",
        &format!(
            "[node]\nkey = \"{}\"\nhub = \"{hub}\"\nadvertise = \"http://127.0.0.1:9\"\nstate_dir = \"{}\"\nheartbeat = \"1s\"\n",
            dir.join("node.key").display(),
            dir.join("state").display()
        ),
    )
    .await?;
    let http = reqwest::Client::new();
    wait_admitted(&http, &hub, 1, Instant::now() + Duration::from_secs(30)).await?;
    // A token from the hub's own key: the hub signals only for tokens it
    // trusts (this edge checks none).
    let hub_key = NodeKey::load(&dir.join("data/hub.key")).context("the hub's key")?;
    let claims = TokenClaims {
        issuer: hub_key.public().to_bytes(),
        prefix: "/".into(),
        expires: now() + 3600,
        budget: u64::MAX,
        session: NodeKey::generate()?.public().to_bytes(),
        edges: vec![node.public().to_bytes()],
    };
    let token = token::issue(&hub_key, &claims, now())?;
    wait_polling(&http, &hub, Instant::now() + Duration::from_secs(30)).await?;
    let ch = RtcChannel::connect(&http, &hub, &token)
        .await
        .map_err(|e| anyhow::anyhow!("no WebRTC session: {e}"))?;
    let mut results = Vec::new();
    for path in OBJECTS {
        let url = edge.url(path);
        over_http(&http, &url, 2).await?; // fills the cache
        let (mut rtc, mut h1) = (Vec::new(), Vec::new());
        for _ in 0..o.rounds {
            // Alternating, so both see the same machine.
            rtc.push(over_rtc(&ch, path, o.requests).await?);
            h1.push(over_http(&http, &url, o.requests).await?);
        }
        results.push(summary(path, &rtc, &h1));
    }
    report(&o, &results);
    Ok(())
}

/// Waits until the hub lists a node taking WebRTC offers.
async fn wait_polling(http: &reqwest::Client, hub: &str, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let v = crate::transcode::json(http.get(format!("{hub}/v1/nodes"))).await?;
        if v["nodes"]
            .as_array()
            .is_some_and(|l| l.iter().any(|n| n["webrtc"] == true))
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no node polls the hub for offers: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn summary(path: &str, rtc: &[Run], h1: &[Run]) -> Value {
    let ttfb = |runs: &[Run]| median(runs.iter().flat_map(|r| r.ttfb_ms.clone()).collect());
    let mbps = |runs: &[Run]| median(runs.iter().map(|r| r.bytes_per_sec / 1e6).collect());
    let (rt, ht, rm, hm) = (ttfb(rtc), ttfb(h1), mbps(rtc), mbps(h1));
    json!({
        "object": path,
        "rtc": { "ttfb_ms_p50": rt, "mb_per_s": rm },
        "http1": { "ttfb_ms_p50": ht, "mb_per_s": hm },
        "throughput_rtc_over_http1": rm / hm,
        "ttfb_rtc_over_http1": rt / ht,
    })
}

fn report(o: &Options, results: &[Value]) {
    if o.common.json {
        println!("{}", json!({ "rtc": results }));
        return;
    }
    println!(
        "one request at a time, {} per run, {} runs alternating; medians",
        o.requests, o.rounds
    );
    println!("| object | door | TTFB p50 ms | MB/s | throughput ÷ HTTP/1.1 | TTFB ÷ HTTP/1.1 |");
    println!("|---|---|---|---|---|---|");
    for r in results {
        println!(
            "| {} | WebRTC | {:.2} | {:.1} | {:.2} | {:.2} |",
            r["object"],
            r["rtc"]["ttfb_ms_p50"].as_f64().unwrap_or(0.0),
            r["rtc"]["mb_per_s"].as_f64().unwrap_or(0.0),
            r["throughput_rtc_over_http1"].as_f64().unwrap_or(0.0),
            r["ttfb_rtc_over_http1"].as_f64().unwrap_or(0.0),
        );
        println!(
            "| {} | HTTP/1.1 | {:.2} | {:.1} | 1 | 1 |",
            r["object"],
            r["http1"]["ttfb_ms_p50"].as_f64().unwrap_or(0.0),
            r["http1"]["mb_per_s"].as_f64().unwrap_or(0.0),
        );
    }
}
