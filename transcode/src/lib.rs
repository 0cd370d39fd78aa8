//! meshcast-transcode turns an uploaded file into an adaptive ladder:
//! `ffprobe` to understand (and reject) the input, a ladder plan, an
//! `ffmpeg` child process with progress, CMAF fMP4 packaging that serves
//! both HLS (playlists written with m3u8-rs) and DASH (one MPD over the same
//! segments) with every audio track and text subtitle of the source, and a
//! check of every output segment with the `mp4` crate.
//! It works on local files and folders only: storing, serving and the job
//! queue belong to the hub.

mod chunks;
mod ffmpeg;
mod fidelity;
mod hls;
mod ladder;
mod lang;
mod mpd;
mod package;
mod probe;
mod tfdt;
mod verify;

pub use chunks::{
    chunk_first_frame, cut, encode_chunk, first_frame_at, join, keyframes, plan_chunks, Chunk,
    ChunkJob,
};
pub use ffmpeg::{parse_progress_line, use_ffmpeg, Progress, Span};
pub use fidelity::{
    check_range, check_segment, reference_size, CheckError, Fidelity, Part, SegmentRange, LOSSLESS,
};
pub use ladder::{h264_level, plan, plan_audio, AudioRung, Rung};
pub use package::{Manifest, Rendition, RenditionKind, Subtitle, TrackLabel, SUBTITLE_FILE};
pub use probe::{probe, AudioTrack, ProbeError, SourceInfo, SubtitleTrack};
pub use verify::{inspect_rendition, segment_ticks, VerifyError};

use meshcast_conf::TranscodeSection;
use std::path::{Path, PathBuf};

