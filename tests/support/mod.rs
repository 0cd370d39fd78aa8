//! Test harness: a real origin that counts its requests, and the real
//! `meshcast edge` binary started on free loopback ports.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Deterministic body of `len` bytes for `name`.
pub fn body_for(name: &str, len: usize) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

#[derive(Default)]
pub struct OriginState {
    pub hits: HashMap<String, usize>,
    pub conditional: HashMap<String, usize>,
    /// `X-Forwarded-For` of each path's latest request.
    pub forwarded_for: HashMap<String, String>,
    /// Requests that carried a `Range` (an edge filling its cache must
    /// fetch whole objects).
    pub ranged: HashMap<String, usize>,
    /// `X-Request-Id` of each path's latest request.
    pub request_id: HashMap<String, String>,
}

/// An HTTP/1.1 origin. Paths choose behaviour:
/// - `/seg/NAME.m4s?len=N`: N bytes (default 1000), no freshness headers
/// - `/slow/NAME.m4s?len=N`: sends half, waits for `release`, sends the rest
/// - `/etag/NAME.m3u8`: max-age=1 with an ETag and `X-Version: 1`; answers
///   If-None-Match with a 304 carrying `X-Version: 2` and `X-Revalidated`
/// - `/nostore/NAME`: Cache-Control: no-store
/// - `/sie/NAME.m4s`: max-age=1, stale-if-error=60
/// - `/pl/NAME.m3u8`: a playlist without freshness headers
/// - `/swr/NAME.m4s`: max-age=1, stale-while-revalidate=30
/// - `/vary/NAME.m4s`: `Vary: Accept-Language`, body names the language
/// - `/v/…`: made-up bytes under a HUB's media paths (a dishonest origin)
/// - `/post/NAME`: 201 with `Location: /seg/NAME` (and a Content-Location
///   on another host)
/// - `/hop/NAME`: max-age=60 with hop-by-hop headers (`Connection: x-hop`,
///   `X-Hop`, `Keep-Alive`) that must not be stored or forwarded
/// - `/cdncc/NAME`: `Cache-Control: no-store`, `CDN-Cache-Control: max-age=60`
/// - `/mcc/NAME`: max-age=60 for everyone, `Meshcast-Cache-Control: no-store`
pub struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<OriginState>>,
    pub release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Origin {
    pub async fn start() -> Origin {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Origin {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(OriginState::default()));
        let release = Arc::new(Notify::new());
        let (s, r) = (state.clone(), release.clone());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let c = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (s, r) = (s.clone(), r.clone());
                let conn = tokio::spawn(async move {
                    let _ = serve(sock, s, r).await;
                });
                c.lock().unwrap().push(conn.abort_handle());
            }
        });
        Origin {
            addr,
            state,
            release,
            task,
            conns,
        }
    }

    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn conditional(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .conditional
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Stops the origin: open connections are cut, new ones refused.
    pub fn stop(&self) {
        self.task.abort();
        self.conns.lock().unwrap().iter().for_each(|c| c.abort());
    }
}

