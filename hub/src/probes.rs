//! Probes: the HUB plays a viewer through every admitted edge on a
//! schedule and checks what comes back against what it knows itself — the
//! catalog's size and BLAKE3 of the object, and a receipt from the edge
//! for exactly those bytes. Disagreements are counted per node and
//! shown in `GET /v1/nodes`, so an edge that serves junk, truncates, or
//! issues receipts for bytes it did not send is seen without any viewer
//! having to complain.
//!
//! `plan` and `judge` are sans-IO (randomness and time are inputs); `run`
//! is the thin shell that fetches. Each round probes every admitted edge
//! once, at a random moment within the interval, a random media object of
//! a random ready video, with a fresh session key and a token steered to
//! that edge; probes send no acks, so nobody is paid for them.

use crate::admission::Candidate;
use crate::catalog::{FileRef, Status};
use crate::nodes::now_secs;
use crate::Hub;
use meshcast_control::receipt::{content_id, is_paid_media, SealedReceipt};
use meshcast_control::token::{self, TokenClaims};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// One object to fetch from one edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub edge: Candidate,
    pub video: String,
    pub file: String,
    pub expect: FileRef,
}

impl Probe {
    pub fn path(&self) -> String {
        format!("/v/{}/{}", self.video, self.file)
    }
}

/// What probes found on one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeStats {
    pub ok: u64,
    pub failed: u64,
    /// The latest disagreement: when (Unix seconds), what, and why.
    pub last_failure: Option<(u64, String, String)>,
    pub last_probe: Option<u64>,
}

/// SplitMix64: a well-mixed number from `x` (choices from one seed).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One probe per edge: for edge `i`, a video and then one of its media
/// objects, each picked from `seed`. `objects(video)` lists a video's
/// files; videos without media are skipped.
pub fn plan(
    seed: u64,
    edges: &[Candidate],
    videos: &[String],
    objects: impl Fn(&str) -> Vec<(String, FileRef)>,
) -> Vec<Probe> {
    let mut out = Vec::new();
    if videos.is_empty() {
        return out;
    }
    for (i, edge) in edges.iter().enumerate() {
        let r = mix(seed ^ mix(i as u64));
        let video = &videos[(r % videos.len() as u64) as usize];
        let media: Vec<(String, FileRef)> = objects(video)
            .into_iter()
            .filter(|(f, _)| is_paid_media(f))
            .collect();
        if media.is_empty() {
            continue;
        }
        let (file, expect) = media[(mix(r) % media.len() as u64) as usize].clone();
        out.push(Probe {
            edge: edge.clone(),
            video: video.clone(),
            file,
            expect,
        });
    }
    out
}

/// Checks an edge's answer to a probe: the catalog's bytes exactly, and a
/// receipt by that edge for exactly those bytes of that object.
pub fn judge(probe: &Probe, status: u16, body: &[u8], receipt: Option<&str>) -> Result<(), String> {
    if status != 200 {
        return Err(format!("answered {status}"));
    }
    if body.len() as u64 != probe.expect.size {
        return Err(format!(
            "sent {} bytes; the object has {}",
            body.len(),
            probe.expect.size
        ));
    }
    if blake3::hash(body).to_hex().as_str() != probe.expect.hash {
        return Err("bytes differ from the catalog's".into());
    }
    let header = receipt.ok_or("no receipt for paid media")?;
    // What the receipt says is checked, not who made it: only its seal
    // could tell, which only the edge can check; the edge signs for its
    // receipts when it claims their acks, and probes send none.
    let r = SealedReceipt::from_header(header).map_err(|e| e.to_string())?;
    let fields = &r.receipt;
    if fields.node != probe.edge.key {
        return Err("receipt names another node".into());
    }
    if fields.path != probe.path() || fields.start != 0 || fields.len != body.len() as u64 {
        return Err("receipt does not describe what was sent".into());
    }
    let etag = crate::origin::etag(&probe.expect.hash);
    if fields.content != content_id(Some(etag.as_bytes()), &fields.path) {
        return Err("receipt names other content".into());
    }
    Ok(())
}

/// Probes every admitted edge once per `interval` (at a random moment in
/// it), for as long as the HUB runs.
pub async fn run(hub: Arc<Hub>, interval: Duration) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the probe client; probes are off");
            return;
        }
    };
    loop {
        let seed = random_u64();
        let wait = interval.mul_f64(0.5 + (seed % 1000) as f64 / 1000.0);
        tokio::time::sleep(wait).await;
        if let Err(e) = round(&hub, &http, mix(seed)).await {
            tracing::warn!(error = %e, "probe round failed");
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap_or_default();
    u64::from_le_bytes(b)
}

async fn round(hub: &Arc<Hub>, http: &reqwest::Client, seed: u64) -> Result<(), crate::HubError> {
    let edges = hub.edge_candidates()?;
    let videos: Vec<String> = hub
        .catalog
        .videos()?
        .into_iter()
        .filter(|v| v.status == Status::Ready)
        .map(|v| v.id)
        .collect();
    let probes = plan(seed, &edges, &videos, |v| {
        hub.catalog.files(v).unwrap_or_default()
    });
    for probe in probes {
        let outcome = fetch(hub, http, &probe).await;
        record(hub, &probe, outcome);
    }
    Ok(())
}

async fn fetch(hub: &Hub, http: &reqwest::Client, probe: &Probe) -> Result<(), String> {
    let session = meshcast_control::identity::NodeKey::generate().map_err(|e| e.to_string())?;
    let now = now_secs();
    // Shaped like any viewer's token (life, budget), so the edge cannot
    // tell a probe by its token.
    let total = hub
        .catalog
        .total_bytes(&probe.video)
        .map_err(|e| e.to_string())?;
    let claims = TokenClaims {
        issuer: hub.key.public().to_bytes(),
        prefix: format!("/v/{}/", probe.video),
        expires: now + hub.config.hub.token_ttl.0.as_secs(),
        budget: total.saturating_mul(hub.config.hub.token_budget_factor as u64),
        session: session.public().to_bytes(),
        edges: vec![probe.edge.key],
    };
    let t = token::issue(&hub.key, &claims, now).map_err(|e| e.to_string())?;
    let url = format!(
        "{}/t/{t}{}",
        probe.edge.addr.trim_end_matches('/'),
        probe.path()
    );
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    let status = resp.status().as_u16();
    let receipt = resp
        .headers()
        .get("meshcast-receipt")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("body cut off: {e}"))?;
    judge(probe, status, &body, receipt.as_deref())
}

