//! Proof of delivery end to end through the real binaries: a hub, an edge
//! with a node key, players (`meshcast play --ack`, hls.js in Chromium with
//! the plugin) and the hub's credits. Plus what the edge and hub refuse,
//! each with its reason. The audit's sampling cases (fabricated entries,
//! bad Merkle paths, cross-epoch replays inside a claim) are simulated
//! deterministically in control/tests/audit.rs.

mod support;

use base64::Engine;
use meshcast_control::identity::NodeKey;
use meshcast_control::receipt::{Ack, SealedReceipt};
use meshcast_control::token::{self, TokenClaims};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::hub::*;
use support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

struct Net {
    hub: Hub,
    edge: Edge,
    id: String,
    node: String,
}

async fn network() -> Net {
    let edge_port = free_port();
    let mut hub = Hub::config(&format!("http://127.0.0.1:{edge_port}"));
    let mut edge = Edge::config(hub.addr(), "");
    hub.bond_at_genesis(&[edge_key(&edge)]);
    hub.launch().await;
    edge.port = edge_port;
    edge.write_config(hub.addr(), &node_extra(&edge, &hub));
    let edge = edge.start().await;
    let node = NodeKey::load(&edge.dir.join("node.key")).unwrap().id();
    let src = hub.dir.join("clip.mp4");
    make_video(&src, 4, "640x360");
    let id = hub.publish(&src).await;
    Net {
        hub,
        edge,
        id,
        node,
    }
}

