//! `shards`: storage on the network measured. A hub, eight storage nodes
//! (k = 4, m = 2) and two edges on this machine, one with the hub as its
//! origin and one with the network. Every top-rung segment of a 1080p
//! upload is fetched cold through each edge, alternating: time to first
//! byte and throughput of each miss, side by side. Then two storage nodes
//! are killed and the hub's repair is timed: MB of shards rebuilt per
//! second once the nodes are past their grace period, and the hub's CPU
//! seconds per GB rebuilt.

use crate::procstat;
use crate::servers::meshcast_binary;
use crate::transcode::{
    bench_account, json, make_source, spawn, upload, wait_admitted, wait_hub, Procs,
};
use crate::Common;
use anyhow::{bail, Context};
use meshcast_control::identity::NodeKey;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Options {
    pub common: Common,
    pub secs: u32,
    /// `[storage] repair_rate` for the repair run.
    pub repair_rate: String,
}

const STORAGE: usize = 8;
/// `[storage] grace` of the run, in seconds.
const GRACE_S: u64 = 2;

fn key(dir: &Path, name: &str) -> anyhow::Result<String> {
    let k = NodeKey::generate()?;
    k.save(&dir.join(format!("{name}.key")))?;
    Ok(format!("\"{}\"", hex::encode(k.public().to_bytes())))
}

struct Net {
    procs: Procs,
    hub: String,
    edges: [String; 2],
}

/// Writes every config and starts the hub, the storage nodes and the edges.
async fn start(o: &Options, dir: &Path) -> anyhow::Result<Net> {
    let exe = meshcast_binary(&o.common)?;
    let hub_port = crate::servers::free_port()?;
    let hub = format!("http://127.0.0.1:{hub_port}");
    let mut keys = Vec::new();
    for i in 0..STORAGE {
        keys.push(key(dir, &format!("storage{i}"))?);
        std::fs::write(dir.join(format!("storage{i}.toml")), format!(
            "[node]\nkey = \"{}\"\nhub = \"{hub}\"\nheartbeat = \"1s\"\n[worker]\nroles = [\"storage\"]\nscratch_dir = \"{}\"\nstorage_dir = \"{}\"\ncapacity = \"10GiB\"\nlisten = \"127.0.0.1:{}\"\n",
            dir.join(format!("storage{i}.key")).display(), dir.join("scratch").display(), dir.join(format!("shards{i}")).display(), crate::servers::free_port()?))?;
    }
    let mut edges = Vec::new();
    for (i, origin) in [hub.clone(), "network".into()].iter().enumerate() {
        keys.push(key(dir, &format!("edge{i}"))?);
        let (p, admin) = (crate::servers::free_port()?, crate::servers::free_port()?);
        let url = format!("http://127.0.0.1:{p}");
        std::fs::write(dir.join(format!("edge{i}.toml")), format!(
            "[edge]\nlisten = [\"127.0.0.1:{p}\"]\nadmin = \"127.0.0.1:{admin}\"\nthreads = {}\n[cache]\ndir = \"{}\"\ndisk_size = \"2GiB\"\nmemory_size = \"256MiB\"\n[log]\naccess = \"{}\"\n[node]\nkey = \"{}\"\nhub = \"{hub}\"\nadvertise = \"{url}\"\nstate_dir = \"{}\"\n[[site]]\nhosts = [\"*\"]\norigin = \"{origin}\"\n",
            o.common.threads, dir.join(format!("cache{i}")).display(), dir.join(format!("access{i}.log")).display(),
            dir.join(format!("edge{i}.key")).display(), dir.join(format!("state{i}")).display()))?;
        edges.push(url);
    }
    std::fs::write(dir.join("hub.toml"), format!(
        "[hub]\nlisten = \"127.0.0.1:{hub_port}\"\ndata_dir = \"{}\"\nedges = [\"{}\"]\n[ledger]\nbonded_nodes = [{}]\n[storage]\ngrace = \"{GRACE_S}s\"\nrepair_interval = \"200ms\"\nrepair_rate = \"{}\"\n",
        dir.join("data").display(), edges[0], keys.join(", "), o.repair_rate))?;
    let cfg = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let mut procs = Procs(vec![spawn(
        &exe,
        &["hub", "--config", &cfg("hub.toml")],
        &dir.join("hub.log"),
    )?]);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_hub(&client, &hub, dir, deadline).await?;
    for i in 0..STORAGE {
        procs.0.push(spawn(
            &exe,
            &["worker", "--config", &cfg(&format!("storage{i}.toml"))],
            &dir.join(format!("storage{i}.log")),
        )?);
    }
    for i in 0..2 {
        procs.0.push(spawn(
            &exe,
            &["edge", "--config", &cfg(&format!("edge{i}.toml"))],
            &dir.join(format!("edge{i}.log")),
        )?);
    }
    wait_admitted(&client, &hub, STORAGE + 2, deadline).await?;
    let edges = [edges[0].clone(), edges[1].clone()];
    Ok(Net { procs, hub, edges })
}

