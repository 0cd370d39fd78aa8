//! Hooks and their deliveries, in redb (`webhooks.redb`): what is owed to
//! whom survives a restart, and a delivery's body is fixed when it is made
//! so every retry signs the same bytes.

use crate::HubError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// hook id → JSON `Hook`.
const HOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("hooks");
/// `"{hook}/{event}"` → JSON `Delivery`.
const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");
/// `"catalog"` → the last catalog event fanned out.
const CURSOR: TableDefinition<&str, u64> = TableDefinition::new("cursor");

/// Given-up deliveries kept per hook for its owner to look at.
pub const KEPT_FAILURES: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub id: String,
    pub account: String,
    pub url: String,
    /// `whsec_…`: needed in the clear to sign; shown to its owner once.
    pub secret: String,
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub hook: String,
    /// The `webhook-id`: the same on every attempt, so receivers dedupe.
    pub event: String,
    pub kind: String,
    pub video: String,
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix milliseconds of the next attempt; `None`: given up.
    pub next_at: Option<u64>,
    /// What the last attempt got: an HTTP status or why there was none.
    pub last: Option<String>,
    pub created: u64,
}

pub struct Store {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> HubError {
    HubError::Catalog(format!("webhooks: {e}"))
}

fn key(hook: &str, event: &str) -> String {
    format!("{hook}/{event}")
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, HubError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(HOOKS).map_err(err)?;
        txn.open_table(DELIVERIES).map_err(err)?;
        txn.open_table(CURSOR).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Store { db })
    }

    pub fn put_hook(&self, hook: &Hook) -> Result<(), HubError> {
        let json = serde_json::to_vec(hook).map_err(err)?;
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(HOOKS)
            .map_err(err)?
            .insert(hook.id.as_str(), json.as_slice())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    pub fn hooks(&self) -> Result<Vec<Hook>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(HOOKS).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(err)? {
            let (_, v) = entry.map_err(err)?;
            out.push(serde_json::from_slice(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    pub fn hook(&self, id: &str) -> Result<Option<Hook>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(HOOKS).map_err(err)?;
        match table.get(id).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    /// Removes a hook and everything still owed to it.
    pub fn delete_hook(&self, id: &str) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(HOOKS)
            .map_err(err)?
            .remove(id)
            .map_err(err)?;
        {
            let mut deliveries = txn.open_table(DELIVERIES).map_err(err)?;
            let (lo, hi) = (format!("{id}/"), format!("{id}0"));
            deliveries
                .retain_in(lo.as_str()..hi.as_str(), |_, _| false)
                .map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    pub fn cursor(&self) -> Result<u64, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CURSOR).map_err(err)?;
        Ok(table.get("catalog").map_err(err)?.map_or(0, |v| v.value()))
    }

    /// Records the deliveries of events up to `cursor`, and the cursor, in
    /// one transaction. One already there (an event fanned out again after
    /// a crash) is left as it is.
    pub fn fan_out(&self, deliveries: &[Delivery], cursor: u64) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(DELIVERIES).map_err(err)?;
            for d in deliveries {
                let k = key(&d.hook, &d.event);
                if table.get(k.as_str()).map_err(err)?.is_none() {
                    let json = serde_json::to_vec(d).map_err(err)?;
                    table.insert(k.as_str(), json.as_slice()).map_err(err)?;
                }
            }
            txn.open_table(CURSOR)
                .map_err(err)?
                .insert("catalog", cursor)
                .map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    /// Every delivery (pending and given up), or one hook's.
    pub fn deliveries(&self, hook: Option<&str>) -> Result<Vec<Delivery>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(DELIVERIES).map_err(err)?;
        let mut out = Vec::new();
        let range = match hook {
            Some(h) => table.range(format!("{h}/").as_str()..format!("{h}0").as_str()),
            None => table.range::<&str>(..),
        };
        for entry in range.map_err(err)? {
            let (_, v) = entry.map_err(err)?;
            out.push(serde_json::from_slice(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    /// A delivered one is removed; any other is saved as it now stands,
    /// and a hook's given-up ones beyond `KEPT_FAILURES` are dropped,
    /// oldest first.
    pub fn settle(&self, d: &Delivery, delivered: bool) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(DELIVERIES).map_err(err)?;
            let k = key(&d.hook, &d.event);
            if delivered {
                table.remove(k.as_str()).map_err(err)?;
            } else if table.get(k.as_str()).map_err(err)?.is_some() {
                // (Absent: the hook was deleted meanwhile; nothing is owed.)
                let json = serde_json::to_vec(d).map_err(err)?;
                table.insert(k.as_str(), json.as_slice()).map_err(err)?;
            }
        }
        if d.next_at.is_none() {
            self.prune(&txn, &d.hook)?;
        }
        txn.commit().map_err(err)
    }

    fn prune(&self, txn: &redb::WriteTransaction, hook: &str) -> Result<(), HubError> {
        let mut table = txn.open_table(DELIVERIES).map_err(err)?;
        let mut failed: Vec<(u64, String)> = Vec::new();
        for entry in table
            .range(format!("{hook}/").as_str()..format!("{hook}0").as_str())
            .map_err(err)?
        {
            let (k, v) = entry.map_err(err)?;
            let d: Delivery = serde_json::from_slice(v.value()).map_err(err)?;
            if d.next_at.is_none() {
                failed.push((d.created, k.value().to_string()));
            }
        }
        failed.sort();
        let excess = failed.len().saturating_sub(KEPT_FAILURES);
        for (_, k) in failed.into_iter().take(excess) {
            table.remove(k.as_str()).map_err(err)?;
        }
        Ok(())
    }
}
