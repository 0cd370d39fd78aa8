//! The transcoder against real ffmpeg/ffprobe, on inputs made here.

mod common;

use common::{config, ffmpeg, scratch};
use meshcast_conf::TranscodeSection;
use meshcast_transcode::{probe, transcode, ProbeError, RenditionKind, TranscodeError};
use std::path::{Path, PathBuf};
use std::process::Command;

fn make_source(dir: &Path, secs: u32) -> PathBuf {
    let out = dir.join("src.mp4");
    let t = secs.to_string();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-t",
        &t,
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        out.to_str().unwrap(),
    ]);
    out
}

#[tokio::test]
async fn ladder_is_encoded_verified_and_packaged() {
    let dir = scratch("ok");
    let src = make_source(&dir, 5);
    let mut last = 0.0;
    let mut calls = 0;
    let out = transcode(&src, &dir.join("out"), &config(), |p| {
        assert!(p >= last - 1e-9, "progress goes forward");
        last = p;
        calls += 1;
    })
    .await
    .unwrap();
    assert!(
        calls >= 1 && (last - 1.0).abs() < 1e-9,
        "progress reached 100% ({calls} reports)"
    );
    let names: Vec<_> = out
        .manifest
        .renditions
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["360p", "audio"]);
    let video = &out.manifest.renditions[0];
    assert_eq!((video.width, video.height), (640, 360));
    assert_eq!(video.kind, RenditionKind::Video);
    assert!(
        video.codecs.starts_with("avc1.") && video.codecs.len() == 11,
        "{}",
        video.codecs
    );
    assert_eq!(video.segments.len(), 3, "2 s segments over 5 s");
    for f in [
        "master.m3u8",
        "manifest.mpd",
        "360p/index.m3u8",
        "audio/index.m3u8",
        "360p/init.mp4",
    ] {
        assert!(dir.join("out").join(f).is_file(), "{f}");
    }
    assert!(!dir.join("out/360p/ffmpeg.m3u8").exists());
    // ffprobe reads the HLS master and counts every frame of the source.
    let frames = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(dir.join("out/master.m3u8"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&frames.stdout).lines().next(),
        Some("125")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bad_inputs_are_refused_with_reasons() {
    let dir = scratch("bad");
    let src = make_source(&dir, 3);
    let bytes = std::fs::read(&src).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.mp4", vec![]),
        ("trunc.mp4", bytes[..bytes.len() / 3].to_vec()),
        (
            "text.mp4",
            b"this is not a video, it is a shopping list\n".to_vec(),
        ),
    ];
    for (name, data) in &cases {
        std::fs::write(dir.join(name), data).unwrap();
    }
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240",
        "-frames:v",
        "1",
        dir.join("img.png").to_str().unwrap(),
    ]);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-t",
        "2",
        "-c:a",
        "aac",
        dir.join("audio.m4a").to_str().unwrap(),
    ]);
    assert_eq!(
        probe(&dir.join("empty.mp4"), &config()).await,
        Err(ProbeError::Empty)
    );
    assert_eq!(
        probe(&dir.join("trunc.mp4"), &config()).await,
        Err(ProbeError::Truncated)
    );
    assert!(matches!(
        probe(&dir.join("text.mp4"), &config()).await,
        Err(ProbeError::NotMedia(_))
    ));
    assert_eq!(
        probe(&dir.join("img.png"), &config()).await,
        Err(ProbeError::StillImage)
    );
    assert_eq!(
        probe(&dir.join("audio.m4a"), &config()).await,
        Err(ProbeError::NoVideo)
    );
    // moov first, data cut: probes fine, fails while decoding.
    let fast = dir.join("fast.mp4");
    ffmpeg(&[
        "-i",
        src.to_str().unwrap(),
        "-c",
        "copy",
        "-movflags",
        "+faststart",
        fast.to_str().unwrap(),
    ]);
    let fb = std::fs::read(&fast).unwrap();
    std::fs::write(dir.join("cut.mp4"), &fb[..fb.len() / 2]).unwrap();
    let err = transcode(
        &dir.join("cut.mp4"),
        &dir.join("cut-out"),
        &config(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, TranscodeError::Ffmpeg(ref m) if m.contains("incomplete or damaged")),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_sliver_of_audio_past_the_end_is_folded_into_the_last_segment() {
    // 6 s at 48 kHz: AAC priming and padding leave 1024 samples past the
    // third 2 s segment, which used to become a fourth, 21 ms segment.
    let dir = scratch("tail");
    let src = dir.join("src.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "6",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        src.to_str().unwrap(),
    ]);
    let out = transcode(&src, &dir.join("out"), &config(), |_| {})
        .await
        .unwrap();
    let audio = out
        .manifest
        .renditions
        .iter()
        .find(|r| r.name == "audio")
        .unwrap();
    let durations: Vec<f64> = audio.segments.iter().map(|s| s.duration).collect();
    assert_eq!(durations.len(), 3, "{durations:?}");
    assert!(durations.iter().all(|d| *d > 1.9), "{durations:?}");
    assert!(!dir.join("out/audio/seg_00004.m4s").exists());
    // Every audio packet is still there, readable through the playlist.
    let packets = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-count_packets",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
        ])
        .arg(dir.join("out/audio/index.m3u8"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&packets.stdout);
    let n: u64 = text
        .split(|c: char| !c.is_ascii_digit())
        .find(|t| !t.is_empty())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "ffprobe said {text:?} {}",
                String::from_utf8_lossy(&packets.stderr)
            )
        });
    assert!(n >= 282, "{n} packets");
    let mpd = std::fs::read_to_string(dir.join("out/manifest.mpd")).unwrap();
    assert!(!mpd.contains("d=\"1024\""), "{mpd}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A clip with a white flash and a 1 kHz beep both at `at` seconds.
fn flash_and_beep(dir: &Path, fps: u32, secs: u32, at: f64) -> PathBuf {
    let out = dir.join(format!("sync{fps}.mp4"));
    let frame = 1.0 / fps as f64;
    let video = format!(
        "color=c=black:s=320x240:r={fps}:d={secs},drawbox=enable='between(t,{at},{})':x=0:y=0:w=iw:h=ih:c=white:t=fill",
        at + frame * 0.5
    );
    let audio = format!(
        "aevalsrc='if(between(t,{at},{}),sin(2*PI*1000*t),0)':s=48000:d={secs}",
        at + 0.1
    );
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &video,
        "-f",
        "lavfi",
        "-i",
        &audio,
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        out.to_str().unwrap(),
    ]);
    out
}

