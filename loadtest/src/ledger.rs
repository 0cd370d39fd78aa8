//! `ledger`: committed transactions per second and time to finality of a
//! four-validator chain on loopback. It writes a fresh chain with
//! `meshcast ledger init`, runs four `meshcast ledger run` processes, and
//! drives their HTTP APIs:
//! - finality: one transfer at a time, submit → visible as committed on
//!   the validator it was sent to (polled every 5 ms);
//! - throughput: N signed transfers (signed before the clock starts), each
//!   sender's to its own validator in batches, until the last one commits;
//!   every transfer must apply (checked by the senders' nonces).

use crate::servers::meshcast_binary;
use crate::Common;
use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;
use meshcast_control::identity::NodeKey;
use meshcast_ledger::tx::TxBody;
use meshcast_ledger::{Action, Tx};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Options {
    pub common: Common,
    pub txs: usize,
    pub finality_samples: usize,
}

struct Validators {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Validators {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Node {
    api: String,
    key: SigningKey,
}

impl Node {
    fn address(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<(u16, Value)> {
    let r = client.get(url).send().await?;
    let status = r.status().as_u16();
    let body = r.bytes().await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

async fn height(client: &reqwest::Client, n: &Node) -> Option<u64> {
    get(client, &format!("{}/v1/ledger/status", n.api))
        .await
        .ok()?
        .1["height"]
        .as_u64()
}

async fn nonce(client: &reqwest::Client, n: &Node, of: [u8; 32]) -> anyhow::Result<u64> {
    let (_, v) = get(
        client,
        &format!("{}/v1/ledger/accounts/{}", n.api, hex::encode(of)),
    )
    .await?;
    v.pointer("/account/nonce")
        .and_then(Value::as_u64)
        .context("no nonce in the account")
}

async fn committed(client: &reqwest::Client, n: &Node, hash: &str) -> bool {
    matches!(
        get(client, &format!("{}/v1/ledger/txs/{hash}", n.api)).await,
        Ok((200, _))
    )
}

fn transfer(chain: &str, from: &Node, to: [u8; 32], nonce: u64) -> Tx {
    TxBody {
        chain_id: chain.into(),
        from: from.address(),
        nonce,
        action: Action::Transfer { to, amount: 1 },
    }
    .sign(&from.key)
}

fn start(o: &Options) -> anyhow::Result<(Validators, Vec<Node>)> {
    let bin = meshcast_binary(&o.common)?;
    let dir = std::env::temp_dir().join(format!("meshcast-ledger-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(&bin)
        .args(["ledger", "init", "--validators", "4", "--dir"])
        .arg(&dir)
        .output()?;
    if !out.status.success() {
        bail!("ledger init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut v = Validators {
        children: Vec::new(),
        dir: dir.clone(),
    };
    let mut nodes = Vec::new();
    for k in 1..=4 {
        let home = dir.join(format!("node{k}"));
        let log = std::fs::File::create(home.join("run.log"))?;
        v.children.push(
            Command::new(&bin)
                .args(["ledger", "run", "--home"])
                .arg(&home)
                .env("MESHCAST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        let cfg = meshcast_conf::LedgerConfig::load(&home.join("ledger.toml"))?;
        let key = NodeKey::load(&home.join("validator.key"))?;
        nodes.push(Node {
            api: format!("http://{}", cfg.ledger.api),
            key: SigningKey::from_bytes(&key.seed()),
        });
    }
    Ok((v, nodes))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let (_validators, nodes) = start(&o)?;
    let client = reqwest::Client::new();
    let ready = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = true;
        for n in &nodes {
            all &= height(&client, n).await.is_some_and(|h| h >= 2);
        }
        if all {
            break;
        }
        if Instant::now() > ready {
            bail!("the four validators did not start committing within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, status) = get(&client, &format!("{}/v1/ledger/status", nodes[0].api)).await?;
    let chain = status["chain_id"].as_str().unwrap_or_default().to_string();

    // Finality, one transfer at a time.
    let mut latencies = Vec::new();
    let mut next = nonce(&client, &nodes[0], nodes[0].address()).await?;
    for i in 0..o.finality_samples {
        let to = nodes[1 + i % 3].address();
        let tx = transfer(&chain, &nodes[0], to, next);
        next += 1;
        let hash = hex::encode(tx.hash());
        let t = Instant::now();
        let r = client
            .post(format!("{}/v1/ledger/txs", nodes[0].api))
            .json(&tx)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("transfer refused: {}", r.text().await?);
        }
        while !committed(&client, &nodes[0], &hash).await {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("a transfer did not commit within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);

    // Throughput: every validator's key sends its share to its own API.
    let per = o.txs / nodes.len();
    let mut batches: Vec<Vec<Tx>> = Vec::new();
    let mut first_nonce = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let start = nonce(&client, n, n.address()).await?;
        first_nonce.push(start);
        let to = nodes[(i + 1) % nodes.len()].address();
        batches.push(
            (0..per as u64)
                .map(|k| transfer(&chain, n, to, start + k))
                .collect(),
        );
    }
    let last: Vec<String> = batches
        .iter()
        .map(|b| hex::encode(b[b.len() - 1].hash()))
        .collect();
    let h0 = height(&client, &nodes[0]).await.unwrap_or(0);
    let t = Instant::now();
    let mut senders = Vec::new();
    for (n, txs) in nodes.iter().zip(batches) {
        let client = client.clone();
        let url = format!("{}/v1/ledger/txs", n.api);
        senders.push(tokio::spawn(async move {
            for chunk in txs.chunks(1_000) {
                let r: Vec<Value> = client.post(&url).json(&chunk).send().await?.json().await?;
                if let Some(e) = r.iter().find_map(|x| x.get("error")) {
                    bail!("a transfer was refused: {e}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let submitted = t.elapsed();
    for hash in &last {
        while !committed(&client, &nodes[0], hash).await {
            if t.elapsed() > Duration::from_secs(600) {
                bail!("the load did not commit within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let elapsed = t.elapsed();
    let h1 = height(&client, &nodes[0]).await.unwrap_or(0);
    for (i, n) in nodes.iter().enumerate() {
        let got = nonce(&client, &nodes[0], n.address()).await?;
        if got != first_nonce[i] + per as u64 {
            bail!(
                "validator {} sent {per} transfers but its nonce moved {}",
                i + 1,
                got - first_nonce[i]
            );
        }
    }
    let total = per * nodes.len();
    let tps = total as f64 / elapsed.as_secs_f64();
    let report = json!({
        "validators": nodes.len(),
        "transfers": total,
        "submit_seconds": submitted.as_secs_f64(),
        "commit_seconds": elapsed.as_secs_f64(),
        "committed_tx_per_s": tps,
        "blocks": h1.saturating_sub(h0),
        "finality_ms": {
            "samples": latencies.len(),
            "median": percentile(&latencies, 0.5),
            "p90": percentile(&latencies, 0.9),
            "max": percentile(&latencies, 1.0),
        },
    });
    if o.common.json {
        println!("{report}");
    } else {
        println!(
            "| validators | transfers | committed tx/s | blocks | finality median | p90 | max |"
        );
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| 4 | {total} | {tps:.0} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
            h1.saturating_sub(h0),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 1.0)
        );
    }
    Ok(())
}
