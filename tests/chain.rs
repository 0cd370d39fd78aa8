//! Four `meshcast ledger run` processes on loopback, driven through the
//! command line and the HTTP API: transfers commit with one app hash
//! everywhere; the chain survives one validator down and the validator
//! catches up; two of four down halts it until one returns; a validator's
//! precommit taken from a real commit certificate plus a conflicting one
//! is slashable evidence. And two hubs, each a validator, replicate one
//! ledger.

use ed25519_dalek::SigningKey;
use meshcast_control::identity::NodeKey;
use meshcast_ledger::{Evidence, SignedVote};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn meshcast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshcast"))
}

struct Validator {
    home: PathBuf,
    child: Option<Child>,
    runs: u32,
}

impl Validator {
    fn start(&mut self) {
        self.runs += 1;
        let log = std::fs::File::create(self.home.join(format!("run{}.log", self.runs))).unwrap();
        let child = meshcast()
            .args(["ledger", "run", "--home"])
            .arg(&self.home)
            .env("MESHCAST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let out = meshcast()
            .args(["ledger", args[0], "--home"])
            .arg(&self.home)
            .args(&args[1..])
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    fn height(&self) -> Option<u64> {
        self.cli(&["status"]).ok()?["height"].as_u64()
    }

    /// Malachite's count of vote rebroadcasts on its `/metrics`: one when
    /// a round starts and one each time the round's rebroadcast timeout
    /// fires with no progress.
    fn rebroadcasts(&self) -> Option<u64> {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/metrics", self.api())])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let rest = l.strip_prefix("malachitebft_core_consensus_rebroadcast_timeouts")?;
            rest.split_whitespace().last()?.parse().ok()
        })
    }

    fn api(&self) -> String {
        let c = meshcast_conf::LedgerConfig::load(&self.home.join("ledger.toml")).unwrap();
        format!("http://{}", c.ledger.api)
    }

    fn key(&self) -> PathBuf {
        self.home.join("validator.key")
    }

    fn address(&self) -> String {
        hex::encode(NodeKey::load(&self.key()).unwrap().public().to_bytes())
    }

