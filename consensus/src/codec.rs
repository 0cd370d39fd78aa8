//! Bytes on the wire and in the write-ahead log: every consensus, sync
//! and WAL message as a plain serde struct encoded with postcard. Decoding
//! checks what the types cannot (signature and round ranges, block
//! hashes), so a malformed message from a peer is an error, never a panic.
//!
//! Written by hand because Malachite's generic certificate and sync types
//! carry no serde derives; the mirror structs below are the whole format.

use crate::context::{
    Address, BlockHash, BlockValue, Height, LedgerContext, Proposal, ProposalInit, ProposalPart,
    Vote,
};
use bytes::Bytes;
use malachitebft_app_channel::app::consensus::LivenessMsg;
use malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use malachitebft_app_channel::app::types::codec::Codec;
use malachitebft_app_channel::app::types::core::{
    CommitCertificate, CommitSignature, NilOrVal, PolkaCertificate, PolkaSignature, Round,
    RoundCertificate, RoundCertificateType, RoundSignature, SignedMessage, Validity, VoteType,
};
use malachitebft_app_channel::app::types::sync::{RawDecidedValue, Request, Response, Status};
use malachitebft_app_channel::app::types::{PeerId, ProposedValue, SignedConsensusMsg};
use malachitebft_signing_ed25519::Signature;
use meshcast_ledger::Block;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("undecodable message: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("invalid message: {0}")]
    Invalid(String),
}

fn invalid(what: impl Into<String>) -> CodecError {
    CodecError::Invalid(what.into())
}

/// The one codec for network, sync and WAL.
#[derive(Clone, Copy, Debug, Default)]
pub struct WireCodec;

// ---- scalar pieces ----

fn round_out(r: Round) -> i64 {
    r.as_i64()
}

fn round_in(r: i64) -> Result<Round, CodecError> {
    match r {
        -1 => Ok(Round::Nil),
        0..=0xFFFF_FFFF => Ok(Round::new(r as u32)),
        _ => Err(invalid(format!("round {r} out of range"))),
    }
}

fn sig_out(s: &Signature) -> Vec<u8> {
    s.to_bytes().to_vec()
}

fn sig_in(b: &[u8]) -> Result<Signature, CodecError> {
    let a: [u8; 64] = b
        .try_into()
        .map_err(|_| invalid(format!("a signature is 64 bytes, got {}", b.len())))?;
    Ok(Signature::from_bytes(a))
}

fn value_id_out(v: &NilOrVal<BlockHash>) -> Option<[u8; 32]> {
    match v {
        NilOrVal::Nil => None,
        NilOrVal::Val(h) => Some(h.0),
    }
}

fn value_id_in(v: Option<[u8; 32]>) -> NilOrVal<BlockHash> {
    v.map_or(NilOrVal::Nil, |h| NilOrVal::Val(BlockHash(h)))
}

fn kind_out(k: VoteType) -> u8 {
    match k {
        VoteType::Prevote => 0,
        VoteType::Precommit => 1,
    }
}

fn kind_in(k: u8) -> Result<VoteType, CodecError> {
    match k {
        0 => Ok(VoteType::Prevote),
        1 => Ok(VoteType::Precommit),
        _ => Err(invalid(format!("vote type {k}"))),
    }
}

/// A block's bytes: its JSON, what its hash is over.
pub fn encode_block(block: &Block) -> Bytes {
    Bytes::from(serde_json::to_vec(block).expect("a block always serializes"))
}

pub fn decode_block(bytes: &[u8]) -> Result<BlockValue, CodecError> {
    let block: Block =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a block: {e}")))?;
    Ok(BlockValue::new(block))
}

// ---- mirror structs ----

#[derive(Serialize, Deserialize)]
struct WireVote {
    kind: u8,
    height: u64,
    round: i64,
    value: Option<[u8; 32]>,
    validator: [u8; 32],
}

impl WireVote {
    fn from(v: &Vote) -> WireVote {
        WireVote {
            kind: kind_out(v.kind),
            height: v.height.0,
            round: round_out(v.round),
            value: value_id_out(&v.value),
            validator: v.validator.0,
        }
    }