/// Why a transcode did not produce a playable ladder.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("{0}")]
    Probe(#[from] ProbeError),
    #[error("{0}")]
    Ffmpeg(String),
    #[error("output check failed: {0}")]
    Verify(#[from] VerifyError),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

/// What a finished transcode produced, relative to its output folder.
#[derive(Debug, Clone)]
pub struct Output {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub source: SourceInfo,
}

/// A last segment shorter than this share of the target is folded into
/// the one before it.
const SHORT_TAIL: f64 = 0.25;

/// Inspects a rendition; if its last segment is a sliver (AAC priming and
/// padding leave one 1024-sample frame past the video's end), appends it to
/// the previous segment (two fragments in one CMAF segment) and inspects
/// again. A sliver starting after the presentation's end is a segment DASH
/// players never fetch, and dash.js then never sees the track complete and
/// stalls half a second before the end.
fn inspect_merging_tail(
    dir: &Path,
    name: &str,
    kind: RenditionKind,
    target: f64,
) -> Result<Rendition, TranscodeError> {
    let r = inspect_rendition(dir, name, kind, target, 0.0)?;
    let n = r.segments.len();
    if n < 2 || r.segments[n - 1].duration >= target * SHORT_TAIL {
        return Ok(r);
    }
    let (prev, last) = (&r.segments[n - 2].file, &r.segments[n - 1].file);
    let tail = std::fs::read(dir.join(last))?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(prev))?;
    std::io::Write::write_all(&mut f, &tail)?;
    f.sync_all()?;
    std::fs::remove_file(dir.join(last))?;
    tracing::debug!(rendition = name, merged = %last, into = %prev, "folded a short last segment into the one before");
    Ok(inspect_rendition(dir, name, kind, target, 0.0)?)
}

/// Probes `input`, encodes the ladder into `out_dir`, verifies every
/// segment and writes `master.m3u8`, per-rendition `index.m3u8` and
/// `manifest.mpd`. `on_progress` gets the fraction done, 0.0 to 1.0.
pub async fn transcode(
    input: &Path,
    out_dir: &Path,
    config: &TranscodeSection,
    on_progress: impl FnMut(f64) + Send,
) -> Result<Output, TranscodeError> {
    let source = probe(input, config).await?;
    let rungs = plan(&source, config);
    let audio = plan_audio(&source, config);
    std::fs::create_dir_all(out_dir)?;
    ffmpeg::run(
        input,
        out_dir,
        &source,
        (&rungs, &audio),
        ffmpeg::Span::WHOLE,
        config,
        on_progress,
    )
    .await?;
    finish(input, out_dir, source, (&rungs, &audio), config).await
}

/// Transcodes `input` as distributed transcoding does, here in one
/// process: cut into chunks of `segments_per_chunk` segments, each chunk
/// encoded on its own (up to `parallel` at once), audio in one piece,
/// joined into one ladder. The output is the same as `transcode`'s.
pub async fn transcode_in_chunks(
    input: &Path,
    out_dir: &Path,
    config: &TranscodeSection,
    segments_per_chunk: u32,
    parallel: usize,
) -> Result<Output, TranscodeError> {
    use futures_util::{StreamExt, TryStreamExt};
    let source = probe(input, config).await?;
    let rungs = plan(&source, config);
    let audio = plan_audio(&source, config);
    let segment = config.segment_duration.0.as_secs_f64();
    let keys = keyframes(input, config).await?;
    let chunks = plan_chunks(&keys, source.duration, segment, segments_per_chunk);
    let parts = out_dir.join("chunks");
    std::fs::create_dir_all(&parts)?;
    let encoded: Vec<std::path::PathBuf> = futures_util::stream::iter(chunks.iter())
        .map(|chunk| {
            let job = ChunkJob {
                chunk: chunk.clone(),
                rungs: rungs.clone(),
                fps: source.fps,
                duration: source.duration,
                segment_secs: segment,
                preset: config.preset.clone(),
            };
            let (source, parts) = (&source, &parts);
            async move {
                let dir = parts.join(chunk.index.to_string());
                std::fs::create_dir_all(&dir)?;
                let cut_file = dir.join("cut.mp4");
                cut(input, chunk, source.fps, &cut_file).await?;
                encode_chunk(&cut_file, &job, &dir, |_| {}).await?;
                std::fs::remove_file(&cut_file)?;
                Ok::<_, TranscodeError>(dir)
            }
        })
        .buffered(parallel.max(1))
        .try_collect()
        .await?;
    encode_audio(input, out_dir, &source, &audio, config).await?;
    let dirs: Vec<&Path> = encoded.iter().map(|p| p.as_path()).collect();
    join(&dirs, &rungs, out_dir)?;
    std::fs::remove_dir_all(&parts)?;
    finish(input, out_dir, source, (&rungs, &audio), config).await
}

/// Encodes every audio rendition of `input` whole into `out_dir` (the
/// part of a chunked transcode that stays in one piece).
pub async fn encode_audio(
    input: &Path,
    out_dir: &Path,
    source: &SourceInfo,
    audio: &[AudioRung],
    config: &TranscodeSection,
) -> Result<(), TranscodeError> {
    if audio.is_empty() {
        return Ok(());
    }
    ffmpeg::run(
        input,
        out_dir,
        source,
        (&[], audio),
        ffmpeg::Span::WHOLE,
        config,
        |_| {},
    )
    .await
}

/// Checks every rendition in `out_dir`, extracts subtitles and writes the
/// playlists: the last step of every transcode, whole or in chunks.
pub async fn finish(
    input: &Path,
    out_dir: &Path,
    source: SourceInfo,
    (rungs, audio): (&[Rung], &[AudioRung]),
    config: &TranscodeSection,
) -> Result<Output, TranscodeError> {
    let segment = config.segment_duration.0.as_secs_f64();
    let mut renditions = Vec::new();
    for rung in rungs {
        renditions.push(inspect_merging_tail(
            &out_dir.join(&rung.name),
            &rung.name,
            RenditionKind::Video,
            segment,
        )?);
    }
    for a in audio {
        let mut r = inspect_merging_tail(
            &out_dir.join(&a.name),
            &a.name,
            RenditionKind::Audio,
            segment,
        )?;
        r.audio = Some(TrackLabel {
            language: a.language.clone(),
            name: a.label.clone(),
            default: a.default,
        });
        renditions.push(r);
    }
    let subtitles = extract_subtitles(input, out_dir, &source.subtitles).await?;
    let manifest = Manifest {
        duration: Manifest::end(&renditions),
        renditions,
        subtitles,
        segment_duration: segment,
    };
    package::write_all(out_dir, &manifest)?;
    Ok(Output {
        dir: out_dir.to_path_buf(),
        manifest,
        source,
    })
}

/// Each text subtitle track as `subs{N}/subs.vtt`. One that ffmpeg cannot
/// convert is left out with a warning: the video is still worth publishing.
async fn extract_subtitles(
    input: &Path,
    out_dir: &Path,
    tracks: &[SubtitleTrack],
) -> Result<Vec<Subtitle>, TranscodeError> {
    let any_default = tracks.iter().any(|t| t.default);
    let mut out = Vec::new();
    for (i, t) in tracks.iter().enumerate() {
        let name = if out.is_empty() {
            "subs".to_string()
        } else {
            format!("subs{}", out.len() + 1)
        };
        let dir = out_dir.join(&name);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(SUBTITLE_FILE);
        if let Err(why) = ffmpeg::extract_subtitle(input, t.index, &file).await {
            tracing::warn!(track = t.index, codec = %t.codec, %why, "subtitle track left out");
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        let language = lang::bcp47(t.language.as_deref());
        let name_shown = t
            .title
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| lang::display_name(&language, i + 1));
        out.push(Subtitle {
            bytes: std::fs::metadata(&file)?.len(),
            name,
            label: TrackLabel {
                language,
                name: name_shown,
                // Subtitles are offered, not forced on, unless the source says.
                default: any_default && t.default,
            },
        });
    }
    Ok(out)
}
