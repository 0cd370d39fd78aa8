//! `connections`: what idle and slow clients cost, meshcast beside nginx.
//!
//! 1. Memory per idle connection: N plain TCP connects that send nothing,
//!    spread over many loopback addresses; resident memory of the server's
//!    processes (once settled) before, with each quarter of them open (once
//!    the server reports them open), and after they close; the cost of a
//!    connection is the least-squares slope over the quarters.
//! 2. A flood on the edge: `idle` silent connections and `slow` slowloris
//!    ones (a header byte a second), each reconnecting whenever the edge
//!    closes it, while normal clients fetch a cached object at a fixed rate
//!    on connections opened before the clock starts (as wrk does) and new
//!    viewers each open a connection of their own; their p99 and errors
//!    against a quiet run, and the edge's memory.

use crate::openloop::{self, OpenLoop};
use crate::origin::Origin;
use crate::procstat;
use crate::servers::{self, Server};
use crate::Common;
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Options {
    pub common: Common,
    /// Idle connections in the memory test.
    pub idle: usize,
    /// Silent and slowloris connections in the flood.
    pub flood_idle: usize,
    pub flood_slow: usize,
    /// Seconds of normal load in each of the quiet and flood runs.
    pub secs: f64,
    /// Normal clients' request rate.
    pub rps: f64,
    /// Niceness the attacker processes run at.
    pub attacker_nice: i32,
}

/// Loopback source addresses the attackers spread over (each stays far
/// below the edge's per-address limit).
const SOURCES: usize = 200;

fn source(i: usize) -> Ipv4Addr {
    let n = (i % SOURCES) as u8;
    Ipv4Addr::new(127, 0, 1, n + 1)
}

/// Lets this process (and the servers it starts) hold tens of thousands of
/// sockets: the soft limit to the hard one, and both higher when root.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write only the struct given.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: 200_000,
            rlim_max: 200_000,
        };
        if lim.rlim_max < wanted.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// Client connections the server says it has open.
async fn open_connections(server: &Server) -> anyhow::Result<u64> {
    let text = reqwest::get(&server.status_url).await?.text().await?;
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    // nginx counts the status request itself.
    value("meshcast_client_connections ")
        .or_else(|| value("Active connections:").map(|n| n.saturating_sub(1)))
        .ok_or_else(|| anyhow::anyhow!("{} reports no connection count", server.name))
}

/// Waits until the server reports `want` open connections (at most 30 s).
async fn wait_open(server: &Server, want: impl Fn(u64) -> bool) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = open_connections(server).await?;
        if want(n) || Instant::now() > deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(i: usize, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source(i).into(), 0))?;
    socket.connect(to).await
}

/// Resident memory of `pids` once it stops moving (two reads 250 ms apart
/// within 64 KiB, at most 5 s): a server still settling after its start
/// would otherwise be charged to the connections.
async fn settled_rss(pids: &[u32]) -> u64 {
    let mut last = procstat::rss(pids);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = procstat::rss(pids);
        if now.abs_diff(last) < 64 << 10 {
            return now;
        }
        last = now;
    }
    last
}

/// Memory of `server` with `n` idle connections: resident bytes before,
/// with each quarter of them open (n/4, n/2, 3n/4, n), and after they
/// close. What a connection costs is the least-squares slope over the four
/// quarters, so that memory the server touches once (its first
/// connections, code run for the first time) is not charged per
/// connection, and the allocator's steps (it takes memory from the system
/// in large pieces) are averaged out.
async fn idle_memory(server: &Server, n: usize) -> anyhow::Result<IdleMemory> {
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse()?;
    let pids = server.pids();
    let before = settled_rss(&pids).await;
    let mut held = Vec::with_capacity(n);
    let mut levels = Vec::new();
    for quarter in 1..=4 {
        while held.len() < n * quarter / 4 {
            held.push(connect(held.len(), addr).await?);
        }
        let want = held.len() as u64;
        let seen = wait_open(server, |open| open >= want).await?;
        anyhow::ensure!(
            seen >= want,
            "{} shows {seen} of {want} connections open",
            server.name
        );
        levels.push((want as f64, settled_rss(&pids).await as f64));
    }
    drop(held);
    wait_open(server, |open| open == 0).await?;
    let after = settled_rss(&pids).await;
    Ok(IdleMemory {
        before,
        open: levels[3].1 as u64,
        after,
        bytes_per_connection: slope(&levels),
    })
}

