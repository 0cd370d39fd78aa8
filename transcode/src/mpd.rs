//! The DASH MPD over the same CMAF segments as HLS: one video
//! AdaptationSet, one per audio track (with `lang`, Role and Label), one
//! per WebVTT subtitle track. Written by hand: it is one static template,
//! and the DASH crates on crates.io are parsers first, with a large
//! dependency tree for writing.

use crate::package::{Manifest, Rendition, Subtitle, TrackLabel, SUBTITLE_FILE};
use std::fmt::Write as _;

/// ISO 8601 duration, rounded up to the millisecond so the declared end is
/// never before the last sample's.
fn iso_duration(secs: f64) -> String {
    format!("PT{:.3}S", (secs * 1000.0).ceil() / 1000.0)
}

/// Text for XML attribute values and elements (labels come from uploads).
fn xml_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&apos;".into(),
            c => c.to_string(),
        })
        .collect()
}

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
    let mut id = 0;
    let video: Vec<&Rendition> = m.videos().collect();
    if !video.is_empty() {
        video_set(&mut x, id, &video);
        id += 1;
    }
    for a in m.audios() {
        audio_set(&mut x, id, a);
        id += 1;
    }
    for s in &m.subtitles {
        text_set(&mut x, id, s);
        id += 1;
    }
    let _ = writeln!(x, "  </Period>\n</MPD>");
    x
}

fn video_set(x: &mut String, id: usize, video: &[&Rendition]) {
    let max_w = video.iter().map(|v| v.width).max().unwrap_or(0);
    let max_h = video.iter().map(|v| v.height).max().unwrap_or(0);
    let _ = writeln!(
        x,
        r#"    <AdaptationSet id="{id}" contentType="video" mimeType="video/mp4" segmentAlignment="true" startWithSAP="1" maxWidth="{max_w}" maxHeight="{max_h}" frameRate="{}">"#,
        frame_rate(video[0].fps)
    );
    for v in video {
        let _ = writeln!(
            x,
            r#"      <Representation id="{}" codecs="{}" bandwidth="{}" width="{}" height="{}">"#,
            v.name, v.codecs, v.bandwidth, v.width, v.height
        );
        template(x, v);
        let _ = writeln!(x, "      </Representation>");
    }
    let _ = writeln!(x, "    </AdaptationSet>");
}

fn labels(x: &mut String, label: &TrackLabel, role: &str) {
    let _ = writeln!(
        x,
        r#"      <Role schemeIdUri="urn:mpeg:dash:role:2011" value="{role}"/>"#
    );
    let _ = writeln!(x, "      <Label>{}</Label>", xml_escape(&label.name));
}

fn audio_set(x: &mut String, id: usize, a: &Rendition) {
    let label = a.label();
    let _ = writeln!(
        x,
        r#"    <AdaptationSet id="{id}" contentType="audio" mimeType="audio/mp4" segmentAlignment="true" startWithSAP="1" lang="{}">"#,
        xml_escape(&label.language)
    );
    labels(x, &label, if label.default { "main" } else { "alternate" });
    let _ = writeln!(
        x,
        r#"      <Representation id="{}" codecs="{}" bandwidth="{}" audioSamplingRate="{}">"#,
        a.name, a.codecs, a.bandwidth, a.sample_rate
    );
    let _ = writeln!(
        x,
        r#"        <AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" value="{}"/>"#,
        a.channels.max(1)
    );
    template(x, a);
    let _ = writeln!(x, "      </Representation>");
    let _ = writeln!(x, "    </AdaptationSet>");
}

fn text_set(x: &mut String, id: usize, s: &Subtitle) {
    let _ = writeln!(
        x,
        r#"    <AdaptationSet id="{id}" contentType="text" mimeType="text/vtt" lang="{}">"#,
        xml_escape(&s.label.language)
    );
    labels(x, &s.label, "subtitle");
    let _ = writeln!(
        x,
        r#"      <Representation id="{}" bandwidth="{}">"#,
        s.name,
        (s.bytes * 8).max(256)
    );
    let _ = writeln!(x, "        <BaseURL>{}/{SUBTITLE_FILE}</BaseURL>", s.name);
    let _ = writeln!(x, "      </Representation>");
    let _ = writeln!(x, "    </AdaptationSet>");
}

