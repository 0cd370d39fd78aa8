//! Drives `ffmpeg`: one process decodes the source once and encodes every
//! rung (H.264, GOPs aligned by forced keyframes at segment boundaries) and
//! every audio track (AAC-LC), each packaged as CMAF fMP4 segments; text
//! subtitles are then extracted as WebVTT.
//!
//! A/V sync: each rendition is its own muxer, and ffmpeg's default
//! (`-avoid_negative_ts make_non_negative`) shifts each one on its own —
//! video later by its B-frame delay, audio by the AAC priming — so the
//! renditions disagree by tens of milliseconds (two seconds at 1 fps).
//! With `-avoid_negative_ts disabled` every output keeps the encoder's
//! timestamps and the muxer writes one edit list per track (video: the
//! composition delay; audio: the 1024 priming samples), which ffmpeg,
//! Chromium's MSE, hls.js, dash.js and Shaka all honour: the first picture
//! and the first real audio sample both present at 0.

use crate::ladder::{AudioRung, Rung};
use crate::probe::SourceInfo;
use crate::TranscodeError;
use meshcast_conf::TranscodeSection;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// The ffmpeg this process runs (`ffmpeg` from PATH unless set).
static PROGRAM: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Sets which ffmpeg program this process runs (a worker's `[worker]
/// ffmpeg`); the first call wins.
pub fn use_ffmpeg(program: std::path::PathBuf) {
    let _ = PROGRAM.set(program);
}

/// A command running this process's ffmpeg.
pub fn command() -> Command {
    Command::new(
        PROGRAM
            .get()
            .map_or(std::path::Path::new("ffmpeg"), |p| p.as_path()),
    )
}

/// One `-progress` report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// Media time encoded so far, in seconds.
    At(f64),
    End,
}

/// Decides when ffmpeg has stalled: its output time has not advanced for
/// `limit`. Time is handed in, so the rule is tested without waiting.
#[derive(Debug, Clone, Copy)]
pub struct StallWatch {
    limit: std::time::Duration,
    furthest: f64,
    since: tokio::time::Instant,
}

impl StallWatch {
    pub fn new(limit: std::time::Duration, now: tokio::time::Instant) -> StallWatch {
        StallWatch {
            limit,
            furthest: -1.0,
            since: now,
        }
    }

    /// ffmpeg reported output time `at` (seconds of media encoded).
    pub fn on_progress(&mut self, now: tokio::time::Instant, at: f64) {
        if at > self.furthest {
            self.furthest = at;
            self.since = now;
        }
    }

    /// When ffmpeg counts as stalled unless it moves on before then.
    pub fn deadline(&self) -> tokio::time::Instant {
        self.since + self.limit
    }
}

/// Parses a `key=value` line of ffmpeg's `-progress` output.
pub fn parse_progress_line(line: &str) -> Option<Progress> {
    let (key, value) = line.trim().split_once('=')?;
    match key {
        "out_time_us" | "out_time_ms" => value
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .map(|us| Progress::At(us as f64 / 1e6)),
        "progress" if value == "end" => Some(Progress::End),
        _ => None,
    }
}

/// Which part of the input an encode covers and how its segments are
/// numbered: all of it from segment 1 for a whole-file transcode; for a
/// chunk, `skip` seconds from the chunk file's start for `length` seconds,
/// numbered from the chunk's first segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub skip: f64,
    pub length: Option<f64>,
    pub first_segment: u32,
}

impl Span {
    pub const WHOLE: Span = Span {
        skip: 0.0,
        length: None,
        first_segment: 1,
    };
}

fn hls_output(args: &mut Vec<String>, dir: &Path, segment: f64, first_segment: u32) {
    let seg = dir.join("seg_%05d.m4s");
    for a in [
        "-f",
        "hls",
        "-hls_segment_type",
        "fmp4",
        "-hls_playlist_type",
        "vod",
        "-hls_flags",
        "independent_segments",
        "-hls_fmp4_init_filename",
        "init.mp4",
        "-start_number",
    ] {
        args.push(a.into());
    }
    args.push(first_segment.to_string());
    args.push("-avoid_negative_ts".into());
    args.push("disabled".into());
    args.push("-hls_time".into());
    args.push(format!("{segment}"));
    args.push("-hls_segment_filename".into());
    args.push(seg.to_string_lossy().into_owned());
    args.push(dir.join("ffmpeg.m3u8").to_string_lossy().into_owned());
}

