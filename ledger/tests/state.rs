//! The ledger state machine: every refusal with its reason, rewards,
//! unbonding, slashing, storage round trips, balance proofs, and property
//! tests of its invariants (no negative balance — u64 with checked
//! arithmetic — and supply conserved except by slashing).

use ed25519_dalek::SigningKey;
use meshcast_ledger::hash::{prove_account, verify_account};
use meshcast_ledger::state::GenesisAccount;
use meshcast_ledger::store::Store;
use meshcast_ledger::tx::TxBody;
use meshcast_ledger::{
    Action, Block, Evidence, Genesis, Params, SignedProposal, SignedVote, State, Tx, Work,
};
use proptest::prelude::*;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn addr(n: u8) -> [u8; 32] {
    key(n).verifying_key().to_bytes()
}

/// Accounts 1..=4 with 1000 each (4 also has stake 500); 9 is the HUB.
fn genesis() -> Genesis {
    let mut accounts: Vec<GenesisAccount> = (1..=4)
        .map(|n| GenesisAccount {
            address: addr(n),
            balance: 1000,
            stake: if n == 4 { 500 } else { 0 },
        })
        .collect();
    accounts.push(GenesisAccount {
        address: addr(9),
        balance: 0,
        stake: 0,
    });
    Genesis {
        chain_id: "meshcast-test".into(),
        params: Params {
            delivery_price_per_gb: 100,
            storage_price_per_gb_hour: 1,
            transcode_price_per_second: 2,
            unbond_delay: 3,
            slash_bps: 1000,
            min_stake: Default::default(),
            epoch_secs: 0,
        },
        accounts,
        authorities: vec![hex::encode(addr(9))],
        validators: vec![],
    }
}

fn tx(state: &State, from: u8, action: Action) -> Tx {
    let nonce = state.account(&addr(from)).map_or(0, |a| a.nonce);
    TxBody {
        chain_id: state.chain_id.clone(),
        from: addr(from),
        nonce,
        action,
    }
    .sign(&key(from))
}

fn block(state: &State, txs: Vec<Tx>) -> Block {
    Block {
        height: state.height + 1,
        time_ms: 1_000 * (state.height + 1),
        proposer: addr(9),
        txs,
    }
}

fn refusal(state: &State, t: &Tx) -> String {
    state.check(t).unwrap_err().to_string()
}

#[test]
fn every_bad_transaction_is_refused_with_a_reason() {
    let s = State::from_genesis(&genesis()).unwrap();
    let mut forged = tx(
        &s,
        1,
        Action::Transfer {
            to: addr(2),
            amount: 5,
        },
    );
    forged.sig = tx(
        &s,
        2,
        Action::Transfer {
            to: addr(2),
            amount: 5,
        },
    )
    .sig;
    assert!(refusal(&s, &forged).contains("signature"));
    let mut other_chain = TxBody {
        chain_id: "elsewhere".into(),
        from: addr(1),
        nonce: 0,
        action: Action::Deposit { amount: 1 },
    };
    other_chain.nonce = 0;
    assert!(refusal(&s, &other_chain.sign(&key(1))).contains("chain"));
    let stranger = TxBody {
        chain_id: s.chain_id.clone(),
        from: addr(7),
        nonce: 0,
        action: Action::Deposit { amount: 1 },
    }
    .sign(&key(7));
    assert!(refusal(&s, &stranger).contains("unknown account"));
    assert!(refusal(
        &s,
        &tx(
            &s,
            1,
            Action::Transfer {
                to: addr(2),
                amount: 1001
            }
        )
    )
    .contains("balance: 1001 needed, 1000 available"));
    assert!(refusal(&s, &tx(&s, 4, Action::Unbond { amount: 501 })).contains("unbond beyond stake"));
    assert!(refusal(&s, &tx(&s, 1, Action::Bond { amount: 0 })).contains("more than 0"));
    let reward = Action::Reward {
        payer: addr(1),
        node: addr(2),
        work: Work::Delivery { bytes: 1 << 30 },
        reference: "e1".into(),
    };
    assert!(refusal(&s, &tx(&s, 1, reward.clone())).contains("not an authority"));
    assert!(refusal(&s, &tx(&s, 9, reward)).contains("payer's escrow"));

    // Replayed nonce: the same transaction twice.
    let mut s = s;
    let t = tx(
        &s,
        1,
        Action::Transfer {
            to: addr(2),
            amount: 10,
        },
    );
    let r = s.apply_block(&block(&s, vec![t.clone(), t.clone()]));
    assert_eq!(r.results[0], None);
    assert!(
        r.results[1]
            .as_ref()
            .unwrap()
            .contains("nonce 0 is not the next one (1)"),
        "{:?}",
        r.results
    );
    assert!(refusal(&s, &t).contains("replayed"));
    assert_eq!(s.account(&addr(1)).unwrap().balance, 990);
}

