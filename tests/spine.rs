//! The spine, end to end through the real binaries: tus upload → hub
//! transcode → hub as origin → edge → ffmpeg, hls.js and dash.js.

mod support;

use meshcast_hub::tus_client;
use std::time::Duration;
use support::hub::*;
use support::*;
use tokio::io::AsyncWriteExt;

/// Sends a PATCH that promises `data.len()` bytes but delivers only half,
/// then drops the connection, as a flaky mobile network would — once the
/// hub has stored all it was sent (HEAD says so), so the cut is mid-body
/// and the offset to resume from is known.
async fn interrupted_patch(client: &reqwest::Client, url: &str, key: &str, at: u64, data: &[u8]) {
    let u: reqwest::Url = url.parse().unwrap();
    let mut s = tokio::net::TcpStream::connect((u.host_str().unwrap(), u.port().unwrap()))
        .await
        .unwrap();
    let head = format!(
        "PATCH {} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nAuthorization: Bearer {key}\r\nUpload-Offset: {at}\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {}\r\n\r\n",
        u.path(),
        data.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&data[..data.len() / 2]).await.unwrap();
    s.flush().await.unwrap();
    let sent = at + (data.len() / 2) as u64;
    eventually(
        "the hub to store what the cut PATCH sent",
        Duration::from_secs(10),
        || async {
            match tus_client::offset(client, url).await {
                Ok(o) if o == sent => Ok(()),
                other => Err(format!("offset {other:?}")),
            }
        },
    )
    .await;
    drop(s);
}

