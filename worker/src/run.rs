//! The worker's loop and its steps: lease, fetch, encode (with progress),
//! commit to the output, upload it, and hear the HUB's verdict.

use crate::client::{Client, CommitAnswer, WorkerError};
use meshcast_conf::WorkerConfig;
use meshcast_control::identity::NodeKey;
use meshcast_control::transcoding::{Commitment, Job, SegmentEntry};
use meshcast_transcode::{encode_chunk, segment_ticks, ChunkJob};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often a job in progress tells the HUB (each report renews the
/// lease, which runs out after the HUB's `[transcode] lease`).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Delays between attempts to reach the HUB: exponential from 1 s to 30 s,
/// with jitter, so workers that lost the HUB together do not return in
/// one instant.
fn retry_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .with_jitter()
        .build()
}

/// Runs the worker until the process is stopped.
pub async fn run(config: WorkerConfig) -> Result<(), WorkerError> {
    let key = NodeKey::load(&config.node.key)?;
    let transcodes = config.worker.has_role("transcode");
    if transcodes {
        check_ffmpeg(&config.worker.ffmpeg).await?;
        meshcast_transcode::use_ffmpeg(config.worker.ffmpeg.clone());
    }
    let client = Arc::new(Client::new(
        &config.node.hub,
        key,
        config.node.hub_ca.as_deref(),
    )?);
    std::fs::create_dir_all(&config.worker.scratch_dir)?;
    let roles = config.worker.roles.clone();
    let addr = config.worker.storage_url().unwrap_or_default();
    let capacity = config.worker.capacity.map_or(0, |c| c.0);
    let mut delays = retry_delays();
    let hub_key = loop {
        match client.register_at(&roles, &addr, capacity).await {
            Ok(k) => break k,
            Err(e) => {
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(error = %e, retry_in = ?wait, "cannot register with the HUB");
                tokio::time::sleep(wait).await;
            }
        }
    };
    tracing::info!(node = %client.id(), hub = %config.node.hub, ?roles, "worker registered");
    let storage = match config.worker.has_role("storage") {
        true => Some(serve_storage(&config, &hub_key, NodeKey::load(&config.node.key)?).await?),
        false => None,
    };
    let beat = config.node.heartbeat.0;
    let heart = client.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(beat).await;
            match heart.heartbeat().await {
                Ok(true) => {}
                Ok(false) => {
                    let _ = heart.register_at(&roles, &addr, capacity).await;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    });
    let mut loops = Vec::new();
    for _ in 0..config
        .worker
        .parallel_jobs
        .min(if transcodes { 64 } else { 0 })
    {
        let (client, scratch) = (client.clone(), config.worker.scratch_dir.clone());
        loops.push(tokio::spawn(
            async move { job_loop(&client, &scratch).await },
        ));
    }
    loops.extend(storage);
    for l in loops {
        let _ = l.await;
    }
    Ok(())
}

/// Opens the shard store and serves it on `[worker] listen`.
async fn serve_storage(
    config: &WorkerConfig,
    hub_key: &str,
    key: NodeKey,
) -> Result<tokio::task::JoinHandle<()>, WorkerError> {
    let w = &config.worker;
    let (Some(dir), Some(capacity), Some(listen)) = (&w.storage_dir, w.capacity, w.listen) else {
        return Err(WorkerError::Hub(
            "the storage role needs storage_dir, capacity and listen".into(),
        ));
    };
    let mut hub = [0u8; 32];
    hex::decode_to_slice(hub_key, &mut hub).map_err(|_| {
        WorkerError::Hub(format!("the HUB's key {hub_key:?} is not 32 bytes of hex"))
    })?;
    let storage = Arc::new(crate::storage::Storage::open(
        dir.clone(),
        capacity.0,
        hub,
        key,
    )?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| WorkerError::Hub(format!("[worker] listen = \"{listen}\": {e}")))?;
    tracing::info!(%listen, dir = %dir.display(), capacity = capacity.0, "storage node listening");
    let app = crate::storage::router(storage);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "storage listener stopped");
        }
    }))
}

/// The configured ffmpeg runs and has libx264, or a reason to stop.
async fn check_ffmpeg(program: &Path) -> Result<(), WorkerError> {
    let out = tokio::process::Command::new(program)
        .args(["-hide_banner", "-encoders"])
        .output()
        .await
        .map_err(|e| {
            WorkerError::Hub(format!(
                "[worker] ffmpeg = {:?} does not run ({e}); install it with `apt-get install ffmpeg` or set the path",
                program.display()
            ))
        })?;
    if !String::from_utf8_lossy(&out.stdout).contains("libx264") {
        return Err(WorkerError::Hub(format!(
            "{} has no libx264 encoder; the ladder is H.264",
            program.display()
        )));
    }
    Ok(())
}

