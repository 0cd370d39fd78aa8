//! The HUB's delivery state in redb: registered nodes, claims awaiting
//! their opening, settled epochs, and bytes spent per token. Settling an
//! epoch (credit, token spend, settled mark) is one write transaction, so a
//! crash never credits twice or half.

use crate::HubError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// node id → JSON `NodeRecord`.
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// "{node}/{epoch:020}" → JSON `Pending`.
const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending_claims");
/// "{node}/{epoch:020}" → JSON `Settlement`.
const SETTLED: TableDefinition<&str, &[u8]> = TableDefinition::new("settled_claims");
/// token id (hex) → bytes credited across all edges.
const SPENT: TableDefinition<&str, u64> = TableDefinition::new("token_spent");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub key: String,
    pub addr: String,
    pub roles: Vec<String>,
    pub capacity_bytes: u64,
    pub registered: u64,
    pub last_seen: u64,
    pub load: f64,
    pub cache_bytes: u64,
    pub bytes_out: u64,
    pub credited_bytes: u64,
    pub claims_accepted: u64,
    pub claims_rejected: u64,
    pub last_rejection: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    /// The claim exactly as signed (the challenge is derived from it).
    pub body: Vec<u8>,
    pub nonce: [u8; 32],
    pub challenge: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settlement {
    pub node: String,
    pub epoch: u64,
    pub accepted: bool,
    pub claimed_bytes: u64,
    pub credited_bytes: u64,
    pub entries: u64,
    pub opened: u64,
    pub reason: Option<String>,
    pub over_budget: Vec<String>,
    /// Bytes credited per token prefix (`/v/{id}/`): whose content it was.
    #[serde(default)]
    pub per_prefix: Vec<(String, u64)>,
}

pub struct Registry {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> HubError {
    HubError::Catalog(e.to_string())
}

pub fn epoch_key(node: &str, epoch: u64) -> String {
    format!("{node}/{epoch:020}")
}

impl Registry {
    pub fn open(path: &Path) -> Result<Self, HubError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(NODES).map_err(err)?;
        txn.open_table(PENDING).map_err(err)?;
        txn.open_table(SETTLED).map_err(err)?;
        txn.open_table(SPENT).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Registry { db })
    }

    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(NODES).map_err(err)?;
        match t.get(id).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(NODES).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(serde_json::from_slice::<NodeRecord>(v.value()).map_err(err)?);
        }
        out.sort_by_key(|n| n.registered);
        Ok(out)
    }

    /// Inserts or changes a node record in one transaction.
    pub fn upsert_node(
        &self,
        id: &str,
        change: impl FnOnce(Option<NodeRecord>) -> NodeRecord,
    ) -> Result<NodeRecord, HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        let rec = {
            let mut t = txn.open_table(NODES).map_err(err)?;
            let cur: Option<NodeRecord> = match t.get(id).map_err(err)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(err)?),
                None => None,
            };
            let rec = change(cur);
            t.insert(id, serde_json::to_vec(&rec).map_err(err)?.as_slice())
                .map_err(err)?;
            rec
        };
        txn.commit().map_err(err)?;
        Ok(rec)
    }

    pub fn settled(&self, node: &str, epoch: u64) -> Result<Option<Settlement>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(SETTLED).map_err(err)?;
        match t.get(epoch_key(node, epoch).as_str()).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    /// Every settled epoch (accepted or refused), oldest key first.
    pub fn all_settled(&self) -> Result<Vec<Settlement>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(SETTLED).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(serde_json::from_slice::<Settlement>(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    pub fn put_pending(&self, node: &str, epoch: u64, p: &Pending) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(PENDING)
            .map_err(err)?
            .insert(
                epoch_key(node, epoch).as_str(),
                serde_json::to_vec(p).map_err(err)?.as_slice(),
            )
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    pub fn pending(&self, node: &str, epoch: u64) -> Result<Option<Pending>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(PENDING).map_err(err)?;
        match t.get(epoch_key(node, epoch).as_str()).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    pub fn spent(&self, token_hex: &str) -> Result<u64, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(SPENT).map_err(err)?;
        Ok(t.get(token_hex).map_err(err)?.map_or(0, |v| v.value()))
    }

    /// Records the outcome of a claim: the settled mark, the node's credit
    /// and counters, and each token's spend — all or nothing. Returns false
    /// (and changes nothing) when the epoch was already settled.
    pub fn settle(
        &self,
        s: &Settlement,
        token_credits: &[(String, u64)],
    ) -> Result<bool, HubError> {
        let key = epoch_key(&s.node, s.epoch);
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut settled = txn.open_table(SETTLED).map_err(err)?;
            if settled.get(key.as_str()).map_err(err)?.is_some() {
                return Ok(false);
            }
            settled
                .insert(key.as_str(), serde_json::to_vec(s).map_err(err)?.as_slice())
                .map_err(err)?;
            txn.open_table(PENDING)
                .map_err(err)?
                .remove(key.as_str())
                .map_err(err)?;
            let mut spent = txn.open_table(SPENT).map_err(err)?;
            for (token, bytes) in token_credits {
                let cur = spent
                    .get(token.as_str())
                    .map_err(err)?
                    .map_or(0, |v| v.value());
                spent.insert(token.as_str(), cur + bytes).map_err(err)?;
            }
            let mut nodes = txn.open_table(NODES).map_err(err)?;
            let cur: Option<NodeRecord> = match nodes.get(s.node.as_str()).map_err(err)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(err)?),
                None => None,
            };
            let mut n =
                cur.ok_or_else(|| HubError::Catalog(format!("node {} vanished", s.node)))?;
            n.credited_bytes += s.credited_bytes;
            if s.accepted {
                n.claims_accepted += 1;
            } else {
                n.claims_rejected += 1;
                n.last_rejection = s.reason.clone();
            }
            nodes
                .insert(
                    s.node.as_str(),
                    serde_json::to_vec(&n).map_err(err)?.as_slice(),
                )
                .map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(true)
    }
}
