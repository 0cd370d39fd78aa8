//! Transcoding in chunks against real ffmpeg: a source whose keyframes do
//! not fall on segment boundaries, cut and encoded chunk by chunk, joins
//! into a ladder with every frame once and continuous timestamps.

mod common;

use common::{config, scratch};
use meshcast_transcode::{transcode, transcode_in_chunks};
use std::path::{Path, PathBuf};
use std::process::Command;

/// 23 s at 25 fps, 854x480, keyframes every 2.4 s (never on a 2 s
/// segment boundary but at 0 and 12), a tone.
fn make_source(dir: &Path, rate: &str) -> PathBuf {
    let out = dir.join("src.mp4");
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=854x480:rate={rate}"))
        .args(["-f", "lavfi", "-i", "sine=frequency=440", "-t", "23"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "60",
            "-keyint_min",
            "60",
        ])
        .args(["-sc_threshold", "0", "-pix_fmt", "yuv420p", "-c:a", "aac"])
        .arg(&out)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    out
}

/// Every video packet's presentation time in a rendition, sorted.
fn presentation_times(playlist: &Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["packet=pts_time", "-of", "csv=p=0"])
        .arg(playlist)
        .output()
        .unwrap();
    let mut t: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_end_matches(',').parse().ok())
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

#[tokio::test]
async fn chunks_join_into_the_same_ladder_with_every_frame_once() {
    join_at("25", 25.0).await;
}

#[tokio::test]
async fn chunk_boundaries_between_frames_lose_and_repeat_none() {
    // At 29.97 fps a 2 s boundary falls between two frames.
    join_at("30000/1001", 30000.0 / 1001.0).await;
}

