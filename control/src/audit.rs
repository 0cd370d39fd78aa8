//! Epoch claims and their audit: the sans-IO heart of proof of delivery.
//!
//! Edge side: [`build_claim`] sorts an epoch's acks by receipt id, commits
//! to them with a BLAKE3 Merkle tree and lists every entry (receipt id,
//! token, bytes) so the HUB can total, dedup and budget exactly. HUB side:
//! [`check_claim`] checks everything the listing shows on its own (sums,
//! duplicates, tokens, the epoch); [`challenge`] draws the entries to open
//! from a Merlin transcript over the claim and a HUB nonce; [`check_proof`]
//! verifies the opened acks against the root and against the listing.
//!
//! Why both a listing and a tree: the listing (20-odd bytes per ack) makes
//! totals, per-token budgets and duplicate receipts exact rather than
//! sampled; the tree binds each listed entry to a full ack (the edge's
//! sealed receipt and the viewer's signature), and the node's signature on
//! the claim envelope over its root makes every leaf the edge's statement;
//! the leaves are what sampling checks. A listed entry without a
//! genuine ack behind it is "fabricated"; see `sample` for the bound.

use crate::merkle::{self, Batch};
use crate::receipt::{verify_acks, Ack};
use crate::sample::{delivery_challenge, sample_size};
use crate::token::{self, token_id, TokenClaims};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Inflation the audit must catch, and the chance it may miss it.
pub const CATCH_FRACTION: f64 = 0.01;
pub const MISS_PROBABILITY: f64 = 1e-9;

pub fn sample_k() -> usize {
    sample_size(CATCH_FRACTION, MISS_PROBABILITY)
}

/// One listed ack: receipt id (hex), index into `tokens`, bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry(pub String, pub u32, pub u64);

/// What an edge claims for one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub epoch: u64,
    pub epoch_secs: u64,
    /// Merkle root (hex) over `Ack::encode` of each entry, in entry order.
    pub root: String,
    pub count: u64,
    pub bytes: u64,
    pub tokens: Vec<String>,
    pub entries: Vec<Entry>,
}

impl Claim {
    pub fn window_ms(&self) -> (u64, u64) {
        let start = self.epoch * self.epoch_secs * 1000;
        (start, start + self.epoch_secs * 1000)
    }
}

/// The edge's reply to a challenge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opening {
    pub epoch: u64,
    /// Hex of `Ack::encode`, in the order of the challenge's indices.
    pub acks: Vec<String>,
    /// Hex of the rs_merkle multi-proof for those indices.
    pub proof: String,
}

/// A claim the edge can answer challenges for.
pub struct Committed {
    pub claim: Claim,
    leaves: Vec<Vec<u8>>,
    batch: Batch,
}

/// Builds an epoch's claim. `acks` pairs each ack with its token string;
/// duplicates (same receipt id) are dropped here, never claimed.
pub fn build_claim(epoch: u64, epoch_secs: u64, acks: Vec<(String, Ack)>) -> Committed {
    let mut rows: Vec<([u8; 16], String, Ack)> = acks
        .into_iter()
        .map(|(t, a)| (a.receipt.id(), t, a))
        .collect();
    rows.sort_by_key(|r| r.0);
    rows.dedup_by(|a, b| a.0 == b.0);
    let mut tokens: Vec<String> = Vec::new();
    let mut token_index: HashMap<String, u32> = HashMap::new();
    let mut entries = Vec::with_capacity(rows.len());
    let mut leaves = Vec::with_capacity(rows.len());
    let mut bytes = 0u64;
    for (id, t, ack) in rows {
        let idx = *token_index.entry(t.clone()).or_insert_with(|| {
            tokens.push(t);
            (tokens.len() - 1) as u32
        });
        bytes += ack.receipt.receipt.len;
        entries.push(Entry(hex::encode(id), idx, ack.receipt.receipt.len));
        leaves.push(ack.encode());
    }
    let batch = Batch::new(&leaves);
    Committed {
        claim: Claim {
            epoch,
            epoch_secs,
            root: hex::encode(batch.root()),
            count: entries.len() as u64,
            bytes,
            tokens,
            entries,
        },
        leaves,
        batch,
    }
}

