//! The ledger node's API over HTTP: bad transactions refused before any
//! block with their reason, good ones queued, committed by a block (as
//! consensus will hand it over) and readable back with a balance proof.

use ed25519_dalek::SigningKey;
use meshcast_ledger::api;
use meshcast_ledger::hash::{verify_account, AccountProof};
use meshcast_ledger::node::LedgerNode;
use meshcast_ledger::state::GenesisAccount;
use meshcast_ledger::tx::TxBody;
use meshcast_ledger::{Account, Action, Block, Genesis, Params, Tx};
use serde_json::Value;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn addr(n: u8) -> [u8; 32] {
    key(n).verifying_key().to_bytes()
}

fn transfer(from: u8, nonce: u64, amount: u64, chain: &str) -> Tx {
    TxBody {
        chain_id: chain.into(),
        from: addr(from),
        nonce,
        action: Action::Transfer {
            to: addr(2),
            amount,
        },
    }
    .sign(&key(from))
}

/// A fresh ledger node in its own directory: account 1 holds 100 on
/// chain `chain`.
fn open_node(name: &str, chain: &str) -> (std::path::PathBuf, api::Shared) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let genesis = Genesis {
        chain_id: chain.into(),
        params: Params {
            delivery_price_per_gb: 1,
            storage_price_per_gb_hour: 1,
            transcode_price_per_second: 1,
            unbond_delay: 1,
            slash_bps: 0,
            min_stake: Default::default(),
            epoch_secs: 0,
        },
        accounts: vec![GenesisAccount {
            address: addr(1),
            balance: 100,
            stake: 0,
        }],
        authorities: vec![],
        validators: vec![],
    };
    let node = Arc::new(Mutex::new(
        LedgerNode::open(&dir.join("ledger.redb"), &genesis).unwrap(),
    ));
    (dir, node)
}

