//! meshcast-hub is the HUB service: the tus upload API, the video catalog
//! (redb), content-addressed media storage, the transcode queue, and the
//! origin that edges fetch from, plus the player page; the node registry,
//! playback tokens, and the audit and settlement of delivery claims. It
//! calls `meshcast-transcode` for media work and `meshcast-control` for
//! every protocol rule (tokens, envelopes, audits), keeping only storage
//! and HTTP here. It must not serve viewers at scale itself: edges do that.

mod accounts;
mod admission;
mod api;
mod audits;
mod blobs;
mod catalog;
mod claims;
mod console;
mod costs;
mod dispatch;
mod jobs;
mod ledger;
mod nodes;
pub mod openapi;
mod origin;
mod placement;
mod player;
mod probes;
mod registry;
mod repair;
pub mod rewards;
mod rtc;
mod tokens;
mod tus;
pub mod tus_client;
pub mod webhooks;
mod work;

use axum::Router;
use meshcast_conf::HubConfig;
use std::sync::Arc;

pub use catalog::{Policy, Status, VideoRecord};
use meshcast_control::identity::NodeKey;
use meshcast_control::messages::Issuer;
pub use registry::Settlement;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("hub key: {0}")]
    Key(#[from] meshcast_control::identity::KeyError),
    #[error("ledger: {0}")]
    Ledger(String),
}

/// Everything the request handlers share.
pub struct Hub {
    pub config: HubConfig,
    catalog: catalog::Catalog,
    blobs: blobs::BlobStore,
    jobs: jobs::Jobs,
    metrics: Metrics,
    /// PATCHes in progress, each with a signal that a newer PATCH took over.
    uploads_busy: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Signs playback tokens.
    key: NodeKey,
    registry: registry::Registry,
    /// Replay protection per envelope domain.
    verifiers: std::sync::Mutex<
        std::collections::HashMap<&'static str, meshcast_control::envelope::Verifier>,
    >,
    rate_limit: tokens::RateLimit,
    /// Who may sign playback tokens (see `issuers`).
    issuers: arc_swap::ArcSwap<Vec<Issuer>>,
    /// `[hub] trusted_proxies`, parsed once.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// The embedded ledger validator rewards are paid on.
    ledger: ledger::HubLedger,
    /// Distributed transcoding: the job board and the videos on it.
    work: work::Work,
    /// Accounts and API keys.
    accounts: accounts::Accounts,
    /// Where each video's shards are, and its content key.
    placements: placement::Placements,
    /// WebRTC signalling between viewers and nodes behind NAT.
    rtc: rtc::Signalling,
    /// Accounts' webhooks and what is owed to them.
    webhooks: webhooks::Webhooks,
    /// Transcoding and storage work per video, for accounts' costs.
    costs: costs::Costs,
    /// Set once when the hub is told to stop (SIGTERM, Ctrl-C).
    stop: tokio::sync::watch::Sender<bool>,
}

/// The hub's own key for every path, and each signed video's owner for
/// that video's prefix.
fn build_issuers(key: &NodeKey, catalog: &catalog::Catalog) -> Result<Vec<Issuer>, HubError> {
    let mut out = vec![Issuer {
        key: hex::encode(key.public().to_bytes()),
        prefix: "/".into(),
    }];
    for v in catalog.videos()? {
        if let (Policy::Signed, Some(owner)) = (v.policy, &v.owner) {
            out.push(Issuer {
                key: owner.clone(),
                prefix: format!("/v/{}/", v.id),
            });
        }
    }
    Ok(out)
}

impl Hub {
    /// Resolves once the hub is told to stop. Long polls wait on it too,
    /// so a stopping hub answers them at once instead of holding its
    /// shutdown for the rest of their poll.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    /// Counts a long poll of `kind` until the guard drops.
    pub(crate) fn long_poll(&self, kind: &str) -> LongPoll {
        let gauge = self.metrics.long_polls.with_label_values(&[kind]);
        gauge.inc();
        LongPoll(gauge)
    }

    /// Keys that may sign playback tokens, and for which paths: the hub's
    /// own for everything, each signed video's owner for that video. Kept
    /// in memory (read on every heartbeat and claim) and rebuilt only when
    /// a signed video comes or goes.
    pub fn issuers(&self) -> Arc<Vec<Issuer>> {
        self.issuers.load_full()
    }

    /// Rebuilds the issuer list after a signed video was created or
    /// deleted. If the catalog cannot be read, the list in force stays (an
    /// owner's key is never dropped silently) and the error is logged.
    pub(crate) fn refresh_issuers(&self) {
        match build_issuers(&self.key, &self.catalog) {
            Ok(list) => self.issuers.store(Arc::new(list)),
            Err(e) => {
                tracing::error!(error = %e, "cannot rebuild the token issuer list; keeping the last one")
            }
        }
    }

