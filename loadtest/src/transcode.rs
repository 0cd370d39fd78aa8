//! `transcode`: one upload's ladder made by the HUB alone, then by the HUB
//! with workers, on this machine: wall time from the end of the upload to
//! ready, and the CPU seconds of every process involved (ffmpeg children
//! included), split into the HUB's (cutting, audio, checks, packaging)
//! and the workers' (the chunks' encodes).

use crate::procstat;
use crate::servers::meshcast_binary;
use crate::Common;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Options {
    pub common: Common,
    /// Length of the generated 1080p source.
    pub secs: u32,
    pub workers: usize,
    /// The ladder's x264 preset; `None`: the hub's default.
    pub preset: Option<String>,
}

/// User + system CPU seconds of these processes and of their children
/// that have exited (ffmpeg runs).
fn cpu_with_children(pids: &[u32]) -> f64 {
    procstat::cpu_seconds(pids) + procstat::children_cpu_seconds(pids)
}

pub(crate) fn make_source(path: &Path, secs: u32) -> anyhow::Result<()> {
    let status = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=30",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            &secs.to_string(),
        ])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
        ])
        .arg(path)
        .status()
        .context("ffmpeg")?;
    if !status.success() {
        bail!("ffmpeg could not make the source");
    }
    Ok(())
}

