//! Repair: a storage node silent past `[storage] grace` has lost its
//! shards. Each object that had a shard there is read back from `k` of
//! its other shards (each checked against its root), coded again (the
//! code is deterministic, so the rebuilt shard is byte for byte the lost
//! one, with the same root), and the lost shard is put on a node that
//! holds none of that object's shards. The video's placement is written
//! after each object (one redb transaction), so a crash mid-repair leaves
//! every record true. Rebuilt bytes are paced to `[storage] repair_rate`.

use crate::nodes::now_secs;
use crate::placement::{put_shard, StoredObject};
use crate::registry::NodeRecord;
use crate::Hub;
use meshcast_shards::Layout;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;

type Pace = governor::DefaultDirectRateLimiter;

/// Runs until the process stops.
pub async fn run(hub: Arc<Hub>) {
    let st = &hub.config.storage;
    // One cell per KiB; a burst of a second's worth (at least 4 MiB, a
    // large shard).
    let per_sec = NonZeroU32::new((st.repair_rate.0 / 1024).clamp(1, u32::MAX as u64) as u32)
        .expect("at least 1");
    let burst = per_sec.max(NonZeroU32::new(4096).expect("nonzero"));
    let pace =
        governor::RateLimiter::direct(governor::Quota::per_second(per_sec).allow_burst(burst));
    let http = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "repair cannot make an HTTP client");
            return;
        }
    };
    loop {
        tokio::time::sleep(st.repair_interval.0).await;
        if let Err(e) = round(&hub, &http, (&pace, per_sec)).await {
            tracing::warn!(error = %e, "a repair round failed");
        }
    }
}

/// Storage nodes silent past the grace period, or slashed for failing
/// audits.
fn lost_nodes(hub: &Hub, nodes: &[NodeRecord]) -> HashSet<String> {
    let grace = hub.config.storage.grace.0.as_secs();
    let now = now_secs();
    nodes
        .iter()
        .filter(|n| n.roles.iter().any(|r| r == "storage"))
        .filter(|n| now.saturating_sub(n.last_seen) > grace || n.audits.slashed > 0)
        .map(|n| n.id.clone())
        .collect()
}

async fn round(
    hub: &Arc<Hub>,
    http: &reqwest::Client,
    (pace, per_sec): (&Pace, NonZeroU32),
) -> Result<(), String> {
    let nodes = hub.registry.nodes().map_err(|e| e.to_string())?;
    let lost = lost_nodes(hub, &nodes);
    if lost.is_empty() {
        return Ok(());
    }
    let healthy: Vec<NodeRecord> = hub
        .storage_nodes()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|n| !lost.contains(&n.id))
        .collect();
    let addrs: HashMap<String, String> = nodes.into_iter().map(|n| (n.id, n.addr)).collect();
    let mut used = hub.placed_bytes().map_err(|e| e.to_string())?;
    for video in hub.placements.videos().map_err(|e| e.to_string())? {
        let Some(mut stored) = hub.placements.get(&video).map_err(|e| e.to_string())? else {
            continue;
        };
        let layout = Layout::new(stored.data, stored.parity).map_err(|e| e.to_string())?;
        for i in 0..stored.objects.len() {
            let object = &mut stored.objects[i];
            let missing: Vec<usize> = (0..object.shards.len())
                .filter(|&j| lost.contains(&object.shards[j].node))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let mut ctx = Ctx {
                hub,
                http,
                pace,
                addrs: &addrs,
                healthy: &healthy,
                used: &mut used,
                per_sec,
                layout,
            };
            // Shards put before a later one fails (a node dead but not yet
            // past its grace, say) are recorded and counted now: left out,
            // they were persisted unseen with the next object's repair, or
            // orphaned on their nodes when none followed.
            let mut placed = 0;
            let result = rebuild(&mut ctx, &video, object, &missing, &mut placed).await;
            if placed > 0 {
                hub.metrics.shards_repaired.inc_by(placed as u64);
                hub.placements
                    .put(&video, &stored)
                    .map_err(|e| e.to_string())?;
            }
            let path = &stored.objects[i].path;
            match result {
                Ok(()) => tracing::info!(%video, object = %path, rebuilt = placed, "repaired"),
                Err(e) => {
                    tracing::warn!(%video, object = %path, rebuilt = placed, error = %e, "cannot repair yet")
                }
            }
        }
    }
    Ok(())
}

