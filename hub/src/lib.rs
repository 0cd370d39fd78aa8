//! meshcast-hub is the HUB service: the tus upload API, the video catalog
//! (redb), content-addressed media storage, the transcode queue, and the
//! origin that edges fetch from, plus the player page. It calls
//! `meshcast-transcode` for media work and must not serve viewers at
//! scale itself: edges do that. Node registry, audits and settlement
//! arrive with later issues.

mod api;
mod blobs;
mod catalog;
mod jobs;
mod origin;
mod player;
mod tus;
pub mod tus_client;

use axum::Router;
use meshcast_conf::HubConfig;
use std::sync::Arc;

pub use catalog::{Status, VideoRecord};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
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
}

struct Metrics {
    registry: prometheus::Registry,
    upload_bytes: prometheus::IntCounter,
    transcodes: prometheus::IntCounterVec,
    origin_requests: prometheus::IntCounterVec,
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
        Metrics {
            registry,
            upload_bytes,
            transcodes,
            origin_requests,
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
    let hub = Arc::new(Hub {
        config: config.clone(),
        catalog,
        blobs,
        jobs,
        metrics: Metrics::new(),
        uploads_busy: Default::default(),
    });
    let requeued = hub.catalog.requeue_interrupted()?;
    for id in &requeued {
        tracing::warn!(video = %id, "re-queued a transcode interrupted by a restart");
        hub.jobs.enqueue(id.clone());
    }
    tokio::spawn(jobs::worker(hub.clone(), queue));
    let app = router(hub.clone());
    let listener = tokio::net::TcpListener::bind(config.hub.listen).await?;
    tracing::info!(listen = %config.hub.listen, data = %data.display(), "meshcast hub serving");
    axum::serve(listener, app).await?;
    Ok(())
}

fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(origin::routes())
        .merge(player::routes())
        .layer(axum::middleware::from_fn(tus::cors))
        .with_state(hub)
}
