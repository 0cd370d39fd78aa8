//! Storage on the network: after a video is published the HUB seals each
//! media object (segments, init segments) with the video's content key,
//! codes it into `k + m` shards, puts each on a different admitted storage
//! node, and keeps where (redb: `placement.redb`). Edges whose site's
//! origin is the network ask here where a video's shards are
//! (`POST /v1/placements`, signed); each gets the content key wrapped for
//! it alone. Playlists stay with the HUB's origin.

use crate::nodes::{now_secs, open_envelope, refuse};
use crate::openapi::TAG_WORK;
use crate::registry::NodeRecord;
use crate::{Hub, HubError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshcast_control::envelope::Envelope;
use meshcast_control::placement::{
    shard_name, PlacedObject, PlacedShard, Placement, PlacementRequest, Store, PLACEMENT, STORE,
    STORE_HEADER,
};
use meshcast_shards::{ContentKey, Layout};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

/// video id → the content key (32 bytes).
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("content_keys");
/// video id → JSON `Stored`.
const PLACED: TableDefinition<&str, &[u8]> = TableDefinition::new("placements");

/// A video's placement as the HUB keeps it (node ids; addresses are
/// looked up when an edge asks, so a node that moves keeps its shards).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub data: usize,
    pub parity: usize,
    pub objects: Vec<StoredObject>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredObject {
    pub path: String,
    pub len: u64,
    #[serde(with = "hex::serde")]
    pub hash: [u8; 32],
    pub shards: Vec<StoredShard>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredShard {
    pub node: String,
    pub name: String,
    pub len: u64,
    #[serde(with = "hex::serde")]
    pub root: [u8; 32],
}

pub struct Placements {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> HubError {
    HubError::Catalog(e.to_string())
}

impl Placements {
    pub fn open(path: &Path) -> Result<Placements, HubError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(KEYS).map_err(err)?;
        txn.open_table(PLACED).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Placements { db })
    }

    /// The video's content key, made on first use.
    pub fn key(&self, video: &str) -> Result<ContentKey, HubError> {
        // Edges ask for it on every placement question: a read, unless it
        // is the first time.
        {
            let txn = self.db.begin_read().map_err(err)?;
            let t = txn.open_table(KEYS).map_err(err)?;
            let found = t
                .get(video)
                .map_err(err)?
                .and_then(|v| <[u8; 32]>::try_from(v.value()).ok());
            if let Some(k) = found {
                return Ok(ContentKey::from_bytes(k));
            }
        }
        let txn = self.db.begin_write().map_err(err)?;
        let key = {
            let mut t = txn.open_table(KEYS).map_err(err)?;
            let found = t
                .get(video)
                .map_err(err)?
                .and_then(|v| <[u8; 32]>::try_from(v.value()).ok());
            match found {
                Some(k) => ContentKey::from_bytes(k),
                None => {
                    let k = ContentKey::random();
                    t.insert(video, k.to_bytes().as_slice()).map_err(err)?;
                    k
                }
            }
        };
        txn.commit().map_err(err)?;
        Ok(key)
    }

    pub fn put(&self, video: &str, s: &Stored) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut t = txn.open_table(PLACED).map_err(err)?;
            let json = serde_json::to_vec(s).map_err(err)?;
            t.insert(video, json.as_slice()).map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    /// Forgets a video's placement and content key: its shards are no
    /// longer audited, paid for or repaired.
    pub fn remove(&self, video: &str) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(PLACED)
            .map_err(err)?
            .remove(video)
            .map_err(err)?;
        txn.open_table(KEYS)
            .map_err(err)?
            .remove(video)
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Every placed video.
    pub fn videos(&self) -> Result<Vec<String>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(PLACED).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            out.push(row.map_err(err)?.0.value().to_string());
        }
        Ok(out)
    }

    pub fn get(&self, video: &str) -> Result<Option<Stored>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(PLACED).map_err(err)?;
        match t.get(video).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }
}

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(placement))
        .routes(routes!(summary))
}

/// Objects the network stores: media, not playlists.
fn stored_on_network(path: &str) -> bool {
    path.ends_with(".m4s") || path.ends_with(".mp4")
}

impl Hub {
    /// Admitted storage nodes that are up, with an address, and in good
    /// standing: none failing its audits now, none slashed for them.
    pub(crate) fn storage_nodes(&self) -> Result<Vec<NodeRecord>, HubError> {
        let now = now_secs();
        Ok(self
            .registry
            .nodes()?
            .into_iter()
            .filter(|n| n.roles.iter().any(|r| r == "storage") && !n.addr.is_empty())
            .filter(|n| crate::admission::is_up(n, now) && self.admission(n).admitted())
            .filter(|n| n.audits.in_good_standing())
            .collect())
    }

