//! WebRTC signalling: the HUB relays a viewer's SDP offer to a node that
//! opened no port and returns the node's answer.
//!
//! - `POST /v1/rtc/sessions` `{token, offer}` (a viewer): the token must be
//!   one a trusted issuer signed and unexpired; the offer goes to the first
//!   edge the token names (the HUB's own steering, so relaying cannot route
//!   pay elsewhere) that is admitted and polling now; the answer comes back
//!   within `ANSWER_WAIT` or the viewer gets 504 and plays over HTTPS.
//! - `POST /v1/rtc/poll` (a node, signed): the offers waiting for it, within
//!   `LONG_POLL`, or 204.
//! - `POST /v1/rtc/answer` (a node, signed): its answer to one offer it was
//!   given; from any other node it is refused.
//!
//! The board (`Board`) is sans-IO: time comes in as an argument.

use crate::nodes::{now_secs, open_envelope, refuse};
use crate::openapi::{TAG_NODES, TAG_PLAYBACK};
use crate::Hub;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use meshcast_control::rtc::{self as wire, Answer, Offer, Offers};
use meshcast_control::token;
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use utoipa_axum::{router::OpenApiRouter, routes};

/// How long a node's poll waits for an offer before answering 204.
const LONG_POLL: Duration = Duration::from_secs(20);
/// A node counts as polling this long after its last poll began or ended.
const POLL_FRESH_SECS: u64 = 45;
/// How long a viewer waits for the node's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// Offers queued per node; more get 503 (the node is not keeping up).
const MAX_QUEUED: usize = 64;
/// Largest SDP offer accepted (a browser's is 1–4 KiB).
const MAX_OFFER: usize = 32 * 1024;

struct Waiting {
    node: String,
    reply: oneshot::Sender<Answer>,
}

/// Who polls, what waits for whom.
#[derive(Default)]
pub struct Board {
    polled: HashMap<String, u64>,
    queued: HashMap<String, VecDeque<Offer>>,
    waiting: HashMap<String, Waiting>,
}

#[derive(Debug, PartialEq)]
pub enum AnswerError {
    /// No such offer (never, or it timed out).
    Unknown,
    /// The offer went to another node.
    NotYours,
}

impl Board {
    pub fn polled(&mut self, node: &str, now: u64) {
        self.polled.insert(node.to_string(), now);
    }

    pub fn is_polling(&self, node: &str, now: u64) -> bool {
        self.polled
            .get(node)
            .is_some_and(|t| now.saturating_sub(*t) < POLL_FRESH_SECS)
    }

    /// Queues `offer` for `node`; the answer arrives on the receiver.
    pub fn relay(&mut self, node: &str, offer: Offer) -> Option<oneshot::Receiver<Answer>> {
        let q = self.queued.entry(node.to_string()).or_default();
        if q.len() >= MAX_QUEUED {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(
            offer.id.clone(),
            Waiting {
                node: node.to_string(),
                reply: tx,
            },
        );
        q.push_back(offer);
        Some(rx)
    }

    /// The viewer stopped waiting: forget the offer.
    pub fn forget(&mut self, id: &str) {
        if let Some(w) = self.waiting.remove(id) {
            if let Some(q) = self.queued.get_mut(&w.node) {
                q.retain(|o| o.id != id);
            }
        }
    }

    pub fn take_offers(&mut self, node: &str) -> Vec<Offer> {
        self.queued
            .get_mut(node)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default()
    }

    pub fn answer(&mut self, node: &str, answer: Answer) -> Result<(), AnswerError> {
        match self.waiting.get(&answer.id) {
            None => Err(AnswerError::Unknown),
            Some(w) if w.node != node => Err(AnswerError::NotYours),
            Some(_) => {
                let w = self.waiting.remove(&answer.id).expect("looked up above");
                let _ = w.reply.send(answer);
                Ok(())
            }
        }
    }
}

pub struct Signalling {
    pub board: std::sync::Mutex<Board>,
    /// Woken when an offer is queued (polls wait on it).
    pub changed: tokio::sync::Notify,
    rate: crate::tokens::RateLimit,
}

impl Signalling {
    pub fn new(per_minute: u32) -> Signalling {
        Signalling {
            board: Default::default(),
            changed: Default::default(),
            rate: crate::tokens::RateLimit::new(per_minute),
        }
    }

