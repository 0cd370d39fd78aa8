//! The hub's embedded ledger validator. Without `[ledger] genesis` it runs
//! a one-validator chain of the hub's own key (the hub is also the chain's
//! authority for rewards and holds its treasury); with one, it joins that
//! chain. Settled delivery epochs become reward transactions signed with
//! the hub key; a reward's reference is paid at most once on the chain, so
//! resubmitting after a crash or restart is safe.

use crate::registry::Settlement;
use crate::HubError;
use ed25519_dalek::SigningKey;
use meshcast_conf::HubConfig;
use meshcast_consensus::{Running, Setup};
use meshcast_control::identity::NodeKey;
use meshcast_ledger::state::{GenesisAccount, GenesisValidator};
use meshcast_ledger::tx::TxBody;
use meshcast_ledger::{Action, Genesis, Params};
use std::sync::Arc;
use std::time::Duration;

/// What a hub's own chain starts with in its treasury (µMESH).
const TREASURY: u64 = 1_000_000_000_000;

pub struct HubLedger {
    pub running: Arc<Running>,
    signing: SigningKey,
}

fn one_validator_genesis(key: &NodeKey) -> Genesis {
    let me = key.public().to_bytes();
    Genesis {
        chain_id: format!("meshcast-hub-{}", key.id()),
        params: Params {
            delivery_price_per_gb: 1_000_000,
            storage_price_per_gb_hour: 10_000,
            transcode_price_per_second: 1_000,
            unbond_delay: 100,
            slash_bps: 500,
        },
        accounts: vec![GenesisAccount {
            address: me,
            balance: TREASURY,
            stake: 1_000_000,
        }],
        authorities: vec![hex::encode(me)],
        validators: vec![GenesisValidator {
            address: me,
            power: 1,
        }],
    }
}

fn ledger_err(e: impl std::fmt::Display) -> HubError {
    HubError::Ledger(e.to_string())
}

impl HubLedger {
    pub async fn start(config: &HubConfig, key: &NodeKey) -> Result<HubLedger, HubError> {
        let dir = config.hub.data_dir.join("ledger");
        std::fs::create_dir_all(&dir)?;
        let genesis = match &config.ledger.genesis {
            Some(path) => meshcast_consensus::validator::load_genesis(path).map_err(ledger_err)?,
            None => {
                let path = dir.join("genesis.json");
                if path.exists() {
                    meshcast_consensus::validator::load_genesis(&path).map_err(ledger_err)?
                } else {
                    let g = one_validator_genesis(key);
                    let text = serde_json::to_vec_pretty(&g).map_err(ledger_err)?;
                    std::fs::write(&path, text)?;
                    g
                }
            }
        };
        let (interval_ms, timeout_ms) = config.ledger.pacing_ms();
        let timeouts = meshcast_consensus::validator::timeouts(Duration::from_millis(timeout_ms));
        let setup = Setup {
            moniker: "hub".into(),
            genesis,
            key_seed: key.seed(),
            data_dir: dir,
            p2p: config.ledger.p2p,
            peers: config.ledger.peers.clone(),
            peer_apis: config.ledger.peer_apis.clone(),
            pacing: meshcast_consensus::Pacing {
                empty_block_interval: Duration::from_millis(interval_ms),
                ..meshcast_consensus::Pacing::default()
            },
            timeouts,
        };
        let running = meshcast_consensus::start(setup).await.map_err(ledger_err)?;
        let ledger = HubLedger {
            running: Arc::new(running),
            signing: SigningKey::from_bytes(&key.seed()),
        };
        ledger.fund_escrow();
        Ok(ledger)
    }

    fn address(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The hub pays for videos without an owner from its own escrow: on a
    /// hub whose escrow is empty, half its balance goes there.
    fn fund_escrow(&self) {
        let me = self.address();
        let amount = {
            let n = self.running.node.lock().unwrap_or_else(|p| p.into_inner());
            match n.account(&me) {
                Some(a) if a.escrow == 0 && a.balance > 1 && n.next_nonce(&me) == a.nonce => {
                    a.balance / 2
                }
                _ => return,
            }
        };
        self.submit(vec![Action::Deposit { amount }]);
    }

    /// Signs `actions` with the hub key and queues them; returns how many
    /// were taken (the others are logged with their reason).
    pub fn submit(&self, actions: Vec<Action>) -> usize {
        let me = self.address();
        let mut n = self.running.node.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken = 0;
        for action in actions {
            let tx = TxBody {
                chain_id: n.chain_id().to_string(),
                from: me,
                nonce: n.next_nonce(&me),
                action,
            }
            .sign(&self.signing);
            match n.submit(tx) {
                Ok(hash) => {
                    taken += 1;
                    tracing::info!(tx = %hex::encode(hash), "ledger transaction queued");
                }
                Err(e) => tracing::warn!(error = %e, "ledger refused a hub transaction"),
            }
        }
        taken
    }

    /// Rewards for a settled epoch that the chain has not paid yet.
    pub fn reward(&self, s: &Settlement, edge_key: [u8; 32], payer_of: impl Fn(&str) -> [u8; 32]) {
        let actions: Vec<Action> = {
            let n = self.running.node.lock().unwrap_or_else(|p| p.into_inner());
            crate::rewards::reward_actions(s, edge_key, payer_of)
                .into_iter()
                .filter(|a| match a {
                    Action::Reward { reference, .. } => {
                        !n.state().settled.contains(&format!("reward/{reference}"))
                    }
                    _ => true,
                })
                .collect()
        };
        if !actions.is_empty() {
            self.submit(actions);
        }
    }
}
