//! `receipts`: what issuing a `Meshcast-Receipt` costs on the hot path.
//! Two edges with the same token-checked site, one with a node identity
//! (a receipt sealed per response) and one without, measured A B B A with
//! wrk on tokened URLs; the ratio is requests/s with receipts ÷ without.

use crate::compare::measure_url;
use crate::origin::Origin;
use crate::report::median;
use crate::servers::{self, Server};
use crate::Common;
use meshcast_control::identity::NodeKey;
use meshcast_control::token::{self, TokenClaims};
use serde_json::json;

pub struct Options {
    pub common: Common,
    pub duration: u64,
    pub connections: usize,
    pub rounds: usize,
}

/// Paid media only: playlists carry no receipt (`is_paid_media`), so the
/// small object is a 1 KB media object, the size of an init segment.
const OBJECTS: [(&str, &str); 2] = [
    ("1 KB object", "/obj/1k.bin"),
    ("2 MB segment", "/obj/2m.m4s"),
];

async fn edge(
    o: &Options,
    origin: &Origin,
    dir: &std::path::Path,
    issuer: &str,
    receipts: bool,
) -> anyhow::Result<Server> {
    std::fs::create_dir_all(dir)?;
    let node = if receipts {
        let key = dir.join("node.key");
        if !key.exists() {
            NodeKey::generate()?.save(&key)?;
        }
        // No hub answers here: the edge issues receipts and keeps acks all
        // the same, which is what is measured.
        format!(
            "[node]\nkey = \"{}\"\nhub = \"http://127.0.0.1:9\"\nadvertise = \"http://127.0.0.1:9\"\nstate_dir = \"{}\"\n",
            key.display(),
            dir.join("state").display()
        )
    } else {
        String::new()
    };
    let site = format!("[site.tokens]\npaths = [\"/\"]\nissuers = [\"{issuer}\"]\n{node}");
    servers::start_edge_with(&o.common, origin.addr, dir, &site).await
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let dir =
        std::env::temp_dir().join(format!("meshcast-loadtest-receipts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let origin = Origin::start(4.0, 10).await?;
    let issuer = NodeKey::generate()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = TokenClaims {
        issuer: issuer.public().to_bytes(),
        prefix: "/obj/".into(),
        expires: now + 3600,
        budget: u64::MAX,
        session: NodeKey::generate()?.public().to_bytes(),
        edges: Vec::new(),
    };
    let tok = token::issue(&issuer, &claims, now)?;
    let issuer_hex: String = issuer
        .public()
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let on = edge(&o, &origin, &dir.join("on"), &issuer_hex, true).await?;
    let off = edge(&o, &origin, &dir.join("off"), &issuer_hex, false).await?;
    let mut rows = Vec::new();
    for (label, path) in OBJECTS {
        let url_on = on.url(&format!("/t/{tok}{path}"));
        let url_off = off.url(&format!("/t/{tok}{path}"));
        for (url, what) in [(&url_on, "with receipts"), (&url_off, "without")] {
            for _ in 0..3 {
                let r = reqwest::get(url).await?;
                anyhow::ensure!(
                    r.status().is_success(),
                    "{what}: {url} answered {}",
                    r.status()
                );
                let has = r.headers().contains_key("meshcast-receipt");
                anyhow::ensure!(
                    has == (what == "with receipts"),
                    "{what}: receipt header present = {has}"
                );
                r.bytes().await?;
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        // A B, then B A: whichever goes first in a pair is not always the
        // same edge, so an order effect cannot pass for a receipt cost.
        for round in 0..o.rounds {
            let on_first = round % 2 == 0;
            if on_first {
                a.push(measure_url(&on, &url_on, o.connections, o.duration, &dir)?);
            }
            b.push(measure_url(
                &off,
                &url_off,
                o.connections,
                o.duration,
                &dir,
            )?);
            if !on_first {
                a.push(measure_url(&on, &url_on, o.connections, o.duration, &dir)?);
            }
        }
        rows.push((label, median(&a), median(&b)));
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    if o.common.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(l, a, b)| {
                json!({"object": l, "rps_receipts_on": a.rps, "rps_receipts_off": b.rps,
                "ratio": ratio(a.rps, b.rps), "p99_ms_on": a.p99_ms, "p99_ms_off": b.p99_ms,
                "cpu_s_per_gb_on": a.cpu_s_per_gb, "cpu_s_per_gb_off": b.cpu_s_per_gb,
                "errors": a.errors + b.errors})
            })
            .collect();
        println!(
            "{}",
            json!({ "receipts": v, "settings": {"duration": o.duration, "connections": o.connections, "rounds": o.rounds, "threads": o.common.threads} })
        );
    } else {
        println!("| object | req/s receipts on | req/s off | on ÷ off | CPU s/GB on | off | on ÷ off | p99 on | p99 off |\n|---|---|---|---|---|---|---|---|---|");
        for (l, a, b) in &rows {
            println!(
                "| {l} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} ms | {:.2} ms |",
                a.rps,
                b.rps,
                ratio(a.rps, b.rps),
                a.cpu_s_per_gb,
                b.cpu_s_per_gb,
                ratio(a.cpu_s_per_gb, b.cpu_s_per_gb),
                a.p99_ms,
                b.p99_ms
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