    /// Bytes of shards placed on each node, over every video.
    pub(crate) fn placed_bytes(&self) -> Result<HashMap<String, u64>, HubError> {
        let mut used: HashMap<String, u64> = HashMap::new();
        for video in self.placements.videos()? {
            for o in self
                .placements
                .get(&video)?
                .map(|s| s.objects)
                .unwrap_or_default()
            {
                for sh in o.shards {
                    *used.entry(sh.node).or_default() += sh.len;
                }
            }
        }
        Ok(used)
    }
}

/// The `total` nodes an object's shards go to, in shard order: highest
/// BLAKE3(node ‖ object) first (rendezvous hashing), so placements spread
/// evenly and a node that leaves moves only its own shards.
pub(crate) fn choose<'a>(
    nodes: &'a [NodeRecord],
    object: &str,
    total: usize,
) -> Vec<&'a NodeRecord> {
    let mut ranked: Vec<(&NodeRecord, [u8; 32])> = nodes
        .iter()
        .map(|n| {
            (
                n,
                *blake3::hash(format!("{}\n{object}", n.id).as_bytes()).as_bytes(),
            )
        })
        .collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
    ranked.into_iter().take(total).map(|(n, _)| n).collect()
}

/// Puts one shard on one node, signed by the HUB.
pub(crate) async fn put_shard(
    hub: &Hub,
    http: &reqwest::Client,
    node: &NodeRecord,
    name: &str,
    shard: Vec<u8>,
) -> Result<StoredShard, String> {
    let store = Store {
        shard: name.to_string(),
        len: shard.len() as u64,
        root: *blake3::hash(&shard).as_bytes(),
    };
    let body = serde_json::to_vec(&store).expect("serializes");
    let env = Envelope::seal(&hub.key, STORE, body, now_secs()).map_err(|e| e.to_string())?;
    let url = format!("{}/v1/shards/{name}", node.addr.trim_end_matches('/'));
    let r = http
        .put(&url)
        .header(STORE_HEADER, hex::encode(env.encode()))
        .body(shard)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !r.status().is_success() {
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        return Err(format!("{url}: {status} {}", text.trim()));
    }
    Ok(StoredShard {
        node: node.id.clone(),
        name: name.to_string(),
        len: store.len,
        root: store.root,
    })
}

/// Seals, codes and places every media object of `video`; the number
/// placed, or 0 when there are too few storage nodes (the HUB then
/// serves the video alone).
pub async fn place(hub: &Arc<Hub>, video: &str) -> Result<usize, String> {
    let st = &hub.config.storage;
    let layout = Layout::new(st.data_shards, st.parity_shards).map_err(|e| e.to_string())?;
    let nodes = hub.storage_nodes().map_err(|e| e.to_string())?;
    if nodes.len() < layout.total() {
        tracing::info!(
            video,
            nodes = nodes.len(),
            needed = layout.total(),
            "too few storage nodes: the hub keeps the video alone"
        );
        return Ok(0);
    }
    let key = hub.placements.key(video).map_err(|e| e.to_string())?;
    let mut used = hub.placed_bytes().map_err(|e| e.to_string())?;
    let files: Vec<_> = hub
        .catalog
        .files(video)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(p, _)| stored_on_network(p))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let mut objects = Vec::new();
    for (i, (path, file)) in files.iter().enumerate() {
        let blob = hub
            .blobs
            .path(&file.hash)
            .ok_or_else(|| format!("{path}: blob missing"))?;
        let plain = tokio::fs::read(&blob)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let object = format!("{video}/{path}");
        let sealed = meshcast_shards::seal(&key, &object, &plain);
        let shards = meshcast_shards::encode(layout, &sealed);
        // Only nodes with room for a shard (what they said they offer,
        // less what is placed on them).
        let room: Vec<NodeRecord> = nodes
            .iter()
            .filter(|n| {
                used.get(&n.id).copied().unwrap_or(0) + shards[0].len() as u64 <= n.capacity_bytes
            })
            .cloned()
            .collect();
        if room.len() < layout.total() {
            return Err(format!(
                "{path}: only {} storage nodes have room for its shards",
                room.len()
            ));
        }
        let targets = choose(&room, &object, layout.total());
        for n in &targets {
            *used.entry(n.id.clone()).or_default() += shards[0].len() as u64;
        }
        let puts = shards
            .into_iter()
            .enumerate()
            .zip(&targets)
            .map(|((j, shard), node)| {
                let http = &http;
                async move { put_shard(hub, http, node, &shard_name(video, path, j), shard).await }
            });
        let placed = futures_util::future::join_all(puts)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        objects.push(StoredObject {
            path: path.clone(),
            len: plain.len() as u64,
            hash: *blake3::hash(&plain).as_bytes(),
            shards: placed,
        });
        hub.metrics.shards_placed.inc_by(layout.total() as u64);
        if (i + 1) % 20 == 0 || i + 1 == files.len() {
            tracing::info!(video, placed = i + 1, of = files.len(), "placing shards");
        }
    }
    let count = objects.len();
    let stored = Stored {
        data: layout.data,
        parity: layout.parity,
        objects,
    };
    hub.placements
        .put(video, &stored)
        .map_err(|e| e.to_string())?;
    Ok(count)
}

