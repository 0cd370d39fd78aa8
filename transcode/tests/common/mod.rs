//! What the transcoder's test binaries share: scratch folders, ffmpeg runs
//! and the quick settings they transcode with.

#![allow(dead_code)]

use meshcast_conf::TranscodeSection;
use std::path::PathBuf;
use std::process::Command;

/// A fresh folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshcast-tc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs ffmpeg quietly, overwriting; fails the test if it fails.
pub fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg {args:?}");
}

/// 2 s segments with the fastest preset.
pub fn config() -> TranscodeSection {
    TranscodeSection {
        segment_duration: meshcast_conf::Seconds(std::time::Duration::from_secs(2)),
        preset: "ultrafast".into(),
        ..Default::default()
    }
}
