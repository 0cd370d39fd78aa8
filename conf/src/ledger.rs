//! `meshcast ledger` node configuration: one validator's key, genesis,
//! storage and addresses (`meshcast ledger init` writes these).

use crate::error::ConfError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    pub ledger: LedgerSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// The chain's genesis file (shared by every validator).
    pub genesis: PathBuf,
    /// This validator's Ed25519 key (mode 0600).
    pub key: PathBuf,
    /// Where the ledger's redb file and consensus state live.
    pub data_dir: PathBuf,
    /// HTTP/JSON API: transactions, balances, blocks, status.
    pub api: SocketAddr,
    /// Consensus traffic with the other validators.
    pub p2p: SocketAddr,
    /// Other validators' `p2p` addresses.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Other validators' `api` addresses: client transactions are passed
    /// on to them so the next proposer has them.
    #[serde(default)]
    pub peer_apis: Vec<SocketAddr>,
    /// With no transactions waiting, a proposer waits this long for one
    /// before proposing an empty block (the chain's heartbeat).
    #[serde(default = "default_empty_block_interval_ms")]
    pub empty_block_interval_ms: u64,
    /// Most transactions in one block.
    #[serde(default = "default_max_block_txs")]
    pub max_block_txs: usize,
    /// How long validators wait for a proposal before voting nil; also
    /// what a round with a missing proposer costs.
    #[serde(default = "default_timeout_propose_ms")]
    pub timeout_propose_ms: u64,
}

fn default_empty_block_interval_ms() -> u64 {
    500
}

fn default_max_block_txs() -> usize {
    10_000
}

fn default_timeout_propose_ms() -> u64 {
    1_500
}

impl LedgerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfError> {
        crate::load::load(path, Self::validate)
    }

    pub fn parse(path: &Path, src: &str) -> Result<Self, ConfError> {
        crate::load::parse(path, src, Self::validate)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let l = &self.ledger;
        if l.api == l.p2p {
            return Err((
                "ledger.p2p".into(),
                "api and p2p need different addresses".into(),
            ));
        }
        if l.max_block_txs == 0 {
            return Err(("ledger.max_block_txs".into(), "must be at least 1".into()));
        }
        if l.timeout_propose_ms < 2 * l.empty_block_interval_ms {
            return Err((
                "ledger.timeout_propose_ms".into(),
                "must be at least twice empty_block_interval_ms, or validators give up on a proposer that is only waiting for transactions".into(),
            ));
        }
        if let Some(i) = l.peers.iter().position(|p| *p == l.p2p) {
            return Err((
                format!("ledger.peers[{i}]"),
                "a validator is not its own peer".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_locates_errors() {
        let ok = "[ledger]\ngenesis = \"../genesis.json\"\nkey = \"validator.key\"\ndata_dir = \"data\"\napi = \"127.0.0.1:26650\"\np2p = \"127.0.0.1:26651\"\npeers = [\"127.0.0.1:26661\"]\n";
        let c = LedgerConfig::parse(Path::new("ledger.toml"), ok).unwrap();
        assert_eq!(c.ledger.peers.len(), 1);
        let bad = ok.replace("26661", "26651");
        let e = LedgerConfig::parse(Path::new("ledger.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ledger.peers[0]") && e.starts_with("ledger.toml:7:"),
            "{e}"
        );
    }
}