#[tokio::test]
async fn submit_commit_and_read_back() {
    let (dir, node) = open_node("meshcast-ledger-api", "api-test");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        axum::serve(listener, axum::Router::from(api::routes(node.clone()))).into_future(),
    );
    let http = reqwest::Client::new();
    let post = |tx: &Tx| http.post(format!("{base}/v1/ledger/txs")).json(tx).send();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    let s: Value = get("/v1/ledger/status")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["height"], 0);

    let good = transfer(1, 0, 30, "api-test");
    let r = post(&good).await.unwrap();
    assert_eq!(r.status(), 202);
    let hash = r.json::<Value>().await.unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(post(&good).await.unwrap().status(), 409);
    let reason = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 400);
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut forged = transfer(1, 1, 5, "api-test");
    forged.sig[0] ^= 1;
    assert!(reason(post(&forged).await.unwrap())
        .await
        .contains("signature"));
    assert!(reason(post(&transfer(1, 1, 5, "elsewhere")).await.unwrap())
        .await
        .contains("chain"));
    assert!(reason(post(&transfer(1, 0, 5, "api-test")).await.unwrap())
        .await
        .contains("nonce 0 is not the next one (1)"));
    assert!(
        reason(post(&transfer(1, 1, 101, "api-test")).await.unwrap())
            .await
            .contains("balance")
    );
    assert!(reason(post(&transfer(3, 0, 1, "api-test")).await.unwrap())
        .await
        .contains("unknown account"));
    let r = http
        .post(format!("{base}/v1/ledger/txs"))
        .body("{\"nope\":1}")
        .send()
        .await
        .unwrap();
    assert!(reason(r).await.contains("not a transaction"));
    // Queued behind the first: nonce 1.
    assert_eq!(
        post(&transfer(1, 1, 20, "api-test"))
            .await
            .unwrap()
            .status(),
        202
    );

    // Consensus decides a block with what the node proposes.
    let committed = {
        let mut n = node.lock().unwrap();
        let txs = n.propose(100);
        assert_eq!(txs.len(), 2);
        let r = n
            .commit(
                &Block {
                    height: 1,
                    time_ms: 1,
                    proposer: addr(1),
                    txs,
                },
                b"certificate",
            )
            .unwrap();
        assert_eq!(n.mempool_len(), 0);
        r
    };
    assert_eq!(committed.results, vec![None, None]);
    let s: Value = get("/v1/ledger/status")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["height"], 1);
    assert_eq!(s["app_hash"], hex::encode(committed.app_hash));
    let b: Value = get("/v1/ledger/blocks/1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["result"]["app_hash"], hex::encode(committed.app_hash));
    assert_eq!(get("/v1/ledger/blocks/2").await.unwrap().status(), 404);
    let t: Value = get(&format!("/v1/ledger/txs/{hash}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (t["height"].as_u64(), t["result"].as_str()),
        (Some(1), Some("applied"))
    );
    let a: Value = get(&format!("/v1/ledger/accounts/{}", hex::encode(addr(2))))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let acct: Account = serde_json::from_value(a["account"].clone()).unwrap();
    assert_eq!(acct.balance, 50);
    assert_eq!(a["next_nonce"], 0);
    let proof: AccountProof = serde_json::from_value(a["proof"].clone()).unwrap();
    assert!(verify_account(committed.app_hash, &addr(2), &acct, &proof));
    assert_eq!(get("/v1/ledger/accounts/zz").await.unwrap().status(), 400);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn batches_report_each_transaction_and_only_client_submissions_are_passed_on() {
    let (dir, node) = open_node("meshcast-ledger-batch", "batch");
    let passed_on = Arc::new(Mutex::new(Vec::<[u8; 32]>::new()));
    let hook: api::OnAccept = {
        let p = passed_on.clone();
        Arc::new(move |tx: &Tx| p.lock().unwrap().push(tx.hash()))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        axum::serve(
            listener,
            axum::Router::from(api::routes_with(node.clone(), Some(hook))),
        )
        .into_future(),
    );
    let http = reqwest::Client::new();

    let mut forged = transfer(1, 1, 5, "batch");
    forged.sig[3] ^= 1;
    let batch = vec![
        serde_json::to_value(transfer(1, 0, 10, "batch")).unwrap(),
        serde_json::to_value(&forged).unwrap(),
        serde_json::json!({"not": "a tx"}),
        serde_json::to_value(transfer(1, 1, 10, "batch")).unwrap(),
    ];
    let r = http
        .post(format!("{base}/v1/ledger/txs"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let results: Vec<Value> = r.json().await.unwrap();
    assert!(results[0]["hash"].is_string(), "{results:?}");
    assert!(results[1]["error"].as_str().unwrap().contains("signature"));
    assert!(results[2]["error"]
        .as_str()
        .unwrap()
        .contains("not a transaction"));
    assert!(results[3]["hash"].is_string(), "{results:?}");
    assert_eq!(passed_on.lock().unwrap().len(), 2);

    // From another validator: taken, not passed on again.
    let r = http
        .post(format!("{base}/v1/ledger/txs"))
        .header(api::FORWARDED_HEADER, "1")
        .json(&transfer(1, 2, 10, "batch"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(passed_on.lock().unwrap().len(), 2);
    assert_eq!(node.lock().unwrap().mempool_len(), 3);
    assert_eq!(node.lock().unwrap().next_nonce(&addr(1)), 3);

    // A block holding a forged transaction the mempool never saw: refused
    // when applied (what was verified on submit does not vouch for it).
    let mut n = node.lock().unwrap();
    let mut txs = n.propose(1);
    let mut bad = transfer(1, 1, 1, "batch");
    bad.sig[0] ^= 1;
    txs.push(bad);
    let r = n
        .commit(
            &Block {
                height: 1,
                time_ms: 1,
                proposer: addr(1),
                txs,
            },
            b"c",
        )
        .unwrap();
    assert_eq!(r.results[0], None);
    assert!(r.results[1].as_deref().unwrap().contains("signature"));
    // The two still waiting were re-checked against the new state.
    assert_eq!(n.mempool_len(), 2);
    assert_eq!(n.account(&addr(1)).unwrap().balance, 90);
    drop(n);
    std::fs::remove_dir_all(&dir).unwrap();
}
