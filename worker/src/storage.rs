//! The storage role: a node that keeps shards the HUB puts on it and
//! serves them to edges (whole, or as verified slices for audits). It
//! keeps only what the HUB signed for, checked against the signed root
//! before it is kept, and never sees plaintext: shards are ciphertext.
//!
//! On disk each shard is `{blake3(name)}.shard` with its bao tree beside
//! it (`.obao`), written to a temporary name, fsync'd and renamed.

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use meshcast_control::envelope::{Envelope, Verifier};
use meshcast_control::identity::NodeKey;
use meshcast_control::messages::MAX_SKEW_SECS;
use meshcast_control::placement::{Store, STORE, STORE_HEADER};
use meshcast_control::storage::{Challenge, AUDIT, AUDIT_ANSWER};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct Storage {
    dir: PathBuf,
    capacity: u64,
    used: AtomicU64,
    /// The HUB's Ed25519 public key: only it may put shards here.
    hub: [u8; 32],
    verifier: Mutex<Verifier>,
    audits: Mutex<Verifier>,
    /// Signs audit answers.
    key: NodeKey,
    metrics: Metrics,
}

struct Metrics {
    registry: prometheus::Registry,
    stored: prometheus::IntCounter,
    refused: prometheus::IntCounterVec,
    served_bytes: prometheus::IntCounter,
    used: prometheus::IntGauge,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = prometheus::Registry::new();
        let stored =
            prometheus::IntCounter::new("meshcast_storage_shards_stored_total", "Shards kept")
                .expect("valid metric");
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new("meshcast_storage_puts_refused_total", "Shards refused"),
            &["reason"],
        )
        .expect("valid metric");
        let served_bytes = prometheus::IntCounter::new(
            "meshcast_storage_served_bytes_total",
            "Shard bytes served",
        )
        .expect("valid metric");
        let used = prometheus::IntGauge::new("meshcast_storage_used_bytes", "Bytes of shards kept")
            .expect("valid metric");
        for c in [
            Box::new(stored.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refused.clone()),
            Box::new(served_bytes.clone()),
            Box::new(used.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            stored,
            refused,
            served_bytes,
            used,
        }
    }
}

fn refuse(status: StatusCode, why: impl std::fmt::Display) -> Response {
    (status, format!("{why}\n")).into_response()
}

impl Storage {
    /// Opens `dir` (made if missing), counting what it already holds.
    pub fn open(
        dir: PathBuf,
        capacity: u64,
        hub: [u8; 32],
        key: NodeKey,
    ) -> std::io::Result<Storage> {
        std::fs::create_dir_all(&dir)?;
        let mut used = 0;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().ends_with(".shard") {
                used += e.metadata()?.len();
            }
        }
        let metrics = Metrics::new();
        metrics.used.set(used as i64);
        Ok(Storage {
            dir,
            capacity,
            used: AtomicU64::new(used),
            hub,
            verifier: Mutex::new(Verifier::new(STORE, MAX_SKEW_SECS)),
            audits: Mutex::new(Verifier::new(AUDIT, MAX_SKEW_SECS)),
            key,
            metrics,
        })
    }

    fn file(&self, name: &str, ext: &str) -> PathBuf {
        self.dir
            .join(format!("{}.{ext}", blake3::hash(name.as_bytes()).to_hex()))
    }

    /// The shard and its tree, if kept.
    pub fn read(&self, name: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let data = std::fs::read(self.file(name, "shard")).ok()?;
        let tree = std::fs::read(self.file(name, "obao")).ok()?;
        Some((data, tree))
    }

    /// A HUB-signed envelope of `domain` from the request body or header,
    /// checked: fresh, not replayed, from this node's HUB.
    fn signed_by_hub(
        &self,
        verifier: &Mutex<Verifier>,
        wire: &[u8],
    ) -> Result<Envelope, (StatusCode, String)> {
        let env = Envelope::decode(wire).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let key = verifier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .verify(&env, now)
            .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
        if key.to_bytes() != self.hub {
            return Err((
                StatusCode::FORBIDDEN,
                "signed by a key that is not this node's HUB".into(),
            ));
        }
        Ok(env)
    }

    /// The signed answer to an audit: each asked chunk with its proof.
    fn audit(&self, wire: &[u8]) -> Result<Vec<u8>, (StatusCode, String)> {
        let env = self.signed_by_hub(&self.audits, wire)?;
        let c: Challenge = serde_json::from_slice(&env.body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("challenge: {e}")))?;
        if c.node != self.key.id() {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("a challenge for node {}, not this one", c.node),
            ));
        }
        let answer = meshcast_control::storage::answer(&c, |name| self.read(name));
        let body = serde_json::to_vec(&answer).expect("serializes");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signed = Envelope::seal(&self.key, AUDIT_ANSWER, body, now)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(signed.encode())
    }

    /// Checks a PUT: the HUB signed it, it names this shard, and the bytes
    /// are what it signed.
    fn admit(&self, headers: &HeaderMap, name: &str, body: &[u8]) -> Result<(), Box<Response>> {
        let bad = |reason: &'static str, status, why: String| {
            self.metrics.refused.with_label_values(&[reason]).inc();
            Box::new(refuse(status, why))
        };
        let wire = headers
            .get(STORE_HEADER)
            .and_then(|h| hex::decode(h.as_bytes()).ok())
            .ok_or_else(|| {
                bad(
                    "unsigned",
                    StatusCode::UNAUTHORIZED,
                    format!("no valid {STORE_HEADER} header"),
                )
            })?;
        let env = self
            .signed_by_hub(&self.verifier, &wire)
            .map_err(|(status, why)| {
                let reason = if status == StatusCode::FORBIDDEN {
                    "not the hub"
                } else {
                    "signature"
                };
                bad(reason, status, why)
            })?;
        let store: Store = serde_json::from_slice(&env.body)
            .map_err(|e| bad("body", StatusCode::BAD_REQUEST, format!("store body: {e}")))?;
        if store.shard != name
            || store.len != body.len() as u64
            || *blake3::hash(body).as_bytes() != store.root
        {
            return Err(bad(
                "mismatch",
                StatusCode::BAD_REQUEST,
                format!("the bytes are not the shard {name:?} the HUB signed for"),
            ));
        }
        Ok(())
    }

    fn keep(&self, name: &str, body: &[u8]) -> std::io::Result<()> {
        let (tree, _) = meshcast_shards::outboard(body);
        let previous = std::fs::metadata(self.file(name, "shard")).map_or(0, |m| m.len());
        for (ext, bytes) in [("obao", tree.as_slice()), ("shard", body)] {
            let path = self.file(name, ext);
            let tmp = path.with_extension(format!("{ext}.tmp"));
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(bytes)?;
                f.sync_data()?;
            }
            std::fs::rename(&tmp, &path)?;
        }
        std::fs::File::open(&self.dir)?.sync_all()?;
        // A shard put again replaces the old bytes.
        self.used.fetch_add(body.len() as u64, Ordering::Relaxed);
        self.used.fetch_sub(previous, Ordering::Relaxed);
        self.metrics
            .used
            .set(self.used.load(Ordering::Relaxed) as i64);
        self.metrics.stored.inc();
        Ok(())
    }
}

