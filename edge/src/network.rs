//! The network as an origin: sites with `origin = "network"` are proxied
//! by the pipeline (cache, coalescing, receipts, tokens unchanged) to this
//! small loopback server, which answers media objects from the storage
//! nodes and everything else (playlists) from the HUB. For a media object
//! it asks the HUB where the video's shards are (signed; the answer's
//! content key is wrapped for this edge), fetches `k` of the `k + m`
//! shards at once, starts a spare when one fails or is slow (hedging),
//! checks each whole shard against its BLAKE3 root, decodes, opens with
//! the content key and checks the plaintext's hash before answering.

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::stream::{FuturesUnordered, StreamExt};
use meshcast_control::envelope::Envelope;
use meshcast_control::identity::NodeKey;
use meshcast_control::placement::{PlacedObject, Placement, PlacementRequest, PLACEMENT};
use meshcast_shards::{ContentKey, Layout, WrappedKey};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where the pipeline reaches the network origin (set once, at start).
static ADDR: OnceLock<SocketAddr> = OnceLock::new();

/// The network origin's address, or one that refuses when it is not
/// running (`--check`).
pub fn origin_addr() -> SocketAddr {
    ADDR.get()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1)))
}

/// Start the spare shard when one has not answered in this long.
const HEDGE_AFTER: Duration = Duration::from_millis(500);
/// How long a placement is trusted before it is asked again.
const PLACEMENT_TTL: Duration = Duration::from_secs(60);

struct Known {
    at: Instant,
    placement: Arc<Placement>,
    key: ContentKey,
}

/// The loopback listener, bound at start, and what serves it.
pub struct NetworkOrigin {
    reader: Arc<Reader>,
    listener: parking_lot::Mutex<Option<std::net::TcpListener>>,
}

/// Reads objects from the network (and the rest from the HUB).
struct Reader {
    hub: String,
    key: NodeKey,
    http: reqwest::Client,
    known: parking_lot::Mutex<HashMap<String, Arc<Known>>>,
    metrics: &'static crate::metrics::Metrics,
}

impl NetworkOrigin {
    /// Binds the loopback listener now, so sites can be built with its
    /// address before the server runs.
    pub fn bind(
        hub: String,
        key: NodeKey,
        http: reqwest::Client,
        metrics: &'static crate::metrics::Metrics,
    ) -> std::io::Result<NetworkOrigin> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let _ = ADDR.set(listener.local_addr()?);
        Ok(NetworkOrigin {
            reader: Arc::new(Reader {
                hub: hub.trim_end_matches('/').to_string(),
                key,
                http,
                known: Default::default(),
                metrics,
            }),
            listener: parking_lot::Mutex::new(Some(listener)),
        })
    }
}

impl Reader {
    /// The video's placement and content key, asked of the HUB at most
    /// once a minute.
    async fn placement(&self, video: &str) -> Result<Arc<Known>, String> {
        if let Some(k) = self.known.lock().get(video) {
            if k.at.elapsed() < PLACEMENT_TTL {
                return Ok(k.clone());
            }
        }
        let body = serde_json::to_vec(&PlacementRequest {
            video: video.into(),
        })
        .expect("serializes");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let env = Envelope::seal(&self.key, PLACEMENT, body, now).map_err(|e| e.to_string())?;
        let r = self
            .http
            .post(format!("{}/v1/placements", self.hub))
            .body(env.encode())
            .send()
            .await
            .map_err(|e| format!("asking the HUB for {video}'s placement: {e}"))?;
        if !r.status().is_success() {
            return Err(format!(
                "the HUB has no placement for {video}: {}",
                r.status()
            ));
        }
        let placement: Placement = r.json().await.map_err(|e| format!("placement: {e}"))?;
        let wrapped = WrappedKey::from_bytes(&placement.key).map_err(|e| e.to_string())?;
        let key = meshcast_shards::unwrap_key(&wrapped, &self.key.x25519_secret(), video)
            .map_err(|e| format!("{video}'s content key: {e}"))?;
        let known = Arc::new(Known {
            at: Instant::now(),
            placement: Arc::new(placement),
            key,
        });
        self.known.lock().insert(video.to_string(), known.clone());
        Ok(known)
    }

