//! From a settled delivery epoch to ledger reward transactions: each
//! video's share of the epoch is paid from its owner's escrow to the edge.
//! Pure; the ledger node that will carry these (issue 7) signs and submits
//! them with the HUB's key, which the genesis names as an authority.

use crate::registry::Settlement;
use meshcast_ledger::{Action, Work};

/// Reward actions for a settlement. `node_key` is the edge's public key;
/// `payer_of(video id)` names the account paying for a video (its owner,
/// or the hub for videos without one).
pub fn reward_actions(
    s: &Settlement,
    node_key: [u8; 32],
    payer_of: impl Fn(&str) -> [u8; 32],
) -> Vec<Action> {
    if !s.accepted {
        return Vec::new();
    }
    let mut by_payer: Vec<([u8; 32], u64)> = Vec::new();
    for (prefix, bytes) in &s.per_prefix {
        let video = prefix
            .strip_prefix("/v/")
            .and_then(|r| r.split('/').next())
            .unwrap_or("");
        let payer = payer_of(video);
        match by_payer.iter_mut().find(|(p, _)| *p == payer) {
            Some((_, b)) => *b += bytes,
            None => by_payer.push((payer, *bytes)),
        }
    }
    by_payer
        .into_iter()
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(payer, bytes)| Action::Reward {
            payer,
            node: node_key,
            work: Work::Delivery { bytes },
            reference: delivery_reference(&s.node, s.epoch, &payer),
        })
        .collect()
}

/// The ledger reference of a settled epoch's reward from one payer: the
/// chain pays each once.
pub fn delivery_reference(node: &str, epoch: u64, payer: &[u8; 32]) -> String {
    format!("delivery/{node}/{epoch}/{}", hex::encode(payer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use meshcast_ledger::state::GenesisAccount;
    use meshcast_ledger::tx::TxBody;
    use meshcast_ledger::{Block, Genesis, Params, State};

    #[test]
    fn a_settled_epoch_pays_the_owners_escrow_to_the_edge() {
        let hub = SigningKey::from_bytes(&[1; 32]);
        let owner_key = SigningKey::from_bytes(&[2; 32]);
        let owner = owner_key.verifying_key().to_bytes();
        let edge = SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes();
        let hub_pk = hub.verifying_key().to_bytes();
        let g = Genesis {
            chain_id: "t".into(),
            params: Params {
                delivery_price_per_gb: 1_000_000,
                storage_price_per_gb_hour: 0,
                transcode_price_per_second: 0,
                unbond_delay: 1,
                slash_bps: 0,
                min_stake: Default::default(),
                epoch_secs: 0,
            },
            accounts: vec![
                GenesisAccount {
                    address: hub_pk,
                    balance: 10_000_000,
                    stake: 0,
                },
                GenesisAccount {
                    address: owner,
                    balance: 10_000_000,
                    stake: 0,
                },
            ],
            authorities: vec![hex::encode(hub_pk)],
            validators: vec![],
        };
        let mut state = State::from_genesis(&g).unwrap();
        let deposit = |key: &SigningKey, nonce| {
            let action = meshcast_ledger::Action::Deposit { amount: 10_000_000 };
            TxBody {
                chain_id: "t".into(),
                from: key.verifying_key().to_bytes(),
                nonce,
                action,
            }
            .sign(key)
        };
        let r = state.apply_block(&Block {
            height: 1,
            time_ms: 0,
            proposer: hub_pk,
            txs: vec![deposit(&owner_key, 0), deposit(&hub, 0)],
        });
        assert_eq!(r.results, vec![None, None]);
        let s = Settlement {
            node: "n1".into(),
            epoch: 7,
            accepted: true,
            claimed_bytes: 3_000_000_000,
            credited_bytes: 3_000_000_000,
            entries: 3,
            opened: 3,
            reason: None,
            over_budget: vec![],
            per_prefix: vec![
                ("/v/owned/".into(), 2_000_000_000),
                ("/v/public/".into(), 1_000_000_000),
            ],
            already_paid: 0,
        };
        let actions = reward_actions(
            &s,
            edge,
            |video| if video == "owned" { owner } else { hub_pk },
        );
        assert_eq!(actions.len(), 2);
        let txs = actions
            .into_iter()
            .enumerate()
            .map(|(i, action)| {
                TxBody {
                    chain_id: "t".into(),
                    from: hub_pk,
                    nonce: 1 + i as u64,
                    action,
                }
                .sign(&hub)
            })
            .collect();
        let r = state.apply_block(&Block {
            height: 2,
            time_ms: 0,
            proposer: hub_pk,
            txs,
        });
        assert_eq!(r.results, vec![None, None]);
        // 3 GB at 1 MESH (10⁶ µMESH) per GB.
        assert_eq!(state.account(&edge).unwrap().balance, 3_000_000);
        assert_eq!(state.account(&owner).unwrap().escrow, 8_000_000);
        assert_eq!(state.account(&hub_pk).unwrap().escrow, 9_000_000);
        let refused = Settlement {
            accepted: false,
            ..s
        };
        assert!(reward_actions(&refused, edge, |_| owner).is_empty());
    }
}
