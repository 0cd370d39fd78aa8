//! The consensus layer without sockets: wire encoding round trips and
//! never panics on garbage; proposal streams reassemble in any order and
//! refuse what was not signed by the proposer whose turn it is; block
//! checks; and consensus precommits are the ledger's evidence format.

use bytes::Bytes;
use malachitebft_app_channel::app::consensus::LivenessMsg;
use malachitebft_app_channel::app::streaming::{StreamContent, StreamMessage};
use malachitebft_app_channel::app::types::codec::Codec;
use malachitebft_app_channel::app::types::core::{
    CommitCertificate, CommitSignature, Context, NilOrVal, Round, SigningProvider, Validity,
};
use malachitebft_app_channel::app::types::sync::{RawDecidedValue, Request, Response, Status};
use malachitebft_app_channel::app::types::{PeerId, ProposedValue, SignedConsensusMsg};
use meshcast_consensus::codec::{decode_certificate, encode_block, encode_certificate, WireCodec};
use meshcast_consensus::context::{
    Address, BlockHash, BlockValue, Height, LedgerContext, ProposalInit, ProposalPart, Signer,
    ValidatorSet,
};
use meshcast_consensus::streams::{check_block, stream_proposal, Streams, CHUNK};
use meshcast_ledger::state::{GenesisAccount, GenesisValidator};
use meshcast_ledger::tx::TxBody;
use meshcast_ledger::{Action, Block, Genesis, Params, SignedVote};
use proptest::prelude::*;

fn peer(i: u8) -> PeerId {
    let k = libp2p_identity::Keypair::ed25519_from_bytes([i; 32]).unwrap();
    PeerId::from_bytes(&k.public().to_peer_id().to_bytes()).unwrap()
}

fn signer(i: u8) -> Signer {
    Signer::new([i; 32])
}

fn genesis(n: u8) -> Genesis {
    let keys: Vec<[u8; 32]> = (1..=n).map(|i| signer(i).address().0).collect();
    Genesis {
        chain_id: "test".into(),
        params: Params {
            delivery_price_per_gb: 1,
            storage_price_per_gb_hour: 1,
            transcode_price_per_second: 1,
            unbond_delay: 1,
            slash_bps: 500,
            min_stake: Default::default(),
            epoch_secs: 0,
        },
        accounts: keys
            .iter()
            .map(|k| GenesisAccount {
                address: *k,
                balance: 1_000,
                stake: 100,
            })
            .collect(),
        authorities: vec![],
        validators: keys
            .iter()
            .map(|k| GenesisValidator {
                address: *k,
                power: 1,
            })
            .collect(),
    }
}

