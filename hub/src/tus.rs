//! Resumable uploads with tus 1.0.0 (core + creation + termination), so
//! tus-js-client and Uppy work unchanged. Written by hand: the protocol is
//! a handful of headers, and no maintained Rust crate serves it on axum.
//! The partial file on disk is the truth for the offset, so an upload cut
//! off mid-PATCH resumes from whatever bytes arrived.

use crate::accounts::{caller, Caller};
use crate::catalog::{Policy, Status, VideoRecord};
use crate::openapi::TAG_UPLOADS;
use crate::Hub;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

pub const TUS_VERSION: &str = "1.0.0";
const EXPOSED: &str = "Location, Upload-Offset, Upload-Length, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size";
const ALLOWED: &str = "Content-Type, Upload-Offset, Upload-Length, Upload-Metadata, Tus-Resumable, Upload-Defer-Length, Authorization";

fn tus_error(status: StatusCode, msg: &str) -> Response {
    (status, [("tus-resumable", TUS_VERSION)], format!("{msg}\n")).into_response()
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// CORS for browser uploaders and players; answers preflights itself.
pub async fn cors(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mut resp = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(EXPOSED),
    );
    if preflight {
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, HEAD, POST, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static(ALLOWED),
        );
        h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
        h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
        h.insert(
            "tus-extension",
            HeaderValue::from_static("creation,termination"),
        );
    }
    resp
}

fn check_version(h: &HeaderMap) -> Result<(), Box<Response>> {
    match h.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        _ => Err(Box::new(tus_error(
            StatusCode::PRECONDITION_FAILED,
            "send `Tus-Resumable: 1.0.0` (this server speaks tus 1.0.0)",
        ))),
    }
}

/// One `Upload-Metadata` value (base64 per the tus spec), as text.
fn metadata(h: &HeaderMap, wanted: &[&str]) -> Option<String> {
    let meta = h.get("upload-metadata")?.to_str().ok()?;
    for pair in meta.split(',') {
        let mut it = pair.trim().splitn(2, ' ');
        let (key, value) = (it.next()?, it.next().unwrap_or(""));
        if wanted.contains(&key) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()?;
            return String::from_utf8(bytes)
                .ok()
                .map(|s| s.chars().filter(|c| !c.is_control()).take(200).collect());
        }
    }
    None
}

/// `policy` (public | signed) and `owner` (hex Ed25519 key) from metadata.
fn metadata_policy(h: &HeaderMap) -> Result<(Policy, Option<String>), String> {
    let policy = match metadata(h, &["policy"]).as_deref() {
        None | Some("public") => Policy::Public,
        Some("signed") => Policy::Signed,
        Some(other) => return Err(format!("policy {other:?}: use public or signed")),
    };
    let owner = metadata(h, &["owner"]);
    if let Some(o) = &owner {
        let mut k = [0u8; 32];
        if hex::decode_to_slice(o, &mut k).is_err() || !meshcast_control::ed25519::is_key(&k) {
            return Err(
                "owner must be an Ed25519 public key, 64 hex digits (meshcast keys gen prints one)"
                    .into(),
            );
        }
    }
    if policy == Policy::Signed && owner.is_none() {
        return Err("policy signed needs an owner key in the metadata".into());
    }
    Ok((policy, owner))
}

pub fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&SEQ.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.finalize().to_hex()[..16].to_string()
}

pub(crate) fn part_path(hub: &Hub, id: &str) -> std::path::PathBuf {
    hub.config
        .hub
        .data_dir
        .join("uploads")
        .join(format!("{id}.part"))
}

/// The caller, if it owns upload `id`; otherwise the answer (401, or 404
/// so that another account's uploads cannot even be probed for).
fn owned_upload(hub: &Hub, headers: &HeaderMap, id: &str) -> Result<VideoRecord, Box<Response>> {
    let caller = caller(hub, headers)?;
    match hub.catalog.video(id) {
        Ok(Some(v)) if caller.owns(v.account.as_deref()) => Ok(v),
        Ok(_) => Err(Box::new(tus_error(
            StatusCode::NOT_FOUND,
            "no such upload on this account",
        ))),
        Err(e) => {
            tracing::error!(error = %e, "catalog read failed");
            Err(Box::new(tus_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the catalog is unavailable",
            )))
        }
    }
}