fn record(hub: &Hub, probe: &Probe, outcome: Result<(), String>) {
    let label = if outcome.is_ok() { "ok" } else { "failed" };
    hub.metrics.probes.with_label_values(&[label]).inc();
    let now = now_secs();
    if let Err(why) = &outcome {
        tracing::warn!(node = %probe.edge.id, object = %probe.path(), why, "probe disagreement");
    }
    let updated = hub.registry.upsert_node(&probe.edge.id, |cur| {
        let Some(mut n) = cur else {
            unreachable!("probed nodes come from the registry and are never deleted")
        };
        n.probes.last_probe = Some(now);
        match &outcome {
            Ok(()) => n.probes.ok += 1,
            Err(why) => {
                n.probes.failed += 1;
                n.probes.last_failure = Some((now, probe.path(), why.clone()));
            }
        }
        n
    });
    if let Err(e) = updated {
        tracing::error!(error = %e, "cannot record a probe");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(n: u8) -> Candidate {
        Candidate {
            id: format!("node{n}"),
            key: [n; 32],
            addr: format!("http://edge{n}"),
        }
    }

    fn files(video: &str) -> Vec<(String, FileRef)> {
        let f = |name: &str, body: &[u8]| {
            (
                name.to_string(),
                FileRef {
                    hash: blake3::hash(body).to_hex().to_string(),
                    size: body.len() as u64,
                    content_type: "video/mp4".into(),
                },
            )
        };
        match video {
            "empty" => vec![f("master.m3u8", b"#EXTM3U")],
            _ => vec![
                f("master.m3u8", b"#EXTM3U"),
                f("360p/seg_00001.m4s", b"segment one"),
                f("360p/init.mp4", b"init"),
            ],
        }
    }

    #[test]
    fn every_edge_gets_one_media_object_fixed_by_the_seed() {
        let edges = [edge(1), edge(2), edge(3)];
        let videos = ["a".to_string(), "empty".to_string(), "b".to_string()];
        let p = plan(42, &edges, &videos, files);
        assert_eq!(
            p,
            plan(42, &edges, &videos, files),
            "the seed fixes the plan"
        );
        assert!(p.len() <= 3);
        assert!(
            p.iter()
                .all(|x| is_paid_media(&x.file) && x.video != "empty"),
            "{p:?}"
        );
        // Over many seeds every edge is probed and every object comes up.
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            for x in plan(seed, &edges, &videos, files) {
                seen.insert((x.edge.id, x.video, x.file));
            }
        }
        assert_eq!(seen.len(), 3 * 2 * 2, "{seen:?}");
        assert!(plan(1, &edges, &[], files).is_empty());
    }

    #[test]
    fn judge_finds_junk_truncation_and_false_receipts() {
        let key = meshcast_control::identity::NodeKey::from_seed([1; 32]);
        let sealer = meshcast_control::receipt::ReceiptSealer::new(key);
        let body = b"segment one".to_vec();
        let (file, expect) = files("a")[1].clone();
        let probe = Probe {
            edge: Candidate {
                key: sealer.node(),
                ..edge(1)
            },
            video: "a".into(),
            file,
            expect: expect.clone(),
        };
        let etag = crate::origin::etag(&expect.hash);
        let receipt = |path: &str, len: u64| {
            sealer
                .issue(
                    [0; 16],
                    content_id(Some(etag.as_bytes()), path),
                    path,
                    0,
                    len,
                    1,
                    1,
                )
                .header_value()
        };
        let good = receipt(&probe.path(), body.len() as u64);
        assert_eq!(judge(&probe, 200, &body, Some(&good)), Ok(()));
        assert!(judge(&probe, 404, &body, Some(&good))
            .unwrap_err()
            .contains("404"));
        assert!(judge(&probe, 200, b"segment 0ne", Some(&good))
            .unwrap_err()
            .contains("differ"));
        assert!(judge(&probe, 200, &body[..5], Some(&good))
            .unwrap_err()
            .contains("sent 5"));
        assert!(judge(&probe, 200, &body, None)
            .unwrap_err()
            .contains("no receipt"));
        let inflated = receipt(&probe.path(), 1_000_000);
        assert!(judge(&probe, 200, &body, Some(&inflated))
            .unwrap_err()
            .contains("describe"));
        let other = Probe {
            edge: edge(9),
            ..probe.clone()
        };
        assert!(judge(&other, 200, &body, Some(&good))
            .unwrap_err()
            .contains("another node"));
    }
}
