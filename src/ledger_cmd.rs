//! `meshcast ledger init`: a genesis file and one home per validator (key
//! 0600, `ledger.toml` with loopback ports), ready for `meshcast ledger run`
//! once consensus lands (issue 7).

use anyhow::{bail, Context};
use meshcast_control::identity::NodeKey;
use meshcast_ledger::state::{GenesisAccount, GenesisValidator};
use meshcast_ledger::{Genesis, Params};
use std::path::Path;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn init(validators: usize, dir: &Path, chain_id: &str) -> anyhow::Result<()> {
    if validators == 0 || validators > 100 {
        bail!("--validators must be 1 to 100");
    }
    let genesis_path = dir.join("genesis.json");
    if genesis_path.exists() {
        bail!("{} exists; choose an empty --dir", genesis_path.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut keys = Vec::new();
    let mut ports = Vec::new();
    for k in 1..=validators {
        let home = dir.join(format!("node{k}"));
        std::fs::create_dir_all(&home)?;
        let key = NodeKey::generate()?;
        key.save(&home.join("validator.key"))?;
        keys.push(key.public().to_bytes());
        ports.push((free_port()?, free_port()?));
    }
    let genesis = Genesis {
        chain_id: chain_id.into(),
        params: Params {
            delivery_price_per_gb: 1_000_000,
            storage_price_per_gb_hour: 10_000,
            transcode_price_per_second: 1_000,
            unbond_delay: 100,
            slash_bps: 500,
        },
        accounts: keys
            .iter()
            .map(|k| GenesisAccount {
                address: *k,
                balance: 1_000_000_000,
                stake: 100_000_000,
            })
            .collect(),
        authorities: keys.iter().map(hex::encode).collect(),
        validators: keys
            .iter()
            .map(|k| GenesisValidator {
                address: *k,
                power: 1,
            })
            .collect(),
    };
    meshcast_ledger::State::from_genesis(&genesis).map_err(anyhow::Error::msg)?;
    std::fs::write(&genesis_path, serde_json::to_vec_pretty(&genesis)?)?;
    for (i, (api, p2p)) in ports.iter().enumerate() {
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, p))| format!("\"127.0.0.1:{p}\""))
            .collect();
        let text = format!(
            "[ledger]\ngenesis = \"../genesis.json\"\nkey = \"validator.key\"\ndata_dir = \"data\"\napi = \"127.0.0.1:{api}\"\np2p = \"127.0.0.1:{p2p}\"\npeers = [{}]\n",
            peers.join(", ")
        );
        let path = dir.join(format!("node{}", i + 1)).join("ledger.toml");
        std::fs::write(&path, text)?;
        meshcast_conf::LedgerConfig::load(&path)?;
    }
    println!(
        "wrote {} and {validators} validator home(s) node1..node{validators} (keys mode 0600); chain {chain_id}",
        genesis_path.display()
    );
    Ok(())
}
