//! A ledger node's local half: the mempool, and committing decided blocks
//! to state and storage. Consensus sits on top: it asks `propose` for a
//! block's transactions and hands every decided block to `commit`, in
//! height order. Nothing here decides what is final.

use crate::state::{Account, BlockResult, Genesis, State, TxError};
use crate::store::{CommittedBlock, Store, StoreError};
use crate::tx::{Block, Tx};
use crate::Address;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

/// Most transactions waiting at once.
pub const MEMPOOL_LIMIT: usize = 100_000;

#[derive(Default)]
struct Mempool {
    txs: VecDeque<Tx>,
    hashes: HashSet<[u8; 32]>,
    /// Transactions queued per sender (their nonces follow the state's).
    queued: HashMap<Address, u64>,
}

/// Where and how a transaction was committed.
pub struct CommittedTx {
    pub height: u64,
    pub index: u32,
    pub tx: Tx,
    /// The reason it had no effect, if it was refused in its block.
    pub refused: Option<String>,
}

pub struct LedgerNode {
    state: State,
    store: Store,
    app_hash: [u8; 32],
    mempool: Mempool,
    /// Hashes of waiting transactions whose signatures were verified when
    /// they were taken, so neither re-checking them after a block nor
    /// applying them verifies again.
    verified: HashSet<[u8; 32]>,
    /// Unix milliseconds of the last committed block (0 before the first).
    last_block_time: u64,
    /// The genesis validator set (the set consensus runs with).
    validators: Vec<crate::state::GenesisValidator>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Rejected(#[from] TxError),
    #[error("transaction is already waiting")]
    Duplicate,
    #[error("the mempool is full ({MEMPOOL_LIMIT} transactions); retry later")]
    Full,
}

impl LedgerNode {
    pub fn open(path: &Path, genesis: &Genesis) -> Result<LedgerNode, StoreError> {
        let (store, state, app_hash) = Store::open(path, genesis)?;
        let last_block_time = store.block(state.height)?.map_or(0, |b| b.block.time_ms);
        Ok(LedgerNode {
            state,
            store,
            app_hash,
            mempool: Mempool::default(),
            verified: HashSet::new(),
            last_block_time,
            validators: genesis.validators.clone(),
        })
    }

    /// The validators consensus runs with, and their voting power.
    pub fn validators(&self) -> &[crate::state::GenesisValidator] {
        &self.validators
    }

    /// Checks a transaction against the state and what is already queued
    /// from its sender; queues it or says why not.
    pub fn submit(&mut self, tx: Tx) -> Result<[u8; 32], SubmitError> {
        let hash = tx.hash();
        if self.mempool.hashes.contains(&hash) {
            return Err(SubmitError::Duplicate);
        }
        if self.mempool.txs.len() >= MEMPOOL_LIMIT {
            return Err(SubmitError::Full);
        }
        let queued = self.mempool.queued.get(&tx.body.from).copied().unwrap_or(0);
        if !self.verified.contains(&hash) {
            self.state.check_queued(&tx, queued)?;
            self.verified.insert(hash);
        } else {
            self.state.check_queued_signed(&tx, queued)?;
        }
        *self.mempool.queued.entry(tx.body.from).or_default() += 1;
        self.mempool.hashes.insert(hash);
        self.mempool.txs.push_back(tx);
        Ok(hash)
    }

    /// Transactions for the next block, oldest first.
    pub fn propose(&self, max: usize) -> Vec<Tx> {
        self.mempool.txs.iter().take(max).cloned().collect()
    }

    /// Applies and stores a decided block with the certificate that proves
    /// it, then drops from the mempool what it included and what can no
    /// longer apply.
    pub fn commit(&mut self, block: &Block, certificate: &[u8]) -> Result<BlockResult, StoreError> {
        let included: Vec<[u8; 32]> = block.txs.iter().map(Tx::hash).collect();
        let verified = &self.verified;
        let mut next = included.iter();
        let result = self
            .state
            .apply_block_with(block, |_| next.next().is_some_and(|h| verified.contains(h)));
        self.store
            .commit(block, &result, &self.state, certificate)?;
        self.app_hash = result.app_hash;
        self.last_block_time = block.time_ms;
        for h in &included {
            self.verified.remove(h);
        }
        let included: HashSet<[u8; 32]> = included.into_iter().collect();
        let waiting = std::mem::take(&mut self.mempool.txs);
        self.mempool = Mempool::default();
        for tx in waiting {
            let hash = tx.hash();
            // Re-checked against the new state; stale nonces fall out.
            if !included.contains(&hash) && self.submit(tx).is_err() {
                self.verified.remove(&hash);
            }
        }
        Ok(result)
    }

    /// The nonce `address`'s next transaction must carry, counting those
    /// already waiting in the mempool.
    pub fn next_nonce(&self, address: &Address) -> u64 {
        let queued = self.mempool.queued.get(address).copied().unwrap_or(0);
        self.state.account(address).map_or(0, |a| a.nonce) + queued
    }

    pub fn height(&self) -> u64 {
        self.state.height
    }

    pub fn app_hash(&self) -> [u8; 32] {
        self.app_hash
    }

    pub fn chain_id(&self) -> &str {
        &self.state.chain_id
    }

    pub fn mempool_len(&self) -> usize {
        self.mempool.txs.len()
    }

    pub fn account(&self, a: &Address) -> Option<&Account> {
        self.state.account(a)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn block(&self, height: u64) -> Result<Option<CommittedBlock>, StoreError> {
        self.store.block(height)
    }

    pub fn certificate(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.certificate(height)
    }

    /// Unix milliseconds of the last committed block (0 before the first).
    pub fn last_block_time(&self) -> u64 {
        self.last_block_time
    }

    /// A committed transaction, its block height, index and outcome.
    pub fn tx(&self, hash_hex: &str) -> Result<Option<CommittedTx>, StoreError> {
        let Some((height, index)) = self.store.tx_location(hash_hex)? else {
            return Ok(None);
        };
        let Some(b) = self.store.block(height)? else {
            return Ok(None);
        };
        let i = index as usize;
        Ok(b.block.txs.get(i).cloned().map(|tx| CommittedTx {
            height,
            index,
            tx,
            refused: b.result.results.get(i).cloned().flatten(),
        }))
    }
}
