//! `ffprobe` the upload and refuse what cannot become a video.

use meshcast_conf::TranscodeSection;
use serde::Deserialize;
use std::path::Path;
use tokio::process::Command;

#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub duration: f64,
    pub video_codec: String,
    /// Every audio track, in the source's order.
    pub audio: Vec<AudioTrack>,
    /// Every text subtitle track (bitmap subtitles cannot become WebVTT).
    pub subtitles: Vec<SubtitleTrack>,
}

/// One audio track of the source; `index` is its ordinal among audio
/// streams (ffmpeg's `0:a:N`).
#[derive(Debug, Clone, PartialEq)]
pub struct AudioTrack {
    pub index: usize,
    pub channels: u32,
    pub sample_rate: u32,
    /// Bits per second, when the container says.
    pub bit_rate: Option<u64>,
    pub language: Option<String>,
    pub title: Option<String>,
    pub default: bool,
}

/// One text subtitle track; `index` is its ordinal among subtitle streams.
#[derive(Debug, Clone, PartialEq)]
pub struct SubtitleTrack {
    pub index: usize,
    pub codec: String,
    pub language: Option<String>,
    pub title: Option<String>,
    pub default: bool,
}

/// Subtitle codecs ffmpeg turns into WebVTT (text, not pictures).
const TEXT_SUBTITLES: [&str; 7] = ["subrip", "ass", "ssa", "mov_text", "webvtt", "text", "srt"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProbeError {
    #[error("the file is empty")]
    Empty,
    #[error(
        "the file looks like a video but is incomplete or damaged (was the upload cut short?)"
    )]
    Truncated,
    #[error("this is not a video file ffmpeg can read ({0})")]
    NotMedia(String),
    #[error("the file has no video stream (audio-only files are not accepted)")]
    NoVideo,
    #[error("this is a still image, not a video")]
    StillImage,
    #[error("the video is too short ({0:.2} s); at least 0.5 s is needed")]
    TooShort(f64),
    #[error(
        "the video lasts {secs:.0} s; this hub accepts at most {max} s ([transcode] max_duration)"
    )]
    TooLong { secs: f64, max: u64 },
    #[error("the picture is {width}x{height}; this hub accepts sides up to {max} pixels ([transcode] max_side)")]
    TooLarge { width: u32, height: u32, max: u32 },
    #[error("ffprobe could not read the file within {0} s; it may be damaged or crafted to stall readers")]
    TimedOut(u64),
    #[error("{0} is not installed; install it with `apt-get install ffmpeg`")]
    ToolMissing(&'static str),
    #[error("cannot read the file: {0}")]
    Io(String),
}

#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    streams: Vec<Stream>,
    format: Option<Format>,
}

#[derive(Deserialize)]
struct Stream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
    duration: Option<String>,
    disposition: Option<Disposition>,
    channels: Option<u32>,
    sample_rate: Option<String>,
    bit_rate: Option<String>,
    #[serde(default)]
    tags: Tags,
}

#[derive(Deserialize)]
struct Disposition {
    #[serde(default)]
    attached_pic: u8,
    #[serde(default)]
    default: u8,
}

#[derive(Deserialize, Default)]
struct Tags {
    language: Option<String>,
    title: Option<String>,
}

impl Stream {
    fn is(&self, kind: &str) -> bool {
        self.codec_type.as_deref() == Some(kind)
    }

    fn default(&self) -> bool {
        self.disposition.as_ref().is_some_and(|d| d.default == 1)
    }

    fn language(&self) -> Option<String> {
        self.tags
            .language
            .clone()
            .filter(|l| !l.is_empty() && l != "und")
    }
}

fn audio_tracks(streams: &[Stream]) -> Vec<AudioTrack> {
    streams
        .iter()
        .filter(|s| s.is("audio"))
        .enumerate()
        .map(|(index, s)| AudioTrack {
            index,
            channels: s.channels.unwrap_or(2).max(1),
            sample_rate: s
                .sample_rate
                .as_deref()
                .and_then(|r| r.parse().ok())
                .unwrap_or(48_000),
            bit_rate: s.bit_rate.as_deref().and_then(|b| b.parse().ok()),
            language: s.language(),
            title: s.tags.title.clone(),
            default: s.default(),
        })
        .collect()
}

