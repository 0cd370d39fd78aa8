//! A validator's `/metrics`: the ledger's own series, followed by the
//! consensus engine's (Malachite keeps its own registry).

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub height: IntGauge,
    pub round: IntGauge,
    pub mempool: IntGauge,
    pub txs_committed: IntCounter,
    pub bad_proposals: IntCounter,
    pub equivocations: IntCounter,
    pub commit_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let height = IntGauge::new("ledger_height", "Height of the last committed block")
            .expect("valid metric");
        let round =
            IntGauge::new("ledger_round", "Consensus round in progress").expect("valid metric");
        let mempool = IntGauge::new("ledger_mempool_txs", "Transactions waiting for a block")
            .expect("valid metric");
        let txs_committed = IntCounter::new(
            "ledger_txs_committed_total",
            "Transactions in committed blocks (applied or refused)",
        )
        .expect("valid metric");
        let bad_proposals = IntCounter::new(
            "ledger_bad_proposal_streams_total",
            "Proposal streams dropped: unsigned, malformed, or too large",
        )
        .expect("valid metric");
        let equivocations = IntCounter::new(
            "ledger_equivocations_reported_total",
            "Validators seen signing two proposals for one round, reported for slashing",
        )
        .expect("valid metric");
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ledger_commit_seconds",
                "Time to apply and store a decided block",
            )
            .buckets(vec![0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )
        .expect("valid metric");
        for c in [
            Box::new(height.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(round.clone()),
            Box::new(mempool.clone()),
            Box::new(txs_committed.clone()),
            Box::new(bad_proposals.clone()),
            Box::new(equivocations.clone()),
            Box::new(commit_seconds.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            height,
            round,
            mempool,
            txs_committed,
            bad_proposals,
            equivocations,
            commit_seconds,
        }
    }

    /// Prometheus text: ours, then the engine's.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        let mut text = String::from_utf8_lossy(&buf).into_owned();
        malachitebft_app_channel::app::metrics::export(&mut text);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
