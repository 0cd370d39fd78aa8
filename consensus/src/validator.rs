//! Starting a validator: the ledger node, the Malachite engine (network,
//! WAL, sync, consensus actors) and the application loop between them.
//! `start_home` reads a home written by `meshcast ledger init`; a HUB
//! builds a `Setup` itself and serves the ledger API from its own server.

use crate::app::{App, Pacing};
use crate::codec::WireCodec;
use crate::context::{Height, LedgerContext, Signer, ValidatorSet};
use crate::metrics::Metrics;
use crate::proposed::ProposalLog;
use async_trait::async_trait;
use malachitebft_app_channel::app::config::{
    ConsensusConfig, DiscoveryConfig, P2pConfig, PubSubProtocol, TimeoutConfig, ValuePayload,
    ValueSyncConfig,
};
use malachitebft_app_channel::app::events::{RxEvent, TxEvent};
use malachitebft_app_channel::app::node::{EngineHandle, Node, NodeConfig, NodeHandle};
use malachitebft_app_channel::app::types::Keypair;
use malachitebft_signing_ed25519::{PrivateKey, PublicKey};
use meshcast_ledger::api::Shared;
use meshcast_ledger::node::LedgerNode;
use meshcast_ledger::Genesis;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};
use utoipa_axum::{router::OpenApiRouter, routes};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] meshcast_conf::ConfError),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("genesis: {0}")]
    Genesis(String),
    #[error(transparent)]
    Key(#[from] meshcast_control::identity::KeyError),
    #[error(transparent)]
    Store(#[from] meshcast_ledger::store::StoreError),
    #[error("consensus engine: {0}")]
    Engine(String),
    #[error("ledger API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything a validator needs to start.
#[derive(Clone)]
pub struct Setup {
    pub moniker: String,
    pub genesis: Genesis,
    pub key_seed: [u8; 32],
    /// redb file and consensus WAL live here.
    pub data_dir: PathBuf,
    pub p2p: SocketAddr,
    pub peers: Vec<SocketAddr>,
    /// Other validators' APIs, to pass client transactions on to.
    pub peer_apis: Vec<SocketAddr>,
    pub pacing: Pacing,
    pub timeouts: TimeoutConfig,
}

/// Consensus timeouts around a propose timeout (`timeout_propose_ms`,
/// 1.5 s by default: shorter than Malachite's 3 s, since a missing
/// proposer costs the chain that long each time its turn comes).
pub fn timeouts(propose: Duration) -> TimeoutConfig {
    let vote = Duration::from_millis(500);
    TimeoutConfig {
        timeout_propose: propose,
        timeout_propose_delta: Duration::from_millis(250),
        timeout_prevote: vote,
        timeout_prevote_delta: Duration::from_millis(250),
        timeout_precommit: vote,
        timeout_precommit_delta: Duration::from_millis(250),
        timeout_rebroadcast: propose + vote + vote,
    }
}

fn file_err(path: &Path, reason: impl ToString) -> StartError {
    StartError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

pub fn load_genesis(path: &Path) -> Result<Genesis, StartError> {
    let text = std::fs::read(path).map_err(|e| file_err(path, e))?;
    serde_json::from_slice(&text).map_err(|e| file_err(path, format!("not a genesis file: {e}")))
}

/// The setup described by `home/ledger.toml`.
pub fn setup_from_home(home: &Path) -> Result<(Setup, SocketAddr), StartError> {
    let config_path = home.join("ledger.toml");
    let cfg = meshcast_conf::LedgerConfig::load(&config_path)?.ledger;
    let genesis = load_genesis(&home.join(&cfg.genesis))?;
    let key = meshcast_control::identity::NodeKey::load(&home.join(&cfg.key))?;
    let pacing = Pacing {
        empty_block_interval: Duration::from_millis(cfg.empty_block_interval_ms),
        max_block_txs: cfg.max_block_txs,
    };
    let timeouts = timeouts(Duration::from_millis(cfg.timeout_propose_ms));
    Ok((
        Setup {
            moniker: home
                .file_name()
                .map_or("validator".into(), |n| n.to_string_lossy().into_owned()),
            genesis,
            key_seed: key.seed(),
            data_dir: home.join(&cfg.data_dir),
            p2p: cfg.p2p,
            peers: cfg.peers,
            peer_apis: cfg.peer_apis,
            pacing,
            timeouts,
        },
        cfg.api,
    ))
}

/// The engine's configuration, as Malachite's `Node` wants it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineConfig {
    pub moniker: String,
    pub consensus: ConsensusConfig,
    pub value_sync: ValueSyncConfig,
}

impl NodeConfig for EngineConfig {
    fn moniker(&self) -> &str {
        &self.moniker
    }
    fn consensus(&self) -> &ConsensusConfig {
        &self.consensus
    }
    fn value_sync(&self) -> &ValueSyncConfig {
        &self.value_sync
    }
}

fn tcp(
    addr: SocketAddr,
) -> Result<malachitebft_app_channel::app::consensus::Multiaddr, StartError> {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
    };
    format!("{ip}/tcp/{}", addr.port())
        .parse()
        .map_err(|e| StartError::Engine(format!("address {addr}: {e}")))
}

fn engine_config(setup: &Setup) -> Result<EngineConfig, StartError> {
    Ok(EngineConfig {
        moniker: setup.moniker.clone(),
        consensus: ConsensusConfig {
            timeouts: setup.timeouts,
            p2p: P2pConfig {
                listen_addr: tcp(setup.p2p)?,
                persistent_peers: setup
                    .peers
                    .iter()
                    .map(|p| tcp(*p))
                    .collect::<Result<_, _>>()?,
                discovery: DiscoveryConfig {
                    enabled: false,
                    ..DiscoveryConfig::default()
                },
                // Validators are few and all connected: send each message
                // to every peer rather than through a gossip mesh.
                protocol: PubSubProtocol::Broadcast,
                ..P2pConfig::default()
            },
            value_payload: ValuePayload::PartsOnly,
            queue_capacity: 0,
        },
        value_sync: ValueSyncConfig {
            enabled: true,
            status_update_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            ..ValueSyncConfig::default()
        },
    })
}

/// A running validator.
pub struct Running {
    pub node: Shared,
    pub metrics: Metrics,
    on_accept: Option<meshcast_ledger::api::OnAccept>,
    app: JoinHandle<()>,
    engine: EngineHandle,
    events: TxEvent<LedgerContext>,
}

impl Running {
    /// Resolves when the application loop ends (consensus stopped).
    pub async fn stopped(&self) {
        while !self.app.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[async_trait]
impl NodeHandle<LedgerContext> for Running {
    fn subscribe(&self) -> RxEvent<LedgerContext> {
        self.events.subscribe()
    }

    async fn kill(&self, _reason: Option<String>) -> eyre::Result<()> {
        self.engine.actor.stop(None);
        self.app.abort();
        self.engine.handle.abort();
        Ok(())
    }
}

/// Malachite's view of this validator: where its keys, WAL and config are.
#[derive(Clone)]
pub struct LedgerApp {
    setup: Setup,
    /// From the genesis, checked once in `start`.
    validators: ValidatorSet,
    config: EngineConfig,
    node: Shared,
    metrics: Metrics,
}

#[async_trait]
impl Node for LedgerApp {
    type Context = LedgerContext;
    type Config = EngineConfig;
    type Genesis = Genesis;
    type PrivateKeyFile = [u8; 32];
    type SigningProvider = Signer;
    type NodeHandle = Running;

    async fn start(&self) -> eyre::Result<Running> {
        let validators = self.validators.clone();
        let signer = Arc::new(Signer::new(self.setup.key_seed));
        if !validators
            .validators()
            .iter()
            .any(|v| v.address == signer.address())
        {
            warn!(address = %signer.address(), "this key is not a genesis validator: following the chain without voting");
        }
        let start = Height(self.node.lock().unwrap_or_else(|p| p.into_inner()).height() + 1);
        let (channels, engine) = malachitebft_app_channel::start_engine(
            LedgerContext,
            self.clone(),
            self.config.clone(),
            WireCodec,
            WireCodec,
            Some(start),
            validators.clone(),
        )
        .await?;
        let events = channels.events.clone();
        let proposed = ProposalLog::open(&self.setup.data_dir.join("proposed"))?;
        let app = App::new(
            self.node.clone(),
            signer,
            validators,
            self.setup.pacing,
            self.metrics.clone(),
            proposed,
        );
        let span = tracing::info_span!("ledger", moniker = %self.setup.moniker);
        let app = tokio::spawn(
            async move {
                if let Err(e) = app.run(channels).await {
                    tracing::error!(error = %e, "ledger application stopped");
                }
            }
            .instrument(span),
        );
        Ok(Running {
            node: self.node.clone(),
            metrics: self.metrics.clone(),
            on_accept: crate::forward::spawn(self.setup.peer_apis.clone()),
            app,
            engine,
            events,
        })
    }

    async fn run(self) -> eyre::Result<()> {
        let running = self.start().await?;
        running.stopped().await;
        Ok(())
    }

    fn get_home_dir(&self) -> PathBuf {
        self.setup.data_dir.clone()
    }

    fn load_config(&self) -> eyre::Result<EngineConfig> {
        Ok(self.config.clone())
    }

    fn get_address(&self, pk: &PublicKey) -> crate::context::Address {
        crate::context::Address(*pk.as_bytes())
    }

    fn get_public_key(&self, pk: &PrivateKey) -> PublicKey {
        pk.public_key()
    }

    fn get_keypair(&self, pk: PrivateKey) -> Keypair {
        Keypair::ed25519_from_bytes(pk.inner().to_bytes())
            .expect("an Ed25519 seed is always 32 bytes")
    }

    fn load_private_key(&self, file: [u8; 32]) -> PrivateKey {
        PrivateKey::from(file)
    }

    fn load_private_key_file(&self) -> eyre::Result<[u8; 32]> {
        Ok(self.setup.key_seed)
    }

    fn load_genesis(&self) -> eyre::Result<Genesis> {
        Ok(self.setup.genesis.clone())
    }

    fn get_signing_provider(&self, pk: PrivateKey) -> Signer {
        Signer::new(pk.inner().to_bytes())
    }
}

/// Opens the ledger and starts consensus.
pub async fn start(setup: Setup) -> Result<Running, StartError> {
    std::fs::create_dir_all(&setup.data_dir).map_err(|e| file_err(&setup.data_dir, e))?;
    let validators = ValidatorSet::from_genesis(&setup.genesis).map_err(StartError::Genesis)?;
    let ledger = LedgerNode::open(&setup.data_dir.join("ledger.redb"), &setup.genesis)?;
    info!(height = ledger.height(), app_hash = %hex::encode(ledger.app_hash()), "ledger opened");
    let node: Shared = Arc::new(Mutex::new(ledger));
    let config = engine_config(&setup)?;
    let app = LedgerApp {
        setup,
        validators,
        config,
        node,
        metrics: Metrics::new(),
    };
    app.start()
        .await
        .map_err(|e| StartError::Engine(format!("{e:#}")))
}

/// `GET /v1/ledger/commits/{height}`: the precommit signatures that
/// decided block `height`. Each is over `meshcast_ledger::SignedVote`'s
/// message, so anyone can check a block was decided — and a conflicting
/// precommit from the same validator is slashable evidence.
#[utoipa::path(get, path = "/v1/ledger/commits/{height}", tag = meshcast_ledger::api::TAG,
    params(("height" = u64, Path, description = "Block height, from 1")),
    responses(
        (status = 200, description = "`height`, `round`, `block` (value id, hex) and the validators' `signatures`", body = Object),
        (status = 404, description = "No block at that height yet", body = Object)))]
async fn commit(
    axum::extract::State(node): axum::extract::State<Shared>,
    axum::extract::Path(height): axum::extract::Path<u64>,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::Json;
    let stored = node
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .certificate(height);
    let bytes = match stored {
        Ok(Some(b)) => b,
        Ok(None) => {
            let e = serde_json::json!({ "error": format!("no block {height} yet") });
            return (StatusCode::NOT_FOUND, Json(e)).into_response();
        }
        Err(e) => {
            let e = serde_json::json!({ "error": e.to_string() });
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(e)).into_response();
        }
    };
    match crate::codec::decode_certificate(&bytes) {
        Ok(c) => Json(serde_json::json!({
            "height": c.height.0,
            "round": c.round.as_i64(),
            "block": hex::encode(c.value_id.0),
            "signatures": c.commit_signatures.iter().map(|s| serde_json::json!({
                "validator": hex::encode(s.address.0),
                "sig": hex::encode(s.signature.to_bytes()),
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => {
            let e = serde_json::json!({ "error": e.to_string() });
            (StatusCode::INTERNAL_SERVER_ERROR, Json(e)).into_response()
        }
    }
}

/// The ledger API plus commit certificates, for the caller to serve (with
/// their OpenAPI operations).
pub fn router(running: &Running) -> OpenApiRouter {
    let commits = OpenApiRouter::new()
        .routes(routes!(commit))
        .with_state(running.node.clone());
    meshcast_ledger::api::routes_with(running.node.clone(), running.on_accept.clone())
        .merge(commits)
}

/// The standalone validator's Prometheus series.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(axum::extract::State(running): axum::extract::State<Arc<Running>>) -> String {
    running.render_metrics()
}

impl Running {
    /// Prometheus text for this validator (ledger and engine series).
    pub fn render_metrics(&self) -> String {
        let pending = self
            .node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mempool_len();
        self.metrics.mempool.set(pending as i64);
        self.metrics.render()
    }
}

/// `meshcast ledger run --home DIR`: one validator and its API, until the
/// engine stops.
pub async fn run_home(home: &Path) -> Result<(), StartError> {
    let (setup, api) = setup_from_home(home)?;
    let running = start(setup).await?;
    let listener = tokio::net::TcpListener::bind(api)
        .await
        .map_err(|source| StartError::Bind { addr: api, source })?;
    info!(%api, "ledger API listening");
    let running = Arc::new(running);
    let app: axum::Router = router(&running)
        .merge(
            OpenApiRouter::new()
                .routes(routes!(metrics))
                .with_state(running.clone()),
        )
        .into();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    running.stopped().await;
    server.abort();
    Err(StartError::Engine("consensus stopped".into()))
}
