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
