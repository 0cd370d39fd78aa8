//! HLS playlists (written with m3u8-rs): a master with every video rung as
//! a variant, every audio track as an alternate rendition of one group and
//! every subtitle track as a WebVTT rendition; a media playlist per
//! rendition.

use crate::package::{Manifest, Rendition, TrackLabel, SUBTITLE_FILE};
use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, Map, MasterPlaylist, MediaPlaylist, MediaPlaylistType,
    MediaSegment, Resolution, VariantStream,
};

const AUDIO_GROUP: &str = "audio";
const SUBTITLE_GROUP: &str = "subs";

fn write(playlist: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Vec<u8> {
    let mut out = Vec::new();
    playlist(&mut out).expect("writing to a Vec cannot fail");
    out
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
    write(|out| playlist.write_to(out))
}

/// A subtitle track's playlist: its one WebVTT file spans the video.
pub fn subtitle_playlist(duration: f64) -> Vec<u8> {
    let playlist = MediaPlaylist {
        version: Some(7),
        target_duration: duration.ceil().max(1.0) as u64,
        playlist_type: Some(MediaPlaylistType::Vod),
        end_list: true,
        segments: vec![MediaSegment {
            uri: SUBTITLE_FILE.into(),
            duration: duration as f32,
            ..Default::default()
        }],
        ..Default::default()
    };
    write(|out| playlist.write_to(out))
}

/// NAME must be unique within a group: a repeated label gets " (2)".
fn unique_names<'a>(labels: impl Iterator<Item = &'a TrackLabel>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for label in labels {
        let mut name = label.name.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{} ({n})", label.name);
            n += 1;
        }
        names.push(name);
    }
    names
}

fn media(
    media_type: AlternativeMediaType,
    group: &str,
    uri: String,
    label: &TrackLabel,
    name: String,
) -> AlternativeMedia {
    AlternativeMedia {
        media_type,
        uri: Some(uri),
        group_id: group.into(),
        language: (label.language != "und").then(|| label.language.clone()),
        name,
        default: label.default,
        autoselect: true,
        ..Default::default()
    }
}

fn alternatives(m: &Manifest) -> Vec<AlternativeMedia> {
    let audios: Vec<&Rendition> = m.audios().collect();
    let audio_labels: Vec<TrackLabel> = audios.iter().map(|a| a.label()).collect();
    let mut out: Vec<AlternativeMedia> = audios
        .iter()
        .zip(unique_names(audio_labels.iter()))
        .zip(&audio_labels)
        .map(|((a, name), label)| AlternativeMedia {
            channels: Some(a.channels.max(1).to_string()),
            ..media(
                AlternativeMediaType::Audio,
                AUDIO_GROUP,
                format!("{}/index.m3u8", a.name),
                label,
                name,
            )
        })
        .collect();
    let names = unique_names(m.subtitles.iter().map(|s| &s.label));
    out.extend(m.subtitles.iter().zip(names).map(|(s, name)| {
        media(
            AlternativeMediaType::Subtitles,
            SUBTITLE_GROUP,
            format!("{}/index.m3u8", s.name),
            &s.label,
            name,
        )
    }));
    out
}

pub fn master_playlist(m: &Manifest) -> Vec<u8> {
    // Variants must allow for the largest audio rendition a player may pick.
    let audio = m.audios().max_by_key(|a| a.bandwidth);
    let audio_average = m.audios().map(|a| a.average_bandwidth).max().unwrap_or(0);
    let variants = m
        .videos()
        .map(|v| VariantStream {
            uri: format!("{}/index.m3u8", v.name),
            bandwidth: v.bandwidth + audio.map_or(0, |a| a.bandwidth),
            average_bandwidth: Some(v.average_bandwidth + audio_average),
            codecs: Some(match audio {
                Some(a) => format!("{},{}", v.codecs, a.codecs),
                None => v.codecs.clone(),
            }),
            resolution: Some(Resolution {
                width: v.width as u64,
                height: v.height as u64,
            }),
            frame_rate: Some((v.fps * 1000.0).round() / 1000.0),
            audio: audio.map(|_| AUDIO_GROUP.to_string()),
            subtitles: (!m.subtitles.is_empty()).then(|| SUBTITLE_GROUP.to_string()),
            ..Default::default()
        })
        .collect();
    let playlist = MasterPlaylist {
        version: Some(7),
        independent_segments: true,
        alternatives: alternatives(m),
        variants,
        ..Default::default()
    };
    write(|out| playlist.write_to(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::tests::manifest;

    #[test]
    fn master_names_codecs_resolution_rate_and_every_track() {
        let text = String::from_utf8(master_playlist(&manifest())).unwrap();
        assert!(text.contains("CODECS=\"avc1.64001f,mp4a.40.2\""), "{text}");
        assert!(text.contains("RESOLUTION=1280x720"), "{text}");
        assert!(text.contains("AVERAGE-BANDWIDTH=1800000"), "{text}");
        assert!(text.contains("FRAME-RATE=25"), "{text}");
        assert!(text.contains("AUDIO=\"audio\""), "{text}");
        assert!(text.contains("SUBTITLES=\"subs\""), "{text}");
        let parsed = m3u8_rs::parse_master_playlist_res(text.as_bytes()).unwrap();
        assert_eq!(parsed.variants.len(), 1);
        let tracks: Vec<_> = parsed
            .alternatives
            .iter()
            .map(|a| {
                (
                    a.media_type.to_string(),
                    a.language.clone().unwrap_or_default(),
                    a.name.clone(),
                    a.default,
                    a.uri.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            tracks,
            [
                (
                    "AUDIO".into(),
                    "en".into(),
                    "English".into(),
                    true,
                    "audio/index.m3u8".into()
                ),
                (
                    "AUDIO".into(),
                    "fr".into(),
                    "French".into(),
                    false,
                    "audio2/index.m3u8".into()
                ),
                (
                    "SUBTITLES".into(),
                    "en".into(),
                    "English".into(),
                    false,
                    "subs/index.m3u8".into()
                ),
            ]
        );
    }

    #[test]
    fn repeated_labels_get_unique_names() {
        let mut m = manifest();
        m.renditions[2].audio.as_mut().unwrap().name = "English".into();
        let text = String::from_utf8(master_playlist(&m)).unwrap();
        assert!(text.contains("NAME=\"English (2)\""), "{text}");
    }

    #[test]
    fn media_playlist_is_vod_fmp4() {
        let text = String::from_utf8(media_playlist(&manifest().renditions[0], 4.0)).unwrap();
        assert!(text.contains("#EXT-X-MAP:URI=\"init.mp4\""), "{text}");
        assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{text}");
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).unwrap();
        assert_eq!(parsed.segments.len(), 3);
        let subs = String::from_utf8(subtitle_playlist(12.0)).unwrap();
        assert!(
            subs.contains("subs.vtt") && subs.contains("#EXT-X-ENDLIST"),
            "{subs}"
        );
    }
}
