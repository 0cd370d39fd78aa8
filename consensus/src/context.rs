//! The ledger's types as Malachite sees them: heights, validators, the
//! value decided at each height (a `Block`, identified by its hash), votes,
//! proposals and the parts a proposal is streamed in, and the Ed25519
//! signing of each. What a validator signs is defined here and in
//! `meshcast_ledger::vote_sign_bytes`, so conflicting precommits are
//! evidence the ledger itself can check.

use bytes::Bytes;
use malachitebft_app_channel::app::types::core::{
    self as mc, NilOrVal, Round, SignedMessage, VoteType, VotingPower,
};
use malachitebft_signing_ed25519::{Ed25519, PrivateKey, PublicKey, Signature};
use meshcast_ledger::Block;
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Height(pub u64);

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl mc::Height for Height {
    const ZERO: Self = Height(0);
    const INITIAL: Self = Height(1);

    fn increment_by(&self, n: u64) -> Self {
        Height(self.0.saturating_add(n))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Height)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// A validator's address: its Ed25519 public key (as on the ledger).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(pub [u8; 32]);

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

impl mc::Address for Address {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    pub address: Address,
    pub public_key: PublicKey,
    pub power: VotingPower,
}

impl mc::Validator<LedgerContext> for Validator {
    fn address(&self) -> &Address {
        &self.address
    }
    fn public_key(&self) -> &PublicKey {
        &self.public_key
    }
    fn voting_power(&self) -> VotingPower {
        self.power
    }
}

/// Validators sorted by address (the order proposers rotate in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    validators: Arc<Vec<Validator>>,
}

impl ValidatorSet {
    /// From the genesis validators; refuses an empty set, zero power and
    /// keys that are not Ed25519 points.
    pub fn from_genesis(genesis: &meshcast_ledger::Genesis) -> Result<ValidatorSet, String> {
        let mut validators = Vec::new();
        for v in &genesis.validators {
            if v.power == 0 {
                return Err(format!("validator {} has power 0", hex::encode(v.address)));
            }
            validators.push(Validator {
                address: Address(v.address),
                public_key: public_key(&v.address)?,
                power: v.power,
            });
        }
        if validators.is_empty() {
            return Err("the genesis lists no validators".into());
        }
        validators.sort_by_key(|v| v.address);
        if validators.windows(2).any(|w| w[0].address == w[1].address) {
            return Err("a validator is listed twice in the genesis".into());
        }
        Ok(ValidatorSet {
            validators: Arc::new(validators),
        })
    }

    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }
}

fn public_key(key: &[u8; 32]) -> Result<PublicKey, String> {
    ed25519_consensus::VerificationKey::try_from(*key)
        .map(PublicKey::new)
        .map_err(|_| {
            format!(
                "validator {} is not an Ed25519 public key",
                hex::encode(key)
            )
        })
}

