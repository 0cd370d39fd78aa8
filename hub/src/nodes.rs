//! Node registration and heartbeats (signed envelopes), and `GET /v1/nodes`.

use crate::openapi::TAG_NODES;
use crate::registry::NodeRecord;
use crate::Hub;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ed25519_dalek::VerifyingKey;
use meshcast_control::envelope::{Envelope, Verifier};
use meshcast_control::identity::node_id;
use meshcast_control::messages::{self, Heartbeat, HubInfo, Register};
use serde_json::json;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(evidence))
        .routes(routes!(register))
        .routes(routes!(heartbeat))
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A node is "up" if it was heard from within this many heartbeats.
pub const MISSED_HEARTBEATS: u64 = 3;
pub const HEARTBEAT_SECS: u64 = 10;

pub fn refuse(status: StatusCode, reason: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": reason.to_string() }))).into_response()
}

/// Opens a signed envelope of `domain`: decodes, checks signature,
/// timestamp and replay. Returns the sender's key and node id.
pub fn open_envelope(
    hub: &Hub,
    domain: &'static str,
    body: &[u8],
) -> Result<(Envelope, VerifyingKey, String), Box<Response>> {
    let env = Envelope::decode(body).map_err(|e| {
        hub.metrics
            .envelopes_refused
            .with_label_values(&[domain])
            .inc();
        Box::new(refuse(StatusCode::BAD_REQUEST, e))
    })?;
    let result = {
        let mut verifiers = hub.verifiers.lock().unwrap_or_else(|p| p.into_inner());
        verifiers
            .entry(domain)
            .or_insert_with(|| Verifier::new(domain, messages::MAX_SKEW_SECS))
            .verify(&env, now_secs())
    };
    match result {
        Ok(key) => {
            let id = node_id(&key);
            Ok((env, key, id))
        }
        Err(e) => {
            hub.metrics
                .envelopes_refused
                .with_label_values(&[domain])
                .inc();
            tracing::warn!(domain, error = %e, "refused a signed message");
            Err(Box::new(refuse(StatusCode::UNAUTHORIZED, e)))
        }
    }
}

/// The registered, admitted node behind a signed request (with `role`,
/// when one is needed), or why not; it is marked seen now.
pub fn admitted_node(hub: &Hub, id: &str, role: Option<&str>) -> Result<(), Box<Response>> {
    let node = match hub.registry.node(id) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Err(Box::new(refuse(
                StatusCode::NOT_FOUND,
                format!("node {id} is not registered; register first"),
            )))
        }
        Err(e) => return Err(Box::new(refuse(StatusCode::INTERNAL_SERVER_ERROR, e))),
    };
    if let Some(role) = role.filter(|r| !node.roles.iter().any(|have| have == r)) {
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            format!("node {id} did not register the {role} role"),
        )));
    }
    let a = hub.admission(&node);
    if !a.admitted() {
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            Hub::not_admitted(&node, a),
        )));
    }
    let now = now_secs();
    let _ = hub.registry.upsert_node(id, |cur| {
        let mut n = cur.unwrap_or(node.clone());
        n.last_seen = now;
        n
    });
    Ok(())
}

fn info(hub: &Hub, node: &NodeRecord) -> HubInfo {
    HubInfo {
        hub: hex::encode(hub.key.public().to_bytes()),
        node: node.id.clone(),
        issuers: hub.issuers().as_ref().clone(),
        admission: Some(hub.admission(node)),
        epoch_secs: Some(hub.ledger.epoch_secs()).filter(|s| *s > 0),
    }
}

/// A node joins (or updates its address, roles and capacity); answered
/// with what it needs to work with this hub.
#[utoipa::path(post, path = "/v1/nodes/register", tag = TAG_NODES,
    request_body(content = String, content_type = "application/octet-stream", description = "A signed envelope (domain `meshcast-register-v1`) whose body is JSON `{{addr, roles, capacity_bytes}}`"),
    responses(
        (status = 200, description = "The hub's key, the node's id, trusted token issuers, the node's admission (stake needed and held) and the epoch length", body = Object),
        (status = 400, description = "Not a valid envelope (bad signature, stale timestamp, replayed nonce) or body", body = Object)))]
