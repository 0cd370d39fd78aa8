//! Checks every produced segment with the `mp4` crate before a video may be
//! marked ready: it parses, belongs to the init segment's track, starts on a
//! keyframe, and lasts about one segment. The facts gathered here (codec
//! string, size, bitrates, segment timeline, edit list) feed the playlists.
//!
//! It also holds the sync invariant: after its edit list, a video
//! rendition's first picture presents at time 0 (audio's first real
//! sample does too; its priming is before 0 and trimmed by the edit list).

use crate::package::{Rendition, RenditionKind, Segment};
use mp4::Mp4Reader;
use std::io::Cursor;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}: {1}")]
    Bad(String, String),
    #[error("{0}: cannot read: {1}")]
    Io(String, std::io::Error),
}

fn bad(what: impl Into<String>, why: impl Into<String>) -> VerifyError {
    VerifyError::Bad(what.into(), why.into())
}

/// Sample flag bit 16: sample_is_non_sync_sample.
const NON_SYNC: u32 = 1 << 16;

/// Inspects `dir/init.mp4` and `dir/seg_*.m4s`. Segments must follow each
/// other without a gap or an overlap in decode time, and a video
/// rendition's first picture must present at `presents_at` seconds (0 for
/// a whole video; a chunk's start for a chunk).
pub fn inspect_rendition(
    dir: &Path,
    name: &str,
    kind: RenditionKind,
    target: f64,
    presents_at: f64,
) -> Result<Rendition, VerifyError> {
    let init_path = dir.join("init.mp4");
    let init =
        std::fs::read(&init_path).map_err(|e| VerifyError::Io(format!("{name}/init.mp4"), e))?;
    let header = Mp4Reader::read_header(Cursor::new(&init), init.len() as u64)
        .map_err(|e| bad(format!("{name}/init.mp4"), e.to_string()))?;
    let trak = header
        .moov
        .traks
        .first()
        .ok_or_else(|| bad(format!("{name}/init.mp4"), "no track"))?;
    let track_id = trak.tkhd.track_id;
    let timescale = trak.mdia.mdhd.timescale;
    let trex = header.moov.mvex.as_ref().map(|m| m.trex.clone());
    let edit_offset = edit_offset(
        trak.edts
            .iter()
            .filter_map(|e| e.elst.as_ref())
            .flat_map(|l| l.entries.iter().map(|e| e.media_time)),
    );
    let stsd = &trak.mdia.minf.stbl.stsd;
    let mut channels = 0;
    let mut sample_rate = 0;
    let (codecs, width, height) = match kind {
        RenditionKind::Video => {
            let avc1 = stsd.avc1.as_ref().ok_or_else(|| {
                bad(
                    format!("{name}/init.mp4"),
                    "video track is not H.264 (avc1)",
                )
            })?;
            let c = &avc1.avcc;
            (
                format!(
                    "avc1.{:02x}{:02x}{:02x}",
                    c.avc_profile_indication, c.profile_compatibility, c.avc_level_indication
                ),
                avc1.width as u32,
                avc1.height as u32,
            )
        }
        RenditionKind::Audio => {
            let Some(mp4a) = &stsd.mp4a else {
                return Err(bad(
                    format!("{name}/init.mp4"),
                    "audio track is not AAC (mp4a)",
                ));
            };
            // The sample entry's channelcount is a template field (MP4
            // muxers write 2); the AudioSpecificConfig says what was coded.
            channels = mp4a
                .esds
                .as_ref()
                .map(|e| e.es_desc.dec_config.dec_specific.chan_conf as u32)
                .filter(|c| *c > 0)
                .unwrap_or(mp4a.channelcount as u32);
            sample_rate = mp4a.samplerate.value() as u32;
            ("mp4a.40.2".to_string(), 0, 0)
        }
    };

    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| VerifyError::Io(name.to_string(), e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|f| f.starts_with("seg_") && f.ends_with(".m4s"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(name, "no segments were produced"));
    }
    let mut segments = Vec::with_capacity(files.len());
    let mut frames = 0u64;
    let mut first_composition = 0u64;
    for (i, file) in files.iter().enumerate() {
        let what = format!("{name}/{file}");
        let seg = std::fs::read(dir.join(file)).map_err(|e| VerifyError::Io(what.clone(), e))?;
        let mut whole = init.clone();
        whole.extend_from_slice(&seg);
        let parsed = Mp4Reader::read_header(Cursor::new(&whole), whole.len() as u64)
            .map_err(|e| bad(&what, e.to_string()))?;
        if parsed.moofs.is_empty() {
            return Err(bad(&what, "no movie fragment (moof)"));
        }
        let mut ticks = 0u64;
        let mut start = None;
        for (m, moof) in parsed.moofs.iter().enumerate() {
            for traf in &moof.trafs {
                if traf.tfhd.track_id != track_id {
                    return Err(bad(
                        &what,
                        format!(
                            "fragment for track {} but the init segment has track {track_id}",
                            traf.tfhd.track_id
                        ),
                    ));
                }
                if start.is_none() {
                    start = traf.tfdt.as_ref().map(|t| t.base_media_decode_time);
                }
                let Some(trun) = &traf.trun else { continue };
                let default_duration = traf
                    .tfhd
                    .default_sample_duration
                    .or(trex.as_ref().map(|t| t.default_sample_duration))
                    .unwrap_or(0);
                let durations: u64 = if trun.sample_durations.is_empty() {
                    default_duration as u64 * trun.sample_count as u64
                } else {
                    trun.sample_durations.iter().map(|d| *d as u64).sum()
                };
                ticks += durations;
                frames += trun.sample_count as u64;
                if i == 0 && m == 0 {
                    // Composition offset of the first sample: B-frames make
                    // the first picture show after decode time zero.
                    first_composition = trun.sample_cts.first().map_or(0, |c| {
                        if trun.version == 1 {
                            (*c as i32).max(0) as u64
                        } else {
                            *c as u64
                        }
                    });
                }
                if m == 0 && kind == RenditionKind::Video {
                    let first_flags = trun
                        .first_sample_flags
                        .or_else(|| trun.sample_flags.first().copied())
                        .or(traf.tfhd.default_sample_flags)
                        .or(trex.as_ref().map(|t| t.default_sample_flags))
                        .unwrap_or(0);
                    if first_flags & NON_SYNC != 0 {
                        return Err(bad(&what, "does not start on a keyframe"));
                    }
                }
            }
        }
        let start = start.unwrap_or(0);
        if let Some(prev) = segments.last() {
            let Segment {
                start: s0,
                ticks: t0,
                ..
            } = prev;
            if s0 + t0 != start {
                return Err(bad(
                    &what,
                    format!(
                        "starts at decode time {start} but the segment before it ends at {}: a gap or an overlap",
                        s0 + t0
                    ),
                ));
            }
        }
        let duration = ticks as f64 / timescale.max(1) as f64;
        let last = i + 1 == files.len();
        let tolerance = (target * 0.1).max(0.1);
        if duration <= 0.0
            || duration > target * 1.5
            || (!last && kind == RenditionKind::Video && (duration - target).abs() > tolerance)
        {
            return Err(bad(
                &what,
                format!("lasts {duration:.3} s; segments should last {target} s"),
            ));
        }
        segments.push(Segment {
            file: file.clone(),
            duration,
            bytes: seg.len() as u64,
            start,
            ticks,
        });
    }
    let total: f64 = segments.iter().map(|s| s.duration).sum();
    let total_bytes: u64 = segments.iter().map(|s| s.bytes).sum::<u64>() + init.len() as u64;
    let peak = segments
        .iter()
        .map(|s| s.bytes as f64 * 8.0 / s.duration.max(0.001))
        .fold(0.0, f64::max);
    let first_start = segments.first().map_or(0, |s| s.start);
    let expected = (presents_at * timescale as f64).round() as u64 + edit_offset;
    if kind == RenditionKind::Video && first_start + first_composition != expected {
        let at = (first_start + first_composition) as f64 - edit_offset as f64;
        return Err(bad(
            format!("{name}/init.mp4"),
            format!(
                "the first picture presents at {:.3} s, not {presents_at:.3}: audio and video would be out of sync",
                at / timescale.max(1) as f64
            ),
        ));
    }
    let fps = if kind == RenditionKind::Video && total > 0.0 {
        frames as f64 / total
    } else {
        0.0
    };
    Ok(Rendition {
        name: name.to_string(),
        kind,
        codecs,
        width,
        height,
        fps,
        timescale,
        edit_offset,
        composition_offset: first_composition,
        channels,
        sample_rate,
        bandwidth: peak.ceil() as u64,
        average_bandwidth: (total_bytes as f64 * 8.0 / total.max(0.001)).ceil() as u64,
        segments,
        audio: None,
    })
}

