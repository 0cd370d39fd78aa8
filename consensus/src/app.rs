//! The application half of a validator: answers Malachite's requests from
//! the ledger node — builds blocks from the mempool when it is this
//! validator's turn, reassembles and checks other proposers' blocks,
//! commits decided blocks with their certificates, and serves decided
//! blocks to validators that are catching up.

use crate::codec::{decode_block, decode_certificate, encode_block, encode_certificate};
use crate::context::{
    Address, BlockHash, BlockValue, Height, LedgerContext, ProposalInit, Signer, ValidatorSet,
};
use crate::metrics::Metrics;
use crate::proposed::ProposalLog;
use crate::streams::{check_block, stream_proposal, Equivocations, Streams};
use malachitebft_app_channel::app::engine::host::Next;
use malachitebft_app_channel::app::types::core::{Context as _, Height as _, Round, Validity};
use malachitebft_app_channel::app::types::sync::RawDecidedValue;
use malachitebft_app_channel::app::types::{LocallyProposedValue, ProposedValue};
use malachitebft_app_channel::{AppMsg, Channels, NetworkMsg};
use meshcast_ledger::api::Shared;
use meshcast_ledger::Block;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, error, info, warn};

/// How a validator paces and sizes blocks.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Most transactions in one block.
    pub max_block_txs: usize,
    /// With an empty mempool, how long a proposer waits for a transaction
    /// before proposing an empty block (the chain's heartbeat).
    pub empty_block_interval: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            max_block_txs: 10_000,
            empty_block_interval: Duration::from_millis(500),
        }
    }
}

