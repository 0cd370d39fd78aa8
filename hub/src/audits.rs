//! Proof of storage, the HUB's side: every `[storage] audit_interval`
//! each admitted storage node is asked, in a HUB-signed envelope, for the
//! chunks a transcript over the latest block hash, its id and each shard
//! it holds picks (`meshcast_control::storage`); its signed answer is
//! judged against the roots and lengths this HUB placed. Passed: the node
//! is paid for the bytes it held since its last passed audit, per GB-hour
//! from each video owner's escrow (genesis price). Failed or late: it
//! loses score (`audits` on `/v1/nodes`), and at `[storage] slash_after`
//! in a row it is slashed with the signed challenge and answer as
//! evidence, and repair rebuilds its shards elsewhere.

use crate::nodes::{now_ms, now_secs};
use crate::registry::NodeRecord;
use crate::Hub;
use meshcast_control::envelope::{Envelope, Verifier};
use meshcast_control::messages::MAX_SKEW_SECS;
use meshcast_control::storage::{challenge, judge, Answer, Held, Verdict, AUDIT, AUDIT_ANSWER};
use meshcast_ledger::{Action, Work};
use std::collections::HashMap;
use std::sync::Arc;

pub async fn run(hub: Arc<Hub>) {
    let st = &hub.config.storage;
    let http = match reqwest::Client::builder()
        .timeout(st.audit_timeout.0)
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "audits cannot make an HTTP client");
            return;
        }
    };
    let mut answers = Verifier::new(AUDIT_ANSWER, MAX_SKEW_SECS);
    loop {
        tokio::time::sleep(st.audit_interval.0).await;
        // Every admitted storage node holding shards, in good standing or
        // not: a failing one must keep being audited to reach its slash.
        let Ok(nodes) = hub.registry.nodes() else {
            continue;
        };
        let held = held_by_node(&hub);
        let storage = nodes
            .into_iter()
            .filter(|n| n.roles.iter().any(|r| r == "storage") && hub.admission(n).admitted());
        for node in storage {
            let Some(shards) = held.get(&node.id) else {
                continue;
            };
            audit_one(&hub, &http, &mut answers, &node, shards).await;
        }
    }
}

/// Every placed shard by the node holding it, with the video it is of.
fn held_by_node(hub: &Hub) -> HashMap<String, Vec<(String, Held)>> {
    let mut out: HashMap<String, Vec<(String, Held)>> = HashMap::new();
    for video in hub.placements.videos().unwrap_or_default() {
        let Ok(Some(stored)) = hub.placements.get(&video) else {
            continue;
        };
        for o in stored.objects {
            for s in o.shards {
                out.entry(s.node).or_default().push((
                    video.clone(),
                    Held {
                        shard: s.name,
                        len: s.len,
                        root: s.root,
                    },
                ));
            }
        }
    }
    out
}

/// Asks one node and acts on the verdict.
async fn audit_one(
    hub: &Arc<Hub>,
    http: &reqwest::Client,
    answers: &mut Verifier,
    node: &NodeRecord,
    shards: &[(String, Held)],
) {
    let Some((_, block)) = hub.ledger.latest_block() else {
        return;
    };
    let held: Vec<Held> = shards.iter().map(|(_, h)| h.clone()).collect();
    let timeout_ms = hub.config.storage.audit_timeout.0.as_millis() as u64;
    let c = challenge(&node.id, block, &held, now_ms() + timeout_ms);
    let body = serde_json::to_vec(&c).expect("serializes");
    let Ok(asked) = Envelope::seal(&hub.key, AUDIT, body, now_secs()) else {
        return;
    };
    let asked = asked.encode();
    let url = format!("{}/v1/audit", node.addr.trim_end_matches('/'));
    let reply = match http.post(&url).body(asked.clone()).send().await {
        Ok(r) if r.status().is_success() => r.bytes().await.ok(),
        _ => None,
    };
    let received = now_ms();
    let (verdict, answer_wire) = match reply {
        None => (Verdict::Late, None),
        Some(wire) => match open_answer(answers, node, &wire) {
            Some(a) => (judge(&c, &held, &a, received), Some(wire.to_vec())),
            None => (Verdict::Failed(vec![]), Some(wire.to_vec())),
        },
    };
    record(
        hub,
        node,
        shards,
        verdict,
        (&asked, answer_wire.as_deref()),
        received,
    );
}

