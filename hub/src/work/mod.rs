//! Distributed transcoding on the HUB: the job board shared with workers,
//! the worker protocol over HTTP (every call a signed envelope, or a
//! lease's bearer capability for bulk bytes), the check of each result,
//! and the transcode flow that cuts, dispatches and joins (`flow`).
//!
//! Workers open no port: they long-poll `POST /v1/work/lease`, fetch the
//! chunk's cut, upload their segments, and commit. The HUB checks each
//! commitment (`check`) before it pays, and slashes with the evidence the
//! ledger can re-check when a sampled segment is false.

mod check;
mod flow;

pub use flow::{transcode_distributed, workers_available};

use crate::dispatch::{Board, LeaseError};
use crate::nodes::{now_secs, open_envelope, refuse};
use crate::openapi::TAG_WORK;
use crate::Hub;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshcast_control::transcoding::{self, Commitment, Job, Progress};
use meshcast_transcode::{Chunk, ChunkJob, Rung};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use utoipa_axum::{router::OpenApiRouter, routes};

/// How long a lease request waits for work before answering 204.
const LONG_POLL: Duration = Duration::from_secs(20);
/// Largest file a worker may upload (one segment or init segment).
const MAX_UPLOAD: usize = 256 << 20;

/// What the HUB knows about a video being transcoded by workers.
pub struct VideoContext {
    pub video: String,
    /// The original upload: what sampled segments are compared with.
    pub input: PathBuf,
    /// `work/{id}`: cuts, attempts, accepted parts and the joined output.
    pub dir: PathBuf,
    pub chunks: Vec<Chunk>,
    pub rungs: Vec<Rung>,
    pub fps: f64,
    pub duration: f64,
    pub segment_secs: f64,
    pub preset: String,
    /// Who pays for the transcode (the owner's key, else the HUB's).
    pub payer: [u8; 32],
    /// Each rung's init segment hash, pinned by the first accepted chunk.
    pub inits: Mutex<HashMap<String, String>>,
}

impl VideoContext {
    /// Pins the init segments of an accepted chunk (where none is yet).
    pub fn pin_inits(&self, inits: &[(String, String)]) {
        let mut pinned = self.inits.lock().unwrap_or_else(|p| p.into_inner());
        for (rung, hash) in inits {
            pinned.entry(rung.clone()).or_insert_with(|| hash.clone());
        }
    }

    pub fn job(&self, chunk: u32) -> Option<ChunkJob> {
        Some(ChunkJob {
            chunk: self.chunks.get(chunk as usize)?.clone(),
            rungs: self.rungs.clone(),
            fps: self.fps,
            duration: self.duration,
            segment_secs: self.segment_secs,
            preset: self.preset.clone(),
        })
    }

    pub fn cut_path(&self, chunk: u32) -> PathBuf {
        self.dir.join("cuts").join(format!("{chunk}.mp4"))
    }

    /// Where attempt `attempt` of a chunk uploads.
    pub fn attempt_dir(&self, chunk: u32, attempt: u32) -> PathBuf {
        self.dir.join("attempts").join(format!("{chunk}.{attempt}"))
    }

    /// Where a chunk's accepted output is kept until the join.
    pub fn part_dir(&self, chunk: u32) -> PathBuf {
        self.dir.join("parts").join(chunk.to_string())
    }
}

/// The board and the videos on it.
#[derive(Default)]
pub struct Work {
    pub board: Mutex<Board>,
    /// Woken on every change of the board (leases wait on it).
    pub changed: tokio::sync::Notify,
    pub videos: Mutex<HashMap<String, Arc<VideoContext>>>,
}

impl Work {
    pub fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn video(&self, id: &str) -> Option<Arc<VideoContext>> {
        self.videos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    // Only uploads of output files may be larger than axum's default.
    let uploads = OpenApiRouter::new()
        .routes(routes!(upload))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD));
    OpenApiRouter::new()
        .routes(routes!(lease))
        .routes(routes!(progress))
        .routes(routes!(commit))
        .routes(routes!(source))
        .routes(routes!(jobs))
        .merge(uploads)
}

fn new_capability() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS has randomness");
    hex::encode(b)
}

fn lease_refusal(e: LeaseError) -> Response {
    let status = match e {
        LeaseError::Unknown(..) => StatusCode::NOT_FOUND,
        _ => StatusCode::CONFLICT,
    };
    refuse(status, e)
}

/// `POST /v1/work/lease`: the oldest chunk this worker may take, within
/// `LONG_POLL`, or 204.
#[utoipa::path(post, path = "/v1/work/lease", tag = TAG_WORK,
    request_body(content = String, content_type = "application/octet-stream", description = "A signed envelope (domain `meshcast-transcode-lease-v1`) whose body is empty"),
    responses(
        (status = 200, description = "The job: video, chunk, attempt, rungs, the capability for its bulk bytes and the lease's expiry", body = Object),
        (status = 204, description = "No work within the poll"),
        (status = 400, description = "Not a valid envelope (bad signature, stale timestamp, replayed nonce) or body", body = Object),
        (status = 403, description = "Not an admitted transcoder", body = Object)))]
