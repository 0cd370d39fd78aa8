//! The JSON API: videos, their status and playback URLs; health; metrics.

use crate::catalog::{Status, VideoRecord};
use crate::{tus, Hub};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/v1/videos", get(list).post(tus::create))
        .route("/v1/videos/{id}", get(show))
        .route(
            "/v1/uploads/{id}",
            head(tus::head).patch(tus::patch).delete(tus::terminate),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
}

fn view(hub: &Hub, v: &VideoRecord) -> Value {
    let ready = v.status == Status::Ready;
    let urls = |suffix: &str| -> Vec<String> {
        if !ready {
            return Vec::new();
        }
        hub.config
            .hub
            .edges
            .iter()
            .map(|e| format!("{}{suffix}", e.trim_end_matches('/')))
            .collect()
    };
    json!({
        "id": v.id,
        "name": v.name,
        "status": v.status,
        "percent": (v.percent * 10.0).round() / 10.0,
        "reason": v.reason,
        "duration": v.duration,
        "renditions": v.renditions,
        "policy": v.policy,
        "owner": v.owner,
        "upload": { "length": v.upload_length, "url": format!("/v1/uploads/{}", v.id) },
        "hls": urls(&format!("/v/{}/master.m3u8", v.id)),
        "dash": urls(&format!("/v/{}/manifest.mpd", v.id)),
        "player": urls(&format!("/play/{}", v.id)),
    })
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "catalog read failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": "the catalog is unavailable"})),
    )
        .into_response()
}

async fn list(State(hub): State<Arc<Hub>>) -> Response {
    match hub.catalog.videos() {
        Ok(videos) => {
            Json(json!({ "videos": videos.iter().map(|v| view(&hub, v)).collect::<Vec<_>>() }))
                .into_response()
        }
        Err(e) => internal(e),
    }
}

async fn show(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Response {
    match hub.catalog.video(&id) {
        Ok(Some(v)) => Json(view(&hub, &v)).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no video {id:?}")})),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&hub.metrics.registry.gather(), &mut out);
    out.extend_from_slice(hub.ledger.running.render_metrics().as_bytes());
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}
