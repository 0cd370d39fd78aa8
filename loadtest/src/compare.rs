//! `compare`: the same load at meshcast and nginx, alternating A B A B.

use crate::coalesce;
use crate::openloop;
use crate::origin::Origin;
use crate::procstat;
use crate::report::{median, Cell, CompareReport, Fixed, Peak};
use crate::servers::{self, Server};
use crate::wrk;
use crate::Common;
use serde_json::json;

pub struct Options {
    pub common: Common,
    pub duration: u64,
    pub connections: usize,
    pub rounds: usize,
    pub cold: usize,
    /// Copies of each object the load cycles through (its working set).
    pub objects: usize,
}

pub const OBJECTS: [(&str, &str); 3] = [
    ("1 KB playlist", "/obj/1k.bin"),
    ("100 KB object", "/obj/100k.bin"),
    ("2 MB segment", "/obj/2m.m4s"),
];

/// Fetches each object until the server says it came from its cache, so
/// both are measured on hits only; with `objects` copies, fills each copy
/// first.
async fn warm(server: &Server, objects: usize) -> anyhow::Result<()> {
    for (_, path) in OBJECTS {
        for n in (0..objects).filter(|_| objects > 1) {
            reqwest::get(server.url(&format!("{path}?n={n}")))
                .await?
                .bytes()
                .await?;
        }
        let mut hit = false;
        for _ in 0..5 {
            let r = reqwest::get(server.url(path)).await?;
            anyhow::ensure!(
                r.status().is_success(),
                "{} answered {} for {path}",
                server.name,
                r.status()
            );
            let status = ["cache-status", "x-cache"]
                .iter()
                .find_map(|h| r.headers().get(*h))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            r.bytes().await?;
            if status.contains("hit") {
                hit = true;
                break;
            }
        }
        anyhow::ensure!(hit, "{} never served {path} from its cache", server.name);
    }
    Ok(())
}

/// One wrk run against `url` on `server`, with the server's CPU time per GB.
pub fn measure_url(
    server: &Server,
    url: &str,
    connections: usize,
    secs: u64,
    dir: &std::path::Path,
) -> anyhow::Result<Cell> {
    measure_over(server, url, 1, connections, secs, dir)
}

/// `measure_url` over `objects` copies of `url` (see `wrk::run_over`).
fn measure_over(
    server: &Server,
    url: &str,
    objects: usize,
    connections: usize,
    secs: u64,
    dir: &std::path::Path,
) -> anyhow::Result<Cell> {
    let pids = server.pids();
    let cpu0 = procstat::cpu_seconds(&pids);
    let r = wrk::run_over(url, objects, connections, secs, dir)?;
    let cpu = procstat::cpu_seconds(&pids) - cpu0;
    Ok(cell(&r, cpu))
}

fn cell(r: &wrk::WrkResult, cpu: f64) -> Cell {
    Cell {
        rps: r.rps(),
        mb_per_sec: r.mb_per_sec(),
        p50_ms: r.p50_us as f64 / 1000.0,
        p99_ms: r.p99_us as f64 / 1000.0,
        p999_ms: r.p999_us as f64 / 1000.0,
        cpu_s_per_gb: if r.bytes > 0 {
            cpu / (r.bytes as f64 / 1e9)
        } else {
            0.0
        },
        errors: r.errors,
    }
}

fn measure(
    server: &Server,
    path: &str,
    o: &Options,
    dir: &std::path::Path,
) -> anyhow::Result<Cell> {
    let url = server.url(path);
    measure_over(server, &url, o.objects, o.connections, o.duration, dir)
}

/// The edge's `meshcast_cache_hits_total` by tier: which tier the
/// measured hits came from.
async fn tier_hits(edge: &Server) -> serde_json::Value {
    let text = match reqwest::get(&edge.status_url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut hits = serde_json::Map::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("meshcast_cache_hits_total{tier=\"") else {
            continue;
        };
        if let Some((tier, value)) = rest.split_once("\"} ") {
            hits.insert(
                tier.into(),
                json!(value.trim().parse::<f64>().unwrap_or(0.0)),
            );
        }
    }
    serde_json::Value::Object(hits)
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("meshcast-loadtest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let origin = Origin::start(4.0, 10).await?;
    let edge = servers::start_edge(&o.common, origin.addr, &dir).await?;
    let nginx = servers::start_nginx(&o.common, origin.addr, &dir).await?;
    warm(&edge, o.objects).await?;
    warm(&nginx, o.objects).await?;
    eprintln!(
        "measuring {} s × {} round(s) per object and server…",
        o.duration, o.rounds
    );

    let mut cells = Vec::new();
    for (label, path) in OBJECTS {
        let (mut m, mut n) = (Vec::new(), Vec::new());
        for _ in 0..o.rounds {
            m.push(measure(&edge, path, &o, &dir)?);
            n.push(measure(&nginx, path, &o, &dir)?);
        }
        cells.push((label.to_string(), median(&m), median(&n)));
    }

    // p99 at 80 % of nginx's maximum on the small object, open loop.
    let rate = cells[0].2.rps * 0.8;
    let secs = if o.common.quick {
        1.0
    } else {
        o.duration as f64
    };
    let fm = openloop::run(&edge.url(OBJECTS[0].1), rate, secs, o.connections).await;
    let fnx = openloop::run(&nginx.url(OBJECTS[0].1), rate, secs, o.connections).await;

    let hits = tier_hits(&edge).await;
    let cm = coalesce::run(&origin, &edge.base, "meshcast", o.cold).await;
    let cn = coalesce::run(&origin, &nginx.base, "nginx", o.cold).await;

    let peak = Peak {
        meshcast_rss: procstat::peak_rss(&edge.pids()),
        nginx_rss: procstat::peak_rss(&nginx.pids()),
    };
    let report = CompareReport {
        cells,
        fixed: Fixed {
            meshcast: fm,
            nginx: fnx,
        },
        coalesce: (cm, cn),
        peak,
        settings: json!({
            "duration_s": o.duration, "connections": o.connections, "rounds": o.rounds,
            "threads": o.common.threads, "cold_requests": o.cold, "quick": o.common.quick,
            "memory_size": o.common.memory_size, "objects": o.objects, "edge_hits": hits,
        }),
    };
    if o.common.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.markdown());
    }
    drop(edge);
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