    /// Slashes `node` for a claim its own signed envelopes prove
    /// fabricated: keeps the envelopes as evidence (served at
    /// `/v1/evidence/{hash}`), records it on the node, and queues the slash
    /// on the ledger. Each claim is slashed once.
    pub(crate) fn slash(
        &self,
        node: &str,
        epoch: u64,
        reason: &str,
        claim: &[u8],
        also: Option<&[u8]>,
    ) {
        if let Some((key, hash)) =
            self.record_slash(node, epoch, reason, claim, also.map(hex::encode))
        {
            self.ledger.slash_delivery(key, hash, epoch, reason);
        }
    }

    /// What every slash does before the chain hears of it: keeps the
    /// evidence (`claim`, the node-signed envelope it rests on, and `also`)
    /// under the envelope's hash, records the slash on the node and counts
    /// it. Returns the offender's key and the hash, or `None` (logged) when
    /// the evidence cannot be kept: then there is no slash.
    pub(crate) fn record_slash(
        &self,
        node: &str,
        epoch: u64,
        reason: &str,
        claim: &[u8],
        also: Option<String>,
    ) -> Option<([u8; 32], [u8; 32])> {
        let Some(record) = self.registry.node(node).ok().flatten() else {
            tracing::error!(node, "cannot slash an unknown node");
            return None;
        };
        let key = admission::node_key(&record)?;
        let hash: [u8; 32] = blake3::hash(claim).into();
        let hex_hash = hex::encode(hash);
        let evidence = registry::Evidence {
            node: node.to_string(),
            epoch,
            reason: reason.to_string(),
            claim: hex::encode(claim),
            also,
        };
        if let Err(e) = self.registry.put_evidence(&hex_hash, &evidence) {
            tracing::error!(node, error = %e, "cannot keep slash evidence; not slashing");
            return None;
        }
        let recorded = self.registry.upsert_node(node, |cur| {
            let mut n = cur.unwrap_or(record.clone());
            if !n.slashes.iter().any(|s| s.evidence == hex_hash) {
                n.slashes.push(registry::SlashRecord {
                    epoch,
                    reason: reason.to_string(),
                    evidence: hex_hash.clone(),
                });
            }
            n
        });
        if let Err(e) = recorded {
            tracing::error!(node, error = %e, "cannot record a slash on the node");
        }
        self.metrics.slashes.inc();
        tracing::warn!(node, epoch, evidence = %hex_hash, reason, "node slashed");
        Some((key, hash))
    }

    /// Queues the ledger rewards for a settled epoch: each video's bytes
    /// paid from its owner's escrow (the hub's for videos without one) to
    /// the edge that delivered them.
    pub(crate) fn reward(&self, s: &registry::Settlement) {
        let edge = match self.registry.node(&s.node) {
            Ok(Some(n)) => n.key,
            _ => {
                tracing::warn!(node = %s.node, "settled epoch of an unknown node; no reward");
                return;
            }
        };
        let mut edge_key = [0u8; 32];
        if hex::decode_to_slice(&edge, &mut edge_key).is_err() {
            tracing::warn!(node = %s.node, "node key is not hex; no reward");
            return;
        }
        self.ledger
            .reward(s, edge_key, |video| match self.catalog.video(video) {
                Ok(Some(v)) => self.payer_of(&v),
                _ => self.key.public().to_bytes(),
            });
    }

    /// Whose escrow pays for a video's work: its owner's key, else the
    /// HUB's (videos made before owners).
    pub(crate) fn payer_of(&self, v: &VideoRecord) -> [u8; 32] {
        let mut k = [0u8; 32];
        match &v.owner {
            Some(o) if hex::decode_to_slice(o, &mut k).is_ok() => k,
            _ => self.key.public().to_bytes(),
        }
    }
}

/// Loads the hub key, creating it (mode 0600) on first start.
fn load_or_create_key(path: &std::path::Path) -> Result<NodeKey, HubError> {
    if path.exists() {
        return Ok(NodeKey::load(path)?);
    }
    let key = NodeKey::generate()?;
    key.save(path)?;
    tracing::info!(path = %path.display(), id = %key.id(), "created the hub key");
    Ok(key)
}

