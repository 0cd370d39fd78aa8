//! The HUB's delivery state in redb: registered nodes, claims awaiting
//! their opening, settled epochs, bytes spent per token and every receipt
//! paid. Settling an epoch is one write transaction that reads token spend
//! and paid receipts and writes credit, spend, paid receipts and the
//! settled mark: redb runs one writer at a time, so two edges settling the
//! same token cannot both see its budget unspent, and a crash never credits
//! twice or half.

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
/// receipt id → the epoch key that paid it.
const PAID: TableDefinition<&[u8; 16], &str> = TableDefinition::new("paid_receipts");
/// claim envelope hash (hex) → JSON `Evidence`.
const EVIDENCE: TableDefinition<&str, &[u8]> = TableDefinition::new("slash_evidence");

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
    /// Claims this HUB found fabricated and slashed the node for.
    #[serde(default)]
    pub slashes: Vec<SlashRecord>,
    /// What the HUB's probes found on it.
    #[serde(default)]
    pub probes: crate::probes::ProbeStats,
    /// How its storage audits went.
    #[serde(default)]
    pub audits: AuditStats,
}

/// A storage node's audit record on this HUB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditStats {
    pub passed: u64,
    pub failed: u64,
    pub late: u64,
    /// Failed or late audits since the last one it passed (or its last
    /// slash): at `[storage] slash_after` it is slashed and its shards
    /// are rebuilt elsewhere.
    pub failing: u32,
    /// Times it was slashed for audits; one is enough to keep new shards
    /// off it and have its old ones rebuilt elsewhere.
    pub slashed: u32,
    /// Unix milliseconds of the last audit it passed.
    pub last_passed_ms: u64,
    /// The last verdict, for operators.
    pub last: Option<String>,
}

impl AuditStats {
    /// No audit failing now and never slashed for audits: may take shards.
    pub fn in_good_standing(&self) -> bool {
        self.failing == 0 && self.slashed == 0
    }
}

/// One slash for a fabricated claim; `evidence` names the claim envelope
/// (BLAKE3, hex) served at `/v1/evidence/{evidence}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlashRecord {
    pub epoch: u64,
    pub reason: String,
    pub evidence: String,
}

/// What a slash rests on: the node-signed claim and opening envelopes, as
/// received, so anyone can re-run the audit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evidence {
    pub node: String,
    pub epoch: u64,
    pub reason: String,
    /// Hex of the claim envelope (wire form, signature included).
    pub claim: String,
    /// Hex of the second envelope the verdict rests on: the opening that
    /// failed, or the first claim for an epoch claimed twice. For a
    /// transcode slash (where `claim` is the signed commitment): JSON with
    /// the challenge's nonce and the failed sample (its index, rung,
    /// number, and the segment and init segment as uploaded, hex).
    pub also: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    /// The claim exactly as signed (the challenge is derived from it).
    pub body: Vec<u8>,
    /// The whole claim envelope (kept as evidence should the opening fail).
    #[serde(default)]
    pub envelope: Vec<u8>,
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
    /// Listed receipts that had been paid before: they earned nothing.
    #[serde(default)]
    pub already_paid: u64,
}

/// What settling a claim decided, computed inside the transaction.
pub struct Decision {
    pub settlement: Settlement,
    /// Bytes to add to each token's spend (token id hex).
    pub token_credits: Vec<(String, u64)>,
    /// Receipts paid by this settlement.
    pub paid: Vec<[u8; 16]>,
}

impl Decision {
    /// A refusal: no credit, no spend, nothing paid.
    pub fn refusal(settlement: Settlement) -> Decision {
        Decision {
            settlement,
            token_credits: Vec::new(),
            paid: Vec::new(),
        }
    }
}

