//! Delivery claims: an edge sends its epoch claim, the HUB answers with a
//! challenge drawn from a transcript over the claim and a fresh nonce, the
//! edge opens those acks with Merkle paths, and the HUB settles. The audit
//! logic is `meshcast_control::audit`; this module is storage and HTTP.

use crate::nodes::{now_secs, open_envelope, refuse};
use crate::openapi::TAG_NODES;
use crate::registry::{Decision, Pending, SettleView, Settlement};
use crate::Hub;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshcast_control::audit::{self, AuditError, Checked, Claim, Opening};
use meshcast_control::messages::{self, issuer_allows, issuer_known, Challenge};
use meshcast_control::receipt::content_id;
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(claim))
        .routes(routes!(open))
}

/// Checks a claim's listing: epochs of the network's length (so epoch n
/// is the same absolute window for every edge, and settlement by (node,
/// n) is by time), every token's issuer allowed its prefix, and every
/// token naming `claimant` (or no edge).
fn check(hub: &Hub, claim: &Claim, claimant: &[u8; 32]) -> Result<Checked, AuditError> {
    let network = hub.ledger.epoch_secs();
    if network != 0 && claim.epoch_secs != network {
        return Err(AuditError::EpochLength {
            claimed: claim.epoch_secs,
            network,
        });
    }
    let issuers = hub.issuers();
    let mut checked = audit::check_claim(
        claim,
        claimant,
        |k| issuer_known(&issuers, k),
        now_secs() * 1000,
    )?;
    checked.void_unless_allowed(|issuer, prefix| issuer_allows(&issuers, issuer, prefix));
    Ok(checked)
}

/// What the catalog says about a receipt's path (`/v/{id}/{file}`): the
/// object's size and the content id its ETag gives, as the edge computed
/// it when it served the object. A catalog error counts as "not found" and
/// sets `failed`: the opening is then answered 500 (the edge tries again),
/// neither paid on faith nor refused for the HUB's own fault.
fn published(hub: &Hub, path: &str, failed: &std::cell::Cell<bool>) -> Option<audit::Published> {
    let (id, file) = path.strip_prefix("/v/")?.split_once('/')?;
    match hub.catalog.file(id, file) {
        Ok(Some(f)) => Some(audit::Published {
            size: f.size,
            content: content_id(Some(crate::origin::etag(&f.hash).as_bytes()), path),
        }),
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, path, "catalog unreadable during an audit");
            failed.set(true);
            None
        }
    }
}

/// The node-signed envelopes a refusal rests on (kept as evidence when
/// the refusal proves fraud).
struct Signed<'a> {
    claim: &'a [u8],
    also: Option<&'a [u8]>,
}

