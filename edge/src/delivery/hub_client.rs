//! The edge's side of talking to its HUB: register, heartbeat, and once
//! per epoch claim the acks, answer the challenge, and record the outcome.
//! If the HUB is away the edge keeps serving and keeps its acks in the log;
//! claims go out when the HUB is back.

use super::acklog;
use super::book::{now_ms, Book};
use super::Delivery;
use crate::metrics::Metrics;
use meshcast_control::audit::{build_claim, Opening};
use meshcast_control::envelope::Envelope;
use meshcast_control::messages::{self, Challenge, Heartbeat, HubInfo, Register};
use std::sync::Arc;
use std::time::Duration;

fn issuers_path(acks_dir: &std::path::Path) -> std::path::PathBuf {
    acks_dir.with_file_name("issuers.json")
}

fn network_path(acks_dir: &std::path::Path) -> std::path::PathBuf {
    acks_dir.with_file_name("network.json")
}

/// The network's epoch length last heard from the HUB, if one was saved.
pub fn saved_epoch_secs(acks_dir: &std::path::Path) -> Option<u64> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(network_path(acks_dir)).ok()?).ok()?;
    v["epoch_secs"].as_u64().filter(|s| *s > 0)
}

/// The issuer list last heard from the HUB, if one was saved.
pub fn saved_issuers(acks_dir: &std::path::Path) -> Vec<messages::Issuer> {
    std::fs::read(issuers_path(acks_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The node's signed line to its HUB: every call is an envelope sealed
/// with the node key.
#[derive(Clone)]
pub struct HubLink {
    http: reqwest::Client,
    pub hub: String,
    book: Arc<Book>,
}

impl HubLink {
    /// POSTs `body` sealed for `domain`; the status and body of the answer.
    pub async fn post(
        &self,
        path: &str,
        domain: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        let env = Envelope::seal(self.book.sealer.key(), domain, body, now_ms() / 1000)
            .map_err(|e| e.to_string())?;
        let resp = self
            .http
            .post(format!("{}{path}", self.hub))
            .header("content-type", "application/octet-stream")
            .body(env.encode())
            .send()
            .await
            .map_err(|e| format!("{}{path}: {e}", self.hub))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, bytes.to_vec()))
    }
}

pub struct HubClient {
    pub delivery: Arc<Delivery>,
    pub book: Arc<Book>,
    pub metrics: &'static Metrics,
    pub hub: String,
    pub advertise: String,
    pub heartbeat: Duration,
    pub capacity_bytes: u64,
    pub cache_bytes: Box<dyn Fn() -> u64 + Send + Sync>,
    http: reqwest::Client,
    /// The admission the HUB last reported, to log only changes.
    admission: parking_lot::Mutex<Option<messages::Admission>>,
}

#[derive(Debug)]
enum Outcome {
    /// The HUB decided (accepted, refused or already settled).
    Final(serde_json::Value),
    /// Try again later.
    Retry(String),
}

/// The HUB's answer about `epoch`, if it is one: a settlement for that
/// epoch saying whether it was accepted. Anything else — a proxy's error
/// page, a truncated body, another epoch's record — is not a decision, and
/// the acks are kept and claimed again (taking it as a refusal would
/// delete honest viewers' acks).
fn decision(epoch: u64, body: &[u8]) -> Outcome {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v["accepted"].is_boolean() && v["epoch"].as_u64() == Some(epoch) => {
            Outcome::Final(v)
        }
        _ => Outcome::Retry(format!(
            "unreadable answer about epoch {epoch}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

/// Writes `bytes` to `path` and makes it (and its directory entry)
/// durable before the caller deletes what it replaces.
fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Delays between attempts to reach the HUB: exponential from 1 s to 10 s,
/// each plus up to as much again at random, so the edges that lost a HUB
/// together do not all come back in the same instant. `seed` fixes the
/// randomness (tests); `None` draws it.
pub(crate) fn retry_delays(seed: Option<u64>) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    let builder = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .with_jitter();
    match seed {
        Some(seed) => builder.with_jitter_seed(seed),
        None => builder,
    }
    .build()
}

/// Past its last delay (never, as built): wait the longest.
const LONGEST_RETRY: Duration = Duration::from_secs(20);

/// The client the edge talks to its HUB with: rustls, the system's CAs
/// plus the PEM certificates in `extra_ca`, a 30 s limit per call.
pub fn http_client(extra_ca: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: holds no PEM certificate", path.display()));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

impl HubClient {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        delivery: Arc<Delivery>,
        book: Arc<Book>,
        metrics: &'static Metrics,
        hub: String,
        advertise: String,
        heartbeat: Duration,
        capacity_bytes: u64,
        cache_bytes: Box<dyn Fn() -> u64 + Send + Sync>,
        http: reqwest::Client,
    ) -> Self {
        HubClient {
            delivery,
            book,
            metrics,
            hub: hub.trim_end_matches('/').to_string(),
            advertise,
            heartbeat,
            capacity_bytes,
            cache_bytes,
            http,
            admission: parking_lot::Mutex::new(None),
        }
    }

    /// Says in the log when the HUB starts or stops counting this node.
    fn note_admission(&self, now: Option<messages::Admission>) {
        let mut last = self.admission.lock();
        if *last == now {
            return;
        }
        match now {
            Some(a) if !a.admitted() => tracing::warn!(
                stake = a.stake,
                needed = a.needed,
                "the HUB does not admit this edge: it steers no viewers here and pays no claims \
                 until the node key has the stake its role needs bonded (claims wait in the log)"
            ),
            Some(a) => tracing::info!(stake = a.stake, needed = a.needed, "admitted by the HUB"),
            None => {}
        }
        *last = now;
    }

    async fn post(
        &self,
        path: &str,
        domain: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        self.link().post(path, domain, body).await
    }

    /// What another part of the node needs to send the HUB signed messages.
    pub fn link(&self) -> HubLink {
        HubLink {
            http: self.http.clone(),
            hub: self.hub.clone(),
            book: self.book.clone(),
        }
    }

    /// Takes what a HUB answer says about the network: the epoch length
    /// (kept in `network.json`, used from the next start on), admission,
    /// and the issuer list.
    async fn learn(&self, body: &[u8]) {
        let Ok(info) = serde_json::from_slice::<HubInfo>(body) else {
            return;
        };
        self.note_admission(info.admission);
        if let Some(secs) = info.epoch_secs {
            self.adopt_epoch(secs).await;
        }
        self.learn_issuers(info);
    }

    /// Switches the ack book to the network's epoch length and records it
    /// (only once the book uses it: the log on disk is numbered by it).
    async fn adopt_epoch(&self, secs: u64) {
        if !self.book.adopt_epoch_ms(secs * 1000, now_ms()).await {
            tracing::warn!(
                network_secs = secs,
                edge_secs = self.book.epoch_ms() / 1000,
                "acks held under this edge's own epoch length are claimed under it first; the network's applies once they settle"
            );
            return;
        }
        if saved_epoch_secs(&self.book.dir) != Some(secs) {
            let body = serde_json::json!({ "epoch_secs": secs }).to_string();
            if let Err(e) = write_durably(&network_path(&self.book.dir), body.as_bytes()) {
                tracing::warn!(error = %e, "cannot save the network's epoch length");
            }
        }
    }

    /// Keeps the HUB's issuer list, and a copy on disk so a restart while
    /// the HUB is away still accepts its tokens.
    fn learn_issuers(&self, info: HubInfo) {
        if **self.delivery.hub_issuers.load() == info.issuers {
            return;
        }
        let path = issuers_path(&self.book.dir);
        let tmp = path.with_extension("tmp");
        let saved = serde_json::to_vec(&info.issuers)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = saved {
            tracing::warn!(error = %e, "cannot save the hub's issuer list");
        }
        self.metrics.hub_issuers.set(info.issuers.len() as i64);
        self.delivery.hub_issuers.store(Arc::new(info.issuers));
    }

    async fn register(&self) -> Result<(), String> {
        let reg = Register {
            addr: self.advertise.clone(),
            roles: vec!["edge".into()],
            capacity_bytes: self.capacity_bytes,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let body = serde_json::to_vec(&reg).map_err(|e| e.to_string())?;
        match self
            .post("/v1/nodes/register", messages::REGISTER, body)
            .await?
        {
            (200, b) => {
                self.learn(&b).await;
                Ok(())
            }
            (s, b) => Err(format!(
                "registration refused ({s}): {}",
                String::from_utf8_lossy(&b)
            )),
        }
    }

    /// Ok(false): the HUB no longer knows us; register again.
    async fn heartbeat(&self) -> Result<bool, String> {
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let hb = Heartbeat {
            load,
            cache_bytes: (self.cache_bytes)(),
            bytes_out: self.metrics.bytes_out.get(),
        };
        let body = serde_json::to_vec(&hb).map_err(|e| e.to_string())?;
        match self
            .post("/v1/nodes/heartbeat", messages::HEARTBEAT, body)
            .await?
        {
            (200, b) => {
                self.learn(&b).await;
                Ok(true)
            }
            (404, _) => Ok(false),
            (s, b) => Err(format!(
                "heartbeat refused ({s}): {}",
                String::from_utf8_lossy(&b)
            )),
        }
    }

    async fn claim(
        &self,
        epoch: u64,
        acks: Vec<(String, meshcast_control::receipt::Ack)>,
    ) -> Outcome {
        let committed = build_claim(epoch, self.book.epoch_ms() / 1000, acks);
        let body = match serde_json::to_vec(&committed.claim) {
            Ok(b) => b,
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        let challenge: Challenge = match self.post("/v1/claims", messages::CLAIM, body).await {
            Ok((200, b)) => match serde_json::from_slice(&b) {
                Ok(c) => c,
                Err(e) => return Outcome::Retry(format!("challenge: {e}")),
            },
            Ok((409 | 422, b)) => return decision(epoch, &b),
            Ok((s, b)) => {
                return Outcome::Retry(format!("claim ({s}): {}", String::from_utf8_lossy(&b)))
            }
            Err(e) => return Outcome::Retry(e),
        };
        let opening: Opening = match committed.open(&challenge.indices) {
            Ok(o) => o,
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        let body = match serde_json::to_vec(&opening) {
            Ok(b) => b,
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        match self.post("/v1/claims/open", messages::OPENING, body).await {
            Ok((200 | 409 | 422, b)) => decision(epoch, &b),
            Ok((s, b)) => Outcome::Retry(format!("opening ({s}): {}", String::from_utf8_lossy(&b))),
            Err(e) => Outcome::Retry(e),
        }
    }

    /// Claims every sealed epoch, oldest first; stops at the first that
    /// must be retried (the HUB is probably away).
    async fn settle_sealed(&self) -> Result<(), String> {
        loop {
            let next = {
                let epochs = self.book.epochs.read().await;
                epochs.sealed.iter().next().map(|(e, a)| (*e, a.clone()))
            };
            let Some((epoch, acks)) = next else {
                return Ok(());
            };
            let count = acks.len();
            let outcome = if acks.is_empty() {
                Outcome::Final(serde_json::json!({"empty": true, "epoch": epoch}))
            } else {
                self.claim(epoch, acks).await
            };
            match outcome {
                Outcome::Retry(why) => return Err(why),
                Outcome::Final(result) => {
                    let accepted = result["accepted"].as_bool().unwrap_or(false);
                    let label = if accepted { "accepted" } else { "refused" };
                    self.metrics.claims.with_label_values(&[label]).inc();
                    if accepted {
                        tracing::info!(epoch, acks = count, credited = %result["credited_bytes"],
                            "epoch settled by the hub");
                    } else {
                        tracing::warn!(epoch, acks = count, reason = %result["reason"],
                            "the hub refused this epoch's claim");
                    }
                    let dir = &self.book.dir;
                    let text = serde_json::to_vec_pretty(&result).unwrap_or_default();
                    if let Err(e) = write_durably(&acklog::settled_path(dir, epoch), &text) {
                        // Keep the log: the HUB answers a claim again with
                        // the same settlement.
                        return Err(format!("cannot record settled epoch {epoch}: {e}"));
                    }
                    self.book.log.close(epoch);
                    let _ = std::fs::remove_file(acklog::log_path(dir, epoch));
                    self.book.epochs.write().await.sealed.remove(&epoch);
                    self.book.prune_settled(now_ms());
                }
            }
        }
    }

    pub async fn run(self) {
        let mut registered = false;
        let mut beat_delays = retry_delays(None);
        let mut claim_delays = retry_delays(None);
        let mut next_beat = tokio::time::Instant::now();
        let mut next_claim = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = tokio::time::Instant::now();
            if now >= next_beat {
                let result = if registered {
                    self.heartbeat().await.map(|known| registered = known)
                } else {
                    self.register().await.map(|()| {
                        registered = true;
                        tracing::info!(hub = %self.hub, node = %self.book.sealer.key().id(), "registered with the hub");
                    })
                };
                self.metrics.hub_up.set(i64::from(result.is_ok()));
                match result {
                    Ok(()) => {
                        beat_delays = retry_delays(None);
                        next_beat = now
                            + if registered {
                                self.heartbeat
                            } else {
                                Duration::ZERO
                            };
                    }
                    Err(e) => {
                        let wait = beat_delays.next().unwrap_or(LONGEST_RETRY);
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot reach the hub; serving on, acks stay in the log");
                        next_beat = now + wait;
                    }
                }
            }
            let sealed = self.book.seal_due(now_ms()).await;
            if sealed > 0 {
                tracing::debug!(sealed, "epochs closed for acks");
            }
            if registered && now >= next_claim {
                match self.settle_sealed().await {
                    Ok(()) => claim_delays = retry_delays(None),
                    Err(e) => {
                        let wait = claim_delays.next().unwrap_or(LONGEST_RETRY);
                        tracing::warn!(error = %e, retry_in = ?wait, "claim not settled; will retry");
                        next_claim = now + wait;
                    }
                }
            }
        }
    }
}

/// Runs the client as a Pingora background service, stopping with the server.
pub struct HubService(pub parking_lot::Mutex<Option<HubClient>>);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for HubService {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let Some(client) = self.0.lock().take() else {
            return;
        };
        tokio::select! {
            _ = client.run() => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;

    #[test]
    fn retries_back_off_with_jitter() {
        let a: Vec<Duration> = retry_delays(Some(1)).take(12).collect();
        let b: Vec<Duration> = retry_delays(Some(2)).take(12).collect();
        assert_ne!(a, b, "two edges do not retry in lockstep");
        for (i, d) in a.iter().enumerate() {
            let base = Duration::from_secs(1 << i.min(4)).min(Duration::from_secs(10));
            assert!(
                *d >= base && *d < base * 2,
                "attempt {i}: {d:?} for base {base:?}"
            );
        }
        assert!(a[11] >= Duration::from_secs(10) && a[11] <= LONGEST_RETRY);
    }

    #[test]
    fn only_a_settlement_for_the_epoch_is_final() {
        let ok = br#"{"node":"n","epoch":7,"accepted":false,"reason":"late"}"#;
        assert!(matches!(decision(7, ok), Outcome::Final(_)));
        for body in [
            &b"<html>502 Bad Gateway</html>"[..],
            b"",
            br#"{"epoch":7}"#,
            br#"{"epoch":8,"accepted":true}"#,
            br#"{"node":"n","epoch":7,"accepted":tr"#,
        ] {
            assert!(
                matches!(decision(7, body), Outcome::Retry(_)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