/// The node's signed answer, if it is its and fresh.
fn open_answer(answers: &mut Verifier, node: &NodeRecord, wire: &[u8]) -> Option<Answer> {
    let env = Envelope::decode(wire).ok()?;
    let key = answers.verify(&env, now_secs()).ok()?;
    if hex::encode(key.to_bytes()) != node.key {
        return None;
    }
    serde_json::from_slice(&env.body).ok()
}

fn record(
    hub: &Arc<Hub>,
    node: &NodeRecord,
    shards: &[(String, Held)],
    verdict: Verdict,
    (asked, answer): (&[u8], Option<&[u8]>),
    at_ms: u64,
) {
    let st = &hub.config.storage;
    let mut slash = false;
    let mut since = 0;
    let updated = hub.registry.upsert_node(&node.id, |cur| {
        let mut n = cur.unwrap_or_else(|| node.clone());
        let a = &mut n.audits;
        match &verdict {
            Verdict::Passed => {
                since = a.last_passed_ms;
                a.passed += 1;
                a.failing = 0;
                a.last_passed_ms = at_ms;
                a.last = Some("passed".into());
            }
            Verdict::Late => {
                a.late += 1;
                a.failing += 1;
                a.last = Some("late".into());
            }
            Verdict::Failed(missing) => {
                a.failed += 1;
                a.failing += 1;
                a.last = Some(format!("failed: {} chunks not proven", missing.len()));
            }
        }
        if a.failing >= st.slash_after {
            slash = true;
            a.failing = 0;
            a.slashed += 1;
        }
        n
    });
    if let Err(e) = updated {
        tracing::error!(node = %node.id, error = %e, "cannot record an audit");
        return;
    }
    match &verdict {
        Verdict::Passed => pay(hub, node, shards, since, at_ms),
        other => tracing::warn!(node = %node.id, verdict = ?other, "storage audit not passed"),
    }
    if slash {
        let reason = format!(
            "{} storage audits in a row not passed; last: {verdict:?}",
            st.slash_after
        );
        let also = serde_json::json!({
            "challenge": hex::encode(asked),
            "held": shards.iter().map(|(_, h)| h).collect::<Vec<_>>(),
        })
        .to_string();
        let rests_on = answer.unwrap_or(asked);
        if let Some((key, hash)) = hub.record_slash(&node.id, 0, &reason, rests_on, Some(also)) {
            hub.ledger.slash_storage(key, hash, &reason);
        }
    }
}

/// Storage rewards for a passed audit: the bytes held since the last
/// passed audit (at most two intervals; the first pays one), per video's
/// payer, as byte-hours.
fn pay(hub: &Hub, node: &NodeRecord, shards: &[(String, Held)], since_ms: u64, at_ms: u64) {
    let Some(key) = crate::admission::node_key(node) else {
        return;
    };
    let interval = hub.config.storage.audit_interval.0.as_millis() as u64;
    let mut bytes: HashMap<[u8; 32], u64> = HashMap::new();
    let mut per_video: HashMap<&str, ([u8; 32], u64)> = HashMap::new();
    for (video, h) in shards {
        let payer = match hub.catalog.video(video) {
            Ok(Some(v)) => hub.payer_of(&v),
            _ => hub.key.public().to_bytes(),
        };
        *bytes.entry(payer).or_default() += h.len;
        per_video.entry(video).or_insert((payer, 0)).1 += h.len;
    }
    let reference =
        |payer: &[u8; 32]| format!("storage/{}/{at_ms}/{}", node.id, hex::encode(&payer[..8]));
    let lines: Vec<_> = per_video
        .iter()
        .map(|(video, (payer, b))| {
            let r = reference(payer);
            let line = crate::costs::Line {
                video: video.to_string(),
                at: at_ms / 1000,
                kind: "storage".into(),
                units: byte_hours(*b, (since_ms, at_ms), interval),
                reference: r.clone(),
            };
            (format!("{r}/{video}"), line)
        })
        .collect();
    crate::costs::note(hub, &lines);
    let actions = bytes
        .into_iter()
        .map(|(payer, b)| Action::Reward {
            payer,
            node: key,
            work: Work::Storage {
                byte_hours: byte_hours(b, (since_ms, at_ms), interval),
            },
            reference: reference(&payer),
        })
        .collect();
    hub.ledger.submit(actions);
}

