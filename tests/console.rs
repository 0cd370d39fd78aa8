//! The web console in Chromium against `meshcast up` (hub, two edges, two
//! workers, three storage nodes): sign in, upload through the page with a
//! reload halfway, watch it become ready, drop a file that is not a video
//! (it fails, with the reason), play the video to the end in the page, see
//! its delivery cost once the acks settle, and see both edges on the
//! network page. Screenshots go to `target/tmp/console/` (printed).

mod support;

use serde_json::Value;
use std::time::Duration;
use support::hub::*;

/// Starts `meshcast up` in `dir`; returns it and its ready file's facts.
async fn meshcast_up(dir: &std::path::Path) -> (support::Terminated, Value) {
    let first = dir.join("first.mp4");
    make_video(&first, 4, "320x240");
    let ready = dir.join("ready.json");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_meshcast"))
        .args(["up", "--dir"])
        .arg(dir.join("net"))
        .arg("--video")
        .arg(&first)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("up.stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut child = support::Terminated(child);
    let facts = support::eventually("meshcast up ready", Duration::from_secs(180), || {
        let exited = child.0.try_wait().unwrap();
        let (ready, log) = (ready.clone(), dir.join("up.stderr"));
        async move {
            if let Some(status) = exited {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("meshcast up exited early ({status}):\n{log}");
            }
            let text = std::fs::read(&ready).map_err(|e| e.to_string())?;
            serde_json::from_slice::<Value>(&text).map_err(|e| e.to_string())
        }
    })
    .await;
    (child, facts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_uploads_plays_and_sees_costs_in_the_console() {
    let dir = std::env::temp_dir().join(format!("meshcast-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut up, facts) = meshcast_up(&dir).await;
    let hub = facts["hub"].as_str().unwrap().to_string();
    let key = facts["api_key"].as_str().unwrap().to_string();
    // Over 8 MiB (the console's tus chunk), so the reload cuts it between
    // chunks: lossless keeps it large.
    let clip = dir.join("console-upload.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-t",
        "6",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-qp",
        "0",
        "-c:a",
        "aac",
        "-shortest",
        clip.to_str().unwrap(),
    ]);
    let size = std::fs::metadata(&clip).unwrap().len();
    assert!(size > 9 << 20, "the clip is only {size} bytes");
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let run = std::process::Command::new("node")
        .arg(repo_root().join("tests/browser/console.mjs"))
        .args([&hub, &key])
        .arg(&clip)
        .arg(&out)
        .current_dir(repo_root())
        .output()
        .expect("node installed");
    let text = String::from_utf8_lossy(&run.stdout);
    let r: Value = serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_else(|_| {
        panic!(
            "console script said: {text}\n{}",
            String::from_utf8_lossy(&run.stderr)
        )
    });
    eprintln!("console screenshots: {}", out.display());
    eprintln!("the page's tus exchanges: {:#}", r["tus"]);
    // The hub's side of the upload, to set beside the page's `tus` list.
    let hub_uploads: String = std::fs::read_to_string(dir.join("net/hub.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("upload") || l.contains("PATCH"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        r["failure"].is_null(),
        "{r:#}\n{}\nhub:\n{hub_uploads}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(r["pageErrors"], serde_json::json!([]), "{r:#}");
    assert_eq!(r["consoleErrors"], serde_json::json!([]), "{r:#}");
    assert!(
        r["refused"].as_str().unwrap().contains("not valid"),
        "{r:#}"
    );

    // The upload was cut off after its first chunk and resumed from there.
    let before = r["beforeReload"].as_f64().unwrap();
    assert!(before > 0.0 && before < 100.0, "{r:#}");
    assert!(
        r["unfinished"]
            .as_str()
            .unwrap()
            .contains("console-upload.mp4"),
        "{r:#}"
    );
    assert_eq!(r["resumed"], true, "{r:#}");
    let video = &r["video"];
    assert_eq!(video["status"], "ready", "{r:#}\nhub:\n{hub_uploads}");
    assert_eq!(
        r["sameName"].as_array().map(Vec::len),
        Some(1),
        "the resume continued the first upload, not a second: {r:#}\nhub:\n{hub_uploads}"
    );
    assert_eq!(video["upload"]["length"].as_u64(), Some(size));
    let id = video["id"].as_str().unwrap();
    assert!(
        r["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("transcoding")),
        "{r:#}"
    );

    // A file dropped on the page is uploaded and fails with its reason.
    let reason = r["dropped"]["reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "{r:#}");
    assert!(r["droppedRow"].as_str().unwrap().contains(reason), "{r:#}");

    // Played to the end through an edge, with acknowledgements.
    let events: Vec<&str> = r["played"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(events.contains(&"ended"), "{r:#}");
    assert_eq!(r["played"]["errors"], serde_json::json!([]), "{r:#}");
    let urls: Vec<&str> = r["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    assert!(
        urls.iter()
            .any(|u| u.ends_with(&format!("/v/{id}/master.m3u8"))),
        "{urls:?}"
    );
    assert!(
        urls.iter()
            .any(|u| u.ends_with(&format!("/v/{id}/manifest.mpd"))),
        "{urls:?}"
    );

    // Its delivery cost, as the page read it, is the bytes the hub
    // credited for it at the chain's price; the API agrees.
    let costs = &r["costs"];
    let line = costs["videos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["video"] == id)
        .unwrap();
    let bytes = line["delivery_bytes"].as_u64().unwrap();
    let price = costs["prices"]["delivery_per_gb"].as_f64().unwrap();
    assert!(bytes > 0, "{costs:#}");
    assert!((line["delivery"].as_f64().unwrap() - bytes as f64 * price / 1e9).abs() < 1e-6);
    let api = get_json(&client_with_key(&key), &format!("{hub}/v1/account/costs")).await;
    let now = api["videos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["video"] == id)
        .unwrap();
    assert!(now["delivery_bytes"].as_u64().unwrap() >= bytes, "{api:#}");
    // The workers transcoded it and were paid per rung-second.
    assert!(line["transcode_seconds"].as_u64().unwrap() > 0, "{costs:#}");

    // The network page lists both edges of `meshcast up`, up and admitted.
    let edges: Vec<&Value> = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["roles"].as_array().unwrap().iter().any(|x| x == "edge"))
        .collect();
    assert_eq!(edges.len(), 2, "{r:#}");
    assert!(
        edges
            .iter()
            .all(|e| e["state"] == "up" && e["admitted"] == true),
        "{r:#}"
    );
    assert!(r["chain"]["height"].as_u64().unwrap() >= 1);
    assert!(r["blocks"].as_u64().unwrap() >= 1);

    for shot in [
        "1-sign-in",
        "2-uploading",
        "3-library",
        "4-video",
        "5-money",
        "6-network",
        "7-api-reference",
    ] {
        let png = out.join(format!("{shot}.png"));
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{} is missing or blank", png.display());
    }
    let status = up.terminate();
    assert!(
        status.success(),
        "meshcast up exits cleanly on SIGTERM: {status}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