pub fn router(storage: Arc<Storage>) -> Router {
    Router::new()
        .route("/v1/shards/{*name}", get(get_shard).put(put_shard))
        .route("/v1/slices/{*name}", get(get_slice))
        .route("/v1/audit", axum::routing::post(audit))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(storage)
}

async fn put_shard(
    State(s): State<Arc<Storage>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = s.admit(&headers, &name, &body) {
        return *r;
    }
    if s.used.load(Ordering::Relaxed) + body.len() as u64 > s.capacity {
        s.metrics.refused.with_label_values(&["full"]).inc();
        return refuse(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "full: {} of {} bytes used",
                s.used.load(Ordering::Relaxed),
                s.capacity
            ),
        );
    }
    let store = s.clone();
    let kept = tokio::task::spawn_blocking(move || store.keep(&name, &body)).await;
    match kept {
        Ok(Ok(())) => StatusCode::CREATED.into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot keep a shard");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, e)
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn get_shard(State(s): State<Arc<Storage>>, UrlPath(name): UrlPath<String>) -> Response {
    match tokio::fs::read(s.file(&name, "shard")).await {
        Ok(b) => {
            s.metrics.served_bytes.inc_by(b.len() as u64);
            b.into_response()
        }
        Err(_) => refuse(StatusCode::NOT_FOUND, format!("no shard {name:?} here")),
    }
}

#[derive(serde::Deserialize)]
struct SliceQuery {
    start: u64,
    len: u64,
}

/// `start..start + len` of a shard with the tree nodes that prove it.
async fn get_slice(
    State(s): State<Arc<Storage>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<SliceQuery>,
) -> Response {
    let store = s.clone();
    let read = tokio::task::spawn_blocking(move || store.read(&name))
        .await
        .ok()
        .flatten();
    let Some((data, tree)) = read else {
        return refuse(StatusCode::NOT_FOUND, "no such shard here");
    };
    match meshcast_shards::extract(&data, &tree, q.start, q.len.min(1 << 20)) {
        Ok(b) => {
            s.metrics.served_bytes.inc_by(b.len() as u64);
            b.into_response()
        }
        Err(e) => refuse(StatusCode::RANGE_NOT_SATISFIABLE, e),
    }
}

async fn audit(State(s): State<Arc<Storage>>, body: Bytes) -> Response {
    let store = s.clone();
    match tokio::task::spawn_blocking(move || store.audit(&body)).await {
        Ok(Ok(answer)) => answer.into_response(),
        Ok(Err((status, why))) => refuse(status, why),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn metrics(State(s): State<Arc<Storage>>) -> Response {
    let mut out = Vec::new();
    let _ = prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &s.metrics.registry.gather(),
        &mut out,
    );
    out.into_response()
}
