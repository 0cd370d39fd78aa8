//! The transcode queue: one local transcode at a time (ffmpeg already uses
//! every core), or several videos at once when workers do the encoding.
//! A finished ladder is copied into the blob store and published in one
//! catalog transaction, so a crash never leaves a video half-ready; a
//! restart re-queues whatever was queued or transcoding.

use crate::catalog::{FileRef, Status};
use crate::origin::content_type;
use crate::Hub;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct Jobs {
    tx: mpsc::UnboundedSender<String>,
}

impl Jobs {
    pub fn new() -> (Jobs, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Jobs { tx }, rx)
    }

    pub fn enqueue(&self, id: String) {
        let _ = self.tx.send(id);
    }
}

/// Videos transcoded by workers at once: each holds the HUB for cutting,
/// its audio and the checks of its chunks, while workers do the rest.
const DISTRIBUTED_AT_ONCE: usize = 4;

pub async fn worker(hub: Arc<Hub>, mut queue: mpsc::UnboundedReceiver<String>) {
    let distributed = Arc::new(tokio::sync::Semaphore::new(DISTRIBUTED_AT_ONCE));
    while let Some(id) = queue.recv().await {
        // A local transcode uses every core: one at a time, here. With
        // workers, several videos go at once.
        if crate::work::workers_available(&hub) {
            let permit = distributed
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let hub = hub.clone();
            tokio::spawn(async move {
                run_one(&hub, &id).await;
                drop(permit);
            });
        } else {
            run_one(&hub, &id).await;
        }
    }
}

async fn run_one(hub: &Arc<Hub>, id: &str) {
    let started = std::time::Instant::now();
    // Ready or failed, the catalog has an event for the account's webhooks.
    let _tell = Wake(hub);
    match process(hub, id).await {
        Ok(()) => {
            hub.metrics.transcodes.with_label_values(&["ready"]).inc();
            tracing::info!(video = %id, secs = started.elapsed().as_secs_f64(), "video ready");
        }
        Err(reason) => {
            hub.metrics.transcodes.with_label_values(&["failed"]).inc();
            tracing::warn!(video = %id, %reason, "video failed");
            let _ = hub.catalog.update(id, |v| {
                v.status = Status::Failed;
                v.reason = Some(reason.clone());
                // A percent of a transcode that will never finish misleads.
                v.percent = 0.0;
            });
            // The reason is kept; the refused bytes are not.
            if let Err(e) = std::fs::remove_file(crate::tus::part_path(hub, id)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(video = %id, error = %e, "cannot remove a refused upload");
                }
            }
        }
    }
}

/// Wakes the webhook sender when dropped (the outcome is recorded by then).
struct Wake<'a>(&'a Hub);

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.0.webhooks.wake();
    }
}

fn files_under(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn process(hub: &Arc<Hub>, id: &str) -> Result<(), String> {
    let video = match hub.catalog.video(id) {
        Ok(Some(v)) if v.status == Status::Queued => v,
        Ok(_) => return Ok(()),
        Err(e) => return Err(format!("catalog error: {e}")),
    };
    let data = &hub.config.hub.data_dir;
    let input = crate::tus::part_path(hub, id);
    let work = data.join("work").join(id);
    let _ = std::fs::remove_dir_all(&work);
    hub.catalog
        .update(id, |v| {
            v.status = Status::Transcoding;
            v.percent = 0.0;
        })
        .map_err(|e| e.to_string())?;
    let result = if crate::work::workers_available(hub) {
        tracing::info!(video = %id, name = %video.name, "transcoding with workers");
        let payer = hub.payer_of(&video);
        crate::work::transcode_distributed(hub, id, &input, &work, payer)
            .await
            .map(|(output, chunks)| (output, Some(chunks)))
    } else {
        tracing::info!(video = %id, name = %video.name, "transcoding");
        transcode_here(hub, id, &input, &work)
            .await
            .map(|output| (output, None))
    };
    let (output, chunks) = match result {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    // The packaged ladder (the work folder itself, or its `out/` when
    // workers made it).
    let work = output.dir.clone();
    let hub2 = hub.clone();
    let work2 = work.clone();
    let stored = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<(String, FileRef)>> {
        let mut files = Vec::new();
        for path in files_under(&work2)? {
            let rel = path
                .strip_prefix(&work2)
                .expect("under work")
                .to_string_lossy()
                .replace('\\', "/");
            let (hash, size) = hub2.blobs.put_file(&path)?;
            files.push((
                rel.clone(),
                FileRef {
                    hash,
                    size,
                    content_type: content_type(&rel).to_string(),
                },
            ));
        }
        Ok(files)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot store the output: {e}"))?;
    let renditions = output
        .manifest
        .renditions
        .iter()
        .map(|r| r.name.clone())
        .collect();
    hub.catalog
        .publish(id, &stored, output.source.duration, renditions)
        .map_err(|e| e.to_string())?;
    if chunks.is_some() {
        let _ = hub.catalog.update(id, |v| v.chunks = chunks);
    }
    let _ = std::fs::remove_dir_all(data.join("work").join(id));
    let _ = std::fs::remove_file(&input);
    // Ready from the HUB's origin now; onto the network as well.
    let (hub, id) = (hub.clone(), id.to_string());
    tokio::spawn(async move {
        match crate::placement::place(&hub, &id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(video = %id, objects = n, "video placed on storage nodes"),
            Err(e) => {
                tracing::warn!(video = %id, error = %e, "placing shards failed; the hub keeps serving it")
            }
        }
    });
    Ok(())
}

/// The whole-file transcode on this HUB, with progress in the catalog.
async fn transcode_here(
    hub: &Arc<Hub>,
    id: &str,
    input: &Path,
    work: &Path,
) -> Result<meshcast_transcode::Output, String> {
    let progress_hub = hub.clone();
    let progress_id = id.to_string();
    let mut reported = 0.0;
    meshcast_transcode::transcode(input, work, &hub.config.transcode, move |fraction| {
        let percent = (fraction * 99.0).floor();
        if percent >= reported + 1.0 {
            reported = percent;
            let _ = progress_hub
                .catalog
                .update(&progress_id, |v| v.percent = percent);
        }
    })
    .await
    .map_err(|e| e.to_string())
}