fn ffmpeg_stderr(args: &[&str]) -> String {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// When the flash shows and the beep sounds, decoded from `input` with its
/// own timestamps (no shift to zero): (flash, beep) in seconds.
fn flash_and_beep_times(input: &str) -> (f64, f64) {
    let video = ffmpeg_stderr(&[
        "-copyts",
        "-i",
        input,
        "-map",
        "0:v:0",
        "-vf",
        "signalstats,metadata=print:key=lavfi.signalstats.YAVG",
        "-f",
        "null",
        "-",
    ]);
    let mut t = None;
    let mut flash = None;
    for line in video.lines() {
        if let Some(v) = line.split("pts_time:").nth(1) {
            t = v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok());
        }
        if let Some(y) = line.split("YAVG=").nth(1) {
            if y.trim().parse::<f64>().unwrap_or(0.0) > 100.0 && flash.is_none() {
                flash = t;
            }
        }
    }
    let audio = ffmpeg_stderr(&[
        "-copyts",
        "-i",
        input,
        "-map",
        "0:a:0",
        "-af",
        "silencedetect=n=-30dB:d=0.05",
        "-f",
        "null",
        "-",
    ]);
    let beep = audio
        .lines()
        .find_map(|l| l.split("silence_end: ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    (
        flash.unwrap_or_else(|| panic!("no flash decoded from {input}:\n{video}")),
        beep.unwrap_or_else(|| panic!("no beep decoded from {input}:\n{audio}")),
    )
}

/// ffprobe's start time of a rendition's first sample plus what its init
/// segment's edit list skips: when its first sample is presented.
fn presented_start(rendition: &Path, kind: &str) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=start_time",
            "-of",
            "csv=p=0",
        ])
        .arg(rendition.join("index.m3u8"))
        .output()
        .unwrap();
    let start: f64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("ffprobe gave no start time for {rendition:?}"));
    let init = std::fs::read(rendition.join("init.mp4")).unwrap();
    let header =
        mp4::Mp4Reader::read_header(std::io::Cursor::new(&init), init.len() as u64).unwrap();
    let trak = &header.moov.traks[0];
    let skip = trak
        .edts
        .iter()
        .filter_map(|e| e.elst.as_ref())
        .flat_map(|l| l.entries.iter())
        .map(|e| e.media_time)
        .find(|t| *t != u32::MAX as u64)
        .unwrap_or(0) as f64
        / trak.mdia.mdhd.timescale as f64;
    // ffprobe already applies the video edit list; for audio it reports the
    // priming packet, which the edit list trims.
    if kind == "audio" {
        start + skip
    } else {
        start
    }
}

