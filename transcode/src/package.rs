//! Playlists over one set of CMAF segments: HLS (m3u8-rs) and DASH (MPD).

use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, Map, MasterPlaylist, MediaPlaylist, MediaPlaylistType,
    MediaSegment, Resolution, VariantStream,
};
use std::fmt::Write as _;
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
    /// Decode time of the first sample, in `timescale` ticks.
    pub start: u64,
    pub ticks: u64,
}

/// One encoded stream: a video rung or the audio track.
#[derive(Debug, Clone)]
pub struct Rendition {
    pub name: String,
    pub kind: RenditionKind,
    pub codecs: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub timescale: u32,
    /// Media time of the first picture shown (for DASH presentationTimeOffset).
    pub presentation_offset: u64,
    pub bandwidth: u64,
    pub average_bandwidth: u64,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub renditions: Vec<Rendition>,
    pub segment_duration: f64,
    pub duration: f64,
}

impl Manifest {
    fn audio(&self) -> Option<&Rendition> {
        self.renditions
            .iter()
            .find(|r| r.kind == RenditionKind::Audio)
    }

    fn videos(&self) -> impl Iterator<Item = &Rendition> {
        self.renditions
            .iter()
            .filter(|r| r.kind == RenditionKind::Video)
    }
}

pub fn media_playlist(r: &Rendition, segment_duration: f64) -> Vec<u8> {
    let target = r
        .segments
        .iter()
        .map(|s| s.duration)
        .fold(segment_duration, f64::max)
        .ceil() as u64;
    let segments = r
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| MediaSegment {
            uri: s.file.clone(),
            duration: s.duration as f32,
            map: (i == 0).then(|| Map {
                uri: "init.mp4".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let playlist = MediaPlaylist {
        version: Some(7),
        target_duration: target,
        media_sequence: 1,
        playlist_type: Some(MediaPlaylistType::Vod),
        independent_segments: true,
        end_list: true,
        segments,
        ..Default::default()
    };
    let mut out = Vec::new();
    playlist
        .write_to(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

pub fn master_playlist(m: &Manifest) -> Vec<u8> {
    let audio = m.audio();
    let alternatives = audio
        .map(|a| {
            vec![AlternativeMedia {
                media_type: AlternativeMediaType::Audio,
                uri: Some(format!("{}/index.m3u8", a.name)),
                group_id: "audio".into(),
                name: "audio".into(),
                default: true,
                autoselect: true,
                channels: Some("2".into()),
                ..Default::default()
            }]
        })
        .unwrap_or_default();
    let variants = m
        .videos()
        .map(|v| {
            let codecs = match audio {
                Some(a) => format!("{},{}", v.codecs, a.codecs),
                None => v.codecs.clone(),
            };
            VariantStream {
                uri: format!("{}/index.m3u8", v.name),
                bandwidth: v.bandwidth + audio.map_or(0, |a| a.bandwidth),
                average_bandwidth: Some(
                    v.average_bandwidth + audio.map_or(0, |a| a.average_bandwidth),
                ),
                codecs: Some(codecs),
                resolution: Some(Resolution {
                    width: v.width as u64,
                    height: v.height as u64,
                }),
                frame_rate: Some((v.fps * 1000.0).round() / 1000.0),
                audio: audio.map(|_| "audio".to_string()),
                ..Default::default()
            }
        })
        .collect();
    let playlist = MasterPlaylist {
        version: Some(7),
        independent_segments: true,
        alternatives,
        variants,
        ..Default::default()
    };
    let mut out = Vec::new();
    playlist
        .write_to(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

/// ISO 8601 duration, e.g. PT6.000S.
fn iso_duration(secs: f64) -> String {
    format!("PT{secs:.3}S")
}

/// The MPD is written by hand: it is one static template over the same
/// segments, and the DASH crates on crates.io are parsers first, with a
/// large dependency tree for writing.
pub fn mpd(m: &Manifest) -> String {
    let mut x = String::new();
    let _ = writeln!(x, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        x,
        r#"<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" profiles="urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019" type="static" mediaPresentationDuration="{}" minBufferTime="PT{}S">"#,
        iso_duration(m.duration),
        m.segment_duration.ceil() as u64
    );
    let _ = writeln!(x, r#"  <Period id="0" start="PT0S">"#);
    let video: Vec<&Rendition> = m.videos().collect();
    if let Some(first) = video.first() {
        let max_w = video.iter().map(|v| v.width).max().unwrap_or(0);
        let max_h = video.iter().map(|v| v.height).max().unwrap_or(0);
        let _ = writeln!(
            x,
            r#"    <AdaptationSet id="0" contentType="video" mimeType="video/mp4" segmentAlignment="true" startWithSAP="1" maxWidth="{max_w}" maxHeight="{max_h}" frameRate="{}">"#,
            frame_rate(first.fps)
        );
        for v in &video {
            let _ = writeln!(
                x,
                r#"      <Representation id="{}" codecs="{}" bandwidth="{}" width="{}" height="{}">"#,
                v.name, v.codecs, v.bandwidth, v.width, v.height
            );
            template(&mut x, v);
            let _ = writeln!(x, "      </Representation>");
        }
        let _ = writeln!(x, "    </AdaptationSet>");
    }
    if let Some(a) = m.audio() {
        let _ = writeln!(
            x,
            r#"    <AdaptationSet id="1" contentType="audio" mimeType="audio/mp4" segmentAlignment="true" startWithSAP="1" lang="und">"#
        );
        let _ = writeln!(
            x,
            r#"      <Representation id="{}" codecs="{}" bandwidth="{}" audioSamplingRate="48000">"#,
            a.name, a.codecs, a.bandwidth
        );
        let _ = writeln!(
            x,
            r#"        <AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" value="2"/>"#
        );
        template(&mut x, a);
        let _ = writeln!(x, "      </Representation>");
        let _ = writeln!(x, "    </AdaptationSet>");
    }
    let _ = writeln!(x, "  </Period>\n</MPD>");
    x
}

fn frame_rate(fps: f64) -> String {
    let rounded = fps.round();
    if (fps - rounded).abs() < 0.01 {
        format!("{rounded}")
    } else {
        format!("{}/1001", (fps * 1001.0).round())
    }
}

fn template(x: &mut String, r: &Rendition) {
    let _ = writeln!(
        x,
        r#"        <SegmentTemplate timescale="{}" initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg_$Number%05d$.m4s" startNumber="1" presentationTimeOffset="{}">"#,
        r.timescale, r.presentation_offset
    );
    let _ = writeln!(x, "          <SegmentTimeline>");
    for (i, s) in r.segments.iter().enumerate() {
        if i == 0 {
            let _ = writeln!(x, r#"            <S t="{}" d="{}"/>"#, s.start, s.ticks);
        } else {
            let _ = writeln!(x, r#"            <S d="{}"/>"#, s.ticks);
        }
    }
    let _ = writeln!(x, "          </SegmentTimeline>");
    let _ = writeln!(x, "        </SegmentTemplate>");
}

/// Writes every playlist into `out`, and removes ffmpeg's own playlists.
pub fn write_all(out: &Path, m: &Manifest) -> std::io::Result<()> {
    for r in &m.renditions {
        let dir = out.join(&r.name);
        std::fs::write(
            dir.join("index.m3u8"),
            media_playlist(r, m.segment_duration),
        )?;
        let _ = std::fs::remove_file(dir.join("ffmpeg.m3u8"));
    }
    std::fs::write(out.join("master.m3u8"), master_playlist(m))?;
    std::fs::write(out.join("manifest.mpd"), mpd(m))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
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
            presentation_offset: 1024,
            bandwidth: 1_000_000,
            average_bandwidth: 900_000,
            segments: vec![seg(1), seg(2)],
        };
        let mut audio = video.clone();
        audio.name = "audio".into();
        audio.kind = RenditionKind::Audio;
        audio.codecs = "mp4a.40.2".into();
        Manifest {
            renditions: vec![video, audio],
            segment_duration: 4.0,
            duration: 8.0,
        }
    }

    #[test]
    fn master_names_codecs_resolution_rate_and_audio_group() {
        let text = String::from_utf8(master_playlist(&manifest())).unwrap();
        assert!(text.contains("CODECS=\"avc1.64001f,mp4a.40.2\""), "{text}");
        assert!(text.contains("RESOLUTION=1280x720"), "{text}");
        assert!(text.contains("AVERAGE-BANDWIDTH=1800000"), "{text}");
        assert!(text.contains("FRAME-RATE=25"), "{text}");
        assert!(
            text.contains("TYPE=AUDIO") && text.contains("AUDIO=\"audio\""),
            "{text}"
        );
        let parsed = m3u8_rs::parse_master_playlist_res(text.as_bytes()).unwrap();
        assert_eq!(parsed.variants.len(), 1);
    }

    #[test]
    fn media_playlist_is_vod_fmp4() {
        let text = String::from_utf8(media_playlist(&manifest().renditions[0], 4.0)).unwrap();
        assert!(text.contains("#EXT-X-MAP:URI=\"init.mp4\""), "{text}");
        assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{text}");
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
        assert_eq!(parsed.segments.len(), 2);
    }

    #[test]
    fn mpd_has_both_adaptation_sets_and_a_timeline() {
        let text = mpd(&manifest());
        assert!(text.contains(r#"contentType="video""#) && text.contains(r#"contentType="audio""#));
        assert!(text.contains(r#"<S t="0" d="51200"/>"#), "{text}");
        assert!(text.contains(r#"presentationTimeOffset="1024""#), "{text}");
        assert!(text.contains(r#"mediaPresentationDuration="PT8.000S""#));
    }
}
