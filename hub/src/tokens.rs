//! `POST /v1/videos/{id}/tokens`: playback tokens for a viewer's session key.
//!
//! A `public` video gets a HUB-signed token for any session key that asks,
//! rate-limited per client address (behind a trusted proxy: the address it
//! forwards). The token names the edges the HUB steered the viewer to
//! (`admission::steer`): only they serve it and are paid for it, so minting
//! tokens cannot route pay to an edge of one's own. A `signed` video's
//! tokens come from its owner's key (`meshcast token`), never from here.

use crate::catalog::{Policy, Status};
use crate::nodes::{now_secs, refuse};
use crate::openapi::TAG_PLAYBACK;
use crate::Hub;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshcast_control::token::{self, TokenClaims};
use serde::Deserialize;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new().routes(routes!(issue))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// The viewer's Ed25519 session public key, 64 hex digits.
    session: String,
    /// Seconds the token lives (capped by the hub's token_ttl).
    ttl: Option<u64>,
    /// Byte budget (capped by the hub's default for the video).
    budget: Option<u64>,
}

/// Token bucket per client address (governor's GCRA, keyed): `rate`
/// tokens a minute, burst `rate`.
pub struct RateLimit {
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
}

/// Above this many addresses, the limiter forgets those whose buckets are
/// full again (they have not asked for a while).
const RATE_KEYS_PRUNE_AT: usize = 100_000;

impl RateLimit {
    /// `per_minute` tokens a minute per address, in bursts of as many.
    pub fn new(per_minute: u32) -> RateLimit {
        let n = std::num::NonZeroU32::new(per_minute.max(1)).expect("at least 1");
        RateLimit {
            limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(n)),
        }
    }

    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.limiter.len() > RATE_KEYS_PRUNE_AT {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).is_ok()
    }
}

/// The viewer's address. The socket's peer, unless the peer is one of
/// `[hub] trusted_proxies`: then `X-Forwarded-For` is read from the right
/// (each trusted proxy appends the address it saw), skipping trusted
/// proxies, and the first address that is not one is the client. Entries
/// left of it are whatever the client wrote and are never believed; a
/// registered node's self-declared address earns no trust.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or("").rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // Garbage: the hop that appended it is the last one we believe.
            Err(_) => break,
        }
    }
    client
}

/// A playback token for a `public` video, for the viewer's session key,
/// naming the edges the hub steers this viewer to.
#[utoipa::path(post, path = "/v1/videos/{id}/tokens", tag = TAG_PLAYBACK,
    params(("id" = String, Path, description = "The video's id")),
    request_body(content = TokenRequest),
    responses(
        (status = 200, description = "`token` (PASETO v4.public), `expires`, `budget` (bytes), `prefix`, `edges` (`url`, `key`: the edges steered to, nearest first), and the tokenized `hls` and `dash` URLs at each", body = Object),
        (status = 400, description = "Not a token request, or `session` is not an Ed25519 public key", body = Object),
        (status = 403, description = "The video is `signed`: its owner issues its tokens", body = Object),
        (status = 404, description = "No such video", body = Object),
        (status = 409, description = "Not ready yet", body = Object),
        (status = 429, description = "Too many tokens for this address; `Retry-After`", body = Object),
        (status = 503, description = "No admitted edge is up to serve it", body = Object)))]
async fn issue(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("token request: {e}; send {{\"session\": \"<64 hex digits>\"}}"),
            )
        }
    };
    let mut session = [0u8; 32];
    if hex::decode_to_slice(&req.session, &mut session).is_err()
        || !meshcast_control::ed25519::is_key(&session)
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "session must be an Ed25519 public key, 64 hex digits",
        );
    }
    let video = match hub.catalog.video(&id) {
        Ok(Some(v)) => v,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, format!("no video {id:?}")),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if video.policy == Policy::Signed {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "video {id} is signed: its owner's key issues tokens (meshcast token), not the hub"
            ),
        );
    }
    if video.status != Status::Ready {
        return refuse(StatusCode::CONFLICT, format!("video {id} is not ready yet"));
    }
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let ip = client_ip(peer.ip(), forwarded, &hub.trusted_proxies);
    let now = now_secs();
    let per_minute = hub.config.hub.token_rate;
    if !hub.rate_limit.allow(ip) {
        hub.metrics
            .tokens
            .with_label_values(&["rate_limited"])
            .inc();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "10")],
            Json(
                json!({"error": format!("{ip} asked for more than {per_minute} tokens a minute")}),
            ),
        )
            .into_response();
    }
    let edges = match hub.edge_candidates() {
        Ok(c) => crate::admission::steer(c, ip, &id, crate::admission::STEERED_EDGES),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if edges.is_empty() {
        hub.metrics.tokens.with_label_values(&["no_edge"]).inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "10")],
            Json(json!({"error": "no admitted edge is up to serve this video: edges must register with the hub and have the stake their role needs bonded (GET /v1/nodes shows each one's)"})),
        )
            .into_response();
    }
    let size = match hub.catalog.total_bytes(&id) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    // Enough to watch every rendition a few times over.
    let default_budget = size.saturating_mul(hub.config.hub.token_budget_factor as u64);
    let max_ttl = hub.config.hub.token_ttl.0.as_secs();
    let claims = TokenClaims {
        issuer: hub.key.public().to_bytes(),
        prefix: format!("/v/{id}/"),
        expires: now + req.ttl.unwrap_or(max_ttl).min(max_ttl),
        budget: req.budget.unwrap_or(default_budget).min(default_budget),
        session,
        edges: edges.iter().map(|e| e.key).collect(),
    };
    match token::issue(&hub.key, &claims, now) {
        Ok(t) => {
            hub.metrics.tokens.with_label_values(&["issued"]).inc();
            let urls = |suffix: &str| -> Vec<String> {
                edges
                    .iter()
                    .map(|e| format!("{}/t/{t}/v/{id}/{suffix}", e.addr.trim_end_matches('/')))
                    .collect()
            };
            Json(json!({
                "token": t,
                "expires": claims.expires,
                "budget": claims.budget,
                "prefix": claims.prefix,
                "edges": edges.iter().map(|e| json!({"url": e.addr, "key": hex::encode(e.key)})).collect::<Vec<_>>(),
                "path": format!("/t/{t}/v/{id}/master.m3u8"),
                "hls": urls("master.m3u8"),
                "dash": urls("manifest.mpd"),
            }))
            .into_response()
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A stranger's header changes nothing (a self-registered "node" too).
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        // Through one trusted edge: the address it appended.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        // A client that writes its own header cannot pick its address.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                Some("1.1.1.1, 2.2.2.2, 198.51.100.7"),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Two trusted hops: skipped from the right.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("198.51.100.7, 10.0.0.3"), &trusted),
            ip("198.51.100.7")
        );
        // Garbage or nothing: the last believed hop.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("junk"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("198.51.100.7, junk"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
    }

    #[test]
    fn each_address_gets_its_own_bucket() {
        let limit = RateLimit::new(3);
        let (a, b): (IpAddr, IpAddr) = (
            "198.51.100.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        );
        assert!((0..3).all(|_| limit.allow(a)), "a burst of the rate");
        assert!(!limit.allow(a), "then refused");
        assert!(limit.allow(b), "another address is not affected");
    }
}