    fn log(&self) -> String {
        (1..=self.runs)
            .map(|r| {
                std::fs::read_to_string(self.home.join(format!("run{r}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for(what: &str, limit: Duration, f: impl FnMut() -> bool) {
    wait_for_explained(what, limit, f, String::new);
}

/// `wait_for`, with `explain()` (state worth seeing) in the failure.
fn wait_for_explained(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> bool,
    explain: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}{}",
            explain()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `v` has rebroadcast its votes `times` times at one height:
/// each is a whole rebroadcast timeout (propose + 2 × vote) with no
/// progress, counted by consensus itself, so "nothing committed" is
/// observed over a window the chain defines rather than a guessed sleep.
fn stalled(v: &Validator, times: u64) {
    let mut since = (v.height(), v.rebroadcasts().unwrap_or(0));
    let mut need = times;
    wait_for(
        &format!("{times} vote rebroadcasts at one height"),
        Duration::from_secs(90),
        || {
            let now = (v.height(), v.rebroadcasts().unwrap_or(0));
            if now.0 != since.0 {
                // The new height's round start counts once too.
                since = now;
                need = times + 1;
            }
            now.1 >= since.1 + need
        },
    );
}

/// The last lines of a validator's logs, for a failure message.
fn log_tail(v: &Validator) -> String {
    let log = v.log();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(12)..].join("\n");
    format!("--- {}\n{tail}\n", v.home.display())
}

fn get(url: &str) -> Value {
    let out = Command::new("curl").args(["-sf", url]).output().unwrap();
    assert!(out.status.success(), "GET {url} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn app_hash_at(v: &Validator, height: u64) -> String {
    let b = v.cli(&["block", &height.to_string()]).unwrap();
    b["app_hash"].as_str().unwrap().to_string()
}

fn transfer(from: &Validator, to: &str, amount: u64) -> Value {
    from.cli(&[
        "tx",
        "--key",
        from.key().to_str().unwrap(),
        "--wait",
        "transfer",
        "--to",
        to,
        "--amount",
        &amount.to_string(),
    ])
    .unwrap_or_else(|e| panic!("transfer failed: {e}\n{}", from.log()))
}

/// A fresh chain of `n` validators in `dir` (`meshcast ledger init`).
fn init_chain(dir: &Path, n: usize) {
    let _ = std::fs::remove_dir_all(dir);
    let out = meshcast()
        .args(["ledger", "init", "--validators", &n.to_string(), "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn setup(dir: &Path) -> Vec<Validator> {
    init_chain(dir, 4);
    (1..=4)
        .map(|k| Validator {
            home: dir.join(format!("node{k}")),
            child: None,
            runs: 0,
        })
        .collect()
}

#[test]
fn four_validators_commit_survive_faults_and_slash_double_signs() {
    let dir = std::env::temp_dir().join(format!("meshcast-chain-{}", std::process::id()));
    let mut v = setup(&dir);
    for x in v.iter_mut() {
        x.start();
    }
    let all_at = |v: &[Validator], h: u64| v.iter().all(|x| x.height().is_some_and(|y| y >= h));
    wait_for_explained(
        "four validators to commit 3 blocks",
        Duration::from_secs(60),
        || all_at(&v, 3),
        || {
            format!(
                "; heights {:?}; the end of their logs:\n{}",
                v.iter().map(|x| x.height()).collect::<Vec<_>>(),
                v.iter().map(log_tail).collect::<String>()
            )
        },
    );

    // A transfer commits, and every validator has the same app hash there.
    let to = v[1].address();
    let before = get(&format!("{}/v1/ledger/accounts/{to}", v[0].api()))["account"]["balance"]
        .as_u64()
        .unwrap();
    let c = transfer(&v[0], &to, 7);
    assert_eq!(c["result"], "applied", "{c}");
    let h = c["height"].as_u64().unwrap();
    wait_for(
        "all validators to reach the transfer's block",
        Duration::from_secs(30),
        || all_at(&v, h),
    );
    let hash = app_hash_at(&v[0], h);
    for x in &v {
        assert_eq!(
            app_hash_at(x, h),
            hash,
            "app hash at {h} differs on {}",
            x.home.display()
        );
        let bal = get(&format!("{}/v1/ledger/accounts/{to}", x.api()))["account"]["balance"]
            .as_u64()
            .unwrap();
        assert_eq!(bal, before + 7);
    }

    // One of four down: the chain keeps committing, transfers included.
    v[3].kill();
    let h0 = v[0].height().unwrap();
    wait_for(
        "3 more blocks with one validator down",
        Duration::from_secs(60),
        || v[0].height().unwrap() >= h0 + 3,
    );
    let c = transfer(&v[1], &v[0].address(), 3);
    assert_eq!(c["result"], "applied");

    // It comes back and catches up to where the others are.
    v[3].start();
    let target = v[0].height().unwrap();
    wait_for(
        "the restarted validator to catch up",
        Duration::from_secs(60),
        || v[3].height().is_some_and(|y| y >= target),
    );
    assert_eq!(app_hash_at(&v[3], target), app_hash_at(&v[0], target));

    // Two of four down: no block commits...
    v[2].kill();
    v[3].kill();
    stalled(&v[0], 1);
    let stuck = v[0].height().unwrap();
    let pending = v[0]
        .cli(&[
            "tx",
            "--key",
            v[0].key().to_str().unwrap(),
            "transfer",
            "--to",
            &v[1].address(),
            "--amount",
            "1",
        ])
        .unwrap();
    let pending_hash = pending["hash"].as_str().unwrap().to_string();
    stalled(&v[0], 2);
    assert_eq!(
        v[0].height().unwrap(),
        stuck,
        "a block committed with two of four down"
    );
    assert_eq!(v[1].height().unwrap(), stuck);
    // ...until one returns; then the waiting transfer commits too.
    v[2].start();
    wait_for("commits to resume", Duration::from_secs(60), || {
        v[0].height().unwrap() > stuck + 1
    });
    wait_for(
        "the waiting transfer to commit",
        Duration::from_secs(30),
        || {
            Command::new("curl")
                .args([
                    "-sf",
                    &format!("{}/v1/ledger/txs/{pending_hash}", v[0].api()),
                ])
                .output()
                .unwrap()
                .status
                .success()
        },
    );

    // Double sign: validator 3's real precommit for block h (from the
    // commit certificate) and a conflicting precommit at the same height
    // and round, as a byzantine validator with that key would sign.
    let cert = get(&format!("{}/v1/ledger/commits/{h}", v[0].api()));
    let sigs = cert["signatures"].as_array().unwrap();
    assert!(sigs.len() >= 3, "a commit needs 3 of 4 precommits: {cert}");
    let (offender, real) = v
        .iter()
        .find_map(|x| {
            let a = x.address();
            sigs.iter()
                .find(|s| s["validator"] == a.as_str())
                .map(|s| (x, s.clone()))
        })
        .unwrap();
    let round = cert["round"].as_u64().unwrap() as u32;
    let mut block = [0u8; 32];
    hex::decode_to_slice(cert["block"].as_str().unwrap(), &mut block).unwrap();
    let mut sig = [0u8; 64];
    hex::decode_to_slice(real["sig"].as_str().unwrap(), &mut sig).unwrap();
    let a = SignedVote {
        height: h,
        round,
        block,
        sig,
    };
    let offender_key: [u8; 32] = hex::decode(offender.address()).unwrap().try_into().unwrap();
    assert!(
        a.verify(&offender_key),
        "a consensus precommit is ledger-checkable"
    );
    let seed = NodeKey::load(&offender.key()).unwrap().seed();
    let b = SignedVote::sign(&SigningKey::from_bytes(&seed), h, round, [0xEE; 32]);
    let evidence = dir.join("evidence.json");
    std::fs::write(
        &evidence,
        serde_json::to_vec(&Evidence::DoubleSign { a, b }).unwrap(),
    )
    .unwrap();
    let stake_before = get(&format!(
        "{}/v1/ledger/accounts/{}",
        v[0].api(),
        offender.address()
    ))["account"]["stake"]
        .as_u64()
        .unwrap();
    let slash = |reporter: &Validator| {
        reporter.cli(&[
            "tx",
            "--key",
            reporter.key().to_str().unwrap(),
            "--wait",
            "slash",
            "--offender",
            &offender.address(),
            "--evidence",
            evidence.to_str().unwrap(),
        ])
    };
    let c = slash(&v[1]).unwrap();
    assert_eq!(c["result"], "applied", "{c}");
    let sh = c["height"].as_u64().unwrap();
    wait_for(
        "the slash on the running validators",
        Duration::from_secs(30),
        || {
            v.iter()
                .take(3)
                .all(|x| x.height().is_some_and(|y| y >= sh))
        },
    );
    for x in v.iter().take(3) {
        let stake = get(&format!(
            "{}/v1/ledger/accounts/{}",
            x.api(),
            offender.address()
        ))["account"]["stake"]
            .as_u64()
            .unwrap();
        assert_eq!(stake, stake_before - stake_before * 500 / 10_000);
    }
    // The same evidence counts once.
    let again = slash(&v[2]);
    let refused = match again {
        Err(e) => e.contains("already settled"),
        Ok(c) => c["result"]["refused"]
            .as_str()
            .is_some_and(|r| r.contains("already settled")),
    };
    assert!(refused, "the same evidence slashed twice");

    drop(v);
    let _ = std::fs::remove_dir_all(&dir);
}

mod support;

async fn fetch(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Two hubs, each a validator of one chain written by `ledger init`: both
/// commit the same blocks, and a transfer sent to one hub's API is
/// committed and readable on the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_replicate_one_ledger() {
    use meshcast_ledger::tx::TxBody;
    use meshcast_ledger::Action;
    use support::hub::Hub;
    let dir = std::env::temp_dir().join(format!("meshcast-hubchain-{}", std::process::id()));
    init_chain(&dir, 2);
    let mut hubs = vec![
        Hub::config("http://127.0.0.1:9"),
        Hub::config("http://127.0.0.1:9"),
    ];
    let cfg = |k: usize| {
        meshcast_conf::LedgerConfig::load(&dir.join(format!("node{k}/ledger.toml")))
            .unwrap()
            .ledger
    };
    for k in 0..2 {
        let mine = cfg(k + 1);
        let other_hub = hubs[1 - k].addr();
        let text = std::fs::read_to_string(&hubs[k].config)
            .unwrap()
            .replacen(
                "[hub]\n",
                &format!(
                    "[hub]\nkey = \"{}\"\n",
                    dir.join(format!("node{}/validator.key", k + 1)).display()
                ),
                1,
            )
            .replacen(
                "[ledger]\n",
                &format!(
                    "[ledger]\ngenesis = \"{}\"\np2p = \"{}\"\npeers = [\"{}\"]\npeer_apis = [\"{other_hub}\"]\n",
                    dir.join("genesis.json").display(),
                    mine.p2p,
                    mine.peers[0],
                ),
                1,
            );
        std::fs::write(&hubs[k].config, text).unwrap();
    }
    for h in hubs.iter_mut() {
        h.launch().await;
    }
    let status = |h: &Hub| fetch(h.url("/v1/ledger/status"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = status(&hubs[0]).await["height"].as_u64().unwrap();
        let b = status(&hubs[1]).await["height"].as_u64().unwrap();
        if a >= 3 && b >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "hubs at heights {a} and {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Signed by validator 1's key (hub 1's), sent to hub 1, read on hub 2.
    let seed = NodeKey::load(&dir.join("node1/validator.key"))
        .unwrap()
        .seed();
    let key = SigningKey::from_bytes(&seed);
    let from = key.verifying_key().to_bytes();
    let to = NodeKey::load(&dir.join("node2/validator.key"))
        .unwrap()
        .public()
        .to_bytes();
    let account = |h: &Hub, a: [u8; 32]| {
        let url = h.url(&format!("/v1/ledger/accounts/{}", hex::encode(a)));
        async move { fetch(url).await["account"].clone() }
    };
    let nonce = account(&hubs[0], from).await["nonce"].as_u64().unwrap();
    let before = account(&hubs[1], to).await["balance"].as_u64().unwrap();
    let tx = TxBody {
        chain_id: "meshcast-local".into(),
        from,
        nonce,
        action: Action::Transfer { to, amount: 11 },
    }
    .sign(&key);
    let r = reqwest::Client::new()
        .post(hubs[0].url("/v1/ledger/txs"))
        .json(&tx)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let hash = hex::encode(tx.hash());
    let deadline = Instant::now() + Duration::from_secs(30);
    let committed = loop {
        let r = reqwest::get(hubs[1].url(&format!("/v1/ledger/txs/{hash}")))
            .await
            .unwrap();
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the transfer never reached hub 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(committed["result"], "applied", "{committed}");
    let h = committed["height"].as_u64().unwrap();
    assert_eq!(
        account(&hubs[1], to).await["balance"].as_u64().unwrap(),
        before + 11
    );
    let block = |hub: &Hub| fetch(hub.url(&format!("/v1/ledger/blocks/{h}")));
    let (a, b) = (block(&hubs[0]).await, block(&hubs[1]).await);
    assert_eq!(a["result"]["app_hash"], b["result"]["app_hash"]);
    assert!(a["result"]["app_hash"].is_string(), "{a}");
    drop(hubs);
    let _ = std::fs::remove_dir_all(&dir);
}