async fn join_at(rate: &str, fps: f64) {
    let dir = scratch(&rate.replace('/', "_"));
    let src = make_source(&dir, rate);
    let source_frames = presentation_times(&src).len();
    assert!(source_frames >= 575, "{source_frames}");
    let chunked = transcode_in_chunks(&src, &dir.join("chunked"), &config(), 2, 2)
        .await
        .unwrap();
    let whole = transcode(&src, &dir.join("whole"), &config(), |_| {})
        .await
        .unwrap();
    let names = |o: &meshcast_transcode::Output| -> Vec<String> {
        o.manifest
            .renditions
            .iter()
            .map(|r| r.name.clone())
            .collect()
    };
    assert_eq!(names(&chunked), names(&whole));
    assert!(
        chunked.manifest.videos().count() >= 2,
        "a ladder, not one rung"
    );
    assert!(
        !dir.join("chunked/chunks").exists(),
        "the chunks' scratch is gone"
    );
    for (c, w) in chunked
        .manifest
        .renditions
        .iter()
        .zip(&whole.manifest.renditions)
    {
        let starts = |r: &meshcast_transcode::Rendition| -> Vec<(u64, u64)> {
            r.segments.iter().map(|s| (s.start, s.ticks)).collect()
        };
        assert_eq!(
            starts(c),
            starts(w),
            "{}: the same segment timeline",
            c.name
        );
        assert_eq!(
            (c.edit_offset, c.composition_offset),
            (w.edit_offset, w.composition_offset)
        );
    }
    for r in chunked.manifest.videos() {
        let playlist = dir.join("chunked").join(&r.name).join("index.m3u8");
        let t = presentation_times(&playlist);
        assert_eq!(
            t.len(),
            source_frames,
            "{}: every source frame once",
            r.name
        );
        assert!(
            t[0].abs() < 1e-3,
            "{}: the first picture at 0 ({})",
            r.name,
            t[0]
        );
        for w in t.windows(2) {
            assert!(
                (w[1] - w[0] - 1.0 / fps).abs() < 1e-3,
                "{}: a gap or an overlap between {} and {}",
                r.name,
                w[0],
                w[1]
            );
        }
        let decode = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(&playlist)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        assert!(decode.status.success());
        assert_eq!(
            String::from_utf8_lossy(&decode.stderr).trim(),
            "",
            "{}: decodes cleanly",
            r.name
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn encode(args: &[&str], out: &Path) {
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-an"])
        .arg(out)
        .status()
        .unwrap()
        .success();
    assert!(ok, "{args:?}");
}

#[tokio::test]
async fn the_fidelity_check_passes_honest_segments_and_catches_substitutes() {
    use meshcast_transcode::{check_segment, plan, probe, SegmentRange};
    let dir = scratch("fidelity");
    let src = make_source(&dir, "25");
    let config = config();
    let out = transcode(&src, &dir.join("out"), &config, |_| {})
        .await
        .unwrap();
    let source = probe(&src, &config).await.unwrap();
    let ladder = plan(&source, &config);
    let top = &ladder[0];
    let rendition = out.manifest.videos().next().unwrap();
    assert_eq!(rendition.name, top.name);
    let rung_dir = dir.join("out").join(&top.name);
    let init = std::fs::read(rung_dir.join("init.mp4")).unwrap();
    let range = |n: usize| SegmentRange {
        rung: top,
        start: rendition.segments[n].start as f64 / rendition.timescale as f64,
        duration: rendition.segments[n].duration,
    };
    let seg = |n: usize| std::fs::read(rung_dir.join(&rendition.segments[n].file)).unwrap();
    for n in [0, 3, rendition.segments.len() - 1] {
        let f = check_segment(&init, &seg(n), &src, &range(n), &dir)
            .await
            .unwrap();
        eprintln!("honest segment {n}: {f:?}");
        assert!(f.passes(), "honest segment {n}: {f:?}");
    }
    // Two segments of every rung in one run from the first one's start,
    // a few drawn frames each (the later one `offset` frames in); a part
    // that does not decode is named.
    use meshcast_transcode::{check_range, Part};
    let files: Vec<(Vec<u8>, Vec<u8>, u32)> = out
        .manifest
        .videos()
        .flat_map(|r| {
            let d = dir.join("out").join(&r.name);
            let init = std::fs::read(d.join("init.mp4")).unwrap();
            let first = (r.segments[3].duration * r.fps).round() as u32;
            [(3, 0), (4, first)].map(|(n, offset)| {
                let seg = std::fs::read(d.join(&r.segments[n].file)).unwrap();
                (init.clone(), seg, offset)
            })
        })
        .collect();
    assert!(files.len() >= 4, "a ladder");
    let drawn = [vec![1u32, 37], vec![0, 49], vec![12]];
    let parts: Vec<Part> = ladder
        .iter()
        .flat_map(|rung| [rung, rung])
        .zip(&files)
        .enumerate()
        .map(|(k, (rung, (i, s, offset)))| Part {
            rung,
            init: i,
            segment: s,
            offset: *offset,
            frames: &drawn[k % drawn.len()],
        })
        .collect();
    let span = (range(3).start, range(3).duration + range(4).duration);
    let all = check_range(&parts, &src, span, &dir).await.unwrap();
    assert_eq!(all.len(), parts.len());
    eprintln!("drawn frames: {all:?}");
    assert!(all.iter().all(|f| f.passes()), "{all:?}");
    // The same segments with their places swapped fail.
    let swapped: Vec<Part> = parts
        .iter()
        .map(|p| Part {
            rung: p.rung,
            init: p.init,
            segment: p.segment,
            offset: if p.offset == 0 { 50 } else { 0 },
            frames: p.frames,
        })
        .collect();
    let all = check_range(&swapped, &src, span, &dir).await.unwrap();
    eprintln!("swapped: {all:?}");
    assert!(all.iter().all(|f| !f.passes()), "{all:?}");
    let junk = vec![0u8; 4096];
    let broken: Vec<Part> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| Part {
            rung: p.rung,
            init: p.init,
            segment: if i == 1 { &junk } else { p.segment },
            offset: p.offset,
            frames: p.frames,
        })
        .collect();
    match check_range(&broken, &src, span, &dir).await {
        Err((Some(1), meshcast_transcode::CheckError::Undecodable(_))) => {}
        other => panic!("the second part should be named: {other:?}"),
    }
    // Another segment of the same video, in the wrong place.
    let f = check_segment(&init, &seg(5), &src, &range(2), &dir)
        .await
        .unwrap();
    assert!(!f.passes(), "a segment from elsewhere: {f:?}");
    // Other valid video of the right size and length.
    let (w, h) = (top.width.to_string(), top.height.to_string());
    let other = dir.join("other.mp4");
    encode(
        &[
            "-f",
            "lavfi",
            "-i",
            &format!("mandelbrot=size={w}x{h}:rate=25"),
            "-t",
            "2",
        ],
        &other,
    );
    let f = check_segment(&[], &std::fs::read(&other).unwrap(), &src, &range(2), &dir)
        .await
        .unwrap();
    assert!(!f.passes(), "other video: {f:?}");
    // A rendition at half the size, scaled up to pass as this one.
    let (lw, lh) = (top.width / 4 * 2, top.height / 4 * 2);
    let up = dir.join("up.mp4");
    encode(
        &[
            "-ss",
            "4",
            "-t",
            "2",
            "-i",
            src.to_str().unwrap(),
            "-vf",
            &format!("scale={lw}:{lh},scale={w}:{h}"),
            "-b:v",
            "3000k",
        ],
        &up,
    );
    let f = check_segment(&[], &std::fs::read(&up).unwrap(), &src, &range(2), &dir)
        .await
        .unwrap();
    eprintln!("half size scaled up: {f:?}");
    assert!(!f.passes(), "a lower rung scaled up: {f:?}");
    // Junk does not decode.
    let junk = check_segment(&init, &[0u8; 4096], &src, &range(2), &dir).await;
    assert!(
        matches!(junk, Err(meshcast_transcode::CheckError::Undecodable(_))),
        "{junk:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