    fn into_vote(self) -> Result<Vote, CodecError> {
        Ok(Vote {
            kind: kind_in(self.kind)?,
            height: Height(self.height),
            round: round_in(self.round)?,
            value: value_id_in(self.value),
            validator: Address(self.validator),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct WireSignedVote {
    vote: WireVote,
    sig: Vec<u8>,
}

type SignedVote = SignedMessage<LedgerContext, Vote>;

impl WireSignedVote {
    fn from(v: &SignedVote) -> WireSignedVote {
        WireSignedVote {
            vote: WireVote::from(&v.message),
            sig: sig_out(&v.signature),
        }
    }

    fn into_signed(self) -> Result<SignedVote, CodecError> {
        Ok(SignedMessage::new(
            self.vote.into_vote()?,
            sig_in(&self.sig)?,
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct WireProposal {
    height: u64,
    round: i64,
    block: Vec<u8>,
    pol_round: i64,
    proposer: [u8; 32],
}

#[derive(Serialize, Deserialize)]
enum WireConsensus {
    Vote(WireSignedVote),
    Proposal {
        proposal: WireProposal,
        sig: Vec<u8>,
    },
}

#[derive(Serialize, Deserialize)]
struct WireInit {
    height: u64,
    round: i64,
    pol_round: i64,
    proposer: [u8; 32],
}

#[derive(Serialize, Deserialize)]
enum WirePart {
    Init(WireInit),
    Data(Vec<u8>),
    Fin(Vec<u8>),
}

impl WirePart {
    fn from(p: &ProposalPart) -> WirePart {
        match p {
            ProposalPart::Init(i) => WirePart::Init(WireInit {
                height: i.height.0,
                round: round_out(i.round),
                pol_round: round_out(i.pol_round),
                proposer: i.proposer.0,
            }),
            ProposalPart::Data(d) => WirePart::Data(d.to_vec()),
            ProposalPart::Fin(s) => WirePart::Fin(sig_out(s)),
        }
    }

    fn into_part(self) -> Result<ProposalPart, CodecError> {
        Ok(match self {
            WirePart::Init(i) => ProposalPart::Init(ProposalInit {
                height: Height(i.height),
                round: round_in(i.round)?,
                pol_round: round_in(i.pol_round)?,
                proposer: Address(i.proposer),
            }),
            WirePart::Data(d) => ProposalPart::Data(Bytes::from(d)),
            WirePart::Fin(s) => ProposalPart::Fin(sig_in(&s)?),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct WireStream {
    stream_id: Vec<u8>,
    sequence: u64,
    /// `None` ends the stream.
    part: Option<WirePart>,
}

#[derive(Serialize, Deserialize)]
struct WireProposedValue {
    height: u64,
    round: i64,
    valid_round: i64,
    proposer: [u8; 32],
    block: Vec<u8>,
    valid: bool,
}

#[derive(Serialize, Deserialize)]
struct WireSig {
    address: [u8; 32],
    sig: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct WireCertificate {
    height: u64,
    round: i64,
    value_id: [u8; 32],
    sigs: Vec<WireSig>,
}

#[derive(Serialize, Deserialize)]
struct WireRoundSig {
    kind: u8,
    value: Option<[u8; 32]>,
    address: [u8; 32],
    sig: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct WireRoundCertificate {
    height: u64,
    round: i64,
    skip: bool,
    sigs: Vec<WireRoundSig>,
}

#[derive(Serialize, Deserialize)]
enum WireLiveness {
    Vote(WireSignedVote),
    Polka(WireCertificate),
    Skip(WireRoundCertificate),
}

#[derive(Serialize, Deserialize)]
struct WireStatus {
    peer: Vec<u8>,
    tip_height: u64,
    history_min_height: u64,
}

#[derive(Serialize, Deserialize)]
struct WireResponse {
    height: u64,
    value: Option<(Vec<u8>, WireCertificate)>,
}

// ---- certificates ----

fn commit_out(c: &CommitCertificate<LedgerContext>) -> WireCertificate {
    WireCertificate {
        height: c.height.0,
        round: round_out(c.round),
        value_id: c.value_id.0,
        sigs: c
            .commit_signatures
            .iter()
            .map(|s| WireSig {
                address: s.address.0,
                sig: sig_out(&s.signature),
            })
            .collect(),
    }
}

fn commit_in(w: WireCertificate) -> Result<CommitCertificate<LedgerContext>, CodecError> {
    Ok(CommitCertificate {
        height: Height(w.height),
        round: round_in(w.round)?,
        value_id: BlockHash(w.value_id),
        commit_signatures: w
            .sigs
            .into_iter()
            .map(|s| Ok(CommitSignature::new(Address(s.address), sig_in(&s.sig)?)))
            .collect::<Result<_, CodecError>>()?,
    })
}

fn polka_out(c: &PolkaCertificate<LedgerContext>) -> WireCertificate {
    WireCertificate {
        height: c.height.0,
        round: round_out(c.round),
        value_id: c.value_id.0,
        sigs: c
            .polka_signatures
            .iter()
            .map(|s| WireSig {
                address: s.address.0,
                sig: sig_out(&s.signature),
            })
            .collect(),
    }
}

fn polka_in(w: WireCertificate) -> Result<PolkaCertificate<LedgerContext>, CodecError> {
    Ok(PolkaCertificate {
        height: Height(w.height),
        round: round_in(w.round)?,
        value_id: BlockHash(w.value_id),
        polka_signatures: w
            .sigs
            .into_iter()
            .map(|s| Ok(PolkaSignature::new(Address(s.address), sig_in(&s.sig)?)))
            .collect::<Result<_, CodecError>>()?,
    })
}

fn round_cert_out(c: &RoundCertificate<LedgerContext>) -> WireRoundCertificate {
    WireRoundCertificate {
        height: c.height.0,
        round: round_out(c.round),
        skip: c.cert_type == RoundCertificateType::Skip,
        sigs: c
            .round_signatures
            .iter()
            .map(|s| WireRoundSig {
                kind: kind_out(s.vote_type),
                value: value_id_out(&s.value_id),
                address: s.address.0,
                sig: sig_out(&s.signature),
            })
            .collect(),
    }
}

fn round_cert_in(w: WireRoundCertificate) -> Result<RoundCertificate<LedgerContext>, CodecError> {
    Ok(RoundCertificate {
        height: Height(w.height),
        round: round_in(w.round)?,
        cert_type: if w.skip {
            RoundCertificateType::Skip
        } else {
            RoundCertificateType::Precommit
        },
        round_signatures: w
            .sigs
            .into_iter()
            .map(|s| {
                Ok(RoundSignature::new(
                    kind_in(s.kind)?,
                    value_id_in(s.value),
                    Address(s.address),
                    sig_in(&s.sig)?,
                ))
            })
            .collect::<Result<_, CodecError>>()?,
    })
}

/// A commit certificate as the ledger store keeps it.
pub fn encode_certificate(c: &CommitCertificate<LedgerContext>) -> Vec<u8> {
    postcard::to_stdvec(&commit_out(c)).expect("a certificate always serializes")
}

pub fn decode_certificate(bytes: &[u8]) -> Result<CommitCertificate<LedgerContext>, CodecError> {
    commit_in(postcard::from_bytes(bytes)?)
}

// ---- Codec impls ----

fn to_bytes<T: Serialize>(w: &T) -> Result<Bytes, CodecError> {
    Ok(Bytes::from(postcard::to_stdvec(w)?))
}

fn from_bytes<T: DeserializeOwned>(b: &Bytes) -> Result<T, CodecError> {
    Ok(postcard::from_bytes(b)?)
}

impl Codec<ProposalPart> for WireCodec {
    type Error = CodecError;
    fn decode(&self, b: Bytes) -> Result<ProposalPart, CodecError> {
        from_bytes::<WirePart>(&b)?.into_part()
    }
    fn encode(&self, p: &ProposalPart) -> Result<Bytes, CodecError> {
        to_bytes(&WirePart::from(p))
    }
}

impl Codec<SignedConsensusMsg<LedgerContext>> for WireCodec {
    type Error = CodecError;
    fn decode(&self, b: Bytes) -> Result<SignedConsensusMsg<LedgerContext>, CodecError> {
        Ok(match from_bytes::<WireConsensus>(&b)? {
            WireConsensus::Vote(v) => SignedConsensusMsg::Vote(v.into_signed()?),
            WireConsensus::Proposal { proposal: p, sig } => {
                let proposal = Proposal {
                    height: Height(p.height),
                    round: round_in(p.round)?,
                    value: decode_block(&p.block)?,
                    pol_round: round_in(p.pol_round)?,
                    proposer: Address(p.proposer),
                };
                SignedConsensusMsg::Proposal(SignedMessage::new(proposal, sig_in(&sig)?))
            }
        })
    }
    fn encode(&self, m: &SignedConsensusMsg<LedgerContext>) -> Result<Bytes, CodecError> {
        to_bytes(&match m {
            SignedConsensusMsg::Vote(v) => WireConsensus::Vote(WireSignedVote::from(v)),
            SignedConsensusMsg::Proposal(p) => WireConsensus::Proposal {
                proposal: WireProposal {
                    height: p.height.0,
                    round: round_out(p.round),
                    block: encode_block(&p.value.block).to_vec(),
                    pol_round: round_out(p.pol_round),
                    proposer: p.proposer.0,
                },
                sig: sig_out(&p.signature),
            },
        })
    }
}

impl Codec<LivenessMsg<LedgerContext>> for WireCodec {
    type Error = CodecError;
    fn decode(&self, b: Bytes) -> Result<LivenessMsg<LedgerContext>, CodecError> {
        Ok(match from_bytes::<WireLiveness>(&b)? {
            WireLiveness::Vote(v) => LivenessMsg::Vote(v.into_signed()?),
            WireLiveness::Polka(c) => LivenessMsg::PolkaCertificate(polka_in(c)?),
            WireLiveness::Skip(c) => LivenessMsg::SkipRoundCertificate(round_cert_in(c)?),
        })
    }
    fn encode(&self, m: &LivenessMsg<LedgerContext>) -> Result<Bytes, CodecError> {
        to_bytes(&match m {
            LivenessMsg::Vote(v) => WireLiveness::Vote(WireSignedVote::from(v)),
            LivenessMsg::PolkaCertificate(c) => WireLiveness::Polka(polka_out(c)),
            LivenessMsg::SkipRoundCertificate(c) => WireLiveness::Skip(round_cert_out(c)),
        })
    }
}

impl Codec<StreamMessage<ProposalPart>> for WireCodec {
    type Error = CodecError;
    fn decode(&self, b: Bytes) -> Result<StreamMessage<ProposalPart>, CodecError> {
        let w: WireStream = from_bytes(&b)?;
        let content = match w.part {
            Some(p) => StreamContent::Data(p.into_part()?),
            None => StreamContent::Fin,
        };
        Ok(StreamMessage::new(
            StreamId::new(Bytes::from(w.stream_id)),
            w.sequence,
            content,
        ))
    }
    fn encode(&self, m: &StreamMessage<ProposalPart>) -> Result<Bytes, CodecError> {
        to_bytes(&WireStream {
            stream_id: m.stream_id.to_bytes().to_vec(),
            sequence: m.sequence,
            part: m.content.as_data().map(WirePart::from),
        })
    }
}

impl Codec<ProposedValue<LedgerContext>> for WireCodec {
    type Error = CodecError;
    fn decode(&self, b: Bytes) -> Result<ProposedValue<LedgerContext>, CodecError> {
        let w: WireProposedValue = from_bytes(&b)?;
        Ok(ProposedValue {
            height: Height(w.height),
            round: round_in(w.round)?,
            valid_round: round_in(w.valid_round)?,
            proposer: Address(w.proposer),
            value: decode_block(&w.block)?,
            validity: Validity::from_bool(w.valid),
        })
    }
    fn encode(&self, v: &ProposedValue<LedgerContext>) -> Result<Bytes, CodecError> {
        to_bytes(&WireProposedValue {
            height: v.height.0,
            round: round_out(v.round),
            valid_round: round_out(v.valid_round),
            proposer: v.proposer.0,
            block: encode_block(&v.value.block).to_vec(),
            valid: v.validity.is_valid(),
        })
    }
}

impl Codec<Status<LedgerContext>> for WireCodec {
    type Error = CodecError;
    fn decode(&self, b: Bytes) -> Result<Status<LedgerContext>, CodecError> {
        let w: WireStatus = from_bytes(&b)?;
        Ok(Status {
            peer_id: PeerId::from_bytes(&w.peer).map_err(|e| invalid(format!("peer id: {e}")))?,
            tip_height: Height(w.tip_height),
            history_min_height: Height(w.history_min_height),
        })
    }
    fn encode(&self, s: &Status<LedgerContext>) -> Result<Bytes, CodecError> {
        to_bytes(&WireStatus {
            peer: s.peer_id.to_bytes(),
            tip_height: s.tip_height.0,
            history_min_height: s.history_min_height.0,
        })
    }
}

impl Codec<Request<LedgerContext>> for WireCodec {
    type Error = CodecError;
    fn decode(&self, b: Bytes) -> Result<Request<LedgerContext>, CodecError> {
        let height: u64 = from_bytes(&b)?;
        Ok(Request::ValueRequest(malachitebft_sync::ValueRequest::new(
            Height(height),
        )))
    }
    fn encode(&self, r: &Request<LedgerContext>) -> Result<Bytes, CodecError> {
        let Request::ValueRequest(v) = r;
        to_bytes(&v.height.0)
    }
}

impl Codec<Response<LedgerContext>> for WireCodec {
    type Error = CodecError;
    fn decode(&self, b: Bytes) -> Result<Response<LedgerContext>, CodecError> {
        let w: WireResponse = from_bytes(&b)?;
        let value = match w.value {
            Some((bytes, cert)) => Some(RawDecidedValue::new(Bytes::from(bytes), commit_in(cert)?)),
            None => None,
        };
        Ok(Response::ValueResponse(
            malachitebft_sync::ValueResponse::new(Height(w.height), value),
        ))
    }
    fn encode(&self, r: &Response<LedgerContext>) -> Result<Bytes, CodecError> {
        let Response::ValueResponse(v) = r;
        to_bytes(&WireResponse {
            height: v.height.0,
            value: v
                .value
                .as_ref()
                .map(|d| (d.value_bytes.to_vec(), commit_out(&d.certificate))),
        })
    }
}