/// The full ffmpeg argument list (without the program name).
pub fn build_args(
    input: &Path,
    out: &Path,
    source: &SourceInfo,
    (rungs, audio): (&[Rung], &[AudioRung]),
    span: Span,
    config: &TranscodeSection,
) -> Vec<String> {
    let segment = config.segment_duration.0.as_secs_f64();
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-y",
        "-loglevel",
        "error",
        "-nostats",
        "-progress",
        "pipe:1",
        "-xerror",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // An input seek decodes from the keyframe before `skip` and drops the
    // frames before it; timestamps then start at 0, so forced keyframes
    // fall every `segment` seconds from the span's start.
    if span.skip > 0.0 {
        args.extend(["-ss".to_string(), format!("{:.6}", span.skip)]);
    }
    if let Some(length) = span.length {
        args.extend(["-t".to_string(), format!("{length:.6}")]);
    }
    args.push("-i".into());
    args.push(input.to_string_lossy().into_owned());
    if !rungs.is_empty() {
        args.push("-filter_complex".into());
        args.push(video_graph(source, rungs));
    }
    for (i, r) in rungs.iter().enumerate() {
        video_output(&mut args, i, r, config);
        hls_output(&mut args, &out.join(&r.name), segment, span.first_segment);
    }
    for a in audio {
        audio_output(&mut args, a);
        hls_output(&mut args, &out.join(&a.name), segment, span.first_segment);
    }
    args
}

/// One decode split into every rung, each scaled (and its rate changed).
fn video_graph(source: &SourceInfo, rungs: &[Rung]) -> String {
    let mut graph = format!("[0:v:0]split={}", rungs.len());
    for i in 0..rungs.len() {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, r) in rungs.iter().enumerate() {
        let fps = if (r.fps - source.fps).abs() > 0.01 {
            format!(",fps={}", r.fps)
        } else {
            String::new()
        };
        graph.push_str(&format!(
            ";[s{i}]scale={}:{}{fps},setsar=1,format=yuv420p[v{i}]",
            r.width, r.height
        ));
    }
    graph
}

fn video_output(args: &mut Vec<String>, i: usize, r: &Rung, config: &TranscodeSection) {
    let segment = config.segment_duration.0.as_secs_f64();
    args.extend([
        "-map".to_string(),
        format!("[v{i}]"),
        "-an".into(),
        "-c:v".into(),
        "libx264".into(),
        "-preset".into(),
        config.preset.clone(),
        "-profile:v".into(),
        "high".into(),
        "-level:v".into(),
        r.level.clone(),
        "-b:v".into(),
        format!("{}k", r.video_kbps),
        "-maxrate".into(),
        format!("{}k", r.video_kbps * 107 / 100),
        "-bufsize".into(),
        format!("{}k", r.video_kbps * 3 / 2),
        "-g".into(),
        r.gop.to_string(),
        "-keyint_min".into(),
        r.gop.to_string(),
        "-sc_threshold".into(),
        "0".into(),
        "-force_key_frames".into(),
        format!("expr:gte(t,n_forced*{segment})"),
    ]);
}

fn audio_output(args: &mut Vec<String>, a: &AudioRung) {
    args.extend([
        "-map".to_string(),
        format!("0:a:{}", a.source_index),
        "-vn".into(),
        "-c:a".into(),
        "aac".into(),
        "-profile:a".into(),
        "aac_low".into(),
        "-ac".into(),
        a.channels.to_string(),
        "-ar".into(),
        a.sample_rate.to_string(),
        "-b:a".into(),
        format!("{}k", a.kbps),
    ]);
}

pub async fn run(
    input: &Path,
    out: &Path,
    source: &SourceInfo,
    (rungs, audio): (&[Rung], &[AudioRung]),
    span: Span,
    config: &TranscodeSection,
    mut on_progress: impl FnMut(f64) + Send,
) -> Result<(), TranscodeError> {
    for name in rungs
        .iter()
        .map(|r| &r.name)
        .chain(audio.iter().map(|a| &a.name))
    {
        std::fs::create_dir_all(out.join(name))?;
    }
    let args = build_args(input, out, source, (rungs, audio), span, config);
    let length = span.length.unwrap_or(source.duration - span.skip);
    tracing::debug!(?args, "ffmpeg");
    let mut child = command()
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TranscodeError::Ffmpeg(
                "ffmpeg is not installed; install it with `apt-get install ffmpeg`".into(),
            ),
            _ => TranscodeError::Io(e),
        })?;
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut watch = StallWatch::new(config.stall_timeout.0, tokio::time::Instant::now());
    loop {
        let line = match tokio::time::timeout_at(watch.deadline(), lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => break,
            Err(_) => {
                let _ = child.kill().await;
                return Err(TranscodeError::Ffmpeg(format!(
                    "ffmpeg made no progress for {} s and was stopped ([transcode] stall_timeout); the file may be damaged or crafted to stall decoders",
                    config.stall_timeout.0.as_secs_f64()
                )));
            }
        };
        match parse_progress_line(&line) {
            Some(Progress::At(t)) => {
                watch.on_progress(tokio::time::Instant::now(), t);
                if length > 0.0 {
                    on_progress((t / length).clamp(0.0, 1.0))
                }
            }
            Some(Progress::End) => on_progress(1.0),
            _ => {}
        }
    }
    let status = child.wait().await?;
    let stderr = errors.await.unwrap_or_default();
    if !status.success() {
        let reason = if stderr.contains("partial file")
            || stderr.contains("Invalid NAL")
            || stderr.contains("corrupt")
        {
            "the upload is incomplete or damaged: ffmpeg could not decode it to the end".to_string()
        } else {
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            format!("ffmpeg failed ({status}): {last}")
        };
        return Err(TranscodeError::Ffmpeg(reason));
    }
    Ok(())
}