async fn lease(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let (_, _, id) = match open_envelope(&hub, transcoding::LEASE, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Err(r) = crate::nodes::admitted_node(&hub, &id, Some("transcode")) {
        return *r;
    }
    let _waiting = hub.long_poll("lease");
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    let lease_secs = hub.config.transcode.lease.0.as_secs().max(1);
    loop {
        let changed = hub.work.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let granted = hub
            .work
            .board()
            .lease(&id, now_secs(), lease_secs, new_capability);
        if let Some(l) = granted {
            let Some(spec) = hub.work.video(&l.video).and_then(|v| v.job(l.chunk)) else {
                continue;
            };
            tracing::info!(worker = %id, video = %l.video, chunk = l.chunk, attempt = l.attempt, "chunk leased");
            let base = format!("/v1/work/{}/{}/{}", l.video, l.chunk, l.attempt);
            return Json(Job {
                video: l.video,
                chunk: l.chunk,
                attempt: l.attempt,
                expires: l.expires,
                source_path: format!("{base}/source"),
                upload_path: format!("{base}/files"),
                capability: l.capability,
                spec: serde_json::to_value(spec).unwrap_or_default(),
            })
            .into_response();
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => return StatusCode::NO_CONTENT.into_response(),
            // Stopping: nothing more will be leased here.
            _ = hub.stopping() => return StatusCode::NO_CONTENT.into_response(),
        }
    }
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// The video of a lease whose capability the request carries, or the
/// refusal.
fn leased_video(
    hub: &Hub,
    (video, chunk, attempt): (&str, u32, u32),
    headers: &HeaderMap,
) -> Result<Arc<VideoContext>, Response> {
    if !hub
        .work
        .board()
        .authorizes(video, chunk, attempt, bearer(headers))
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "no current lease with this capability",
        ));
    }
    hub.work
        .video(video)
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "no such video in transcoding"))
}

/// `GET …/source`: the chunk's cut, for the lease holder.
#[utoipa::path(get, path = "/v1/work/{video}/{chunk}/{attempt}/source", tag = TAG_WORK,
    params(("video" = String, Path, description = "The video's id"),
        ("chunk" = u32, Path, description = "The chunk's index"),
        ("attempt" = u32, Path, description = "The lease's attempt"), ("Authorization" = String, Header, description = "`Bearer` and the lease's capability (from the lease)")),
    responses(
        (status = 200, description = "The chunk's cut", content_type = "video/mp4", body = String),
        (status = 403, description = "No current lease with this capability", body = Object)))]
async fn source(
    State(hub): State<Arc<Hub>>,
    Path((video, chunk, attempt)): Path<(String, u32, u32)>,
    headers: HeaderMap,
) -> Response {
    let ctx = match leased_video(&hub, (&video, chunk, attempt), &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match tokio::fs::read(ctx.cut_path(chunk)).await {
        Ok(bytes) => ([(http::header::CONTENT_TYPE, "video/mp4")], bytes).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Output file names a worker may upload.
fn valid_output_name(file: &str) -> bool {
    file == "init.mp4"
        || file
            .strip_prefix("seg_")
            .and_then(|f| f.strip_suffix(".m4s"))
            .is_some_and(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `PUT …/files/{rung}/{file}`: one output file of the lease holder.
#[utoipa::path(put, path = "/v1/work/{video}/{chunk}/{attempt}/files/{rung}/{file}", tag = TAG_WORK,
    params(("video" = String, Path, description = "The video's id"),
        ("chunk" = u32, Path, description = "The chunk's index"),
        ("attempt" = u32, Path, description = "The lease's attempt"),
        ("rung" = String, Path, description = "A rung of the job, e.g. `720p`"),
        ("file" = String, Path, description = "`init.mp4` or `seg_NNNNN.m4s`"), ("Authorization" = String, Header, description = "`Bearer` and the lease's capability (from the lease)")),
    request_body(content = String, content_type = "video/mp4", description = "The file (at most 256 MiB)"),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "Not an output of this job", body = Object),
        (status = 403, description = "No current lease with this capability", body = Object)))]
async fn upload(
    State(hub): State<Arc<Hub>>,
    Path((video, chunk, attempt, rung, file)): Path<(String, u32, u32, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match leased_video(&hub, (&video, chunk, attempt), &headers) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !ctx.rungs.iter().any(|r| r.name == rung) || !valid_output_name(&file) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "{rung}/{file} is not an output of this job (rungs: init.mp4 and seg_NNNNN.m4s)"
            ),
        );
    }
    let dir = ctx.attempt_dir(chunk, attempt).join(&rung);
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{file}.part"));
        std::fs::write(&tmp, &body)?;
        std::fs::rename(&tmp, dir.join(&file))
    })
    .await;
    match written {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `POST /v1/work/progress`: renews the lease.
#[utoipa::path(post, path = "/v1/work/progress", tag = TAG_WORK,
    request_body(content = String, content_type = "application/octet-stream", description = "A signed envelope (domain `meshcast-transcode-progress-v1`) whose body is JSON `{{video, chunk, attempt, percent}}`"),
    responses(
        (status = 200, description = "The lease's new expiry", body = Object),
        (status = 400, description = "Not a valid envelope (bad signature, stale timestamp, replayed nonce) or body", body = Object),
        (status = 404, description = "No such lease", body = Object),
        (status = 409, description = "The lease is not this worker's or has ended", body = Object)))]
