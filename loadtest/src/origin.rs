//! The origin behind both servers: fixed objects, a slow path for cold-miss
//! tests, and a synthetic HLS ladder for the viewer simulation. It counts
//! every request by path.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rungs of the synthetic ladder: name, bits per second.
pub const LADDER: [(&str, u64); 3] = [("360p", 800_000), ("720p", 2_800_000), ("1080p", 5_000_000)];

pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
}

struct OriginState {
    hits: Mutex<HashMap<String, u64>>,
    blob: Bytes,
    segment_secs: f64,
    segments: usize,
}

impl Origin {
    pub async fn start(segment_secs: f64, segments: usize) -> anyhow::Result<Origin> {
        let blob = Bytes::from(
            (0..8_000_000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
                .collect::<Vec<u8>>(),
        );
        let state = Arc::new(OriginState {
            hits: Mutex::new(HashMap::new()),
            blob,
            segment_secs,
            segments,
        });
        let app = Router::new()
            .route("/obj/{name}", get(object))
            .route("/slow/{tag}/{name}", get(slow))
            .route("/hls/master.m3u8", get(master))
            .route("/hls/{rung}/index.m3u8", get(media))
            .route("/hls/{rung}/{seg}", get(segment))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Origin { addr, state })
    }

    pub fn hits(&self, path: &str) -> u64 {
        self.state
            .hits
            .lock()
            .map(|h| h.get(path).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

fn count(state: &OriginState, path: String) {
    if let Ok(mut h) = state.hits.lock() {
        *h.entry(path).or_default() += 1;
    }
}

/// Object sizes by name: `1k.bin`, `100k.bin`, `2m.m4s`, or `N.bin` bytes.
pub fn size_of(name: &str) -> Option<usize> {
    let stem = name.split('.').next()?;
    let (num, mult) = if let Some(k) = stem.strip_suffix('k') {
        (k, 1000)
    } else if let Some(m) = stem.strip_suffix('m') {
        (m, 1_000_000)
    } else {
        (stem, 1)
    };
    num.parse::<usize>()
        .ok()
        .map(|n| n * mult)
        .filter(|n| *n <= 8_000_000)
}

fn body(state: &OriginState, len: usize, ttl: u32, content_type: &'static str) -> Response {
    let headers = [
        ("cache-control", format!("public, max-age={ttl}")),
        ("content-type", content_type.to_string()),
        ("etag", format!("\"{len}\"")),
    ];
    (headers, state.blob.slice(..len)).into_response()
}

async fn object(State(s): State<Arc<OriginState>>, Path(name): Path<String>) -> Response {
    count(&s, format!("/obj/{name}"));
    match size_of(&name) {
        Some(n) => body(&s, n, 86400, "application/octet-stream"),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn slow(
    State(s): State<Arc<OriginState>>,
    Path((tag, name)): Path<(String, String)>,
) -> Response {
    count(&s, format!("/slow/{tag}/{name}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    match size_of(&name) {
        Some(n) => body(&s, n, 86400, "video/mp4"),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn master(State(s): State<Arc<OriginState>>) -> Response {
    count(&s, "/hls/master.m3u8".into());
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:7\n");
    for (name, bps) in LADDER {
        text.push_str(&format!("#EXT-X-STREAM-INF:BANDWIDTH={bps},CODECS=\"avc1.64001f,mp4a.40.2\"\n{name}/index.m3u8\n"));
    }
    (
        [
            ("content-type", "application/vnd.apple.mpegurl"),
            ("cache-control", "public, max-age=5"),
        ],
        text,
    )
        .into_response()
}

async fn media(State(s): State<Arc<OriginState>>, Path(rung): Path<String>) -> Response {
    count(&s, format!("/hls/{rung}/index.m3u8"));
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{}\n#EXT-X-PLAYLIST-TYPE:VOD\n",
        s.segment_secs.ceil() as u64
    );
    for i in 0..s.segments {
        text.push_str(&format!("#EXTINF:{:.3},\nseg_{i:05}.m4s\n", s.segment_secs));
    }
    text.push_str("#EXT-X-ENDLIST\n");
    (
        [
            ("content-type", "application/vnd.apple.mpegurl"),
            ("cache-control", "public, max-age=5"),
        ],
        text,
    )
        .into_response()
}

async fn segment(
    State(s): State<Arc<OriginState>>,
    Path((rung, seg)): Path<(String, String)>,
    _h: HeaderMap,
) -> Response {
    count(&s, format!("/hls/{rung}/{seg}"));
    let Some((_, bps)) = LADDER.iter().find(|(n, _)| *n == rung) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = (*bps as f64 / 8.0 * s.segment_secs) as usize;
    body(&s, len.min(s.blob.len()), 86400, "video/mp4")
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::size_of("1k.bin"), Some(1000));
        assert_eq!(super::size_of("2m.m4s"), Some(2_000_000));
        assert_eq!(super::size_of("123.bin"), Some(123));
        assert_eq!(super::size_of("9m.bin"), None);
    }
}