/// Refuses an upload of `length` bytes past the account's quotas.
fn check_quota(hub: &Hub, caller: &Caller, length: u64) -> Result<(), Box<Response>> {
    let Caller::Account(a) = caller else {
        return Ok(());
    };
    let too_large = |msg: String| Box::new(tus_error(StatusCode::PAYLOAD_TOO_LARGE, &msg));
    if length > a.max_upload_bytes {
        return Err(too_large(format!(
            "the file is {length} bytes; this account may upload at most {} at a time",
            a.max_upload_bytes
        )));
    }
    let stored = hub.stored_bytes(&a.id).map_err(|e| {
        tracing::error!(error = %e, "catalog read failed");
        Box::new(tus_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the catalog is unavailable",
        ))
    })?;
    if stored.saturating_add(length) > a.max_stored_bytes {
        return Err(too_large(format!(
            "this account holds {stored} bytes of its {} byte quota; a {length} byte upload does not fit (delete videos, or ask the operator for more)",
            a.max_stored_bytes
        )));
    }
    Ok(())
}

/// `POST /v1/videos`: creates the video and its upload, for the caller's
/// account.
#[utoipa::path(post, path = "/v1/videos", tag = TAG_UPLOADS,
    params(("Tus-Resumable" = String, Header, description = "`1.0.0`", example = "1.0.0"),
        ("Upload-Length" = u64, Header, description = "The file's size in bytes", example = 1000),
        ("Upload-Metadata" = Option<String>, Header, description = "tus metadata: `filename`, `policy` (`public` or `signed`), `owner` (hex Ed25519 key for signed videos), each base64")),
    security(("api_key" = []), ("admin_key" = [])),
    responses(
        (status = 201, description = "Created: `Location` is the upload's URL (`/v1/uploads/{id}`), the video's id its last segment"),
        (status = 400, description = "A bad tus header or metadata"),
        (status = 401, description = "No or a bad API key"),
        (status = 413, description = "Past the account's upload or storage quota")))]
pub async fn create(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(r) = check_version(&headers) {
        return *r;
    }
    let caller = match caller(&hub, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if headers.contains_key("upload-defer-length") {
        return tus_error(
            StatusCode::BAD_REQUEST,
            "Upload-Defer-Length is not supported; send Upload-Length",
        );
    }
    let Some(length) = header_u64(&headers, "upload-length") else {
        return tus_error(
            StatusCode::BAD_REQUEST,
            "missing or invalid Upload-Length header (the file size in bytes)",
        );
    };
    let max = hub.config.hub.max_upload_size.0;
    if length > max {
        return tus_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the file is {length} bytes; this hub accepts at most {max}"),
        );
    }
    if let Err(r) = check_quota(&hub, &caller, length) {
        return *r;
    }
    let id = new_id();
    let (policy, owner) = match metadata_policy(&headers) {
        Ok(p) => p,
        Err(why) => return tus_error(StatusCode::BAD_REQUEST, &why),
    };
    let name = metadata(&headers, &["filename", "name"]).unwrap_or_else(|| format!("video-{id}"));
    if let Err(e) = tokio::fs::File::create(part_path(&hub, &id)).await {
        tracing::error!(error = %e, "cannot create upload file");
        return tus_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the hub cannot store uploads right now",
        );
    }
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let record = VideoRecord {
        id: id.clone(),
        name,
        status: Status::Uploading,
        upload_length: length,
        percent: 0.0,
        reason: None,
        duration: None,
        renditions: Vec::new(),
        created,
        policy,
        owner,
        account: caller.account_id().map(str::to_string),
        chunks: None,
    };
    if let Err(e) = hub.catalog.put_video(&record) {
        tracing::error!(error = %e, "catalog write failed");
        return tus_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the hub cannot record uploads right now",
        );
    }
    if record.policy == Policy::Signed {
        hub.refresh_issuers();
    }
    tracing::info!(video = %id, length, "upload created");
    if length == 0 {
        hub.finish_upload(&id);
    }
    (
        StatusCode::CREATED,
        [
            ("location", format!("/v1/uploads/{id}")),
            ("tus-resumable", TUS_VERSION.to_string()),
        ],
    )
        .into_response()
}

async fn offset_of(hub: &Hub, id: &str) -> Option<u64> {
    tokio::fs::metadata(part_path(hub, id))
        .await
        .ok()
        .map(|m| m.len())
}

/// `HEAD /v1/uploads/{id}`: how much has arrived.
#[utoipa::path(head, path = "/v1/uploads/{id}", tag = TAG_UPLOADS,
    params(("id" = String, Path, description = "The video's id"), ("Tus-Resumable" = String, Header, description = "`1.0.0`", example = "1.0.0")),
    security(("api_key" = []), ("admin_key" = [])),
    responses(
        (status = 200, description = "`Upload-Offset`: the bytes that have arrived; `Upload-Length`"),
        (status = 404, description = "No such upload of yours")))]
