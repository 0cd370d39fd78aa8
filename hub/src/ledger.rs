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
use meshcast_control::messages::Admission;
use meshcast_ledger::state::{GenesisAccount, GenesisValidator};
use meshcast_ledger::tx::TxBody;
use meshcast_ledger::{Action, Evidence, Genesis, Params};
use std::sync::Arc;
use std::time::Duration;

/// What a hub's own chain starts with in its treasury (µMESH).
const TREASURY: u64 = 1_000_000_000_000;

pub struct HubLedger {
    pub running: Arc<Running>,
    signing: SigningKey,
}

/// The hub's own chain: its key is the validator, the authority and the
/// treasury; each of `bonded` starts with an edge's minimum stake bonded
/// (and nothing to spend: what it earns is all its balance shows).
fn one_validator_genesis(key: &NodeKey, bonded: &[[u8; 32]], epoch_secs: u64) -> Genesis {
    let me = key.public().to_bytes();
    let params = Params {
        epoch_secs,
        ..Params::default()
    };
    let stake = params.stake_needed(&["edge", "transcode"]);
    let mut accounts = vec![GenesisAccount {
        address: me,
        balance: TREASURY,
        stake: 1_000_000,
    }];
    accounts.extend(bonded.iter().filter(|a| **a != me).map(|a| GenesisAccount {
        address: *a,
        balance: 0,
        stake,
    }));
    Genesis {
        chain_id: format!("meshcast-hub-{}", key.id()),
        params,
        accounts,
        authorities: vec![hex::encode(me)],
        validators: vec![GenesisValidator {
            address: me,
            power: 1,
        }],
    }
}

/// `[ledger] bonded_nodes` as keys, each at most once.
fn bonded_nodes(config: &HubConfig) -> Result<Vec<[u8; 32]>, HubError> {
    let mut out = Vec::new();
    for text in &config.ledger.bonded_nodes {
        let mut k = [0u8; 32];
        hex::decode_to_slice(text, &mut k).map_err(|_| {
            HubError::Ledger(format!(
                "[ledger] bonded_nodes: {text:?} is not a node key (64 hex digits, as `meshcast keys` prints)"
            ))
        })?;
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(out)
}

/// A reason the chain takes (1 to 512 bytes): cut on a character boundary
/// with "..." when longer.
fn bounded_reason(reason: &str) -> String {
    let mut reason = reason.to_string();
    if reason.len() > 512 {
        let mut cut = 509;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("...");
    }
    reason
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
                    let epoch = config.ledger.delivery_epoch.0.as_secs();
                    if !(1..=86_400).contains(&epoch) {
                        return Err(HubError::Ledger(
                            "[ledger] delivery_epoch must be 1s to 24h".into(),
                        ));
                    }
                    let g = one_validator_genesis(key, &bonded_nodes(config)?, epoch);
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

    /// Waits, at most `limit`, until every queued transaction is in a
    /// block; returns how many are still queued.
    pub async fn drain(&self, limit: std::time::Duration) -> usize {
        let queued = || {
            let n = self.running.node.lock().unwrap_or_else(|p| p.into_inner());
            n.mempool_len()
        };
        let deadline = tokio::time::Instant::now() + limit;
        while queued() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        queued()
    }

    /// `address`'s bonded stake against what `roles` need, as the chain
    /// stands now.
    pub fn admission(&self, address: &[u8; 32], roles: &[String]) -> Admission {
        let n = self.running.node.lock().unwrap_or_else(|p| p.into_inner());
        Admission {
            stake: n.account(address).map_or(0, |a| a.stake),
            needed: n.state().params.stake_needed(roles),
        }
    }

    /// The network's delivery epoch in seconds (0: edges choose; a genesis
    /// from before the parameter).
    pub fn epoch_secs(&self) -> u64 {
        let n = self.running.node.lock().unwrap_or_else(|p| p.into_inner());
        n.state().params.epoch_secs
    }

    /// Queues a slash of `offender` for a fabricated delivery claim (whose
    /// envelope hashes to `claim`), unless the chain already took it.
    pub fn slash_delivery(&self, offender: [u8; 32], claim: [u8; 32], epoch: u64, reason: &str) {
        let key = format!(
            "slash-delivery/{}/{}",
            hex::encode(offender),
            hex::encode(claim)
        );
        let done = {
            let n = self.running.node.lock().unwrap_or_else(|p| p.into_inner());
            n.state().settled.contains(&key)
        };
        if !done {
            self.submit(vec![Action::Slash {
                offender,
                evidence: Evidence::Delivery {
                    claim,
                    epoch,
                    reason: bounded_reason(reason),
                },
            }]);
        }
    }

    /// Queues a slash of `offender` for failed storage audits (`audit`:
    /// the hash of the envelope the verdict rests on).
    pub fn slash_storage(&self, offender: [u8; 32], audit: [u8; 32], reason: &str) {
        self.submit(vec![Action::Slash {
            offender,
            evidence: Evidence::Storage {
                audit,
                reason: bounded_reason(reason),
            },
        }]);
    }

    /// The latest committed block's height and hash (audits draw from it).
    pub fn latest_block(&self) -> Option<(u64, [u8; 32])> {
        let n = self.running.node.lock().unwrap_or_else(|p| p.into_inner());
        let height = n.height();
        let block = n.block(height).ok().flatten()?;
        Some((height, block.block.hash()))
    }

    /// Queues a slash of `offender` for a false transcode: its signed
    /// commitment (`envelope`, wire form), the challenge's nonce and the
    /// failed segment's index, which the chain re-checks.
    pub fn slash_transcode(
        &self,
        offender: [u8; 32],
        envelope: &[u8],
        nonce: [u8; 32],
        index: u32,
        reason: &str,
    ) {
        self.submit(vec![Action::Slash {
            offender,
            evidence: Evidence::Transcode {
                commitment: hex::encode(envelope),
                nonce,
                index,
                reason: bounded_reason(reason),
            },
        }]);
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