impl Committed {
    pub fn open(&self, indices: &[usize]) -> Result<Opening, AuditError> {
        if let Some(bad) = indices.iter().find(|i| **i >= self.leaves.len()) {
            return Err(AuditError::Inconsistent(format!(
                "challenge index {bad} is past the {} entries",
                self.leaves.len()
            )));
        }
        Ok(Opening {
            epoch: self.claim.epoch,
            acks: indices
                .iter()
                .map(|i| hex::encode(&self.leaves[*i]))
                .collect(),
            proof: hex::encode(self.batch.prove(indices)),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("claim is inconsistent: {0}")]
    Inconsistent(String),
    #[error("receipt {0} is listed twice in the claim")]
    Duplicate(String),
    #[error("epoch {0} has not ended yet")]
    FutureEpoch(u64),
    #[error("token {index}: {error}")]
    Token {
        index: usize,
        error: token::TokenError,
    },
    #[error("Merkle proof does not verify against the claimed root")]
    MerkleProof,
    #[error("entry {index}: {reason}")]
    Entry { index: usize, reason: String },
    /// The receipt names an object the catalog does not hold, or other
    /// content than it holds there. Published objects never change and
    /// published videos are never deleted (only unfinished uploads are), so
    /// this is made up. (Deleting published videos will need tombstones to
    /// keep it so.)
    #[error("entry {index}: {reason}")]
    Unpublished { index: usize, reason: String },
    #[error(
        "epoch {0} was already claimed and challenged with a different claim; one claim per epoch"
    )]
    Rechallenged(u64),
    #[error("the claim's epochs are {claimed} s long; this network's are {network} s")]
    EpochLength { claimed: u64, network: u64 },
}

impl AuditError {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuditError::Inconsistent(_) => "inconsistent",
            AuditError::Duplicate(_) => "duplicate",
            AuditError::FutureEpoch(_) => "future_epoch",
            AuditError::Token { .. } => "token",
            AuditError::MerkleProof => "merkle_proof",
            AuditError::Entry { .. } => "entry",
            AuditError::Unpublished { .. } => "unpublished",
            AuditError::Rechallenged(_) => "rechallenged",
            AuditError::EpochLength { .. } => "epoch_length",
        }
    }

    /// Whether the refusal proves the claimant fabricated its claim, so it
    /// is slashed: nothing an honest edge does produces these (it lists
    /// only acks it verified, for tokens naming it, from its own receipts
    /// for what its origin served, and opens each epoch once). Clock skew
    /// or an issuer withdrawn since are refused without a slash.
    pub fn is_fraud(&self) -> bool {
        match self {
            // An edge that kept acks from before it learned the network's
            // epoch length (an upgrade) claims them under its old one.
            AuditError::FutureEpoch(_) | AuditError::EpochLength { .. } => false,
            AuditError::Unpublished { .. } => true,
            AuditError::Token { error, .. } => matches!(
                error,
                token::TokenError::OtherEdges(_)
                    | token::TokenError::BadSignature
                    | token::TokenError::Malformed(_)
            ),
            AuditError::Inconsistent(_)
            | AuditError::Duplicate(_)
            | AuditError::MerkleProof
            | AuditError::Entry { .. }
            | AuditError::Rechallenged(_) => true,
        }
    }
}

/// What the HUB learned from a claim's listing.
#[derive(Debug, Clone)]
pub struct Checked {
    pub tokens: Vec<TokenClaims>,
    pub token_ids: Vec<[u8; 16]>,
    /// Bytes claimed per token index.
    pub per_token: Vec<u64>,
    pub ids: Vec<[u8; 16]>,
    /// Most each token may be credited in all, across edges: its budget,
    /// unless the HUB lowers it (`limit`) from what it knows itself.
    pub limits: Vec<u64>,
    /// Why a token earns nothing (`void`), by token index: its entries
    /// cost only themselves, the rest of the claim is paid.
    pub unpaid: Vec<Option<String>>,
}