async fn upload_resuming(hub: &Hub, file: &std::path::Path) -> String {
    let client = hub.client();
    let bytes = std::fs::read(file).unwrap();
    let url = tus_client::create(
        &client,
        &hub.url("/v1/videos"),
        "clip.mp4",
        bytes.len() as u64,
    )
    .await
    .unwrap();
    let third = bytes.len() / 3;
    let at = tus_client::patch(&client, &url, 0, bytes[..third].to_vec())
        .await
        .unwrap();
    assert_eq!(at, third as u64);
    interrupted_patch(
        &client,
        &url,
        hub.api_key.as_deref().unwrap(),
        at,
        &bytes[third..],
    )
    .await;
    let mut resumed_at = 0;
    for _ in 0..50 {
        resumed_at = tus_client::offset(&client, &url).await.unwrap();
        if resumed_at > third as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        resumed_at > third as u64,
        "bytes of the cut PATCH were kept (offset {resumed_at})"
    );
    assert!(resumed_at < bytes.len() as u64);
    let wrong = tus_client::patch(&client, &url, third as u64, vec![0; 10])
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("409"), "{wrong}");
    let end = tus_client::patch(
        &client,
        &url,
        resumed_at,
        bytes[resumed_at as usize..].to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(end, bytes.len() as u64);
    tus_client::video_id(&url).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_transcode_and_play_through_the_edge() {
    let edge_port = free_port();
    let mut hub = Hub::config(&format!("http://127.0.0.1:{edge_port}"));
    hub.launch().await;
    let mut edge = Edge::config(hub.addr(), "");
    edge.port = edge_port;
    edge.write_config(hub.addr(), "");
    let edge = edge.start().await;

    let src = hub.dir.join("clip.mp4");
    make_video(&src, 6, "640x360");
    let id = upload_resuming(&hub, &src).await;
    let (video, seen) = hub.wait_done(&id, Duration::from_secs(120)).await;
    assert_eq!(video["status"], "ready", "{video}");
    assert!(
        seen.iter().any(|s| s == "queued" || s == "transcoding"),
        "{seen:?}"
    );
    assert_eq!(video["renditions"], serde_json::json!(["360p", "audio"]));
    let hls = video["hls"][0].as_str().unwrap().to_string();
    let dash = video["dash"][0].as_str().unwrap().to_string();
    let player = video["player"][0].as_str().unwrap().to_string();
    assert_eq!(hls, edge.url(&format!("/v/{id}/master.m3u8")));

    // ffmpeg decodes every frame of the source through the edge, from HLS and from DASH.
    let source_frames = count_frames(src.to_str().unwrap());
    assert_eq!(source_frames, 150);
    assert_eq!(count_frames(&hls), source_frames, "HLS");
    assert_eq!(count_frames(&dash), source_frames, "DASH");

    // The hub as origin: long-lived immutable segments, short playlists, ETags, 304.
    let seg = get(&hub.url(&format!("/v/{id}/360p/seg_00001.m4s")), &[]).await;
    assert_eq!(
        seg.headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let etag = seg.headers["etag"].to_str().unwrap().to_string();
    assert_eq!(
        get(
            &hub.url(&format!("/v/{id}/360p/seg_00001.m4s")),
            &[("if-none-match", &etag)]
        )
        .await
        .status,
        304
    );
    // Ranges come from the file (tower-http's ServeFile), with our ETag.
    let seg_url = hub.url(&format!("/v/{id}/360p/seg_00001.m4s"));
    let part = get(&seg_url, &[("range", "bytes=100-199")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, seg.body[100..200]);
    assert_eq!(
        part.headers["content-range"],
        format!("bytes 100-199/{}", seg.body.len()).as_str()
    );
    assert_eq!(part.headers["etag"], etag.as_str());
    let tail = get(&seg_url, &[("range", "bytes=-10")]).await;
    assert_eq!(tail.body, seg.body[seg.body.len() - 10..]);
    let past = format!("bytes={}-", seg.body.len() + 1);
    assert_eq!(get(&seg_url, &[("range", &past)]).await.status, 416);
    let master = get(&hub.url(&format!("/v/{id}/master.m3u8")), &[]).await;
    assert_eq!(master.headers["cache-control"], "public, max-age=5");
    assert!(master.headers.contains_key("etag"));
    let text = String::from_utf8(master.body).unwrap();
    for want in [
        "CODECS=\"avc1.",
        "RESOLUTION=640x360",
        "AVERAGE-BANDWIDTH=",
        "FRAME-RATE=25",
        "TYPE=AUDIO",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    // Segments came through the edge's cache.
    let again = get(&edge.url(&format!("/v/{id}/360p/seg_00001.m4s")), &[]).await;
    assert!(again.cache.contains("hit"), "{}", again.cache);

    // Real players in Chromium play to the end without a player error.
    for page in [player.clone(), format!("{player}?engine=dash")] {
        let r = play_in_chromium(&page);
        assert_eq!(r["ended"], true, "{page}: {r}");
        assert_eq!(r["errors"], serde_json::json!([]), "{page}: {r}");
    }
    let list = get_json(&hub.client(), &hub.url("/v1/videos")).await;
    assert_eq!(list["videos"][0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_fail_with_reasons() {
    let mut hub = Hub::config("http://127.0.0.1:1");
    hub.launch().await;
    let dir = hub.dir.clone();
    let good = dir.join("good.mp4");
    make_video(&good, 2, "320x240");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(dir.join("empty.mp4"), b"").unwrap();
    std::fs::write(dir.join("truncated.mp4"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(dir.join("notes.txt"), b"meeting notes: not a video\n").unwrap();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240",
        "-frames:v",
        "1",
        dir.join("still.png").to_str().unwrap(),
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
    let cases = [
        ("empty.mp4", "empty"),
        ("truncated.mp4", "incomplete or damaged"),
        ("notes.txt", "not a video"),
        ("still.png", "still image"),
        ("audio.m4a", "no video stream"),
    ];
    let client = hub.client();
    for (file, reason) in cases {
        let url = tus_client::upload_file(
            &client,
            &hub.url("/v1/videos"),
            &dir.join(file),
            1 << 20,
            |_, _| {},
        )
        .await
        .unwrap();
        let (v, _) = hub
            .wait_done(tus_client::video_id(&url), Duration::from_secs(60))
            .await;
        assert_eq!(v["status"], "failed", "{file}: {v}");
        let why = v["reason"].as_str().unwrap_or("");
        assert!(
            why.contains(reason),
            "{file}: reason {why:?} should mention {reason:?}"
        );
        assert_eq!(v["hls"], serde_json::json!([]));
        assert_eq!(
            v["percent"], 0.0,
            "{file}: a failed video shows no progress"
        );
        let part = dir
            .join("data/uploads")
            .join(format!("{}.part", tus_client::video_id(&url)));
        assert!(!part.exists(), "{file}: the refused upload is removed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_protocol_answers() {
    let mut hub = Hub::config("http://127.0.0.1:1");
    hub.launch().await;
    let client = hub.client();
    let opts = client
        .request(reqwest::Method::OPTIONS, hub.url("/v1/videos"))
        .send()
        .await
        .unwrap();
    assert_eq!(opts.headers()["tus-version"], "1.0.0");
    assert!(opts.headers()["tus-extension"]
        .to_str()
        .unwrap()
        .contains("creation"));
    let no_version = client
        .post(hub.url("/v1/videos"))
        .header("upload-length", 10)
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status(), 412);
    let no_length = client
        .post(hub.url("/v1/videos"))
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(no_length.status(), 400);
    let url = tus_client::create(&client, &hub.url("/v1/videos"), "x.mp4", 100)
        .await
        .unwrap();
    let wrong_type = client
        .patch(&url)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", 0)
        .header("content-type", "video/mp4")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    let too_much = tus_client::patch(&client, &url, 0, vec![0u8; 101])
        .await
        .unwrap_err();
    assert!(too_much.to_string().contains("413"), "{too_much}");
    let v = hub.video(tus_client::video_id(&url)).await;
    assert_eq!(v["status"], "uploading");
    let del = client
        .delete(&url)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    assert_eq!(
        client
            .head(&url)
            .header("tus-resumable", "1.0.0")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// A raw connection that has sent the head of a PATCH from offset 0
/// promising `len` bytes, for tests that control how the body goes.
async fn patch_head(hub: &Hub, url: &str, len: usize) -> tokio::net::TcpStream {
    let u: reqwest::Url = url.parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", hub.port))
        .await
        .unwrap();
    let head = format!(
        "PATCH {} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nAuthorization: Bearer {}\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {len}\r\n\r\n",
        u.path(),
        hub.api_key.as_deref().unwrap(),
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// SIGTERM stops the hub gracefully: no new connections, but an upload
/// in flight is taken whole and answered, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_upload_in_flight_finish() {
    let mut hub = Hub::config("http://127.0.0.1:1");
    hub.launch().await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    let client = hub.client();
    let url = tus_client::create(&client, &hub.url("/v1/videos"), "x.mp4", data.len() as u64)
        .await
        .unwrap();
    let mut s = patch_head(&hub, &url, data.len()).await;
    s.write_all(&data[..data.len() / 2]).await.unwrap();
    s.flush().await.unwrap();
    hub.terminate();
    // Stopping: the listener is closed to newcomers...
    eventually(
        "the hub refuses new connections",
        Duration::from_secs(10),
        || async {
            match tokio::net::TcpStream::connect(("127.0.0.1", hub.port)).await {
                Err(_) => Ok(()),
                Ok(_) => Err("still accepting".to_string()),
            }
        },
    )
    .await;
    // ...while the upload in flight goes on to the end.
    s.write_all(&data[data.len() / 2..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 204"), "{answer}");
    assert!(
        answer.contains(&format!("upload-offset: {}", data.len())),
        "{answer}"
    );
    let status = hub.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    // Nothing lost: after a restart the upload is complete.
    hub.launch().await;
    let v = hub.video(tus_client::video_id(&url)).await;
    assert!(v["status"].is_string() && v["status"] != "uploading", "{v}");
}

/// A client that sends the last byte and hangs up without waiting for the
/// answer (a closed tab, a reload) still leaves a complete upload: the
/// hub must not stop between storing the bytes and queueing the video,
/// or HEAD would say "complete" of a video that never transcodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_client_hangs_up_after_the_last_byte_is_complete() {
    let mut hub = Hub::config("http://127.0.0.1:1");
    hub.launch().await;
    let client = hub.client();
    let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i * 7) as u8).collect();
    let url = tus_client::create(&client, &hub.url("/v1/videos"), "x.mp4", data.len() as u64)
        .await
        .unwrap();
    let mut s = patch_head(&hub, &url, data.len()).await;
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    drop(s);
    let id = tus_client::video_id(&url).to_string();
    let v = eventually(
        "the whole upload to leave `uploading`",
        Duration::from_secs(30),
        || async {
            let v = hub.video(&id).await;
            match v["status"].as_str() {
                Some("uploading") => Err(format!("{v}")),
                _ => Ok(v),
            }
        },
    )
    .await;
    assert_eq!(
        v["upload"]["length"].as_u64(),
        Some(data.len() as u64),
        "{v}"
    );
    assert_eq!(
        tus_client::offset(&client, &url).await.unwrap(),
        data.len() as u64
    );

    // A hub killed after the last byte was stored and before the video was
    // queued: the client's resume (HEAD) finds it whole and queues it.
    let url = tus_client::create(&client, &hub.url("/v1/videos"), "y.mp4", 1000)
        .await
        .unwrap();
    let id = tus_client::video_id(&url).to_string();
    hub.kill();
    let part = hub.dir.join("data/uploads").join(format!("{id}.part"));
    std::fs::write(&part, vec![7u8; 1000]).unwrap();
    hub.launch().await;
    assert_eq!(hub.video(&id).await["status"], "uploading");
    assert_eq!(tus_client::offset(&client, &url).await.unwrap(), 1000);
    let v = hub.video(&id).await;
    assert_ne!(
        v["status"], "uploading",
        "HEAD queued the whole upload: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_crash_mid_transcode_requeues_the_video() {
    let mut hub = Hub::config("http://127.0.0.1:1");
    // A slower preset and a taller source so the transcode is still running when the hub dies.
    let text = std::fs::read_to_string(&hub.config)
        .unwrap()
        .replace("ultrafast", "medium");
    std::fs::write(&hub.config, text).unwrap();
    hub.launch().await;
    let src = hub.dir.join("long.mp4");
    make_video(&src, 12, "1280x720");
    let client = hub.client();
    let url = tus_client::upload_file(&client, &hub.url("/v1/videos"), &src, 4 << 20, |_, _| {})
        .await
        .unwrap();
    let id = tus_client::video_id(&url).to_string();
    let mut caught = false;
    for _ in 0..400 {
        if hub.video(&id).await["status"] == "transcoding" {
            caught = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(caught, "saw the video transcoding");
    hub.kill();
    hub.launch().await;
    let v = hub.video(&id).await;
    assert!(
        v["status"] == "queued" || v["status"] == "transcoding",
        "after restart: {v}"
    );
    assert_eq!(v["hls"], serde_json::json!([]), "never half-ready");
    let (v, _) = hub.wait_done(&id, Duration::from_secs(240)).await;
    assert_eq!(v["status"], "ready", "{v}");
    assert_eq!(
        v["renditions"],
        serde_json::json!(["720p", "480p", "360p", "audio"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshcast_up_brings_up_a_playable_network() {
    let dir = std::env::temp_dir().join(format!("meshcast-up-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 12 s: two chunks of two 4 s segments' worth (`meshcast up` cuts its
    // videos into 8 s chunks), one for each of its two workers.
    let video = dir.join("in.mp4");
    make_video(&video, 12, "640x360");
    let ready = dir.join("ready.json");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_meshcast"))
        .args(["up", "--dir"])
        .arg(dir.join("net"))
        .arg("--video")
        .arg(&video)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("up.stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut child = support::Terminated(child);
    let mut facts = None;
    for _ in 0..1200 {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                facts = Some(v);
                break;
            }
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("meshcast up exited early ({status}):\n{}", up_logs(&dir));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let facts = facts.expect("ready file written");
    assert_eq!(facts["edges"].as_array().unwrap().len(), 2);
    // The edges' origin is the network: with the hub's copy of the media
    // deleted, every frame still plays through both (their caches are cold).
    let placed = get_json(
        &reqwest::Client::new(),
        facts["placement"].as_str().unwrap(),
    )
    .await;
    let objects = placed["objects"]
        .as_array()
        .expect("placed on storage nodes");
    assert!(objects.len() >= 4, "{placed}");
    for o in objects {
        let nodes: std::collections::BTreeSet<&str> = o["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["node"].as_str().unwrap())
            .collect();
        assert_eq!(nodes.len(), 3, "2 + 1 shards on three nodes: {o}");
        let h = o["hash"].as_str().unwrap();
        std::fs::remove_file(dir.join("net/hub/blobs").join(&h[..2]).join(h)).unwrap();
    }
    let hls = facts["videos"][0]["hls"].as_array().unwrap();
    assert_eq!(hls.len(), 2);
    for url in hls {
        assert_eq!(count_frames(url.as_str().unwrap()), 300, "{url}");
    }
    // Every frame once, 40 ms apart, across the chunk boundary at 8 s.
    let times = presentation_times(hls[0].as_str().unwrap());
    assert_eq!(times.len(), 300);
    for w in times.windows(2) {
        assert!(
            (w[1] - w[0] - 0.04).abs() < 1e-3,
            "a gap or an overlap at {} s",
            w[0]
        );
    }
    // Both workers transcoded, each a chunk, each checked and accepted.
    let hub = facts["hub"].as_str().unwrap();
    let id = facts["videos"][0]["id"].as_str().unwrap();
    let owner = client_with_key(facts["api_key"].as_str().unwrap());
    let video_status = get_json(&owner, &format!("{hub}/v1/videos/{id}")).await;
    let chunks = video_status["chunks"].as_array().expect("chunks reported");
    assert_eq!(chunks.len(), 2, "{video_status}");
    let workers: std::collections::BTreeSet<&str> = chunks
        .iter()
        .map(|c| c["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "each worker did a chunk: {chunks:?}");
    assert!(!workers.contains("hub"), "{chunks:?}");
    for c in chunks {
        assert_eq!(c["state"], "done");
        assert!(
            c["history"][0]["outcome"]
                .as_str()
                .unwrap()
                .starts_with("passed"),
            "{c}"
        );
    }
    let player = facts["videos"][0]["player"][0].as_str().unwrap();
    for engine in ["hls", "dash"] {
        let r = play_in_chromium_env(
            &format!("{player}?engine={engine}"),
            &[("PLAYBACK_RATE", "4")],
        );
        assert_eq!(r["ended"], true, "{engine}: {r}");
        assert_eq!(r["errors"], serde_json::json!([]), "{engine}: {r}");
    }
    assert!(
        reqwest::get(facts["videos"][0]["player"][1].as_str().unwrap())
            .await
            .unwrap()
            .status()
            .is_success()
    );
    // The hub's own ledger is committing blocks.
    let ledger: serde_json::Value = reqwest::get(facts["ledger"].as_str().unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ledger["height"].as_u64().unwrap() >= 1, "{ledger}");
    let status = child.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `meshcast up` printed, and the end of each log of the processes it
/// started: the reason it stopped, for a failure message.
fn up_logs(dir: &std::path::Path) -> String {
    let mut out = std::fs::read_to_string(dir.join("up.stderr")).unwrap_or_default();
    let mut logs: Vec<_> = std::fs::read_dir(dir.join("net"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter(|p| !p.to_string_lossy().ends_with("-access.log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        out += &format!("--- {}\n", log.display());
        for line in tail.into_iter().rev() {
            out += line;
            out.push('\n');
        }
    }
    out
}

/// Accounts, played by a stranger: no key, a bad key, another account's
/// key — none can list, read, resume, terminate or create past a quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_touch_another_accounts_uploads() {
    let mut hub = Hub::config("http://127.0.0.1:1");
    hub.launch().await;
    let alice = hub.client();
    let mallory_key = hub.create_account("mallory").await;
    let mallory = client_with_key(&mallory_key);
    let anonymous = reqwest::Client::new();
    let endpoint = hub.url("/v1/videos");

    // Without a key nothing is created or listed; the answer says what to send.
    let err = tus_client::create(&anonymous, &endpoint, "x.mp4", 100)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("401") && err.to_string().contains("Bearer"),
        "{err}"
    );
    let r = anonymous.get(&endpoint).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let forged = client_with_key(&format!("{}x", &mallory_key[..mallory_key.len() - 1]));
    assert_eq!(forged.get(&endpoint).send().await.unwrap().status(), 401);

    // Alice's upload in progress, seen by Mallory: not found, whatever the verb.
    let upload = tus_client::create(&alice, &endpoint, "a.mp4", 100)
        .await
        .unwrap();
    let id = tus_client::video_id(&upload).to_string();
    let tus = |c: &reqwest::Client, m: reqwest::Method| {
        c.request(m, &upload).header("tus-resumable", "1.0.0")
    };
    assert_eq!(
        tus(&mallory, reqwest::Method::HEAD)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let patch = tus(&mallory, reqwest::Method::PATCH)
        .header("upload-offset", 0)
        .header("content-type", "application/offset+octet-stream")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 404);
    assert_eq!(
        tus(&mallory, reqwest::Method::DELETE)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        tus(&anonymous, reqwest::Method::DELETE)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let video = hub.url(&format!("/v1/videos/{id}"));
    assert_eq!(mallory.get(&video).send().await.unwrap().status(), 404);
    assert_eq!(
        anonymous.get(&video).send().await.unwrap().status(),
        404,
        "not ready: not public"
    );
    // Alice's upload is untouched: offset 0, still hers.
    assert_eq!(tus_client::offset(&alice, &upload).await.unwrap(), 0);
    assert_eq!(hub.video(&id).await["status"], "uploading");
    let listed = get_json(&mallory, &endpoint).await;
    assert_eq!(listed["videos"], serde_json::json!([]), "{listed}");

    // Pages: three uploads, two per page, oldest first.
    for n in 0..2 {
        tus_client::create(&alice, &endpoint, &format!("{n}.mp4"), 100)
            .await
            .unwrap();
    }
    let page = |after: Option<&str>| {
        let mut url = format!("{endpoint}?limit=2");
        if let Some(a) = after {
            url.push_str(&format!("&after={a}"));
        }
        let alice = alice.clone();
        async move { get_json(&alice, &url).await }
    };
    let first = page(None).await;
    assert_eq!(first["videos"].as_array().unwrap().len(), 2, "{first}");
    assert_eq!(first["videos"][0]["id"], id.as_str());
    let second = page(first["next"].as_str()).await;
    assert_eq!(second["videos"].as_array().unwrap().len(), 1, "{second}");
    assert!(second["next"].is_null(), "{second}");
    let admin = client_with_key(&hub.admin_key());
    let all = get_json(&admin, &endpoint).await;
    assert_eq!(
        all["videos"].as_array().unwrap().len(),
        3,
        "the operator sees all"
    );

    // Quotas, with reasons: 150 bytes stored at most, 120 per upload.
    let r: serde_json::Value = admin
        .post(hub.url("/v1/accounts"))
        .json(
            &serde_json::json!({"name": "small", "max_upload_bytes": 120, "max_stored_bytes": 150}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let small = client_with_key(r["api_key"].as_str().unwrap());
    let err = tus_client::create(&small, &endpoint, "big.mp4", 121)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("413") && err.to_string().contains("at most 120"),
        "{err}"
    );
    tus_client::create(&small, &endpoint, "one.mp4", 100)
        .await
        .unwrap();
    let err = tus_client::create(&small, &endpoint, "two.mp4", 100)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("quota"), "{err}");
    // Accounts are the operator's to make.
    let r = small
        .post(hub.url("/v1/accounts"))
        .json(&serde_json::json!({"name": "more"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A revoked key stops working at once; the account's other key works.
    let keys = get_json(&mallory, &hub.url("/v1/account/keys")).await;
    let key_id = keys["keys"][0]["id"].as_str().unwrap().to_string();
    let spare: serde_json::Value = mallory
        .post(hub.url("/v1/account/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = mallory
        .delete(hub.url(&format!("/v1/account/keys/{key_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(mallory.get(&endpoint).send().await.unwrap().status(), 401);
    let spare = client_with_key(spare["api_key"].as_str().unwrap());
    assert_eq!(spare.get(&endpoint).send().await.unwrap().status(), 200);
    // Keys are stored hashed: the key text is nowhere in the hub's files.
    let db = std::fs::read(hub.dir.join("data/accounts.redb")).unwrap();
    // `mck_{id}_{secret}`; the secret is base64url and may hold `_` itself.
    let secret = mallory_key.splitn(3, '_').nth(2).unwrap();
    assert!(secret.len() >= 40, "{mallory_key}");
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_deletes_a_ready_video_and_no_one_else_can() {
    let mut hub = Hub::config("http://127.0.0.1:1");
    hub.launch().await;
    let src = hub.dir.join("clip.mp4");
    make_video(&src, 2, "320x240");
    let id = hub.publish(&src).await;
    let url = hub.url(&format!("/v1/videos/{id}"));
    let playlist = hub.url(&format!("/v/{id}/master.m3u8"));
    assert_eq!(reqwest::get(&playlist).await.unwrap().status(), 200);
    let stranger = client_with_key(&hub.create_account("stranger").await);
    assert_eq!(stranger.delete(&url).send().await.unwrap().status(), 404);
    assert_eq!(hub.video(&id).await["status"], "ready");
    assert_eq!(
        hub.client().delete(&url).send().await.unwrap().status(),
        204
    );
    assert_eq!(hub.client().get(&url).send().await.unwrap().status(), 404);
    assert_eq!(reqwest::get(&playlist).await.unwrap().status(), 404);
    let session = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .to_bytes(),
    );
    let tokens = reqwest::Client::new()
        .post(hub.url(&format!("/v1/videos/{id}/tokens")))
        .json(&serde_json::json!({"session": session}))
        .send()
        .await
        .unwrap();
    assert_eq!(tokens.status(), 404);
    // Its bytes no longer count against the account's storage.
    let me = get_json(&hub.client(), &hub.url("/v1/account")).await;
    assert_eq!(me["stored_bytes"], 0, "{me}");
    assert_eq!(
        hub.client().delete(&url).send().await.unwrap().status(),
        404
    );
}
