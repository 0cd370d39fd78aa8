//! A video transcoded by workers: probe and plan as for a local transcode,
//! cut the source's video into chunks at its keyframes, put the chunks on
//! the board, encode the audio here meanwhile, wait for every chunk to be
//! checked (leases that run out go back on the board; when no worker is
//! left, the HUB encodes the waiting chunks itself), then join and package.

use super::VideoContext;
use crate::nodes::now_secs;
use crate::Hub;
use meshcast_transcode::{
    cut, encode_audio, encode_chunk, finish, join, keyframes, plan, plan_audio, plan_chunks, probe,
    Output,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// An admitted node with the transcode role heard from lately.
pub fn workers_available(hub: &Hub) -> bool {
    let now = now_secs();
    hub.registry.nodes().is_ok_and(|nodes| {
        nodes.iter().any(|n| {
            n.roles.iter().any(|r| r == "transcode")
                && crate::admission::is_up(n, now)
                && hub.admission(n).admitted()
        })
    })
}

/// Takes the video off the board however the transcode ends.
struct OffBoard<'a>(&'a Hub, String);

impl Drop for OffBoard<'_> {
    fn drop(&mut self) {
        self.0.work.board().remove(&self.1);
        self.0
            .work
            .videos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

pub async fn transcode_distributed(
    hub: &Arc<Hub>,
    id: &str,
    input: &Path,
    work: &Path,
    payer: [u8; 32],
) -> Result<(Output, serde_json::Value), String> {
    let config = &hub.config.transcode;
    let source = probe(input, config).await.map_err(|e| e.to_string())?;
    let rungs = plan(&source, config);
    let audio = plan_audio(&source, config);
    let segment = config.segment_duration.0.as_secs_f64();
    let keys = keyframes(input, config).await.map_err(|e| e.to_string())?;
    let chunks = plan_chunks(&keys, source.duration, segment, config.chunk_segments);
    let ctx = Arc::new(VideoContext {
        video: id.to_string(),
        input: input.to_path_buf(),
        dir: work.to_path_buf(),
        chunks: chunks.clone(),
        rungs: rungs.clone(),
        fps: source.fps,
        duration: source.duration,
        segment_secs: segment,
        preset: config.preset.clone(),
        payer,
        inits: Default::default(),
    });
    std::fs::create_dir_all(work.join("cuts")).map_err(|e| e.to_string())?;
    for c in &chunks {
        cut(input, c, source.fps, &ctx.cut_path(c.index))
            .await
            .map_err(|e| e.to_string())?;
    }
    let seconds: Vec<f64> = chunks
        .iter()
        .map(|c| c.end.unwrap_or(source.duration) - c.start)
        .collect();
    hub.work
        .videos
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_string(), ctx.clone());
    hub.work.board().add(id, &seconds);
    let _off = OffBoard(hub, id.to_string());
    hub.work.changed.notify_waiters();
    tracing::info!(video = %id, chunks = chunks.len(), "chunks on the board for workers");
    let out = work.join("out");
    let (audio_done, chunks_done) = tokio::join!(
        encode_audio(input, &out, &source, &audio, config),
        wait_for_chunks(hub, &ctx),
    );
    audio_done.map_err(|e| e.to_string())?;
    chunks_done?;
    let parts: Vec<std::path::PathBuf> = chunks.iter().map(|c| ctx.part_dir(c.index)).collect();
    let dirs: Vec<&Path> = parts.iter().map(|p| p.as_path()).collect();
    join(&dirs, &rungs, &out).map_err(|e| e.to_string())?;
    let report = super::chunk_view(hub, id).unwrap_or_default();
    let output = finish(input, &out, source, (&rungs, &audio), config)
        .await
        .map_err(|e| e.to_string())?;
    Ok((output, report))
}

/// Until every chunk is checked: expires leases, keeps the video's percent
/// current, and encodes waiting chunks here when no worker is left.
async fn wait_for_chunks(hub: &Arc<Hub>, ctx: &Arc<VideoContext>) -> Result<(), String> {
    let mut reported = -1.0;
    loop {
        let changed = hub.work.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (expired, done, fraction) = {
            let mut board = hub.work.board();
            let expired = board.expire(now_secs());
            (
                expired,
                board.is_done(&ctx.video),
                board.fraction_done(&ctx.video),
            )
        };
        for (video, chunk, worker) in &expired {
            tracing::warn!(%video, chunk, %worker, "lease ran out; the chunk goes to another worker");
        }
        if !expired.is_empty() {
            hub.work.changed.notify_waiters();
        }
        if done {
            return Ok(());
        }
        let percent = (fraction * 99.0).floor();
        if percent > reported {
            reported = percent;
            let _ = hub.catalog.update(&ctx.video, |v| v.percent = percent);
        }
        let ours = !workers_available(hub) || hub.work.board().needs_hub(&ctx.video);
        if ours && encode_here(hub, ctx).await? {
            continue;
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The HUB as the worker of last resort: takes one waiting chunk and
/// encodes it itself (its own output needs no check). `false`: none of
/// this video's chunks was waiting (the rest are being checked).
async fn encode_here(hub: &Arc<Hub>, ctx: &Arc<VideoContext>) -> Result<bool, String> {
    const HUB: &str = "hub";
    let lease =
        hub.work
            .board()
            .lease_in(Some(&ctx.video), HUB, now_secs(), u64::MAX / 4, String::new);
    let Some(lease) = lease else {
        return Ok(false);
    };
    tracing::info!(video = %ctx.video, chunk = lease.chunk, "no worker available: the HUB encodes the chunk");
    let job = ctx.job(lease.chunk).ok_or("chunk out of range")?;
    let dir = ctx.attempt_dir(lease.chunk, lease.attempt);
    encode_chunk(&ctx.cut_path(lease.chunk), &job, &dir, |_| {})
        .await
        .map_err(|e| e.to_string())?;
    let part = ctx.part_dir(lease.chunk);
    std::fs::create_dir_all(part.parent().expect("parts/ has a parent"))
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&part);
    std::fs::rename(&dir, &part).map_err(|e| e.to_string())?;
    let mut board = hub.work.board();
    board
        .begin_check((&ctx.video, lease.chunk, lease.attempt), HUB, now_secs())
        .map_err(|e| e.to_string())?;
    board.finish(&ctx.video, lease.chunk, true, "encoded by the HUB");
    drop(board);
    hub.work.changed.notify_waiters();
    Ok(true)
}
