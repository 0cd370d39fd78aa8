//! Proposal streams, sans-IO: cutting a block into signed parts for the
//! network, and putting parts from peers back together (they may arrive
//! out of order, twice, or never finish). A stream that completes is
//! checked — proposer known, signature over the init and the block bytes,
//! block decodes — before anything reaches consensus.

use crate::codec::decode_block;
use crate::context::{
    stream_sign_bytes, Address, BlockValue, Height, ProposalInit, ProposalPart, Signer,
    ValidatorSet,
};
use bytes::{Bytes, BytesMut};
use malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use malachitebft_app_channel::app::types::core::ValidatorSet as _;
use malachitebft_app_channel::app::types::PeerId;
use malachitebft_signing_ed25519::Signature;
use meshcast_ledger::{Evidence, SignedProposal};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Largest `Data` part (the pub-sub limit is 4 MiB).
pub const CHUNK: usize = 512 * 1024;
/// Largest block, in bytes of JSON, a peer may stream.
pub const MAX_BLOCK_BYTES: usize = 64 * 1024 * 1024;
/// Unfinished streams kept at once; the oldest is dropped beyond this.
pub const MAX_OPEN_STREAMS: usize = 64;

/// The stream id of a proposal: its height and round (and the proposer,
/// so two proposers' streams in one round never mix).
pub fn stream_id(init: &ProposalInit) -> StreamId {
    let mut b = BytesMut::with_capacity(48);
    b.extend_from_slice(&init.height.0.to_be_bytes());
    b.extend_from_slice(&init.round.as_i64().to_be_bytes());
    b.extend_from_slice(&init.proposer.0);
    StreamId::new(b.freeze())
}

/// The messages that carry `block_bytes` as proposed by `signer`.
pub fn stream_proposal(
    signer: &Signer,
    init: ProposalInit,
    block_bytes: &Bytes,
) -> Vec<StreamMessage<ProposalPart>> {
    debug_assert_eq!(init.proposer, signer.address());
    let id = stream_id(&init);
    let sig = signer.sign(&stream_sign_bytes(
        &init,
        blake3::hash(block_bytes).as_bytes(),
    ));
    let mut parts = vec![ProposalPart::Init(init)];
    let mut rest = block_bytes.clone();
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        parts.push(ProposalPart::Data(rest.split_to(n)));
    }
    parts.push(ProposalPart::Fin(sig));
    let mut out: Vec<StreamMessage<ProposalPart>> = parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| StreamMessage::new(id.clone(), i as u64, StreamContent::Data(p)))
        .collect();
    out.push(StreamMessage::new(id, out.len() as u64, StreamContent::Fin));
    out
}

/// A stream put back together and checked.
#[derive(Debug, Clone)]
pub struct ReceivedProposal {
    pub init: ProposalInit,
    pub value: BlockValue,
    /// BLAKE3 of the streamed bytes and the proposer's signature over it
    /// and the init: what makes a second proposal evidence.
    pub data_hash: [u8; 32],
    pub signature: Signature,
}

/// Each proposer's signed proposal per height and round; a second,
/// different one from the same proposer is evidence of equivocation.
/// (Malachite 0.5 keeps equivocating *votes* to itself; proposals pass
/// through the application, so this is where they can be caught.)
#[derive(Default)]
pub struct Equivocations {
    seen: BTreeMap<(u64, u32, Address), SignedProposal>,
    reported: BTreeSet<(u64, u32, Address)>,
}

/// Heights below the committed one for which proposals are remembered.
const EQUIVOCATION_WINDOW: u64 = 16;

impl Equivocations {
    pub fn observe(&mut self, p: &ReceivedProposal) -> Option<(Address, Evidence)> {
        let round = p.init.round.as_u32()?;
        let signed = SignedProposal {
            height: p.init.height.0,
            round,
            pol_round: p.init.pol_round.as_i64(),
            data_hash: p.data_hash,
            sig: p.signature.to_bytes(),
        };
        let key = (p.init.height.0, round, p.init.proposer);
        match self.seen.get(&key) {
            None => {
                self.seen.insert(key, signed);
                None
            }
            Some(first)
                if (first.pol_round, first.data_hash) == (signed.pol_round, signed.data_hash) =>
            {
                None
            }
            Some(first) => {
                if !self.reported.insert(key) {
                    return None;
                }
                Some((
                    p.init.proposer,
                    Evidence::DoubleProposal {
                        a: first.clone(),
                        b: signed,
                    },
                ))
            }
        }
    }

    /// Forgets heights well below `committed`.
    pub fn prune(&mut self, committed: u64) {
        let floor = committed.saturating_sub(EQUIVOCATION_WINDOW);
        self.seen.retain(|k, _| k.0 >= floor);
        self.reported.retain(|k| k.0 >= floor);
    }
}