/// Media time the track's edit list skips (its first non-empty edit's
/// `media_time`): the B-frame delay for video, the encoder priming for
/// AAC. An empty edit (media_time -1) delays, it does not skip.
fn edit_offset(mut media_times: impl Iterator<Item = u64>) -> u64 {
    media_times
        .find(|t| *t != u32::MAX as u64 && *t != u64::MAX)
        .unwrap_or(0)
}

/// Duration of one fMP4 segment in its track's timescale (the sum of its
/// samples' durations), read with the init segment.
pub fn segment_ticks(init: &[u8], segment: &[u8]) -> Result<u64, String> {
    let whole = [init, segment].concat();
    let parsed = Mp4Reader::read_header(Cursor::new(&whole), whole.len() as u64)
        .map_err(|e| e.to_string())?;
    let trex = parsed
        .moov
        .mvex
        .as_ref()
        .map(|m| m.trex.default_sample_duration);
    let mut ticks = 0u64;
    for traf in parsed.moofs.iter().flat_map(|m| m.trafs.iter()) {
        let Some(trun) = &traf.trun else { continue };
        ticks += if trun.sample_durations.is_empty() {
            traf.tfhd.default_sample_duration.or(trex).unwrap_or(0) as u64
                * trun.sample_count as u64
        } else {
            trun.sample_durations.iter().map(|d| *d as u64).sum()
        };
    }
    if parsed.moofs.is_empty() {
        return Err("no movie fragment (moof)".into());
    }
    Ok(ticks)
}