async fn progress(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let (env, _, id) = match open_envelope(&hub, transcoding::PROGRESS, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let p: Progress = match serde_json::from_slice(&env.body) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("progress body: {e}")),
    };
    let lease_secs = hub.config.transcode.lease.0.as_secs().max(1);
    let r = hub.work.board().progress(
        (&p.video, p.chunk, p.attempt),
        &id,
        p.fraction,
        now_secs(),
        lease_secs,
    );
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => lease_refusal(e),
    }
}

/// `POST /v1/work/commit`: a worker's signed commitment; answered once
/// the HUB has checked the output against it.
#[utoipa::path(post, path = "/v1/work/commit", tag = TAG_WORK,
    request_body(content = String, content_type = "application/octet-stream", description = "A signed envelope (domain `meshcast-transcode-commit-v1`) whose body is the commitment: every output file's hash"),
    responses(
        (status = 200, description = "The check's verdict: `accepted`, `paid`, `slashed`", body = Object),
        (status = 400, description = "Not a valid envelope (bad signature, stale timestamp, replayed nonce) or body", body = Object),
        (status = 404, description = "No such lease", body = Object),
        (status = 409, description = "The lease is not this worker's or has ended", body = Object)))]
async fn commit(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let (env, _, id) = match open_envelope(&hub, transcoding::COMMIT, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let c: Commitment = match serde_json::from_slice(&env.body) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("commitment body: {e}")),
    };
    let Some(ctx) = hub.work.video(&c.video) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("video {} is not being transcoded", c.video),
        );
    };
    let begun = hub
        .work
        .board()
        .begin_check((&c.video, c.chunk, c.attempt), &id, now_secs());
    if let Err(e) = begun {
        tracing::warn!(worker = %id, video = %c.video, chunk = c.chunk, attempt = c.attempt, error = %e, "result refused");
        return lease_refusal(e);
    }
    let verdict = check::check(&hub, &ctx, &c, &id, &body).await;
    let passed = verdict.passed;
    hub.work
        .board()
        .finish(&c.video, c.chunk, passed, &verdict.outcome);
    hub.work.changed.notify_waiters();
    let status = if passed {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (
        status,
        Json(json!({
            "accepted": passed,
            "outcome": verdict.outcome,
            "checked": verdict.checked,
            "slashed": verdict.slashed,
        })),
    )
        .into_response()
}

/// `GET /v1/jobs`: every video on the board, each chunk's state and
/// history (for operators: the admin key).
#[utoipa::path(get, path = "/v1/jobs", tag = TAG_WORK,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "`videos`: each video on the board with every chunk's state and history", body = Object),
        (status = 403, description = "Not the admin key", body = Object)))]
async fn jobs(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(r) = crate::accounts::admin(&hub, &headers) {
        return *r;
    }
    let board = hub.work.board();
    let videos: Vec<_> = board
        .all()
        .map(|(video, chunks)| json!({ "video": video, "chunks": chunks }))
        .collect();
    Json(json!({ "videos": videos })).into_response()
}

/// The board's view of a video (for `GET /v1/videos/{id}`), if on it.
pub fn chunk_view(hub: &Hub, video: &str) -> Option<serde_json::Value> {
    let board = hub.work.board();
    board
        .chunks(video)
        .map(|c| serde_json::to_value(c).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_output_names_are_uploaded() {
        for ok in ["init.mp4", "seg_00001.m4s", "seg_12345.m4s"] {
            assert!(super::valid_output_name(ok), "{ok}");
        }
        for bad in [
            "../x",
            "seg_1.m4s",
            "seg_0000a.m4s",
            "init.mp4/..",
            "seg_00001.m4s.part",
            "",
        ] {
            assert!(!super::valid_output_name(bad), "{bad}");
        }
    }
}
