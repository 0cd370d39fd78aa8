//! Test harness for the hub: the real `meshcast hub` binary, media made with
//! ffmpeg, and helpers to watch a video's status.

#![allow(dead_code)]

use super::free_port;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Hub {
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The test account's API key, made at the first launch.
    pub api_key: Option<String>,
    child: Option<Child>,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Hub {
    /// `edge_base` is the edge URL the hub hands out for playback.
    pub fn config(edge_base: &str) -> Hub {
        let dir = std::env::temp_dir().join(format!(
            "meshcast-hub-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let config = dir.join("hub.toml");
        let text = format!(
            "[hub]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nedges = [\"{edge_base}\"]\nassets_dir = \"{}\"\n\
             [transcode]\nsegment_duration = \"2s\"\npreset = \"ultrafast\"\n\
             [ledger]\ndelivery_epoch = \"2s\"\n",
            dir.join("data").display(),
            repo_root().join("node_modules").display()
        );
        std::fs::write(&config, text).unwrap();
        Hub {
            port,
            dir,
            config,
            api_key: None,
            child: None,
        }
    }

    /// Appends `text` to the `[hub]` section (call before the first launch).
    pub fn hub_setting(&self, text: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let config = config.replacen("[hub]\n", &format!("[hub]\n{text}\n"), 1);
        std::fs::write(&self.config, config).unwrap();
    }

    /// Starts the hub's own chain (2 s delivery epochs) with these node
    /// keys (hex) holding an edge's minimum stake bonded: call before the
    /// first `launch`.
    pub fn bond_at_genesis(&self, keys: &[String]) {
        let list: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen(
            "[ledger]\n",
            &format!("[ledger]\nbonded_nodes = [{}]\n", list.join(", ")),
            1,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn launch(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_meshcast"))
            .args(["hub", "--config"])
            .arg(&self.config)
            .env("MESHCAST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start meshcast hub");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if reqwest::get(self.url("/healthz"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                if self.api_key.is_none() {
                    self.api_key = Some(self.create_account("test").await);
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("hub did not come up");
    }

    /// The operator's admin key (made by the hub on first start).
    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/admin.key"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// A new account; returns its API key.
    pub async fn create_account(&self, name: &str) -> String {
        let r = send_json(
            reqwest::Client::new()
                .post(self.url("/v1/accounts"))
                .bearer_auth(self.admin_key())
                .json(&serde_json::json!({ "name": name })),
        )
        .await;
        r["api_key"].as_str().expect("an API key").to_string()
    }

    /// An HTTP client that sends the test account's API key.
    pub fn client(&self) -> reqwest::Client {
        client_with_key(self.api_key.as_deref().expect("launched"))
    }

    /// Sends SIGTERM, as a service manager stopping the hub would.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Waits for the hub process to exit on its own; its exit status.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let waited = tokio::time::timeout(
            limit,
            tokio::task::spawn_blocking(move || child.wait().map(|s| (s, child))),
        )
        .await;
        match waited {
            Ok(Ok(Ok((status, _)))) => status,
            _ => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("hub still running after {limit:?}")
            }
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn video(&self, id: &str) -> Value {
        self.client()
            .get(self.url(&format!("/v1/videos/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Uploads `src` with the test account's key; returns its id.
    pub async fn upload(&self, src: &Path) -> String {
        let upload = meshcast_hub::tus_client::upload_file(
            &self.client(),
            &self.url("/v1/videos"),
            src,
            1 << 20,
            |_, _| {},
        )
        .await
        .unwrap();
        meshcast_hub::tus_client::video_id(&upload).to_string()
    }

    /// Uploads `src` with the test account's key and waits until it is
    /// ready; returns its id.
    pub async fn publish(&self, src: &Path) -> String {
        let id = self.upload(src).await;
        let (video, _) = self.wait_done(&id, Duration::from_secs(120)).await;
        assert_eq!(video["status"], "ready", "{video}");
        id
    }

    /// Polls until the video is ready or failed; returns its last status and
    /// every status seen on the way.
    pub async fn wait_done(&self, id: &str, limit: Duration) -> (Value, Vec<String>) {
        let deadline = Instant::now() + limit;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let v = self.video(id).await;
            let status = v["status"].as_str().unwrap_or("?").to_string();
            if seen.last() != Some(&status) {
                seen.push(status.clone());
            }
            if status == "ready" || status == "failed" {
                return (v, seen);
            }
            assert!(
                Instant::now() < deadline,
                "video {id} still {status} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET `url` with `client`, as JSON.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    send_json(client.get(url)).await
}

/// Sends a request and reads its answer as JSON.
pub async fn send_json(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// An HTTP client that sends `key` as its bearer token.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value: reqwest::header::HeaderValue = format!("Bearer {key}").parse().unwrap();
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

pub fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .status()
        .expect("ffmpeg installed")
        .success();
    assert!(ok, "ffmpeg {args:?}");
}

/// A test-pattern video with a tone.
pub fn make_video(path: &Path, secs: u32, size: &str) {
    let t = secs.to_string();
    let src = format!("testsrc2=size={size}:rate=25");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &src,
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &t,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        path.to_str().unwrap(),
    ]);
}

/// Every video packet's presentation time in `input` (a file or URL),
/// sorted.
pub fn presentation_times(input: &str) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["packet=pts_time", "-of", "csv=p=0", input])
        .output()
        .unwrap();
    let mut t: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_end_matches(',').parse().ok())
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// Frames of the first video stream, as decoded by ffprobe from `input`.
pub fn count_frames(input: &str) -> u64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(input)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "ffprobe could not count frames of {input}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Plays a player page in headless Chromium; returns the script's JSON.
pub fn play_in_chromium(url: &str) -> Value {
    play_in_chromium_with(url, "")
}

/// The same, with extra Chromium flags.
pub fn play_in_chromium_with(url: &str, chromium_args: &str) -> Value {
    play_in_chromium_env(url, &[("CHROMIUM_ARGS", chromium_args)])
}

/// The same, with the driver's environment (PLAYBACK_RATE, CHECK_TYPES,
/// PLAYS; see tests/browser/play.mjs).
pub fn play_in_chromium_env(url: &str, env: &[(&str, &str)]) -> Value {
    let out = Command::new("node")
        .envs(env.iter().copied())
        .arg(repo_root().join("tests/browser/play.mjs"))
        .arg(url)
        .arg("60")
        .current_dir(repo_root())
        .output()
        .expect("node installed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_else(|_| {
        panic!(
            "browser script said: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// An edge's node key (made on first use), as hex.
pub fn edge_key(edge: &super::Edge) -> String {
    use meshcast_control::identity::NodeKey;
    let key = edge.dir.join("node.key");
    if !key.exists() {
        NodeKey::generate().unwrap().save(&key).unwrap();
    }
    hex::encode(NodeKey::load(&key).unwrap().public().to_bytes())
}

/// The `[node]` section and token rule an edge of `hub` gets: a grace
/// longer than the plugin's 2 s ack interval. No epoch length: the edge
/// takes the network's (2 s on the test hub's chain) from the hub.
pub fn node_extra(edge: &super::Edge, hub: &Hub) -> String {
    edge_key(edge);
    let key = edge.dir.join("node.key");
    format!(
        "[site.tokens]\npaths = [\"/v/\"]\n[node]\nkey = \"{}\"\nhub = \"{}\"\nadvertise = \"{}\"\nstate_dir = \"{}\"\nack_grace = \"3s\"\nheartbeat = \"1s\"\n",
        key.display(),
        hub.url(""),
        edge.url(""),
        edge.dir.join("state").display()
    )
}

/// `meshcast play ARGS` (with `--json` among them); its report.
pub fn meshcast_play(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_meshcast"))
        .arg("play")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meshcast play: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
