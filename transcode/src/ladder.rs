//! The ladder plan: which video rungs and audio renditions to encode for a
//! given source.

use crate::lang;
use crate::probe::{AudioTrack, SourceInfo};
use meshcast_conf::TranscodeSection;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rung {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
    /// Frames per GOP: one keyframe at every segment start, on every rung.
    pub gop: u32,
    pub fps: f64,
    /// H.264 level for `-level:v`, e.g. "3.1" (one of `LEVELS`: a job
    /// naming another is refused when read).
    #[serde(deserialize_with = "known_level")]
    pub level: String,
}

/// One audio rendition: a source track re-encoded as AAC-LC.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioRung {
    /// Folder name: `audio` for the first track, `audio2`, `audio3`, … after.
    pub name: String,
    /// Ordinal among the source's audio streams (`0:a:N`).
    pub source_index: usize,
    pub channels: u32,
    pub sample_rate: u32,
    pub kbps: u32,
    /// BCP 47 tag (`en`, `fr`, `und`).
    pub language: String,
    /// What a player's track menu shows.
    pub label: String,
    pub default: bool,
}

fn even(x: f64) -> u32 {
    ((x / 2.0).round() as u32).max(1) * 2
}

/// H.264 levels (Table A-1): level, max macroblocks per second, max frame
/// size in macroblocks, max bitrate in kbit/s for the High profile
/// (1.25 × the Baseline/Main figure). Nothing below 3.0: lower levels
/// (and the 0.9 / "1b" that x264 picks for tiny pictures) are refused or
/// misread by MSE players, and every device that decodes video decodes 3.0.
const LEVELS: [(&str, u64, u64, u64); 9] = [
    ("3.0", 40_500, 1_620, 12_500),
    ("3.1", 108_000, 3_600, 17_500),
    ("3.2", 216_000, 5_120, 25_000),
    ("4.0", 245_760, 8_192, 25_000),
    ("4.1", 245_760, 8_192, 62_500),
    ("4.2", 522_240, 8_704, 62_500),
    ("5.0", 589_824, 22_080, 168_750),
    ("5.1", 983_040, 36_864, 300_000),
    ("5.2", 2_073_600, 36_864, 300_000),
];

fn known_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::Deserialize;
    let s = String::deserialize(d)?;
    if LEVELS.iter().any(|l| l.0 == s) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "unknown H.264 level {s:?}"
        )))
    }
}

/// The lowest level (at least 3.0) whose limits hold this picture size,
/// frame rate and peak bitrate.
pub fn h264_level(width: u32, height: u32, fps: f64, max_kbps: u32) -> &'static str {
    let mbs = (width as u64).div_ceil(16) * (height as u64).div_ceil(16);
    let mbps = (mbs as f64 * fps).ceil() as u64;
    // A side may not exceed sqrt(8 × MaxFS) macroblocks.
    let side = (width.max(height) as u64).div_ceil(16);
    LEVELS
        .iter()
        .find(|(_, max_mbps, max_fs, max_br)| {
            mbs <= *max_fs
                && mbps <= *max_mbps
                && side * side <= 8 * max_fs
                && max_kbps as u64 <= *max_br
        })
        .map_or("5.2", |l| l.0)
}

/// Video rungs no larger than the source, from the top. A rung's `height`
/// in the config is the picture's short side, so a portrait 1080x1920
/// source gets a 1080x1920 top rung, as a landscape 1920x1080 one does.
/// If every configured rung is larger, one rung at the source's own size
/// with the smallest configured bitrate scaled by area.
pub fn plan(source: &SourceInfo, config: &TranscodeSection) -> Vec<Rung> {
    let fps = if source.fps > 60.0 { 30.0 } else { source.fps };
    let gop = (fps * config.segment_duration.0.as_secs_f64())
        .round()
        .max(1.0) as u32;
    let short = source.width.min(source.height) as f64;
    let make = |name: &str, short_side: u32, kbps: u32| {
        let scale = short_side as f64 / short;
        let (width, height) = (
            even(source.width as f64 * scale),
            even(source.height as f64 * scale),
        );
        Rung {
            name: name.to_string(),
            width,
            height,
            video_kbps: kbps,
            gop,
            fps,
            level: h264_level(width, height, fps, kbps * 107 / 100).to_string(),
        }
    };
    let mut rungs: Vec<Rung> = config
        .rungs
        .iter()
        .filter(|r| r.height as f64 <= short)
        .map(|r| make(&r.name, r.height, r.video_kbps))
        .collect();
    if rungs.is_empty() {
        let smallest = config
            .rungs
            .iter()
            .min_by_key(|r| r.height)
            .expect("config has rungs");
        let side = even(short);
        let scale = (side as f64 / smallest.height as f64).powi(2);
        let kbps = ((smallest.video_kbps as f64 * scale) as u32).max(100);
        rungs.push(make(&format!("{side}p"), side, kbps));
    }
    rungs
}

/// Lowest AAC bitrate we encode at: below this the encoder's output is
/// noise, whatever the source had.
const MIN_AUDIO_KBPS: u32 = 16;

/// One AAC-LC rendition per source audio track. Never more channels than
/// the source (stereo at most), never a higher bitrate than the source's
/// (when the container says), never a higher sample rate (48 kHz at most).
pub fn plan_audio(source: &SourceInfo, config: &TranscodeSection) -> Vec<AudioRung> {
    let any_default = source.audio.iter().any(|a| a.default);
    source
        .audio
        .iter()
        .enumerate()
        .map(|(i, track)| audio_rung(i, track, config, !any_default && i == 0))
        .collect()
}

