//! Distributed transcoding through the real hub binary, with workers
//! driven step by step from the worker library: cheaters caught and
//! slashed, a worker that dies losing its lease, and the video right.

mod support;

use meshcast_control::identity::NodeKey;
use meshcast_control::transcoding::Job;
use meshcast_transcode::{encode_chunk, ChunkJob};
use meshcast_worker::{commitment_for, encode, upload_output, work_one, Client};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::eventually;
use support::hub::*;

struct Worker {
    client: Client,
    key: String,
    scratch: PathBuf,
}

async fn worker(hub: &Hub, name: &str, key: NodeKey) -> Worker {
    let public = hex::encode(key.public().to_bytes());
    let scratch = hub.dir.join(format!("{name}-scratch"));
    std::fs::create_dir_all(&scratch).unwrap();
    let client = Client::new(&hub.url(""), key, None).unwrap();
    client.register(&["transcode".to_string()]).await.unwrap();
    Worker {
        client,
        key: public,
        scratch,
    }
}

/// A hub with 2 s segments, 4 s chunks and `lease` leases, its chain
/// bonding these keys.
async fn hub_with(keys: &[&NodeKey], lease: &str) -> Hub {
    let mut hub = Hub::config("http://127.0.0.1:9");
    let text = std::fs::read_to_string(&hub.config).unwrap().replacen(
        "[transcode]\n",
        &format!("[transcode]\nchunk_segments = 2\nlease = \"{lease}\"\n"),
        1,
    );
    std::fs::write(&hub.config, text).unwrap();
    hub.bond_at_genesis(
        &keys
            .iter()
            .map(|k| hex::encode(k.public().to_bytes()))
            .collect::<Vec<_>>(),
    );
    hub.launch().await;
    hub
}

