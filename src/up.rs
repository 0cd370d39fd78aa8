//! `meshcast up`: a whole network on this machine — a hub and two edges on
//! free loopback ports, each its own `meshcast` process — then a demo video
//! (or `--video FILE`) uploaded over tus, transcoded, and its URLs printed.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meshcast_ports::Ports;

pub struct UpArgs {
    pub dir: PathBuf,
    pub video: Option<PathBuf>,
    pub ready_file: Option<PathBuf>,
}

/// The processes `meshcast up` started, each with its name and log, killed
/// when dropped.
struct Children(Vec<Node>);

struct Node {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Children {
    fn start(&mut self, exe: &Path, role: &str, config: &Path, name: &str) -> anyhow::Result<()> {
        let log = config.with_file_name(format!("{name}.log"));
        let config = config.to_string_lossy();
        let child = spawn(exe, &[role, "--config", &config], &log)?;
        self.0.push(Node {
            name: name.to_string(),
            child,
            log,
        });
        Ok(())
    }

    /// An error naming the first process that exited, with the end of its
    /// log (what it said on the way out).
    fn check_running(&mut self) -> anyhow::Result<()> {
        for n in &mut self.0 {
            if let Some(status) = n.child.try_wait()? {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let mut tail: Vec<&str> = text.lines().rev().take(5).collect();
                tail.reverse();
                bail!(
                    "{} exited during start-up ({status}); the end of {}:\n{}",
                    n.name,
                    n.log.display(),
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for n in &mut self.0 {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

/// The npm `node_modules` holding hls.js and dash.js, if set up.
fn find_assets() -> Option<PathBuf> {
    let mut candidates = vec![std::env::current_dir().ok()?.join("node_modules")];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            candidates.push(dir.join("node_modules"));
        }
    }
    candidates
        .into_iter()
        .find(|d| d.join("hls.js/dist/hls.min.js").is_file())
}

fn spawn(exe: &Path, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(exe)
        .args(args)
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

async fn wait_healthy(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    children: &mut Children,
) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        children.check_running()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not become healthy at {url}")
}

/// Waits until the hub admits `n` nodes (registered, up, staked): only
/// then does it steer viewers to edges and chunks to workers.
async fn wait_admitted(
    client: &reqwest::Client,
    hub: &str,
    n: usize,
    children: &mut Children,
) -> anyhow::Result<()> {
    let mut last = Value::Null;
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{hub}/v1/nodes")).send().await {
            last = r.json().await.unwrap_or_default();
            let admitted = last["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["admitted"] == true && n["state"] == "up")
                .count();
            if admitted >= n {
                return Ok(());
            }
        }
        children.check_running()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the hub did not admit {n} nodes within 20 s; its nodes: {last}")
}

/// Storage nodes `meshcast up` runs (for 2 data + 1 parity shard).
const STORAGE_NODES: usize = 3;

/// Waits until the video's shards are on the storage nodes.
async fn wait_placed(client: &reqwest::Client, hub: &str, id: &str) -> anyhow::Result<()> {
    let bar = ProgressBar::new_spinner().with_message("placing shards on the storage nodes");
    for _ in 0..1200 {
        bar.tick();
        let r = client
            .get(format!("{hub}/v1/placements/{id}"))
            .send()
            .await?;
        if r.status().is_success() {
            bar.finish_with_message("placed on the storage nodes");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the video was not placed on the storage nodes within 2 minutes; see hub.log")
}

/// Creates the demo account with the hub's admin key; returns its API key.
async fn demo_account(
    client: &reqwest::Client,
    hub: &str,
    admin_key: &Path,
) -> anyhow::Result<String> {
    let admin = std::fs::read_to_string(admin_key)
        .with_context(|| format!("reading the hub's admin key {}", admin_key.display()))?;
    let r = client
        .post(format!("{hub}/v1/accounts"))
        .bearer_auth(admin.trim())
        .json(&json!({ "name": "demo" }))
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or_default();
    match v["api_key"].as_str() {
        Some(k) if status.is_success() => Ok(k.to_string()),
        _ => bail!(
            "the hub did not create the demo account ({status}): {}",
            v["error"]
        ),
    }
}

/// An HTTP client that sends `key` as its bearer token.
fn authorized(key: &str) -> anyhow::Result<reqwest::Client> {
    let mut value: reqwest::header::HeaderValue = format!("Bearer {key}").parse()?;
    value.set_sensitive(true);
    let headers = reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

fn make_demo_video(path: &Path) -> anyhow::Result<()> {
    eprintln!("making a 20 s 720p demo video with ffmpeg…");
    let status = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
            "-f",
            "lavfi",
        ])
        .args([
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "20",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-preset", "veryfast", "-c:a", "aac", "-shortest"])
        .arg(path)
        .status()
        .map_err(|e| {
            anyhow::anyhow!("cannot run ffmpeg ({e}); install it with `apt-get install ffmpeg`")
        })?;
    if !status.success() {
        bail!("ffmpeg could not make the demo video");
    }
    Ok(())
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)?;
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    let mut ports = Ports::new();
    let (hub_port, e1, a1, e2, a2) = (
        ports.take()?,
        ports.take()?,
        ports.take()?,
        ports.take()?,
        ports.take()?,
    );
    let hub_url = format!("http://127.0.0.1:{hub_port}");
    let edges = [
        format!("http://127.0.0.1:{e1}"),
        format!("http://127.0.0.1:{e2}"),
    ];
    let assets = find_assets();
    if assets.is_none() {
        eprintln!("note: hls.js/dash.js not found (run `npm ci` in the repository); the player page will not play");
    }
    // The edges' keys first: the hub's own chain starts with them bonded
    // (the demo's faucet), so they are admitted from the first block.
    let mut edge_keys = Vec::new();
    for name in [
        "edge1", "edge2", "worker1", "worker2", "storage1", "storage2", "storage3",
    ] {
        let key = dir.join(format!("{name}.key"));
        if !key.exists() {
            meshcast_control::identity::NodeKey::generate()?.save(&key)?;
        }
        let public = meshcast_control::identity::NodeKey::load(&key)?
            .public()
            .to_bytes();
        edge_keys.push(format!("\"{}\"", hex::encode(public)));
    }
    let hub_toml =
        format!(
        "[hub]\nlisten = \"127.0.0.1:{hub_port}\"\ndata_dir = \"{}\"\nedges = [\"{}\", \"{}\"]\n{}[ledger]\nbonded_nodes = [{}]\ndelivery_epoch = \"10s\"\n[transcode]\nchunk_segments = 2\n[storage]\ndata_shards = 2\nparity_shards = 1\n",
        dir.join("hub").display(),
        edges[0],
        edges[1],
        assets.map(|a| format!("assets_dir = \"{}\"\n", a.display())).unwrap_or_default(),
        edge_keys.join(", ")
    );
    std::fs::write(dir.join("hub.toml"), hub_toml)?;
    for (i, (port, admin)) in [(e1, a1), (e2, a2)].into_iter().enumerate() {
        let key = dir.join(format!("edge{}.key", i + 1));
        // Media under /v/ needs a playback token; the player page and its
        // scripts do not. The epoch length is the network's (10 s, set in
        // the hub's genesis, so credits show up within seconds).
        let edge_toml = format!(
            "[edge]\nlisten = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin}\"\n[cache]\ndir = \"{}\"\ndisk_size = \"2GiB\"\nmemory_size = \"256MiB\"\n[log]\naccess = \"{}\"\n[node]\nkey = \"{}\"\nhub = \"{hub_url}\"\nadvertise = \"{}\"\nstate_dir = \"{}\"\nack_grace = \"3s\"\n[[site]]\nhosts = [\"*\"]\norigin = \"network\"\n[site.tokens]\npaths = [\"/v/\"]\n",
            dir.join(format!("edge{}-cache", i + 1)).display(),
            dir.join(format!("edge{}-access.log", i + 1)).display(),
            key.display(),
            edges[i],
            dir.join(format!("edge{}-state", i + 1)).display(),
        );
        std::fs::write(dir.join(format!("edge{}.toml", i + 1)), edge_toml)?;
    }
    // Two workers share the transcoding (8 s chunks, so the demo's 20 s
    // go to both).
    for i in 1..=2 {
        let worker_toml = format!(
            "[node]\nkey = \"{}\"\nhub = \"{hub_url}\"\n[worker]\nroles = [\"transcode\"]\nscratch_dir = \"{}\"\n",
            dir.join(format!("worker{i}.key")).display(),
            dir.join(format!("worker{i}-scratch")).display(),
        );
        std::fs::write(dir.join(format!("worker{i}.toml")), worker_toml)?;
    }
    // Three storage nodes keep the media as 2 + 1 shards (any two give
    // it back); the edges' origin is the network.
    for i in 1..=STORAGE_NODES {
        let storage_toml = format!(
            "[node]\nkey = \"{}\"\nhub = \"{hub_url}\"\n[worker]\nroles = [\"storage\"]\nscratch_dir = \"{}\"\nstorage_dir = \"{}\"\ncapacity = \"10GiB\"\nlisten = \"127.0.0.1:{}\"\n",
            dir.join(format!("storage{i}.key")).display(),
            dir.join(format!("storage{i}-scratch")).display(),
            dir.join(format!("storage{i}-shards")).display(),
            ports.take()?,
        );
        std::fs::write(dir.join(format!("storage{i}.toml")), storage_toml)?;
    }
    let mut children = Children(Vec::new());
    children.start(&exe, "hub", &dir.join("hub.toml"), "hub")?;
    for name in ["edge1", "edge2"] {
        children.start(&exe, "edge", &dir.join(format!("{name}.toml")), name)?;
    }
    for i in 1..=2 {
        let name = format!("worker{i}");
        children.start(&exe, "worker", &dir.join(format!("{name}.toml")), &name)?;
    }
    for i in 1..=STORAGE_NODES {
        let name = format!("storage{i}");
        children.start(&exe, "worker", &dir.join(format!("{name}.toml")), &name)?;
    }
    let client = reqwest::Client::new();
    for (url, what) in [
        (format!("{hub_url}/healthz"), "the hub"),
        (format!("http://127.0.0.1:{a1}/healthz"), "edge 1"),
        (format!("http://127.0.0.1:{a2}/healthz"), "edge 2"),
    ] {
        wait_healthy(&client, &url, what, &mut children).await?;
    }
    wait_admitted(
        &client,
        &hub_url,
        edges.len() + 2 + STORAGE_NODES,
        &mut children,
    )
    .await?;
    let api_key = demo_account(&client, &hub_url, &dir.join("hub").join("admin.key")).await?;
    let client = authorized(&api_key)?;
    eprintln!(
        "hub {hub_url}, edges {} and {}, two transcode workers, three storage nodes (registered, staked, admitted)",
        edges[0], edges[1]
    );

    let video = match args.video {
        Some(v) => v,
        None => {
            let demo = dir.join("demo.mp4");
            if !demo.is_file() {
                make_demo_video(&demo)?;
            }
            demo
        }
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("upload     [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template"),
    );
    let upload = meshcast_hub::tus_client::upload_file(
        &client,
        &format!("{hub_url}/v1/videos"),
        &video,
        4 << 20,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .await?;
    bar.finish();
    let id = meshcast_hub::tus_client::video_id(&upload).to_string();
    let bar = ProgressBar::new(100).with_style(
        ProgressStyle::with_template("transcode  [{bar:40}] {pos}% {msg}").expect("valid template"),
    );
    let status: Value = loop {
        let v: Value = client
            .get(format!("{hub_url}/v1/videos/{id}"))
            .send()
            .await?
            .json()
            .await?;
        bar.set_position(v["percent"].as_f64().unwrap_or(0.0) as u64);
        bar.set_message(v["status"].as_str().unwrap_or("").to_string());
        match v["status"].as_str() {
            Some("ready") => break v,
            Some("failed") => {
                bar.abandon();
                bail!(
                    "the video failed: {}",
                    v["reason"].as_str().unwrap_or("no reason given")
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    bar.finish_with_message("ready");
    wait_placed(&client, &hub_url, &id).await?;
    // A token for a session key of our own: good for watching with any
    // player (ffmpeg, VLC); `meshcast play --ack` gets its own to ack with.
    let session = meshcast_control::identity::NodeKey::generate()?;
    let tok: Value = client
        .post(format!("{hub_url}/v1/videos/{id}/tokens"))
        .json(&json!({ "session": hex::encode(session.public().to_bytes()) }))
        .send()
        .await?
        .json()
        .await?;
    if tok["token"].as_str().is_none() {
        bail!("the hub issued no playback token: {}", tok["error"]);
    }
    let ready = json!({
        "hub": hub_url,
        "api_key": api_key,
        "edges": edges,
        "ledger": format!("{hub_url}/v1/ledger/status"),
        "placement": format!("{hub_url}/v1/placements/{id}"),
        "videos": [{ "id": id, "hls": tok["hls"], "dash": tok["dash"], "player": status["player"],
                     "token_expires": tok["expires"] }],
    });
    println!("\nmeshcast is up. Video {id}:");
    for (i, edge) in edges.iter().enumerate() {
        println!("  edge {} ({edge})", i + 1);
        println!("    player {}", status["player"][i].as_str().unwrap_or("-"));
    }
    println!("  HLS and DASH with a token the hub steered to its chosen edges:");
    for (hls, dash) in tok["hls"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(tok["dash"].as_array().into_iter().flatten())
    {
        println!("    HLS    {}", hls.as_str().unwrap_or("-"));
        println!("    DASH   {}", dash.as_str().unwrap_or("-"));
    }
    println!(
        "Watch and acknowledge: meshcast play --ack {}",
        tok["hls"][0].as_str().unwrap_or("-")
    );
    println!("Demo account API key:  {api_key}");
    println!("Console (sign in with it): {hub_url}/console   API reference: {hub_url}/docs/api");
    println!(
        "Upload another video:  curl -H 'Authorization: Bearer {api_key}' -H 'Tus-Resumable: 1.0.0' -H \"Upload-Length: $(stat -c %s my.mp4)\" -X POST -i {hub_url}/v1/videos   (then PATCH the file to the Location it returns; any tus client works)"
    );
    println!("Where its shards are:  {hub_url}/v1/placements/{id}");
    println!("Delivery credits:      {hub_url}/v1/nodes");
    println!("Ledger (rewards paid): {hub_url}/v1/ledger/status, /v1/ledger/accounts/<edge key>");
    println!("Data and logs: {}\nCtrl-C stops everything.", dir.display());
    if let Some(path) = &args.ready_file {
        std::fs::write(path, serde_json::to_vec_pretty(&ready)?)?;
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
    }
    eprintln!("stopping…");
    drop(children);
    Ok(())
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