async fn node_record(hub: &Hub, node: &str) -> Option<Value> {
    let v: Value = reqwest::get(hub.url("/v1/nodes"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == node)
        .cloned()
}

/// Waits until `account` holds `balance` on the hub's ledger; fails on more.
async fn wait_balance(hub: &Hub, account: &str, balance: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(&hub.url(&format!("/v1/ledger/accounts/{account}")), &[]).await;
        let got = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["account"]["balance"].as_u64())
            .unwrap_or(0);
        assert!(got <= balance, "paid {got} > {balance}");
        if got == balance {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "ledger balance {got}, waiting for {balance}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the hub has credited `node` with `bytes`; fails on more.
async fn wait_credit(hub: &Hub, node: &str, bytes: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(n) = node_record(hub, node).await {
            let credited = n["credited_bytes"].as_u64().unwrap_or(0);
            assert!(
                credited <= bytes,
                "credited {credited} > delivered {bytes}: {n}"
            );
            if credited == bytes {
                return n;
            }
        }
        assert!(
            Instant::now() < deadline,
            "credit never reached {bytes}: {:?}",
            node_record(hub, node).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn play(url: &str) -> Value {
    meshcast_play(&["--ack", "--json", url])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshcast_play_acks_are_credited_exactly_across_crashes() {
    let mut net = network().await;
    let url = net.edge.url(&format!("/v/{}/master.m3u8", net.id));
    let report = play(&url);
    let bytes = report["receipt_bytes"].as_u64().unwrap();
    assert!(bytes > 100_000, "{report}");
    assert_eq!(report["acked_bytes"].as_u64(), Some(bytes), "{report}");
    // Playlists were fetched but are not paid media.
    assert!(report["bytes"].as_u64().unwrap() > bytes, "{report}");
    assert_eq!(report["acks_accepted"], report["receipts"], "{report}");
    assert!(report["segments"].as_u64().unwrap() >= 2, "{report}");

    // Kill both mid-epoch: the acks are only in the edge's fsync'd log.
    net.hub.kill();
    net.edge.kill();
    // The network's epoch length, learned from the hub, is kept: the log
    // on disk is numbered by it, and the hub is away at the restart.
    let network: Value =
        serde_json::from_slice(&std::fs::read(net.edge.dir.join("state/network.json")).unwrap())
            .unwrap();
    assert_eq!(network["epoch_secs"], 2, "{network}");
    net.edge.launch().await;
    // The hub is away: the edge serves on, with the issuers it saved.
    let token_path = report["url"].as_str().unwrap().to_string();
    let r = get(&token_path.replace("master.m3u8", "audio/init.mp4"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.headers.contains_key("meshcast-receipt"));
    tokio::time::sleep(Duration::from_secs(6)).await; // epoch sealed, claim fails
    assert!(net.edge.metric("meshcast_hub_reachable").await < 1.0);
    let logs: Vec<_> = std::fs::read_dir(net.edge.dir.join("state/acks"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .collect();
    assert!(!logs.is_empty(), "the acks wait in the log for the hub");

    net.hub.launch().await;
    let n = wait_credit(&net.hub, &net.node, bytes).await;
    assert_eq!(n["claims_rejected"], 0, "{n}");
    assert_eq!(n["state"], "up");
    // Credits survive a hub restart.
    net.hub.kill();
    net.hub.launch().await;
    let n = node_record(&net.hub, &net.node).await.unwrap();
    assert_eq!(n["credited_bytes"].as_u64(), Some(bytes), "{n}");
    // The hub's ledger paid the edge for exactly those bytes (1 000 000
    // µMESH per GB on a hub's own chain), once, across the restart.
    let edge_key = hex::encode(
        NodeKey::load(&net.edge.dir.join("node.key"))
            .unwrap()
            .public()
            .to_bytes(),
    );
    let paid = bytes * 1_000_000 / 1_000_000_000;
    let balance = wait_balance(&net.hub, &edge_key, paid).await;
    assert_eq!(balance, paid);

    // --realtime takes about the video's length (4 s), not as fast as it
    // can; with the token from before it checks receipts but sends no acks.
    let t = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshcast"))
        .args(["play", "--realtime", &token_path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("receipts checked, 0 acks sent"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_players_with_the_plugin_are_credited_exactly() {
    let net = network().await;
    let mut credited = 0;
    for engine in ["hls", "dash", "shaka"] {
        let page = net.edge.url(&format!("/play/{}?engine={engine}", net.id));
        let result = play_in_chromium(&page);
        assert_eq!(result["ended"], true, "{engine}: {result}");
        assert_eq!(result["errors"], json!([]), "{engine}: {result}");
        let acks = &result["acks"];
        let acked = acks["ackedBytes"].as_u64().unwrap();
        assert!(acked > 100_000, "{engine}: {result}");
        assert_eq!(acks["bytes"].as_u64(), Some(acked), "{engine}: {result}");
        assert_eq!(acks["acked"], acks["receipts"], "{engine}: {result}");
        assert_eq!(acks["errors"], json!([]), "{engine}: {result}");
        // Each viewer is credited exactly what it acknowledged, no more.
        credited += acked;
        wait_credit(&net.hub, &net.node, credited).await;
    }
}

/// A token from the hub's own key, with the claims a test wants.
fn hub_token(net: &Net, session: [u8; 32], prefix: &str, expires: u64, budget: u64) -> String {
    steered_hub_token(net, session, prefix, expires, budget, Vec::new())
}

/// `hub_token` naming `edges` (empty: any edge).
fn steered_hub_token(
    net: &Net,
    session: [u8; 32],
    prefix: &str,
    expires: u64,
    budget: u64,
    edges: Vec<[u8; 32]>,
) -> String {
    let key = NodeKey::load(&net.hub.dir.join("data/hub.key")).unwrap();
    let claims = TokenClaims {
        issuer: key.public().to_bytes(),
        prefix: prefix.into(),
        expires,
        budget,
        session,
        edges,
    };
    token::issue(&key, &claims, now()).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn post_acks(edge: &Edge, token: &str, acks: &[(String, [u8; 64])]) -> Value {
    let body = json!({
        "token": token,
        "acks": acks.iter().map(|(r, s)| json!({"receipt": r, "sig": B64.encode(s)})).collect::<Vec<_>>(),
    });
    reqwest::Client::new()
        .post(edge.url("/v1/acks"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn reason(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_acks_are_refused_with_reasons() {
    let net = network().await;
    // Wait for the edge to learn the hub's issuers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_record(&net.hub, &net.node).await.is_none() {
        assert!(Instant::now() < deadline, "edge never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(
        "the edge to learn the hub's issuers",
        Duration::from_secs(10),
        || async {
            match net.edge.metric("meshcast_hub_issuers").await {
                n if n >= 1.0 => Ok(()),
                n => Err(format!("{n} issuers")),
            }
        },
    )
    .await;
    let seg = format!("/v/{}/360p/init.mp4", net.id);
    let prefix = format!("/v/{}/", net.id);
    let session = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let spk = session.verifying_key().to_bytes();

    let r = get(&net.edge.url(&seg), &[]).await;
    assert_eq!(r.status, 403);
    assert!(
        reason(&r).contains("missing playback token"),
        "{}",
        reason(&r)
    );
    let expired = hub_token(&net, spk, &prefix, now() - 10, 1 << 30);
    let r = get(&net.edge.url(&format!("/t/{expired}{seg}")), &[]).await;
    assert_eq!(r.status, 403);
    assert!(reason(&r).contains("expired"), "{}", reason(&r));
    let other = hub_token(&net, spk, "/v/someoneelse/", now() + 600, 1 << 30);
    let r = get(&net.edge.url(&format!("/t/{other}{seg}")), &[]).await;
    assert!(reason(&r).contains("covers"), "{}", reason(&r));
    let stranger = NodeKey::generate().unwrap();
    let forged = token::issue(
        &stranger,
        &TokenClaims {
            issuer: stranger.public().to_bytes(),
            prefix: prefix.clone(),
            expires: now() + 600,
            budget: 1 << 30,
            session: spk,
            edges: Vec::new(),
        },
        now(),
    )
    .unwrap();
    let r = get(&net.edge.url(&format!("/t/{forged}{seg}")), &[]).await;
    assert!(reason(&r).contains("not trusted"), "{}", reason(&r));

    // Steering. A stranger registers an edge of its own (no stake): the
    // hub's tokens still name only the admitted edge, at its address.
    let stranger_env = registration(&stranger);
    let r = reqwest::Client::new()
        .post(net.hub.url("/v1/nodes/register"))
        .body(stranger_env.encode())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let issued = send_json(
        reqwest::Client::new()
            .post(net.hub.url(&format!("/v1/videos/{}/tokens", net.id)))
            .json(&json!({"session": hex::encode(spk)})),
    )
    .await;
    let edge_hex = edge_key(&net.edge);
    assert_eq!(issued["edges"].as_array().unwrap().len(), 1, "{issued}");
    assert_eq!(issued["edges"][0]["key"], edge_hex.as_str(), "{issued}");
    assert_eq!(issued["edges"][0]["url"], net.edge.url(""), "{issued}");
    let steered = token::verify(issued["token"].as_str().unwrap(), |_| true, now()).unwrap();
    assert_eq!(hex::encode(steered.edges[0]), edge_hex);
    // A hub token steered to the stranger's edge: this edge will neither
    // serve it nor be paid for it.
    let elsewhere = steered_hub_token(
        &net,
        spk,
        &prefix,
        now() + 600,
        1 << 30,
        vec![stranger.public().to_bytes()],
    );
    let r = get(&net.edge.url(&format!("/t/{elsewhere}{seg}")), &[]).await;
    assert_eq!(r.status, 403);
    assert!(reason(&r).contains("other edges"), "{}", reason(&r));

    // A session over its budget: the first response spends it.
    let small = hub_token(&net, spk, &prefix, now() + 600, 100);
    let r = get(&net.edge.url(&format!("/t/{small}{seg}")), &[]).await;
    assert_eq!(r.status, 200);
    let r = get(&net.edge.url(&format!("/t/{small}{seg}")), &[]).await;
    assert_eq!(r.status, 403);
    assert!(reason(&r).contains("budget"), "{}", reason(&r));
    // A browser player can read the reason: the edge's own errors carry CORS.
    assert_eq!(r.headers["access-control-allow-origin"], "*");
    // Playlists are not the paid bytes: they pass once the budget is spent,
    // carry no receipt, and are not charged.
    let playlist = prefix.clone() + "master.m3u8";
    let r = get(&net.edge.url(&format!("/t/{small}{playlist}")), &[]).await;
    assert_eq!(r.status, 200, "{}", reason(&r));
    assert!(!r.headers.contains_key("meshcast-receipt"));

    // Acks: one good, then every way of getting one wrong.
    let good_token = hub_token(&net, spk, &prefix, now() + 600, 1 << 30);
    let fetch_receipt = || async {
        let r = get(&net.edge.url(&format!("/t/{good_token}{seg}")), &[]).await;
        assert_eq!(r.status, 200);
        r.headers["meshcast-receipt"].to_str().unwrap().to_string()
    };
    // The token is not part of the cache key: another session's token for
    // the same segment is a hit.
    let r = get(&net.edge.url(&format!("/t/{good_token}{seg}")), &[]).await;
    assert!(r.cache.contains("hit"), "{}", r.cache);
    // A cross-origin player's script may read the receipt: the response to
    // a CORS request (it carries Origin) exposes it; others do not need to.
    let cross = get(
        &net.edge.url(&format!("/t/{good_token}{seg}")),
        &[("origin", "https://player.example")],
    )
    .await;
    let exposed = |r: &support::Reply| {
        r.headers
            .get("access-control-expose-headers")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(cross.headers.contains_key("meshcast-receipt"));
    let cross_exposed = exposed(&cross);
    assert!(
        cross_exposed.ends_with(", Meshcast-Receipt"),
        "{cross_exposed}"
    );
    // What the HUB exposes (upload offsets, …) is kept beside it.
    assert!(
        cross_exposed.len() > ", Meshcast-Receipt".len(),
        "{cross_exposed}"
    );
    assert_eq!(cross.headers["access-control-allow-origin"], "*");
    let plain = get(&net.edge.url(&format!("/t/{good_token}{seg}")), &[]).await;
    assert!(plain.headers.contains_key("meshcast-receipt"));
    assert!(
        !exposed(&plain).contains("Meshcast-Receipt"),
        "{}",
        exposed(&plain)
    );
    let header = fetch_receipt().await;
    let receipt = SealedReceipt::from_header(&header).unwrap();
    let ack = Ack::sign(&session, receipt.clone());
    let v = post_acks(&net.edge, &good_token, &[(header.clone(), ack.sig)]).await;
    assert_eq!(v["accepted"], 1, "{v}");
    let v = post_acks(&net.edge, &good_token, &[(header.clone(), ack.sig)]).await;
    assert!(
        v["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("replayed"),
        "{v}"
    );
    // A replay is dropped before any signature is checked: even a garbage
    // signature is refused as a replay, costing a lookup, not a verify.
    let v = post_acks(&net.edge, &good_token, &[(header.clone(), [7; 64])]).await;
    assert!(
        v["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("replayed"),
        "{v}"
    );
    // One request's work is bounded.
    let many = vec![(header.clone(), ack.sig); 257];
    let body = json!({
        "token": good_token,
        "acks": many.iter().map(|(r, s)| json!({"receipt": r, "sig": B64.encode(s)})).collect::<Vec<_>>(),
    });
    let r = reqwest::Client::new()
        .post(net.edge.url("/v1/acks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let header2 = fetch_receipt().await;
    let wrong = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let bad = Ack::sign(&wrong, SealedReceipt::from_header(&header2).unwrap());
    let v = post_acks(&net.edge, &good_token, &[(header2.clone(), bad.sig)]).await;
    assert!(
        v["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("session key"),
        "{v}"
    );

    let mut wire = SealedReceipt::from_header(&header2).unwrap().wire;
    wire[110] ^= 0x10; // the byte count
    let tampered = SealedReceipt::decode(&wire).unwrap();
    let t_ack = Ack::sign(&session, tampered.clone());
    let v = post_acks(
        &net.edge,
        &good_token,
        &[(tampered.header_value(), t_ack.sig)],
    )
    .await;
    assert!(
        v["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not issued by this edge"),
        "{v}"
    );
    // A forged ack: a real receipt with one seal byte flipped, acked with
    // the right session key. Taken, every flip would be a receipt id of its
    // own, paid again for the same bytes; the edge refuses it instead.
    let mut wire = SealedReceipt::from_header(&header2).unwrap().wire;
    let seal_at = wire.len() - 16;
    wire[seal_at] ^= 0x01;
    let poisoned = SealedReceipt::decode(&wire).unwrap();
    let p_ack = Ack::sign(&session, poisoned.clone());
    let v = post_acks(
        &net.edge,
        &good_token,
        &[(poisoned.header_value(), p_ack.sig)],
    )
    .await;
    assert_eq!(v["accepted"], 0, "{v}");
    assert!(
        v["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not issued by this edge"),
        "{v}"
    );

    // After its epoch is claimed, an old receipt is late, not new.
    let header3 = fetch_receipt().await;
    let late = Ack::sign(&session, SealedReceipt::from_header(&header3).unwrap());
    tokio::time::sleep(Duration::from_secs(6)).await; // epoch (2 s) + grace (3 s) passed
    let v = post_acks(&net.edge, &good_token, &[(header3, late.sig)]).await;
    assert!(
        v["refused"][0]["reason"].as_str().unwrap().contains("late"),
        "{v}"
    );

    // Public tokens are rate-limited per client address (30 a minute).
    let client = reqwest::Client::new();
    let mut limited = None;
    for i in 0..40 {
        let r = client
            .post(net.hub.url(&format!("/v1/videos/{}/tokens", net.id)))
            .json(&json!({"session": hex::encode(spk)}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some((i, r.text().await.unwrap()));
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let (i, why) = limited.expect("never rate-limited");
    assert!((25..=31).contains(&i), "limited after {i}");
    assert!(why.contains("tokens a minute"), "{why}");

    // The one good ack is all that is credited; the refused ones show up
    // as such at the edge.
    wait_credit(&net.hub, &net.node, receipt.receipt.len).await;
    assert!(
        net.edge
            .metric("meshcast_acks_total{outcome=\"refused\"}")
            .await
            >= 4.0
    );
}

/// A signed registration of an edge at a made-up address.
fn registration(key: &NodeKey) -> meshcast_control::envelope::Envelope {
    let reg = json!({"addr": "http://127.0.0.1:9", "roles": ["edge"], "capacity_bytes": 1, "version": "t"});
    let body = serde_json::to_vec(&reg).unwrap();
    meshcast_control::envelope::Envelope::seal(
        key,
        meshcast_control::messages::REGISTER,
        body,
        now(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_refuses_unsigned_replayed_and_unknown_node_messages() {
    use meshcast_control::envelope::Envelope;
    use meshcast_control::messages;
    let mut hub = Hub::config("http://127.0.0.1:1");
    hub.launch().await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>| client.post(hub.url(path)).body(body).send();
    let key = NodeKey::generate().unwrap();
    let env = registration(&key);
    // A claim from a node the hub does not know.
    let claim = Envelope::seal(&key, messages::CLAIM, b"{}".to_vec(), now()).unwrap();
    let r = post("/v1/claims", claim.encode()).await.unwrap();
    assert_eq!(r.status(), 404, "{:?}", r.text().await);
    let r = post("/v1/nodes/register", env.encode()).await.unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["node"], key.id());
    assert_eq!(info["issuers"][0]["prefix"], "/");
    // The same envelope again is a replay.
    let r = post("/v1/nodes/register", env.encode()).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("replayed"));
    // Tampered body, wrong domain, stale time.
    let mut wire = Envelope::seal(
        &key,
        messages::HEARTBEAT,
        br#"{"load":0,"cache_bytes":0,"bytes_out":0}"#.to_vec(),
        now(),
    )
    .unwrap();
    wire.body = br#"{"load":9,"cache_bytes":0,"bytes_out":0}"#.to_vec();
    let r = post("/v1/nodes/heartbeat", wire.encode()).await.unwrap();
    assert!(r.text().await.unwrap().contains("signature"));
    let r = post("/v1/nodes/heartbeat", env.encode()).await.unwrap();
    assert!(r.text().await.unwrap().contains("expected"));
    let old = Envelope::seal(&key, messages::HEARTBEAT, b"{}".to_vec(), now() - 3600).unwrap();
    let r = post("/v1/nodes/heartbeat", old.encode()).await.unwrap();
    assert!(r.text().await.unwrap().contains("away from now"));
    let r = post("/v1/nodes/heartbeat", b"garbage".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let nodes: Value = reqwest::get(hub.url("/v1/nodes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nodes["nodes"][0]["state"], "up");
    assert_eq!(
        nodes["nodes"][0]["load"], 0.0,
        "the tampered heartbeat changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_video_plays_only_with_its_owners_tokens() {
    let edge_port = free_port();
    let mut hub = Hub::config(&format!("http://127.0.0.1:{edge_port}"));
    let mut edge = Edge::config(hub.addr(), "");
    hub.bond_at_genesis(&[edge_key(&edge)]);
    hub.launch().await;
    edge.port = edge_port;
    edge.write_config(hub.addr(), &node_extra(&edge, &hub));
    let edge = edge.start().await;
    let owner = NodeKey::generate().unwrap();
    let owner_file = hub.dir.join("owner.key");
    owner.save(&owner_file).unwrap();
    let src = hub.dir.join("clip.mp4");
    make_video(&src, 2, "320x240");
    // tus metadata: policy signed, owner = the owner's public key.
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let len = std::fs::metadata(&src).unwrap().len();
    let client = hub.client();
    let meta = format!(
        "filename {},policy {},owner {}",
        b64("s.mp4"),
        b64("signed"),
        b64(&hex::encode(owner.public().to_bytes()))
    );
    let r = client
        .post(hub.url("/v1/videos"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", len.to_string())
        .header("upload-metadata", meta)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = client
        .patch(hub.url(&location))
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(std::fs::read(&src).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let id = meshcast_hub::tus_client::video_id(&location).to_string();
    let (video, _) = hub.wait_done(&id, Duration::from_secs(120)).await;
    assert_eq!(video["policy"], "signed");

    let session = NodeKey::generate().unwrap();
    let spk = hex::encode(session.public().to_bytes());
    let r = client
        .post(hub.url(&format!("/v1/videos/{id}/tokens")))
        .json(&json!({"session": spk}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("owner"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshcast"))
        .args(["token", "--video", &id, "--session", &spk, "--key"])
        .arg(&owner_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // The edge learns the owner's key from the hub's next answer.
    let url = edge.url(&format!("/t/{tok}/v/{id}/master.m3u8"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&url, &[]).await;
        if r.status == 200 {
            assert!(
                !r.headers.contains_key("meshcast-receipt"),
                "playlists are not paid"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "owner token never accepted: {}",
            reason(&r)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The owner's key covers this video only.
    let other = token::issue(
        &owner,
        &TokenClaims {
            issuer: owner.public().to_bytes(),
            prefix: "/v/".into(),
            expires: now() + 600,
            budget: 1 << 30,
            session: session.public().to_bytes(),
            edges: Vec::new(),
        },
        now(),
    )
    .unwrap();
    let r = get(&edge.url(&format!("/t/{other}/v/{id}/master.m3u8")), &[]).await;
    assert_eq!(r.status, 403, "{}", reason(&r));
}

/// Runs `meshcast ledger tx --api HUB --key KEY --wait ACTION...`.
fn ledger_tx(hub: &Hub, key: &std::path::Path, action: &[&str]) -> Value {
    let out = succeed(
        std::process::Command::new(env!("CARGO_BIN_EXE_meshcast"))
            .args(["ledger", "tx", "--api", &hub.url(""), "--wait", "--key"])
            .arg(key)
            .args(action),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the hub reports `node` admitted (or not).
async fn wait_admitted(hub: &Hub, node: &str, admitted: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(n) = node_record(hub, node).await {
            if n["admitted"] == admitted {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "admitted never became {admitted}: {n}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Admission and slashing, played by a stranger: an edge with no stake is
/// refused (its claim waits, nothing settles); once it bonds the minimum
/// it is admitted; then it tries to redraw its audit sample — the same
/// claim sent again gets the same challenge, a different claim for the
/// challenged epoch is refused, the node is slashed on the ledger with
/// the evidence kept, and, below the minimum now, it is out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstaked_node_is_refused_and_a_cheater_is_slashed() {
    use meshcast_control::audit::build_claim;
    use meshcast_control::envelope::Envelope;
    use meshcast_control::messages;
    use meshcast_control::receipt::ReceiptSealer;
    let mut hub = Hub::config("http://127.0.0.1:1");
    hub.launch().await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>| client.post(hub.url(path)).body(body).send();
    let edge_key = NodeKey::generate().unwrap();
    let edge_key_file = hub.dir.join("stranger.key");
    edge_key.save(&edge_key_file).unwrap();
    let node = edge_key.id();
    let edge_hex = hex::encode(edge_key.public().to_bytes());
    let env = registration(&edge_key);
    let r = post("/v1/nodes/register", env.encode()).await.unwrap();
    assert_eq!(r.status(), 200, "registering is free");
    let info: Value = r.json().await.unwrap();
    let needed = info["admission"]["needed"].as_u64().unwrap();
    assert_eq!(info["admission"]["stake"], 0, "{info}");
    assert!(needed > 0, "{info}");

    // More acks than the audit samples, so the challenge depends on the nonce.
    let hub_key = NodeKey::load(&hub.dir.join("data/hub.key")).unwrap();
    let session = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    // The network's epoch length (the test hub's genesis), told at registration.
    let epoch_secs = 2;
    assert_eq!(info["epoch_secs"], epoch_secs, "{info}");
    let epoch = now() / epoch_secs - 2;
    let start_ms = epoch * epoch_secs * 1000;
    let claims = TokenClaims {
        issuer: hub_key.public().to_bytes(),
        prefix: "/v/abc/".into(),
        expires: now() + 3600,
        budget: 1 << 40,
        session: session.verifying_key().to_bytes(),
        edges: Vec::new(),
    };
    let tok = token::issue(&hub_key, &claims, start_ms / 1000 - 1).unwrap();
    let sealer = ReceiptSealer::new(NodeKey::from_seed(edge_key.seed()));
    let n = meshcast_control::audit::sample_k() + 500;
    let acks: Vec<(String, Ack)> = (0..n as u64)
        .map(|i| {
            let r = sealer.issue(
                token::token_id(&tok),
                [3; 16],
                &format!("/v/abc/720p/{i}.m4s"),
                0,
                1000 + i,
                start_ms + i,
                i,
            );
            (tok.clone(), Ack::sign(&session, r))
        })
        .collect();
    let claim_body = |acks: Vec<(String, Ack)>| {
        serde_json::to_vec(&build_claim(epoch, epoch_secs, acks).claim).unwrap()
    };
    let send = |body: Vec<u8>| {
        let env = Envelope::seal(&edge_key, messages::CLAIM, body, now()).unwrap();
        post("/v1/claims", env.encode())
    };
    let body = claim_body(acks.clone());

    // No stake: refused, and nothing is settled (the claim may come back).
    let r = send(body.clone()).await.unwrap();
    assert_eq!(r.status(), 403);
    let why = r.text().await.unwrap();
    assert!(
        why.contains("not admitted") && why.contains("bond"),
        "{why}"
    );
    let n0 = wait_admitted(&hub, &node, false).await;
    assert_eq!(n0["claims_rejected"], 0, "{n0}");

    // The hub's treasury funds it; it bonds the minimum from its own key.
    let hub_key_file = hub.dir.join("data/hub.key");
    let funded = ledger_tx(
        &hub,
        &hub_key_file,
        &[
            "transfer",
            "--to",
            &edge_hex,
            "--amount",
            &(2 * needed).to_string(),
        ],
    );
    assert_eq!(funded["result"], "applied", "{funded}");
    let bonded = ledger_tx(
        &hub,
        &edge_key_file,
        &["bond", "--amount", &needed.to_string()],
    );
    assert_eq!(bonded["result"], "applied", "{bonded}");
    let admitted = wait_admitted(&hub, &node, true).await;
    assert_eq!(admitted["stake"], needed, "{admitted}");

    // Epochs of its own length are refused (not slashed: an honest edge
    // upgraded with acks from before may send them once).
    let own_length = build_claim(now() / 60 - 2, 60, acks[..10].to_vec()).claim;
    let r = send(serde_json::to_vec(&own_length).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let refused: Value = r.json().await.unwrap();
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("this network's are 2 s"),
        "{refused}"
    );
    assert_eq!(
        node_record(&hub, &node).await.unwrap()["slashes"],
        json!([])
    );

    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let drawn = first["indices"].as_array().unwrap().len();
    assert!(drawn > 1000 && drawn < n, "a sample: {drawn} of {n}");
    let again: Value = send(body).await.unwrap().json().await.unwrap();
    assert_eq!(again, first, "a retried claim gets the same challenge");

    // One ack fewer: a different claim for a challenged epoch.
    let r = send(claim_body(acks[1..].to_vec())).await.unwrap();
    assert_eq!(r.status(), 422);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["accepted"], false, "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("one claim per epoch"),
        "{refused}"
    );
    // Slashed on the chain (5 % of its stake burned), out of admission,
    // and the evidence is the node's own two signed claims.
    let slashed = wait_admitted(&hub, &node, false).await;
    assert_eq!(slashed["claims_rejected"], 2, "{slashed}");
    assert_eq!(slashed["credited_bytes"], 0, "{slashed}");
    assert_eq!(slashed["stake"], needed - needed / 20, "{slashed}");
    let record = &slashed["slashes"][0];
    assert_eq!(record["epoch"], epoch, "{slashed}");
    let evidence: Value = reqwest::get(hub.url(&format!(
        "/v1/evidence/{}",
        record["evidence"].as_str().unwrap()
    )))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    for wire in [&evidence["claim"], &evidence["also"]] {
        let env = Envelope::decode(&hex::decode(wire.as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(
            env.sender,
            edge_key.public().to_bytes(),
            "signed by the cheater"
        );
    }
    let account: Value = reqwest::get(hub.url(&format!("/v1/ledger/accounts/{edge_hex}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        account["account"]["stake"],
        needed - needed / 20,
        "{account}"
    );
}

/// Probes, played against a lying edge: two admitted edges, one honest,
/// one whose origin serves made-up bytes under the hub's paths. The hub's
/// probes (every second here) find the honest one right and the liar out,
/// with the reason, in `GET /v1/nodes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_catch_an_edge_that_serves_other_bytes() {
    let junk = Origin::start().await;
    let mut hub = Hub::config("http://127.0.0.1:1");
    hub.hub_setting("probe_interval = \"1s\"");
    let (mut honest, mut liar) = (Edge::config(hub.addr(), ""), Edge::config(junk.addr, ""));
    hub.bond_at_genesis(&[edge_key(&honest), edge_key(&liar)]);
    hub.launch().await;
    honest.write_config(hub.addr(), &node_extra(&honest, &hub));
    liar.write_config(junk.addr, &node_extra(&liar, &hub));
    honest.launch().await;
    liar.launch().await;
    let id_of = |e: &Edge| NodeKey::load(&e.dir.join("node.key")).unwrap().id();
    let (honest_id, liar_id) = (id_of(&honest), id_of(&liar));
    let src = hub.dir.join("clip.mp4");
    make_video(&src, 2, "320x240");
    hub.publish(&src).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = node_record(&hub, &honest_id).await.unwrap_or_default();
        let l = node_record(&hub, &liar_id).await.unwrap_or_default();
        assert_eq!(h["probes"]["failed"].as_u64().unwrap_or(0), 0, "{h}");
        assert_eq!(l["probes"]["ok"].as_u64().unwrap_or(0), 0, "{l}");
        if h["probes"]["ok"].as_u64().unwrap_or(0) >= 2
            && l["probes"]["failed"].as_u64().unwrap_or(0) >= 2
        {
            let why = l["probes"]["last_failure"][2].as_str().unwrap_or_default();
            assert!(why.contains("bytes"), "{l}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probes never told them apart: {h} {l}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(hub_metric(&hub, "meshcast_hub_probes_total{outcome=\"failed\"}").await >= 2.0);
}

async fn hub_metric(hub: &Hub, prefix: &str) -> f64 {
    let text = reqwest::get(hub.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// An edge whose `[node] hub` is https: the hub sits behind a TLS front
/// (here another edge with a self-signed certificate, trusted through
/// `[node] hub_ca`); registration, heartbeats and admission work over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_reaches_an_https_hub() {
    let mut hub = Hub::config("http://127.0.0.1:1");
    let mut front = Edge::config(hub.addr(), "");
    let edge = Edge::config(hub.addr(), "");
    hub.bond_at_genesis(&[edge_key(&edge)]);
    hub.launch().await;
    let tls_port = free_port();
    let (cert, key, _) = make_cert(front.path());
    let text = std::fs::read_to_string(&front.config).unwrap().replace(
        "[edge]\n",
        &format!(
            "[edge]\nlisten_tls = [\"127.0.0.1:{tls_port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    std::fs::write(&front.config, text).unwrap();
    front.launch().await;
    let https_hub = format!("https://localhost:{tls_port}");
    let node_section = node_extra(&edge, &hub).replace(
        &format!("hub = \"{}\"", hub.url("")),
        &format!("hub = \"{https_hub}\"\nhub_ca = \"{}\"", cert.display()),
    );
    assert!(node_section.contains(&https_hub), "{node_section}");
    edge.write_config(hub.addr(), &node_section);
    let edge = edge.start().await;
    let node = NodeKey::load(&edge.dir.join("node.key")).unwrap().id();
    let n = wait_admitted(&hub, &node, true).await;
    assert_eq!(n["state"], "up", "{n}");
    // It learned the network's epoch length over TLS too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !edge.dir.join("state/network.json").exists() {
        assert!(Instant::now() < deadline, "network.json never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(edge.metric("meshcast_hub_reachable").await >= 1.0);
}