    /// One whole shard, checked against its root.
    async fn shard(&self, object: &PlacedObject, i: usize) -> Result<bytes::Bytes, String> {
        let s = &object.shards[i];
        let url = format!("{}/v1/shards/{}", s.addr.trim_end_matches('/'), s.name);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{url}: {}", r.status()));
        }
        let bytes = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if bytes.len() as u64 != s.len || *blake3::hash(&bytes).as_bytes() != s.root {
            return Err(format!("{url}: not the shard the HUB placed"));
        }
        Ok(bytes)
    }

    /// Any `k` verified shards of `object`: `k` asked at once, a spare
    /// started whenever one fails or `HEDGE_AFTER` passes without enough.
    async fn gather(
        &self,
        object: &PlacedObject,
        k: usize,
    ) -> Result<Vec<Option<bytes::Bytes>>, String> {
        let total = object.shards.len();
        let mut got: Vec<Option<bytes::Bytes>> = vec![None; total];
        let mut pending = FuturesUnordered::new();
        let start = |i: usize| async move { (i, self.shard(object, i).await) };
        let mut next = 0;
        while next < k.min(total) {
            pending.push(start(next));
            next += 1;
        }
        let (mut have, mut errors) = (0, Vec::new());
        let hedge = tokio::time::sleep(HEDGE_AFTER);
        tokio::pin!(hedge);
        while have < k {
            tokio::select! {
                done = pending.next() => match done {
                    Some((i, Ok(bytes))) => {
                        got[i] = Some(bytes);
                        have += 1;
                    }
                    Some((_, Err(e))) => {
                        self.metrics.network_shards.with_label_values(&["failed"]).inc();
                        tracing::warn!(error = %e, "a shard fetch failed");
                        errors.push(e);
                        if next < total {
                            pending.push(start(next));
                            next += 1;
                        }
                    }
                    None => return Err(format!("only {have} of {k} shards: {}", errors.join("; "))),
                },
                _ = &mut hedge, if next < total => {
                    self.metrics.network_shards.with_label_values(&["hedged"]).inc();
                    pending.push(start(next));
                    next += 1;
                    hedge.as_mut().reset(tokio::time::Instant::now() + HEDGE_AFTER);
                }
            }
        }
        self.metrics
            .network_shards
            .with_label_values(&["ok"])
            .inc_by(k as u64);
        Ok(got)
    }

    /// A media object's plaintext from the network.
    async fn object(&self, video: &str, path: &str) -> Result<Option<Vec<u8>>, String> {
        let known = self.placement(video).await?;
        let p = &known.placement;
        let Some(object) = p.objects.iter().find(|o| o.path == path) else {
            return Ok(None);
        };
        let layout = Layout::new(p.data, p.parity).map_err(|e| e.to_string())?;
        if object.shards.len() != layout.total() {
            return Err(format!(
                "{path}: {} shards placed for a layout of {}",
                object.shards.len(),
                layout.total()
            ));
        }
        let got = self.gather(object, layout.data).await?;
        let refs: Vec<Option<&[u8]>> = got.iter().map(|s| s.as_deref()).collect();
        let sealed = meshcast_shards::decode(layout, &refs).map_err(|e| e.to_string())?;
        let plain = meshcast_shards::open(&known.key, &format!("{video}/{path}"), &sealed)
            .map_err(|e| format!("{path}: {e}"))?;
        if plain.len() as u64 != object.len || *blake3::hash(&plain).as_bytes() != object.hash {
            return Err(format!(
                "{path}: decodes to other bytes than the HUB published"
            ));
        }
        Ok(Some(plain))
    }

    /// Anything the network does not store (playlists, the player page
    /// and its scripts, the HUB's API the page calls), from the HUB:
    /// `target` is the path and query; method, body and the headers an
    /// API call needs pass through.
    async fn ask_hub(&self, request: axum::extract::Request) -> Response {
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}{target}", self.hub);
        let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
            .unwrap_or(reqwest::Method::GET);
        let mut out = self.http.request(method, &url);
        for name in [header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT] {
            if let Some(v) = request.headers().get(&name) {
                out = out.header(name.as_str(), v.as_bytes());
            }
        }
        let body = match axum::body::to_bytes(request.into_body(), 1 << 20).await {
            Ok(b) => b,
            Err(e) => return (StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")).into_response(),
        };
        match out.body(body.to_vec()).send().await {
            Ok(r) => pass_on(r).await,
            Err(e) => (StatusCode::BAD_GATEWAY, format!("{url}: {e}\n")).into_response(),
        }
    }
}

/// The HUB's answer as this origin's.
async fn pass_on(r: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = axum::http::Response::builder().status(status);
    for name in [
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        header::ETAG,
        header::LAST_MODIFIED,
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
    ] {
        if let Some(v) = r.headers().get(name.as_str()) {
            out = out.header(name, v.as_bytes());
        }
    }
    match r.bytes().await {
        Ok(b) => out.body(axum::body::Body::from(b)).map_or_else(
            |_| StatusCode::BAD_GATEWAY.into_response(),
            |r| r.into_response(),
        ),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
    }
}

fn stored_on_network(path: &str) -> bool {
    path.ends_with(".m4s") || path.ends_with(".mp4")
}

async fn other(State(origin): State<Arc<Reader>>, request: axum::extract::Request) -> Response {
    origin.ask_hub(request).await
}

async fn serve(
    State(origin): State<Arc<Reader>>,
    UrlPath((video, path)): UrlPath<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    if !stored_on_network(&path) {
        return origin.ask_hub(request).await;
    }
    match origin.object(&video, &path).await {
        Ok(Some(plain)) => {
            origin
                .metrics
                .network_objects
                .with_label_values(&["network"])
                .inc();
            let etag = format!("\"{}\"", &blake3::hash(&plain).to_hex()[..32]);
            (
                [
                    (header::CONTENT_TYPE, "video/mp4".to_string()),
                    (
                        header::CACHE_CONTROL,
                        "public, max-age=31536000, immutable".to_string(),
                    ),
                    (header::ETAG, etag),
                ],
                plain,
            )
                .into_response()
        }
        Ok(None) => origin.ask_hub(request).await,
        Err(e) => {
            // The HUB may still have it (a video not yet placed, or shards
            // the network lost): fall back rather than fail the viewer.
            origin
                .metrics
                .network_objects
                .with_label_values(&["hub"])
                .inc();
            tracing::warn!(%video, %path, error = %e, "not from the network; asking the HUB");
            origin.ask_hub(request).await
        }
    }
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for NetworkOrigin {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let Some(std) = self.listener.lock().take() else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the network origin cannot listen");
                return;
            }
        };
        let app = Router::new()
            .route("/v/{video}/{*path}", axum::routing::any(serve))
            .fallback(other)
            .with_state(self.reader.clone());
        tokio::select! {
            r = axum::serve(listener, app) => if let Err(e) = r {
                tracing::error!(error = %e, "the network origin stopped");
            },
            _ = shutdown.changed() => {}
        }
    }
}