struct IdleMemory {
    before: u64,
    open: u64,
    after: u64,
    bytes_per_connection: f64,
}

/// The least-squares slope of `points` (x, y).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    sxy / sxx.max(f64::MIN_POSITIVE)
}

/// One attacker: connects, then says nothing (`slow: false`) or trickles
/// a header that never ends, a byte a second; reconnects whenever the
/// edge hangs up, until `stop`.
async fn attacker(
    i: usize,
    to: SocketAddr,
    slow: bool,
    stop: Arc<AtomicBool>,
    closes: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = connect(i, to).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if slow {
            let _ = s
                .write_all(b"GET /obj/1k.bin HTTP/1.1\r\nHost: x\r\nX-a: ")
                .await;
        }
        let mut buf = [0u8; 256];
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let tick = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
            match tick {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {} // a 408 or 503 on its way out
                Err(_) if slow => {
                    if s.write_all(b"a").await.is_err() {
                        break;
                    }
                }
                Err(_) => {}
            }
        }
        closes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sockets one attacker process holds at most.
const PER_PROCESS: usize = 12_000;

/// The hidden `flood-client` subcommand: `idle` silent and `slow`
/// slowloris attackers (source addresses from index `first`) for `secs`
/// or until SIGTERM; prints how many times the edge closed one.
pub async fn flood_client(
    to: SocketAddr,
    idle: usize,
    slow: usize,
    first: usize,
    secs: f64,
    nice: i32,
) {
    raise_fd_limit();
    // SAFETY: setpriority on this process only. Failing leaves it at its
    // niceness, which the report's setting would then overstate.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        eprintln!("flood-client: cannot set niceness {nice}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let closes = Arc::new(AtomicU64::new(0));
    for i in 0..idle + slow {
        let is_slow = i >= idle;
        tokio::spawn(attacker(
            first + i,
            to,
            is_slow,
            stop.clone(),
            closes.clone(),
        ));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
        _ = term.recv() => {}
    }
    stop.store(true, Ordering::Relaxed);
    println!("{}", closes.load(Ordering::Relaxed));
}

/// The most client connections this edge will hold (its open-files limit
/// less a tenth), to know when a flood has filled it.
fn cap(edge: &Server) -> u64 {
    let limit = edge
        .pids()
        .first()
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/limits")).ok())
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .unwrap_or(u64::MAX);
    limit.saturating_sub((limit / 10).max(256))
}

/// The door's refusals so far, by reason.
async fn refused_connections(edge: &Server) -> anyhow::Result<serde_json::Value> {
    let text = reqwest::get(&edge.status_url).await?.text().await?;
    let mut out = serde_json::Map::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("meshcast_connections_refused_total{reason=\"") {
            if let Some((reason, n)) = rest.split_once("\"} ") {
                out.insert(
                    reason.to_string(),
                    json!(n.trim().parse::<u64>().unwrap_or(0)),
                );
            }
        }
    }
    Ok(serde_json::Value::Object(out))
}

/// New viewers: one every `every` for `secs`, each on a connection of its
/// own (connect, request, whole response), timed from when it was due.
async fn new_viewers(url: &str, secs: f64, every: Duration) -> serde_json::Value {
    let n = (secs / every.as_secs_f64()) as usize;
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = url.to_string();
            tokio::spawn(async move {
                let due = start + every * i as u32;
                tokio::time::sleep_until(due.into()).await;
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client");
                let ok = match client.get(&url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                ok.then(|| due.elapsed().as_micros() as u64)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Some(us)) => lat.push(us),
            _ => errors += 1,
        }
    }
    lat.sort_unstable();
    json!({"viewers": n, "errors": errors,
           "p50_ms": openloop::percentile(&lat, 50.0) as f64 / 1000.0,
           "p99_ms": openloop::percentile(&lat, 99.0) as f64 / 1000.0})
}

/// A new viewer every this often, beside the steady clients.
const NEW_VIEWER_EVERY: Duration = Duration::from_millis(50);