/// Uploads `src`; returns the video id once its chunks are on the board.
async fn upload(hub: &Hub, src: &Path) -> String {
    let id = hub.upload(src).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = hub.video(&id).await;
        if v["chunks"].as_array().is_some_and(|c| !c.is_empty()) {
            return id;
        }
        assert!(Instant::now() < deadline, "no chunks on the board: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn lease(w: &Worker) -> Job {
    w.client
        .lease()
        .await
        .unwrap()
        .expect("a job within the long-poll")
}

fn ffmpeg_to(args: &[&str], out: &Path) {
    ffmpeg(&[args, &[out.to_str().unwrap()]].concat());
}

/// What a cheater hands in for one of its segments.
#[derive(Clone, Copy)]
enum Cheat {
    /// The same span of other, valid video.
    OtherVideo,
    /// Its own source at half the size, scaled back up (a lower rung's
    /// work passed off as this one's).
    HalfSizeScaledUp,
    /// A segment one second short.
    Shorter,
}

/// Encodes `cut_like` as the job would and takes its first segment of
/// the first rung in place of the honest one in `out`.
async fn replace_first_segment(out: &Path, spec: &ChunkJob, cut_like: &Path, scratch: &Path) {
    let fake = scratch.join("fake-out");
    let _ = std::fs::remove_dir_all(&fake);
    encode_chunk(cut_like, spec, &fake, |_| {}).await.unwrap();
    let rung = &spec.rungs[0].name;
    let name = format!("seg_{:05}.m4s", spec.chunk.first_segment);
    std::fs::copy(fake.join(rung).join(&name), out.join(rung).join(&name)).unwrap();
}

/// Does the job honestly, then replaces one segment (of the chunk's two:
/// far over 5 %) and commits to what it hands in.
async fn cheat(w: &Worker, job: &Job, how: Cheat) -> meshcast_worker::CommitAnswer {
    let (out, spec) = encode(&w.client, job, &w.scratch).await.unwrap();
    let cut = w.scratch.join("cut-again.mp4");
    w.client.fetch_source(job, &cut).await.unwrap();
    let rung = &spec.rungs[0];
    let size = format!("{}x{}", rung.width, rung.height);
    let len = format!(
        "{}",
        spec.chunk.cut_to.unwrap_or(spec.duration) - spec.chunk.cut_from + 1.0
    );
    match how {
        Cheat::OtherVideo => {
            let other = w.scratch.join("other.mp4");
            let src = format!("mandelbrot=size={size}:rate=25");
            ffmpeg_to(
                &[
                    "-f",
                    "lavfi",
                    "-i",
                    &src,
                    "-t",
                    &len,
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-pix_fmt",
                    "yuv420p",
                ],
                &other,
            );
            replace_first_segment(&out, &spec, &other, &w.scratch).await;
        }
        Cheat::HalfSizeScaledUp => {
            let soft = w.scratch.join("soft.mp4");
            let scale = format!(
                "scale={}:{},scale={}:{}",
                rung.width / 2,
                rung.height / 2,
                rung.width,
                rung.height
            );
            ffmpeg_to(
                &[
                    "-i",
                    cut.to_str().unwrap(),
                    "-vf",
                    &scale,
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-crf",
                    "12",
                ],
                &soft,
            );
            replace_first_segment(&out, &spec, &soft, &w.scratch).await;
        }
        Cheat::Shorter => {
            // The chunk's first second, encoded as if it were all of it.
            let short = w.scratch.join("short.mp4");
            let from = format!("{}", spec.chunk.start - spec.chunk.cut_from);
            ffmpeg_to(
                &[
                    "-ss",
                    &from,
                    "-i",
                    cut.to_str().unwrap(),
                    "-t",
                    "1",
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                ],
                &short,
            );
            let mut job_short = spec.clone();
            job_short.chunk.cut_from = job_short.chunk.start;
            job_short.chunk.end = Some(job_short.chunk.start + 1.0);
            let fake = w.scratch.join("fake-short");
            encode_chunk(&short, &job_short, &fake, |_| {})
                .await
                .unwrap();
            let name = format!("seg_{:05}.m4s", spec.chunk.first_segment);
            std::fs::copy(
                fake.join(&rung.name).join(&name),
                out.join(&rung.name).join(&name),
            )
            .unwrap();
        }
    }
    let commitment = commitment_for(job, &spec, &out).unwrap();
    upload_output(&w.client, job, &spec, &out).await.unwrap();
    w.client.commit(&commitment).await.unwrap()
}

async fn stake(hub: &Hub, key: &str) -> u64 {
    let a = get_json(
        &reqwest::Client::new(),
        &hub.url(&format!("/v1/ledger/accounts/{key}")),
    )
    .await;
    a["account"]["stake"].as_u64().unwrap_or(0)
}

async fn balance(hub: &Hub, key: &str) -> u64 {
    let a = get_json(
        &reqwest::Client::new(),
        &hub.url(&format!("/v1/ledger/accounts/{key}")),
    )
    .await;
    a["account"]["balance"].as_u64().unwrap_or(0)
}

/// Waits for the chain to show `want` for `read`.
async fn chain_shows(what: &str, mut read: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read().await {
        assert!(Instant::now() < deadline, "the chain never showed {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every frame once and 40 ms apart, in every video rendition.
fn assert_every_frame_once(hub: &Hub, id: &str, frames: usize) {
    let t = presentation_times(&hub.url(&format!("/v/{id}/360p/index.m3u8")));
    assert_eq!(t.len(), frames);
    for w in t.windows(2) {
        assert!(
            (w[1] - w[0] - 0.04).abs() < 1e-3,
            "a gap or an overlap at {} s",
            w[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheating_workers_are_caught_slashed_and_the_video_still_comes_out_right() {
    let keys: Vec<NodeKey> = (0..4).map(|_| NodeKey::generate().unwrap()).collect();
    let hub = hub_with(&keys.iter().collect::<Vec<_>>(), "60s").await;
    let mut ws = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
        ws.push(worker(&hub, &format!("w{i}"), k).await);
    }
    let src = hub.dir.join("in.mp4");
    make_video(&src, 12, "640x360");
    let id = upload(&hub, &src).await;
    let before = stake(&hub, &ws[0].key).await;
    // Three cheaters take the three chunks; each hands in one false segment.
    let jobs = [
        lease(&ws[0]).await,
        lease(&ws[1]).await,
        lease(&ws[2]).await,
    ];
    for (w, (job, how)) in
        ws.iter().zip(
            jobs.iter()
                .zip([Cheat::OtherVideo, Cheat::HalfSizeScaledUp, Cheat::Shorter]),
        )
    {
        let answer = cheat(w, job, how).await;
        assert!(
            !answer.accepted && answer.slashed,
            "chunk {}: {answer:?}",
            job.chunk
        );
    }
    // Caught, slashed on the chain, and out: no more work for them.
    for w in &ws[..3] {
        let key = w.key.clone();
        chain_shows("the slash", async || {
            stake(&hub, &key).await == before * 95 / 100
        })
        .await;
        let refused = w.client.lease().await.unwrap_err().to_string();
        assert!(refused.contains("not admitted"), "{refused}");
    }
    let nodes = get_json(&reqwest::Client::new(), &hub.url("/v1/nodes")).await;
    for w in &ws[..3] {
        let n = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["key"] == w.key.as_str())
            .unwrap();
        let slash = &n["slashes"][0];
        assert!(
            slash["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{n}"
        );
        let evidence = get_json(
            &reqwest::Client::new(),
            &hub.url(&format!(
                "/v1/evidence/{}",
                slash["evidence"].as_str().unwrap()
            )),
        )
        .await;
        assert!(
            evidence["claim"].as_str().is_some_and(|c| c.len() > 100),
            "the signed commitment is published: {evidence}"
        );
        let also: Value = serde_json::from_str(evidence["also"].as_str().unwrap()).unwrap();
        assert_eq!(also["nonce"].as_str().map(str::len), Some(64), "{also}");
        assert!(
            also["sample"]["segment"]
                .as_str()
                .is_some_and(|s| s.len() > 1000),
            "the failed segment itself is kept"
        );
    }
    // The honest worker redoes every chunk and is paid once for each.
    let honest = &ws[3];
    honest.client.heartbeat().await.unwrap();
    for _ in 0..3 {
        let job = lease(honest).await;
        let answer = work_one(&honest.client, &job, &honest.scratch)
            .await
            .unwrap();
        assert!(answer.accepted, "{answer:?}");
    }
    let (video, _) = hub.wait_done(&id, Duration::from_secs(60)).await;
    assert_eq!(video["status"], "ready", "{video}");
    for c in video["chunks"].as_array().unwrap() {
        assert_eq!(c["worker"], honest.client.id().as_str(), "{c}");
        // The first attempt was a cheater's, refused; the last the honest one's.
        let history = c["history"].as_array().unwrap();
        assert!(
            !history[0]["outcome"]
                .as_str()
                .unwrap()
                .starts_with("passed"),
            "{c}"
        );
        assert!(
            history.last().unwrap()["outcome"]
                .as_str()
                .unwrap()
                .starts_with("passed"),
            "{c}"
        );
    }
    assert_every_frame_once(&hub, &id, 300);
    // 12 s of one rung at the genesis price (1000 µMESH a second), once.
    let key = honest.key.clone();
    chain_shows("the honest worker's pay", async || {
        balance(&hub, &key).await == 12_000
    })
    .await;
    for w in &ws[..3] {
        assert_eq!(balance(&hub, &w.key).await, 0, "a cheater earns nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_mid_chunk_loses_its_lease_and_its_late_result_is_refused() {
    let keys: Vec<NodeKey> = (0..2).map(|_| NodeKey::generate().unwrap()).collect();
    let hub = hub_with(&keys.iter().collect::<Vec<_>>(), "3s").await;
    let mut ws = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
        ws.push(worker(&hub, &format!("w{i}"), k).await);
    }
    let src = hub.dir.join("in.mp4");
    make_video(&src, 8, "640x360");
    let id = upload(&hub, &src).await;
    // The board is the operator's to see.
    let anyone = reqwest::get(hub.url("/v1/jobs")).await.unwrap();
    assert_eq!(anyone.status(), 401);
    assert_eq!(
        hub.client()
            .get(hub.url("/v1/jobs"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let board = get_json(&client_with_key(&hub.admin_key()), &hub.url("/v1/jobs")).await;
    assert_eq!(board["videos"][0]["video"], id.as_str(), "{board}");
    assert_eq!(
        board["videos"][0]["chunks"].as_array().unwrap().len(),
        2,
        "{board}"
    );
    let (dying, survivor) = (&ws[0], &ws[1]);
    // It takes a chunk and its source, then says nothing more.
    let stale = lease(dying).await;
    let cut = dying.scratch.join("cut.mp4");
    dying.client.fetch_source(&stale, &cut).await.unwrap();
    let other = lease(survivor).await;
    assert_ne!(other.chunk, stale.chunk);
    let (out, spec) = encode(&survivor.client, &other, &survivor.scratch)
        .await
        .unwrap();
    let commitment = commitment_for(&other, &spec, &out).unwrap();
    upload_output(&survivor.client, &other, &spec, &out)
        .await
        .unwrap();
    assert!(survivor.client.commit(&commitment).await.unwrap().accepted);
    // The same result again, in a fresh envelope: not paid twice.
    let again = survivor
        .client
        .commit(&commitment)
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("409"), "{again}");
    // Once the silent lease runs out, its chunk goes to the survivor.
    let retry = lease(survivor).await;
    assert_eq!(
        (retry.chunk, retry.attempt),
        (stale.chunk, stale.attempt + 1)
    );
    // Back from the dead with an honest result: refused.
    let spec: ChunkJob = serde_json::from_value(stale.spec.clone()).unwrap();
    let out = dying.scratch.join("out");
    encode_chunk(&cut, &spec, &out, |_| {}).await.unwrap();
    let upload = upload_output(&dying.client, &stale, &spec, &out)
        .await
        .unwrap_err()
        .to_string();
    assert!(upload.contains("403"), "its capability is dead: {upload}");
    let late = dying
        .client
        .commit(&commitment_for(&stale, &spec, &out).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(late.contains("409") && late.contains("late"), "{late}");
    assert!(
        work_one(&survivor.client, &retry, &survivor.scratch)
            .await
            .unwrap()
            .accepted
    );
    let (video, _) = hub.wait_done(&id, Duration::from_secs(60)).await;
    assert_eq!(video["status"], "ready", "{video}");
    assert_every_frame_once(&hub, &id, 200);
    let c: &Value = &video["chunks"][stale.chunk as usize];
    assert_eq!(c["history"][0]["outcome"], "lease ran out", "{c}");
    assert_eq!(c["worker"], survivor.client.id().as_str(), "{c}");
    // Two 4 s chunks of one rung at 1000 µMESH a second, each paid once.
    let key = survivor.key.clone();
    chain_shows("the survivor's pay", async || {
        balance(&hub, &key).await == 8_000
    })
    .await;
    assert_eq!(balance(&hub, &dying.key).await, 0);
}

/// Four seconds of test pattern under heavy temporal noise (film grain's
/// worst case): no encode at a rung's bitrate keeps the noise.
fn grainy_source(hub: &Hub) -> PathBuf {
    let src = hub.dir.join("grain.mp4");
    ffmpeg_to(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25,noise=alls=40:allf=t",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "16M",
            "-c:a",
            "aac",
            "-shortest",
        ],
        &src,
    );
    src
}

/// Grain is not a cheat. On a source full of temporal noise no encode at
/// the rung's bitrate keeps what a two-thirds picture scaled back up does
/// (measured: 0.19–0.25 against 0.58), so the rescaled reference alone
/// slashed honest workers. Now the HUB's own encode is measured too: the
/// worker is paid when it is as good, and otherwise refused without a
/// slash, since even the HUB's encode cannot reach that reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_worker_on_a_grainy_source_is_never_slashed() {
    let key = NodeKey::generate().unwrap();
    let hub = hub_with(&[&key], "60s").await;
    let w = worker(&hub, "w", key).await;
    let src = grainy_source(&hub);
    let id = upload(&hub, &src).await;
    let (stake_before, balance_before) = (stake(&hub, &w.key).await, balance(&hub, &w.key).await);
    // The worker takes the chunk until it is accepted or the HUB takes it
    // over (after two refusals).
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let Some(job) = w.client.lease().await.unwrap() else {
            break;
        };
        let answer = work_one(&w.client, &job, &w.scratch).await.unwrap();
        assert!(!answer.slashed, "an honest worker slashed: {answer:?}");
        let accepted = answer.accepted;
        answers.push(answer);
        if accepted {
            break;
        }
    }
    for a in answers.iter().filter(|a| !a.accepted) {
        assert!(a.outcome.contains("refused without a slash"), "{a:?}");
    }
    let (video, _) = hub.wait_done(&id, Duration::from_secs(60)).await;
    assert_eq!(video["status"], "ready", "{video}");
    // It took the HUB's own encode to judge: the rescaled reference alone
    // refused every time, and nothing was found false.
    let metrics = reqwest::get(hub.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |verdict: &str| {
        let prefix = format!("meshcast_hub_fidelity_own_encodes_total{{verdict=\"{verdict}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("honest") + count("uncheckable") >= 1, "{metrics}");
    assert_eq!(count("false"), 0, "{metrics}");
    if answers.iter().any(|a| a.accepted) {
        let key = w.key.clone();
        chain_shows("the worker paid", async || {
            balance(&hub, &key).await > balance_before
        })
        .await;
    }
    assert_eq!(stake(&hub, &w.key).await, stake_before);
}

/// The same grainy source played by cheaters. Other video, far below the
/// HUB's own encode, is refused, slashed and unpaid. A half-size encode
/// scaled up is refused unpaid, or passes only by matching the HUB's own
/// encode (on noise a smaller picture may be as close to the source as a
/// full one: viewers then get what was paid for; the bound in
/// ARCHITECTURE.md's threat model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheaters_on_a_grainy_source_are_refused_or_match_an_honest_encode() {
    let keys: Vec<NodeKey> = (0..2).map(|_| NodeKey::generate().unwrap()).collect();
    let hub = hub_with(&keys.iter().collect::<Vec<_>>(), "60s").await;
    let mut ws = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
        ws.push(worker(&hub, &format!("w{i}"), k).await);
    }
    let src = grainy_source(&hub);
    upload(&hub, &src).await;
    let honest_judgments = async || {
        let metrics = reqwest::get(hub.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = "meshcast_hub_fidelity_own_encodes_total{verdict=\"honest\"} ";
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for (w, how) in ws.iter().zip([Cheat::OtherVideo, Cheat::HalfSizeScaledUp]) {
        let (balance_before, honest_before) =
            (balance(&hub, &w.key).await, honest_judgments().await);
        let job = lease(w).await;
        let answer = cheat(w, &job, how).await;
        match how {
            Cheat::OtherVideo => {
                assert!(!answer.accepted && answer.slashed, "{answer:?}");
                assert_eq!(balance(&hub, &w.key).await, balance_before, "{answer:?}");
            }
            _ if answer.accepted => {
                assert!(
                    honest_judgments().await > honest_before,
                    "passed without matching the HUB's encode: {answer:?}"
                );
            }
            _ => assert_eq!(balance(&hub, &w.key).await, balance_before, "{answer:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_workers_several_uploads_are_transcoded_at_once() {
    let key = NodeKey::generate().unwrap();
    let hub = hub_with(&[&key], "60s").await;
    let w = worker(&hub, "w", key).await;
    let (a, b) = (hub.dir.join("a.mp4"), hub.dir.join("b.mp4"));
    make_video(&a, 4, "320x240");
    make_video(&b, 4, "320x240");
    let ids = [upload(&hub, &a).await, upload(&hub, &b).await];
    // Both on the board before any chunk is done: the queue did not wait
    // for the first video's workers.
    let board = get_json(&client_with_key(&hub.admin_key()), &hub.url("/v1/jobs")).await;
    let on_board: Vec<&str> = board["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["video"].as_str().unwrap())
        .collect();
    assert_eq!(on_board, [ids[0].as_str(), ids[1].as_str()], "{board}");
    for _ in 0..2 {
        let job = lease(&w).await;
        assert!(
            work_one(&w.client, &job, &w.scratch)
                .await
                .unwrap()
                .accepted
        );
    }
    for id in &ids {
        let (video, _) = hub.wait_done(id, Duration::from_secs(60)).await;
        assert_eq!(video["status"], "ready", "{video}");
    }
}

/// A stopping hub answers a worker's long poll at once (no work) instead
/// of holding its shutdown for the rest of the poll, and exits 0 well
/// inside its shutdown grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_long_polls_instead_of_waiting_them_out() {
    let key = NodeKey::generate().unwrap();
    let mut hub = Hub::config("http://127.0.0.1:9");
    hub.hub_setting("shutdown_grace = \"60s\"");
    hub.bond_at_genesis(&[hex::encode(key.public().to_bytes())]);
    hub.launch().await;
    let w = worker(&hub, "w", key).await;
    let polling = tokio::spawn(async move { w.client.lease().await });
    let metrics = hub.url("/metrics");
    eventually("the lease is waiting", Duration::from_secs(20), || async {
        let text = reqwest::get(&metrics)
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        match text
            .lines()
            .any(|l| l == "meshcast_hub_long_polls{kind=\"lease\"} 1")
        {
            true => Ok(()),
            false => Err("no lease waiting".to_string()),
        }
    })
    .await;
    let stopped = Instant::now();
    hub.terminate();
    let answer = polling.await.unwrap();
    assert!(
        matches!(answer, Ok(None)),
        "no work, not an error: {answer:?}"
    );
    // The poll lasts 20 s and the grace 60 s: an exit inside 15 s means
    // neither was waited out.
    let status = hub.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
    assert!(stopped.elapsed() < Duration::from_secs(15));
}
