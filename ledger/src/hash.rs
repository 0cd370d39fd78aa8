//! The app hash: a BLAKE3 Merkle root (rs_merkle, via `meshcast-control`)
//! over one leaf per account in address order, then one leaf for the rest
//! of the state (chain, supply, settled references, reward carries). A
//! balance is proven by its leaf and a Merkle path to the app hash of a
//! committed block.
//!
//! The tree is rebuilt from every account at each block: simple and
//! obviously right, O(accounts) per block; an incremental sparse Merkle
//! tree is the step up when the account count makes that show.

use crate::state::{Account, State};
use crate::Address;
use meshcast_control::merkle::{self, Batch};
use serde::{Deserialize, Serialize};

fn account_leaf(address: &Address, account: &Account) -> Vec<u8> {
    let mut leaf = b"account\n".to_vec();
    leaf.extend_from_slice(address);
    leaf.extend_from_slice(&serde_json::to_vec(account).expect("an account serializes"));
    leaf
}

fn meta_leaf(state: &State) -> Vec<u8> {
    let mut settled = blake3::Hasher::new();
    for key in &state.settled {
        settled.update(key.as_bytes());
        settled.update(b"\n");
    }
    let mut carries = blake3::Hasher::new();
    for ((payer, node), carry) in &state.carries {
        carries.update(payer);
        carries.update(node);
        carries.update(&carry.to_be_bytes());
    }
    let mut leaf = b"meta\n".to_vec();
    leaf.extend_from_slice(state.chain_id.as_bytes());
    leaf.push(0);
    leaf.extend_from_slice(&state.supply.to_be_bytes());
    leaf.extend_from_slice(settled.finalize().as_bytes());
    leaf.extend_from_slice(carries.finalize().as_bytes());
    leaf
}

fn leaves(state: &State) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = state
        .accounts
        .iter()
        .map(|(a, acct)| account_leaf(a, acct))
        .collect();
    out.push(meta_leaf(state));
    out
}

pub fn app_hash(state: &State) -> [u8; 32] {
    Batch::new(&leaves(state)).root()
}

/// Proof that `account` is the state of `address` under some app hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountProof {
    pub index: usize,
    pub total: usize,
    pub proof: String,
}

pub fn prove_account(state: &State, address: &Address) -> Option<(Account, AccountProof)> {
    let index = state.accounts.keys().position(|a| a == address)?;
    let all = leaves(state);
    let batch = Batch::new(&all);
    Some((
        state.accounts[address].clone(),
        AccountProof {
            index,
            total: all.len(),
            proof: hex::encode(batch.prove(&[index])),
        },
    ))
}

pub fn verify_account(
    app_hash: [u8; 32],
    address: &Address,
    account: &Account,
    p: &AccountProof,
) -> bool {
    let Ok(proof) = hex::decode(&p.proof) else {
        return false;
    };
    merkle::verify(
        app_hash,
        &[p.index],
        &[account_leaf(address, account)],
        p.total,
        &proof,
    )
}