/// Uploads `source` and waits until it is ready and placed.
async fn publish(net: &Net, dir: &Path, source: &Path) -> anyhow::Result<(String, Value)> {
    let c = reqwest::Client::new();
    let api_key = bench_account(&c, &net.hub, dir).await?;
    let (id, client) = upload(&net.hub, &api_key, source).await?;
    loop {
        let v = json(client.get(format!("{}/v1/videos/{id}", net.hub))).await?;
        if v["status"] == "failed" {
            bail!("the transcode failed: {}", v["reason"]);
        }
        let r = c
            .get(format!("{}/v1/placements/{id}", net.hub))
            .send()
            .await?;
        if r.status().is_success() {
            return Ok((id, r.json().await?));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A cold fetch: (seconds to the response head, seconds to the last byte, bytes).
async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<(f64, f64, u64)> {
    let t0 = Instant::now();
    let r = client.get(url).send().await?;
    let head = t0.elapsed().as_secs_f64();
    if !r.status().is_success() {
        bail!("{url}: {}", r.status());
    }
    let body = r.bytes().await?;
    Ok((head, t0.elapsed().as_secs_f64(), body.len() as u64))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Misses of every top-rung segment through both edges, alternating.
async fn misses(net: &Net, id: &str, placed: &Value) -> anyhow::Result<Value> {
    let client = reqwest::Client::new();
    let objects: Vec<&str> = placed["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["path"].as_str())
        .collect();
    let top = objects
        .iter()
        .filter_map(|p| p.split('/').next())
        .find(|r| r.ends_with('p'))
        .context("no video rung")?;
    // Warm both: the network edge asks the hub for the placement once.
    for e in &net.edges {
        fetch(&client, &format!("{e}/v/{id}/{top}/init.mp4")).await?;
    }
    let mut rows: [Vec<(f64, f64, u64)>; 2] = [vec![], vec![]];
    for (n, path) in objects
        .iter()
        .filter(|p| p.starts_with(&format!("{top}/seg_")))
        .enumerate()
    {
        for k in 0..2 {
            let which = (n + k) % 2;
            rows[which].push(fetch(&client, &format!("{}/v/{id}/{path}", net.edges[which])).await?);
        }
    }
    let summary = |r: &[(f64, f64, u64)]| {
        let mb = r.iter().map(|x| x.2 as f64).sum::<f64>() / r.len().max(1) as f64 / 1e6;
        json!({"segments": r.len(), "mean_mb": mb,
               "ttfb_p50_ms": median(r.iter().map(|x| x.0 * 1e3).collect()),
               "total_p50_ms": median(r.iter().map(|x| x.1 * 1e3).collect()),
               "mb_per_s_p50": median(r.iter().map(|x| x.2 as f64 / 1e6 / x.1.max(1e-9)).collect())})
    };
    Ok(json!({"rung": top, "hub_origin": summary(&rows[0]), "network": summary(&rows[1])}))
}

/// Kills two storage nodes and times the repair of their shards.
async fn repair(net: &mut Net, dir: &Path, id: &str, placed: &Value) -> anyhow::Result<Value> {
    let client = reqwest::Client::new();
    let dead: Vec<String> = (0..2)
        .map(|i| NodeKey::load(&dir.join(format!("storage{i}.key"))).map(|k| k.id()))
        .collect::<Result<_, _>>()?;
    let on_dead = |p: &Value| -> u64 {
        p["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|o| o["shards"].as_array().into_iter().flatten())
            .filter(|s| dead.iter().any(|d| s["node"] == d.as_str()))
            .filter_map(|s| s["len"].as_u64())
            .sum()
    };
    let lost = on_dead(placed);
    let hub_pid = net.procs.0[0].id();
    for c in net.procs.0[1..3].iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let killed = Instant::now();
    let cpu0 = procstat::cpu_seconds(&[hub_pid]);
    let shards_lost = placed["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|o| o["shards"].as_array().into_iter().flatten())
        .filter(|s| dead.iter().any(|d| s["node"] == d.as_str()))
        .count() as f64;
    // Timed from the first rebuilt shard the hub counts to the last (the
    // nodes are lost only once silent past the grace period).
    let mut first: Option<(Instant, f64)> = None;
    loop {
        if first.is_none() {
            let n = hub_metric(&client, &net.hub, "meshcast_hub_shards_repaired_total").await;
            if n > 0.0 {
                first = Some((Instant::now(), n));
            }
        }
        let p = json(client.get(format!("{}/v1/placements/{id}", net.hub))).await?;
        if on_dead(&p) == 0 {
            break;
        }
        if killed.elapsed() > Duration::from_secs(600) {
            bail!("the repair did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = killed.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds(&[hub_pid]) - cpu0;
    let (t1, n1) = first.unwrap_or((killed, 0.0));
    let timed = t1.elapsed().as_secs_f64().max(1e-3);
    let timed_mb = lost as f64 / 1e6 * (shards_lost - n1).max(0.0) / shards_lost.max(1.0);
    Ok(
        json!({"rebuilt_mb": lost as f64 / 1e6, "shards": shards_lost, "seconds_from_kill": total,
              "seconds_timed": timed, "mb_per_s": timed_mb / timed, "hub_cpu_s": cpu,
              "hub_cpu_s_per_gb": cpu / (lost as f64 / 1e9).max(1e-9)}),
    )
}

async fn hub_metric(client: &reqwest::Client, hub: &str, name: &str) -> f64 {
    let Ok(r) = client.get(format!("{hub}/metrics")).send().await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("meshcast-loadtest-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let source = dir.join("source.mp4");
    eprintln!("making a {} s 1080p source…", o.secs);
    make_source(&source, o.secs)?;
    let mut net = start(&o, &dir).await?;
    eprintln!("uploading, transcoding and placing…");
    let (id, placed) = publish(&net, &dir, &source).await?;
    eprintln!("misses through both edges…");
    let miss = misses(&net, &id, &placed).await?;
    eprintln!("repairing two lost nodes' shards…");
    let rep = repair(&mut net, &dir, &id, &placed).await?;
    let report = json!({"misses": miss, "repair": rep, "repair_rate": o.repair_rate});
    if o.common.json {
        println!("{report}");
    } else {
        println!("| origin | segments | MB each | TTFB p50 ms | miss p50 ms | MB/s p50 |\n|---|---|---|---|---|---|");
        for (name, r) in [
            ("hub", &miss["hub_origin"]),
            ("network (k = 4 of 6)", &miss["network"]),
        ] {
            println!(
                "| {name} | {} | {:.2} | {:.1} | {:.1} | {:.1} |",
                r["segments"],
                r["mean_mb"].as_f64().unwrap_or(0.0),
                r["ttfb_p50_ms"].as_f64().unwrap_or(0.0),
                r["total_p50_ms"].as_f64().unwrap_or(0.0),
                r["mb_per_s_p50"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "\nrepair of two lost nodes' shards ({:.1} MB, {} shards): {:.2} s from the first rebuilt shard counted to the last, {:.1} MB/s, hub {:.2} CPU s ({:.1} CPU s per GB rebuilt); repair_rate {}",
            rep["rebuilt_mb"].as_f64().unwrap_or(0.0),
            rep["shards"],
            rep["seconds_timed"].as_f64().unwrap_or(0.0),
            rep["mb_per_s"].as_f64().unwrap_or(0.0),
            rep["hub_cpu_s"].as_f64().unwrap_or(0.0),
            rep["hub_cpu_s_per_gb"].as_f64().unwrap_or(0.0),
            o.repair_rate
        );
    }
    drop(net);
    Ok(())
}
