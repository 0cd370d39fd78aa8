//! Odd sources, published through the hub and an edge, played to the end
//! by hls.js, dash.js and Shaka in Chromium, without retries: A/V aligned
//! as the players present it, codec strings Chromium accepts, every track
//! kept. And dash.js reaching the end of a 1 s clip forty times in a row.

mod support;

use meshcast_hub::tus_client;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::hub::*;
use support::*;

struct Published {
    hub: Hub,
    _edge: Edge,
    /// (source name, video record) in upload order.
    videos: Vec<(String, Value)>,
}

/// A hub and an edge in front of it, with `sources` uploaded and ready.
async fn publish(sources: &[(&str, PathBuf)], hub: Hub) -> Published {
    let edge_port = free_port_of(&hub);
    let mut edge = Edge::config(hub.addr(), "");
    edge.port = edge_port;
    edge.write_config(hub.addr(), "");
    let edge = edge.start().await;
    let client = hub.client();
    let mut ids = Vec::new();
    for (name, file) in sources {
        let url =
            tus_client::upload_file(&client, &hub.url("/v1/videos"), file, 4 << 20, |_, _| {})
                .await
                .unwrap();
        ids.push((name.to_string(), tus_client::video_id(&url).to_string()));
    }
    let mut videos = Vec::new();
    for (name, id) in ids {
        let (v, _) = hub.wait_done(&id, Duration::from_secs(180)).await;
        assert_eq!(v["status"], "ready", "{name}: {v}");
        videos.push((name, v));
    }
    Published {
        hub,
        _edge: edge,
        videos,
    }
}

/// The hub hands out playback URLs on this edge port.
fn free_port_of(hub: &Hub) -> u16 {
    let text = std::fs::read_to_string(&hub.config).unwrap();
    let at = text.find("edges = [\"http://127.0.0.1:").unwrap() + 27;
    text[at..at + text[at..].find('"').unwrap()]
        .parse()
        .unwrap()
}

fn hub_for_an_edge() -> Hub {
    Hub::config(&format!("http://127.0.0.1:{}", free_port()))
}

fn make(dir: &Path, name: &str, args: &[&str]) -> (String, PathBuf) {
    let out = dir.join(name);
    let mut all: Vec<&str> = args.to_vec();
    all.push(out.to_str().unwrap());
    ffmpeg(&all);
    (name.to_string(), out)
}

/// The sources the issue tried, made here: each is (name, file).
fn odd_sources(dir: &Path) -> Vec<(String, PathBuf)> {
    let srt = dir.join("subs.srt");
    std::fs::write(&srt, "1\n00:00:00,500 --> 00:00:02,000\nHello\n").unwrap();
    let h264 = [
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v: Vec<&str> = extra.to_vec();
        v.extend_from_slice(&h264);
        v
    };
    vec![
        make(dir, "sync.mp4", &with(&[
            "-f", "lavfi", "-i", "color=c=black:s=320x240:r=30:d=3,drawbox=enable='between(t,1,1.02)':x=0:y=0:w=iw:h=ih:c=white:t=fill",
            "-f", "lavfi", "-i", "aevalsrc='if(between(t,1,1.1),sin(2*PI*1000*t),0)':s=48000:d=3",
            "-c:a", "aac", "-shortest",
        ])),
        make(dir, "tiny-slow.mp4", &with(&["-f", "lavfi", "-i", "testsrc2=size=64x64:rate=1", "-t", "16"])),
        make(dir, "one-second.mp4", &with(&[
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i",
            "sine=frequency=440:sample_rate=48000", "-t", "1", "-c:a", "aac",
        ])),
        make(dir, "portrait.mp4", &with(&[
            "-f", "lavfi", "-i", "testsrc2=size=360x640:rate=25", "-f", "lavfi", "-i",
            "sine=frequency=440:sample_rate=48000", "-t", "2", "-c:a", "aac",
        ])),
        make(dir, "two-languages.mkv", &{
            let mut v = vec![
                "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i",
                "sine=frequency=440:sample_rate=48000", "-f", "lavfi", "-i",
                "sine=frequency=660:sample_rate=48000", "-i", srt.to_str().unwrap(), "-t", "3",
                "-map", "0:v", "-map", "1:a", "-map", "2:a", "-map", "3:s", "-c:a", "aac",
                "-c:s", "srt", "-metadata:s:a:0", "language=eng", "-metadata:s:a:1",
                "language=fra", "-metadata:s:s:0", "language=eng",
            ];
            v.extend_from_slice(&h264);
            v
        }),
        make(dir, "mono-12k.mp4", &with(&[
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i",
            "sine=frequency=440:sample_rate=48000", "-t", "3", "-c:a", "aac", "-ac", "1",
            "-b:a", "12k",
        ])),
    ]
}