async fn register(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let (env, key, id) = match open_envelope(&hub, messages::REGISTER, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let reg: Register = match serde_json::from_slice(&env.body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("registration body: {e}")),
    };
    // Workers pull their jobs and open no port: only an edge needs an
    // address viewers reach.
    let needs_addr = reg.roles.iter().any(|r| r == "edge");
    if (needs_addr || !reg.addr.is_empty())
        && !(reg.addr.starts_with("http://") || reg.addr.starts_with("https://"))
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "addr {:?} is not a base URL like http://host:port",
                reg.addr
            ),
        );
    }
    let now = now_secs();
    let rec = hub.registry.upsert_node(&id, |cur| {
        let mut n = cur.unwrap_or_else(|| NodeRecord {
            id: id.clone(),
            key: hex::encode(key.to_bytes()),
            addr: String::new(),
            roles: Vec::new(),
            capacity_bytes: 0,
            registered: now,
            last_seen: now,
            load: 0.0,
            cache_bytes: 0,
            bytes_out: 0,
            credited_bytes: 0,
            claims_accepted: 0,
            claims_rejected: 0,
            last_rejection: None,
            slashes: Vec::new(),
            probes: Default::default(),
            audits: Default::default(),
        });
        n.addr = reg.addr.clone();
        n.roles = reg.roles.clone();
        n.capacity_bytes = reg.capacity_bytes;
        n.last_seen = now;
        n
    });
    match rec {
        Ok(n) => {
            let a = hub.admission(&n);
            tracing::info!(node = %n.id, addr = %n.addr, roles = ?n.roles, stake = a.stake,
                needed = a.needed, admitted = a.admitted(), "node registered");
            Json(info(&hub, &n)).into_response()
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A registered node's periodic sign of life and load.
#[utoipa::path(post, path = "/v1/nodes/heartbeat", tag = TAG_NODES,
    request_body(content = String, content_type = "application/octet-stream", description = "A signed envelope (domain `meshcast-heartbeat-v1`) whose body is JSON `{{load, cache_bytes, bytes_out}}`"),
    responses(
        (status = 200, description = "As for registration", body = Object),
        (status = 400, description = "Not a valid envelope (bad signature, stale timestamp, replayed nonce) or body", body = Object),
        (status = 404, description = "Not registered; register first", body = Object)))]
async fn heartbeat(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let (env, _, id) = match open_envelope(&hub, messages::HEARTBEAT, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let hb: Heartbeat = match serde_json::from_slice(&env.body) {
        Ok(h) => h,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("heartbeat body: {e}")),
    };
    match hub.registry.node(&id) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("node {id} is not registered; register first"),
            )
        }
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
    let now = now_secs();
    let updated = hub.registry.upsert_node(&id, |cur| {
        let mut n = cur.expect("checked above; nodes are never deleted");
        n.last_seen = now;
        n.load = hb.load;
        n.cache_bytes = hb.cache_bytes;
        n.bytes_out = hb.bytes_out;
        n
    });
    match updated {
        Ok(n) => Json(info(&hub, &n)).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The node-signed envelopes a slash rests on (hex, wire form): decode
/// them with any envelope reader and re-run the audit.
#[utoipa::path(get, path = "/v1/evidence/{hash}", tag = TAG_NODES,
    params(("hash" = String, Path, description = "The evidence hash a slash names")),
    responses(
        (status = 200, description = "The envelopes (hex, wire form) the slash rests on", body = Object),
        (status = 404, description = "No such evidence", body = Object)))]
async fn evidence(
    State(hub): State<Arc<Hub>>,
    axum::extract::Path(hash): axum::extract::Path<String>,
) -> Response {
    match hub.registry.evidence(&hash) {
        Ok(Some(e)) => Json(e).into_response(),
        Ok(None) => refuse(StatusCode::NOT_FOUND, format!("no slash evidence {hash:?}")),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Every node the hub knows: roles, state, admission, stake, score,
/// bytes credited, audits and probes.
#[utoipa::path(get, path = "/v1/nodes", tag = TAG_NODES,
    responses((status = 200, description = "`nodes`: each node's `id`, `key`, `addr`, `roles`, `state` (`up` or `down`), `stake`, `stake_needed`, `admitted`, `credited_bytes`, `bytes_out`, `cache_bytes`, `load`, `claims_accepted`, `claims_rejected`, `last_rejection`, `slashes`, `probes` (`ok`, `failed`, `last_failure`), `audits` (`passed`, `failed`, `late`, `failing`, `slashed`) and `webrtc`", body = Object)))]
async fn list(State(hub): State<Arc<Hub>>) -> Response {
    let now = now_secs();
    match hub.registry.nodes() {
        Ok(nodes) => {
            let rows: Vec<_> = nodes
                .iter()
                .map(|n| {
                    let up = crate::admission::is_up(n, now);
                    let a = hub.admission(n);
                    let mut v = serde_json::to_value(n).unwrap_or_default();
                    v["state"] = json!(if up { "up" } else { "down" });
                    v["stake"] = json!(a.stake);
                    v["stake_needed"] = json!(a.needed);
                    v["admitted"] = json!(a.admitted());
                    v["webrtc"] = json!(hub.rtc.is_polling(&n.id, now));
                    v
                })
                .collect();
            Json(json!({ "nodes": rows })).into_response()
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