pub struct App {
    pub node: Shared,
    pub signer: Arc<Signer>,
    pub validators: ValidatorSet,
    pub pacing: Pacing,
    pub metrics: Metrics,
    streams: Streams,
    equivocations: Equivocations,
    /// Values seen (proposed by us, streamed or synced) for heights not yet
    /// committed, by height and round.
    undecided: BTreeMap<(u64, i64), Vec<ProposedValue<LedgerContext>>>,
    /// What we proposed at a height and round, so asking again (even
    /// after a restart) gives the same block.
    proposed: ProposalLog,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn send<T>(reply: tokio::sync::oneshot::Sender<T>, value: T, what: &str) {
    if reply.send(value).is_err() {
        warn!(what, "consensus dropped the reply channel");
    }
}

impl App {
    pub fn new(
        node: Shared,
        signer: Arc<Signer>,
        validators: ValidatorSet,
        pacing: Pacing,
        metrics: Metrics,
        proposed: ProposalLog,
    ) -> App {
        App {
            node,
            signer,
            validators,
            pacing,
            metrics,
            streams: Streams::default(),
            equivocations: Equivocations::default(),
            undecided: BTreeMap::new(),
            proposed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, meshcast_ledger::node::LedgerNode> {
        self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn committed_height(&self) -> u64 {
        self.lock().height()
    }

    /// Runs until consensus stops.
    pub async fn run(mut self, mut channels: Channels<LedgerContext>) -> eyre::Result<()> {
        while let Some(msg) = channels.consensus.recv().await {
            self.handle(msg, &channels).await?;
        }
        Err(eyre::eyre!("consensus stopped"))
    }

    async fn handle(
        &mut self,
        msg: AppMsg<LedgerContext>,
        channels: &Channels<LedgerContext>,
    ) -> eyre::Result<()> {
        match msg {
            AppMsg::ConsensusReady { reply } => {
                let start = Height(self.committed_height() + 1);
                info!(%start, validators = self.validators.validators().len(), "consensus ready");
                send(reply, (start, self.validators.clone()), "ConsensusReady");
            }
            AppMsg::StartedRound {
                height,
                round,
                proposer,
                role,
                reply_value,
            } => {
                debug!(%height, %round, %proposer, ?role, "round started");
                self.metrics.round.set(round.as_i64());
                let seen = self.recheck(height, round);
                send(reply_value, seen, "StartedRound");
            }
            AppMsg::GetValue {
                height,
                round,
                timeout,
                reply,
            } => {
                let value = self.build(height, round, timeout).await;
                send(
                    reply,
                    LocallyProposedValue::new(height, round, value.clone()),
                    "GetValue",
                );
                self.publish(height, round, Round::Nil, &value, channels)
                    .await?;
            }
            AppMsg::ExtendVote { reply, .. } => send(reply, None, "ExtendVote"),
            AppMsg::VerifyVoteExtension { reply, .. } => send(reply, Ok(()), "VerifyVoteExtension"),
            AppMsg::RestreamProposal {
                height,
                round,
                valid_round,
                address,
                value_id,
            } => {
                if address != self.signer.address() {
                    warn!(%height, %round, %address, "asked to restream another validator's proposal");
                    return Ok(());
                }
                match self.find(height, value_id) {
                    Some(value) => {
                        self.publish(height, round, valid_round, &value, channels)
                            .await?
                    }
                    None => warn!(%height, %round, %value_id, "no such proposal to restream"),
                }
            }
            AppMsg::GetHistoryMinHeight { reply } => send(reply, Height(1), "GetHistoryMinHeight"),
            AppMsg::ReceivedProposalPart { from, part, reply } => {
                let out = self.received_part(from, part);
                send(reply, out, "ReceivedProposalPart");
            }
            AppMsg::GetValidatorSet { reply, .. } => {
                send(reply, Some(self.validators.clone()), "GetValidatorSet")
            }
            AppMsg::Decided {
                certificate, reply, ..
            } => {
                let height = certificate.height;
                let next = match self.commit(&certificate) {
                    Ok(()) => Next::Start(height.increment(), self.validators.clone()),
                    Err(e) => {
                        error!(%height, error = %e, "could not commit the decided block; restarting the height");
                        Next::Restart(height, self.validators.clone())
                    }
                };
                send(reply, next, "Decided");
            }
            AppMsg::GetDecidedValue { height, reply } => {
                let value = self.decided(height);
                send(reply, value, "GetDecidedValue");
            }
            AppMsg::ProcessSyncedValue {
                height,
                round,
                proposer,
                value_bytes,
                reply,
            } => {
                let out = match decode_block(&value_bytes) {
                    Ok(value) => {
                        let validity = self.validity(&value, height, proposer);
                        let pv = ProposedValue {
                            height,
                            round,
                            valid_round: Round::Nil,
                            proposer,
                            value,
                            validity,
                        };
                        self.remember(pv.clone());
                        Some(pv)
                    }
                    Err(e) => {
                        warn!(%height, error = %e, "synced value does not decode");
                        None
                    }
                };
                send(reply, out, "ProcessSyncedValue");
            }
        }
        Ok(())
    }

    /// Structural validity of a block at `height` by `proposer`.
    fn validity(&self, value: &BlockValue, height: Height, proposer: Address) -> Validity {
        let (committed, prev_time) = {
            let n = self.lock();
            (n.height(), Some(n.last_block_time()))
        };
        // The previous block's time is known only for the next height;
        // later heights are checked again when they start.
        let prev = if height.0 == committed + 1 {
            prev_time
        } else {
            None
        };
        match check_block(
            value,
            height,
            proposer,
            prev,
            now_ms(),
            self.pacing.max_block_txs,
        ) {
            Ok(()) => Validity::Valid,
            Err(reason) => {
                warn!(%height, %proposer, %reason, "invalid block proposed");
                Validity::Invalid
            }
        }
    }

    /// Values already seen for this round, checked now that the previous
    /// block is known.
    fn recheck(&mut self, height: Height, round: Round) -> Vec<ProposedValue<LedgerContext>> {
        let key = (height.0, round.as_i64());
        let Some(values) = self.undecided.get(&key).cloned() else {
            return Vec::new();
        };
        let checked: Vec<_> = values
            .into_iter()
            .map(|mut pv| {
                if pv.validity.is_valid() {
                    pv.validity = self.validity(&pv.value, pv.height, pv.proposer);
                }
                pv
            })
            .collect();
        self.undecided.insert(key, checked.clone());
        checked
    }

    fn remember(&mut self, pv: ProposedValue<LedgerContext>) {
        let entry = self
            .undecided
            .entry((pv.height.0, pv.round.as_i64()))
            .or_default();
        if !entry
            .iter()
            .any(|v| v.value.id == pv.value.id && v.proposer == pv.proposer)
        {
            entry.push(pv);
        }
    }

    fn find(&self, height: Height, id: BlockHash) -> Option<BlockValue> {
        self.undecided
            .range((height.0, i64::MIN)..=(height.0, i64::MAX))
            .flat_map(|(_, vs)| vs.iter())
            .find(|pv| pv.value.id == id)
            .map(|pv| pv.value.clone())
    }

    async fn build(&mut self, height: Height, round: Round, timeout: Duration) -> BlockValue {
        if let Some(v) = self.proposed.get(height.0, round.as_i64()) {
            info!(%height, %round, block = %v.id, "proposing the block already proposed in this round");
            self.remember_own(height, round, &v);
            return v;
        }
        // Wait for work, but never past half the proposer's time budget.
        let wait = self.pacing.empty_block_interval.min(timeout / 2);
        let deadline = Instant::now() + wait;
        while self.lock().mempool_len() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let block = {
            let n = self.lock();
            let prev = n.last_block_time();
            Block {
                height: height.0,
                time_ms: now_ms().max(prev + 1),
                proposer: self.signer.address().0,
                txs: n.propose(self.pacing.max_block_txs),
            }
        };
        let value = BlockValue::new(block);
        info!(%height, %round, block = %value.id, txs = value.block.txs.len(), "proposing");
        if let Err(e) = self.proposed.put(height.0, round.as_i64(), &value) {
            // Proposing what could not be recorded risks a different block
            // after a restart; the empty-handed round costs one timeout.
            error!(%height, %round, error = %e, "could not record the proposal");
        }
        self.remember_own(height, round, &value);
        value
    }

    fn remember_own(&mut self, height: Height, round: Round, value: &BlockValue) {
        self.remember(ProposedValue {
            height,
            round,
            valid_round: Round::Nil,
            proposer: self.signer.address(),
            value: value.clone(),
            validity: Validity::Valid,
        });
    }

    async fn publish(
        &self,
        height: Height,
        round: Round,
        pol_round: Round,
        value: &BlockValue,
        channels: &Channels<LedgerContext>,
    ) -> eyre::Result<()> {
        let init = ProposalInit {
            height,
            round,
            pol_round,
            proposer: self.signer.address(),
        };
        let bytes = encode_block(&value.block);
        for msg in stream_proposal(&self.signer, init, &bytes) {
            channels
                .network
                .send(NetworkMsg::PublishProposalPart(msg))
                .await?;
        }
        Ok(())
    }

    fn received_part(
        &mut self,
        from: malachitebft_app_channel::app::types::PeerId,
        part: malachitebft_app_channel::app::streaming::StreamMessage<crate::context::ProposalPart>,
    ) -> Option<ProposedValue<LedgerContext>> {
        let received = match self.streams.insert(from, part, &self.validators) {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(reason) => {
                warn!(%from, %reason, "dropped a proposal stream");
                self.metrics.bad_proposals.inc();
                return None;
            }
        };
        if let Some((offender, evidence)) = self.equivocations.observe(&received) {
            self.report(offender, evidence);
        }
        let init = received.init;
        let committed = self.committed_height();
        if init.height.0 <= committed {
            debug!(height = %init.height, "proposal for a committed height");
            return None;
        }
        let expected = LedgerContext
            .select_proposer(&self.validators, init.height, init.round)
            .address;
        let validity = if expected != init.proposer {
            warn!(height = %init.height, round = %init.round, proposer = %init.proposer, "proposal from a validator whose turn it is not");
            Validity::Invalid
        } else {
            self.validity(&received.value, init.height, init.proposer)
        };
        let pv = ProposedValue {
            height: init.height,
            round: init.round,
            valid_round: init.pol_round,
            proposer: init.proposer,
            value: received.value,
            validity,
        };
        self.remember(pv.clone());
        // A proposal for a later height waits for its round to start.
        (init.height.0 == committed + 1).then_some(pv)
    }

    /// Submits a slash for `offender` signed with this validator's key; it
    /// goes into a block like any transaction (whoever reports first is
    /// the one that applies; the same evidence is refused after that).
    fn report(&mut self, offender: Address, evidence: meshcast_ledger::Evidence) {
        warn!(%offender, "a validator signed two different proposals for one round; reporting it for slashing");
        self.metrics.equivocations.inc();
        let key = self.signer.ledger_key();
        let me = key.verifying_key().to_bytes();
        let mut n = self.lock();
        let tx = meshcast_ledger::tx::TxBody {
            chain_id: n.chain_id().to_string(),
            from: me,
            nonce: n.next_nonce(&me),
            action: meshcast_ledger::Action::Slash {
                offender: offender.0,
                evidence,
            },
        }
        .sign(&key);
        if let Err(e) = n.submit(tx) {
            warn!(%offender, error = %e, "the slash was not queued");
        }
    }

    fn commit(
        &mut self,
        certificate: &malachitebft_app_channel::app::types::core::CommitCertificate<LedgerContext>,
    ) -> Result<(), String> {
        let height = certificate.height;
        let value = self
            .find(height, certificate.value_id)
            .ok_or_else(|| format!("decided block {} was never seen", certificate.value_id))?;
        let started = Instant::now();
        let result = {
            let mut n = self.lock();
            if n.height() + 1 != height.0 {
                return Err(format!(
                    "decided height {height} but the ledger is at {}",
                    n.height()
                ));
            }
            n.commit(&value.block, &encode_certificate(certificate))
                .map_err(|e| e.to_string())?
        };
        let refused = result.results.iter().filter(|r| r.is_some()).count();
        self.metrics.height.set(height.0 as i64);
        self.metrics
            .txs_committed
            .inc_by(value.block.txs.len() as u64);
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        info!(
            %height,
            round = %certificate.round,
            block = %value.id,
            txs = value.block.txs.len(),
            refused,
            app_hash = %hex::encode(result.app_hash),
            "committed"
        );
        self.undecided = self.undecided.split_off(&(height.0 + 1, i64::MIN));
        self.proposed.prune(height.0);
        self.equivocations.prune(height.0);
        Ok(())
    }

    fn decided(&self, height: Height) -> Option<RawDecidedValue<LedgerContext>> {
        let n = self.lock();
        let block = n.block(height.0).ok().flatten()?;
        let cert = n.certificate(height.0).ok().flatten()?;
        match decode_certificate(&cert) {
            Ok(certificate) => Some(RawDecidedValue::new(
                encode_block(&block.block),
                certificate,
            )),
            Err(e) => {
                error!(%height, error = %e, "stored certificate does not decode");
                None
            }
        }
    }
}