async fn serve(
    mut sock: TcpStream,
    state: Arc<Mutex<OriginState>>,
    release: Arc<Notify>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let path = path.to_string();
        let len: usize = query
            .strip_prefix("len=")
            .and_then(|l| l.parse().ok())
            .unwrap_or(1000);
        let inm = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("if-none-match:")
                .map(|v| v.trim().to_string())
        });
        let xff = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-forwarded-for:")
                .map(|v| v.trim().to_string())
        });
        if let Some(xff) = xff {
            state
                .lock()
                .unwrap()
                .forwarded_for
                .insert(path.clone(), xff);
        }
        if let Some(id) = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-request-id:")
                .map(|v| v.trim().to_string())
        }) {
            state.lock().unwrap().request_id.insert(path.clone(), id);
        }
        if head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("range:"))
        {
            *state
                .lock()
                .unwrap()
                .ranged
                .entry(path.clone())
                .or_default() += 1;
        }
        *state.lock().unwrap().hits.entry(path.clone()).or_default() += 1;
        let name = path.rsplit('/').next().unwrap_or("").to_string();
        let body = body_for(&name, len);
        let etag = format!("\"{}\"", name.len());
        let (status, extra, body): (&str, String, Vec<u8>) = if path.starts_with("/etag/") {
            if inm.as_deref() == Some(etag.as_str()) {
                *state
                    .lock()
                    .unwrap()
                    .conditional
                    .entry(path.clone())
                    .or_default() += 1;
                (
                    "304 Not Modified",
                    format!("ETag: {etag}\r\nCache-Control: max-age=1\r\nX-Version: 2\r\nX-Revalidated: yes\r\n"),
                    Vec::new(),
                )
            } else {
                (
                    "200 OK",
                    format!("ETag: {etag}\r\nCache-Control: max-age=1\r\nX-Version: 1\r\n"),
                    body,
                )
            }
        } else if path.starts_with("/swr/") {
            (
                "200 OK",
                format!("ETag: {etag}\r\nCache-Control: max-age=1, stale-while-revalidate=30\r\n"),
                body,
            )
        } else if path.starts_with("/vary/") {
            let lang = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("accept-language:")
                        .map(|v| v.trim().to_string())
                })
                .unwrap_or_default();
            (
                "200 OK",
                "Vary: Accept-Language\r\n".into(),
                format!("lang={lang}").into_bytes(),
            )
        } else if path.starts_with("/nostore/") {
            ("200 OK", "Cache-Control: no-store\r\n".into(), body)
        } else if path.starts_with("/sie/") {
            (
                "200 OK",
                "Cache-Control: max-age=1, stale-if-error=60\r\n".into(),
                body,
            )
        } else if path.starts_with("/post/") {
            (
                "201 Created",
                format!("Location: /seg/{name}\r\nContent-Location: http://other.example/seg/{name}\r\n"),
                Vec::new(),
            )
        } else if path.starts_with("/hop/") {
            (
                "200 OK",
                "Cache-Control: max-age=60\r\nConnection: x-hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-End: kept\r\n".into(),
                body,
            )
        } else if path.starts_with("/cdncc/") {
            (
                "200 OK",
                "Cache-Control: no-store\r\nCDN-Cache-Control: max-age=60\r\n".into(),
                body,
            )
        } else if path.starts_with("/mcc/") {
            (
                "200 OK",
                "Cache-Control: max-age=60\r\nCDN-Cache-Control: max-age=60\r\nMeshcast-Cache-Control: no-store\r\n".into(),
                body,
            )
        } else if path.starts_with("/seg/")
            || path.starts_with("/pl/")
            || path.starts_with("/slow/")
            || path.starts_with("/v/")
        {
            ("200 OK", String::new(), body)
        } else {
            ("404 Not Found", String::new(), b"no such object\n".to_vec())
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).await?;
        if path.starts_with("/slow/") {
            let half = body.len() / 2;
            sock.write_all(&body[..half]).await?;
            sock.flush().await?;
            release.notified().await;
            sock.write_all(&body[half..]).await?;
        } else if !status.starts_with("304") {
            sock.write_all(&body).await?;
        }
    }
}

/// A port for a server a test starts (see `meshcast_ports`).
pub fn free_port() -> u16 {
    meshcast_ports::free_port().expect("a free loopback port")
}