/// Reads settlement needs, from inside its write transaction.
pub trait SettleView {
    /// Bytes credited so far under a token, across all edges.
    fn spent(&self, token: &[u8; 16]) -> u64;
    /// Whether a receipt was paid before.
    fn paid(&self, receipt: &[u8; 16]) -> bool;
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
        txn.open_table(PAID).map_err(err)?;
        txn.open_table(EVIDENCE).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Registry { db })
    }

    /// Keeps the evidence for a slash under its claim hash (hex).
    pub fn put_evidence(&self, hash: &str, e: &Evidence) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut t = txn.open_table(EVIDENCE).map_err(err)?;
            t.insert(hash, serde_json::to_vec(e).map_err(err)?.as_slice())
                .map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    pub fn evidence(&self, hash: &str) -> Result<Option<Evidence>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(EVIDENCE).map_err(err)?;
        match t.get(hash).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
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

    /// Settles `node`'s `epoch`: `decide` reads token spend and paid
    /// receipts inside the write transaction, and what it returns is
    /// recorded in the same transaction — the settled mark, the node's
    /// credit and counters, each token's spend, the receipts paid — all or
    /// nothing. Returns None (and changes nothing) when the epoch was
    /// already settled.
    pub fn settle(
        &self,
        node: &str,
        epoch: u64,
        decide: impl FnOnce(&dyn SettleView) -> Decision,
    ) -> Result<Option<Settlement>, HubError> {
        let key = epoch_key(node, epoch);
        let txn = self.db.begin_write().map_err(err)?;
        let decision = {
            let settled = txn.open_table(SETTLED).map_err(err)?;
            if settled.get(key.as_str()).map_err(err)?.is_some() {
                return Ok(None);
            }
            let view = TxnView {
                spent: txn.open_table(SPENT).map_err(err)?,
                paid: txn.open_table(PAID).map_err(err)?,
                failed: std::cell::RefCell::new(None),
            };
            let decision = decide(&view);
            if let Some(e) = view.failed.take() {
                return Err(e);
            }
            decision
        };
        let s = &decision.settlement;
        assert!(
            s.node == node && s.epoch == epoch,
            "a decision for another epoch"
        );
        assert!(
            s.credited_bytes <= s.claimed_bytes,
            "credited more than claimed"
        );
        {
            txn.open_table(SETTLED)
                .map_err(err)?
                .insert(key.as_str(), serde_json::to_vec(s).map_err(err)?.as_slice())
                .map_err(err)?;
            txn.open_table(PENDING)
                .map_err(err)?
                .remove(key.as_str())
                .map_err(err)?;
            let mut spent = txn.open_table(SPENT).map_err(err)?;
            for (token, bytes) in &decision.token_credits {
                let cur = spent
                    .get(token.as_str())
                    .map_err(err)?
                    .map_or(0, |v| v.value());
                spent.insert(token.as_str(), cur + bytes).map_err(err)?;
            }
            let mut paid = txn.open_table(PAID).map_err(err)?;
            for receipt in &decision.paid {
                paid.insert(receipt, key.as_str()).map_err(err)?;
            }
            let mut nodes = txn.open_table(NODES).map_err(err)?;
            let cur: Option<NodeRecord> = match nodes.get(node).map_err(err)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(err)?),
                None => None,
            };
            let mut n = cur.ok_or_else(|| HubError::Catalog(format!("node {node} vanished")))?;
            n.credited_bytes += s.credited_bytes;
            if s.accepted {
                n.claims_accepted += 1;
            } else {
                n.claims_rejected += 1;
                n.last_rejection = s.reason.clone();
            }
            nodes
                .insert(node, serde_json::to_vec(&n).map_err(err)?.as_slice())
                .map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Some(decision.settlement))
    }
}

/// The tables a settlement reads, open in its write transaction. A read
/// error is kept and fails the settlement (the transaction is dropped).
struct TxnView<'t> {
    spent: redb::Table<'t, &'static str, u64>,
    paid: redb::Table<'t, &'static [u8; 16], &'static str>,
    failed: std::cell::RefCell<Option<HubError>>,
}

impl TxnView<'_> {
    fn fail(&self, e: impl std::fmt::Display) {
        self.failed.borrow_mut().get_or_insert(err(e));
    }
}

impl SettleView for TxnView<'_> {
    fn spent(&self, token: &[u8; 16]) -> u64 {
        match self.spent.get(hex::encode(token).as_str()) {
            Ok(v) => v.map_or(0, |v| v.value()),
            Err(e) => {
                self.fail(e);
                u64::MAX
            }
        }
    }

    fn paid(&self, receipt: &[u8; 16]) -> bool {
        match self.paid.get(receipt) {
            Ok(v) => v.is_some(),
            Err(e) => {
                self.fail(e);
                true
            }
        }
    }
}

/// A bare record for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn test_node(id: &str) -> NodeRecord {
    tests::node(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            key: String::new(),
            addr: String::new(),
            roles: vec![],
            capacity_bytes: 0,
            registered: 0,
            last_seen: 0,
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
        }
    }

    fn settlement(node: &str, epoch: u64, claimed: u64, credited: u64) -> Settlement {
        Settlement {
            node: node.into(),
            epoch,
            accepted: true,
            claimed_bytes: claimed,
            credited_bytes: credited,
            entries: 1,
            opened: 1,
            reason: None,
            over_budget: vec![],
            per_prefix: vec![],
            already_paid: 0,
        }
    }

    /// Two edges settle claims on one token at the same moment, each
    /// claiming its whole budget: together they are never credited more.
    #[test]
    fn racing_edges_never_exceed_a_token_budget() {
        const BUDGET: u64 = 1_000_000;
        let dir = std::env::temp_dir().join(format!("meshcast-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let reg = std::sync::Arc::new(Registry::open(&dir.join("r.redb")).unwrap());
        let token = [7u8; 16];
        for round in 0..20u64 {
            let start = std::sync::Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = ["edge-a", "edge-b"]
                .into_iter()
                .map(|n| {
                    let (reg, start) = (reg.clone(), start.clone());
                    reg.upsert_node(n, |_| node(n)).unwrap();
                    std::thread::spawn(move || {
                        start.wait();
                        reg.settle(n, round, |view| {
                            let spent = view.spent(&token);
                            // Later rounds: the budget grows with the round.
                            let left = (BUDGET * (round + 1)).saturating_sub(spent);
                            Decision {
                                settlement: settlement(n, round, BUDGET, BUDGET.min(left)),
                                token_credits: vec![(hex::encode(token), BUDGET.min(left))],
                                paid: vec![[
                                    round as u8,
                                    n.len() as u8,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                    0,
                                ]],
                            }
                        })
                        .unwrap()
                        .unwrap()
                    })
                })
                .collect();
            let credited: u64 = threads
                .into_iter()
                .map(|t| t.join().unwrap().credited_bytes)
                .sum();
            assert_eq!(
                credited, BUDGET,
                "round {round}: both edges were credited {credited}"
            );
        }
        // Settled once: the same epoch again changes nothing.
        let again = reg
            .settle("edge-a", 0, |_| unreachable!("already settled"))
            .unwrap();
        assert!(again.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