fn frame_rate(fps: f64) -> String {
    let rounded = fps.round();
    if (fps - rounded).abs() < 0.01 {
        format!("{rounded}")
    } else {
        format!("{}/1001", (fps * 1001.0).round())
    }
}

/// `SegmentTemplate` with a `SegmentTimeline` of runs: one `<S>` per run
/// of equal durations (`r` repeats), `t` only where a run does not start
/// where the previous one ended. presentationTimeOffset is 0: the init
/// segments' edit lists already map media time to presentation time.
fn template(x: &mut String, r: &Rendition) {
    let _ = writeln!(
        x,
        r#"        <SegmentTemplate timescale="{}" initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg_$Number%05d$.m4s" startNumber="1">"#,
        r.timescale
    );
    let _ = writeln!(x, "          <SegmentTimeline>");
    let mut expected: Option<u64> = None;
    let mut i = 0;
    while i < r.segments.len() {
        let s = &r.segments[i];
        let mut repeats = 0;
        while let Some(next) = r.segments.get(i + repeats + 1) {
            let contiguous = next.start == s.start + (repeats as u64 + 1) * s.ticks;
            if next.ticks != s.ticks || !contiguous {
                break;
            }
            repeats += 1;
        }
        let t = if expected == Some(s.start) {
            String::new()
        } else {
            format!(r#" t="{}""#, s.start)
        };
        let r_attr = if repeats > 0 {
            format!(r#" r="{repeats}""#)
        } else {
            String::new()
        };
        let _ = writeln!(x, r#"            <S{t} d="{}"{r_attr}/>"#, s.ticks);
        expected = Some(s.start + (repeats as u64 + 1) * s.ticks);
        i += repeats + 1;
    }
    let _ = writeln!(x, "          </SegmentTimeline>");
    let _ = writeln!(x, "        </SegmentTemplate>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::tests::manifest;

    #[test]
    fn every_track_with_its_language() {
        let text = mpd(&manifest());
        assert!(text.contains(r#"contentType="video""#), "{text}");
        assert!(text.contains(r#"contentType="audio" mimeType="audio/mp4" segmentAlignment="true" startWithSAP="1" lang="en""#), "{text}");
        assert!(
            text.contains(r#"lang="fr""#) && text.contains("<Label>French</Label>"),
            "{text}"
        );
        assert!(
            text.contains(r#"value="main""#) && text.contains(r#"value="alternate""#),
            "{text}"
        );
        assert!(
            text.contains(r#"contentType="text" mimeType="text/vtt" lang="en""#),
            "{text}"
        );
        assert!(text.contains("<BaseURL>subs/subs.vtt</BaseURL>"), "{text}");
        assert!(!text.contains("presentationTimeOffset"), "{text}");
        assert!(
            text.contains(r#"mediaPresentationDuration="PT12.000S""#),
            "{text}"
        );
    }

    #[test]
    fn timeline_uses_repeats() {
        let text = mpd(&manifest());
        assert!(text.contains(r#"<S t="0" d="51200" r="2"/>"#), "{text}");
        // Audio: two equal segments, then a longer last one.
        assert!(text.contains(r#"<S t="0" d="192000" r="1"/>"#), "{text}");
        assert!(text.contains(r#"<S d="193024"/>"#), "{text}");
    }

    #[test]
    fn long_videos_stay_small() {
        let mut m = manifest();
        let seg = m.renditions[0].segments[0].clone();
        m.renditions[0].segments = (0..2700)
            .map(|i| crate::package::Segment {
                start: i * seg.ticks,
                ..seg.clone()
            })
            .collect();
        assert!(mpd(&m).len() < 5_000, "a 3-hour video's MPD is a few lines");
    }

    #[test]
    fn labels_are_escaped_and_the_end_rounds_up() {
        let mut m = manifest();
        m.renditions[1].audio.as_mut().unwrap().name = r#"Director's <cut> & "more""#.into();
        m.duration = 1.0241;
        let text = mpd(&m);
        assert!(
            text.contains("<Label>Director&apos;s &lt;cut&gt; &amp; &quot;more&quot;</Label>"),
            "{text}"
        );
        assert!(
            text.contains(r#"mediaPresentationDuration="PT1.025S""#),
            "{text}"
        );
    }
}
