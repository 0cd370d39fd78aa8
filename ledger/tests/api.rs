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

#[tokio::test]
async fn submit_commit_and_read_back() {
    let dir = std::env::temp_dir().join(format!("meshcast-ledger-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let genesis = Genesis {
        chain_id: "api-test".into(),
        params: Params {
            delivery_price_per_gb: 1,
            storage_price_per_gb_hour: 1,
            transcode_price_per_second: 1,
            unbond_delay: 1,
            slash_bps: 0,
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, api::routes(node.clone())).into_future());
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
    let proof: AccountProof = serde_json::from_value(a["proof"].clone()).unwrap();
    assert!(verify_account(committed.app_hash, &addr(2), &acct, &proof));
    assert_eq!(get("/v1/ledger/accounts/zz").await.unwrap().status(), 400);
    std::fs::remove_dir_all(&dir).unwrap();
}
