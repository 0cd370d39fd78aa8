//! The hub as the edges' origin: `/v/{id}/…` from the content-addressed
//! store. Segments and init segments are immutable (a year); playlists and
//! MPDs get a short max-age; everything has an ETag (its BLAKE3 hash).
//! Files stream from disk with Range and conditional requests
//! (`tower-http`'s `ServeFile`).

use crate::openapi::TAG_PLAYBACK;
use crate::Hub;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::services::ServeFile;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new().routes(routes!(serve))
}

pub fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "m3u8" => "application/vnd.apple.mpegurl",
        "mpd" => "application/dash+xml",
        "m4s" | "mp4" => "video/mp4",
        "vtt" => "text/vtt; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The ETag a published file is served with (its BLAKE3, shortened):
/// receipts name content by it, and audits check them against it.
pub fn etag(hash: &str) -> String {
    format!("\"{}\"", &hash[..32.min(hash.len())])
}

fn cache_control(path: &str) -> &'static str {
    if path.ends_with(".m3u8") || path.ends_with(".mpd") {
        "public, max-age=5"
    } else {
        "public, max-age=31536000, immutable"
    }
}

/// A published file of a video (what edges fetch): playlists, MPDs, init
/// segments and segments, with Range and conditional requests.
#[utoipa::path(get, path = "/v/{id}/{*path}", tag = TAG_PLAYBACK,
    params(("id" = String, Path, description = "The video's id"),
        ("path" = String, Path, description = "The file within it, e.g. `master.m3u8`, `manifest.mpd`, `720p/seg_00001.m4s`"),
        ("Range" = Option<String>, Header, description = "A byte range")),
    responses(
        (status = 200, description = "The file, with its ETag (BLAKE3) and cache lifetime", content_type = "application/octet-stream", body = String),
        (status = 206, description = "The range asked for"),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such file")))]
async fn serve(
    State(hub): State<Arc<Hub>>,
    Path((id, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    let headers = request.headers();
    let status = |s: StatusCode| {
        hub.metrics
            .origin_requests
            .with_label_values(&[s.as_str()])
            .inc();
        s
    };
    let file = match hub.catalog.file(&id, &path) {
        Ok(Some(f)) => f,
        Ok(None) => return (status(StatusCode::NOT_FOUND), "no such file\n").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "catalog read failed");
            return (
                status(StatusCode::SERVICE_UNAVAILABLE),
                "catalog unavailable\n",
            )
                .into_response();
        }
    };
    let etag = etag(&file.hash);
    let common = [
        ("etag", etag.clone()),
        ("cache-control", cache_control(&path).to_string()),
    ];
    if headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return (status(StatusCode::NOT_MODIFIED), common).into_response();
    }
    let Some(blob) = hub.blobs.path(&file.hash) else {
        return (
            status(StatusCode::INTERNAL_SERVER_ERROR),
            "bad blob reference\n",
        )
            .into_response();
    };
    // tower-http streams the file and answers Range and the date
    // conditionals; the ETag and lifetime stay ours.
    let mime = file
        .content_type
        .parse::<mime::Mime>()
        .unwrap_or(mime::APPLICATION_OCTET_STREAM);
    let served = ServeFile::new_with_mime(&blob, &mime)
        .oneshot(request)
        .await;
    let mut response = match served {
        Ok(r) if r.status() != StatusCode::NOT_FOUND => r.map(Body::new),
        Ok(_) => {
            tracing::error!(blob = %blob.display(), "blob missing");
            return (
                status(StatusCode::INTERNAL_SERVER_ERROR),
                "media file missing on the hub\n",
            )
                .into_response();
        }
        Err(e) => match e {},
    };
    status(response.status());
    for (name, value) in common {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}