/// What a passed audit at `at_ms` pays for `bytes` held: the time since
/// the last passed audit (`since_ms`, 0 for none), at most two intervals
/// (a node that failed or sat out audits is not paid for that time), one
/// interval for a node's first pass; in byte-hours.
fn byte_hours(bytes: u64, (since_ms, at_ms): (u64, u64), interval_ms: u64) -> u64 {
    let held_ms = if since_ms == 0 {
        interval_ms
    } else {
        at_ms.saturating_sub(since_ms).min(2 * interval_ms)
    };
    (bytes as u128 * held_ms as u128 / 3_600_000) as u64
}

#[cfg(test)]
mod tests {
    use super::{byte_hours, open_answer};
    use meshcast_control::envelope::{Envelope, Verifier};
    use meshcast_control::identity::NodeKey;
    use meshcast_control::storage::{Answer, AUDIT, AUDIT_ANSWER};

    #[test]
    fn only_the_audited_nodes_own_fresh_answer_is_judged() {
        let key = NodeKey::generate().unwrap();
        let mut node = crate::registry::test_node(&key.id());
        node.key = hex::encode(key.public().to_bytes());
        let answer = Answer {
            node: key.id(),
            block: [1; 32],
            slices: vec![],
        };
        let body = serde_json::to_vec(&answer).unwrap();
        let now = crate::nodes::now_secs();
        let sealed = |by: &NodeKey, domain: &str| {
            Envelope::seal(by, domain, body.clone(), now)
                .unwrap()
                .encode()
        };
        let mut v = Verifier::new(AUDIT_ANSWER, meshcast_control::messages::MAX_SKEW_SECS);
        let own = sealed(&key, AUDIT_ANSWER);
        assert_eq!(open_answer(&mut v, &node, &own), Some(answer));
        assert_eq!(open_answer(&mut v, &node, &own), None, "replayed");
        // Another node's signature over the same answer: the stranger may
        // hold the shards, but it is not the one audited (or paid).
        let stranger = NodeKey::generate().unwrap();
        assert_eq!(
            open_answer(&mut v, &node, &sealed(&stranger, AUDIT_ANSWER)),
            None
        );
        assert_eq!(
            open_answer(&mut v, &node, &sealed(&key, AUDIT)),
            None,
            "another domain"
        );
        assert_eq!(open_answer(&mut v, &node, b"not an envelope"), None);
    }

    const HOUR: u64 = 3_600_000;
    const GB: u64 = 1_000_000_000;

    #[test]
    fn a_passed_audit_pays_the_time_since_the_last_and_no_more_than_two_intervals() {
        // Hourly audits of 1 GB: one GB-hour per pass on time.
        assert_eq!(byte_hours(GB, (HOUR, 2 * HOUR), HOUR), GB);
        // The first pass pays one interval, whatever came before it.
        assert_eq!(byte_hours(GB, (0, 50 * HOUR), HOUR), GB);
        // A node that failed (or sat on) ten audits and then passes one is
        // paid for two intervals, not for the eleven hours it did not prove.
        assert_eq!(byte_hours(GB, (HOUR, 12 * HOUR), HOUR), 2 * GB);
        // Audits sooner than the interval pay only the time elapsed, so
        // asking twice cannot pay twice.
        assert_eq!(byte_hours(GB, (HOUR, HOUR + HOUR / 4), HOUR), GB / 4);
        // A clock that went back pays nothing.
        assert_eq!(byte_hours(GB, (5 * HOUR, 4 * HOUR), HOUR), 0);
    }
}
