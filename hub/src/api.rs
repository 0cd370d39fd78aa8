//! The JSON API: videos, their status and playback URLs; health; metrics.

use crate::accounts::caller;
use crate::catalog::{Status, VideoRecord};
use crate::nodes::refuse;
use crate::openapi::{TAG_OPERATIONS, TAG_VIDEOS};
use crate::{tus, Hub};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(list, tus::create))
        .routes(routes!(show, remove))
        .routes(routes!(tus::head, tus::patch, tus::terminate))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
}

/// Liveness: answers while the process serves.
#[utoipa::path(get, path = "/healthz", tag = TAG_OPERATIONS,
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

pub(crate) fn view(hub: &Hub, v: &VideoRecord) -> Value {
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
        "account": v.account,
        "upload": { "length": v.upload_length, "url": format!("/v1/uploads/{}", v.id) },
        "hls": urls(&format!("/v/{}/master.m3u8", v.id)),
        "dash": urls(&format!("/v/{}/manifest.mpd", v.id)),
        "player": urls(&format!("/play/{}", v.id)),
        "chunks": crate::work::chunk_view(hub, &v.id).or_else(|| v.chunks.clone()),
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

/// `?limit=N&after=ID`: a page of videos, oldest first.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Page {
    /// At most this many videos (1 to 100; 100 without it).
    limit: Option<usize>,
    /// The `next` of the page before.
    after: Option<String>,
}

const MAX_PAGE: usize = 100;

/// `GET /v1/videos`: the caller's videos (the admin's: all), in pages of
/// at most 100, oldest first; `next` is the `after` for the next page.
#[utoipa::path(get, path = "/v1/videos", tag = TAG_VIDEOS, params(Page),
    security(("api_key" = []), ("admin_key" = [])),
    responses(
        (status = 200, description = "`videos` (each as `GET /v1/videos/{id}` shows it) and `next`, the `after` of the next page (absent on the last)", body = Object),
        (status = 400, description = "A bad `limit` or `after`", body = Object),
        (status = 401, description = "No or a bad API key", body = Object)))]
async fn list(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Response {
    let caller = match caller(&hub, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let mut videos = match hub.catalog.videos() {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    videos.retain(|v| caller.owns(v.account.as_deref()));
    videos.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    let start = match &page.after {
        Some(after) => match videos.iter().position(|v| &v.id == after) {
            Some(i) => i + 1,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": format!("after={after:?} is not one of this account's videos")})),
                )
                    .into_response()
            }
        },
        None => 0,
    };
    let limit = page.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let chunk: Vec<&VideoRecord> = videos.iter().skip(start).take(limit).collect();
    let next = (start + chunk.len() < videos.len())
        .then(|| chunk.last().map(|v| v.id.clone()))
        .flatten();
    Json(json!({
        "videos": chunk.iter().map(|v| view(&hub, v)).collect::<Vec<_>>(),
        "next": next,
    }))
    .into_response()
}

/// `GET /v1/videos/{id}`: everything for its owner (and the admin); a
/// ready video's public facts for anyone (its player page is public).
#[utoipa::path(get, path = "/v1/videos/{id}", tag = TAG_VIDEOS,
    params(("id" = String, Path, description = "The video's id, as `POST /v1/videos` gave it")),
    security((), ("api_key" = []), ("admin_key" = [])),
    responses(
        (status = 200, description = "The video: `status` (`uploading`, `transcoding`, `ready`, `failed`), `percent`, `reason`, `duration`, `renditions`, `policy`, `chunks`, and when ready its `hls`, `dash` and `player` URLs at each edge. Without its owner's key only a ready video is shown, with its public facts", body = Object),
        (status = 404, description = "No such video (or not yours and not ready)", body = Object)))]
async fn show(State(hub): State<Arc<Hub>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no video {id:?}")})),
        )
            .into_response()
    };
    let v = match hub.catalog.video(&id) {
        Ok(Some(v)) => v,
        Ok(None) => return not_found(),
        Err(e) => return internal(e),
    };
    let owner = headers.contains_key("authorization")
        && match caller(&hub, &headers) {
            Ok(c) => c.owns(v.account.as_deref()),
            Err(r) => return *r,
        };
    if owner {
        return Json(view(&hub, &v)).into_response();
    }
    if v.status != Status::Ready {
        return not_found();
    }
    let mut public = view(&hub, &v);
    if let Some(o) = public.as_object_mut() {
        o.remove("upload");
        o.remove("account");
    }
    Json(public).into_response()
}

/// `DELETE /v1/videos/{id}`: removes a ready or failed video (or an
/// upload), its files from the origin and its shards from the network's
/// books; tokens are no longer issued for it.
#[utoipa::path(delete, path = "/v1/videos/{id}", tag = TAG_VIDEOS,
    params(("id" = String, Path, description = "The video's id")),
    security(("api_key" = []), ("admin_key" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such video of yours", body = Object),
        (status = 409, description = "Being transcoded: delete it once it is ready or failed", body = Object)))]
async fn remove(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match caller(&hub, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let video = match hub.catalog.video(&id) {
        Ok(Some(v)) if caller.owns(v.account.as_deref()) => v,
        Ok(_) => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("no video {id:?} on this account"),
            )
        }
        Err(e) => return internal(e),
    };
    if matches!(video.status, Status::Queued | Status::Transcoding) {
        return refuse(
            StatusCode::CONFLICT,
            format!("video {id} is being transcoded; delete it once it is ready or failed"),
        );
    }
    if video.status == Status::Uploading {
        let _ = tokio::fs::remove_file(tus::part_path(&hub, &id)).await;
    }
    if let Err(e) = hub
        .catalog
        .delete_video(&id)
        .and_then(|()| hub.placements.remove(&id))
    {
        return internal(e);
    }
    if video.policy == crate::catalog::Policy::Signed {
        hub.refresh_issuers();
    }
    tracing::info!(video = %id, "video deleted");
    StatusCode::NO_CONTENT.into_response()
}

/// The hub's Prometheus series, its ledger's included.
#[utoipa::path(get, path = "/metrics", tag = TAG_OPERATIONS,
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&hub.metrics.registry.gather(), &mut out);
    out.extend_from_slice(hub.ledger.running.render_metrics().as_bytes());
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}
