//! Webhooks: an account registers URLs that get a signed POST when one of
//! its videos becomes ready or fails.
//!
//! The catalog writes each such event in the transaction that changes the
//! video (`catalog::VideoEvent`); this module fans events out to the
//! account's hooks as deliveries (`store`), and a task sends what is due,
//! retrying failures with backoff (`core::retry_delay`) until the
//! operator's `webhook_attempts` are spent. Delivery is at least once: the
//! `webhook-id` is the same on every attempt, for receivers to dedupe.
//!
//! A hook is the account's to aim, so it may not aim at the hub's own
//! networks: each attempt resolves the host, refuses private addresses
//! (unless `[hub] webhook_private_targets`), and connects to the address
//! it checked, so a DNS answer cannot change between check and use.
//! Redirects are not followed.

pub mod core;
mod store;

use crate::accounts::account_caller;
use crate::catalog::VideoEvent;
use crate::nodes::{now_ms, now_secs, refuse};
use crate::openapi::TAG_ACCOUNTS;
use crate::{Hub, HubError};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Delivery, Hook, Store};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Hooks one account may have.
const MAX_HOOKS: usize = 10;
/// An attempt that takes longer has failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts in flight at once, across all hooks.
const CONCURRENCY: usize = 16;

pub struct Webhooks {
    store: Store,
    /// Set when the catalog has recorded an event.
    wake: tokio::sync::Notify,
    /// Deliveries being attempted now (hook/event), never sent twice at once.
    in_flight: Mutex<HashSet<String>>,
    outcomes: prometheus::IntCounterVec,
}

impl Webhooks {
    pub fn open(path: &std::path::Path, registry: &prometheus::Registry) -> Result<Self, HubError> {
        Ok(Webhooks {
            store: Store::open(path)?,
            wake: tokio::sync::Notify::new(),
            in_flight: Mutex::default(),
            outcomes: crate::counter_vec(
                registry,
                "meshcast_hub_webhook_attempts_total",
                "Webhook delivery attempts by outcome (delivered, retry, gave_up)",
                "outcome",
            ),
        })
    }

    /// Tells the sender the catalog has a new event.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(delete))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewHook {
    /// Where to POST events: an `http` or `https` URL.
    url: String,
}

fn hook_view(hub: &Hub, h: &Hook) -> serde_json::Value {
    let deliveries = hub
        .webhooks
        .store
        .deliveries(Some(&h.id))
        .unwrap_or_default();
    let (pending, failed): (Vec<_>, Vec<_>) = deliveries.iter().partition(|d| d.next_at.is_some());
    let row = |d: &&Delivery| {
        json!({"id": d.event, "type": d.kind, "video": d.video, "attempts": d.attempts,
               "next_at_ms": d.next_at, "last": d.last})
    };
    json!({
        "id": h.id, "url": h.url, "created": h.created,
        "pending": pending.iter().map(row).collect::<Vec<_>>(),
        "failed": failed.iter().map(row).collect::<Vec<_>>(),
    })
}

/// `POST /v1/account/webhooks`: a new hook for the caller's account.
#[utoipa::path(post, path = "/v1/account/webhooks", operation_id = "add_webhook", tag = TAG_ACCOUNTS,
    request_body(content = NewHook, example = json!({"url": "https://example.com/hooks/meshcast"})),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "`webhook`: its `id`, `url` and `secret` (`whsec_…`, shown once). Each event is a POST of `{type, timestamp, data}` (`video.ready` or `video.failed`; `data` is the video as `GET /v1/videos/{id}` shows it) with the Standard Webhooks headers `webhook-id`, `webhook-timestamp` and `webhook-signature`", body = Object),
        (status = 400, description = "Not a usable URL", body = Object),
        (status = 401, description = "No or a bad API key", body = Object),
        (status = 409, description = "The account has its 10 hooks already", body = Object)))]