#[tokio::test]
async fn audio_and_video_stay_in_sync_in_hls_and_dash() {
    let dir = scratch("sync");
    // 30 fps (two frames of B-frame delay: 66 ms) and 1 fps (two seconds).
    for (fps, at) in [(30, 1.0), (1, 2.0)] {
        let src = flash_and_beep(&dir, fps, 6, at);
        let (sf, sb) = flash_and_beep_times(src.to_str().unwrap());
        assert!(
            (sf - at).abs() < 0.01 && (sb - at).abs() < 0.01,
            "source: {sf} {sb}"
        );
        let out = dir.join(format!("out{fps}"));
        transcode(&src, &out, &config(), |_| {}).await.unwrap();
        for manifest in ["master.m3u8", "manifest.mpd"] {
            let (flash, beep) = flash_and_beep_times(out.join(manifest).to_str().unwrap());
            assert!(
                (beep - flash).abs() <= 0.020,
                "{fps} fps {manifest}: flash at {flash:.3} s, beep at {beep:.3} s"
            );
            assert!(
                (flash - at).abs() <= 0.020,
                "{fps} fps {manifest}: flash at {flash:.3}"
            );
        }
        let video = presented_start(&out.join("240p"), "video");
        let audio = presented_start(&out.join("audio"), "audio");
        assert!(
            video.abs() < 0.001 && audio.abs() < 0.001,
            "{fps} fps: video {video}, audio {audio}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn mpd_duration(mpd: &str) -> f64 {
    let v = mpd.split("mediaPresentationDuration=\"PT").nth(1).unwrap();
    v[..v.find('S').unwrap()].parse().unwrap()
}

#[tokio::test]
async fn odd_sources_come_out_playable() {
    let dir = scratch("odd");
    // Portrait: the ladder goes by the short side.
    let portrait = dir.join("portrait.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=480x854:rate=25",
        "-t",
        "2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        portrait.to_str().unwrap(),
    ]);
    let out = transcode(&portrait, &dir.join("p"), &config(), |_| {})
        .await
        .unwrap();
    let sizes: Vec<_> = out
        .manifest
        .videos()
        .map(|v| (v.name.clone(), v.width, v.height))
        .collect();
    assert_eq!(
        sizes,
        [("480p".into(), 480, 854), ("360p".into(), 360, 640)]
    );
    assert!(out.manifest.audios().next().is_none());

    // Tiny and slow: a codec string players accept (level 3.0, not 0.9).
    let tiny = dir.join("tiny.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x64:rate=1",
        "-t",
        "12",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        tiny.to_str().unwrap(),
    ]);
    let out = transcode(&tiny, &dir.join("t"), &config(), |_| {})
        .await
        .unwrap();
    // x264 reports Constrained Baseline when a 2-frame GOP leaves no room
    // for B-frames; either way the level byte is 3.0 (0x1e), not 0.9.
    let codecs = &out.manifest.renditions[0].codecs;
    assert!(
        ["avc1.64001e", "avc1.42c01e"].contains(&codecs.as_str()),
        "{codecs}"
    );

    // A 1 s clip: the MPD lasts until the last sample of every rendition.
    let short = dir.join("short.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        short.to_str().unwrap(),
    ]);
    let out = transcode(&short, &dir.join("s"), &config(), |_| {})
        .await
        .unwrap();
    let declared = mpd_duration(&std::fs::read_to_string(dir.join("s/manifest.mpd")).unwrap());
    for r in &out.manifest.renditions {
        assert!(
            declared + 1e-9 >= r.end(),
            "{}: ends at {}, MPD says {declared}",
            r.name,
            r.end()
        );
    }
    assert!(declared < 1.1, "{declared}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn every_track_is_kept_with_its_language_and_audio_never_grows() {
    let dir = scratch("tracks");
    let srt = dir.join("subs.srt");
    std::fs::write(&srt, "1\n00:00:00,500 --> 00:00:02,000\nHello there\n\n2\n00:00:02,500 --> 00:00:03,500\nGoodbye\n").unwrap();
    let src = dir.join("tracks.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000,pan=stereo|c0=c0|c1=c0",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=660:sample_rate=16000",
        "-i",
        srt.to_str().unwrap(),
        "-t",
        "4",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-map",
        "2:a",
        "-map",
        "3:s",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a:0",
        "aac",
        "-c:a:1",
        "aac",
        "-b:a:1",
        "12k",
        "-c:s",
        "srt",
        "-metadata:s:a:0",
        "language=eng",
        "-metadata:s:a:1",
        "language=fre",
        "-metadata:s:s:0",
        "language=eng",
        src.to_str().unwrap(),
    ]);
    let out = transcode(&src, &dir.join("out"), &config(), |_| {})
        .await
        .unwrap();
    let audios: Vec<_> = out
        .manifest
        .audios()
        .map(|a| (a.name.clone(), a.label().language, a.channels))
        .collect();
    assert_eq!(
        audios,
        [
            ("audio".into(), "en".into(), 2),
            ("audio2".into(), "fr".into(), 1)
        ]
    );
    let mono = out.manifest.audios().nth(1).unwrap();
    assert!(
        mono.average_bandwidth < 30_000,
        "12 kbps mono source came out at {} bit/s",
        mono.average_bandwidth
    );
    assert_eq!(mono.sample_rate, 16_000);
    assert_eq!(out.manifest.subtitles.len(), 1);
    let vtt = std::fs::read_to_string(dir.join("out/subs/subs.vtt")).unwrap();
    assert!(
        vtt.starts_with("WEBVTT") && vtt.contains("Hello there"),
        "{vtt}"
    );
    let master = std::fs::read_to_string(dir.join("out/master.m3u8")).unwrap();
    for want in [
        "LANGUAGE=\"en\"",
        "LANGUAGE=\"fr\"",
        "TYPE=SUBTITLES",
        "NAME=\"French\"",
    ] {
        assert!(master.contains(want), "{want}:\n{master}");
    }
    let mpd = std::fs::read_to_string(dir.join("out/manifest.mpd")).unwrap();
    for want in [
        "lang=\"en\"",
        "lang=\"fr\"",
        "mimeType=\"text/vtt\"",
        "value=\"1\"",
    ] {
        assert!(mpd.contains(want), "{want}:\n{mpd}");
    }
    // ffmpeg reading the HLS master finds both audio tracks with their languages.
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type:stream_tags=language",
            "-of",
            "csv=p=0",
        ])
        .arg(dir.join("out/master.m3u8"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(
        text.contains("audio,en") && text.contains("audio,fr"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn limits_refuse_long_large_and_stalled_work() {
    let dir = scratch("limits");
    let src = make_source(&dir, 3);
    let tight = |f: fn(&mut TranscodeSection)| {
        let mut c = config();
        f(&mut c);
        c
    };
    let short =
        tight(|c| c.max_duration = meshcast_conf::Seconds(std::time::Duration::from_secs(2)));
    let err = probe(&src, &short).await.unwrap_err();
    assert!(matches!(err, ProbeError::TooLong { max: 2, .. }), "{err}");
    assert!(err.to_string().contains("max_duration"), "{err}");
    let small = tight(|c| c.max_side = 320);
    let err = probe(&src, &small).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProbeError::TooLarge {
                width: 640,
                height: 360,
                max: 320
            }
        ),
        "{err}"
    );
    // ffmpeg that reports no progress in time is stopped with a reason.
    let impatient =
        tight(|c| c.stall_timeout = meshcast_conf::Seconds(std::time::Duration::from_millis(1)));
    let err = transcode(&src, &dir.join("out"), &impatient, |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no progress"), "{err}");
    // A reader that never answers: ffprobe on a FIFO nobody writes to.
    let fifo = dir.join("fifo.mp4");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let quick =
        tight(|c| c.probe_timeout = meshcast_conf::Seconds(std::time::Duration::from_millis(500)));
    let err = probe(&fifo, &quick).await.unwrap_err();
    assert_eq!(err, ProbeError::TimedOut(0), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