pub struct Edge {
    pub port: u16,
    pub admin: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const URL_SECRET: &str = "test-url-secret-0123456789";

impl Edge {
    /// A fresh directory holding `edge.toml` (from `site_extra` appended to
    /// the one site) and the cache.
    pub fn config(origin: SocketAddr, site_extra: &str) -> Edge {
        let dir = std::env::temp_dir().join(format!(
            "meshcast-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (port, admin) = (free_port(), free_port());
        let edge = Edge {
            port,
            admin,
            config: dir.join("edge.toml"),
            dir,
            child: None,
        };
        edge.write_config(origin, site_extra);
        edge
    }

    pub fn write_config(&self, origin: SocketAddr, site_extra: &str) {
        let text = format!(
            "[edge]\nlisten = [\"127.0.0.1:{}\"]\nadmin = \"127.0.0.1:{}\"\nadmin_key = \"{ADMIN_KEY}\"\nthreads = 2\norigin_connect_timeout = \"1s\"\norigin_read_timeout = \"5s\"\n\
             [cache]\ndir = \"{}\"\ndisk_size = \"256MiB\"\nmemory_size = \"64MiB\"\nlock_timeout = \"10s\"\n\
             [log]\naccess = \"{}\"\n\
             [[site]]\nhosts = [\"*\"]\norigin = \"http://{origin}\"\n{site_extra}\n",
            self.port,
            self.admin,
            self.dir.join("cache").display(),
            self.dir.join("access.log").display(),
        );
        std::fs::File::create(&self.config)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    pub async fn start(mut self) -> Edge {
        self.launch().await;
        self
    }

    pub async fn launch(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_meshcast"))
            .args(["edge", "--config"])
            .arg(&self.config)
            .env("MESHCAST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start meshcast edge");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{}/healthz", self.admin)).await {
                if r.status() == 200 && TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("edge did not come up");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Value of the first metric line starting with `prefix`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the disk tier holds at least `n` objects.
    pub async fn wait_disk_objects(&self, n: f64) {
        for _ in 0..200 {
            if self.metric("meshcast_cache_objects{tier=\"disk\"}").await >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("disk tier never reached {n} objects");
    }

    pub fn body_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(self.dir.join("cache/objects"))
            .unwrap()
            .flatten()
        {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                if f.path().extension().is_some_and(|e| e == "body") {
                    out.push(f.path());
                }
            }
        }
        out
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Reply {
    pub status: u16,
    pub cache: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let cache = headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.bytes().await.unwrap().to_vec();
    Reply {
        status,
        cache,
        headers,
        body,
    }
}

pub mod h3;
pub mod hub;

/// Runs `cmd` to the end and asserts it succeeded (showing its stderr if
/// not); returns its output.
pub fn succeed(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Makes a certificate with `meshcast keys cert` and returns (cert, key, spki).
pub fn make_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let out = succeed(
        std::process::Command::new(env!("CARGO_BIN_EXE_meshcast"))
            .args([
                "keys",
                "cert",
                "--host",
                "localhost",
                "--host",
                "127.0.0.1",
                "--out",
            ])
            .arg(dir),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let spki = text.rsplit(": ").next().unwrap().trim().to_string();
    assert_eq!(spki.len(), 44, "base64 of a SHA-256: {text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "key.pem must be private");
    (dir.join("cert.pem"), dir.join("key.pem"), spki)
}

/// Sends `GET {target}` as written (no client-side normalisation, unlike
/// reqwest's URL parser) and returns the status line's code and the body.
pub async fn raw_get(port: u16, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// nginx serving `root` as static files (it normalises paths, as common
/// origins do); one process (no workers left behind), killed on drop.
pub struct Nginx {
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl Nginx {
    pub async fn serve(root: &std::path::Path, dir: &std::path::Path) -> Nginx {
        let port = free_port();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
                 events {{ worker_connections 64; }}\nhttp {{ access_log off;\n  client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n  fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n  server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
                d = dir.display(),
                root = root.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx installed (apt-get install nginx)");
        let nginx = Nginx {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            child,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(nginx.addr).await.is_ok() {
                return nginx;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("nginx did not start (its Drop stops it)");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process stopped with SIGTERM (which lets `meshcast up` stop its
/// nodes) when dropped still running: a failed assertion would otherwise
/// leave it running, loading the machine for the tests after it.
pub struct Terminated(pub std::process::Child);

impl Terminated {
    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .arg(self.0.id().to_string())
            .status();
        self.0.wait().expect("wait for the child")
    }
}

impl Drop for Terminated {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.terminate();
        }
    }
}

/// Polls `check` until it gives `Some` (every 50 ms, the interval only
/// paces the polling: each pass asks the condition itself), failing with
/// `what` and the last `Err` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!("{what}: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