struct Ctx<'a> {
    hub: &'a Arc<Hub>,
    http: &'a reqwest::Client,
    pace: &'a Pace,
    addrs: &'a HashMap<String, String>,
    healthy: &'a [NodeRecord],
    /// The pace in KiB a second.
    per_sec: NonZeroU32,
    /// Bytes placed on each node (capacity check), kept current as shards
    /// are put.
    used: &'a mut HashMap<String, u64>,
    layout: Layout,
}

/// One shard from its node, checked against its root.
async fn fetch(ctx: &Ctx<'_>, object: &StoredObject, j: usize) -> Result<Vec<u8>, String> {
    let s = &object.shards[j];
    let addr = ctx
        .addrs
        .get(&s.node)
        .ok_or_else(|| format!("node {} unknown", s.node))?;
    let url = format!("{}/v1/shards/{}", addr.trim_end_matches('/'), s.name);
    let r = ctx
        .http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let bytes = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if bytes.len() as u64 != s.len || *blake3::hash(&bytes).as_bytes() != s.root {
        return Err(format!("{url}: not the shard placed"));
    }
    Ok(bytes.to_vec())
}

/// Rebuilds `missing` shards of `object` onto new nodes, counting in
/// `placed` each one put (and written into `object`) before any failure.
async fn rebuild(
    ctx: &mut Ctx<'_>,
    video: &str,
    object: &mut StoredObject,
    missing: &[usize],
    placed: &mut usize,
) -> Result<(), String> {
    let total = ctx.layout.total();
    let mut got: Vec<Option<Vec<u8>>> = vec![None; total];
    // `k` of the others at once; the rest one by one if some fail.
    let others: Vec<usize> = (0..total).filter(|j| !missing.contains(j)).collect();
    let (first, rest) = others.split_at(ctx.layout.data.min(others.len()));
    let fetched =
        futures_util::future::join_all(first.iter().map(|&j| fetch(ctx, object, j))).await;
    let mut have = 0;
    for (&j, r) in first.iter().zip(fetched) {
        match r {
            Ok(b) => {
                got[j] = Some(b);
                have += 1;
            }
            Err(e) => tracing::warn!(error = %e, "a shard for repair failed"),
        }
    }
    for &j in rest {
        if have == ctx.layout.data {
            break;
        }
        match fetch(ctx, object, j).await {
            Ok(b) => {
                got[j] = Some(b);
                have += 1;
            }
            Err(e) => tracing::warn!(error = %e, "a shard for repair failed"),
        }
    }
    let refs: Vec<Option<&[u8]>> = got.iter().map(|s| s.as_deref()).collect();
    let sealed = meshcast_shards::decode(ctx.layout, &refs).map_err(|e| e.to_string())?;
    let shards = meshcast_shards::encode(ctx.layout, &sealed);
    let object_name = format!("{video}/{}", object.path);
    for &j in missing {
        let holding: HashSet<&str> = object.shards.iter().map(|s| s.node.as_str()).collect();
        let free: Vec<NodeRecord> = ctx
            .healthy
            .iter()
            .filter(|n| !holding.contains(n.id.as_str()))
            .filter(|n| {
                ctx.used.get(&n.id).copied().unwrap_or(0) + shards[j].len() as u64
                    <= n.capacity_bytes
            })
            .cloned()
            .collect();
        let Some(node) = crate::placement::choose(&free, &object_name, 1)
            .into_iter()
            .next()
        else {
            return Err(format!("no storage node free of {object_name}'s shards"));
        };
        if *blake3::hash(&shards[j]).as_bytes() != object.shards[j].root {
            return Err(format!("{object_name}: shard {j} rebuilt to other bytes"));
        }
        let kib = NonZeroU32::new(shards[j].len().div_ceil(1024).max(1) as u32).expect("nonzero");
        if ctx.pace.until_n_ready(kib).await.is_err() {
            // Larger than the burst: wait its share of a second by hand.
            let secs = kib.get() as f64 / ctx.per_sec.get() as f64;
            tokio::time::sleep(std::time::Duration::from_secs_f64(secs)).await;
        }
        let name = object.shards[j].name.clone();
        let put = put_shard(ctx.hub, ctx.http, node, &name, shards[j].clone()).await?;
        *ctx.used.entry(put.node.clone()).or_default() += put.len;
        object.shards[j] = put;
        *placed += 1;
    }
    Ok(())
}