pub async fn head(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let video = match owned_upload(&hub, &headers, &id) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let offset = match video.status {
        Status::Uploading => offset_of(&hub, &id).await.unwrap_or(0),
        _ => video.upload_length,
    };
    if video.status == Status::Uploading && offset == video.upload_length {
        // Every byte is stored but the video was never queued: the hub
        // stopped in between (a crash). No PATCH is left to do it, so this
        // answer does, unless a PATCH holding the upload is about to.
        if let Some(_guard) = hub.lock_upload(&id) {
            tracing::warn!(video = %id, "the upload was whole on disk but not queued");
            hub.finish_upload(&id);
        }
    }
    tracing::info!(video = %id, offset, length = video.upload_length, "upload offset asked");
    (
        StatusCode::OK,
        [
            ("upload-offset", offset.to_string()),
            ("upload-length", video.upload_length.to_string()),
            ("cache-control", "no-store".to_string()),
            ("tus-resumable", TUS_VERSION.to_string()),
        ],
    )
        .into_response()
}

/// `PATCH /v1/uploads/{id}`: appends bytes at `Upload-Offset`.
#[utoipa::path(patch, path = "/v1/uploads/{id}", tag = TAG_UPLOADS,
    params(("id" = String, Path, description = "The video's id"), ("Tus-Resumable" = String, Header, description = "`1.0.0`", example = "1.0.0"),
        ("Upload-Offset" = u64, Header, description = "Where these bytes start: the offset `HEAD` answered")),
    request_body(content = [u8], content_type = "application/offset+octet-stream", description = "The next bytes of the file"),
    security(("api_key" = []), ("admin_key" = [])),
    responses(
        (status = 204, description = "Taken: `Upload-Offset` is the new offset; the last bytes start the transcode"),
        (status = 404, description = "No such upload of yours"),
        (status = 409, description = "`Upload-Offset` is not where the upload stands (ask `HEAD`)"),
        (status = 415, description = "Not `application/offset+octet-stream`")))]
pub async fn patch(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = check_version(&headers) {
        return *r;
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/offset+octet-stream")
    {
        return tus_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PATCH bodies must be Content-Type: application/offset+octet-stream",
        );
    }
    let video = match owned_upload(&hub, &headers, &id) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(claimed) = header_u64(&headers, "upload-offset") else {
        return tus_error(
            StatusCode::BAD_REQUEST,
            "missing or invalid Upload-Offset header",
        );
    };
    if video.status != Status::Uploading {
        return if claimed == video.upload_length {
            (
                StatusCode::NO_CONTENT,
                [
                    ("upload-offset", claimed.to_string()),
                    ("tus-resumable", TUS_VERSION.into()),
                ],
            )
                .into_response()
        } else {
            tus_error(StatusCode::CONFLICT, "this upload is already complete")
        };
    }
    // Stored bytes and the queueing of a finished upload must not part:
    // hyper drops a handler whose client hangs up (a reload right after the
    // last byte), and HEAD would then call complete a video never queued.
    // A task of its own runs to the end whatever the connection does.
    let task = tokio::spawn(append(hub, id, video, claimed, body));
    match task.await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, "upload task failed");
            tus_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the hub cannot store this upload right now",
            )
        }
    }
}

/// Appends a PATCH body at `claimed`, holding the upload's lock, and queues
/// the video when the last byte is in.
async fn append(
    hub: Arc<Hub>,
    id: String,
    video: VideoRecord,
    claimed: u64,
    body: Body,
) -> Response {
    let Some(guard) = take_upload(&hub, &id).await else {
        return tus_error(
            StatusCode::LOCKED,
            "another PATCH for this upload is still in progress",
        );
    };
    let current = offset_of(&hub, &id).await.unwrap_or(0);
    if claimed != current {
        return tus_error(StatusCode::CONFLICT, &format!("Upload-Offset is {claimed} but the hub has {current} bytes; HEAD the upload and resume from there"));
    }
    let mut file = match tokio::fs::OpenOptions::new()
        .append(true)
        .open(part_path(&hub, &id))
        .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(video = %id, error = %e, "cannot open upload file");
            return tus_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the hub cannot store this upload right now",
            );
        }
    };
    let (offset, failure) = copy_body(
        &hub,
        &id,
        &guard,
        &mut file,
        current,
        video.upload_length,
        body,
    )
    .await;
    let _ = file.flush().await;
    let _ = file.sync_data().await;
    if let Some(why) = failure {
        tracing::warn!(video = %id, offset, reason = %why, "PATCH ended early; the upload can resume");
        let status = if why.starts_with("more bytes") {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        return tus_error(status, &why);
    }
    tracing::info!(video = %id, from = current, to = offset, "PATCH stored");
    if offset == video.upload_length {
        hub.finish_upload(&id);
    }
    (
        StatusCode::NO_CONTENT,
        [
            ("upload-offset", offset.to_string()),
            ("tus-resumable", TUS_VERSION.to_string()),
        ],
    )
        .into_response()
}

