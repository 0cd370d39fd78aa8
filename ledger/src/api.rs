//! The ledger's HTTP/JSON API as an axum `Router` (the caller binds it):
//! submit a transaction, an account with its balance, nonce and a Merkle
//! proof against the app hash, a block by height, a transaction by hash,
//! and status.

use crate::hash::prove_account;
use crate::node::{LedgerNode, SubmitError};
use crate::tx::Tx;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::{Arc, Mutex};
use utoipa_axum::{router::OpenApiRouter, routes};

pub type Shared = Arc<Mutex<LedgerNode>>;

/// Called with each transaction a client submitted and the mempool took
/// (not those another validator forwarded), so the caller can pass it on.
pub type OnAccept = Arc<dyn Fn(&Tx) + Send + Sync>;

/// Marks a submission forwarded by another validator: taken, not passed on.
pub const FORWARDED_HEADER: &str = "meshcast-forwarded";

#[derive(Clone)]
struct Api {
    node: Shared,
    on_accept: Option<OnAccept>,
}

/// The operations' tag in the OpenAPI document.
pub const TAG: &str = "ledger";

pub fn routes(node: Shared) -> OpenApiRouter {
    routes_with(node, None)
}

/// The API's router and its OpenAPI operations, from one list (every route
/// is registered through `routes!`, so none is left out of the document).
pub fn routes_with(node: Shared, on_accept: Option<OnAccept>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(submit))
        .routes(routes!(tx))
        .routes(routes!(account))
        .routes(routes!(block))
        .with_state(Api { node, on_accept })
}

fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": reason.to_string() }))).into_response()
}

fn lock(node: &Shared) -> std::sync::MutexGuard<'_, LedgerNode> {
    node.lock().unwrap_or_else(|p| p.into_inner())
}

/// The chain's id, height, app hash and mempool size.
#[utoipa::path(get, path = "/v1/ledger/status", tag = TAG,
    responses((status = 200, description = "`chain_id`, `height`, `app_hash` (hex), `mempool` (waiting transactions), `validators` (`address`, `power`)", body = Object)))]
async fn status(State(api): State<Api>) -> Response {
    let n = lock(&api.node);
    Json(json!({
        "chain_id": n.chain_id(),
        "height": n.height(),
        "app_hash": hex::encode(n.app_hash()),
        "mempool": n.mempool_len(),
        "validators": n.validators(),
    }))
    .into_response()
}

/// Submit signed transactions.
///
/// One transaction (answered 202 with its hash, or an error status with the
/// reason), or a JSON array of them (answered 200 with one result each, in
/// order: `{"hash"}` or `{"error"}`).
#[utoipa::path(post, path = "/v1/ledger/txs", tag = TAG,
    request_body(content = Object, description = "A signed transaction (`meshcast ledger transfer --print` makes one), or a JSON array of them"),
    responses(
        (status = 202, description = "Taken into the mempool: `{\"hash\"}`", body = Object),
        (status = 200, description = "An array was submitted: one `{\"hash\"}` or `{\"error\"}` per transaction, in order", body = [Object]),
        (status = 400, description = "Not a transaction, a bad signature or a wrong nonce", body = Object),
        (status = 409, description = "Already submitted", body = Object),
        (status = 503, description = "The mempool is full; retry later", body = Object)))]
async fn submit(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let forwarded = headers.contains_key(FORWARDED_HEADER);
    let pass_on = api.on_accept.as_ref().filter(|_| !forwarded);
    let take = |tx: Tx| -> Result<[u8; 32], SubmitError> {
        // A copy only when there is somewhere to pass it on to.
        let copy = pass_on.map(|_| tx.clone());
        let accepted = lock(&api.node).submit(tx);
        if let (Ok(_), Some(hook), Some(tx)) = (&accepted, pass_on, copy) {
            hook(&tx);
        }
        accepted
    };
    if body.first() == Some(&b'[') {
        let txs: Vec<serde_json::Value> = match serde_json::from_slice(&body) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a JSON array: {e}")),
        };
        let results: Vec<_> = txs
            .into_iter()
            .map(|v| match serde_json::from_value::<Tx>(v) {
                Err(e) => json!({ "error": format!("not a transaction: {e}") }),
                Ok(tx) => match take(tx) {
                    Ok(hash) => json!({ "hash": hex::encode(hash) }),
                    Err(e) => json!({ "error": e.to_string() }),
                },
            })
            .collect();
        return Json(results).into_response();
    }
    let tx: Tx = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a transaction: {e}")),
    };
    match take(tx) {
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

/// An account: balance, stake, nonce, and a Merkle proof against the app hash.
#[utoipa::path(get, path = "/v1/ledger/accounts/{address}", tag = TAG,
    params(("address" = String, Path, description = "The account's Ed25519 public key, 64 hex digits")),
    responses(
        (status = 200, description = "`account`, `next_nonce` (counting waiting transactions), `height`, `app_hash`, `proof`", body = Object),
        (status = 400, description = "Not 64 hex digits", body = Object),
        (status = 404, description = "No such account", body = Object)))]
async fn account(State(api): State<Api>, Path(address): Path<String>) -> Response {
    let node = api.node;
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
            // The nonce a new transaction needs, counting those waiting.
            "next_nonce": n.next_nonce(&a),
            "height": n.height(),
            "app_hash": hex::encode(n.app_hash()),
            "proof": proof,
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, format!("unknown account {address}")),
    }
}

/// A committed block by height.
#[utoipa::path(get, path = "/v1/ledger/blocks/{height}", tag = TAG,
    params(("height" = u64, Path, description = "Block height, from 1")),
    responses(
        (status = 200, description = "The block: header and transactions", body = Object),
        (status = 404, description = "No block at that height yet", body = Object)))]
async fn block(State(api): State<Api>, Path(height): Path<u64>) -> Response {
    match lock(&api.node).block(height) {
        Ok(Some(b)) => Json(b).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no block {height} yet")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A committed transaction by hash, with where it landed and its result.
#[utoipa::path(get, path = "/v1/ledger/txs/{hash}", tag = TAG,
    params(("hash" = String, Path, description = "The transaction's hash, hex, as `POST /v1/ledger/txs` answered")),
    responses(
        (status = 200, description = "`height`, `index`, `tx`, `result` (`\"applied\"` or `{\"refused\"}`)", body = Object),
        (status = 404, description = "Not committed (yet)", body = Object)))]
async fn tx(State(api): State<Api>, Path(hash): Path<String>) -> Response {
    match lock(&api.node).tx(&hash) {
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
