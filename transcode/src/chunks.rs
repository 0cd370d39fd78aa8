//! Transcoding in chunks, the media side of distributed transcoding: cut
//! the source's video at its keyframes into chunks of whole segments
//! (stream copy, no re-encode), encode one chunk to every rung with its
//! segments placed on the whole video's timeline, and join the chunks'
//! renditions into one ladder.
//!
//! Output segments must start every `segment_duration` seconds on every
//! rung, but the source's keyframes fall where its encoder put them. So a
//! chunk's cut runs from the last source keyframe at or before the chunk's
//! start to the first at or after its end (every frame in it decodes), and
//! the encode seeks into the cut (decoding from its first frame, dropping
//! those before the chunk's start) and stops at the chunk's end: each
//! frame of the source is encoded in exactly one chunk.
//!
//! An encode's timestamps start at 0 (its forced keyframes then fall on
//! segment boundaries); ffmpeg's fMP4 muxer would put an output offset in
//! the edit list, not in the fragments, so each segment's `tfdt` is moved
//! to the chunk's start afterwards. Every chunk's init segment is then
//! byte-identical (same encoder settings, same composition delay) and the
//! first chunk's serves the whole rendition.

use crate::ffmpeg::{self, Span};
use crate::ladder::Rung;
use crate::package::RenditionKind;
use crate::probe::SourceInfo;
use crate::verify::inspect_rendition;
use crate::TranscodeError;
use meshcast_conf::TranscodeSection;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokio::process::Command;

/// One chunk of a source: the whole segments from `start` to `end` (`None`:
/// to the source's end) of the video's timeline, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub index: u32,
    pub start: f64,
    pub end: Option<f64>,
    /// The source keyframes the stream-copied cut runs from and to.
    pub cut_from: f64,
    pub cut_to: Option<f64>,
    /// Number of the chunk's first segment (the video's first is 1).
    pub first_segment: u32,
}

/// How far before a frame a seek aims, so that rounding the seek time
/// never drops the frame (far less than any frame's duration).
const SEEK_MARGIN: f64 = 1e-4;

impl Chunk {
    /// The encode of this chunk within its cut, for a source at `fps`: from
    /// the first frame at or after `start` up to (not including) the first
    /// at or after `end`, so each frame is in exactly one chunk and lands
    /// on the encoder's frame grid (an offset there would make it repeat a
    /// frame to fill the start).
    pub fn span(&self, fps: f64) -> Span {
        let first = first_frame_at(self.start, fps);
        Span {
            skip: (first - self.cut_from - SEEK_MARGIN).max(0.0),
            length: self.end.map(|e| first_frame_at(e, fps) - first),
            first_segment: self.first_segment,
        }
    }
}

/// A last chunk shorter than this share of a segment is joined to the one
/// before it.
const SLIVER: f64 = 0.25;

/// Chunks of `segments_per_chunk` segments over a source of `duration`
/// seconds with video keyframes at `keyframes` (sorted, seconds).
pub fn plan_chunks(
    keyframes: &[f64],
    duration: f64,
    segment: f64,
    segments_per_chunk: u32,
) -> Vec<Chunk> {
    let step = segment * segments_per_chunk.max(1) as f64;
    let mut starts = vec![0.0];
    while let Some(&last) = starts.last() {
        let next = last + step;
        if next >= duration - segment * SLIVER {
            break;
        }
        starts.push(next);
    }
    let key_at_or_before = |t: f64| {
        keyframes
            .iter()
            .copied()
            .filter(|k| *k <= t + 1e-6)
            .fold(0.0, f64::max)
    };
    let key_at_or_after = |t: f64| keyframes.iter().copied().find(|k| *k >= t - 1e-6);
    let n = starts.len();
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let end = (i + 1 < n).then(|| starts[i + 1]);
            Chunk {
                index: i as u32,
                start,
                end,
                cut_from: key_at_or_before(start),
                cut_to: end.and_then(key_at_or_after),
                first_segment: 1 + i as u32 * segments_per_chunk.max(1),
            }
        })
        .collect()
}