/// The upload's lock. A client resuming after a network drop may arrive
/// before the hub has noticed the old connection is dead: the newer PATCH
/// takes over, after up to 3 s.
async fn take_upload(hub: &Arc<Hub>, id: &str) -> Option<UploadGuard> {
    for _ in 0..60 {
        if let Some(g) = hub.lock_upload(id) {
            return Some(g);
        }
        hub.supersede_upload(id);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

/// Writes the body after `offset`; the offset reached and why it stopped
/// short, if it did.
async fn copy_body(
    hub: &Hub,
    id: &str,
    guard: &UploadGuard,
    file: &mut tokio::fs::File,
    mut offset: u64,
    length: u64,
    body: Body,
) -> (u64, Option<String>) {
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = guard.cancel.notified() => return (offset, Some("superseded by a newer PATCH".into())),
        };
        let chunk = match next {
            None => return (offset, None),
            Some(Ok(c)) => c,
            Some(Err(e)) => return (offset, Some(format!("the upload was interrupted: {e}"))),
        };
        if offset + chunk.len() as u64 > length {
            return (offset, Some("more bytes than Upload-Length".into()));
        }
        if let Err(e) = file.write_all(&chunk).await {
            tracing::error!(video = %id, error = %e, "upload write failed");
            return (
                offset,
                Some("the hub could not store the bytes (disk full?)".into()),
            );
        }
        offset += chunk.len() as u64;
        hub.metrics.upload_bytes.inc_by(chunk.len() as u64);
    }
}

/// `DELETE /v1/uploads/{id}`: abandons an upload.
#[utoipa::path(delete, path = "/v1/uploads/{id}", tag = TAG_UPLOADS,
    params(("id" = String, Path, description = "The video's id"), ("Tus-Resumable" = String, Header, description = "`1.0.0`", example = "1.0.0")),
    security(("api_key" = []), ("admin_key" = [])),
    responses(
        (status = 204, description = "The upload and its video are gone"),
        (status = 404, description = "No such upload of yours")))]
pub async fn terminate(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_version(&headers) {
        return *r;
    }
    match owned_upload(&hub, &headers, &id).map_err(|r| *r) {
        Ok(v) if v.status == Status::Uploading => {
            let _ = tokio::fs::remove_file(part_path(&hub, &id)).await;
            if hub.catalog.delete_video(&id).is_err() {
                return tus_error(StatusCode::INTERNAL_SERVER_ERROR, "catalog write failed");
            }
            if v.policy == Policy::Signed {
                hub.refresh_issuers();
            }
            (StatusCode::NO_CONTENT, [("tus-resumable", TUS_VERSION)]).into_response()
        }
        Ok(_) => tus_error(
            StatusCode::CONFLICT,
            "the upload is complete; it can no longer be terminated",
        ),
        Err(r) => r,
    }
}

impl Hub {
    /// Marks a complete upload queued and hands it to the transcoder.
    fn finish_upload(&self, id: &str) {
        let mut was_uploading = false;
        let queue = |v: &mut VideoRecord| {
            // Once only, whichever request sees the last byte first.
            was_uploading = v.status == Status::Uploading;
            if was_uploading {
                v.status = Status::Queued;
            }
        };
        match self.catalog.update(id, queue) {
            Ok(Some(_)) if was_uploading => {
                tracing::info!(video = %id, "upload complete; queued for transcoding");
                self.jobs.enqueue(id.to_string());
            }
            Ok(_) => {}
            Err(e) => tracing::error!(video = %id, error = %e, "cannot queue upload"),
        }
    }

    fn lock_upload(self: &Arc<Self>, id: &str) -> Option<UploadGuard> {
        let mut busy = self.uploads_busy.lock().unwrap_or_else(|p| p.into_inner());
        if busy.contains_key(id) {
            return None;
        }
        let cancel = Arc::new(tokio::sync::Notify::new());
        busy.insert(id.to_string(), cancel.clone());
        Some(UploadGuard {
            hub: self.clone(),
            id: id.to_string(),
            cancel,
        })
    }

    fn supersede_upload(&self, id: &str) {
        if let Some(cancel) = self
            .uploads_busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            cancel.notify_one();
        }
    }
}

struct UploadGuard {
    hub: Arc<Hub>,
    id: String,
    cancel: Arc<tokio::sync::Notify>,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.hub
            .uploads_busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}
