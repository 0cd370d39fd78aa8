//! The ladder plan: which rungs to encode for a given source.

use crate::probe::SourceInfo;
use meshcast_conf::TranscodeSection;

#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
    /// Frames per GOP: one keyframe at every segment start, on every rung.
    pub gop: u32,
    pub fps: f64,
}

fn even(x: f64) -> u32 {
    ((x / 2.0).round() as u32).max(1) * 2
}

/// Rungs no taller than the source, from the top; if every configured rung
/// is taller, one rung at the source's own height with the smallest
/// configured bitrate scaled by area.
pub fn plan(source: &SourceInfo, config: &TranscodeSection) -> Vec<Rung> {
    let fps = if source.fps > 60.0 { 30.0 } else { source.fps };
    let gop = (fps * config.segment_duration.0.as_secs_f64())
        .round()
        .max(1.0) as u32;
    let aspect = source.width as f64 / source.height as f64;
    let make = |name: &str, height: u32, kbps: u32| Rung {
        name: name.to_string(),
        width: even(height as f64 * aspect),
        height,
        video_kbps: kbps,
        gop,
        fps,
    };
    let mut rungs: Vec<Rung> = config
        .rungs
        .iter()
        .filter(|r| r.height <= source.height)
        .map(|r| make(&r.name, r.height, r.video_kbps))
        .collect();
    if rungs.is_empty() {
        let smallest = config
            .rungs
            .iter()
            .min_by_key(|r| r.height)
            .expect("config has rungs");
        let height = even(source.height as f64);
        let scale = (height as f64 / smallest.height as f64).powi(2);
        let kbps = ((smallest.video_kbps as f64 * scale) as u32).max(100);
        rungs.push(make(&format!("{height}p"), height, kbps));
    }
    rungs
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
            has_audio: true,
            video_codec: "h264".into(),
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
    fn tiny_sources_get_one_rung_at_their_height() {
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
}