/// The times of the first video stream's keyframes, in seconds.
pub async fn keyframes(
    input: &Path,
    config: &TranscodeSection,
) -> Result<Vec<f64>, TranscodeError> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-skip_frame",
            "nokey",
        ])
        .args(["-show_entries", "frame=pts_time", "-of", "csv=p=0"])
        .arg(input)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(config.probe_timeout.0, out)
        .await
        .map_err(|_| TranscodeError::Ffmpeg("ffprobe took too long listing keyframes".into()))??;
    if !out.status.success() {
        return Err(TranscodeError::Ffmpeg(format!(
            "ffprobe could not list keyframes: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Stream-copies the chunk's cut of `input`'s first video stream into
/// `dest` (MP4), timestamps from 0.
pub async fn cut(input: &Path, chunk: &Chunk, fps: f64, dest: &Path) -> Result<(), TranscodeError> {
    // A copying seek lands on the keyframe at or before its target; half a
    // frame past `cut_from` keeps a rounded keyframe time from landing on
    // the one before.
    let half_frame = 0.5 / fps.max(1.0);
    let mut cmd = crate::ffmpeg::command();
    cmd.args(["-hide_banner", "-nostdin", "-y", "-loglevel", "error"])
        .args(["-ss", &format!("{:.6}", chunk.cut_from + half_frame), "-i"])
        .arg(input)
        .args(["-map", "0:v:0", "-c", "copy"]);
    if let Some(to) = chunk.cut_to {
        cmd.args(["-t", &format!("{:.6}", to - chunk.cut_from + half_frame)]);
    }
    let out = cmd
        .args(["-avoid_negative_ts", "make_zero", "-f", "mp4"])
        .arg(dest)
        .kill_on_drop(true)
        .output()
        .await?;
    if !out.status.success() {
        return Err(TranscodeError::Ffmpeg(format!(
            "cannot cut chunk {}: {}",
            chunk.index,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Everything a worker needs to encode a chunk's cut, as the HUB sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkJob {
    pub chunk: Chunk,
    pub rungs: Vec<Rung>,
    /// The source's frame rate and length in seconds.
    pub fps: f64,
    pub duration: f64,
    pub segment_secs: f64,
    /// x264 preset.
    pub preset: String,
}

impl ChunkJob {
    pub fn config(&self) -> TranscodeSection {
        TranscodeSection {
            segment_duration: meshcast_conf::Seconds(std::time::Duration::from_secs_f64(
                self.segment_secs,
            )),
            preset: self.preset.clone(),
            ..TranscodeSection::default()
        }
    }

    /// What the encode needs to know of the cut: its rate and length.
    fn cut_info(&self) -> SourceInfo {
        SourceInfo {
            width: 0,
            height: 0,
            fps: self.fps,
            duration: self.duration - self.chunk.cut_from,
            video_codec: String::new(),
            audio: vec![],
            subtitles: vec![],
        }
    }
}

/// Encodes a chunk's cut to every rung into `out_dir/{rung}/`, segments on
/// the whole video's timeline, each checked (keyframe start, duration, no
/// gap, first picture at the chunk's start).
pub async fn encode_chunk(
    cut: &Path,
    job: &ChunkJob,
    out_dir: &Path,
    on_progress: impl FnMut(f64) + Send,
) -> Result<(), TranscodeError> {
    let (chunk, rungs, config) = (&job.chunk, &job.rungs, job.config());
    let span = chunk.span(job.fps);
    ffmpeg::run(
        cut,
        out_dir,
        &job.cut_info(),
        (rungs, &[]),
        span,
        &config,
        on_progress,
    )
    .await?;
    let segment = job.segment_secs;
    for rung in rungs {
        let dir = out_dir.join(&rung.name);
        let first = chunk_first_frame(chunk, rung);
        crate::tfdt::shift_rendition(&dir, first)?;
        inspect_rendition(&dir, &rung.name, RenditionKind::Video, segment, first)?;
    }
    Ok(())
}

/// When the chunk's first frame of `rung` shows on the video's timeline.
pub fn chunk_first_frame(chunk: &Chunk, rung: &Rung) -> f64 {
    first_frame_at(chunk.start, rung.fps)
}

/// When the first frame at or after `t` shows, at `fps`: a chunk boundary
/// may fall between two frames (2 s at 29.97 fps), and the chunk's encode
/// starts with the frame after it.
pub fn first_frame_at(t: f64, fps: f64) -> f64 {
    if fps <= 0.0 {
        return t;
    }
    (t * fps - 1e-6).ceil() / fps
}

/// Moves the chunks' renditions (`parts[i]/{rung}/`, in chunk order) into
/// `out_dir/{rung}/`: one init segment (every chunk's must be the same)
/// and every segment.
pub fn join(parts: &[&Path], rungs: &[Rung], out_dir: &Path) -> Result<(), TranscodeError> {
    let bad = |why: String| TranscodeError::Ffmpeg(why);
    for rung in rungs {
        let dest = out_dir.join(&rung.name);
        std::fs::create_dir_all(&dest)?;
        let mut init: Option<Vec<u8>> = None;
        for (i, part) in parts.iter().enumerate() {
            let dir = part.join(&rung.name);
            let this = std::fs::read(dir.join("init.mp4"))?;
            match &init {
                None => {
                    std::fs::write(dest.join("init.mp4"), &this)?;
                    init = Some(this);
                }
                Some(first) if *first != this => {
                    return Err(bad(format!(
                        "chunk {i} of rung {} was encoded with other settings (its init segment differs from chunk 0's)",
                        rung.name
                    )))
                }
                Some(_) => {}
            }
            for entry in std::fs::read_dir(&dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if name.starts_with("seg_") && name.ends_with(".m4s") {
                    if dest.join(&name).exists() {
                        return Err(bad(format!(
                            "chunk {i} of rung {} repeats segment {name}",
                            rung.name
                        )));
                    }
                    std::fs::copy(dir.join(&name), dest.join(&name))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_whole_segments_cut_at_keyframes_around_them() {
        let keys: Vec<f64> = (0..13).map(|i| i as f64 * 2.4).collect();
        let c = plan_chunks(&keys, 30.0, 4.0, 2);
        let starts: Vec<f64> = c.iter().map(|c| c.start).collect();
        assert_eq!(starts, vec![0.0, 8.0, 16.0, 24.0]);
        assert_eq!(c[1].end, Some(16.0));
        assert_eq!(c[3].end, None, "the last runs to the end");
        assert!((c[1].cut_from - 7.2).abs() < 1e-9, "{}", c[1].cut_from);
        assert_eq!(c[1].cut_to.map(|t| (t * 10.0).round()), Some(168.0));
        assert_eq!(c[3].cut_to, None);
        assert_eq!(
            c.iter().map(|c| c.first_segment).collect::<Vec<_>>(),
            vec![1, 3, 5, 7]
        );
        let s = c[1].span(25.0);
        assert!((s.skip - 0.8).abs() < 1e-3 && s.skip < 0.8, "{}", s.skip);
        assert_eq!(s.length, Some(8.0));
    }

    #[test]
    fn a_boundary_between_frames_moves_to_the_next_frame() {
        assert_eq!(first_frame_at(4.0, 25.0), 4.0);
        let ntsc = 30000.0 / 1001.0;
        assert!((first_frame_at(4.0, ntsc) - 4.004).abs() < 1e-9);
        assert!((first_frame_at(120.0 * 1001.0 / 30000.0, ntsc) - 4.004).abs() < 1e-9);
    }

    #[test]
    fn a_sliver_at_the_end_joins_the_chunk_before() {
        let c = plan_chunks(&[0.0], 16.5, 4.0, 2);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].start, 8.0);
        assert_eq!(c[1].end, None);
        assert_eq!(c[1].cut_from, 0.0, "one keyframe: every cut starts there");
        let c = plan_chunks(&[0.0], 8.0, 4.0, 2);
        assert_eq!(c.len(), 1, "exactly one chunk's worth");
    }
}