async fn create(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let account = match account_caller(&hub, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let req: NewHook = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("{e}; send {{\"url\": \"https://…\"}}"),
            )
        }
    };
    let url = match core::check_url(&req.url) {
        Ok(u) => u,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let hooks = match hub.webhooks.store.hooks() {
        Ok(h) => h,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if hooks.iter().filter(|h| h.account == account.id).count() >= MAX_HOOKS {
        return refuse(
            StatusCode::CONFLICT,
            format!("an account has at most {MAX_HOOKS} webhooks; delete one first"),
        );
    }
    let (mut id, mut secret) = ([0u8; 12], [0u8; 32]);
    if getrandom::fill(&mut id)
        .and(getrandom::fill(&mut secret))
        .is_err()
    {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    }
    let hook = Hook {
        id: format!("wh_{}", hex::encode(id)),
        account: account.id.clone(),
        url: url.to_string(),
        secret: core::encode_secret(&secret),
        created: now_secs(),
    };
    if let Err(e) = hub.webhooks.store.put_hook(&hook) {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    tracing::info!(account = %account.id, hook = %hook.id, url = %hook.url, "webhook added");
    let mut view = hook_view(&hub, &hook);
    view["secret"] = json!(hook.secret);
    (StatusCode::CREATED, Json(json!({ "webhook": view }))).into_response()
}

/// `GET /v1/account/webhooks`: the caller's hooks, what is still owed to
/// each and what was given up on.
#[utoipa::path(get, path = "/v1/account/webhooks", operation_id = "list_webhooks", tag = TAG_ACCOUNTS,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "`webhooks`: each with `id`, `url`, `created`, `pending` and `failed` deliveries (event id, type, video, attempts, the last attempt's outcome)", body = Object),
        (status = 401, description = "No or a bad API key", body = Object)))]