fn subtitle_tracks(streams: &[Stream]) -> Vec<SubtitleTrack> {
    streams
        .iter()
        .filter(|s| s.is("subtitle"))
        .enumerate()
        .filter_map(|(index, s)| {
            let codec = s.codec_name.clone().unwrap_or_default();
            if !TEXT_SUBTITLES.contains(&codec.as_str()) {
                tracing::info!(%codec, index, "subtitle track is not text; it cannot become WebVTT and is left out");
                return None;
            }
            Some(SubtitleTrack {
                index,
                codec,
                language: s.language(),
                title: s.tags.title.clone(),
                default: s.default(),
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct Format {
    format_name: Option<String>,
    duration: Option<String>,
}

/// Container signatures: a file starting like this that ffprobe cannot read
/// is a damaged video, not some other kind of file.
fn looks_like_video(head: &[u8]) -> bool {
    let mp4 =
        head.len() >= 8 && matches!(&head[4..8], b"ftyp" | b"moov" | b"mdat" | b"free" | b"wide");
    let mkv = head.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]);
    let ts = head.len() >= 189 && head[0] == 0x47 && head[188] == 0x47;
    let avi = head.starts_with(b"RIFF");
    mp4 || mkv || ts || avi
}

fn rate(s: &Option<String>) -> Option<f64> {
    let (n, d) = s.as_deref()?.split_once('/')?;
    let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
    (d > 0.0 && n > 0.0).then(|| n / d)
}

/// Reads `path` with ffprobe (within `limits.probe_timeout`) and refuses
/// what cannot become a video or is over `max_duration` / `max_side`.
pub async fn probe(path: &Path, limits: &TranscodeSection) -> Result<SourceInfo, ProbeError> {
    let meta = std::fs::metadata(path).map_err(|e| ProbeError::Io(e.to_string()))?;
    if meta.is_file() && meta.len() == 0 {
        return Err(ProbeError::Empty);
    }
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(path)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limits.probe_timeout.0, out)
        .await
        .map_err(|_| ProbeError::TimedOut(limits.probe_timeout.0.as_secs()))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ProbeError::ToolMissing("ffprobe"),
            _ => ProbeError::Io(e.to_string()),
        })?;
    let parsed: Option<Probe> = serde_json::from_slice(&out.stdout).ok();
    let readable = out.status.success() && parsed.as_ref().is_some_and(|p| p.format.is_some());
    if !readable {
        let mut head = vec![0u8; 512];
        let n = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
            .unwrap_or(0);
        if looks_like_video(&head[..n]) {
            return Err(ProbeError::Truncated);
        }
        let why = String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("unrecognised format")
            .to_string();
        let why = why.rsplit(": ").next().unwrap_or(&why).to_string();
        return Err(ProbeError::NotMedia(why));
    }
    let probe = parsed.expect("checked above");
    let format = probe.format.expect("checked above");
    let fname = format.format_name.unwrap_or_default();
    let video = probe
        .streams
        .iter()
        .find(|s| s.is("video") && s.disposition.as_ref().is_none_or(|d| d.attached_pic == 0));
    let Some(video) = video else {
        return Err(ProbeError::NoVideo);
    };
    let codec = video.codec_name.clone().unwrap_or_default();
    if fname.ends_with("_pipe")
        || fname == "image2"
        || matches!(codec.as_str(), "png" | "mjpeg" | "bmp" | "gif" | "webp")
            && format.duration.is_none()
    {
        return Err(ProbeError::StillImage);
    }
    if matches!(codec.as_str(), "ansi" | "text" | "bintext" | "xbin" | "idf") || fname == "tty" {
        return Err(ProbeError::NotMedia("text, not video".into()));
    }
    let duration = format
        .duration
        .as_deref()
        .or(video.duration.as_deref())
        .and_then(|d| d.parse::<f64>().ok())
        .unwrap_or(0.0);
    if duration < 0.5 {
        return Err(ProbeError::TooShort(duration));
    }
    let max = limits.max_duration.0.as_secs();
    if duration > max as f64 {
        return Err(ProbeError::TooLong {
            secs: duration,
            max,
        });
    }
    let (width, height) = match (video.width, video.height) {
        (Some(w), Some(h)) if w >= 16 && h >= 16 => (w, h),
        _ => {
            return Err(ProbeError::NotMedia(
                "the video stream has no picture size".into(),
            ))
        }
    };
    if width.max(height) > limits.max_side {
        return Err(ProbeError::TooLarge {
            width,
            height,
            max: limits.max_side,
        });
    }
    let fps = rate(&video.avg_frame_rate)
        .or_else(|| rate(&video.r_frame_rate))
        .unwrap_or(25.0);
    Ok(SourceInfo {
        width,
        height,
        fps,
        duration,
        video_codec: codec,
        audio: audio_tracks(&probe.streams),
        subtitles: subtitle_tracks(&probe.streams),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_signatures() {
        let mut mp4 = vec![0, 0, 0, 32];
        mp4.extend_from_slice(b"ftypisom");
        assert!(looks_like_video(&mp4));
        assert!(looks_like_video(&[0x1a, 0x45, 0xdf, 0xa3, 1]));
        assert!(!looks_like_video(b"hello world, this is text"));
    }

    #[test]
    fn frame_rates() {
        assert_eq!(
            rate(&Some("30000/1001".into())).map(|r| (r * 100.0).round()),
            Some(2997.0)
        );
        assert_eq!(rate(&Some("0/0".into())), None);
    }
}
