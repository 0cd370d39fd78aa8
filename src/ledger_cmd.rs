//! `meshcast ledger`: `init` writes a genesis file and one home per
//! validator (key 0600, `ledger.toml` with loopback ports); `run` starts
//! one validator; `status`, `block`, `account` and `tx` talk to a running
//! validator's API.

use anyhow::{bail, Context};
use meshcast_control::identity::NodeKey;
use meshcast_ledger::state::{GenesisAccount, GenesisValidator};
use meshcast_ledger::{Genesis, Params};
use std::path::Path;

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
    let mut free = meshcast_ports::Ports::new();
    for k in 1..=validators {
        let home = dir.join(format!("node{k}"));
        std::fs::create_dir_all(&home)?;
        let key = NodeKey::generate()?;
        key.save(&home.join("validator.key"))?;
        keys.push(key.public().to_bytes());
        ports.push((free.take()?, free.take()?));
    }
    let genesis = Genesis {
        chain_id: chain_id.into(),
        params: Params::default(),
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
        let others = |pick: fn(&(u16, u16)) -> u16| -> String {
            ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("\"127.0.0.1:{}\"", pick(p)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = format!(
            "[ledger]\ngenesis = \"../genesis.json\"\nkey = \"validator.key\"\ndata_dir = \"data\"\napi = \"127.0.0.1:{api}\"\np2p = \"127.0.0.1:{p2p}\"\npeers = [{}]\npeer_apis = [{}]\n",
            others(|p| p.1),
            others(|p| p.0),
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

/// Which validator a command talks to: one run from a home
/// (`meshcast ledger run`), or any API by URL — a HUB serves its embedded
/// validator's API at its own address.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct At {
    /// A validator home (its ledger.toml names the API address).
    #[arg(long)]
    pub home: Option<std::path::PathBuf>,
    /// A ledger API base URL, e.g. a HUB's http://hub.example:8090.
    #[arg(long)]
    pub api: Option<String>,
}

impl At {
    fn base(&self) -> anyhow::Result<String> {
        match (&self.home, &self.api) {
            (_, Some(url)) => Ok(url.trim_end_matches('/').to_string()),
            (Some(home), None) => {
                let cfg = meshcast_conf::LedgerConfig::load(&home.join("ledger.toml"))?;
                Ok(format!("http://{}", cfg.ledger.api))
            }
            (None, None) => bail!("say which validator: --home DIR or --api URL"),
        }
    }

    fn hint(&self) -> String {
        match &self.home {
            Some(h) => format!(
                "; start it with `meshcast ledger run --home {}`",
                h.display()
            ),
            None => String::new(),
        }
    }
}

async fn get_json(at: &At, path: &str) -> anyhow::Result<serde_json::Value> {
    let base = at.base()?;
    let resp = reqwest::get(format!("{base}{path}"))
        .await
        .with_context(|| format!("no validator answers at {base}{}", at.hint()))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .context("the ledger API answered garbage")?;
    if !status.is_success() {
        bail!(
            "{}",
            body.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("request failed")
        );
    }
    Ok(body)
}

/// `meshcast ledger status --home DIR | --api URL`: that validator's height and app hash.
pub async fn status(at: &At) -> anyhow::Result<()> {
    let s = get_json(at, "/v1/ledger/status").await?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

/// `meshcast ledger block N --home DIR | --api URL`: block N with its app hash.
pub async fn block(at: &At, height: u64) -> anyhow::Result<()> {
    let mut b = get_json(at, &format!("/v1/ledger/blocks/{height}")).await?;
    if let Some(h) = b.pointer("/result/app_hash").cloned() {
        b["app_hash"] = h;
        b["height"] = serde_json::json!(height);
    }
    println!("{}", serde_json::to_string_pretty(&b)?);
    Ok(())
}

/// `meshcast ledger account ADDRESS --home DIR | --api URL`.
pub async fn account(at: &At, address: &str) -> anyhow::Result<()> {
    let a = get_json(at, &format!("/v1/ledger/accounts/{address}")).await?;
    println!("{}", serde_json::to_string_pretty(&a)?);
    Ok(())
}

fn address(text: &str, what: &str) -> anyhow::Result<meshcast_ledger::Address> {
    let mut a = [0u8; 32];
    hex::decode_to_slice(text, &mut a)
        .map_err(|_| anyhow::anyhow!("{what} must be 64 hex digits (an Ed25519 public key)"))?;
    Ok(a)
}

/// What `meshcast ledger tx` can send.
pub enum TxKind {
    Transfer {
        to: String,
        amount: u64,
    },
    Deposit {
        amount: u64,
    },
    Bond {
        amount: u64,
    },
    Unbond {
        amount: u64,
    },
    Slash {
        offender: String,
        evidence: std::path::PathBuf,
    },
}

/// `meshcast ledger tx --home DIR | --api URL --key KEY ...`: signs with KEY (nonce and
/// chain id from the validator), submits, and with `wait` prints the
/// outcome once a block holds it.
pub async fn tx(at: &At, key: &Path, kind: TxKind, wait: bool) -> anyhow::Result<()> {
    use meshcast_ledger::tx::TxBody;
    use meshcast_ledger::Action;
    let key = NodeKey::load(key)?;
    let signing = ed25519_dalek::SigningKey::from_bytes(&key.seed());
    let from = key.public().to_bytes();
    let action = match kind {
        TxKind::Transfer { to, amount } => Action::Transfer {
            to: address(&to, "--to")?,
            amount,
        },
        TxKind::Deposit { amount } => Action::Deposit { amount },
        TxKind::Bond { amount } => Action::Bond { amount },
        TxKind::Unbond { amount } => Action::Unbond { amount },
        TxKind::Slash { offender, evidence } => Action::Slash {
            offender: address(&offender, "--offender")?,
            evidence: serde_json::from_slice(
                &std::fs::read(&evidence)
                    .with_context(|| format!("reading {}", evidence.display()))?,
            )
            .with_context(|| format!("{} is not evidence JSON", evidence.display()))?,
        },
    };
    let status = get_json(at, "/v1/ledger/status").await?;
    let chain_id = status["chain_id"].as_str().unwrap_or_default().to_string();
    let nonce = match get_json(at, &format!("/v1/ledger/accounts/{}", hex::encode(from))).await {
        // Counts this sender's transactions still waiting for a block.
        Ok(a) => a["next_nonce"].as_u64().unwrap_or(0),
        Err(e) => bail!("account {}: {e}", hex::encode(from)),
    };
    let tx = TxBody {
        chain_id,
        from,
        nonce,
        action,
    }
    .sign(&signing);
    let base = at.base()?;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/ledger/txs"))
        .json(&tx)
        .send()
        .await
        .with_context(|| format!("no validator answers at {base}"))?;
    let ok = resp.status().is_success();
    let body: serde_json::Value = resp.json().await?;
    if !ok {
        bail!(
            "refused: {}",
            body.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown reason")
        );
    }
    let hash = body["hash"].as_str().unwrap_or_default().to_string();
    if !wait {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(c) = get_json(at, &format!("/v1/ledger/txs/{hash}")).await {
            println!("{}", serde_json::to_string_pretty(&c)?);
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{hash} was accepted but is not in a block after 30 s; is the chain committing? (`meshcast ledger status`)");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
