//! Transactions and blocks, and what a signature covers.
//!
//! A transaction's signed bytes are a domain tag followed by the JSON of
//! its body. serde_json writes struct fields in declaration order and the
//! body holds no maps, so the encoding is deterministic for a given body;
//! it is also what a user can read in `meshcast ledger tx` output.

use crate::{hex32, hex64, Address};
use ed25519_dalek::{Signer, SigningKey};
use meshcast_control::ed25519;
use serde::{Deserialize, Serialize};

const TX_DOMAIN: &[u8] = b"meshcast-ledger-tx-v1\n";
const VOTE_DOMAIN: &[u8] = b"meshcast-ledger-vote-v1\n";
const PREVOTE_DOMAIN: &[u8] = b"meshcast-ledger-prevote-v1\n";
const NIL_PRECOMMIT_DOMAIN: &[u8] = b"meshcast-ledger-nil-precommit-v1\n";

/// The bytes a validator signs for a consensus vote. A precommit for a
/// block is exactly `SignedVote::message`, so two conflicting precommits
/// taken off the wire are evidence the ledger can check.
pub fn vote_sign_bytes(
    precommit: bool,
    height: u64,
    round: u32,
    block: Option<&[u8; 32]>,
) -> Vec<u8> {
    match (precommit, block) {
        (true, Some(b)) => SignedVote::message(height, round, b),
        _ => {
            let domain = if precommit {
                NIL_PRECOMMIT_DOMAIN
            } else {
                PREVOTE_DOMAIN
            };
            let mut m = domain.to_vec();
            m.extend_from_slice(&height.to_be_bytes());
            m.extend_from_slice(&round.to_be_bytes());
            if let Some(b) = block {
                m.extend_from_slice(b);
            }
            m
        }
    }
}

/// Paid work a reward is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Bytes delivered to viewers (a settled delivery epoch).
    Delivery { bytes: u64 },
    /// Bytes stored for an hour, summed.
    Storage { byte_hours: u64 },
    /// Seconds of output video transcoded.
    Transcode { seconds: u64 },
}

/// A validator's signature on a block at a height and round; two of them
/// for different blocks at the same height and round are evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVote {
    pub height: u64,
    pub round: u32,
    #[serde(with = "hex32")]
    pub block: [u8; 32],
    #[serde(with = "hex64")]
    pub sig: [u8; 64],
}

impl SignedVote {
    pub fn message(height: u64, round: u32, block: &[u8; 32]) -> Vec<u8> {
        let mut m = VOTE_DOMAIN.to_vec();
        m.extend_from_slice(&height.to_be_bytes());
        m.extend_from_slice(&round.to_be_bytes());
        m.extend_from_slice(block);
        m
    }

    pub fn sign(key: &SigningKey, height: u64, round: u32, block: [u8; 32]) -> SignedVote {
        let sig = key.sign(&Self::message(height, round, &block)).to_bytes();
        SignedVote {
            height,
            round,
            block,
            sig,
        }
    }

    pub fn verify(&self, by: &Address) -> bool {
        ed25519::verify(
            by,
            &Self::message(self.height, self.round, &self.block),
            &self.sig,
        )
    }
}

const PROPOSAL_DOMAIN: &[u8] = b"meshcast-consensus-proposal-stream-v1\n";

/// A proposer's signature on the block it streams at a height and round
/// (what consensus's `Fin` part carries): over the round it is valid from
/// (`pol_round`, -1 for none) and the BLAKE3 of the block's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedProposal {
    pub height: u64,
    pub round: u32,
    pub pol_round: i64,
    #[serde(with = "hex32")]
    pub data_hash: [u8; 32],
    #[serde(with = "hex64")]
    pub sig: [u8; 64],
}

impl SignedProposal {
    pub fn message(
        height: u64,
        round: i64,
        pol_round: i64,
        proposer: &Address,
        data_hash: &[u8; 32],
    ) -> Vec<u8> {
        let mut m = PROPOSAL_DOMAIN.to_vec();
        m.extend_from_slice(&height.to_be_bytes());
        m.extend_from_slice(&round.to_be_bytes());
        m.extend_from_slice(&pol_round.to_be_bytes());
        m.extend_from_slice(proposer);
        m.extend_from_slice(data_hash);
        m
    }