impl Checked {
    /// Lowers token `index`'s total credit to at most `cap` (the HUB's own
    /// bound: the video's ladder, real-time playback since issue).
    pub fn limit(&mut self, index: usize, cap: u64) {
        self.limits[index] = self.limits[index].min(cap);
    }

    /// Token `index` earns nothing, for `reason` (its issuer is not trusted
    /// for its prefix): a fault of the token, not of the claim, so the
    /// other tokens' entries are still paid.
    pub fn void(&mut self, index: usize, reason: String) {
        self.limits[index] = 0;
        self.unpaid[index] = Some(reason);
    }

    /// Voids every token whose (known) issuer may not issue tokens for its
    /// prefix (`allowed(issuer, prefix)`: an owner's key is good for its own
    /// video only), as `check_claim` voids tokens of unknown issuers.
    pub fn void_unless_allowed(&mut self, allowed: impl Fn(&[u8; 32], &str) -> bool) {
        for index in 0..self.tokens.len() {
            let t = &self.tokens[index];
            if self.unpaid[index].is_none() && !allowed(&t.issuer, &t.prefix) {
                let reason = format!(
                    "issuer {} may not issue tokens for {}",
                    hex::encode(t.issuer),
                    t.prefix
                );
                self.void(index, reason);
            }
        }
    }
}

/// Everything checkable without opening acks, including that every token
/// lets `claimant` be paid for it (a token steered to other edges earns
/// the claimant nothing, and no honest edge serves one). A token whose
/// issuer the HUB does not trust is void: its entries earn nothing and the
/// rest of the claim stands (one viewer's token cannot cost an honest edge
/// its epoch).
pub fn check_claim(
    claim: &Claim,
    claimant: &[u8; 32],
    trusted: impl Fn(&[u8; 32]) -> bool,
    now_ms: u64,
) -> Result<Checked, AuditError> {
    let bad = |s: String| Err(AuditError::Inconsistent(s));
    if claim.epoch_secs == 0 || claim.epoch_secs > 86_400 {
        return bad(format!("epoch length {} s", claim.epoch_secs));
    }
    let (_, end) = claim.window_ms();
    if end > now_ms {
        return Err(AuditError::FutureEpoch(claim.epoch));
    }
    if claim.count != claim.entries.len() as u64 {
        return bad(format!(
            "count {} but {} entries",
            claim.count,
            claim.entries.len()
        ));
    }
    let mut sum = 0u64;
    let mut per_token = vec![0u64; claim.tokens.len()];
    let mut ids = Vec::with_capacity(claim.entries.len());
    let mut seen = HashSet::with_capacity(claim.entries.len());
    for Entry(id, t, bytes) in &claim.entries {
        let mut raw = [0u8; 16];
        if hex::decode_to_slice(id, &mut raw).is_err() {
            return bad(format!("receipt id {id:?} is not 32 hex digits"));
        }
        if !seen.insert(raw) {
            return Err(AuditError::Duplicate(id.clone()));
        }
        let Some(slot) = per_token.get_mut(*t as usize) else {
            return bad(format!("token index {t} past the token table"));
        };
        *slot = slot.saturating_add(*bytes);
        sum = sum.saturating_add(*bytes);
        ids.push(raw);
    }
    if sum != claim.bytes {
        return bad(format!("bytes {} but entries sum to {sum}", claim.bytes));
    }
    let (start, _) = claim.window_ms();
    let mut tokens = Vec::with_capacity(claim.tokens.len());
    let mut unpaid = Vec::with_capacity(claim.tokens.len());
    for (index, t) in claim.tokens.iter().enumerate() {
        let token_err = |error| AuditError::Token { index, error };
        // Valid when the epoch began; each receipt's time is checked on opening.
        let (c, void) = match token::verify(t, &trusted, start / 1000) {
            Ok(c) => (c, None),
            // Not the claim's fault: its entries earn nothing, and are
            // still opened and checked like any other.
            Err(e) if e.costs_only_its_entries() => (
                token::read_unverified(t).map_err(token_err)?,
                Some(e.to_string()),
            ),
            Err(e) => return Err(token_err(e)),
        };
        c.allows_edge(claimant).map_err(token_err)?;
        tokens.push(c);
        unpaid.push(void);
    }
    let limits = tokens
        .iter()
        .zip(&unpaid)
        .map(|(t, void)| if void.is_some() { 0 } else { t.budget })
        .collect();
    Ok(Checked {
        token_ids: claim.tokens.iter().map(|t| token_id(t)).collect(),
        limits,
        tokens,
        per_token,
        ids,
        unpaid,
    })
}