/// Records a refused claim (no credit) and answers with its reason; a
/// refusal that proves fraud also slashes the node.
fn reject(hub: &Hub, node: &str, claim: &Claim, e: AuditError, signed: Signed) -> Response {
    hub.metrics.claims.with_label_values(&[e.label()]).inc();
    tracing::warn!(node, epoch = claim.epoch, reason = %e, fraud = e.is_fraud(), "refused a delivery claim");
    if e.is_fraud() {
        hub.slash(node, claim.epoch, &e.to_string(), signed.claim, signed.also);
    }
    let s = Settlement {
        node: node.to_string(),
        epoch: claim.epoch,
        accepted: false,
        claimed_bytes: claim.bytes,
        credited_bytes: 0,
        entries: claim.count,
        opened: 0,
        reason: Some(e.to_string()),
        over_budget: Vec::new(),
        per_prefix: Vec::new(),
        already_paid: 0,
    };
    match hub
        .registry
        .settle(node, claim.epoch, |_| Decision::refusal(s))
    {
        Ok(Some(s)) => (StatusCode::UNPROCESSABLE_ENTITY, Json(s)).into_response(),
        Ok(None) => settled_already(hub, node, claim.epoch),
        Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

/// The answer for an epoch settled before: its settlement, as recorded.
fn settled_already(hub: &Hub, node: &str, epoch: u64) -> Response {
    match hub.registry.settled(node, epoch) {
        Ok(Some(s)) => (StatusCode::CONFLICT, Json(s)).into_response(),
        Ok(None) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "settlement vanished"),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Fetching ahead and seeking may run this far ahead of real time.
const PLAYBACK_BURST_SECS: u64 = 120;

/// Lowers each token's credit limit to what the HUB knows its video can
/// justify: `token_budget_factor` plays of the whole ladder, and no faster
/// than the ladder's bytes per second (every rendition together, so at
/// least the top rung's) since the token was issued, plus a burst. Tokens
/// not for one video (`/v/{id}/`) keep their budget.
fn limit_by_catalog(
    hub: &Hub,
    checked: &mut Checked,
    tokens: &[String],
    now: u64,
) -> Result<(), crate::HubError> {
    let factor = hub.config.hub.token_budget_factor as u64;
    for (i, token) in tokens.iter().enumerate() {
        let prefix = checked.tokens[i].prefix.clone();
        let Some(id) = prefix
            .strip_prefix("/v/")
            .and_then(|r| r.strip_suffix('/'))
            .filter(|id| !id.is_empty() && !id.contains('/'))
        else {
            continue;
        };
        let total = hub.catalog.total_bytes(id)?;
        let duration = hub.catalog.video(id)?.and_then(|v| v.duration);
        let issued = meshcast_control::token::issued_at(token);
        checked.limit(i, catalog_cap(total, duration, issued, now, factor));
    }
    Ok(())
}

/// The most one token for a video of `total` ladder bytes and `duration`
/// seconds may be credited by `now`: `factor` plays of the ladder, and
/// the ladder's bytes per second since `issued` plus a burst.
fn catalog_cap(
    total: u64,
    duration: Option<f64>,
    issued: Option<u64>,
    now: u64,
    factor: u64,
) -> u64 {
    let plays = total.saturating_mul(factor);
    match (duration.filter(|d| *d > 0.0), issued) {
        (Some(d), Some(issued)) => {
            let per_sec = (total as f64 / d).ceil() as u64;
            let elapsed = now.saturating_sub(issued) + PLAYBACK_BURST_SECS;
            plays.min(per_sec.saturating_mul(elapsed))
        }
        _ => plays,
    }
}

/// What an opened, audited claim earns, decided from the spend and paid
/// receipts `view` reads inside the settling transaction.
fn decide(
    node: &str,
    claim: &Claim,
    checked: &Checked,
    opened: u64,
    view: &dyn SettleView,
) -> Decision {
    let credit = audit::settle(checked, claim, |id| view.spent(id), |id| view.paid(id));
    let mut per_prefix: Vec<(String, u64)> = Vec::new();
    for (t, (_, bytes)) in checked.tokens.iter().zip(&credit.per_token) {
        match per_prefix.iter_mut().find(|(p, _)| *p == t.prefix) {
            Some((_, b)) => *b += bytes,
            None => per_prefix.push((t.prefix.clone(), *bytes)),
        }
    }
    Decision {
        settlement: Settlement {
            node: node.to_string(),
            epoch: claim.epoch,
            accepted: true,
            claimed_bytes: claim.bytes,
            credited_bytes: credit.bytes,
            entries: claim.count,
            opened,
            reason: None,
            over_budget: credit.over_budget,
            per_prefix,
            already_paid: credit.already_paid.len() as u64,
        },
        token_credits: credit
            .per_token
            .iter()
            .map(|(id, b)| (hex::encode(id), *b))
            .collect(),
        paid: credit.paid_now,
    }
}

/// Refuses (without settling: the edge keeps its acks and may claim once
/// admitted) a node that is unknown or has too little stake.
fn admitted(hub: &Hub, node: &str) -> Result<(), Box<Response>> {
    match hub.registry.node(node) {
        Ok(Some(n)) => {
            let a = hub.admission(&n);
            if a.admitted() {
                Ok(())
            } else {
                hub.metrics
                    .claims
                    .with_label_values(&["not_admitted"])
                    .inc();
                Err(Box::new(refuse(
                    StatusCode::FORBIDDEN,
                    Hub::not_admitted(&n, a),
                )))
            }
        }
        Ok(None) => Err(Box::new(refuse(
            StatusCode::NOT_FOUND,
            format!("node {node} is not registered"),
        ))),
        Err(e) => Err(Box::new(refuse(StatusCode::INTERNAL_SERVER_ERROR, e))),
    }
}

/// An edge's delivery claim for an epoch; answered with the challenge.
#[utoipa::path(post, path = "/v1/claims", tag = TAG_NODES,
    request_body(content = String, content_type = "application/octet-stream", description = "A signed envelope (domain `meshcast-claim-v1`) whose body is the epoch's claim: its receipts' Merkle root, count, bytes and tokens"),
    responses(
        (status = 200, description = "`{epoch, indices}`: the acks to open", body = Object),
        (status = 400, description = "Not a valid envelope (bad signature, stale timestamp, replayed nonce) or body", body = Object),
        (status = 403, description = "Not an admitted edge", body = Object),
        (status = 409, description = "This epoch is settled already: its settlement, as recorded", body = Object),
        (status = 422, description = "Refused (an epoch of the wrong length, a token its issuer may not sign, or one naming another edge): the refusal, recorded as the settlement", body = Object)))]
async fn claim(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let (env, key, node) = match open_envelope(&hub, messages::CLAIM, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Err(r) = admitted(&hub, &node) {
        return *r;
    }
    let claim: Claim = match serde_json::from_slice(&env.body) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("claim body: {e}")),
    };
    match hub.registry.settled(&node, claim.epoch) {
        Ok(Some(s)) => return (StatusCode::CONFLICT, Json(s)).into_response(),
        Ok(None) => {}
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
    // One challenge per epoch: the same claim again (a retry after a lost
    // answer or a crash) gets the same indices; a different one would let
    // an edge redraw until the sample misses what it made up, so the epoch
    // is refused.
    match hub.registry.pending(&node, claim.epoch) {
        Ok(Some(p)) if p.body == env.body => {
            return Json(Challenge {
                epoch: claim.epoch,
                indices: p.challenge,
            })
            .into_response()
        }
        Ok(Some(first)) => {
            let signed = Signed {
                claim: &body,
                also: Some(&first.envelope),
            };
            return reject(
                &hub,
                &node,
                &claim,
                AuditError::Rechallenged(claim.epoch),
                signed,
            );
        }
        Ok(None) => {}
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
    if let Err(e) = check(&hub, &claim, &key.to_bytes()) {
        let signed = Signed {
            claim: &body,
            also: None,
        };
        return reject(&hub, &node, &claim, e, signed);
    }
    let mut nonce = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut nonce) {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    let indices = audit::challenge(&env.body, &nonce, &claim);
    let pending = Pending {
        body: env.body.clone(),
        envelope: body.to_vec(),
        nonce,
        challenge: indices.clone(),
    };
    if let Err(e) = hub.registry.put_pending(&node, claim.epoch, &pending) {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    tracing::info!(
        node,
        epoch = claim.epoch,
        entries = claim.count,
        bytes = claim.bytes,
        challenged = indices.len(),
        "claim received; challenge sent"
    );
    Json(Challenge {
        epoch: claim.epoch,
        indices,
    })
    .into_response()
}

/// The openings the challenge asked for; answered with the settlement.
#[utoipa::path(post, path = "/v1/claims/open", tag = TAG_NODES,
    request_body(content = String, content_type = "application/octet-stream", description = "A signed envelope (domain `meshcast-opening-v1`) whose body is the challenged acks with their Merkle paths"),
    responses(
        (status = 200, description = "The settlement: bytes credited, or the reason the claim failed", body = Object),
        (status = 400, description = "Not a valid envelope (bad signature, stale timestamp, replayed nonce) or body", body = Object),
        (status = 404, description = "No claim for this epoch awaits opening", body = Object),
        (status = 409, description = "This epoch is settled already: its settlement, as recorded", body = Object)))]
async fn open(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let (env, key, node) = match open_envelope(&hub, messages::OPENING, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Err(r) = admitted(&hub, &node) {
        return *r;
    }
    let opening: Opening = match serde_json::from_slice(&env.body) {
        Ok(o) => o,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("opening body: {e}")),
    };
    match hub.registry.settled(&node, opening.epoch) {
        Ok(Some(s)) => return (StatusCode::CONFLICT, Json(s)).into_response(),
        Ok(None) => {}
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
    let pending = match hub.registry.pending(&node, opening.epoch) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!(
                    "no claim from {node} for epoch {} awaits opening; send the claim first",
                    opening.epoch
                ),
            )
        }
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let claim: Claim = match serde_json::from_slice(&pending.body) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let signed = Signed {
        claim: &pending.envelope,
        also: Some(&body),
    };
    let claimant = key.to_bytes();
    let mut checked = match check(&hub, &claim, &claimant) {
        Ok(c) => c,
        Err(e) => return reject(&hub, &node, &claim, e, signed),
    };
    let catalog_failed = std::cell::Cell::new(false);
    let published = |path: &str| published(&hub, path, &catalog_failed);
    if let Err(e) = audit::check_proof(
        &claim,
        &checked,
        &claimant,
        &pending.challenge,
        &opening,
        published,
    ) {
        if catalog_failed.get() {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the catalog is unavailable; send the opening again",
            );
        }
        return reject(&hub, &node, &claim, e, signed);
    }
    if let Err(e) = limit_by_catalog(&hub, &mut checked, &claim.tokens, now_secs()) {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    let opened = pending.challenge.len() as u64;
    let decided = hub.registry.settle(&node, claim.epoch, |view| {
        decide(&node, &claim, &checked, opened, view)
    });
    match decided {
        Ok(Some(s)) => {
            hub.reward(&s);
            hub.metrics.claims.with_label_values(&["accepted"]).inc();
            hub.metrics.credited_bytes.inc_by(s.credited_bytes);
            tracing::info!(
                node,
                epoch = claim.epoch,
                credited = s.credited_bytes,
                claimed = claim.bytes,
                opened = s.opened,
                "claim settled"
            );
            Json(s).into_response()
        }
        Ok(None) => settled_already(&hub, &node, claim.epoch),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_earns_no_faster_than_playback_nor_more_than_its_plays() {
        // A 600 s video whose ladder is 600 MB in all: 1 MB a second.
        let (total, d) = (600_000_000, Some(600.0));
        // Just issued: the burst (120 s) of playback.
        assert_eq!(catalog_cap(total, d, Some(1000), 1000, 4), 120_000_000);
        // Ten minutes on: ten minutes more.
        assert_eq!(catalog_cap(total, d, Some(1000), 1600, 4), 720_000_000);
        // Never more than 4 plays of the ladder, however long it is held.
        assert_eq!(catalog_cap(total, d, Some(0), 1_000_000, 4), 2_400_000_000);
        // Unknown duration or issue time: the plays alone.
        assert_eq!(catalog_cap(total, None, Some(1000), 1000, 4), 2_400_000_000);
        assert_eq!(catalog_cap(total, d, None, 1000, 4), 2_400_000_000);
    }
}