    /// Whether `node` takes WebRTC offers now (it is polling for them).
    pub fn is_polling(&self, node: &str, now: u64) -> bool {
        self.board().is_polling(node, now)
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(session))
        .routes(routes!(poll))
        .routes(routes!(answer))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    /// A playback token (`v4.public…`) for the video.
    token: String,
    /// The browser's `RTCSessionDescription`: `{"type": "offer", "sdp": …}`.
    #[schema(value_type = Object)]
    offer: serde_json::Value,
}

fn new_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS has randomness");
    hex::encode(b)
}

/// The node to relay to: the first edge `claims` names that polls now.
fn pick(
    hub: &Hub,
    claims: &token::TokenClaims,
    now: u64,
) -> Result<Option<(String, [u8; 32])>, String> {
    let candidates = hub.edge_candidates().map_err(|e| e.to_string())?;
    let board = hub.rtc.board();
    Ok(claims.edges.iter().find_map(|key| {
        candidates
            .iter()
            .find(|c| c.key == *key && board.is_polling(&c.id, now))
            .map(|c| (c.id.clone(), c.key))
    }))
}

/// A viewer's WebRTC offer, relayed to an edge its token names.
#[utoipa::path(post, path = "/v1/rtc/sessions", tag = TAG_PLAYBACK,
    request_body(content = SessionRequest),
    responses(
        (status = 200, description = "`answer` (the edge's SDP answer) and `node` (`id`, `key`)", body = Object),
        (status = 400, description = "Not a session request", body = Object),
        (status = 403, description = "The token is not valid", body = Object),
        (status = 413, description = "The offer is too large", body = Object),
        (status = 429, description = "Too many sessions for this address", body = Object),
        (status = 502, description = "The edge refused the offer", body = Object),
        (status = 503, description = "No edge the token names takes offers now; play over HTTPS", body = Object),
        (status = 504, description = "The edge did not answer in time; play over HTTPS", body = Object)))]
async fn session(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if body.len() > MAX_OFFER {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("offer over {MAX_OFFER} bytes"),
        );
    }
    let req: SessionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("{e}; send {{\"token\": \"v4.public…\", \"offer\": {{\"type\": \"offer\", \"sdp\": …}}}}"),
            )
        }
    };
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let ip = crate::tokens::client_ip(peer.ip(), forwarded, &hub.trusted_proxies);
    if !hub.rtc.rate.allow(ip) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "10")],
            Json(json!({"error": format!("{ip} asked for too many WebRTC sessions")})),
        )
            .into_response();
    }
    let now = now_secs();
    let issuers = hub.issuers();
    let trusted = |k: &[u8; 32]| meshcast_control::messages::issuer_known(&issuers, k);
    let claims = match token::verify(&req.token, trusted, now) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::FORBIDDEN, format!("token: {e}")),
    };
    let (node, key) = match pick(&hub, &claims, now) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "10")], Json(json!({"error": "no edge this token names is taking WebRTC offers now; play over HTTPS"}))).into_response()
        }
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let id = new_id();
    let Some(rx) = hub.rtc.board().relay(
        &node,
        Offer {
            id: id.clone(),
            offer: req.offer,
        },
    ) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {node} has too many offers waiting"),
        );
    };
    hub.rtc.changed.notify_waiters();
    let answered = tokio::time::timeout(ANSWER_WAIT, rx).await;
    hub.rtc.board().forget(&id);
    match answered {
        Ok(Ok(Answer {
            answer: Some(sdp), ..
        })) => {
            tracing::info!(%node, session = %id, "WebRTC session answered");
            Json(json!({"answer": sdp, "node": {"id": node, "key": hex::encode(key)}}))
                .into_response()
        }
        Ok(Ok(Answer { error, .. })) => refuse(
            StatusCode::BAD_GATEWAY,
            format!(
                "node {node} refused the offer: {}",
                error.unwrap_or_default()
            ),
        ),
        Ok(Err(_)) | Err(_) => refuse(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "node {node} did not answer within {}s; play over HTTPS",
                ANSWER_WAIT.as_secs()
            ),
        ),
    }
}

/// A node's long poll for the offers relayed to it.
#[utoipa::path(post, path = "/v1/rtc/poll", tag = TAG_NODES,
    request_body(content = String, content_type = "application/octet-stream", description = "A signed envelope (domain `meshcast-rtc-poll-v1`) whose body is empty"),
    responses(
        (status = 200, description = "`offers`: each with its `id` and SDP `offer`", body = Object),
        (status = 204, description = "None arrived within the poll"),
        (status = 400, description = "Not a valid envelope (bad signature, stale timestamp, replayed nonce) or body", body = Object),
        (status = 403, description = "Not an admitted edge", body = Object)))]
