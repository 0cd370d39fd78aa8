//! Consensus wire messages between validators (votes, proposal parts,
//! liveness and sync messages, commit certificates): no panic on any
//! input; what decodes re-encodes to the same message; a proposal stream
//! with one part changed never assembles into a block other than the one
//! its proposer signed.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use malachitebft_app_channel::app::consensus::LivenessMsg;
use malachitebft_app_channel::app::streaming::StreamMessage;
use malachitebft_app_channel::app::types::codec::Codec;
use malachitebft_app_channel::app::types::core::{Context, NilOrVal, Round, SigningProvider};
use malachitebft_app_channel::app::types::sync::{Request, Response, Status};
use malachitebft_app_channel::app::types::{PeerId, ProposedValue, SignedConsensusMsg};
use meshcast_consensus::codec::{decode_certificate, encode_block, WireCodec};
use meshcast_consensus::context::{
    BlockHash, BlockValue, Height, LedgerContext, ProposalInit, ProposalPart, Signer, ValidatorSet,
};
use meshcast_consensus::streams::{stream_proposal, Streams};
use meshcast_ledger::state::GenesisValidator;
use meshcast_ledger::tx::TxBody;
use meshcast_ledger::{Action, Block, Genesis, Params};
use std::sync::OnceLock;

/// Decodes `bytes` as every message type; each that decodes must encode
/// and decode again to itself.
fn decode_all(bytes: &[u8]) {
    fn stable<T: PartialEq + std::fmt::Debug>(b: &Bytes)
    where
        WireCodec: Codec<T>,
    {
        if let Ok(m) = Codec::<T>::decode(&WireCodec, b.clone()) {
            let again = Codec::<T>::encode(&WireCodec, &m).expect("a decoded message encodes");
            let back = Codec::<T>::decode(&WireCodec, again).expect("its encoding decodes");
            assert_eq!(back, m);
        }
    }
    let b = Bytes::copy_from_slice(bytes);
    stable::<SignedConsensusMsg<LedgerContext>>(&b);
    stable::<StreamMessage<ProposalPart>>(&b);
    stable::<ProposalPart>(&b);
    let _ = Codec::<LivenessMsg<LedgerContext>>::decode(&WireCodec, b.clone());
    let _ = Codec::<ProposedValue<LedgerContext>>::decode(&WireCodec, b.clone());
    let _ = Codec::<Status<LedgerContext>>::decode(&WireCodec, b.clone());
    let _ = Codec::<Request<LedgerContext>>::decode(&WireCodec, b.clone());
    let _ = Codec::<Response<LedgerContext>>::decode(&WireCodec, b.clone());
    let _ = decode_certificate(&b);
}

fn validators() -> &'static ValidatorSet {
    static SET: OnceLock<ValidatorSet> = OnceLock::new();
    SET.get_or_init(|| {
        let keys: Vec<[u8; 32]> = (1..=4).map(|i| Signer::new([i; 32]).address().0).collect();
        // The validator set reads only the validators; accounts and
        // prices play no part in checking a stream.
        let genesis = Genesis {
            chain_id: "fuzz".into(),
            params: Params::default(),
            accounts: vec![],
            authorities: vec![],
            validators: keys
                .iter()
                .map(|k| GenesisValidator {
                    address: *k,
                    power: 1,
                })
                .collect(),
        };
        ValidatorSet::from_genesis(&genesis).expect("a valid genesis")
    })
}

#[derive(Arbitrary, Debug)]
struct Fields {
    proposer: u8,
    height: u16,
    round: u8,
    txs: u8,
    precommit: bool,
    nil: bool,
    part: u8,
}

fn block(height: u64, proposer: [u8; 32], txs: u8) -> Block {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    Block {
        height,
        time_ms: 1_000 + height,
        proposer,
        txs: (0..u64::from(txs % 8))
            .map(|nonce| {
                TxBody {
                    chain_id: "fuzz".into(),
                    from: key.verifying_key().to_bytes(),
                    nonce,
                    action: Action::Transfer {
                        to: [1; 32],
                        amount: 1,
                    },
                }
                .sign(&key)
            })
            .collect(),
    }
}

fn peer() -> PeerId {
    let k = libp2p_identity::Keypair::ed25519_from_bytes([1; 32]).expect("a key");
    PeerId::from_bytes(&k.public().to_peer_id().to_bytes()).expect("a peer id")
}

fn vote(f: &Fields, s: &Signer, u: &mut Unstructured) {
    let (h, r) = (Height(u64::from(f.height)), Round::new(u32::from(f.round)));
    let value = if f.nil {
        NilOrVal::Nil
    } else {
        NilOrVal::Val(BlockHash([f.part; 32]))
    };
    let v = match f.precommit {
        true => LedgerContext.new_precommit(h, r, value, s.address()),
        false => LedgerContext.new_prevote(h, r, value, s.address()),
    };
    let msg = SignedConsensusMsg::<LedgerContext>::Vote(s.sign_vote(v));
    let bytes = Codec::encode(&WireCodec, &msg).expect("a vote encodes");
    decode_all(&meshcast_fuzz::mutate(bytes.to_vec(), u));
}

/// One part of a signed proposal stream changed: the stream either fails
/// or assembles into exactly the proposer's block.
fn stream(f: &Fields, s: &Signer, u: &mut Unstructured) {
    let value = BlockValue::new(block(u64::from(f.height) + 1, s.address().0, f.txs));
    let init = ProposalInit {
        height: Height(u64::from(f.height) + 1),
        round: Round::new(u32::from(f.round)),
        pol_round: Round::Nil,
        proposer: s.address(),
    };
    let mut msgs = stream_proposal(s, init, &encode_block(&value.block));
    let i = usize::from(f.part) % msgs.len();
    let bytes = Codec::encode(&WireCodec, &msgs[i]).expect("a part encodes");
    let changed = meshcast_fuzz::mutate(bytes.to_vec(), u);
    decode_all(&changed);
    match Codec::<StreamMessage<ProposalPart>>::decode(&WireCodec, changed.into()) {
        Ok(m) => msgs[i] = m,
        Err(_) => return,
    }
    let mut streams = Streams::default();
    let from = peer();
    for m in msgs {
        if let Ok(Some(p)) = streams.insert(from, m, validators()) {
            assert_eq!(
                p.value.id, value.id,
                "a changed stream assembled another block"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    decode_all(data);
    let mut u = Unstructured::new(data);
    let Ok(f) = Fields::arbitrary(&mut u) else {
        return;
    };
    let s = Signer::new([f.proposer % 4 + 1; 32]);
    match f.part % 2 {
        0 => vote(&f, &s, &mut u),
        _ => stream(&f, &s, &mut u),
    }
});