fn audio_rung(
    i: usize,
    track: &AudioTrack,
    config: &TranscodeSection,
    first_without_default: bool,
) -> AudioRung {
    let channels = track.channels.clamp(1, 2);
    // AAC-LC needs about this much per channel to stay clean.
    let wanted = config.audio_kbps.min(64 * channels);
    let kbps = match track.bit_rate {
        Some(bps) => wanted.min((bps.div_ceil(1000) as u32).max(MIN_AUDIO_KBPS)),
        None => wanted,
    };
    let language = lang::bcp47(track.language.as_deref());
    let label = track
        .title
        .clone()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| lang::display_name(&language, i + 1));
    AudioRung {
        name: if i == 0 {
            "audio".into()
        } else {
            format!("audio{}", i + 1)
        },
        source_index: track.index,
        channels,
        sample_rate: track.sample_rate.clamp(8_000, 48_000),
        kbps,
        language,
        label,
        default: track.default || first_without_default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcast_conf::TranscodeSection;

    fn source(w: u32, h: u32, fps: f64) -> SourceInfo {
        SourceInfo {
            width: w,
            height: h,
            fps,
            duration: 10.0,
            video_codec: "h264".into(),
            audio: vec![track(0, 2, None, Some("eng"))],
            subtitles: vec![],
        }
    }

    fn track(index: usize, channels: u32, bps: Option<u64>, lang: Option<&str>) -> AudioTrack {
        AudioTrack {
            index,
            channels,
            sample_rate: 48_000,
            bit_rate: bps,
            language: lang.map(str::to_string),
            title: None,
            default: false,
        }
    }

    #[test]
    fn never_above_the_source() {
        let rungs = plan(&source(1280, 720, 30.0), &TranscodeSection::default());
        let names: Vec<_> = rungs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["720p", "480p", "360p"]);
        assert_eq!((rungs[1].width, rungs[1].height), (854, 480));
        assert!(rungs.iter().all(|r| r.gop == 120));
    }

    #[test]
    fn portrait_rungs_go_by_the_short_side() {
        let rungs = plan(&source(1080, 1920, 30.0), &TranscodeSection::default());
        let sizes: Vec<_> = rungs.iter().map(|r| (r.width, r.height)).collect();
        assert_eq!(sizes, [(1080, 1920), (720, 1280), (480, 854), (360, 640)]);
        assert_eq!(rungs[0].name, "1080p");
    }

    #[test]
    fn tiny_sources_get_one_rung_at_their_size() {
        let rungs = plan(&source(320, 240, 25.0), &TranscodeSection::default());
        assert_eq!(rungs.len(), 1);
        assert_eq!(
            (rungs[0].width, rungs[0].height, rungs[0].name.as_str()),
            (320, 240, "240p")
        );
        assert!(rungs[0].video_kbps < 800);
    }

    #[test]
    fn high_frame_rates_are_halved_and_gop_follows() {
        let rungs = plan(&source(1920, 1080, 120.0), &TranscodeSection::default());
        assert_eq!(rungs[0].fps, 30.0);
        assert_eq!(rungs[0].gop, 120);
        assert_eq!(rungs.len(), 4);
    }

    #[test]
    fn levels_players_accept() {
        // Tiny and slow pictures used to come out at level 0.9 (avc1.640009).
        for (w, h, fps) in [
            (64, 64, 1.0),
            (64, 64, 30.0),
            (128, 96, 15.0),
            (176, 144, 15.0),
        ] {
            assert_eq!(h264_level(w, h, fps, 200), "3.0", "{w}x{h}@{fps}");
        }
        assert_eq!(h264_level(1280, 720, 30.0, 3000), "3.1");
        assert_eq!(h264_level(1280, 720, 60.0, 6000), "3.2");
        assert_eq!(h264_level(1920, 1080, 30.0, 5350), "4.0");
        assert_eq!(h264_level(1080, 1920, 30.0, 5350), "4.0");
        assert_eq!(h264_level(1920, 1080, 60.0, 8000), "4.2");
        assert_eq!(h264_level(3840, 2160, 30.0, 20000), "5.1");
        let rungs = plan(&source(64, 64, 1.0), &TranscodeSection::default());
        assert_eq!(rungs[0].level, "3.0");
    }

    #[test]
    fn audio_never_exceeds_the_source() {
        let config = TranscodeSection::default();
        let mut s = source(640, 360, 25.0);
        s.audio = vec![
            track(0, 1, Some(12_000), Some("eng")),
            track(1, 6, Some(640_000), Some("fre")),
            track(2, 2, None, None),
        ];
        let a = plan_audio(&s, &config);
        assert_eq!(a.len(), 3);
        assert_eq!(
            (a[0].channels, a[0].kbps),
            (1, 16),
            "12 kbps mono stays small"
        );
        assert_eq!((a[1].channels, a[1].kbps), (2, 128), "5.1 becomes stereo");
        assert_eq!((a[2].channels, a[2].kbps), (2, 128));
        let names: Vec<_> = a.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["audio", "audio2", "audio3"]);
        let langs: Vec<_> = a.iter().map(|r| r.language.as_str()).collect();
        assert_eq!(langs, ["en", "fr", "und"]);
        assert_eq!(a[1].label, "French");
        assert!(a[0].default && !a[1].default && !a[2].default);
        s.audio[1].default = true;
        let a = plan_audio(&s, &config);
        assert!(!a[0].default && a[1].default, "the source's default wins");
        s.audio[0].sample_rate = 22_050;
        assert_eq!(plan_audio(&s, &config)[0].sample_rate, 22_050);
    }
}