async fn poll(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let (_, _, id) = match open_envelope(&hub, wire::POLL, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Err(r) = crate::nodes::admitted_node(&hub, &id, None) {
        return *r;
    }
    let _waiting = hub.long_poll("rtc");
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    loop {
        let changed = hub.rtc.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let offers = {
            let mut board = hub.rtc.board();
            board.polled(&id, now_secs());
            board.take_offers(&id)
        };
        if !offers.is_empty() {
            return Json(Offers { offers }).into_response();
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {
                hub.rtc.board().polled(&id, now_secs());
                return StatusCode::NO_CONTENT.into_response();
            }
            // Stopping: no offer will come through this hub.
            _ = hub.stopping() => return StatusCode::NO_CONTENT.into_response(),
        }
    }
}

/// A node's answer to one offer relayed to it.
#[utoipa::path(post, path = "/v1/rtc/answer", tag = TAG_NODES,
    request_body(content = String, content_type = "application/octet-stream", description = "A signed envelope (domain `meshcast-rtc-answer-v1`) whose body is JSON `{{id, answer}}` or `{{id, error}}`"),
    responses(
        (status = 200, description = "Passed to the viewer"),
        (status = 400, description = "Not a valid envelope (bad signature, stale timestamp, replayed nonce) or body", body = Object),
        (status = 403, description = "That offer was relayed to another node", body = Object),
        (status = 410, description = "No viewer waits for it any more", body = Object)))]
async fn answer(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let (env, _, id) = match open_envelope(&hub, wire::ANSWER, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let answer: Answer = match serde_json::from_slice(&env.body) {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("answer: {e}")),
    };
    match hub.rtc.board().answer(&id, answer) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(AnswerError::Unknown) => refuse(
            StatusCode::GONE,
            "no viewer waits for that offer (it timed out)",
        ),
        Err(AnswerError::NotYours) => refuse(
            StatusCode::FORBIDDEN,
            "that offer was relayed to another node",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &str) -> Offer {
        Offer {
            id: id.into(),
            offer: json!({"type": "offer", "sdp": "v=0"}),
        }
    }

    fn reply(id: &str) -> Answer {
        Answer {
            id: id.into(),
            answer: Some(json!({"type": "answer"})),
            error: None,
        }
    }

    #[test]
    fn polling_is_fresh_for_a_while_after_the_last_poll() {
        let mut b = Board::default();
        assert!(!b.is_polling("n1", 100));
        b.polled("n1", 100);
        assert!(b.is_polling("n1", 100 + POLL_FRESH_SECS - 1));
        assert!(!b.is_polling("n1", 100 + POLL_FRESH_SECS));
    }

    #[test]
    fn an_answer_reaches_the_viewer_only_from_the_node_it_was_relayed_to() {
        let mut b = Board::default();
        let mut rx = b.relay("n1", offer("o1")).expect("queued");
        assert_eq!(b.take_offers("n2"), vec![]);
        assert_eq!(b.take_offers("n1"), vec![offer("o1")]);
        assert_eq!(b.answer("n2", reply("o1")), Err(AnswerError::NotYours));
        assert!(
            rx.try_recv().is_err(),
            "a stranger's answer is not delivered"
        );
        assert_eq!(b.answer("n1", reply("o1")), Ok(()));
        assert_eq!(rx.try_recv().expect("delivered").id, "o1");
        assert_eq!(
            b.answer("n1", reply("o1")),
            Err(AnswerError::Unknown),
            "once"
        );
    }

    #[test]
    fn a_forgotten_offer_is_neither_polled_nor_answered() {
        let mut b = Board::default();
        let _rx = b.relay("n1", offer("o1")).expect("queued");
        b.forget("o1");
        assert_eq!(b.take_offers("n1"), vec![]);
        assert_eq!(b.answer("n1", reply("o1")), Err(AnswerError::Unknown));
    }

    #[test]
    fn a_node_that_does_not_poll_gets_a_bounded_queue() {
        let mut b = Board::default();
        let kept: Vec<_> = (0..MAX_QUEUED)
            .map(|i| b.relay("n1", offer(&i.to_string())).expect("queued"))
            .collect();
        assert!(b.relay("n1", offer("over")).is_none());
        assert_eq!(kept.len(), MAX_QUEUED);
    }
}
