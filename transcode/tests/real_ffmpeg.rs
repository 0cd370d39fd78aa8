//! The transcoder against real ffmpeg/ffprobe, on inputs made here.

use meshcast_conf::TranscodeSection;
use meshcast_transcode::{probe, transcode, ProbeError, RenditionKind, TranscodeError};
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshcast-tc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg {args:?}");
}

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

fn config() -> TranscodeSection {
    TranscodeSection {
        segment_duration: meshcast_conf::Seconds(std::time::Duration::from_secs(2)),
        preset: "ultrafast".into(),
        ..Default::default()
    }
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
    assert_eq!(probe(&dir.join("empty.mp4")).await, Err(ProbeError::Empty));
    assert_eq!(
        probe(&dir.join("trunc.mp4")).await,
        Err(ProbeError::Truncated)
    );
    assert!(matches!(
        probe(&dir.join("text.mp4")).await,
        Err(ProbeError::NotMedia(_))
    ));
    assert_eq!(
        probe(&dir.join("img.png")).await,
        Err(ProbeError::StillImage)
    );
    assert_eq!(
        probe(&dir.join("audio.m4a")).await,
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
