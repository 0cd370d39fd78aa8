//! The state machine: `check` a transaction against the state (what a
//! mempool does before a block), `apply_block` (what every validator does
//! with a decided block). Both are pure; all arithmetic is checked, so a
//! balance can never go negative or wrap.

use crate::hash::app_hash;
use crate::tx::{Action, Block, Evidence, Tx, Work};
use crate::{hex32, Address};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unbonding {
    pub amount: u64,
    pub release_height: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub balance: u64,
    /// Next nonce this account must use.
    pub nonce: u64,
    pub escrow: u64,
    pub stake: u64,
    pub unbonding: Vec<Unbonding>,
}

impl Account {
    /// Everything the account holds, in any form.
    pub fn holdings(&self) -> u128 {
        self.balance as u128
            + self.escrow as u128
            + self.stake as u128
            + self
                .unbonding
                .iter()
                .map(|u| u.amount as u128)
                .sum::<u128>()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// µMESH per GB (10⁹ bytes) delivered.
    pub delivery_price_per_gb: u64,
    /// µMESH per GB-hour stored.
    pub storage_price_per_gb_hour: u64,
    /// µMESH per second of video transcoded.
    pub transcode_price_per_second: u64,
    /// Blocks between an unbond and the balance getting it back.
    pub unbond_delay: u64,
    /// Share of stake burned per slash, in basis points.
    pub slash_bps: u32,
    /// Stake (µMESH) a node must keep bonded to be admitted for a role
    /// ("edge", "storage", "transcode"); a role not listed needs none.
    /// HUBs read it from their chain: unbonding or a slash below it takes
    /// the node out of steering and settlement.
    #[serde(default)]
    pub min_stake: BTreeMap<String, u64>,
    /// Length of a delivery epoch in seconds: edges claim once per epoch,
    /// and settlement numbers epochs by it (epoch n is the absolute window
    /// [n·len, (n+1)·len)). 0 (a genesis from before it existed): each
    /// edge's own `[node] epoch`.
    #[serde(default)]
    pub epoch_secs: u64,
}

/// Stake an edge needs on a network whose genesis does not say (µMESH).
pub const DEFAULT_MIN_EDGE_STAKE: u64 = 10_000_000;
/// Stake a transcoding worker needs on a new network (µMESH): enough that
/// a 5 % slash outweighs what a cheater could take before its first audit
/// (one chunk's pay).
pub const DEFAULT_MIN_TRANSCODE_STAKE: u64 = 10_000_000;
/// Stake a storage node needs on a new network (µMESH): a failed audit's
/// slash must outweigh the storage fees of the shards it dropped.
pub const DEFAULT_MIN_STORAGE_STAKE: u64 = 10_000_000;

impl Default for Params {
    /// The one definition of a new network's economics: what `meshcast
    /// ledger init` writes and what a HUB's own chain starts with.
    fn default() -> Params {
        Params {
            delivery_price_per_gb: 1_000_000,
            storage_price_per_gb_hour: 10_000,
            transcode_price_per_second: 1_000,
            unbond_delay: 100,
            slash_bps: 500,
            min_stake: [
                ("edge".to_string(), DEFAULT_MIN_EDGE_STAKE),
                ("transcode".to_string(), DEFAULT_MIN_TRANSCODE_STAKE),
                ("storage".to_string(), DEFAULT_MIN_STORAGE_STAKE),
            ]
            .into(),
            epoch_secs: 60,
        }
    }
}

impl Params {
    /// What a node with `roles` must keep bonded: the most any role needs.
    pub fn stake_needed<S: AsRef<str>>(&self, roles: &[S]) -> u64 {
        roles
            .iter()
            .filter_map(|r| self.min_stake.get(r.as_ref()))
            .copied()
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisAccount {
    #[serde(with = "hex32")]
    pub address: Address,
    pub balance: u64,
    #[serde(default)]
    pub stake: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    pub chain_id: String,
    pub params: Params,
    pub accounts: Vec<GenesisAccount>,
    /// Keys allowed to send `Reward` (the HUBs).
    #[serde(default)]
    pub authorities: Vec<String>,
    /// The validator set consensus starts with.
    #[serde(default)]
    pub validators: Vec<GenesisValidator>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisValidator {
    #[serde(with = "hex32")]
    pub address: Address,
    pub power: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub chain_id: String,
    pub params: Params,
    pub authorities: BTreeSet<Address>,
    pub accounts: BTreeMap<Address, Account>,
    /// Rewards paid and evidence used, so neither counts twice.
    pub settled: BTreeSet<String>,
    /// What per-GB rewards from a payer to a node left below one µMESH, in
    /// 10⁻⁹ µMESH, keyed (payer, node); the next reward between the two
    /// pays it, so many small rewards add up to what one large one pays.
    pub carries: BTreeMap<(Address, Address), u64>,
    /// Last applied block height (0 = genesis).
    pub height: u64,
    /// Sum of every account's holdings; changes only at genesis and by slashing.
    pub supply: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TxError {
    #[error("signature does not verify for {0}")]
    BadSignature(String),
    #[error("transaction is for chain {got:?}, this is {expected:?}")]
    WrongChain { expected: String, got: String },
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("nonce {got} is not the next one ({expected}): replayed or out of order")]
    BadNonce { expected: u64, got: u64 },
    #[error("amount must be more than 0")]
    ZeroAmount,
    #[error("{what}: {needed} needed, {available} available")]
    Insufficient {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("{0} is not an authority; only HUBs may pay rewards")]
    NotAuthority(String),
    #[error("{0} was already settled")]
    AlreadySettled(String),
    #[error("evidence does not hold: {0}")]
    BadEvidence(&'static str),
    #[error("amount overflows")]
    Overflow,
}

/// Copies of the accounts one transaction touches, and what else it adds.
#[derive(Default)]
struct Scratch {
    accounts: BTreeMap<Address, Account>,
    settled: Vec<String>,
    carries: BTreeMap<(Address, Address), u64>,
    burned: u128,
}

impl Scratch {
    fn get(&mut self, state: &State, a: &Address) -> Result<&mut Account, TxError> {
        if !self.accounts.contains_key(a) {
            let acct = state
                .accounts
                .get(a)
                .ok_or_else(|| TxError::UnknownAccount(short(a)))?;
            self.accounts.insert(*a, acct.clone());
        }
        Ok(self.accounts.get_mut(a).expect("inserted above"))
    }

    /// Whole µMESH for `units` at a per-GB price between `pair`, taking
    /// the pair's carry in and leaving the new one.
    fn pay_per_gb(
        &mut self,
        state: &State,
        pair: (Address, Address),
        units: u64,
        unit_price: u64,
    ) -> Result<u64, TxError> {
        let carry = self
            .carries
            .get(&pair)
            .or_else(|| state.carries.get(&pair))
            .copied()
            .unwrap_or(0);
        let (amount, left) = price_per_gb(units, unit_price, carry)?;
        self.carries.insert(pair, left);
        Ok(amount)
    }

    fn get_or_new(&mut self, state: &State, a: &Address) -> &mut Account {
        self.accounts
            .entry(*a)
            .or_insert_with(|| state.accounts.get(a).cloned().unwrap_or_default())
    }
}

/// Outcome of one block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockResult {
    pub height: u64,
    #[serde(with = "hex32")]
    pub app_hash: [u8; 32],
    /// Per transaction: `None` applied, `Some(reason)` refused (no effect).
    pub results: Vec<Option<String>>,
    /// Accounts the block changed and references it settled (for storage).
    #[serde(skip)]
    pub changed: BTreeSet<Address>,
    #[serde(skip)]
    pub settled: Vec<String>,
    #[serde(skip)]
    pub carries: BTreeSet<(Address, Address)>,
}

fn short(a: &Address) -> String {
    hex::encode(a)
}

fn sub(what: &'static str, have: u64, take: u64) -> Result<u64, TxError> {
    have.checked_sub(take).ok_or(TxError::Insufficient {
        what,
        needed: take,
        available: have,
    })
}

fn add(a: u64, b: u64) -> Result<u64, TxError> {
    a.checked_add(b).ok_or(TxError::Overflow)
}

/// `units × price / per` in u128, refusing results beyond u64.
fn price(units: u64, price: u64, per: u128) -> Result<u64, TxError> {
    u64::try_from(units as u128 * price as u128 / per).map_err(|_| TxError::Overflow)
}

/// Prices are per GB (10⁹ bytes); carries are kept in 10⁻⁹ µMESH.
const PER_GB: u64 = 1_000_000_000;

/// `units × price_per_gb / 10⁹ + carry` in whole µMESH, and what is left
/// below one µMESH for the next reward.
fn price_per_gb(units: u64, price_per_gb: u64, carry: u64) -> Result<(u64, u64), TxError> {
    debug_assert!(carry < PER_GB, "a carry is less than one µMESH");
    let total = units as u128 * price_per_gb as u128 + carry as u128;
    let amount = u64::try_from(total / PER_GB as u128).map_err(|_| TxError::Overflow)?;
    Ok((amount, (total % PER_GB as u128) as u64))
}

impl State {
    pub fn from_genesis(g: &Genesis) -> Result<State, String> {
        let mut accounts = BTreeMap::new();
        let mut supply = 0u128;
        for a in &g.accounts {
            if accounts.contains_key(&a.address) {
                return Err(format!("account {} listed twice", short(&a.address)));
            }
            let acct = Account {
                balance: a.balance,
                stake: a.stake,
                ..Account::default()
            };
            supply += acct.holdings();
            accounts.insert(a.address, acct);
        }
        let mut authorities = BTreeSet::new();
        for k in &g.authorities {
            let mut a = [0u8; 32];
            hex::decode_to_slice(k, &mut a)
                .map_err(|_| format!("authority {k:?} is not 64 hex digits"))?;
            authorities.insert(a);
        }
        if g.params.epoch_secs > 86_400 {
            return Err("params.epoch_secs is at most 86400 (a day)".into());
        }
        if g.params.slash_bps > 10_000 {
            return Err("params.slash_bps is at most 10000 (100 %)".into());
        }
        Ok(State {
            chain_id: g.chain_id.clone(),
            params: g.params.clone(),
            authorities,
            accounts,
            settled: BTreeSet::new(),
            carries: BTreeMap::new(),
            height: 0,
            supply,
        })
    }

    pub fn account(&self, a: &Address) -> Option<&Account> {
        self.accounts.get(a)
    }

    /// Stateless checks and those against the current state, without
    /// changing it: what a node runs before taking a transaction.
    pub fn check(&self, tx: &Tx) -> Result<(), TxError> {
        self.prepare(tx, None, false).map(|_| ())
    }

    /// `check` for a transaction queued behind `queued` others from the
    /// same sender: its nonce must be that far ahead; funds are checked
    /// against the state as it is (the block decides the rest).
    pub fn check_queued(&self, tx: &Tx, queued: u64) -> Result<(), TxError> {
        self.prepare(tx, Some(queued), false).map(|_| ())
    }

    /// `check_queued` for a transaction whose signature the caller has
    /// already verified (`Tx::verify_signature` on this very transaction).
    pub fn check_queued_signed(&self, tx: &Tx, queued: u64) -> Result<(), TxError> {
        self.prepare(tx, Some(queued), true).map(|_| ())
    }

    /// Everything `tx` would change, or why it cannot apply.
    fn prepare(
        &self,
        tx: &Tx,
        queued: Option<u64>,
        signature_verified: bool,
    ) -> Result<Scratch, TxError> {
        let b = &tx.body;
        if b.chain_id != self.chain_id {
            return Err(TxError::WrongChain {
                expected: self.chain_id.clone(),
                got: b.chain_id.clone(),
            });
        }
        if !signature_verified && !tx.verify_signature() {
            return Err(TxError::BadSignature(short(&b.from)));
        }
        let acct = self
            .accounts
            .get(&b.from)
            .ok_or_else(|| TxError::UnknownAccount(short(&b.from)))?;
        let expected = acct.nonce + queued.unwrap_or(0);
        if b.nonce != expected {
            return Err(TxError::BadNonce {
                expected,
                got: b.nonce,
            });
        }
        let mut scratch = Scratch::default();
        self.execute(tx, &mut scratch)?;
        Ok(scratch)
    }

    /// Works out the action's effect in `s` (copies of the accounts it
    /// touches); the state itself is untouched until `commit`.
    fn execute(&self, tx: &Tx, s: &mut Scratch) -> Result<(), TxError> {
        let from = tx.body.from;
        let height = self.height + 1;
        s.get(self, &from)?.nonce += 1;
        match &tx.body.action {
            Action::Transfer { to, amount } => {
                if *amount == 0 {
                    return Err(TxError::ZeroAmount);
                }
                let me = s.get(self, &from)?;
                me.balance = sub("balance", me.balance, *amount)?;
                let dest = s.get_or_new(self, to);
                dest.balance = add(dest.balance, *amount)?;
            }
            Action::Deposit { amount } | Action::Bond { amount } => {
                if *amount == 0 {
                    return Err(TxError::ZeroAmount);
                }
                let me = s.get(self, &from)?;
                me.balance = sub("balance", me.balance, *amount)?;
                if matches!(tx.body.action, Action::Deposit { .. }) {
                    me.escrow = add(me.escrow, *amount)?;
                } else {
                    me.stake = add(me.stake, *amount)?;
                }
            }
            Action::Unbond { amount } => {
                if *amount == 0 {
                    return Err(TxError::ZeroAmount);
                }
                let delay = self.params.unbond_delay;
                let me = s.get(self, &from)?;
                me.stake = sub("stake (unbond beyond stake)", me.stake, *amount)?;
                me.unbonding.push(Unbonding {
                    amount: *amount,
                    release_height: height + delay,
                });
            }
            Action::Reward {
                payer,
                node,
                work,
                reference,
            } => {
                if !self.authorities.contains(&from) {
                    return Err(TxError::NotAuthority(short(&from)));
                }
                let key = format!("reward/{reference}");
                if self.settled.contains(&key) {
                    return Err(TxError::AlreadySettled(reference.clone()));
                }
                let p = &self.params;
                let pair = (*payer, *node);
                let amount = match work {
                    Work::Delivery { bytes } => {
                        s.pay_per_gb(self, pair, *bytes, p.delivery_price_per_gb)?
                    }
                    Work::Storage { byte_hours } => {
                        s.pay_per_gb(self, pair, *byte_hours, p.storage_price_per_gb_hour)?
                    }
                    Work::Transcode { seconds } => {
                        price(*seconds, p.transcode_price_per_second, 1)?
                    }
                };
                let payer_acct = s.get(self, payer)?;
                payer_acct.escrow = sub("payer's escrow", payer_acct.escrow, amount)?;
                let node_acct = s.get_or_new(self, node);
                node_acct.balance = add(node_acct.balance, amount)?;
                s.settled.push(key);
            }
            Action::Slash { offender, evidence } => {
                let key = match evidence {
                    Evidence::DoubleSign { a, b } => {
                        if a.height != b.height || a.round != b.round {
                            return Err(TxError::BadEvidence(
                                "the votes are for different heights or rounds",
                            ));
                        }
                        if a.block == b.block {
                            return Err(TxError::BadEvidence("both votes are for the same block"));
                        }
                        if !a.verify(offender) || !b.verify(offender) {
                            return Err(TxError::BadEvidence(
                                "a vote is not signed by the offender",
                            ));
                        }
                        format!("slash/{}/{}/{}", short(offender), a.height, a.round)
                    }
                    Evidence::DoubleProposal { a, b } => {
                        if a.height != b.height || a.round != b.round {
                            return Err(TxError::BadEvidence(
                                "the proposals are for different heights or rounds",
                            ));
                        }
                        if (a.pol_round, a.data_hash) == (b.pol_round, b.data_hash) {
                            return Err(TxError::BadEvidence("both proposals are the same"));
                        }
                        if !a.verify(offender) || !b.verify(offender) {
                            return Err(TxError::BadEvidence(
                                "a proposal is not signed by the offender",
                            ));
                        }
                        format!(
                            "slash-proposal/{}/{}/{}",
                            short(offender),
                            a.height,
                            a.round
                        )
                    }
                    Evidence::Delivery { claim, reason, .. } => {
                        // The chain cannot re-run an audit (it does not hold
                        // the catalog): it takes an authority's word, as it
                        // does for rewards; the HUB publishes the node-signed
                        // claim whose hash this names, for anyone to re-check.
                        if !self.authorities.contains(&from) {
                            return Err(TxError::NotAuthority(short(&from)));
                        }
                        if reason.is_empty() || reason.len() > 512 {
                            return Err(TxError::BadEvidence(
                                "a delivery slash needs a reason of 1 to 512 bytes",
                            ));
                        }
                        format!("slash-delivery/{}/{}", short(offender), short(claim))
                    }
                    Evidence::Storage { audit, reason } => {
                        if !self.authorities.contains(&from) {
                            return Err(TxError::NotAuthority(short(&from)));
                        }
                        if reason.is_empty() || reason.len() > 512 {
                            return Err(TxError::BadEvidence(
                                "a storage slash needs a reason of 1 to 512 bytes",
                            ));
                        }
                        format!("slash-storage/{}/{}", short(offender), short(audit))
                    }
                    Evidence::Transcode {
                        commitment,
                        nonce,
                        index,
                        reason,
                    } => {
                        if !self.authorities.contains(&from) {
                            return Err(TxError::NotAuthority(short(&from)));
                        }
                        if reason.is_empty() || reason.len() > 512 {
                            return Err(TxError::BadEvidence(
                                "a transcode slash needs a reason of 1 to 512 bytes",
                            ));
                        }
                        let hash = check_transcode_evidence(offender, commitment, nonce, *index)?;
                        format!("slash-transcode/{}/{}", short(offender), short(&hash))
                    }
                };
                if self.settled.contains(&key) {
                    return Err(TxError::AlreadySettled(key));
                }
                let bps = self.params.slash_bps as u64;
                let o = s.get(self, offender)?;
                let burn = price(o.stake, bps, 10_000)?;
                o.stake -= burn;
                s.burned += burn as u128;
                s.settled.push(key);
            }
        }
        Ok(())
    }

    fn commit(&mut self, s: Scratch) {
        self.accounts.extend(s.accounts);
        self.settled.extend(s.settled);
        for (pair, carry) in s.carries {
            if carry == 0 {
                self.carries.remove(&pair);
            } else {
                self.carries.insert(pair, carry);
            }
        }
        self.supply -= s.burned;
    }

    /// Releases unbonded stake that has waited long enough.
    fn release(&mut self, height: u64, changed: &mut BTreeSet<Address>) {
        for (address, acct) in self.accounts.iter_mut() {
            if acct.unbonding.iter().any(|u| u.release_height <= height) {
                let (due, wait): (Vec<_>, Vec<_>) = acct
                    .unbonding
                    .drain(..)
                    .partition(|u| u.release_height <= height);
                acct.unbonding = wait;
                acct.balance += due.iter().map(|u| u.amount).sum::<u64>();
                changed.insert(*address);
            }
        }
    }

    /// Applies a decided block: a pure function of (state, block). A
    /// transaction that fails is recorded with its reason and has no
    /// effect; the block still applies.
    pub fn apply_block(&mut self, block: &Block) -> BlockResult {
        self.apply_block_with(block, |_| false)
    }

    /// `apply_block`, told which transactions' signatures are already
    /// verified (a signature's validity never changes, so the result is
    /// the same; only the work is saved).
    pub fn apply_block_with(
        &mut self,
        block: &Block,
        mut signature_verified: impl FnMut(&Tx) -> bool,
    ) -> BlockResult {
        assert_eq!(block.height, self.height + 1, "blocks apply in order");
        let mut changed = BTreeSet::new();
        let mut settled = Vec::new();
        let mut carries = BTreeSet::new();
        self.release(block.height, &mut changed);
        let mut results = Vec::with_capacity(block.txs.len());
        for tx in &block.txs {
            match self.prepare(tx, None, signature_verified(tx)) {
                Ok(scratch) => {
                    changed.extend(scratch.accounts.keys().copied());
                    settled.extend(scratch.settled.iter().cloned());
                    carries.extend(scratch.carries.keys().copied());
                    self.commit(scratch);
                    results.push(None);
                }
                Err(e) => results.push(Some(e.to_string())),
            }
        }
        self.height = block.height;
        debug_assert_eq!(self.total_holdings(), self.supply, "supply is conserved");
        BlockResult {
            height: self.height,
            app_hash: app_hash(self),
            results,
            changed,
            settled,
            carries,
        }
    }

    pub fn total_holdings(&self) -> u128 {
        self.accounts.values().map(Account::holdings).sum()
    }
}

/// The checks on transcode evidence the chain can make; the BLAKE3 of the
/// commitment envelope on success.
fn check_transcode_evidence(
    offender: &Address,
    commitment: &str,
    nonce: &[u8; 32],
    index: u32,
) -> Result<[u8; 32], TxError> {
    use meshcast_control::envelope::Envelope;
    use meshcast_control::transcoding::{self, Commitment};
    let bytes =
        hex::decode(commitment).map_err(|_| TxError::BadEvidence("the commitment is not hex"))?;
    let env = Envelope::decode(&bytes)
        .map_err(|_| TxError::BadEvidence("the commitment is not an envelope"))?;
    if env.domain != transcoding::COMMIT || env.sender != *offender {
        return Err(TxError::BadEvidence(
            "the commitment is not a transcode commitment by the offender",
        ));
    }
    env.verify_signature()
        .map_err(|_| TxError::BadEvidence("the commitment's signature does not verify"))?;
    let c: Commitment = serde_json::from_slice(&env.body)
        .map_err(|_| TxError::BadEvidence("the commitment's body does not parse"))?;
    if !c.is_consistent() {
        return Err(TxError::BadEvidence(
            "the commitment's root does not match its segments",
        ));
    }
    if !transcoding::challenge(&c.root, nonce, c.segments.len()).contains(&(index as usize)) {
        return Err(TxError::BadEvidence(
            "the challenge does not pick that segment",
        ));
    }
    Ok(blake3::hash(&bytes).into())
}