/// Indices the edge must open: fixed by the claim's bytes (as signed) and a
/// nonce the HUB picked after receiving it, so the edge can neither choose
/// nor grind them (the HUB keeps one challenge per epoch: a claim sent
/// again gets the same one, a different claim for the epoch is refused).
pub fn challenge(claim_bytes: &[u8], hub_nonce: &[u8; 32], claim: &Claim) -> Vec<usize> {
    let mut input = Vec::with_capacity(claim_bytes.len() + 32);
    input.extend_from_slice(claim_bytes);
    input.extend_from_slice(hub_nonce);
    let sizes: Vec<u64> = claim.entries.iter().map(|e| e.2).collect();
    delivery_challenge(&input, &sizes, sample_k())
}

/// Verifies an opening: Merkle paths, then every opened ack against the
/// listing, the claimant, the epoch window, its token, and both signatures.
/// An object the HUB published, as a receipt must name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub size: u64,
    /// `receipt::content_id` of the object as the origin serves it.
    pub content: [u8; 16],
}

/// Checks the opened acks: Merkle paths, listing, claimant, epoch window,
/// token expiry and prefix, session signatures — and that each names an
/// object the HUB published (`published(path)`), with its content id and a
/// range inside it. The node's signature on the claim proves the edge said
/// it, not that the content exists: a receipt for made-up content or bytes past an
/// object's end refuses the whole claim.
pub fn check_proof(
    claim: &Claim,
    checked: &Checked,
    claimant: &[u8; 32],
    indices: &[usize],
    opening: &Opening,
    published: impl Fn(&str) -> Option<Published>,
) -> Result<(), AuditError> {
    let entry_err = |index: usize, reason: String| AuditError::Entry { index, reason };
    if opening.acks.len() != indices.len() {
        return Err(AuditError::Inconsistent(format!(
            "{} acks opened for {} challenged entries",
            opening.acks.len(),
            indices.len()
        )));
    }
    let mut leaves = Vec::with_capacity(indices.len());
    for (pos, h) in opening.acks.iter().enumerate() {
        let bytes = hex::decode(h).map_err(|_| entry_err(indices[pos], "ack is not hex".into()))?;
        leaves.push(bytes);
    }
    let proof = hex::decode(&opening.proof).map_err(|_| AuditError::MerkleProof)?;
    let mut root = [0u8; 32];
    hex::decode_to_slice(&claim.root, &mut root)
        .map_err(|_| AuditError::Inconsistent("root is not 64 hex digits".into()))?;
    if !merkle::verify(root, indices, &leaves, claim.entries.len(), &proof) {
        return Err(AuditError::MerkleProof);
    }
    let (start, end) = claim.window_ms();
    let mut acks = Vec::with_capacity(leaves.len());
    let mut sessions = Vec::with_capacity(leaves.len());
    for (leaf, &index) in leaves.iter().zip(indices) {
        let fail = |r: &str| entry_err(index, r.to_string());
        let ack = Ack::decode(leaf).map_err(|e| entry_err(index, e.to_string()))?;
        let r = &ack.receipt.receipt;
        let Entry(_, t, bytes) = &claim.entries[index];
        let t = *t as usize;
        if ack.receipt.id() != checked.ids[index] {
            return Err(fail("receipt differs from the listed receipt id"));
        }
        if r.len != *bytes {
            return Err(fail("receipt bytes differ from the listed bytes"));
        }
        if r.node != *claimant {
            return Err(fail("receipt was issued by another node"));
        }
        if r.token != checked.token_ids[t] {
            return Err(fail("receipt names another token than the listing"));
        }
        if r.time_ms < start || r.time_ms >= end {
            return Err(fail(
                "receipt time is outside this epoch (replayed from another epoch?)",
            ));
        }
        let tok = &checked.tokens[t];
        if r.time_ms / 1000 > tok.expires {
            return Err(fail("receipt is later than its token's expiry"));
        }
        tok.covers(&r.path)
            .map_err(|e| entry_err(index, e.to_string()))?;
        let unpublished = |reason: &str| AuditError::Unpublished {
            index,
            reason: reason.to_string(),
        };
        let object = published(&r.path)
            .ok_or_else(|| unpublished("receipt names content the HUB does not publish"))?;
        if r.content != object.content {
            return Err(unpublished(
                "receipt's content differs from the published object",
            ));
        }
        if r.start
            .checked_add(r.len)
            .is_none_or(|end| end > object.size)
        {
            return Err(fail(
                "receipt's byte range runs past the published object's end",
            ));
        }
        if !crate::ed25519::is_key(&tok.session) {
            return Err(fail("token's session key is not an Ed25519 key"));
        }
        let session = tok.session;
        acks.push(ack);
        sessions.push(session);
    }
    verify_acks(&acks, &sessions).map_err(|i| {
        entry_err(
            indices[i],
            "ack signature does not verify with the token's session key".into(),
        )
    })
}