async fn job_loop(client: &Client, scratch: &Path) {
    let mut delays = retry_delays();
    loop {
        match client.lease().await {
            Ok(Some(job)) => {
                delays = retry_delays();
                let (video, chunk, attempt) = (job.video.clone(), job.chunk, job.attempt);
                tracing::info!(%video, chunk, attempt, "job leased");
                match work_one(client, &job, scratch).await {
                    Ok(a) if a.accepted => {
                        tracing::info!(%video, chunk, outcome = %a.outcome, "chunk accepted")
                    }
                    Ok(a) => {
                        tracing::warn!(%video, chunk, outcome = %a.outcome, slashed = a.slashed, "chunk refused")
                    }
                    Err(e) => tracing::warn!(%video, chunk, error = %e, "job failed"),
                }
            }
            Ok(None) => {}
            Err(e) => {
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(error = %e, retry_in = ?wait, "cannot lease from the HUB");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Fetches the job's cut and encodes it, reporting progress; the output
/// folder and the job's settings.
pub async fn encode(
    client: &Client,
    job: &Job,
    scratch: &Path,
) -> Result<(PathBuf, ChunkJob), WorkerError> {
    let spec: ChunkJob = serde_json::from_value(job.spec.clone())
        .map_err(|e| WorkerError::Hub(format!("job settings: {e}")))?;
    let dir = scratch.join(format!("{}-{}-{}", job.video, job.chunk, job.attempt));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cut = dir.join("cut.mp4");
    client.fetch_source(job, &cut).await?;
    let (tx, mut rx) = tokio::sync::watch::channel(0.0f64);
    let out = dir.join("out");
    {
        let encoding = encode_chunk(&cut, &spec, &out, move |f| {
            let _ = tx.send(f);
        });
        tokio::pin!(encoding);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        let result = loop {
            tokio::select! {
                r = &mut encoding => break r,
                _ = tick.tick() => {
                    let f = *rx.borrow_and_update();
                    if let Err(e) = client.progress(job, f).await {
                        tracing::warn!(error = %e, "progress report refused");
                    }
                }
            }
        };
        result?;
    }
    let _ = std::fs::remove_file(&cut);
    Ok((out, spec))
}

/// The commitment to every file in `out` (init and segments of each rung).
pub fn commitment_for(job: &Job, spec: &ChunkJob, out: &Path) -> Result<Commitment, WorkerError> {
    let mut inits = Vec::new();
    let mut segments = Vec::new();
    for rung in &spec.rungs {
        let dir = out.join(&rung.name);
        let init = std::fs::read(dir.join("init.mp4"))?;
        inits.push((rung.name.clone(), blake3::hash(&init).to_hex().to_string()));
        let mut files: Vec<String> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with("seg_") && f.ends_with(".m4s"))
            .collect();
        files.sort();
        for file in files {
            let number: u32 = file[4..9]
                .parse()
                .map_err(|_| WorkerError::Hub(format!("odd segment name {file}")))?;
            let bytes = std::fs::read(dir.join(&file))?;
            let ticks = segment_ticks(&init, &bytes)
                .map_err(|e| WorkerError::Hub(format!("{}/{file}: {e}", rung.name)))?;
            segments.push(SegmentEntry {
                rung: rung.name.clone(),
                number,
                ticks,
                hash: blake3::hash(&bytes).into(),
            });
        }
    }
    Ok(Commitment::new(
        job.video.clone(),
        job.chunk,
        job.attempt,
        inits,
        segments,
    ))
}

/// Uploads every file in `out` with the job's capability.
pub async fn upload_output(
    client: &Client,
    job: &Job,
    spec: &ChunkJob,
    out: &Path,
) -> Result<(), WorkerError> {
    for rung in &spec.rungs {
        let dir = out.join(&rung.name);
        let mut files: Vec<String> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f == "init.mp4" || (f.starts_with("seg_") && f.ends_with(".m4s")))
            .collect();
        files.sort();
        for file in files {
            let bytes = tokio::fs::read(dir.join(&file)).await?;
            client.upload(job, &rung.name, &file, bytes).await?;
        }
    }
    Ok(())
}

/// One job from lease to verdict: encode, commit to the output, upload
/// it, and hear the HUB's verdict.
pub async fn work_one(
    client: &Client,
    job: &Job,
    scratch: &Path,
) -> Result<CommitAnswer, WorkerError> {
    let (out, spec) = encode(client, job, scratch).await?;
    let commitment = commitment_for(job, &spec, &out)?;
    upload_output(client, job, &spec, &out).await?;
    let answer = client.commit(&commitment).await;
    if let Some(dir) = out.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    answer
}