pub(crate) struct Procs(pub(crate) Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn spawn(exe: &Path, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    Ok(Command::new(exe)
        .args(args)
        .env("MESHCAST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

/// Waits until the hub admits `n` nodes.
pub(crate) async fn wait_admitted(
    client: &reqwest::Client,
    hub: &str,
    n: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        let nodes = json(client.get(format!("{hub}/v1/nodes")))
            .await
            .unwrap_or_default();
        let admitted = nodes["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["admitted"] == true)
            .count();
        if admitted >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{admitted} of {n} nodes admitted: {nodes}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the hub's health check, or says where its log is.
pub(crate) async fn wait_hub(
    client: &reqwest::Client,
    hub: &str,
    dir: &Path,
    deadline: Instant,
) -> anyhow::Result<()> {
    while client.get(format!("{hub}/healthz")).send().await.is_err() {
        if Instant::now() > deadline {
            bail!(
                "the hub did not start; see {}",
                dir.join("hub.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub(crate) async fn json(req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    Ok(req.send().await?.json().await?)
}

/// Starts a hub (and `workers` workers bonded at its genesis) in `dir`.
async fn start(o: &Options, dir: &Path, workers: usize) -> anyhow::Result<(Procs, String, String)> {
    std::fs::create_dir_all(dir)?;
    let exe = meshcast_binary(&o.common)?;
    let port = crate::servers::free_port()?;
    let hub = format!("http://127.0.0.1:{port}");
    let mut keys = Vec::new();
    for i in 0..workers {
        let key = dir.join(format!("worker{i}.key"));
        let k = meshcast_control::identity::NodeKey::generate()?;
        k.save(&key)?;
        keys.push(format!("\"{}\"", hex::encode(k.public().to_bytes())));
        std::fs::write(
            dir.join(format!("worker{i}.toml")),
            format!(
                "[node]\nkey = \"{}\"\nhub = \"{hub}\"\n[worker]\nscratch_dir = \"{}\"\n",
                key.display(),
                dir.join(format!("scratch{i}")).display()
            ),
        )?;
    }
    let transcode = match &o.preset {
        Some(p) => format!("[transcode]\npreset = \"{p}\"\n"),
        None => String::new(),
    };
    std::fs::write(
        dir.join("hub.toml"),
        format!("[hub]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nedges = [\"http://127.0.0.1:9\"]\n[ledger]\nbonded_nodes = [{}]\n{transcode}", dir.join("data").display(), keys.join(", ")),
    )?;
    let mut procs = Procs(vec![spawn(
        &exe,
        &["hub", "--config", &dir.join("hub.toml").to_string_lossy()],
        &dir.join("hub.log"),
    )?]);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_hub(&client, &hub, dir, deadline).await?;
    for i in 0..workers {
        let cfg = dir.join(format!("worker{i}.toml"));
        procs.0.push(spawn(
            &exe,
            &["worker", "--config", &cfg.to_string_lossy()],
            &dir.join(format!("worker{i}.log")),
        )?);
    }
    wait_admitted(&client, &hub, workers, deadline).await?;
    let api_key = bench_account(&client, &hub, dir).await?;
    Ok((procs, hub, api_key))
}

/// A "bench" account made with the hub's admin key (in `dir/data`); its API key.
pub(crate) async fn bench_account(
    client: &reqwest::Client,
    hub: &str,
    dir: &Path,
) -> anyhow::Result<String> {
    let admin = std::fs::read_to_string(dir.join("data/admin.key"))?
        .trim()
        .to_string();
    let account = json(
        client
            .post(format!("{hub}/v1/accounts"))
            .bearer_auth(admin)
            .json(&json!({"name": "bench"})),
    )
    .await?;
    Ok(account["api_key"]
        .as_str()
        .context("no API key")?
        .to_string())
}

/// Uploads `source` over tus as the account of `api_key`; the video id and
/// a client that speaks for that account.
pub(crate) async fn upload(
    hub: &str,
    api_key: &str,
    source: &Path,
) -> anyhow::Result<(String, reqwest::Client)> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {api_key}").parse()?,
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let upload = meshcast_hub::tus_client::upload_file(
        &client,
        &format!("{hub}/v1/videos"),
        source,
        8 << 20,
        |_, _| {},
    )
    .await?;
    Ok((
        meshcast_hub::tus_client::video_id(&upload).to_string(),
        client,
    ))
}

/// One transcode of `source`: wall seconds, HUB CPU, workers' CPU, and
/// who did which chunk.
async fn one_run(o: &Options, dir: &Path, source: &Path, workers: usize) -> anyhow::Result<Value> {
    let (procs, hub, api_key) = start(o, dir, workers).await?;
    let pids: Vec<u32> = procs.0.iter().map(|c| c.id()).collect();
    let (id, client) = upload(&hub, &api_key, source).await?;
    let (hub_cpu0, workers_cpu0) = (cpu_with_children(&pids[..1]), cpu_with_children(&pids[1..]));
    let t0 = Instant::now();
    let video = loop {
        let v = json(client.get(format!("{hub}/v1/videos/{id}"))).await?;
        match v["status"].as_str() {
            Some("ready") => break v,
            Some("failed") => bail!("the transcode failed: {}", v["reason"]),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let hub_cpu = cpu_with_children(&pids[..1]) - hub_cpu0;
    let workers_cpu = cpu_with_children(&pids[1..]) - workers_cpu0;
    let chunks: Vec<Value> = video["chunks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!({"chunk": c["index"], "worker": c["worker"], "seconds": c["seconds"], "outcome": c["history"][0]["outcome"]}))
        .collect();
    drop(procs);
    Ok(
        json!({"workers": workers, "wall_s": wall, "hub_cpu_s": hub_cpu, "workers_cpu_s": workers_cpu,
              "total_cpu_s": hub_cpu + workers_cpu, "renditions": video["renditions"], "chunks": chunks}),
    )
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "meshcast-loadtest-transcode-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let source: PathBuf = dir.join("source.mp4");
    eprintln!("making a {} s 1080p source…", o.secs);
    make_source(&source, o.secs)?;
    eprintln!("the HUB alone…");
    let alone = one_run(&o, &dir.join("alone"), &source, 0).await?;
    eprintln!("the HUB with {} workers…", o.workers);
    let with = one_run(&o, &dir.join("workers"), &source, o.workers).await?;
    let ratio =
        |k: &str| with[k].as_f64().unwrap_or(0.0) / alone[k].as_f64().unwrap_or(1.0).max(1e-9);
    let report = json!({
        "source_secs": o.secs, "alone": alone, "with_workers": with,
        "wall_ratio": ratio("wall_s"), "cpu_ratio": with["total_cpu_s"].as_f64().unwrap_or(0.0) / alone["total_cpu_s"].as_f64().unwrap_or(1.0).max(1e-9),
        "hub_share_with_workers": with["hub_cpu_s"].as_f64().unwrap_or(0.0) / with["workers_cpu_s"].as_f64().unwrap_or(1.0).max(1e-9),
    });
    if o.common.json {
        println!("{report}");
    } else {
        println!(
            "| run | wall s | HUB CPU s | workers' CPU s | total CPU s |\n|---|---|---|---|---|"
        );
        for (name, r) in [
            ("HUB alone", &report["alone"]),
            ("HUB + workers", &report["with_workers"]),
        ] {
            println!(
                "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
                r["wall_s"].as_f64().unwrap_or(0.0),
                r["hub_cpu_s"].as_f64().unwrap_or(0.0),
                r["workers_cpu_s"].as_f64().unwrap_or(0.0),
                r["total_cpu_s"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "\nwith ÷ alone: wall {:.2}, CPU {:.2}; HUB CPU ÷ workers' CPU with workers: {:.2}",
            report["wall_ratio"].as_f64().unwrap_or(0.0),
            report["cpu_ratio"].as_f64().unwrap_or(0.0),
            report["hub_share_with_workers"].as_f64().unwrap_or(0.0)
        );
        println!("chunks: {}", report["with_workers"]["chunks"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