/// What a passed claim earns.
pub struct Credit {
    pub bytes: u64,
    /// Bytes credited per token id.
    pub per_token: Vec<([u8; 16], u64)>,
    /// Tokens credited less than claimed (over budget, or void), as reasons.
    pub over_budget: Vec<String>,
    /// Listed receipts that were already paid (in any epoch, by any
    /// numbering): they earn nothing again.
    pub already_paid: Vec<[u8; 16]>,
    /// Receipts this settlement pays: to be remembered as paid.
    pub paid_now: Vec<[u8; 16]>,
}

/// Credit for a claim that passed: claimed bytes per token, less every
/// listed receipt already paid (`paid(receipt_id)`: so a re-sent log or a
/// renumbered epoch earns nothing twice), capped by what is left of each
/// token's limit (`Checked::limits`) across all edges (`spent(token_id)`). The caller reads
/// both inside the transaction that records the result.
pub fn settle(
    checked: &Checked,
    claim: &Claim,
    spent: impl Fn(&[u8; 16]) -> u64,
    paid: impl Fn(&[u8; 16]) -> bool,
) -> Credit {
    let mut claimed = checked.per_token.clone();
    let (mut already_paid, mut paid_now) = (Vec::new(), Vec::new());
    for (id, Entry(_, token, bytes)) in checked.ids.iter().zip(&claim.entries) {
        if paid(id) {
            // check_claim summed these entries into per_token.
            claimed[*token as usize] -= bytes;
            already_paid.push(*id);
        } else {
            paid_now.push(*id);
        }
    }
    let mut total = 0;
    let mut credits = Vec::new();
    let mut over = Vec::new();
    for (i, claimed) in claimed.iter().enumerate() {
        let id = checked.token_ids[i];
        let left = checked.limits[i].saturating_sub(spent(&id));
        let credit = (*claimed).min(left);
        if let Some(reason) = &checked.unpaid[i] {
            over.push(format!("token {}: not paid: {reason}", hex::encode(id)));
        } else if credit < *claimed {
            over.push(format!(
                "token {}: {} bytes claimed, {} left of its budget",
                hex::encode(id),
                claimed,
                left
            ));
        }
        total += credit;
        credits.push((id, credit));
    }
    assert!(
        total <= claim.bytes,
        "credit {total} exceeds the claim's {}",
        claim.bytes
    );
    Credit {
        bytes: total,
        per_token: credits,
        over_budget: over,
        already_paid,
        paid_now,
    }
}
