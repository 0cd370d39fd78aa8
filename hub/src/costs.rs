//! What an account's videos cost, per video and per day, and the escrows
//! that pay for them: `GET /v1/account/costs`, for the console's money page.
//!
//! Delivery comes from the hub's settled epochs (each credits bytes per
//! video prefix); transcoding and storage from the rewards the hub queued,
//! recorded here (`costs.redb`) under the reward's own ledger reference, so
//! a reward offered twice is counted once. Units are priced at the chain's
//! parameters, and each line says whether the chain has paid its reward
//! (`reward/{reference}` in its settled set) or it is still on its way.

use crate::accounts::account_caller;
use crate::nodes::refuse;
use crate::openapi::TAG_ACCOUNTS;
use crate::{Hub, HubError};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

/// ledger reward reference (plus `/{video}` where one reward covers
/// several videos) → JSON `Line`.
const LINES: TableDefinition<&str, &[u8]> = TableDefinition::new("cost_lines");

/// One piece of paid work on one video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub video: String,
    /// Unix seconds.
    pub at: u64,
    /// `delivery` (bytes), `storage` (byte-hours) or `transcode` (seconds).
    pub kind: String,
    pub units: u64,
    /// The ledger reward that pays it.
    pub reference: String,
}

pub struct Costs {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> HubError {
    HubError::Catalog(format!("costs: {e}"))
}

impl Costs {
    pub fn open(path: &std::path::Path) -> Result<Self, HubError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(LINES).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Costs { db })
    }

    /// Records each line under its key unless that key is there already,
    /// in one transaction.
    pub fn record(&self, lines: &[(String, Line)]) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut t = txn.open_table(LINES).map_err(err)?;
            for (key, line) in lines {
                if t.get(key.as_str()).map_err(err)?.is_none() {
                    let json = serde_json::to_vec(line).map_err(err)?;
                    t.insert(key.as_str(), json.as_slice()).map_err(err)?;
                }
            }
        }
        txn.commit().map_err(err)
    }

    fn lines(&self) -> Result<Vec<Line>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(LINES).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(serde_json::from_slice(v.value()).map_err(err)?);
        }
        Ok(out)
    }
}

/// Records work the hub just queued rewards for; a failure to record is
/// logged (the rewards themselves are unaffected).
pub fn note(hub: &Hub, lines: &[(String, Line)]) {
    if let Err(e) = hub.costs.record(lines) {
        tracing::warn!(error = %e, lines = lines.len(), "cannot record cost lines");
    }
}

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new().routes(routes!(costs))
}

/// Delivery lines from the hub's settled epochs, for `videos`.
fn delivery_lines(hub: &Hub, videos: &BTreeMap<String, [u8; 32]>) -> Result<Vec<Line>, HubError> {
    let epoch_secs = match hub.ledger.epoch_secs() {
        0 => hub.config.ledger.delivery_epoch.0.as_secs().max(1),
        s => s,
    };
    let mut out = Vec::new();
    for s in hub.registry.all_settled()? {
        if !s.accepted {
            continue;
        }
        for (prefix, bytes) in &s.per_prefix {
            let video = prefix.trim_start_matches("/v/").trim_end_matches('/');
            let Some(payer) = videos.get(video) else {
                continue;
            };
            out.push(Line {
                video: video.to_string(),
                at: s.epoch.saturating_mul(epoch_secs),
                kind: "delivery".into(),
                units: *bytes,
                reference: crate::rewards::delivery_reference(&s.node, s.epoch, payer),
            });
        }
    }
    Ok(out)
}

fn day(at: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

/// `GET /v1/account/costs`: what the caller's videos have cost.
#[utoipa::path(get, path = "/v1/account/costs", tag = TAG_ACCOUNTS,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "`prices` (µMESH per GB delivered, per GB-hour stored, per second transcoded), `payers` (each escrow paying for the account's videos: `address`, `whose` (`owner key` or `hub`), `escrow`, `balance`, in µMESH), `videos` (per video: units and µMESH of each kind, `total`), `days` (per UTC day and kind, µMESH), `lines` (each piece of work: `day`, `video`, `kind`, `units`, `cost`, `paid`: whether the chain has paid it yet) and `total`", body = Object),
        (status = 401, description = "No or a bad API key", body = Object)))]