    pub fn verify(&self, by: &Address) -> bool {
        let m = Self::message(
            self.height,
            self.round as i64,
            self.pol_round,
            by,
            &self.data_hash,
        );
        ed25519::verify(by, &m, &self.sig)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// Two votes by the offender for different blocks at one height and round.
    DoubleSign { a: SignedVote, b: SignedVote },
    /// Two different proposals by the offender for one height and round.
    DoubleProposal {
        a: SignedProposal,
        b: SignedProposal,
    },
    /// A delivery claim an authority (a HUB) audited and found fabricated:
    /// `claim` is the BLAKE3 of the node-signed claim envelope, which the
    /// HUB serves with the opening that failed, and `reason` what failed.
    /// Only an authority may send it; each claim counts once.
    Delivery {
        #[serde(with = "hex32")]
        claim: [u8; 32],
        epoch: u64,
        reason: String,
    },
    /// A transcode whose sampled segment an authority checked and found
    /// false. The chain checks what it can without the media: the
    /// commitment (hex wire form of the worker's signed envelope) is the
    /// offender's, consistent, and `index` is one of the segments its
    /// challenge (root and the HUB's `nonce`) picks; the verdict on the
    /// pixels is the authority's word, with `reason` saying what failed.
    Transcode {
        commitment: String,
        #[serde(with = "hex32")]
        nonce: [u8; 32],
        index: u32,
        reason: String,
    },
    /// Storage audits an authority judged failed or late, repeatedly:
    /// `audit` is the BLAKE3 of the envelope the verdict rests on (the
    /// node-signed answer, or the HUB-signed challenge it never answered
    /// in time), which the HUB serves with the challenge and the shards'
    /// roots for anyone to re-judge. Authority only; each audit counts once.
    Storage {
        #[serde(with = "hex32")]
        audit: [u8; 32],
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Action {
    Transfer {
        #[serde(with = "hex32")]
        to: Address,
        amount: u64,
    },
    /// Balance → the sender's escrow, from which its content's work is paid.
    Deposit { amount: u64 },
    /// Balance → stake (nodes and validators).
    Bond { amount: u64 },
    /// Stake → unbonding; back to the balance after the unbond delay.
    Unbond { amount: u64 },
    /// Pays `node` from `payer`'s escrow for `work`, at the genesis price.
    /// Only an authority (a HUB) may send it; `reference` (e.g. the
    /// delivery epoch it settles) is paid at most once.
    Reward {
        #[serde(with = "hex32")]
        payer: Address,
        #[serde(with = "hex32")]
        node: Address,
        work: Work,
        reference: String,
    },
    /// Burns a share of `offender`'s stake; each evidence counts once.
    Slash {
        #[serde(with = "hex32")]
        offender: Address,
        evidence: Evidence,
    },
}

/// What the sender signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxBody {
    pub chain_id: String,
    #[serde(with = "hex32")]
    pub from: Address,
    pub nonce: u64,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tx {
    #[serde(flatten)]
    pub body: TxBody,
    #[serde(with = "hex64")]
    pub sig: [u8; 64],
}

impl TxBody {
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut m = TX_DOMAIN.to_vec();
        m.extend_from_slice(&serde_json::to_vec(self).expect("a tx body always serializes"));
        m
    }

    pub fn sign(self, key: &SigningKey) -> Tx {
        debug_assert_eq!(key.verifying_key().to_bytes(), self.from);
        let sig = key.sign(&self.signed_bytes()).to_bytes();
        Tx { body: self, sig }
    }
}

impl Tx {
    pub fn verify_signature(&self) -> bool {
        ed25519::verify(&self.body.from, &self.body.signed_bytes(), &self.sig)
    }

    /// BLAKE3 of the signed transaction, its id.
    pub fn hash(&self) -> [u8; 32] {
        let mut m = self.body.signed_bytes();
        m.extend_from_slice(&self.sig);
        blake3::hash(&m).into()
    }
}

/// An ordered batch of transactions at a height (as consensus decided it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub height: u64,
    /// Unix milliseconds, from the proposer.
    pub time_ms: u64,
    #[serde(with = "hex32")]
    pub proposer: Address,
    pub txs: Vec<Tx>,
}

impl Block {
    pub fn hash(&self) -> [u8; 32] {
        blake3::hash(&serde_json::to_vec(self).expect("a block always serializes")).into()
    }
}
