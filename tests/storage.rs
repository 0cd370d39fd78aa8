//! Storage on the network end to end, with the real binaries: a hub, six
//! storage nodes (`meshcast worker` with the storage role; k = 4, m = 2)
//! and edges whose origin is the network. The shards land on distinct
//! nodes and hold no plaintext; the video plays through the edge from the
//! shards alone (the hub's copy of the media deleted), still does with
//! two storage nodes killed, is repaired back to six shards each, and
//! plays again with two more killed.

mod support;

use meshcast_control::identity::NodeKey;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::hub::*;
use support::{eventually, free_port, Edge};

struct StorageNode {
    child: Child,
    dir: PathBuf,
    id: String,
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_key(path: &std::path::Path) -> NodeKey {
    let key = NodeKey::generate().unwrap();
    key.save(path).unwrap();
    key
}

/// Writes a storage node's key and config (not started).
fn storage_config(hub: &Hub, i: usize) -> (PathBuf, NodeKey) {
    storage_config_with(hub, i, "1GiB").0
}

/// The same with this capacity; also the port it listens on.
fn storage_config_with(hub: &Hub, i: usize, capacity: &str) -> ((PathBuf, NodeKey), u16) {
    let port = free_port();
    let dir = hub.dir.join(format!("storage{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let key = node_key(&dir.join("node.key"));
    let text = format!(
        "[node]\nkey = \"{}\"\nhub = \"{}\"\nheartbeat = \"1s\"\n\
         [worker]\nroles = [\"storage\"]\nscratch_dir = \"{}\"\nstorage_dir = \"{}\"\ncapacity = \"{capacity}\"\nlisten = \"127.0.0.1:{port}\"\n",
        dir.join("node.key").display(),
        hub.url(""),
        dir.join("scratch").display(),
        dir.join("shards").display(),
    );
    std::fs::write(dir.join("worker.toml"), text).unwrap();
    ((dir, key), port)
}

fn start_storage(dir: PathBuf, key: &NodeKey) -> StorageNode {
    let child = Command::new(env!("CARGO_BIN_EXE_meshcast"))
        .args(["worker", "--config"])
        .arg(dir.join("worker.toml"))
        .env("MESHCAST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start meshcast worker");
    StorageNode {
        child,
        dir,
        id: key.id(),
    }
}

async fn wait_storage_nodes_up(hub: &Hub, n: usize) {
    eventually("storage nodes up", Duration::from_secs(30), || async {
        let v = get_json(&hub.client(), &hub.url("/v1/nodes")).await;
        let up = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["roles"][0] == "storage" && n["state"] == "up" && n["admitted"] == true)
            .count();
        (up >= n).then_some(()).ok_or(format!("{up} of {n}: {v}"))
    })
    .await
}

async fn wait_placed(hub: &Hub, id: &str) -> Value {
    eventually("the video placed", Duration::from_secs(60), || async {
        let url = hub.url(&format!("/v1/placements/{id}"));
        let r = hub.client().get(url).send().await.unwrap();
        match r.status().as_u16() {
            200 => Ok(r.json().await.unwrap()),
            s => Err(format!("placements answer {s}")),
        }
    })
    .await
}

/// Every file under `dir`, read.
fn files_in(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_file() {
            out.push(std::fs::read(e.path()).unwrap());
        }
    }
    out
}

/// The placement, once every shard is on a live node and each object's
/// shards are on distinct nodes (repair done).
async fn wait_repaired(hub: &Hub, id: &str, live: &BTreeSet<String>) -> Value {
    eventually("repaired", Duration::from_secs(60), || async {
        let placed = wait_placed(hub, id).await;
        let whole = placed["objects"].as_array().unwrap().iter().all(|o| {
            let on: BTreeSet<&str> = o["shards"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["node"].as_str().unwrap())
                .collect();
            on.len() == 6 && on.iter().all(|n| live.contains(*n))
        });
        whole.then_some(placed.clone()).ok_or(placed.to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_plays_from_shards_alone_survives_lost_nodes_and_is_repaired() {
    // The hub hands out three edges' URLs (the player page of each).
    let ports = [free_port(), free_port(), free_port()];
    let mut hub = Hub::config(&format!(
        "http://127.0.0.1:{}\", \"http://127.0.0.1:{}\", \"http://127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    ));
    let text = std::fs::read_to_string(&hub.config).unwrap()
        + "[storage]\ngrace = \"2s\"\nrepair_interval = \"500ms\"\n";
    std::fs::write(&hub.config, text).unwrap();
    let configs: Vec<(PathBuf, NodeKey)> = (0..8).map(|i| storage_config(&hub, i)).collect();
    let edge_keys: Vec<NodeKey> = (0..3).map(|_| NodeKey::generate().unwrap()).collect();
    let mut bonded: Vec<String> = configs
        .iter()
        .map(|(_, k)| hex::encode(k.public().to_bytes()))
        .collect();
    bonded.extend(edge_keys.iter().map(|k| hex::encode(k.public().to_bytes())));
    hub.bond_at_genesis(&bonded);
    hub.launch().await;
    let mut nodes: Vec<StorageNode> = configs
        .into_iter()
        .map(|(d, k)| start_storage(d, &k))
        .collect();
    wait_storage_nodes_up(&hub, 8).await;

    let src = hub.dir.join("clip.mp4");
    make_video(&src, 6, "640x360");
    let frames = count_frames(src.to_str().unwrap());
    let id = hub.publish(&src).await;
    let placed = wait_placed(&hub, &id).await;
    let objects = placed["objects"].as_array().unwrap().clone();
    assert!(
        objects.len() >= 4,
        "segments and init segments placed: {placed}"
    );
    let all: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
    for o in &objects {
        let on: BTreeSet<&str> = o["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["node"].as_str().unwrap())
            .collect();
        assert_eq!(on.len(), 6, "each shard of {} on its own node", o["path"]);
        assert!(on.iter().all(|n| all.contains(*n)));
    }
    // No storage node holds plaintext: no 64-byte window of any published
    // object appears in any shard file.
    let stored: Vec<Vec<u8>> = nodes
        .iter()
        .flat_map(|n| files_in(&n.dir.join("shards")))
        .collect();
    assert!(stored.len() >= objects.len() * 6);
    for o in &objects {
        let url = hub.url(&format!("/v/{id}/{}", o["path"].as_str().unwrap()));
        let plain = hub
            .client()
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let probe = &plain[plain.len() / 2..plain.len() / 2 + 64.min(plain.len() / 2)];
        assert!(
            !stored
                .iter()
                .any(|f| f.windows(probe.len()).any(|w| w == probe)),
            "plaintext of {} found on a storage node",
            o["path"]
        );
    }
    // The hub's copy of the media goes: only the network has it now.
    for o in &objects {
        let h = o["hash"].as_str().unwrap();
        std::fs::remove_file(hub.dir.join("data/blobs").join(&h[..2]).join(h)).unwrap();
    }
    let probe = hub.url(&format!("/v/{id}/{}", objects[0]["path"].as_str().unwrap()));
    assert_ne!(
        hub.client().get(&probe).send().await.unwrap().status(),
        200,
        "the hub still serves media"
    );

    let master = |edge: &Edge| edge.url(&format!("/v/{id}/master.m3u8"));
    // hls.js plays once, while this is the only edge: the player page
    // steers viewers among registered edges, and the ones killed below
    // stay registered for a while. ffprobe decodes every frame after.
    let players: Vec<String> = hub.video(&id).await["player"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let mut edge = network_edge_with(&hub, &edge_keys[0], ports[0]).await;
    assert_eq!(
        count_frames(&master(&edge)),
        frames,
        "every frame through the network origin"
    );
    let r = play_in_chromium(&players[0]);
    assert_eq!(r["ended"], true, "hls.js through the network edge: {r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert!(
        edge.metric("meshcast_network_objects_total{from=\"network\"}")
            .await
            >= objects.len() as f64 / 2.0
    );
    assert_eq!(
        edge.metric("meshcast_network_objects_total{from=\"hub\"}")
            .await,
        0.0
    );
    edge.kill();

    // m = 2 storage nodes die: a fresh edge (empty cache) still plays it all.
    let dying: BTreeSet<&str> = nodes[6..].iter().map(|n| n.id.as_str()).collect();
    let lost_shards = objects
        .iter()
        .flat_map(|o| o["shards"].as_array().unwrap())
        .filter(|s| dying.contains(s["node"].as_str().unwrap()))
        .count();
    nodes.truncate(6);
    let mut edge = network_edge_with(&hub, &edge_keys[1], ports[1]).await;
    assert_eq!(
        count_frames(&master(&edge)),
        frames,
        "every frame with two storage nodes gone"
    );
    assert_eq!(
        edge.metric("meshcast_network_objects_total{from=\"hub\"}")
            .await,
        0.0
    );
    assert!(
        edge.metric("meshcast_network_shards_total{outcome=\"failed\"}")
            .await
            > 0.0,
        "some shards were on the dead nodes"
    );
    edge.kill();

    // Repair puts the lost shards back on the six that live: k + m again.
    let live: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
    wait_repaired(&hub, &id, &live).await;
    let repaired: f64 = hub_metric(&hub, "meshcast_hub_shards_repaired_total").await;
    // Every shard that was on the dead nodes is rebuilt and counted (more
    // only if a live node was ever late past its grace).
    assert!(
        repaired >= lost_shards as f64,
        "{repaired} shards rebuilt, {lost_shards} were on the dead nodes"
    );

    // Two more die (four of eight left): it still plays, from shards alone.
    nodes.truncate(4);
    let mut edge = network_edge_with(&hub, &edge_keys[2], ports[2]).await;
    assert_eq!(
        count_frames(&master(&edge)),
        frames,
        "every frame after repair and two more lost"
    );
    assert_eq!(
        edge.metric("meshcast_network_objects_total{from=\"hub\"}")
            .await,
        0.0
    );
    edge.kill();
    hub.kill();
}

async fn hub_metric(hub: &Hub, name: &str) -> f64 {
    let text = hub
        .client()
        .get(hub.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// An edge whose one site's origin is the network, with this node key.
async fn network_edge_with(hub: &Hub, key: &NodeKey, port: u16) -> Edge {
    let mut edge = Edge::config(hub.addr(), "");
    edge.port = port;
    key.save(&edge.dir.join("node.key")).unwrap();
    let node = format!(
        "[node]\nkey = \"{}\"\nhub = \"{}\"\nadvertise = \"{}\"\nstate_dir = \"{}\"\nheartbeat = \"1s\"\n",
        edge.dir.join("node.key").display(),
        hub.url(""),
        edge.url(""),
        edge.dir.join("state").display()
    );
    edge.write_config(hub.addr(), &node);
    let text = std::fs::read_to_string(&edge.config).unwrap().replace(
        &format!("origin = \"http://{}\"", hub.addr()),
        "origin = \"network\"",
    );
    std::fs::write(&edge.config, text).unwrap();
    edge.launch().await;
    // Registered (so the hub answers its placement questions).
    let id = key.id();
    eventually("the edge admitted", Duration::from_secs(20), || async {
        let v = get_json(&hub.client(), &hub.url("/v1/nodes")).await;
        let nodes = v["nodes"].as_array().unwrap();
        let admitted = nodes
            .iter()
            .any(|n| n["id"] == id.as_str() && n["admitted"] == true);
        admitted.then_some(()).ok_or(v.to_string())
    })
    .await;
    edge
}

/// What a storage node keeps: only shards its HUB signed for, each once,
/// with the bytes the HUB signed, within its capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_node_keeps_only_what_its_hub_signed_for() {
    use meshcast_control::envelope::Envelope;
    use meshcast_control::placement::{Store, STORE};
    let mut hub = Hub::config("http://127.0.0.1:9");
    let ((dir, key), port) = storage_config_with(&hub, 0, "8KiB");
    hub.bond_at_genesis(&[hex::encode(key.public().to_bytes())]);
    hub.launch().await;
    let _node = start_storage(dir, &key);
    wait_storage_nodes_up(&hub, 1).await;
    let hub_key = NodeKey::load(&hub.dir.join("data/hub.key")).unwrap();
    let http = reqwest::Client::new();
    let url = |name: &str| format!("http://127.0.0.1:{port}/v1/shards/{name}");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let sign = |by: &NodeKey, name: &str, bytes: &[u8]| {
        let store = Store {
            shard: name.into(),
            len: bytes.len() as u64,
            root: *blake3::hash(bytes).as_bytes(),
        };
        hex::encode(
            Envelope::seal(by, STORE, serde_json::to_vec(&store).unwrap(), now())
                .unwrap()
                .encode(),
        )
    };
    let put = |name: &str, header: Option<String>, body: Vec<u8>| {
        let mut r = http.put(url(name)).body(body);
        if let Some(h) = header {
            r = r.header(meshcast_control::placement::STORE_HEADER, h);
        }
        r.send()
    };
    let bytes = vec![7u8; 4096];
    assert_eq!(
        put("v/a/0", None, bytes.clone()).await.unwrap().status(),
        401,
        "unsigned"
    );
    let stranger = NodeKey::generate().unwrap();
    assert_eq!(
        put(
            "v/a/0",
            Some(sign(&stranger, "v/a/0", &bytes)),
            bytes.clone()
        )
        .await
        .unwrap()
        .status(),
        403,
        "not the hub"
    );
    assert_eq!(
        put(
            "v/a/0",
            Some(sign(&hub_key, "v/a/0", &bytes)),
            vec![8u8; 4096]
        )
        .await
        .unwrap()
        .status(),
        400,
        "other bytes"
    );
    assert_eq!(
        put(
            "v/a/0",
            Some(sign(&hub_key, "v/b/0", &bytes)),
            bytes.clone()
        )
        .await
        .unwrap()
        .status(),
        400,
        "another name"
    );
    let signed = sign(&hub_key, "v/a/0", &bytes);
    assert_eq!(
        put("v/a/0", Some(signed.clone()), bytes.clone())
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        put("v/a/0", Some(signed), bytes.clone())
            .await
            .unwrap()
            .status(),
        401,
        "replayed"
    );
    let got = http.get(url("v/a/0")).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert_eq!(
        http.get(url("v/none/0")).send().await.unwrap().status(),
        404
    );
    // A slice proves itself against the root the hub keeps.
    let slice = http
        .get(format!(
            "http://127.0.0.1:{port}/v1/slices/v/a/0?start=1024&len=1024"
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let root = *blake3::hash(&bytes).as_bytes();
    assert_eq!(
        meshcast_shards::verify(&root, 4096, (1024, 1024), &slice).unwrap(),
        vec![7u8; 1024]
    );
    // 4 KiB kept of 8: another 8 KiB does not fit.
    let big = vec![9u8; 8192];
    assert_eq!(
        put("v/c/0", Some(sign(&hub_key, "v/c/0", &big)), big)
            .await
            .unwrap()
            .status(),
        507,
        "full"
    );
    hub.kill();
}

async fn node_json(hub: &Hub, id: &str) -> Value {
    let v = get_json(&hub.client(), &hub.url("/v1/nodes")).await;
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap()
}

async fn stake(hub: &Hub, key: &NodeKey) -> u64 {
    let addr = hex::encode(key.public().to_bytes());
    let v = get_json(
        &hub.client(),
        &hub.url(&format!("/v1/ledger/accounts/{addr}")),
    )
    .await;
    v["account"]["stake"].as_u64().unwrap_or(0)
}

/// Audits against three cheaters and three honest nodes: one that dropped
/// half of every shard, one that flipped a byte in each, one that stopped
/// answering (frozen with SIGSTOP). The cheaters are slashed on the chain
/// with evidence; the honest ones pass every audit and keep their stake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_slash_nodes_that_lost_altered_or_sat_on_shards_and_never_an_honest_one() {
    let mut hub = Hub::config("http://127.0.0.1:9");
    let text = std::fs::read_to_string(&hub.config).unwrap()
        + "[storage]\naudit_interval = \"1s\"\naudit_timeout = \"2s\"\nslash_after = 2\ngrace = \"1h\"\n";
    std::fs::write(&hub.config, text).unwrap();
    let configs: Vec<(PathBuf, NodeKey)> = (0..6).map(|i| storage_config(&hub, i)).collect();
    let keys: Vec<NodeKey> = configs
        .iter()
        .map(|(_, k)| NodeKey::from_seed(k.seed()))
        .collect();
    hub.bond_at_genesis(
        &keys
            .iter()
            .map(|k| hex::encode(k.public().to_bytes()))
            .collect::<Vec<_>>(),
    );
    hub.launch().await;
    let nodes: Vec<StorageNode> = configs
        .into_iter()
        .map(|(d, k)| start_storage(d, &k))
        .collect();
    wait_storage_nodes_up(&hub, 6).await;
    let src = hub.dir.join("clip.mp4");
    make_video(&src, 6, "640x360");
    let id = hub.publish(&src).await;
    wait_placed(&hub, &id).await;
    let before = stake(&hub, &keys[0]).await;
    assert!(before > 0);

    let shard_files = |n: &StorageNode| -> Vec<PathBuf> {
        std::fs::read_dir(n.dir.join("shards"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "shard"))
            .collect()
    };
    for f in shard_files(&nodes[0]) {
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }
    for f in shard_files(&nodes[1]) {
        let mut b = std::fs::read(&f).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x01;
        std::fs::write(&f, b).unwrap();
    }
    let frozen = nodes[2].child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &frozen])
        .status()
        .unwrap()
        .success());

    eventually("every cheater slashed", Duration::from_secs(90), || async {
        let mut slashed = Vec::new();
        for n in &nodes[..3] {
            let rec = node_json(&hub, &n.id).await;
            slashed.push(!rec["slashes"].as_array().unwrap().is_empty());
        }
        slashed
            .iter()
            .all(|s| *s)
            .then_some(())
            .ok_or(format!("{slashed:?}"))
    })
    .await;
    let _ = Command::new("kill").args(["-CONT", &frozen]).status();
    for (i, n) in nodes[..3].iter().enumerate() {
        let rec = node_json(&hub, &n.id).await;
        let slash = &rec["slashes"][0];
        assert!(
            slash["reason"].as_str().unwrap().contains("storage audits"),
            "{rec}"
        );
        let ev = get_json(
            &hub.client(),
            &hub.url(&format!(
                "/v1/evidence/{}",
                slash["evidence"].as_str().unwrap()
            )),
        )
        .await;
        assert!(ev["also"].as_str().unwrap().contains("challenge"), "{ev}");
        let audits = &rec["audits"];
        match i {
            2 => assert!(audits["late"].as_u64().unwrap() >= 2, "{audits}"),
            _ => assert!(audits["failed"].as_u64().unwrap() >= 2, "{audits}"),
        }
        // The chain takes the slash: stake down by slash_bps (5 %) at least once.
        eventually(
            "the cheater's stake slashed",
            Duration::from_secs(30),
            || async {
                let now = stake(&hub, &keys[i]).await;
                (now < before)
                    .then_some(())
                    .ok_or(format!("node {i}: {now}"))
            },
        )
        .await;
    }
    // The honest three passed audits, none failed, stake whole. Each round
    // audits the nodes one after another, so an honest node's second audit
    // may come after a cheater's second failure: wait for it.
    for (i, n) in nodes.iter().enumerate().skip(3) {
        eventually(
            "an honest node audited twice",
            Duration::from_secs(30),
            || async {
                let rec = node_json(&hub, &n.id).await;
                let passed = rec["audits"]["passed"].as_u64().unwrap_or(0);
                (passed >= 2)
                    .then_some(())
                    .ok_or(format!("node {i}: {rec}"))
            },
        )
        .await;
        let rec = node_json(&hub, &n.id).await;
        let a = &rec["audits"];
        assert_eq!(
            (a["failed"].as_u64(), a["late"].as_u64()),
            (Some(0), Some(0)),
            "{rec}"
        );
        assert!(rec["slashes"].as_array().unwrap().is_empty(), "{rec}");
        assert_eq!(stake(&hub, &keys[i]).await, before);
    }
    hub.kill();
}