struct Metrics {
    registry: prometheus::Registry,
    upload_bytes: prometheus::IntCounter,
    transcodes: prometheus::IntCounterVec,
    origin_requests: prometheus::IntCounterVec,
    envelopes_refused: prometheus::IntCounterVec,
    claims: prometheus::IntCounterVec,
    credited_bytes: prometheus::IntCounter,
    tokens: prometheus::IntCounterVec,
    slashes: prometheus::IntCounter,
    probes: prometheus::IntCounterVec,
    /// Sampled segments below the rescaled reference that the HUB encoded
    /// itself to judge, by verdict (honest, false, uncheckable).
    own_encodes: prometheus::IntCounterVec,
    shards_placed: prometheus::IntCounter,
    shards_repaired: prometheus::IntCounter,
    long_polls: prometheus::IntGaugeVec,
}

/// Counts a long poll in `meshcast_hub_long_polls` while it waits.
pub(crate) struct LongPoll(prometheus::IntGauge);

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(crate) fn counter_vec(
    registry: &prometheus::Registry,
    name: &str,
    help: &str,
    label: &str,
) -> prometheus::IntCounterVec {
    let c = prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &[label])
        .expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl Metrics {
    fn new() -> Self {
        let registry = prometheus::Registry::new();
        let upload_bytes = prometheus::IntCounter::new(
            "meshcast_hub_upload_bytes_total",
            "Bytes received by tus PATCH",
        )
        .expect("valid");
        let transcodes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "meshcast_hub_transcodes_total",
                "Finished transcodes by result",
            ),
            &["result"],
        )
        .expect("valid");
        let origin_requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "meshcast_hub_origin_requests_total",
                "Origin requests by status",
            ),
            &["status"],
        )
        .expect("valid");
        registry
            .register(Box::new(upload_bytes.clone()))
            .expect("unique");
        registry
            .register(Box::new(transcodes.clone()))
            .expect("unique");
        registry
            .register(Box::new(origin_requests.clone()))
            .expect("unique");
        let envelopes_refused = counter_vec(
            &registry,
            "meshcast_hub_envelopes_refused_total",
            "Signed node messages refused, by domain",
            "domain",
        );
        let claims = counter_vec(
            &registry,
            "meshcast_hub_claims_total",
            "Delivery claims by outcome (accepted or the refusal reason)",
            "outcome",
        );
        let tokens = counter_vec(
            &registry,
            "meshcast_hub_tokens_total",
            "Playback token requests by outcome",
            "outcome",
        );
        let probes = counter_vec(
            &registry,
            "meshcast_hub_probes_total",
            "Probes of edges by outcome (ok, failed)",
            "outcome",
        );
        let own_encodes = counter_vec(
            &registry,
            "meshcast_hub_fidelity_own_encodes_total",
            "Segments below the rescaled reference judged against the HUB's own encode, by verdict",
            "verdict",
        );
        let credited_bytes = prometheus::IntCounter::new(
            "meshcast_hub_credited_bytes_total",
            "Delivery bytes credited to nodes",
        )
        .expect("valid");
        registry
            .register(Box::new(credited_bytes.clone()))
            .expect("unique");
        let slashes = prometheus::IntCounter::new(
            "meshcast_hub_slashes_total",
            "Nodes slashed for fabricated delivery claims",
        )
        .expect("valid");
        registry
            .register(Box::new(slashes.clone()))
            .expect("unique");
        let shards_placed = prometheus::IntCounter::new(
            "meshcast_hub_shards_placed_total",
            "Shards put on storage nodes",
        )
        .expect("valid");
        registry
            .register(Box::new(shards_placed.clone()))
            .expect("unique");
        let shards_repaired = prometheus::IntCounter::new(
            "meshcast_hub_shards_repaired_total",
            "Shards rebuilt from the others and put on another node",
        )
        .expect("valid");
        registry
            .register(Box::new(shards_repaired.clone()))
            .expect("unique");
        let long_polls = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "meshcast_hub_long_polls",
                "Long polls waiting, by kind (lease: workers; rtc: signalling)",
            ),
            &["kind"],
        )
        .expect("valid");
        registry
            .register(Box::new(long_polls.clone()))
            .expect("unique");
        Metrics {
            long_polls,
            shards_placed,
            shards_repaired,
            registry,
            upload_bytes,
            transcodes,
            origin_requests,
            envelopes_refused,
            claims,
            credited_bytes,
            tokens,
            slashes,
            probes,
            own_encodes,
        }
    }
}

