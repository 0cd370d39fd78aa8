//! The ledger's HTTP/JSON API as an axum `Router` (the caller binds it):
//! submit a transaction, an account with its balance, nonce and a Merkle
//! proof against the app hash, a block by height, a transaction by hash,
//! and status.

use crate::hash::prove_account;
use crate::node::{LedgerNode, SubmitError};
use crate::tx::Tx;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::{Arc, Mutex};

pub type Shared = Arc<Mutex<LedgerNode>>;

pub fn routes(node: Shared) -> Router {
    Router::new()
        .route("/v1/ledger/status", get(status))
        .route("/v1/ledger/txs", post(submit))
        .route("/v1/ledger/txs/{hash}", get(tx))
        .route("/v1/ledger/accounts/{address}", get(account))
        .route("/v1/ledger/blocks/{height}", get(block))
        .with_state(node)
}

fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": reason.to_string() }))).into_response()
}

fn lock(node: &Shared) -> std::sync::MutexGuard<'_, LedgerNode> {
    node.lock().unwrap_or_else(|p| p.into_inner())
}

async fn status(State(node): State<Shared>) -> Response {
    let n = lock(&node);
    Json(json!({
        "chain_id": n.chain_id(),
        "height": n.height(),
        "app_hash": hex::encode(n.app_hash()),
        "mempool": n.mempool_len(),
    }))
    .into_response()
}

async fn submit(State(node): State<Shared>, body: Bytes) -> Response {
    let tx: Tx = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a transaction: {e}")),
    };
    match lock(&node).submit(tx) {
        Ok(hash) => (
            StatusCode::ACCEPTED,
            Json(json!({ "hash": hex::encode(hash) })),
        )
            .into_response(),
        Err(e @ SubmitError::Full) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e @ SubmitError::Duplicate) => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn account(State(node): State<Shared>, Path(address): Path<String>) -> Response {
    let mut a = [0u8; 32];
    if hex::decode_to_slice(&address, &mut a).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "an address is 64 hex digits (an Ed25519 public key)",
        );
    }
    let n = lock(&node);
    match prove_account(n.state(), &a) {
        Some((acct, proof)) => Json(json!({
            "address": address,
            "account": acct,
            "height": n.height(),
            "app_hash": hex::encode(n.app_hash()),
            "proof": proof,
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, format!("unknown account {address}")),
    }
}

async fn block(State(node): State<Shared>, Path(height): Path<u64>) -> Response {
    match lock(&node).block(height) {
        Ok(Some(b)) => Json(b).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no block {height} yet")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn tx(State(node): State<Shared>, Path(hash): Path<String>) -> Response {
    match lock(&node).tx(&hash) {
        Ok(Some(c)) => Json(json!({
            "hash": hash,
            "height": c.height,
            "index": c.index,
            "tx": c.tx,
            "result": c.refused.map_or_else(|| json!("applied"), |r| json!({ "refused": r })),
        }))
        .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no committed transaction {hash}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