#[derive(Default)]
struct Partial {
    parts: BTreeMap<u64, StreamContent<ProposalPart>>,
    end: Option<u64>,
    bytes: usize,
}

#[derive(Default)]
pub struct Streams {
    open: BTreeMap<(PeerId, StreamId), Partial>,
    order: VecDeque<(PeerId, StreamId)>,
}

impl Streams {
    /// Takes one message; returns the proposal once its stream is whole,
    /// `Ok(None)` while it is not, or why the stream was thrown away.
    pub fn insert(
        &mut self,
        from: PeerId,
        msg: StreamMessage<ProposalPart>,
        validators: &ValidatorSet,
    ) -> Result<Option<ReceivedProposal>, String> {
        let key = (from, msg.stream_id.clone());
        if !self.open.contains_key(&key) {
            if self.open.len() >= MAX_OPEN_STREAMS {
                if let Some(old) = self.order.pop_front() {
                    self.open.remove(&old);
                }
            }
            self.order.push_back(key.clone());
        }
        let partial = self.open.entry(key.clone()).or_default();
        if let StreamContent::Data(ProposalPart::Data(d)) = &msg.content {
            partial.bytes += d.len();
        }
        if partial.bytes > MAX_BLOCK_BYTES || msg.sequence > (MAX_BLOCK_BYTES / CHUNK + 4) as u64 {
            self.remove(&key);
            return Err(format!(
                "stream from {from} exceeds {MAX_BLOCK_BYTES} bytes"
            ));
        }
        if msg.content.is_fin() {
            partial.end = Some(msg.sequence);
        }
        partial.parts.insert(msg.sequence, msg.content);
        let complete = partial
            .end
            .is_some_and(|end| partial.parts.len() as u64 == end + 1);
        if !complete {
            return Ok(None);
        }
        let partial = self.remove(&key).expect("the stream was just inserted");
        assemble(partial, validators).map(Some)
    }

    fn remove(&mut self, key: &(PeerId, StreamId)) -> Option<Partial> {
        self.order.retain(|k| k != key);
        self.open.remove(key)
    }

    pub fn open_streams(&self) -> usize {
        self.open.len()
    }
}

fn assemble(partial: Partial, validators: &ValidatorSet) -> Result<ReceivedProposal, String> {
    let mut parts = partial.parts.into_values();
    let init = match parts.next() {
        Some(StreamContent::Data(ProposalPart::Init(i))) => i,
        _ => return Err("a proposal stream must open with Init".into()),
    };
    let mut data = BytesMut::new();
    let mut sig: Option<Signature> = None;
    for p in parts {
        match (p, sig.is_some()) {
            (StreamContent::Data(ProposalPart::Data(d)), false) => data.extend_from_slice(&d),
            (StreamContent::Data(ProposalPart::Fin(s)), false) => sig = Some(s),
            (StreamContent::Fin, true) => {}
            _ => return Err("proposal parts out of order".into()),
        }
    }
    let sig = sig.ok_or("a proposal stream must close with Fin")?;
    let proposer = validators
        .get_by_address(&init.proposer)
        .ok_or_else(|| format!("proposer {} is not a validator", init.proposer))?;
    let data = data.freeze();
    let signed = stream_sign_bytes(&init, blake3::hash(&data).as_bytes());
    if proposer.public_key.verify(&signed, &sig).is_err() {
        return Err(format!("bad proposal signature from {}", init.proposer));
    }
    let value = decode_block(&data).map_err(|e| e.to_string())?;
    Ok(ReceivedProposal {
        init,
        value,
        data_hash: *blake3::hash(&data).as_bytes(),
        signature: sig,
    })
}

/// Whether a signed, decoded block may be decided at `height`: the
/// structure a proposer controls. Transactions are not checked here: each
/// one applies or is refused with its reason when the block is applied, so
/// every validator reaches the same result.
pub fn check_block(
    value: &BlockValue,
    height: Height,
    proposer: Address,
    previous_time_ms: Option<u64>,
    now_ms: u64,
    max_txs: usize,
) -> Result<(), String> {
    let b = &value.block;
    if b.height != height.0 {
        return Err(format!(
            "block says height {}, proposed at {height}",
            b.height
        ));
    }
    if b.proposer != proposer.0 {
        return Err("block names another proposer".into());
    }
    if b.txs.len() > max_txs {
        return Err(format!("{} transactions, at most {max_txs}", b.txs.len()));
    }
    if let Some(prev) = previous_time_ms {
        if b.time_ms <= prev {
            return Err(format!("block time {} not after {prev}", b.time_ms));
        }
    }
    // Clocks on HUBs drift a little; a block from far in the future would
    // let a proposer push everyone's clock forward.
    if b.time_ms > now_ms + 10_000 {
        return Err(format!(
            "block time {} is ahead of ours ({now_ms})",
            b.time_ms
        ));
    }
    Ok(())
}