impl mc::ValidatorSet<LedgerContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.validators.len()
    }
    fn total_voting_power(&self) -> VotingPower {
        self.validators.iter().map(|v| v.power).sum()
    }
    fn get_by_address(&self, address: &Address) -> Option<&Validator> {
        self.validators
            .binary_search_by_key(address, |v| v.address)
            .ok()
            .map(|i| &self.validators[i])
    }
    fn get_by_index(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockHash(pub [u8; 32]);

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

/// What consensus decides at a height: one block, known by its hash.
#[derive(Clone, Debug)]
pub struct BlockValue {
    pub id: BlockHash,
    pub block: Arc<Block>,
}

impl BlockValue {
    pub fn new(block: Block) -> BlockValue {
        BlockValue {
            id: BlockHash(block.hash()),
            block: Arc::new(block),
        }
    }
}

// Identity is the hash: two values are the same value iff their blocks hash
// alike.
impl PartialEq for BlockValue {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for BlockValue {}
impl PartialOrd for BlockValue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for BlockValue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

impl mc::Value for BlockValue {
    type Id = BlockHash;
    fn id(&self) -> BlockHash {
        self.id
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vote {
    pub kind: VoteType,
    pub height: Height,
    pub round: Round,
    pub value: NilOrVal<BlockHash>,
    pub validator: Address,
}

impl Vote {
    pub fn sign_bytes(&self) -> Vec<u8> {
        let round = self.round.as_u32().unwrap_or(u32::MAX);
        let block = match &self.value {
            NilOrVal::Val(h) => Some(&h.0),
            NilOrVal::Nil => None,
        };
        meshcast_ledger::vote_sign_bytes(
            self.kind == VoteType::Precommit,
            self.height.0,
            round,
            block,
        )
    }
}

impl mc::Vote<LedgerContext> for Vote {
    fn height(&self) -> Height {
        self.height
    }
    fn round(&self) -> Round {
        self.round
    }
    fn value(&self) -> &NilOrVal<BlockHash> {
        &self.value
    }
    fn take_value(self) -> NilOrVal<BlockHash> {
        self.value
    }
    fn vote_type(&self) -> VoteType {
        self.kind
    }
    fn validator_address(&self) -> &Address {
        &self.validator
    }
    // The ledger asks for no vote extensions (ExtendVote answers None), so a
    // vote never carries one.
    fn extension(&self) -> Option<&mc::SignedExtension<LedgerContext>> {
        None
    }
    fn take_extension(&mut self) -> Option<mc::SignedExtension<LedgerContext>> {
        None
    }
    fn extend(self, _extension: mc::SignedExtension<LedgerContext>) -> Self {
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub height: Height,
    pub round: Round,
    pub value: BlockValue,
    pub pol_round: Round,
    pub proposer: Address,
}

const PROPOSAL_DOMAIN: &[u8] = b"meshcast-consensus-proposal-v1\n";
const PART_DOMAIN: &[u8] = b"meshcast-consensus-proposal-part-v1\n";

fn round_bytes(r: Round) -> [u8; 8] {
    r.as_i64().to_be_bytes()
}

impl Proposal {
    pub fn sign_bytes(&self) -> Vec<u8> {
        let mut m = PROPOSAL_DOMAIN.to_vec();
        m.extend_from_slice(&self.height.0.to_be_bytes());
        m.extend_from_slice(&round_bytes(self.round));
        m.extend_from_slice(&round_bytes(self.pol_round));
        m.extend_from_slice(&self.value.id.0);
        m.extend_from_slice(&self.proposer.0);
        m
    }
}

impl mc::Proposal<LedgerContext> for Proposal {
    fn height(&self) -> Height {
        self.height
    }
    fn round(&self) -> Round {
        self.round
    }
    fn value(&self) -> &BlockValue {
        &self.value
    }
    fn take_value(self) -> BlockValue {
        self.value
    }
    fn pol_round(&self) -> Round {
        self.pol_round
    }
    fn validator_address(&self) -> &Address {
        &self.proposer
    }
}

/// A proposal travels as a stream: `Init` (who proposes what height and
/// round), the block's bytes in `Data` chunks, then `Fin` with the
/// proposer's signature over all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalPart {
    Init(ProposalInit),
    Data(Bytes),
    Fin(Signature),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProposalInit {
    pub height: Height,
    pub round: Round,
    pub pol_round: Round,
    pub proposer: Address,
}

impl mc::ProposalPart<LedgerContext> for ProposalPart {
    fn is_first(&self) -> bool {
        matches!(self, ProposalPart::Init(_))
    }
    fn is_last(&self) -> bool {
        matches!(self, ProposalPart::Fin(_))
    }
}

/// What the proposer signs in `Fin`: the init fields and a hash of the
/// block bytes, so a stream cannot be spliced from two proposals.
/// It is `meshcast_ledger::SignedProposal`'s message, so two of them for
/// one round are evidence the ledger checks.
pub fn stream_sign_bytes(init: &ProposalInit, block_bytes_hash: &[u8; 32]) -> Vec<u8> {
    meshcast_ledger::SignedProposal::message(
        init.height.0,
        init.round.as_i64(),
        init.pol_round.as_i64(),
        &init.proposer.0,
        block_bytes_hash,
    )
}

#[derive(Clone, Debug, Default)]
pub struct LedgerContext;

impl mc::Context for LedgerContext {
    type Address = Address;
    type Height = Height;
    type ProposalPart = ProposalPart;
    type Proposal = Proposal;
    type Validator = Validator;
    type ValidatorSet = ValidatorSet;
    type Value = BlockValue;
    type Vote = Vote;
    type Extension = ();
    type SigningScheme = Ed25519;

    /// Round robin over the validators in address order, one step per
    /// height and per round, so a validator that is down only costs the
    /// rounds it would have proposed.
    fn select_proposer<'a>(
        &self,
        validator_set: &'a ValidatorSet,
        height: Height,
        round: Round,
    ) -> &'a Validator {
        let n = validator_set.validators.len() as u64;
        assert!(n > 0, "a validator set is never empty");
        let r = round.as_u32().unwrap_or(0) as u64;
        let i = (height.0.wrapping_add(r)) % n;
        &validator_set.validators[i as usize]
    }

    fn new_proposal(
        &self,
        height: Height,
        round: Round,
        value: BlockValue,
        pol_round: Round,
        address: Address,
    ) -> Proposal {
        Proposal {
            height,
            round,
            value,
            pol_round,
            proposer: address,
        }
    }

    fn new_prevote(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<BlockHash>,
        address: Address,
    ) -> Vote {
        Vote {
            kind: VoteType::Prevote,
            height,
            round,
            value: value_id,
            validator: address,
        }
    }

    fn new_precommit(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<BlockHash>,
        address: Address,
    ) -> Vote {
        Vote {
            kind: VoteType::Precommit,
            height,
            round,
            value: value_id,
            validator: address,
        }
    }
}

/// Signs and verifies consensus messages with the validator's key.
pub struct Signer {
    key: PrivateKey,
}

impl Signer {
    pub fn new(seed: [u8; 32]) -> Signer {
        Signer {
            key: PrivateKey::from(seed),
        }
    }

    pub fn address(&self) -> Address {
        Address(*self.key.public_key().as_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.key.sign(msg)
    }

    /// The same key for signing ledger transactions (slashing reports).
    pub fn ledger_key(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&self.key.inner().to_bytes())
    }
}

fn part_bytes(part: &ProposalPart) -> Vec<u8> {
    let mut m = PART_DOMAIN.to_vec();
    match part {
        ProposalPart::Init(i) => m.extend_from_slice(&stream_sign_bytes(i, &[0; 32])),
        ProposalPart::Data(d) => m.extend_from_slice(blake3::hash(d).as_bytes()),
        ProposalPart::Fin(s) => m.extend_from_slice(&s.to_bytes()),
    }
    m
}

impl mc::SigningProvider<LedgerContext> for Signer {
    fn sign_vote(&self, vote: Vote) -> SignedMessage<LedgerContext, Vote> {
        let signature = self.sign(&vote.sign_bytes());
        SignedMessage::new(vote, signature)
    }

    fn verify_signed_vote(&self, vote: &Vote, signature: &Signature, key: &PublicKey) -> bool {
        key.verify(&vote.sign_bytes(), signature).is_ok()
    }

    fn sign_proposal(&self, proposal: Proposal) -> SignedMessage<LedgerContext, Proposal> {
        let signature = self.sign(&proposal.sign_bytes());
        SignedMessage::new(proposal, signature)
    }

    fn verify_signed_proposal(&self, p: &Proposal, signature: &Signature, key: &PublicKey) -> bool {
        key.verify(&p.sign_bytes(), signature).is_ok()
    }

    fn sign_proposal_part(&self, part: ProposalPart) -> SignedMessage<LedgerContext, ProposalPart> {
        let signature = self.sign(&part_bytes(&part));
        SignedMessage::new(part, signature)
    }

    fn verify_signed_proposal_part(
        &self,
        part: &ProposalPart,
        signature: &Signature,
        key: &PublicKey,
    ) -> bool {
        key.verify(&part_bytes(part), signature).is_ok()
    }

    fn sign_vote_extension(&self, extension: ()) -> SignedMessage<LedgerContext, ()> {
        SignedMessage::new(extension, self.sign(b"meshcast-consensus-no-extension-v1"))
    }

    fn verify_signed_vote_extension(&self, _: &(), signature: &Signature, key: &PublicKey) -> bool {
        key.verify(b"meshcast-consensus-no-extension-v1", signature)
            .is_ok()
    }
}
