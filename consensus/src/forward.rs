//! Passing client transactions on to the other validators' APIs, so that
//! whichever validator proposes next has them (Malachite's channel API
//! carries proposals and votes, not a mempool). Each peer gets the batches
//! in the order they were taken, so one sender's nonces arrive in order; a
//! peer that is down misses them and is caught up by the blocks.

use meshcast_ledger::api::{OnAccept, FORWARDED_HEADER};
use meshcast_ledger::Tx;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::debug;

/// Most transactions per forwarded request.
const BATCH: usize = 2_000;

/// The hook for the API, or `None` with no peers to forward to.
pub fn spawn(peer_apis: Vec<SocketAddr>) -> Option<OnAccept> {
    if peer_apis.is_empty() {
        return None;
    }
    let client = reqwest::Client::new();
    let lanes: Vec<mpsc::UnboundedSender<Arc<Vec<u8>>>> = peer_apis
        .into_iter()
        .map(|peer| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Arc<Vec<u8>>>();
            let client = client.clone();
            let url = format!("http://{peer}/v1/ledger/txs");
            tokio::spawn(async move {
                while let Some(body) = rx.recv().await {
                    let sent = client
                        .post(&url)
                        .header(FORWARDED_HEADER, "1")
                        .header("content-type", "application/json")
                        .body(body.as_ref().clone())
                        .send()
                        .await;
                    if let Err(e) = sent {
                        debug!(%peer, error = %e, "could not forward transactions");
                    }
                }
            });
            tx
        })
        .collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<Tx>();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let body = Arc::new(serde_json::to_vec(&batch).expect("transactions serialize"));
            batch.clear();
            for lane in &lanes {
                let _ = lane.send(body.clone());
            }
        }
    });
    Some(Arc::new(move |t: &Tx| {
        let _ = tx.send(t.clone());
    }))
}