/// Opens the catalog and storage, re-queues interrupted work, and serves
/// until the process is stopped.
pub async fn serve(config: HubConfig) -> Result<(), HubError> {
    let data = config.hub.data_dir.clone();
    std::fs::create_dir_all(data.join("uploads"))?;
    let catalog = catalog::Catalog::open(&data.join("catalog.redb"))?;
    let blobs = blobs::BlobStore::open(&data.join("blobs"))?;
    let (jobs, queue) = jobs::Jobs::new();
    let key_path = config
        .hub
        .key
        .clone()
        .unwrap_or_else(|| data.join("hub.key"));
    let key = load_or_create_key(&key_path)?;
    let registry = registry::Registry::open(&data.join("delivery.redb"))?;
    let admin_key = config
        .hub
        .admin_key
        .clone()
        .unwrap_or_else(|| data.join("admin.key"));
    let accounts = accounts::Accounts::open(&data.join("accounts.redb"), &admin_key)?;
    let ledger = ledger::HubLedger::start(&config, &key).await?;
    let placements = placement::Placements::open(&data.join("placement.redb"))?;
    // A catalog that cannot list its videos stops the start: serving on
    // without the owners' keys would refuse their viewers.
    let issuers = build_issuers(&key, &catalog)?;
    let metrics = Metrics::new();
    let webhooks = webhooks::Webhooks::open(&data.join("webhooks.redb"), &metrics.registry)?;
    let costs = costs::Costs::open(&data.join("costs.redb"))?;
    let hub = Arc::new(Hub {
        config: config.clone(),
        catalog,
        blobs,
        jobs,
        metrics,
        uploads_busy: Default::default(),
        key,
        registry,
        verifiers: Default::default(),
        rate_limit: tokens::RateLimit::new(config.hub.token_rate),
        trusted_proxies: config.hub.trusted_proxy_nets(),
        issuers: arc_swap::ArcSwap::from_pointee(issuers),
        ledger,
        accounts,
        work: Default::default(),
        placements,
        rtc: rtc::Signalling::new(config.hub.token_rate),
        webhooks,
        costs,
        stop: tokio::sync::watch::channel(false).0,
    });
    // Rewards for epochs settled before a crash or restart: the chain pays
    // each reference once, so what it already has is skipped.
    for s in hub.registry.all_settled()? {
        hub.reward(&s);
    }
    let requeued = hub.catalog.requeue_interrupted()?;
    for id in &requeued {
        tracing::warn!(video = %id, "re-queued a transcode interrupted by a restart");
        hub.jobs.enqueue(id.clone());
    }
    tokio::spawn(jobs::worker(hub.clone(), queue));
    tokio::spawn(repair::run(hub.clone()));
    tokio::spawn(audits::run(hub.clone()));
    tokio::spawn(webhooks::run(hub.clone()));
    let probe_every = config.hub.probe_interval.0;
    if !probe_every.is_zero() {
        tokio::spawn(probes::run(hub.clone(), probe_every));
    }
    let app = router(hub.clone());
    let listener = tokio::net::TcpListener::bind(config.hub.listen).await?;
    tracing::info!(listen = %config.hub.listen, data = %data.display(), "meshcast hub serving");
    let signalled = hub.clone();
    tokio::spawn(async move {
        stop_signal().await;
        signalled.stop.send_replace(true);
    });
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(hub.stopping());
    let grace = config.hub.shutdown_grace.0;
    tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served?,
        _ = async { hub.stopping().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "requests still open after the shutdown grace; closing them");
        }
    }
    let left = hub.ledger.drain(grace).await;
    if left > 0 {
        tracing::warn!(transactions = left, "ledger transactions still queued at exit; settled work is offered again at the next start");
    }
    tracing::info!("meshcast hub stopped");
    Ok(())
}

/// SIGTERM (what service managers send) or Ctrl-C.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: stopping; finishing requests in flight"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: stopping; finishing requests in flight"),
    }
}

/// Every route, each registered with its OpenAPI operation; the finished
/// document is served at `/v1/openapi.json`.
fn router(hub: Arc<Hub>) -> Router {
    let ledger_api = meshcast_consensus::router(&hub.ledger.running);
    let (router, doc) = openapi::router()
        .merge(api::routes())
        .merge(accounts::routes())
        .merge(origin::routes())
        .merge(player::routes())
        .merge(nodes::routes())
        .merge(work::routes())
        .merge(placement::routes())
        .merge(claims::routes())
        .merge(tokens::routes())
        .merge(rtc::routes())
        .merge(webhooks::routes())
        .merge(costs::routes())
        .merge(console::routes())
        .layer(axum::middleware::from_fn(tus::cors))
        .with_state(hub)
        .merge(ledger_api)
        .split_for_parts();
    router
        .fallback(openapi::no_route)
        .layer(axum::Extension(openapi::Served(Arc::new(openapi::finish(
            doc,
        )))))
}