async fn costs(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let account = match account_caller(&hub, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match report(&hub, &account.id) {
        Ok(v) => Json(v).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn report(hub: &Hub, account: &str) -> Result<serde_json::Value, HubError> {
    let mine: Vec<_> = hub
        .catalog
        .videos()?
        .into_iter()
        .filter(|v| v.account.as_deref() == Some(account))
        .collect();
    let payers: BTreeMap<String, [u8; 32]> = mine
        .iter()
        .map(|v| (v.id.clone(), hub.payer_of(v)))
        .collect();
    let mut lines = delivery_lines(hub, &payers)?;
    lines.extend(
        hub.costs
            .lines()?
            .into_iter()
            .filter(|l| payers.contains_key(&l.video)),
    );
    lines.sort_by(|a, b| (a.at, &a.video, &a.kind).cmp(&(b.at, &b.video, &b.kind)));
    let (params, paid, escrows) = {
        let n = hub
            .ledger
            .running
            .node
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let st = n.state();
        let paid: Vec<bool> = lines
            .iter()
            .map(|l| st.settled.contains(&format!("reward/{}", l.reference)))
            .collect();
        let mut escrows = Vec::new();
        for payer in payers.values().collect::<std::collections::BTreeSet<_>>() {
            let a = n.account(payer);
            let whose = if *payer == hub.key.public().to_bytes() {
                "hub"
            } else {
                "owner key"
            };
            escrows.push(json!({"address": hex::encode(payer), "whose": whose,
                "escrow": a.map_or(0, |a| a.escrow), "balance": a.map_or(0, |a| a.balance)}));
        }
        (st.params.clone(), paid, escrows)
    };
    let price = |kind: &str, units: u64| -> f64 {
        let u = units as f64;
        match kind {
            "delivery" => u * params.delivery_price_per_gb as f64 / 1e9,
            "storage" => u * params.storage_price_per_gb_hour as f64 / 1e9,
            _ => u * params.transcode_price_per_second as f64,
        }
    };
    let mut per_video: BTreeMap<&str, BTreeMap<&str, (u64, f64)>> = BTreeMap::new();
    let mut per_day: BTreeMap<String, BTreeMap<&str, f64>> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut total = 0.0;
    for (l, paid) in lines.iter().zip(&paid) {
        let cost = price(&l.kind, l.units);
        total += cost;
        let e = per_video
            .entry(&l.video)
            .or_default()
            .entry(&l.kind)
            .or_default();
        e.0 += l.units;
        e.1 += cost;
        *per_day
            .entry(day(l.at))
            .or_default()
            .entry(&l.kind)
            .or_default() += cost;
        rows.push(json!({"day": day(l.at), "video": l.video, "kind": l.kind,
            "units": l.units, "cost": cost, "paid": paid}));
    }
    let videos: Vec<_> = mine
        .iter()
        .map(|v| {
            let k = per_video.get(v.id.as_str());
            let of = |kind: &str| k.and_then(|k| k.get(kind)).copied().unwrap_or((0, 0.0));
            let (d, s, t) = (of("delivery"), of("storage"), of("transcode"));
            json!({"video": v.id, "name": v.name,
                "delivery_bytes": d.0, "delivery": d.1,
                "storage_byte_hours": s.0, "storage": s.1,
                "transcode_seconds": t.0, "transcode": t.1,
                "total": d.1 + s.1 + t.1})
        })
        .collect();
    let days: Vec<_> = per_day
        .iter()
        .map(|(d, k)| {
            let of = |kind: &str| k.get(kind).copied().unwrap_or(0.0);
            json!({"day": d, "delivery": of("delivery"), "storage": of("storage"),
                "transcode": of("transcode"), "total": k.values().sum::<f64>()})
        })
        .collect();
    Ok(json!({
        "prices": {"delivery_per_gb": params.delivery_price_per_gb,
            "storage_per_gb_hour": params.storage_price_per_gb_hour,
            "transcode_per_second": params.transcode_price_per_second},
        "payers": escrows, "videos": videos, "days": days, "lines": rows, "total": total,
    }))
}