/// Every CODECS string of a master playlist, as MSE MIME types.
fn mime_types(master: &str) -> Vec<String> {
    let mut out = Vec::new();
    for codecs in master.split("CODECS=\"").skip(1) {
        for c in codecs[..codecs.find('"').unwrap()].split(',') {
            let kind = if c.starts_with("mp4a") {
                "audio"
            } else {
                "video"
            };
            out.push(format!("{kind}/mp4; codecs=\"{c}\""));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn check_play(name: &str, engine: &str, r: &Value, types: &[String]) {
    let what = format!("{name} with {engine}");
    assert_eq!(r["ended"], true, "{what}: {r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{what}: {r}");
    // `ended` means the playhead reached the end, whoever said it.
    let (at, duration) = (r["currentTime"].as_f64(), r["duration"].as_f64());
    assert!(
        matches!((at, duration), (Some(at), Some(d)) if d > 0.5 && (d - at).abs() < 0.1),
        "{what}: ended at {at:?} of {duration:?}"
    );
    for t in types {
        assert_eq!(r["typeSupported"][t], true, "{what}: Chromium refuses {t}");
    }
    let starts: Vec<(String, f64)> = r["sourceBuffers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["type"].as_str().unwrap().to_string(),
                b["start"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    let video = starts
        .iter()
        .find(|(t, _)| t.starts_with("video"))
        .map(|s| s.1);
    let audio = starts
        .iter()
        .find(|(t, _)| t.starts_with("audio"))
        .map(|s| s.1);
    let video = video.unwrap_or_else(|| panic!("{what}: no video buffer: {r}"));
    if let Some(audio) = audio {
        assert!(
            (audio - video).abs() <= 0.020,
            "{what}: audio starts at {audio}, video at {video}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_sources_play_to_the_end_in_every_player() {
    let mut hub = hub_for_an_edge();
    hub.launch().await;
    let sources = odd_sources(&hub.dir);
    let refs: Vec<(&str, PathBuf)> = sources
        .iter()
        .map(|(n, p)| (n.as_str(), p.clone()))
        .collect();
    let net = publish(&refs, hub).await;
    for (name, video) in &net.videos {
        let id = video["id"].as_str().unwrap();
        let master = get(&net.hub.url(&format!("/v/{id}/master.m3u8")), &[]).await;
        let master = String::from_utf8(master.body).unwrap();
        let types = mime_types(&master);
        let check = types.join("|");
        let player = video["player"][0].as_str().unwrap();
        // The 16 s clip plays at 4x; the others in real time.
        let rate = if name == "tiny-slow.mp4" { "4" } else { "1" };
        for engine in ["hls", "dash", "shaka"] {
            let r = play_in_chromium_env(
                &format!("{player}?engine={engine}"),
                &[("CHECK_TYPES", &check), ("PLAYBACK_RATE", rate)],
            );
            check_play(name, engine, &r, &types);
        }
        if name == "two-languages.mkv" {
            for want in ["LANGUAGE=\"en\"", "LANGUAGE=\"fr\"", "TYPE=SUBTITLES"] {
                assert!(master.contains(want), "{want}:\n{master}");
            }
            let mpd = get(&net.hub.url(&format!("/v/{id}/manifest.mpd")), &[]).await;
            let mpd = String::from_utf8(mpd.body).unwrap();
            for want in ["lang=\"en\"", "lang=\"fr\"", "text/vtt"] {
                assert!(mpd.contains(want), "{want}:\n{mpd}");
            }
        }
        if name == "portrait.mp4" {
            assert!(master.contains("RESOLUTION=360x640"), "{master}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_js_reaches_the_end_of_a_one_second_clip_every_time() {
    let mut hub = hub_for_an_edge();
    hub.launch().await;
    let clip = hub.dir.join("one.mp4");
    make_video(&clip, 1, "320x240");
    let net = publish(&[("one.mp4", clip)], hub).await;
    let player = net.videos[0].1["player"][0].as_str().unwrap();
    let r = play_in_chromium_env(&format!("{player}?engine=dash"), &[("PLAYS", "40")]);
    assert_eq!(r["ended"], 40, "{r}");
}
