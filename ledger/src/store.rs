//! The ledger in redb: accounts, settled references, reward carries, the
//! state's scalars, and every block with its result and app hash. One write
//! transaction per block, so a crash leaves the state at a block boundary.

use crate::state::{Account, BlockResult, Genesis, State};
use crate::tx::Block;
use crate::Address;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const ACCOUNTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("accounts");
const SETTLED: TableDefinition<&str, ()> = TableDefinition::new("settled");
/// payer ‖ node (64 bytes) → carry (10⁻⁹ µMESH); absent = 0.
const CARRIES: TableDefinition<&[u8], u64> = TableDefinition::new("carries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
/// tx hash (hex) → (height, index in block).
const TXS: TableDefinition<&str, (u64, u32)> = TableDefinition::new("txs");
/// height → what consensus proves the block with (its commit certificate,
/// opaque here), so a lagging validator can be sent the block and proof.
const CERTIFICATES: TableDefinition<u64, &[u8]> = TableDefinition::new("certificates");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ledger storage: {0}")]
    Db(String),
    #[error("genesis: {0}")]
    Genesis(String),
    #[error("this store holds chain {stored:?}, the genesis says {genesis:?}")]
    ChainMismatch { stored: String, genesis: String },
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

#[derive(Serialize, Deserialize)]
struct Meta {
    chain_id: String,
    height: u64,
    supply: u128,
    #[serde(with = "crate::hex32")]
    app_hash: [u8; 32],
}

/// A committed block as stored and served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommittedBlock {
    pub block: Block,
    pub result: BlockResult,
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens the store, creating it from `genesis` the first time; returns
    /// the state as of the last committed block.
    pub fn open(path: &Path, genesis: &Genesis) -> Result<(Store, State, [u8; 32]), StoreError> {
        let db = Database::create(path).map_err(err)?;
        let mut state = State::from_genesis(genesis).map_err(StoreError::Genesis)?;
        let txn = db.begin_write().map_err(err)?;
        let meta: Option<Meta> = {
            let m = txn.open_table(META).map_err(err)?;
            let raw = m.get("state").map_err(err)?;
            match raw {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(err)?),
                None => None,
            }
        };
        let app_hash = match meta {
            None => {
                let h = crate::hash::app_hash(&state);
                {
                    let mut accounts = txn.open_table(ACCOUNTS).map_err(err)?;
                    for (a, acct) in &state.accounts {
                        accounts
                            .insert(&a[..], serde_json::to_vec(acct).map_err(err)?.as_slice())
                            .map_err(err)?;
                    }
                    txn.open_table(SETTLED).map_err(err)?;
                    txn.open_table(CARRIES).map_err(err)?;
                    txn.open_table(BLOCKS).map_err(err)?;
                    txn.open_table(TXS).map_err(err)?;
                    txn.open_table(CERTIFICATES).map_err(err)?;
                    let meta = Meta {
                        chain_id: state.chain_id.clone(),
                        height: 0,
                        supply: state.supply,
                        app_hash: h,
                    };
                    txn.open_table(META)
                        .map_err(err)?
                        .insert("state", serde_json::to_vec(&meta).map_err(err)?.as_slice())
                        .map_err(err)?;
                }
                h
            }
            Some(meta) => {
                if meta.chain_id != state.chain_id {
                    return Err(StoreError::ChainMismatch {
                        stored: meta.chain_id,
                        genesis: state.chain_id,
                    });
                }
                state.accounts.clear();
                for row in txn.open_table(ACCOUNTS).map_err(err)?.iter().map_err(err)? {
                    let (k, v) = row.map_err(err)?;
                    let a: Address = k.value().try_into().map_err(|_| err("bad account key"))?;
                    state.accounts.insert(
                        a,
                        serde_json::from_slice::<Account>(v.value()).map_err(err)?,
                    );
                }
                for row in txn.open_table(SETTLED).map_err(err)?.iter().map_err(err)? {
                    state
                        .settled
                        .insert(row.map_err(err)?.0.value().to_string());
                }
                for row in txn.open_table(CARRIES).map_err(err)?.iter().map_err(err)? {
                    let (k, v) = row.map_err(err)?;
                    let k = k.value();
                    if k.len() != 64 {
                        return Err(err("bad carry key"));
                    }
                    let payer: Address = k[..32].try_into().expect("32 of 64 bytes");
                    let node: Address = k[32..].try_into().expect("32 of 64 bytes");
                    state.carries.insert((payer, node), v.value());
                }
                state.height = meta.height;
                state.supply = meta.supply;
                meta.app_hash
            }
        };
        txn.commit().map_err(err)?;
        Ok((Store { db }, state, app_hash))
    }

    /// Writes a block, its result and the state it produced, atomically.
    pub fn commit(
        &self,
        block: &Block,
        result: &BlockResult,
        state: &State,
        certificate: &[u8],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut accounts = txn.open_table(ACCOUNTS).map_err(err)?;
            for a in &result.changed {
                if let Some(acct) = state.accounts.get(a) {
                    accounts
                        .insert(&a[..], serde_json::to_vec(acct).map_err(err)?.as_slice())
                        .map_err(err)?;
                }
            }
            let mut settled = txn.open_table(SETTLED).map_err(err)?;
            for key in &result.settled {
                settled.insert(key.as_str(), ()).map_err(err)?;
            }
            let mut carries = txn.open_table(CARRIES).map_err(err)?;
            for pair in &result.carries {
                let key = [pair.0, pair.1].concat();
                match state.carries.get(pair) {
                    Some(c) => carries.insert(key.as_slice(), *c).map(|_| ()),
                    None => carries.remove(key.as_slice()).map(|_| ()),
                }
                .map_err(err)?;
            }
            let mut txs = txn.open_table(TXS).map_err(err)?;
            for (i, tx) in block.txs.iter().enumerate() {
                txs.insert(hex::encode(tx.hash()).as_str(), (block.height, i as u32))
                    .map_err(err)?;
            }
            txn.open_table(CERTIFICATES)
                .map_err(err)?
                .insert(block.height, certificate)
                .map_err(err)?;
            let stored = CommittedBlock {
                block: block.clone(),
                result: result.clone(),
            };
            txn.open_table(BLOCKS)
                .map_err(err)?
                .insert(
                    block.height,
                    serde_json::to_vec(&stored).map_err(err)?.as_slice(),
                )
                .map_err(err)?;
            let meta = Meta {
                chain_id: state.chain_id.clone(),
                height: state.height,
                supply: state.supply,
                app_hash: result.app_hash,
            };
            txn.open_table(META)
                .map_err(err)?
                .insert("state", serde_json::to_vec(&meta).map_err(err)?.as_slice())
                .map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    pub fn block(&self, height: u64) -> Result<Option<CommittedBlock>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(BLOCKS).map_err(err)?;
        match t.get(height).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    /// The certificate stored with block `height`.
    pub fn certificate(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(CERTIFICATES).map_err(err)?;
        Ok(t.get(height).map_err(err)?.map(|v| v.value().to_vec()))
    }

    /// Where a transaction was committed: (height, index).
    pub fn tx_location(&self, hash_hex: &str) -> Result<Option<(u64, u32)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(TXS).map_err(err)?;
        Ok(t.get(hash_hex).map_err(err)?.map(|v| v.value()))
    }
}