async fn list(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let account = match account_caller(&hub, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match hub.webhooks.store.hooks() {
        Ok(hooks) => {
            let rows: Vec<_> = hooks
                .iter()
                .filter(|h| h.account == account.id)
                .map(|h| hook_view(&hub, h))
                .collect();
            Json(json!({ "webhooks": rows })).into_response()
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `DELETE /v1/account/webhooks/{hook}`: removes a hook and what it is owed.
#[utoipa::path(delete, path = "/v1/account/webhooks/{hook}", operation_id = "delete_webhook", tag = TAG_ACCOUNTS,
    params(("hook" = String, Path, description = "The hook's id (`wh_…`)")),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such hook of yours", body = Object)))]
async fn delete(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let account = match account_caller(&hub, &headers) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match hub.webhooks.store.hook(&id) {
        Ok(Some(h)) if h.account == account.id => match hub.webhooks.store.delete_hook(&id) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        Ok(_) => refuse(StatusCode::NOT_FOUND, format!("no webhook {id:?} of yours")),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The `webhook-id` of catalog event `seq` of this hub: the same whenever
/// it is fanned out, different from any other hub's.
fn event_id(hub: &Hub, seq: u64) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&hub.key.public().to_bytes());
    h.update(&seq.to_le_bytes());
    format!("evt_{}", &h.finalize().to_hex()[..24])
}

/// Catalog events after the cursor become deliveries to their videos'
/// accounts' hooks.
fn fan_out(hub: &Hub) -> Result<usize, HubError> {
    let cursor = hub.webhooks.store.cursor()?;
    let events = hub.catalog.events_after(cursor, 256)?;
    let Some(last) = events.last().map(|e| e.seq) else {
        return Ok(0);
    };
    let hooks = hub.webhooks.store.hooks()?;
    let mut deliveries = Vec::new();
    for event in &events {
        deliveries.extend(deliveries_for(hub, event, &hooks)?);
    }
    hub.webhooks.store.fan_out(&deliveries, last)?;
    Ok(deliveries.len())
}

fn deliveries_for(
    hub: &Hub,
    event: &VideoEvent,
    hooks: &[Hook],
) -> Result<Vec<Delivery>, HubError> {
    let Some(video) = hub.catalog.video(&event.video)? else {
        return Ok(Vec::new()); // deleted since: nobody to tell about it
    };
    let Some(account) = video.account.as_deref() else {
        return Ok(Vec::new());
    };
    let timestamp =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(event.at));
    let body = json!({
        "type": event.kind,
        "timestamp": timestamp.to_string(),
        "data": crate::api::view(hub, &video),
    })
    .to_string();
    let due = now_ms();
    Ok(hooks
        .iter()
        .filter(|h| h.account == account)
        .map(|h| Delivery {
            hook: h.id.clone(),
            event: event_id(hub, event.seq),
            kind: event.kind.clone(),
            video: video.id.clone(),
            body: body.clone(),
            attempts: 0,
            next_at: Some(due),
            last: None,
            created: event.at,
        })
        .collect())
}

/// Fans out and sends what is due, until the hub stops.
pub async fn run(hub: Arc<Hub>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    loop {
        if let Err(e) = fan_out(&hub) {
            tracing::error!(error = %e, "webhooks: cannot read the catalog's events");
        }
        let now = now_ms();
        let mut next_due = now + 1000;
        match hub.webhooks.store.deliveries(None) {
            Ok(all) => {
                for d in all {
                    let Some(at) = d.next_at else { continue };
                    if at > now {
                        next_due = next_due.min(at);
                        continue;
                    }
                    let key = format!("{}/{}", d.hook, d.event);
                    if !lock(&hub.webhooks.in_flight).insert(key.clone()) {
                        continue;
                    }
                    let Ok(permit) = limit.clone().acquire_owned().await else {
                        return;
                    };
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        attempt(&hub, d).await;
                        lock(&hub.webhooks.in_flight).remove(&key);
                        drop(permit);
                        hub.webhooks.wake();
                    });
                }
            }
            Err(e) => tracing::error!(error = %e, "webhooks: cannot read deliveries"),
        }
        let wait = Duration::from_millis(next_due.saturating_sub(now_ms()).max(10));
        tokio::select! {
            _ = hub.webhooks.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = hub.stopping() => return,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One attempt at `d`, and its outcome recorded.
async fn attempt(hub: &Hub, mut d: Delivery) {
    let Ok(Some(hook)) = hub.webhooks.store.hook(&d.hook) else {
        return; // deleted meanwhile
    };
    let outcome = send(hub, &hook, &d).await;
    d.attempts += 1;
    let delivered = matches!(outcome, Ok(status) if (200..300).contains(&status));
    d.last = Some(match &outcome {
        Ok(status) => format!("HTTP {status}"),
        Err(e) => e.clone(),
    });
    let label = if delivered {
        "delivered"
    } else {
        let mut unit = [0u8; 8];
        let _ = getrandom::fill(&mut unit);
        let unit = (u64::from_le_bytes(unit) >> 11) as f64 / (1u64 << 53) as f64;
        let cfg = &hub.config.hub;
        match core::retry_delay(d.attempts, cfg.webhook_attempts, cfg.webhook_retry.0, unit) {
            Some(delay) => {
                d.next_at = Some(now_ms() + delay.as_millis() as u64);
                "retry"
            }
            None => {
                d.next_at = None;
                "gave_up"
            }
        }
    };
    hub.webhooks.outcomes.with_label_values(&[label]).inc();
    tracing::info!(hook = %d.hook, event = %d.event, kind = %d.kind, attempt = d.attempts,
        outcome = label, last = ?d.last, "webhook attempt");
    if let Err(e) = hub.webhooks.store.settle(&d, delivered) {
        tracing::error!(error = %e, "webhooks: cannot record an attempt");
    }
}

/// POSTs the delivery; its HTTP status, or why there is none.
async fn send(hub: &Hub, hook: &Hook, d: &Delivery) -> Result<u16, String> {
    let url = core::check_url(&hook.url)?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addrs: Vec<_> = tokio::net::lookup_host((bare.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let private = !hub.config.hub.webhook_private_targets;
    let addr = addrs
        .iter()
        .find(|a| !(private && core::is_private(a.ip())))
        .ok_or_else(|| format!("{host} resolves only to private addresses ({addrs:?}), which webhooks may not reach"))?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .resolve(&bare, *addr)
        .build()
        .map_err(|e| e.to_string())?;
    let timestamp = now_secs();
    let signature = core::sign(&hook.secret, &d.event, timestamp, d.body.as_bytes());
    let reply = client
        .post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("meshcast-hub/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", &d.event)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(d.body.clone())
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    Ok(reply.status().as_u16())
}