/// Where a video's shards are, for operators and owners: every object's
/// shards by node (no key, no address).
#[utoipa::path(get, path = "/v1/placements/{video}", tag = TAG_WORK,
    params(("video" = String, Path, description = "The video's id")),
    responses(
        (status = 200, description = "Every object's shards by node (no key, no address)", body = Object),
        (status = 404, description = "Not on the network (yet)", body = Object)))]
async fn summary(
    State(hub): State<Arc<Hub>>,
    axum::extract::Path(video): axum::extract::Path<String>,
) -> Response {
    match hub.placements.get(&video) {
        Ok(Some(s)) => Json(s).into_response(),
        Ok(None) => refuse(
            StatusCode::NOT_FOUND,
            format!("video {video:?} is not on the network (yet)"),
        ),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// An admitted edge asks where a video's shards are.
#[utoipa::path(post, path = "/v1/placements", tag = TAG_WORK,
    request_body(content = String, content_type = "application/octet-stream", description = "A signed envelope (domain `meshcast-storage-placement-v1`) whose body is JSON `{{video}}`"),
    responses(
        (status = 200, description = "Where each object's shards are (node addresses) and the content key wrapped for this edge", body = Object),
        (status = 400, description = "Not a valid envelope (bad signature, stale timestamp, replayed nonce) or body", body = Object),
        (status = 403, description = "Not an admitted edge", body = Object),
        (status = 404, description = "Not on the network (yet)", body = Object)))]
async fn placement(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let (env, key, id) = match open_envelope(&hub, PLACEMENT, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let edge = match hub.registry.node(&id) {
        Ok(Some(n)) if n.roles.iter().any(|r| r == "edge") => n,
        Ok(_) => {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("node {id} is not a registered edge"),
            )
        }
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let admission = hub.admission(&edge);
    if !admission.admitted() {
        return refuse(StatusCode::FORBIDDEN, Hub::not_admitted(&edge, admission));
    }
    let req: PlacementRequest = match serde_json::from_slice(&env.body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("placement request: {e}")),
    };
    match answer(&hub, &req.video, &key) {
        Ok(Some(p)) => Json(p).into_response(),
        Ok(None) => refuse(
            StatusCode::NOT_FOUND,
            format!("video {:?} is not on the network", req.video),
        ),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn answer(
    hub: &Hub,
    video: &str,
    edge: &ed25519_dalek::VerifyingKey,
) -> Result<Option<Placement>, String> {
    let Some(stored) = hub.placements.get(video).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let key = hub.placements.key(video).map_err(|e| e.to_string())?;
    let recipient = meshcast_control::identity::x25519_public(edge);
    let wrapped = meshcast_shards::wrap_key(&key, &recipient, video).map_err(|e| e.to_string())?;
    let addrs: std::collections::HashMap<String, String> = hub
        .registry
        .nodes()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|n| (n.id, n.addr))
        .collect();
    let objects = stored
        .objects
        .into_iter()
        .map(|o| PlacedObject {
            path: o.path,
            len: o.len,
            hash: o.hash,
            shards: o
                .shards
                .into_iter()
                .map(|s| PlacedShard {
                    addr: addrs.get(&s.node).cloned().unwrap_or_default(),
                    node: s.node,
                    name: s.name,
                    len: s.len,
                    root: s.root,
                })
                .collect(),
        })
        .collect();
    Ok(Some(Placement {
        video: video.to_string(),
        data: stored.data,
        parity: stored.parity,
        key: wrapped.to_bytes(),
        objects,
    }))
}