/// Extracts subtitle track `index` (ordinal among subtitle streams) as
/// WebVTT into `dest`. A track ffmpeg cannot convert is reported, not fatal:
/// the video is still worth publishing without it.
pub async fn extract_subtitle(input: &Path, index: usize, dest: &Path) -> Result<(), String> {
    let out = command()
        .args(["-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-i"])
        .arg(input)
        .args([
            "-map",
            &format!("0:s:{index}"),
            "-c:s",
            "webvtt",
            "-f",
            "webvtt",
        ])
        .arg(dest)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(why.lines().last().unwrap_or("ffmpeg failed").to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ladder::plan;
    use std::path::PathBuf;

    #[test]
    fn a_stall_is_output_time_standing_still() {
        let t0 = tokio::time::Instant::now();
        let s = std::time::Duration::from_secs(1);
        let mut w = StallWatch::new(std::time::Duration::from_secs(120), t0);
        assert_eq!(w.deadline(), t0 + 120 * s);
        w.on_progress(t0 + 10 * s, 0.0);
        assert_eq!(w.deadline(), t0 + 130 * s, "the first report counts");
        w.on_progress(t0 + 100 * s, 0.0);
        w.on_progress(t0 + 129 * s, 0.0);
        assert_eq!(
            w.deadline(),
            t0 + 130 * s,
            "reports that do not advance do not help"
        );
        w.on_progress(t0 + 129 * s, 4.5);
        assert_eq!(w.deadline(), t0 + 249 * s);
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_progress_line("out_time_us=2500000"),
            Some(Progress::At(2.5))
        );
        assert_eq!(parse_progress_line("out_time_us=N/A"), None);
        assert_eq!(parse_progress_line("progress=end"), Some(Progress::End));
        assert_eq!(parse_progress_line("progress=continue"), None);
        assert_eq!(parse_progress_line("frame=12"), None);
    }

    #[test]
    fn args_align_keyframes_on_every_rung() {
        let source = SourceInfo {
            width: 1280,
            height: 720,
            fps: 25.0,
            duration: 6.0,
            video_codec: "h264".into(),
            audio: vec![crate::probe::AudioTrack {
                index: 0,
                channels: 2,
                sample_rate: 48_000,
                bit_rate: None,
                language: None,
                title: None,
                default: true,
            }],
            subtitles: vec![],
        };
        let config = TranscodeSection::default();
        let rungs = plan(&source, &config);
        let audio = crate::ladder::plan_audio(&source, &config);
        let args = build_args(
            &PathBuf::from("in.mp4"),
            &PathBuf::from("/out"),
            &source,
            (&rungs, &audio),
            Span::WHOLE,
            &config,
        );
        let joined = args.join(" ");
        assert_eq!(args.iter().filter(|a| *a == "libx264").count(), 3);
        assert_eq!(
            args.iter()
                .filter(|a| a.as_str() == "expr:gte(t,n_forced*4)")
                .count(),
            3
        );
        assert!(joined.contains("-g 100 -keyint_min 100 -sc_threshold 0"));
        assert!(joined.contains("/out/audio/seg_%05d.m4s"));
        assert!(joined.contains("[s2]scale=640:360,setsar=1,format=yuv420p[v2]"));
        assert!(joined.contains("-profile:v high -level:v 3.0"));
        assert!(
            joined.contains("-map 0:a:0 -vn -c:a aac -profile:a aac_low -ac 2 -ar 48000 -b:a 128k")
        );
        // Every output keeps the encoder's timestamps (edit lists carry the
        // B-frame delay and the AAC priming).
        assert_eq!(
            args.windows(2)
                .filter(|w| w[0] == "-avoid_negative_ts" && w[1] == "disabled")
                .count(),
            4
        );
    }
}