#[test]
fn rewards_unbonding_and_slashing() {
    let mut s = State::from_genesis(&genesis()).unwrap();
    let supply = s.supply;
    let txs = vec![
        tx(&s, 1, Action::Deposit { amount: 600 }),
        tx(&s, 4, Action::Unbond { amount: 200 }),
    ];
    let r = s.apply_block(&block(&s, txs));
    assert_eq!(r.results, vec![None, None]);
    // 5 GB delivered at 100 µMESH/GB = 500 from 1's escrow to node 3.
    let pay = Action::Reward {
        payer: addr(1),
        node: addr(3),
        work: Work::Delivery {
            bytes: 5_000_000_000,
        },
        reference: "delivery/node3/epoch7".into(),
    };
    let r = s.apply_block(&block(&s, vec![tx(&s, 9, pay.clone())]));
    assert_eq!(r.results, vec![None]);
    assert_eq!(s.account(&addr(1)).unwrap().escrow, 100);
    assert_eq!(s.account(&addr(3)).unwrap().balance, 1500);
    assert!(refusal(&s, &tx(&s, 9, pay)).contains("already settled"));
    // Unbonded 200 comes back at height 1 + 3.
    s.apply_block(&block(&s, vec![]));
    assert_eq!(s.account(&addr(4)).unwrap().balance, 1000);
    s.apply_block(&block(&s, vec![]));
    assert_eq!(s.account(&addr(4)).unwrap().balance, 1200);
    assert_eq!(s.supply, supply);

    // Double signing at height 9 round 0: 10 % of the remaining 300 stake burned.
    let a = SignedVote::sign(&key(4), 9, 0, [1; 32]);
    let b = SignedVote::sign(&key(4), 9, 0, [2; 32]);
    let same = SignedVote::sign(&key(4), 9, 0, [1; 32]);
    let evidence = Evidence::DoubleSign {
        a: a.clone(),
        b: b.clone(),
    };
    assert!(refusal(
        &s,
        &tx(
            &s,
            2,
            Action::Slash {
                offender: addr(4),
                evidence: Evidence::DoubleSign {
                    a: a.clone(),
                    b: same
                }
            }
        )
    )
    .contains("same block"));
    assert!(refusal(
        &s,
        &tx(
            &s,
            2,
            Action::Slash {
                offender: addr(3),
                evidence: evidence.clone()
            }
        )
    )
    .contains("not signed by the offender"));
    let r = s.apply_block(&block(
        &s,
        vec![tx(
            &s,
            2,
            Action::Slash {
                offender: addr(4),
                evidence: evidence.clone(),
            },
        )],
    ));
    assert_eq!(r.results, vec![None]);
    assert_eq!(s.account(&addr(4)).unwrap().stake, 270);
    assert_eq!(s.supply, supply - 30);
    assert_eq!(s.total_holdings(), s.supply);
    assert!(refusal(
        &s,
        &tx(
            &s,
            2,
            Action::Slash {
                offender: addr(4),
                evidence
            }
        )
    )
    .contains("already settled"));
}

/// A reward for `bytes` delivered to node 3, paid by `payer`.
fn delivery(payer: u8, bytes: u64, reference: String) -> Action {
    Action::Reward {
        payer: addr(payer),
        node: addr(3),
        work: Work::Delivery { bytes },
        reference,
    }
}

