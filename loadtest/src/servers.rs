//! Starts the two servers under test with equivalent settings.

use crate::procstat;
use crate::Common;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    pub name: &'static str,
    pub base: String,
    /// Where the server says how many client connections it has open
    /// (the edge's admin /metrics, nginx's stub_status).
    pub status_url: String,
    child: Child,
}

impl Server {
    /// The server's processes (nginx: master and workers).
    pub fn pids(&self) -> Vec<u32> {
        procstat::with_children(self.child.id())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first (nginx then stops its workers), then make sure.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port for a server the harness starts: below the ephemeral range,
/// where the load's own outgoing connections cannot take it first.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(meshcast_ports::free_port()?)
}

async fn wait_up(url: &str, child: &mut Child, what: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if reqwest::get(url).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited at start-up: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not start listening")
}

pub fn meshcast_binary(common: &Common) -> anyhow::Result<PathBuf> {
    if let Some(p) = &common.meshcast {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no exe dir")?;
    for candidate in [dir.join("meshcast"), dir.join("../meshcast")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("cannot find the meshcast binary beside {}; build it (cargo build --release) or pass --meshcast", exe.display())
}

pub async fn start_edge(common: &Common, origin: SocketAddr, dir: &Path) -> anyhow::Result<Server> {
    start_edge_with(common, origin, dir, "").await
}

/// An edge whose one site gets `site_extra` appended (sub-tables of the
/// site, then any other top-level tables).
pub async fn start_edge_with(
    common: &Common,
    origin: SocketAddr,
    dir: &Path,
    site_extra: &str,
) -> anyhow::Result<Server> {
    start_edge_custom(common, origin, dir, "", site_extra).await
}

/// An edge with `edge_extra` in `[edge]` and `site_extra` after its site.
pub async fn start_edge_custom(
    common: &Common,
    origin: SocketAddr,
    dir: &Path,
    edge_extra: &str,
    site_extra: &str,
) -> anyhow::Result<Server> {
    let (port, admin) = (free_port()?, free_port()?);
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "[edge]\nlisten = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin}\"\nthreads = {}\n{edge_extra}\n\
             [cache]\ndir = \"{}\"\ndisk_size = \"2GiB\"\nmemory_size = \"{}\"\nlock_timeout = \"30s\"\n\
             [log]\naccess = \"off\"\nlevel = \"warn\"\n\
             [[site]]\nhosts = [\"*\"]\norigin = \"http://{origin}\"\nstale_if_error = \"0s\"\n{site_extra}",
            common.threads,
            dir.join("edge-cache").display(),
            common.memory_size,
        ),
    )?;
    spawn_edge(
        &meshcast_binary(common)?,
        &config,
        admin,
        format!("http://127.0.0.1:{port}"),
        &dir.join("edge.log"),
    )
    .await
}

/// Starts `meshcast edge --config CONFIG` and waits for its admin health check.
async fn spawn_edge(
    bin: &Path,
    config: &Path,
    admin: u16,
    base: String,
    log: &Path,
) -> anyhow::Result<Server> {
    let mut child = Command::new(bin)
        .args(["edge", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting meshcast edge")?;
    wait_up(
        &format!("http://127.0.0.1:{admin}/healthz"),
        &mut child,
        "meshcast edge",
    )
    .await?;
    Ok(Server {
        name: "meshcast",
        base,
        status_url: format!("http://127.0.0.1:{admin}/metrics"),
        child,
    })
}

/// An edge with TLS (HTTP/2 by ALPN) and QUIC on one port, using a
/// certificate made by `meshcast keys cert`; returns (server, port, cert).
pub async fn start_edge_tls_quic(
    common: &Common,
    origin: SocketAddr,
    dir: &Path,
) -> anyhow::Result<(Server, u16, PathBuf)> {
    let bin = meshcast_binary(common)?;
    let status = Command::new(&bin)
        .args([
            "keys",
            "cert",
            "--host",
            "localhost",
            "--host",
            "127.0.0.1",
            "--out",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "meshcast keys cert failed");
    let (port, admin) = (free_port()?, free_port()?);
    let config = dir.join("edge-tls.toml");
    std::fs::write(
        &config,
        format!(
            "[edge]\nlisten_tls = [\"127.0.0.1:{port}\"]\nlisten_quic = [\"127.0.0.1:{port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\nadmin = \"127.0.0.1:{admin}\"\nthreads = {}\n\
             [cache]\ndir = \"{}\"\ndisk_size = \"2GiB\"\nmemory_size = \"512MiB\"\n\
             [log]\naccess = \"off\"\nlevel = \"warn\"\n\
             [[site]]\nhosts = [\"*\"]\norigin = \"http://{origin}\"\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display(),
            common.threads,
            dir.join("edge-tls-cache").display()
        ),
    )?;
    let server = spawn_edge(
        &bin,
        &config,
        admin,
        format!("https://127.0.0.1:{port}"),
        &dir.join("edge-tls.log"),
    )
    .await?;
    Ok((server, port, dir.join("cert.pem")))
}

pub async fn start_nginx(
    common: &Common,
    origin: SocketAddr,
    dir: &Path,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    let cache = dir.join("nginx-cache");
    std::fs::create_dir_all(&cache)?;
    std::fs::write(
        &conf,
        format!(
            "worker_processes {threads};\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\n\
             worker_rlimit_nofile 65536;\nevents {{ worker_connections 30000; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 100000;\n\
               client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
               proxy_cache_path {cache} levels=1:2 keys_zone=edge:64m max_size=2g inactive=1d use_temp_path=off;\n\
               upstream origin {{ server {origin}; keepalive 64; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location = /nginx_status {{ stub_status; }}\n    location / {{\n      proxy_pass http://origin;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
                 proxy_cache edge;\n      proxy_cache_lock on;\n      proxy_cache_lock_timeout 30s;\n      proxy_cache_valid 200 1d;\n      add_header X-Cache $upstream_cache_status;\n    }}\n  }}\n}}\n",
            threads = common.threads,
            dir = dir.display(),
            cache = cache.display(),
        ),
    )?;
    let mut child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nginx.stderr"))?)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot start nginx ({e}); install it with `apt-get install nginx`")
        })?;
    wait_up(&format!("http://127.0.0.1:{port}/"), &mut child, "nginx").await?;
    Ok(Server {
        name: "nginx",
        base: format!("http://127.0.0.1:{port}"),
        status_url: format!("http://127.0.0.1:{port}/nginx_status"),
        child,
    })
}