fn block(height: u64, proposer: Address, txs: usize) -> Block {
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    Block {
        height,
        time_ms: 1_000 + height,
        proposer: proposer.0,
        txs: (0..txs as u64)
            .map(|nonce| {
                TxBody {
                    chain_id: "test".into(),
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

fn roundtrip<T: Clone + PartialEq + std::fmt::Debug>(msg: T)
where
    WireCodec: Codec<T>,
{
    let bytes = WireCodec.encode(&msg).unwrap();
    assert_eq!(WireCodec.decode(bytes).unwrap(), msg);
}

#[test]
fn every_message_round_trips() {
    let s = signer(1);
    let value = BlockValue::new(block(3, s.address(), 2));
    let ctx = LedgerContext;
    let vote = ctx.new_precommit(
        Height(3),
        Round::new(1),
        NilOrVal::Val(value.id),
        s.address(),
    );
    let signed_vote = s.sign_vote(vote.clone());
    roundtrip(SignedConsensusMsg::<LedgerContext>::Vote(
        signed_vote.clone(),
    ));
    let nil = s.sign_vote(ctx.new_prevote(Height(3), Round::new(0), NilOrVal::Nil, s.address()));
    roundtrip(SignedConsensusMsg::<LedgerContext>::Vote(nil));
    let proposal = ctx.new_proposal(
        Height(3),
        Round::new(1),
        value.clone(),
        Round::Nil,
        s.address(),
    );
    roundtrip(SignedConsensusMsg::<LedgerContext>::Proposal(
        s.sign_proposal(proposal),
    ));
    roundtrip(LivenessMsg::<LedgerContext>::Vote(signed_vote.clone()));
    let cert = CommitCertificate::<LedgerContext>::new(
        Height(3),
        Round::new(1),
        value.id,
        vec![signed_vote.clone()],
    );
    assert_eq!(cert.commit_signatures.len(), 1);
    assert_eq!(
        decode_certificate(&encode_certificate(&cert)).unwrap(),
        cert
    );
    roundtrip(ProposedValue::<LedgerContext> {
        height: Height(3),
        round: Round::new(1),
        valid_round: Round::Nil,
        proposer: s.address(),
        value: value.clone(),
        validity: Validity::Invalid,
    });
    let init = ProposalInit {
        height: Height(3),
        round: Round::new(1),
        pol_round: Round::Nil,
        proposer: s.address(),
    };
    for m in stream_proposal(&s, init, &encode_block(&value.block)) {
        roundtrip(m);
    }
    roundtrip(ProposalPart::Data(Bytes::from_static(b"abc")));
    let peer = peer(7);
    roundtrip(Status::<LedgerContext> {
        peer_id: peer,
        tip_height: Height(9),
        history_min_height: Height(1),
    });
    roundtrip(Request::<LedgerContext>::ValueRequest(
        malachitebft_sync::ValueRequest::new(Height(4)),
    ));
    roundtrip(Response::<LedgerContext>::ValueResponse(
        malachitebft_sync::ValueResponse::new(
            Height(3),
            Some(RawDecidedValue::new(encode_block(&value.block), cert)),
        ),
    ));
    roundtrip(Response::<LedgerContext>::ValueResponse(
        malachitebft_sync::ValueResponse::new(Height(5), None),
    ));
}

#[test]
fn out_of_range_fields_are_errors() {
    // A vote whose round does not fit Malachite's u32 round: Malachite
    // itself would panic converting it, the codec refuses it.
    let s = signer(1);
    let v = s.sign_vote(LedgerContext.new_prevote(
        Height(1),
        Round::new(0),
        NilOrVal::Nil,
        s.address(),
    ));
    let mut bytes = WireCodec
        .encode(&SignedConsensusMsg::<LedgerContext>::Vote(v))
        .unwrap()
        .to_vec();
    // layout: enum tag, kind, height varint, round zigzag varint ...
    assert_eq!(bytes[3], 0, "round 0 encodes as one byte");
    bytes.splice(3..4, [0xFE, 0xFF, 0xFF, 0xFF, 0x3F]); // zigzag of 2^33-1
    let e = Codec::<SignedConsensusMsg<LedgerContext>>::decode(&WireCodec, Bytes::from(bytes))
        .unwrap_err();
    assert!(e.to_string().contains("round"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let b = Bytes::from(bytes);
        let _ = Codec::<SignedConsensusMsg<LedgerContext>>::decode(&WireCodec, b.clone());
        let _ = Codec::<LivenessMsg<LedgerContext>>::decode(&WireCodec, b.clone());
        let _ = Codec::<StreamMessage<ProposalPart>>::decode(&WireCodec, b.clone());
        let _ = Codec::<ProposedValue<LedgerContext>>::decode(&WireCodec, b.clone());
        let _ = Codec::<Status<LedgerContext>>::decode(&WireCodec, b.clone());
        let _ = Codec::<Request<LedgerContext>>::decode(&WireCodec, b.clone());
        let _ = Codec::<Response<LedgerContext>>::decode(&WireCodec, b.clone());
        let _ = decode_certificate(&b);
    }
}

#[test]
fn streams_reassemble_in_any_order_and_check_the_proposer() {
    let validators = ValidatorSet::from_genesis(&genesis(4)).unwrap();
    let s = signer(2);
    let value = BlockValue::new(block(7, s.address(), 3_000));
    let bytes = encode_block(&value.block);
    assert!(bytes.len() > 2 * CHUNK, "the block spans several parts");
    let init = ProposalInit {
        height: Height(7),
        round: Round::new(0),
        pol_round: Round::Nil,
        proposer: s.address(),
    };
    let mut msgs = stream_proposal(&s, init, &bytes);
    msgs.reverse();
    msgs.insert(1, msgs[0].clone()); // a duplicate
    let peer = peer(7);
    let mut streams = Streams::default();
    let mut out = None;
    for (i, m) in msgs.iter().enumerate() {
        let r = streams.insert(peer, m.clone(), &validators).unwrap();
        if i + 1 < msgs.len() {
            assert!(r.is_none(), "complete before the last part");
        }
        out = r.or(out);
    }
    let got = out.expect("the stream completes");
    assert_eq!(got.value.id, value.id);
    assert_eq!(got.init, init);
    assert_eq!(streams.open_streams(), 0);

    // A part changed in flight: the proposer's signature no longer holds.
    let mut tampered = stream_proposal(&s, init, &bytes);
    tampered[1].content = StreamContent::Data(ProposalPart::Data(Bytes::from_static(b"{}")));
    let e = tampered
        .into_iter()
        .map(|m| streams.insert(peer, m, &validators))
        .find_map(|r| r.err())
        .unwrap();
    assert!(e.contains("signature"), "{e}");

    // Signed by a key that is not a validator.
    let outsider = signer(99);
    let init_x = ProposalInit {
        proposer: outsider.address(),
        ..init
    };
    let e = stream_proposal(&outsider, init_x, &bytes)
        .into_iter()
        .map(|m| streams.insert(peer, m, &validators))
        .find_map(|r| r.err())
        .unwrap();
    assert!(e.contains("not a validator"), "{e}");

    // A stream without its Init.
    let mut headless = stream_proposal(
        &s,
        ProposalInit {
            round: Round::new(5),
            ..init
        },
        &bytes,
    );
    headless[0].content = StreamContent::Data(ProposalPart::Data(Bytes::new()));
    let e = headless
        .into_iter()
        .map(|m| streams.insert(peer, m, &validators))
        .find_map(|r| r.err())
        .unwrap();
    assert!(e.contains("Init"), "{e}");
}

#[test]
fn streams_bound_memory() {
    let validators = ValidatorSet::from_genesis(&genesis(1)).unwrap();
    let s = signer(1);
    let mut streams = Streams::default();
    // Many streams that never finish: the oldest are dropped.
    for r in 0..200u32 {
        let init = ProposalInit {
            height: Height(1),
            round: Round::new(r),
            pol_round: Round::Nil,
            proposer: s.address(),
        };
        let first = stream_proposal(&s, init, &Bytes::from_static(b"{}")).remove(0);
        assert!(streams
            .insert(peer(7), first, &validators)
            .unwrap()
            .is_none());
    }
    assert!(streams.open_streams() <= meshcast_consensus::streams::MAX_OPEN_STREAMS);
    // A stream claiming a sequence far past any real block is refused.
    let init = ProposalInit {
        height: Height(1),
        round: Round::new(0),
        pol_round: Round::Nil,
        proposer: s.address(),
    };
    let mut m = stream_proposal(&s, init, &Bytes::from_static(b"{}")).remove(1);
    m.sequence = 1 << 40;
    assert!(streams.insert(peer(7), m, &validators).is_err());
}

#[test]
fn block_checks() {
    let p = signer(1).address();
    let v = BlockValue::new(block(5, p, 2));
    let now = 1_000 + 5;
    assert!(check_block(&v, Height(5), p, Some(1_000), now, 10).is_ok());
    assert!(check_block(&v, Height(6), p, None, now, 10)
        .unwrap_err()
        .contains("height"));
    assert!(
        check_block(&v, Height(5), signer(2).address(), None, now, 10)
            .unwrap_err()
            .contains("proposer")
    );
    assert!(check_block(&v, Height(5), p, Some(1_005), now, 10)
        .unwrap_err()
        .contains("not after"));
    assert!(check_block(&v, Height(5), p, None, now, 1)
        .unwrap_err()
        .contains("at most"));
    let mut future = block(5, p, 2);
    future.time_ms = now + 60_000;
    let future = BlockValue::new(future);
    assert!(check_block(&future, Height(5), p, None, now, 10)
        .unwrap_err()
        .contains("ahead"));
}

#[test]
fn precommits_are_ledger_evidence_and_votes_verify() {
    let s = signer(3);
    let ctx = LedgerContext;
    let a = BlockHash([1; 32]);
    let b = BlockHash([2; 32]);
    let va =
        s.sign_vote(ctx.new_precommit(Height(8), Round::new(2), NilOrVal::Val(a), s.address()));
    let vb =
        s.sign_vote(ctx.new_precommit(Height(8), Round::new(2), NilOrVal::Val(b), s.address()));
    let validators = ValidatorSet::from_genesis(&genesis(3)).unwrap();
    let key = &validators
        .validators()
        .iter()
        .find(|v| v.address == s.address())
        .unwrap()
        .public_key;
    assert!(s.verify_signed_vote(&va.message, &va.signature, key));
    // A prevote signature is not a precommit signature.
    let pv = ctx.new_prevote(Height(8), Round::new(2), NilOrVal::Val(a), s.address());
    assert!(!s.verify_signed_vote(&pv, &va.signature, key));
    let ev = |v: &malachitebft_app_channel::app::types::core::SignedMessage<LedgerContext, _>,
              h: BlockHash| SignedVote {
        height: 8,
        round: 2,
        block: h.0,
        sig: v.signature.to_bytes(),
    };
    assert!(ev(&va, a).verify(&s.address().0));
    assert!(ev(&vb, b).verify(&s.address().0));
    assert!(!ev(&va, b).verify(&s.address().0));
    let _ = CommitSignature::<LedgerContext>::new(s.address(), va.signature);
}

/// One signature rule (issue 19): a vote or proposal signature consensus
/// accepts is accepted by the ledger as double-sign evidence, so no
/// validator can sign votes that count but cannot be slashed. Played with
/// the ZIP-215 vectors, the signatures where RFC 8032's strict rule (the
/// ledger's before) and consensus disagree.
#[test]
fn every_signature_consensus_accepts_is_evidence() {
    use malachitebft_signing_ed25519::{PublicKey, Signature};
    let s = signer(1);
    let ctx = LedgerContext;
    let block = BlockHash([5; 32]);
    let vote = ctx.new_precommit(Height(4), Round::new(1), NilOrVal::Val(block), s.address());
    let vectors = meshcast_control::ed25519::zip215_vectors();
    assert_eq!(vectors.len(), 196);
    for (a, sig) in vectors {
        let key = PublicKey::new(ed25519_consensus::VerificationKey::try_from(a).unwrap());
        let signature = Signature::from_bytes(sig);
        assert!(
            s.verify_signed_vote(&vote, &signature, &key),
            "consensus, A {}",
            hex::encode(a)
        );
        let evidence = SignedVote {
            height: 4,
            round: 1,
            block: block.0,
            sig,
        };
        assert!(evidence.verify(&a), "ledger, A {}", hex::encode(a));
        let proposal = meshcast_ledger::SignedProposal {
            height: 4,
            round: 1,
            pol_round: -1,
            data_hash: [6; 32],
            sig,
        };
        assert!(proposal.verify(&a), "ledger proposal, A {}", hex::encode(a));
    }
}

/// The cheater: a validator signs its votes with its real key but adds a
/// point of order 8 to the nonce commitment R (s = r + H(R'‖A‖M)·a with
/// R' = rB + T). The cofactored equation consensus uses accepts it, RFC
/// 8032's strict one does not; so under the ledger's old rule its double
/// votes counted in consensus and could not slash it. Now they do.
#[test]
fn a_validator_cannot_sign_votes_that_count_but_do_not_slash() {
    use curve25519_dalek::{constants, edwards::CompressedEdwardsY, scalar::Scalar};
    use malachitebft_signing_ed25519::Signature;
    use sha2::{Digest, Sha512};
    let seed = [6u8; 32];
    let s = signer(6);
    let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
    let address = s.address().0;
    assert_eq!(dalek.verifying_key().to_bytes(), address);
    let sign_with_torsion = |message: &[u8]| -> [u8; 64] {
        let r = Scalar::from_bytes_mod_order_wide(&Sha512::digest(message).into());
        let big_r = (constants::ED25519_BASEPOINT_POINT * r + constants::EIGHT_TORSION[1])
            .compress()
            .to_bytes();
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(big_r)
                .chain_update(address)
                .chain_update(message)
                .finalize()
                .into(),
        );
        let mut sig = [0; 64];
        sig[..32].copy_from_slice(&big_r);
        sig[32..].copy_from_slice((r + k * dalek.to_scalar()).as_bytes());
        sig
    };
    assert!(CompressedEdwardsY(address).decompress().is_some());
    let validators = ValidatorSet::from_genesis(&Genesis {
        validators: vec![GenesisValidator { address, power: 1 }],
        ..genesis(1)
    })
    .unwrap();
    let key = &validators.validators()[0].public_key;
    let ctx = LedgerContext;
    let mut evidence = Vec::new();
    for block in [BlockHash([1; 32]), BlockHash([2; 32])] {
        let vote = ctx.new_precommit(Height(9), Round::new(0), NilOrVal::Val(block), s.address());
        let sig = sign_with_torsion(&vote.sign_bytes());
        assert!(
            s.verify_signed_vote(&vote, &Signature::from_bytes(sig), key),
            "consensus counts it"
        );
        let strict = dalek.verifying_key().verify_strict(
            &vote.sign_bytes(),
            &ed25519_dalek::Signature::from_bytes(&sig),
        );
        assert!(strict.is_err(), "RFC 8032 strict refuses it");
        evidence.push(SignedVote {
            height: 9,
            round: 0,
            block: block.0,
            sig,
        });
    }
    assert!(
        evidence.iter().all(|v| v.verify(&address)),
        "the ledger takes it as evidence"
    );
    // And the ledger slashes on it.
    let g = Genesis {
        validators: vec![GenesisValidator { address, power: 1 }],
        accounts: vec![
            GenesisAccount {
                address,
                balance: 0,
                stake: 1_000_000,
            },
            GenesisAccount {
                address: signer(7).address().0,
                balance: 1_000,
                stake: 0,
            },
        ],
        ..genesis(1)
    };
    let mut state = meshcast_ledger::State::from_genesis(&g).unwrap();
    let reporter = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let tx = TxBody {
        chain_id: g.chain_id.clone(),
        from: signer(7).address().0,
        nonce: 0,
        action: meshcast_ledger::Action::Slash {
            offender: address,
            evidence: meshcast_ledger::Evidence::DoubleSign {
                a: evidence[0].clone(),
                b: evidence[1].clone(),
            },
        },
    }
    .sign(&reporter);
    state.check(&tx).unwrap();
    let result = state.apply_block(&meshcast_ledger::Block {
        height: state.height + 1,
        time_ms: 1,
        proposer: address,
        txs: vec![tx],
    });
    assert_eq!(result.results, vec![None]);
    assert_eq!(
        state.account(&address).unwrap().stake,
        950_000,
        "5 % slashed"
    );
}

#[test]
fn genesis_validator_sets_are_checked() {
    let mut g = genesis(2);
    g.validators[1].power = 0;
    assert!(ValidatorSet::from_genesis(&g)
        .unwrap_err()
        .contains("power 0"));
    let mut g = genesis(2);
    g.validators.clear();
    assert!(ValidatorSet::from_genesis(&g)
        .unwrap_err()
        .contains("no validators"));
    let mut g = genesis(2);
    g.validators[1] = g.validators[0].clone();
    assert!(ValidatorSet::from_genesis(&g)
        .unwrap_err()
        .contains("twice"));
}

#[test]
fn two_proposals_for_one_round_are_caught_and_slashed() {
    use meshcast_consensus::streams::Equivocations;
    use meshcast_ledger::State;
    let g = genesis(4);
    let validators = ValidatorSet::from_genesis(&g).unwrap();
    let liar = signer(2);
    let init = ProposalInit {
        height: Height(1),
        round: Round::new(0),
        pol_round: Round::Nil,
        proposer: liar.address(),
    };
    let receive = |streams: &mut Streams, from: u8, value: &BlockValue| {
        stream_proposal(&liar, init, &encode_block(&value.block))
            .into_iter()
            .filter_map(|m| streams.insert(peer(from), m, &validators).unwrap())
            .next()
            .unwrap()
    };
    let a = BlockValue::new(block(1, liar.address(), 1));
    let b = BlockValue::new(block(1, liar.address(), 2));
    let mut streams = Streams::default();
    let mut seen = Equivocations::default();
    assert!(seen.observe(&receive(&mut streams, 1, &a)).is_none());
    // The same proposal again (another peer, a restream) is not evidence.
    assert!(seen.observe(&receive(&mut streams, 3, &a)).is_none());
    let (offender, evidence) = seen.observe(&receive(&mut streams, 4, &b)).unwrap();
    assert_eq!(offender, liar.address());
    // Reported once.
    assert!(seen.observe(&receive(&mut streams, 5, &b)).is_none());
    // Evidence travels as JSON (the `ledger tx slash` file format).
    let evidence: meshcast_ledger::Evidence =
        serde_json::from_str(&serde_json::to_string(&evidence).unwrap()).unwrap();

    // An honest validator's report slashes the liar on the ledger.
    let reporter = signer(1);
    let mut state = State::from_genesis(&g).unwrap();
    let stake = state.account(&liar.address().0).unwrap().stake;
    let report = TxBody {
        chain_id: "test".into(),
        from: reporter.address().0,
        nonce: 0,
        action: Action::Slash {
            offender: liar.address().0,
            evidence: evidence.clone(),
        },
    }
    .sign(&reporter.ledger_key());
    state.check(&report).unwrap();
    let r = state.apply_block(&Block {
        height: 1,
        time_ms: 1,
        proposer: reporter.address().0,
        txs: vec![report],
    });
    assert_eq!(r.results, vec![None]);
    assert_eq!(
        state.account(&liar.address().0).unwrap().stake,
        stake - stake * 500 / 10_000
    );
    // Blaming someone else with it does not hold.
    let wrong = TxBody {
        chain_id: "test".into(),
        from: reporter.address().0,
        nonce: 1,
        action: Action::Slash {
            offender: signer(3).address().0,
            evidence,
        },
    }
    .sign(&reporter.ledger_key());
    assert!(state
        .check(&wrong)
        .unwrap_err()
        .to_string()
        .contains("not signed by the offender"));
}