#[test]
fn many_small_rewards_pay_what_one_large_one_would() {
    let dir = std::env::temp_dir().join(format!("meshcast-carry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let g = genesis();
    let (store, mut s, _) = Store::open(&dir.join("ledger.redb"), &g).unwrap();
    let commit = |s: &mut State, txs: Vec<Tx>| {
        let b = block(s, txs);
        let r = s.apply_block(&b);
        assert!(r.results.iter().all(Option::is_none), "{:?}", r.results);
        store.commit(&b, &r, s, b"cert").unwrap();
    };
    let deposits = vec![
        tx(&s, 1, Action::Deposit { amount: 600 }),
        tx(&s, 2, Action::Deposit { amount: 100 }),
    ];
    commit(&mut s, deposits);
    // At 100 µMESH/GB, 3 333 333 bytes are worth a third of a µMESH and
    // 15 000 000 bytes one and a half: each alone rounds down, but
    // payer 1's 1000 rewards add up to 333 and payer 2's 7 to 10, each
    // pair carrying its own remainder.
    for round in 0..10u32 {
        let mut txs = Vec::new();
        // The HUB's transactions queued behind `queued` others in one block.
        let nonce_from = |s: &State, from: u8, action: Action, queued: u64| {
            let mut body = tx(s, from, action).body;
            body.nonce += queued;
            body.sign(&key(from))
        };
        for i in 0..100u64 {
            let reference = format!("delivery/small/{round}/{i}");
            txs.push(nonce_from(&s, 9, delivery(1, 3_333_333, reference), i));
        }
        if round < 7 {
            let reference = format!("delivery/half/{round}");
            txs.push(nonce_from(&s, 9, delivery(2, 15_000_000, reference), 100));
        }
        commit(&mut s, txs);
    }
    assert_eq!(s.account(&addr(3)).unwrap().balance, 1000 + 333 + 10);
    assert_eq!(s.account(&addr(1)).unwrap().escrow, 600 - 333);
    assert_eq!(s.account(&addr(2)).unwrap().escrow, 100 - 10);
    assert_eq!(s.carries[&(addr(1), addr(3))], 333_300_000);
    assert_eq!(s.carries[&(addr(2), addr(3))], 500_000_000);
    assert_eq!(s.total_holdings(), s.supply);
    // The carries are state: stored, reloaded and under the app hash.
    drop(store);
    let (_, reopened, app_hash) = Store::open(&dir.join("ledger.redb"), &g).unwrap();
    assert_eq!(reopened, s);
    assert_eq!(app_hash, meshcast_ledger::hash::app_hash(&s));
    let mut other = s.clone();
    other.carries.insert((addr(1), addr(3)), 1);
    assert_ne!(meshcast_ledger::hash::app_hash(&other), app_hash);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn store_round_trip_and_balance_proofs() {
    let dir = std::env::temp_dir().join(format!("meshcast-ledger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ledger.redb");
    let g = genesis();
    let (store, mut s, _) = Store::open(&path, &g).unwrap();
    let mut last = [0u8; 32];
    let mut hashes = Vec::new();
    for i in 0..5u64 {
        let t = tx(
            &s,
            1,
            Action::Transfer {
                to: addr(2),
                amount: 1 + i,
            },
        );
        hashes.push(hex::encode(t.hash()));
        let b = block(&s, vec![t]);
        let r = s.apply_block(&b);
        store.commit(&b, &r, &s, b"cert").unwrap();
        last = r.app_hash;
    }
    drop(store);
    let (store, reopened, app_hash) = Store::open(&path, &g).unwrap();
    assert_eq!(reopened, s);
    assert_eq!(app_hash, last);
    assert_eq!(store.block(3).unwrap().unwrap().block.height, 3);
    assert_eq!(store.certificate(3).unwrap().as_deref(), Some(&b"cert"[..]));
    assert_eq!(store.tx_location(&hashes[4]).unwrap(), Some((5, 0)));
    assert!(store.block(6).unwrap().is_none());
    let (acct, proof) = prove_account(&s, &addr(2)).unwrap();
    assert_eq!(acct.balance, 1015);
    assert!(verify_account(last, &addr(2), &acct, &proof));
    let mut richer = acct.clone();
    richer.balance += 1;
    assert!(!verify_account(last, &addr(2), &richer, &proof));
    let mut g2 = g.clone();
    g2.chain_id = "other".into();
    assert!(Store::open(&path, &g2).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn action_strategy() -> impl Strategy<Value = (u8, Action)> {
    let who = 1u8..=5; // 5 has no account
    let amount = 0u64..1500;
    prop_oneof![
        (who.clone(), 1u8..=6, amount.clone()).prop_map(|(f, t, a)| (
            f,
            Action::Transfer {
                to: addr(t),
                amount: a
            }
        )),
        (who.clone(), amount.clone()).prop_map(|(f, a)| (f, Action::Deposit { amount: a })),
        (who.clone(), amount.clone()).prop_map(|(f, a)| (f, Action::Bond { amount: a })),
        (who.clone(), amount.clone()).prop_map(|(f, a)| (f, Action::Unbond { amount: a })),
        (1u8..=4, 1u8..=4, 0u64..20_000_000_000, 0u8..4).prop_map(|(p, n, b, r)| (
            9,
            Action::Reward {
                payer: addr(p),
                node: addr(n),
                work: Work::Delivery { bytes: b },
                reference: format!("r{r}")
            }
        )),
        (1u8..=4, 0u8..3).prop_map(|(o, h)| (
            2,
            Action::Slash {
                offender: addr(o),
                evidence: Evidence::DoubleSign {
                    a: SignedVote::sign(&key(o), h as u64, 0, [1; 32]),
                    b: SignedVote::sign(&key(o), h as u64, 0, [2; 32])
                }
            }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn supply_is_conserved_and_replay_is_deterministic(blocks in prop::collection::vec(prop::collection::vec(action_strategy(), 0..8), 1..12)) {
        let g = genesis();
        let mut s = State::from_genesis(&g).unwrap();
        let mut applied = Vec::new();
        let mut burned = 0u128;
        for actions in blocks {
            // Nonces as a wallet would set them: the next one per sender.
            let mut nonces = std::collections::HashMap::new();
            let txs: Vec<Tx> = actions.into_iter().map(|(from, action)| {
                let n = nonces.entry(from).or_insert_with(|| s.account(&addr(from)).map_or(0, |a| a.nonce));
                let t = TxBody { chain_id: s.chain_id.clone(), from: addr(from), nonce: *n, action }.sign(&key(from));
                *n += 1;
                t
            }).collect();
            let before = s.supply;
            let b = block(&s, txs);
            let r = s.apply_block(&b);
            burned += before - s.supply;
            prop_assert_eq!(s.total_holdings(), s.supply);
            prop_assert_eq!(r.results.len(), b.txs.len());
            applied.push((b, r.app_hash));
        }
        let start = State::from_genesis(&g).unwrap().supply;
        prop_assert_eq!(s.supply + burned, start);
        // Another node applying the same blocks reaches the same app hashes.
        let mut replica = State::from_genesis(&g).unwrap();
        for (b, h) in &applied {
            prop_assert_eq!(replica.apply_block(b).app_hash, *h);
        }
        prop_assert_eq!(replica, s);
    }
}

fn signed_proposal(by: u8, height: u64, round: u32, data: u8) -> SignedProposal {
    use ed25519_dalek::Signer;
    let data_hash = [data; 32];
    let m = SignedProposal::message(height, round as i64, -1, &addr(by), &data_hash);
    SignedProposal {
        height,
        round,
        pol_round: -1,
        data_hash,
        sig: key(by).sign(&m).to_bytes(),
    }
}

#[test]
fn double_proposals_are_slashed_once_and_only_when_they_hold() {
    let mut s = State::from_genesis(&genesis()).unwrap();
    let slash = |s: &State, a: SignedProposal, b: SignedProposal| {
        tx(
            s,
            1,
            Action::Slash {
                offender: addr(4),
                evidence: Evidence::DoubleProposal { a, b },
            },
        )
    };
    let a = signed_proposal(4, 5, 1, 1);
    assert!(refusal(&s, &slash(&s, a.clone(), a.clone())).contains("the same"));
    assert!(
        refusal(&s, &slash(&s, a.clone(), signed_proposal(4, 6, 1, 2)))
            .contains("different heights")
    );
    assert!(
        refusal(&s, &slash(&s, a.clone(), signed_proposal(3, 5, 1, 2)))
            .contains("not signed by the offender")
    );
    let mut forged = signed_proposal(4, 5, 1, 2);
    forged.data_hash = [7; 32];
    assert!(refusal(&s, &slash(&s, a.clone(), forged)).contains("not signed"));
    let good = slash(&s, a.clone(), signed_proposal(4, 5, 1, 2));
    let r = s.apply_block(&block(&s, vec![good]));
    assert_eq!(r.results, vec![None]);
    assert_eq!(s.account(&addr(4)).unwrap().stake, 450);
    assert!(refusal(&s, &slash(&s, signed_proposal(4, 5, 1, 3), a)).contains("already settled"));
}

#[test]
fn only_an_authority_slashes_for_a_fabricated_delivery_claim_and_once() {
    let mut s = State::from_genesis(&genesis()).unwrap();
    let evidence = |reason: &str| Evidence::Delivery {
        claim: [7; 32],
        epoch: 42,
        reason: reason.into(),
    };
    let slash = |e| Action::Slash {
        offender: addr(4),
        evidence: e,
    };
    // A node cannot slash a competitor on its own word.
    assert!(refusal(&s, &tx(&s, 2, slash(evidence("made up")))).contains("not an authority"));
    assert!(refusal(&s, &tx(&s, 9, slash(evidence("")))).contains("reason"));
    let supply = s.supply;
    let r = s.apply_block(&block(
        &s,
        vec![tx(&s, 9, slash(evidence("Merkle proof does not verify")))],
    ));
    assert_eq!(r.results, vec![None]);
    // 10 % of 500 burned, and the supply shrinks by exactly that.
    assert_eq!(s.account(&addr(4)).unwrap().stake, 450);
    assert_eq!(s.supply, supply - 50);
    // The same claim is evidence once, whatever the reason says.
    assert!(refusal(&s, &tx(&s, 9, slash(evidence("again")))).contains("already settled"));
}

#[test]
fn a_role_needs_the_most_stake_any_of_its_roles_needs() {
    let p = Params::default();
    assert_eq!(
        p.stake_needed(&["edge"]),
        meshcast_ledger::state::DEFAULT_MIN_EDGE_STAKE
    );
    assert_eq!(p.stake_needed(&["unknown-role"]), 0);
    let mut p = p;
    p.min_stake
        .insert("storage".into(), 3 * p.min_stake["edge"]);
    assert_eq!(
        p.stake_needed(&["edge", "storage"]),
        3 * p.min_stake["edge"]
    );
    // A genesis written before min_stake existed reads as "no stake needed".
    let old = r#"{"delivery_price_per_gb":1,"storage_price_per_gb_hour":1,"transcode_price_per_second":1,"unbond_delay":1,"slash_bps":0}"#;
    let old: Params = serde_json::from_str(old).unwrap();
    assert_eq!(old.stake_needed(&["edge"]), 0);
}

#[test]
fn transcode_evidence_must_be_the_offenders_commitment_and_a_challenged_segment() {
    use meshcast_control::envelope::Envelope;
    use meshcast_control::identity::NodeKey;
    use meshcast_control::transcoding::{self, Commitment, SegmentEntry};
    let mut s = State::from_genesis(&genesis()).unwrap();
    let worker = NodeKey::from_seed([4; 32]);
    assert_eq!(worker.public().to_bytes(), addr(4));
    let segments: Vec<SegmentEntry> = (1..=40)
        .map(|n| SegmentEntry {
            rung: "720p".into(),
            number: n,
            ticks: 51_200,
            hash: [n as u8; 32],
        })
        .collect();
    let c = Commitment::new("v1".into(), 0, 1, vec![], segments);
    let body = serde_json::to_vec(&c).unwrap();
    let sealed = |key: &NodeKey, domain: &str, body: Vec<u8>| {
        hex::encode(Envelope::seal(key, domain, body, 1_000).unwrap().encode())
    };
    let envelope = sealed(&worker, transcoding::COMMIT, body.clone());
    let nonce = [3u8; 32];
    let picked = transcoding::challenge(&c.root, &nonce, 40);
    let unpicked = (0..40)
        .find(|i| !picked.contains(i))
        .expect("40 segments: some unpicked");
    let evidence = |commitment: String, index: usize| Action::Slash {
        offender: addr(4),
        evidence: Evidence::Transcode {
            commitment,
            nonce,
            index: index as u32,
            reason: "SSIM 0.60 against the source; the reference scored 0.97".into(),
        },
    };
    let refused = |s: &State, a: Action| refusal(s, &tx(s, 9, a));
    assert!(
        refusal(&s, &tx(&s, 2, evidence(envelope.clone(), picked[0]))).contains("not an authority")
    );
    assert!(refused(&s, evidence(envelope.clone(), unpicked)).contains("does not pick"));
    let someone_else = sealed(
        &NodeKey::from_seed([2; 32]),
        transcoding::COMMIT,
        body.clone(),
    );
    assert!(refused(&s, evidence(someone_else, picked[0])).contains("by the offender"));
    let other_domain = sealed(&worker, "meshcast-claim-v1", body);
    assert!(refused(&s, evidence(other_domain, picked[0])).contains("by the offender"));
    let mut forged = Envelope::decode(&hex::decode(&envelope).unwrap()).unwrap();
    forged.body[10] ^= 1;
    assert!(refused(&s, evidence(hex::encode(forged.encode()), picked[0])).contains("signature"));
    let r = s.apply_block(&block(
        &s,
        vec![tx(&s, 9, evidence(envelope.clone(), picked[0]))],
    ));
    assert_eq!(r.results, vec![None]);
    assert_eq!(s.account(&addr(4)).unwrap().stake, 450);
    let again = picked.get(1).copied().unwrap_or(picked[0]);
    assert!(
        refused(&s, evidence(envelope, again)).contains("already settled"),
        "one commitment, one slash"
    );
}
