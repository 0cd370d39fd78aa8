//! What a transcode produced, as the playlists describe it: renditions over
//! one set of CMAF segments (HLS in `hls.rs`, DASH in `mpd.rs`) plus WebVTT
//! subtitle files.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenditionKind {
    Video,
    Audio,
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub file: String,
    pub duration: f64,
    pub bytes: u64,
    /// Decode time of the first sample (`tfdt`), in `timescale` ticks.
    pub start: u64,
    pub ticks: u64,
}

/// How an audio rendition is offered in a player's track menu.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackLabel {
    /// BCP 47 (`en`, `fr`, `und`).
    pub language: String,
    pub name: String,
    pub default: bool,
}

/// One encoded stream: a video rung or an audio track.
#[derive(Debug, Clone)]
pub struct Rendition {
    pub name: String,
    pub kind: RenditionKind,
    pub codecs: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub timescale: u32,
    /// Media time the init segment's edit list skips (B-frame delay, AAC
    /// priming). Players apply it themselves, so the MPD's
    /// presentationTimeOffset stays 0.
    pub edit_offset: u64,
    /// Composition offset of the first sample (the B-frame delay; 0 for
    /// audio). With `edit_offset` it maps decode time to presentation time.
    pub composition_offset: u64,
    /// Audio only: channels and sample rate as encoded.
    pub channels: u32,
    pub sample_rate: u32,
    pub bandwidth: u64,
    pub average_bandwidth: u64,
    pub segments: Vec<Segment>,
    /// Audio only: language and name for the track menu.
    pub audio: Option<TrackLabel>,
}

impl Rendition {
    /// When the last sample ends, in seconds of presentation time.
    pub fn end(&self) -> f64 {
        let last = self.segments.last().map_or(0, |s| s.start + s.ticks);
        (last + self.composition_offset).saturating_sub(self.edit_offset) as f64
            / self.timescale.max(1) as f64
    }

    pub fn label(&self) -> TrackLabel {
        self.audio.clone().unwrap_or(TrackLabel {
            language: "und".into(),
            name: self.name.clone(),
            default: true,
        })
    }
}

/// A text track: one WebVTT file for the whole video.
#[derive(Debug, Clone)]
pub struct Subtitle {
    /// Folder name (`subs`, `subs2`, …); the file is `{name}/subs.vtt`.
    pub name: String,
    pub label: TrackLabel,
    pub bytes: u64,
}

pub const SUBTITLE_FILE: &str = "subs.vtt";

#[derive(Debug, Clone)]
pub struct Manifest {
    pub renditions: Vec<Rendition>,
    pub subtitles: Vec<Subtitle>,
    pub segment_duration: f64,
    /// Where the presentation ends: the latest end of any rendition (audio
    /// runs a few milliseconds past video). A shorter declared duration
    /// leaves segments past the end that DASH players never fetch, and
    /// dash.js then stalls just before the end.
    pub duration: f64,
}

impl Manifest {
    pub fn audios(&self) -> impl Iterator<Item = &Rendition> {
        self.renditions
            .iter()
            .filter(|r| r.kind == RenditionKind::Audio)
    }

    pub fn videos(&self) -> impl Iterator<Item = &Rendition> {
        self.renditions
            .iter()
            .filter(|r| r.kind == RenditionKind::Video)
    }

    /// The presentation's end over all renditions.
    pub fn end(renditions: &[Rendition]) -> f64 {
        renditions.iter().map(Rendition::end).fold(0.0, f64::max)
    }
}

/// Writes every playlist into `out`, and removes ffmpeg's own playlists.
pub fn write_all(out: &Path, m: &Manifest) -> std::io::Result<()> {
    for r in &m.renditions {
        let dir = out.join(&r.name);
        std::fs::write(
            dir.join("index.m3u8"),
            crate::hls::media_playlist(r, m.segment_duration),
        )?;
        let _ = std::fs::remove_file(dir.join("ffmpeg.m3u8"));
    }
    for s in &m.subtitles {
        std::fs::write(
            out.join(&s.name).join("index.m3u8"),
            crate::hls::subtitle_playlist(m.duration),
        )?;
    }
    std::fs::write(out.join("master.m3u8"), crate::hls::master_playlist(m))?;
    std::fs::write(out.join("manifest.mpd"), crate::mpd::mpd(m))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn manifest() -> Manifest {
        let seg = |i: u64| Segment {
            file: format!("seg_{i:05}.m4s"),
            duration: 4.0,
            bytes: 500_000,
            start: (i - 1) * 4 * 12800,
            ticks: 4 * 12800,
        };
        let video = Rendition {
            name: "720p".into(),
            kind: RenditionKind::Video,
            codecs: "avc1.64001f".into(),
            width: 1280,
            height: 720,
            fps: 25.0,
            timescale: 12800,
            edit_offset: 1024,
            composition_offset: 1024,
            channels: 0,
            sample_rate: 0,
            bandwidth: 1_000_000,
            average_bandwidth: 900_000,
            segments: vec![seg(1), seg(2), seg(3)],
            audio: None,
        };
        let audio = |name: &str, language: &str, label: &str, default| {
            let mut a = video.clone();
            a.name = name.into();
            a.kind = RenditionKind::Audio;
            a.codecs = "mp4a.40.2".into();
            a.timescale = 48000;
            a.edit_offset = 1024;
            a.composition_offset = 0;
            a.channels = 2;
            a.sample_rate = 48000;
            a.bandwidth = 130_000;
            a.segments = (0..3)
                .map(|i| Segment {
                    file: format!("seg_{:05}.m4s", i + 1),
                    duration: 4.0,
                    bytes: 64_000,
                    start: i * 192_000,
                    ticks: if i == 2 { 193_024 } else { 192_000 },
                })
                .collect();
            a.audio = Some(TrackLabel {
                language: language.into(),
                name: label.into(),
                default,
            });
            a
        };
        let (en, fr) = (
            audio("audio", "en", "English", true),
            audio("audio2", "fr", "French", false),
        );
        Manifest {
            renditions: vec![video, en, fr],
            subtitles: vec![Subtitle {
                name: "subs".into(),
                label: TrackLabel {
                    language: "en".into(),
                    name: "English".into(),
                    default: false,
                },
                bytes: 300,
            }],
            segment_duration: 4.0,
            duration: 12.0,
        }
    }

    #[test]
    fn the_end_is_the_latest_rendition_end_after_edit_lists() {
        let m = manifest();
        assert!((m.renditions[0].end() - 12.0).abs() < 1e-9);
        // Audio: 577 024 ticks minus 1024 priming = 12.0 s exactly.
        assert!((m.renditions[1].end() - 12.0).abs() < 1e-9);
        assert!((Manifest::end(&m.renditions) - 12.0).abs() < 1e-9);
    }
}