fn load_json(o: &OpenLoop) -> serde_json::Value {
    json!({"offered_rps": o.offered_rps, "achieved_rps": o.achieved_rps,
           "p50_ms": o.p50_us as f64 / 1000.0, "p99_ms": o.p99_us as f64 / 1000.0, "errors": o.errors})
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    raise_fd_limit();
    let dir = std::env::temp_dir().join(format!("meshcast-loadtest-conn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let origin = Origin::start(4.0, 10).await?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let per_conn = |m: &IdleMemory| m.bytes_per_connection / 1024.0;
    let overall = |m: &IdleMemory| m.open.saturating_sub(m.before) as f64 / o.idle as f64 / 1024.0;

    // 1. Idle connections, side by side. Neither server may time them out
    // while they are counted.
    let edge =
        servers::start_edge_custom(&o.common, origin.addr, &dir, "header_timeout = \"60s\"", "")
            .await?;
    let nginx = servers::start_nginx(&o.common, origin.addr, &dir).await?;
    eprintln!("{} idle connections to each server…", o.idle);
    let m = idle_memory(&edge, o.idle).await?;
    let n = idle_memory(&nginx, o.idle).await?;
    drop(nginx);
    drop(edge);

    // 2. The flood, on an edge with its default timeouts and limits.
    let edge_dir = dir.join("flood");
    std::fs::create_dir_all(&edge_dir)?;
    let edge = servers::start_edge_custom(&o.common, origin.addr, &edge_dir, "", "").await?;
    let url = edge.url("/obj/1k.bin");
    reqwest::get(&url).await?.bytes().await?;
    eprintln!("quiet run: {} req/s for {} s…", o.rps, o.secs);
    let cpu0 = procstat::cpu_seconds(&edge.pids());
    let (quiet, quiet_new) = tokio::join!(
        openloop::run(&url, o.rps, o.secs, 16),
        new_viewers(&url, o.secs, NEW_VIEWER_EVERY)
    );
    let quiet_cpu = procstat::cpu_seconds(&edge.pids()) - cpu0;
    let addr: SocketAddr = edge.base.trim_start_matches("http://").parse()?;
    // Attackers in child processes, at most PER_PROCESS sockets each: one
    // process may not hold more descriptors than its limit (20 000 here).
    let total = o.flood_idle + o.flood_slow;
    let hold = o.secs + 40.0;
    let mut children = Vec::new();
    let mut first = 0;
    while first < total {
        let n = PER_PROCESS.min(total - first);
        let slow = (first + n).saturating_sub(o.flood_idle).min(n);
        children.push(
            std::process::Command::new(std::env::current_exe()?)
                .args(["flood-client", "--to", &addr.to_string()])
                .args([
                    "--idle",
                    &(n - slow).to_string(),
                    "--slow",
                    &slow.to_string(),
                ])
                .args(["--first", &first.to_string(), "--secs", &hold.to_string()])
                .args(["--nice", &o.attacker_nice.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()?,
        );
        first += n;
    }
    let reached = wait_open(&edge, |open| {
        open >= (total as u64 * 9 / 10).min(cap(&edge))
    })
    .await?;
    eprintln!("flood: {reached} attacker connections open; normal load again…");
    let cpu0 = procstat::cpu_seconds(&edge.pids());
    let (flooded, flood_new) = tokio::join!(
        openloop::run(&url, o.rps, o.secs, 16),
        new_viewers(&url, o.secs, NEW_VIEWER_EVERY)
    );
    let flood_cpu = procstat::cpu_seconds(&edge.pids()) - cpu0;
    let open_at_end = open_connections(&edge).await?;
    let refused = refused_connections(&edge).await.unwrap_or_default();
    let rss_flood = procstat::rss(&edge.pids());
    let peak = procstat::peak_rss(&edge.pids());
    let mut reconnects = 0u64;
    for c in &mut children {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for c in children {
        let out = c.wait_with_output()?;
        reconnects += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
    }
    wait_open(&edge, |open| open == 0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = procstat::rss(&edge.pids());

    let report = json!({
        "idle": {
            "connections": o.idle,
            "meshcast": {"rss_before_mib": mib(m.before), "rss_open_mib": mib(m.open),
                         "rss_after_mib": mib(m.after), "kib_per_connection": per_conn(&m),
                         "kib_per_connection_overall": overall(&m)},
            "nginx": {"rss_before_mib": mib(n.before), "rss_open_mib": mib(n.open),
                      "rss_after_mib": mib(n.after), "kib_per_connection": per_conn(&n),
                      "kib_per_connection_overall": overall(&n)},
            "ratio": per_conn(&m) / per_conn(&n).max(1e-9),
        },
        "flood": {
            "idle": o.flood_idle, "slow": o.flood_slow, "reached_open": reached,
            "open_at_end": open_at_end, "attacker_reconnects": reconnects, "refused": refused,
            "quiet": load_json(&quiet), "flooded": load_json(&flooded),
            "p99_ratio": flooded.p99_us as f64 / quiet.p99_us.max(1) as f64,
            "new_viewers_quiet": quiet_new, "new_viewers_flood": flood_new,
            "edge_cpu_quiet": quiet_cpu / o.secs, "edge_cpu_flood": flood_cpu / o.secs,
            "edge_rss_flood_mib": mib(rss_flood), "edge_peak_rss_mib": mib(peak), "edge_rss_after_mib": mib(rss_after),
        },
        "settings": {"attacker_nice": o.attacker_nice, "threads": o.common.threads, "secs": o.secs, "rps": o.rps, "quick": o.common.quick},
    });
    if o.common.json {
        println!("{report}");
    } else {
        println!("{}", markdown(&report));
    }
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn markdown(r: &serde_json::Value) -> String {
    let i = &r["idle"];
    let f = &r["flood"];
    let row = |name: &str, v: &serde_json::Value| {
        format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |\n",
            v["rss_before_mib"].as_f64().unwrap_or(0.0),
            v["rss_open_mib"].as_f64().unwrap_or(0.0),
            v["rss_after_mib"].as_f64().unwrap_or(0.0),
            v["kib_per_connection"].as_f64().unwrap_or(0.0),
            v["kib_per_connection_overall"].as_f64().unwrap_or(0.0)
        )
    };
    let load = |name: &str, v: &serde_json::Value| {
        format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} |\n",
            v["achieved_rps"].as_f64().unwrap_or(0.0),
            v["p50_ms"].as_f64().unwrap_or(0.0),
            v["p99_ms"].as_f64().unwrap_or(0.0),
            v["errors"]
        )
    };
    format!(
        "### {} idle connections\n\n| server | RSS before MiB | with all MiB | after close MiB | KiB / connection (slope over the quarters) | (with all − before) ÷ N |\n|---|---|---|---|---|---|\n{}{}\nmeshcast ÷ nginx per connection: {:.2}\n\n\
         ### Flood: {} silent + {} slowloris connections (reconnecting), normal clients at a fixed rate\n\n\
         | run | achieved req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|\n{}{}\n\
         New viewers (a fresh connection every {} ms: connect, request, response): quiet p50 {} ms, p99 {} ms, errors {}; \
         flood p50 {} ms, p99 {} ms, errors {}\n\n\
         p99 flood ÷ quiet: {:.2}; attacker connections open when the load began {}, at its end {}; reconnects {}; \
         closed by the door {}; edge RSS in the flood {:.1} MiB (peak {:.1}), after {:.1} MiB; \
         edge CPU (cores busy) quiet {:.2}, flood {:.2}\n",
        i["connections"],
        row("meshcast", &i["meshcast"]),
        row("nginx", &i["nginx"]),
        i["ratio"].as_f64().unwrap_or(0.0),
        f["idle"],
        f["slow"],
        load("quiet", &f["quiet"]),
        load("flood", &f["flooded"]),
        NEW_VIEWER_EVERY.as_millis(),
        f["new_viewers_quiet"]["p50_ms"],
        f["new_viewers_quiet"]["p99_ms"],
        f["new_viewers_quiet"]["errors"],
        f["new_viewers_flood"]["p50_ms"],
        f["new_viewers_flood"]["p99_ms"],
        f["new_viewers_flood"]["errors"],
        f["p99_ratio"].as_f64().unwrap_or(0.0),
        f["reached_open"],
        f["open_at_end"],
        f["attacker_reconnects"],
        f["refused"],
        f["edge_rss_flood_mib"].as_f64().unwrap_or(0.0),
        f["edge_peak_rss_mib"].as_f64().unwrap_or(0.0),
        f["edge_rss_after_mib"].as_f64().unwrap_or(0.0),
        f["edge_cpu_quiet"].as_f64().unwrap_or(0.0),
        f["edge_cpu_flood"].as_f64().unwrap_or(0.0),
    )
}
