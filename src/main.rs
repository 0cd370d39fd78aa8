//! The `meshcast` binary: wiring only. Each subcommand hands its config to
//! the library crate that owns the work.

mod demo_origin;
mod keys;
mod ledger_cmd;
mod play;
mod up;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// glibc malloc showed up at ~11 % of an edge under small-object load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the calling thread's free pages back to the system (mimalloc keeps
/// them for reuse otherwise, long after a flood of connections is gone).
fn trim_memory() {
    // SAFETY: mi_collect only walks and releases the allocator's own free
    // pages; it is safe to call from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[derive(Parser)]
#[command(
    name = "meshcast",
    version,
    about = "Decentralized video delivery network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an edge: the caching HLS/DASH proxy that players talk to.
    Edge {
        /// The edge's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Validate the config and exit.
        #[arg(long)]
        check: bool,
    },
    /// Run a HUB: the upload API, transcoding, the catalog and the origin.
    Hub {
        /// The hub's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Validate the config and exit.
        #[arg(long)]
        check: bool,
    },
    /// Run a worker: transcodes chunks for its HUB (pulls jobs; opens no port).
    Worker {
        /// The worker's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Validate the config and exit.
        #[arg(long)]
        check: bool,
    },
    /// Bring up a hub, two edges and two transcode workers on this machine and publish a video.
    Up {
        /// Folder for data, configs and logs.
        #[arg(long, default_value = "meshcast-data")]
        dir: PathBuf,
        /// Upload this video instead of a generated demo.
        #[arg(long)]
        video: Option<PathBuf>,
        /// Write the URLs as JSON here once everything is playable.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Watch a stream like a player: master, rendition, every segment;
    /// check receipts and, with --ack, acknowledge them.
    Play {
        /// An HLS URL on an edge (/v/ID/master.m3u8 or /t/TOKEN/v/ID/…).
        url: String,
        /// Get a token for a fresh session key and acknowledge receipts.
        #[arg(long)]
        ack: bool,
        /// The hub's base URL (asked of the edge when not given).
        #[arg(long)]
        hub: Option<String>,
        /// Take each segment's duration, like a live player.
        #[arg(long)]
        realtime: bool,
        /// Fetch over a WebRTC data channel to a node the hub picks (needs a
        /// token: --ack or a /t/TOKEN/ URL); HTTP per request if it fails.
        #[arg(long)]
        webrtc: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign a playback token with your own key (for `signed` videos).
    Token {
        /// The owner key (`meshcast keys gen`); its public key must be the
        /// video's owner at the hub.
        #[arg(long)]
        key: PathBuf,
        /// Video id.
        #[arg(long)]
        video: String,
        /// The viewer's session public key, 64 hex digits.
        #[arg(long)]
        session: String,
        /// Seconds the token is valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Byte budget.
        #[arg(long, default_value_t = 10_000_000_000)]
        budget: u64,
    },
    /// The BFT-replicated ledger the HUBs run.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Key material: `meshcast keys cert --host NAME... --out DIR`.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Serve a directory over HTTP as a demo origin (ETag, Last-Modified, 304).
    DemoOrigin {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Write a genesis file and one home per validator.
    Init {
        #[arg(long, default_value_t = 1)]
        validators: usize,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "meshcast-local")]
        chain_id: String,
    },
    /// Run one validator (consensus, API, /metrics) from its home.
    Run {
        #[arg(long)]
        home: PathBuf,
    },
    /// The validator's height and app hash, as JSON.
    Status {
        #[command(flatten)]
        at: ledger_cmd::At,
    },
    /// Block N as JSON, with its app hash.
    Block {
        height: u64,
        #[command(flatten)]
        at: ledger_cmd::At,
    },
    /// An account's balance, escrow, stake and nonce, with a Merkle proof.
    Account {
        address: String,
        #[command(flatten)]
        at: ledger_cmd::At,
    },
    /// Sign a transaction with --key and submit it to a validator (--home or --api).
    Tx {
        #[command(flatten)]
        at: ledger_cmd::At,
        /// The sender's key file (mode 0600).
        #[arg(long)]
        key: PathBuf,
        /// Wait until a block holds it and print the outcome.
        #[arg(long)]
        wait: bool,
        #[command(subcommand)]
        action: TxCommand,
    },
}

#[derive(Subcommand)]
enum TxCommand {
    /// Balance → another account.
    Transfer {
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: u64,
    },
    /// Balance → escrow (pays for your content's delivery).
    Deposit {
        #[arg(long)]
        amount: u64,
    },
    /// Balance → stake.
    Bond {
        #[arg(long)]
        amount: u64,
    },
    /// Stake → balance after the unbond delay.
    Unbond {
        #[arg(long)]
        amount: u64,
    },
    /// Burn part of a validator's stake, with double-sign evidence (JSON).
    Slash {
        #[arg(long)]
        offender: String,
        #[arg(long)]
        evidence: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// A new Ed25519 node key (mode 0600); prints the node id.
    Gen {
        /// The key file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// A self-signed certificate for local TLS and HTTP/3.
    Cert {
        /// Host names or IP addresses the certificate covers.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Folder for cert.pem and key.pem.
        #[arg(long)]
        out: PathBuf,
    },
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshcast: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Edge { config, check } => {
            let parsed = meshcast_edge::server::check(&config)?;
            if check {
                println!("{}: OK ({} site(s))", config.display(), parsed.sites.len());
                return Ok(());
            }
            init_tracing(&parsed.log.level);
            meshcast_edge::tcp::set_memory_trim(trim_memory);
            meshcast_edge::server::run(config, parsed).context("edge failed to start")?;
            Ok(())
        }
        Command::Hub { config, check } => {
            let parsed = meshcast_conf::HubConfig::load(&config)?;
            if check {
                println!("{}: OK", config.display());
                return Ok(());
            }
            init_tracing(&parsed.log.level);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(meshcast_hub::serve(parsed))
                .context("hub stopped")?;
            Ok(())
        }
        Command::Worker { config, check } => {
            let parsed = meshcast_conf::WorkerConfig::load(&config)?;
            if check {
                println!("{}: OK", config.display());
                return Ok(());
            }
            init_tracing("info");
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(meshcast_worker::run(parsed))
                .context("worker stopped")?;
            Ok(())
        }
        Command::Up {
            dir,
            video,
            ready_file,
        } => {
            init_tracing("warn");
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(up::run(up::UpArgs {
                dir,
                video,
                ready_file,
            }))
        }
        Command::Keys {
            command: KeysCommand::Gen { out },
        } => {
            let key = meshcast_control::identity::NodeKey::generate()?;
            key.save(&out)?;
            println!("wrote {} (mode 0600); node id {}", out.display(), key.id());
            println!("public key {}", hex::encode(key.public().to_bytes()));
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Cert { hosts, out },
        } => {
            let spki = keys::self_signed_cert(&hosts, &out)?;
            println!(
                "wrote {0}/cert.pem and {0}/key.pem (mode 0600)",
                out.display()
            );
            println!("SPKI SHA-256 (for --ignore-certificate-errors-spki-list): {spki}");
            Ok(())
        }
        Command::Play {
            url,
            ack,
            hub,
            realtime,
            webrtc,
            json,
        } => {
            init_tracing("warn");
            let rt = tokio::runtime::Runtime::new()?;
            let options = meshcast_player::Options {
                url,
                ack,
                hub,
                realtime,
                batch: 16,
                webrtc,
            };
            rt.block_on(play::run(options, json))
        }
        Command::Token {
            key,
            video,
            session,
            ttl,
            budget,
        } => {
            let token = play::sign_token(&key, &video, &session, ttl, budget)?;
            println!("{token}");
            Ok(())
        }
        Command::Ledger {
            command:
                LedgerCommand::Init {
                    validators,
                    dir,
                    chain_id,
                },
        } => ledger_cmd::init(validators, &dir, &chain_id),
        Command::Ledger {
            command: LedgerCommand::Run { home },
        } => {
            // Malachite logs every vote at info; its warnings are what an
            // operator needs.
            init_tracing("info,informalsystems_malachitebft_core_consensus=warn,informalsystems_malachitebft_engine=warn,informalsystems_malachitebft_network=warn,informalsystems_malachitebft_sync=warn");
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(meshcast_consensus::run_home(&home))
                .with_context(|| format!("validator {} stopped", home.display()))?;
            Ok(())
        }
        Command::Ledger { command } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                match command {
                    LedgerCommand::Status { at } => ledger_cmd::status(&at).await,
                    LedgerCommand::Block { height, at } => ledger_cmd::block(&at, height).await,
                    LedgerCommand::Account { address, at } => {
                        ledger_cmd::account(&at, &address).await
                    }
                    LedgerCommand::Tx {
                        at,
                        key,
                        wait,
                        action,
                    } => {
                        use ledger_cmd::TxKind;
                        let kind = match action {
                            TxCommand::Transfer { to, amount } => TxKind::Transfer { to, amount },
                            TxCommand::Deposit { amount } => TxKind::Deposit { amount },
                            TxCommand::Bond { amount } => TxKind::Bond { amount },
                            TxCommand::Unbond { amount } => TxKind::Unbond { amount },
                            TxCommand::Slash { offender, evidence } => {
                                TxKind::Slash { offender, evidence }
                            }
                        };
                        ledger_cmd::tx(&at, &key, kind, wait).await
                    }
                    LedgerCommand::Init { .. } | LedgerCommand::Run { .. } => {
                        unreachable!("handled above")
                    }
                }
            })
        }
        Command::DemoOrigin { dir, listen } => {
            init_tracing("info");
            demo_origin::run(dir, &listen)
        }
    }
}
