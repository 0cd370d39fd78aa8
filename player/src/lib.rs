//! meshcast-player is the Rust client library for watching a meshcast
//! stream the way a player does — master playlist, one rendition (and its
//! audio), init segment, every media segment in order — while checking
//! each `Meshcast-Receipt` against what arrived and acknowledging it with
//! the session key its token names. `meshcast play` is its front end.
//! It owns HTTP fetching and ack batching; protocol rules (receipts, acks,
//! tokens) come from `meshcast-control`, and it keeps no state on disk.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::SigningKey;
use m3u8_rs::Playlist;
use meshcast_control::receipt::{self, Ack, SealedReceipt};
use meshcast_control::token::token_id;
use serde::Serialize;
use std::time::{Duration, Instant};
use url::Url;

pub mod rtc;

#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    #[error("{0}")]
    Usage(String),
    #[error("{url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{url}: not a playlist this player understands: {reason}")]
    Playlist { url: String, reason: String },
    #[error("{url}: bad receipt: {reason}")]
    Receipt { url: String, reason: String },
    #[error("hub: {0}")]
    Hub(String),
}

pub struct Options {
    pub url: String,
    /// Get a token for a fresh session key and acknowledge receipts.
    pub ack: bool,
    /// HUB base URL; asked of the edge (`/v1/edge`) when not given.
    pub hub: Option<String>,
    /// Wait each segment's duration, like a player at the live edge.
    pub realtime: bool,
    /// Receipts per ack batch.
    pub batch: usize,
    /// Fetch over a WebRTC data channel to a node the HUB picks (HTTP per
    /// request when the channel fails).
    pub webrtc: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub url: String,
    pub bytes: u64,
    pub requests: u64,
    pub segments: u64,
    pub receipts: u64,
    /// Bytes of the responses that carried a receipt (the paid media;
    /// playlists carry none).
    pub receipt_bytes: u64,
    pub acks_sent: u64,
    pub acks_accepted: u64,
    pub acked_bytes: u64,
    pub refused: Vec<String>,
    /// Responses that came over the WebRTC data channel.
    pub rtc_responses: u64,
    /// Requests the channel failed and HTTP answered instead.
    pub http_fallbacks: u64,
    /// The node the WebRTC channel went to.
    pub rtc_node: Option<String>,
    pub seconds: f64,
}

/// One viewer's connection to an edge: fetches, receipt checks, and (with
/// a session key) acks in batches. `play` drives it like a player; the
/// loadtest's simulated viewers drive it with their own ABR and buffer.
pub struct Client {
    http: reqwest::Client,
    key: Option<SigningKey>,
    token: Option<String>,
    /// Keys of the edges the HUB steered this viewer to (empty: any edge);
    /// a receipt must name one of them.
    edge_keys: Vec<[u8; 32]>,
    pending: Vec<(String, String)>,
    base: Url,
    batch: usize,
    report: Report,
    rtc: Option<rtc::RtcChannel>,
}

/// A response, whichever way it came.
struct Fetched {
    status: u16,
    receipt: Option<String>,
    body: Vec<u8>,
}

/// `(edge base, video id, path after /v/{id}/)` of a playback URL.
fn split_url(url: &Url) -> Option<(Url, String, String)> {
    let path = url.path();
    let after_t = match path.strip_prefix("/t/") {
        Some(rest) => &rest[rest.find('/')?..],
        None => path,
    };
    let rest = after_t.strip_prefix("/v/")?;
    let slash = rest.find('/')?;
    let mut base = url.clone();
    base.set_path("/");
    base.set_query(None);
    Some((
        base,
        rest[..slash].to_string(),
        rest[slash + 1..].to_string(),
    ))
}

fn session_key() -> Result<SigningKey, PlayError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| PlayError::Usage(format!("no randomness: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

impl Client {
    /// A client without token or session key: fetches and checks any
    /// receipt that comes, acknowledges nothing.
    pub fn plain(http: reqwest::Client, base: Url) -> Client {
        Client {
            http,
            key: None,
            token: None,
            edge_keys: Vec::new(),
            pending: Vec::new(),
            base,
            batch: 16,
            report: Report::default(),
            rtc: None,
        }
    }

    /// Over the data channel when there is one (HTTP when it fails), else
    /// HTTP.
    async fn fetch(&mut self, url: &Url) -> Result<Fetched, String> {
        if let Some(ch) = &self.rtc {
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let host = url.host_str().unwrap_or("").to_string();
            match ch
                .request("GET", &path, vec![("host".into(), host)], None)
                .await
            {
                Ok(r) => {
                    self.report.rtc_responses += 1;
                    return Ok(Fetched {
                        status: r.status,
                        receipt: r.header("meshcast-receipt").map(str::to_string),
                        body: r.body,
                    });
                }
                Err(e) => {
                    // A channel that failed once is done: the rest goes over
                    // HTTP at once instead of each waiting out a timeout.
                    tracing::warn!(%url, error = %e, "WebRTC fetch failed; over HTTP from now on");
                    self.report.http_fallbacks += 1;
                    self.drop_channel();
                }
            }
        }
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let receipt = resp
            .headers()
            .get("meshcast-receipt")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
        Ok(Fetched {
            status,
            receipt,
            body,
        })
    }

    pub fn report(&self) -> &Report {
        &self.report
    }

    /// GETs `url`; checks its receipt (if any) and queues its ack.
    pub async fn get(&mut self, url: &Url) -> Result<Vec<u8>, PlayError> {
        let fail = |reason: String| PlayError::Fetch {
            url: url.to_string(),
            reason,
        };
        let Fetched {
            status,
            receipt,
            body,
        } = self.fetch(url).await.map_err(fail)?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body);
            return Err(fail(format!("{status}: {}", text.trim())));
        }
        self.report.requests += 1;
        self.report.bytes += body.len() as u64;
        if let Some(r) = receipt {
            self.check_receipt(url, &r, body.len() as u64)?;
            self.report.receipts += 1;
            self.report.receipt_bytes += body.len() as u64;
            if self.key.is_some() {
                self.pending.push((r, url.to_string()));
                if self.pending.len() >= self.batch {
                    self.flush().await?;
                }
            }
        } else if self.token.is_some() && receipt::is_paid_media(url.path()) {
            return Err(PlayError::Receipt {
                url: url.to_string(),
                reason: "no Meshcast-Receipt header on a tokened response".into(),
            });
        }
        Ok(body)
    }

    /// A receipt must name an edge we were steered to and our token, and
    /// cover exactly the bytes that arrived for the path we asked for (the
    /// edge's seal is its own to check; its signature comes with its claim).
    fn check_receipt(&self, url: &Url, header: &str, got: u64) -> Result<(), PlayError> {
        let bad = |reason: String| PlayError::Receipt {
            url: url.to_string(),
            reason,
        };
        let r = SealedReceipt::from_header(header).map_err(|e| bad(e.to_string()))?;
        if !self.edge_keys.is_empty() && !self.edge_keys.contains(&r.receipt.node) {
            return Err(bad(
                "receipt names an edge the HUB did not steer this viewer to".into(),
            ));
        }
        if r.receipt.len != got {
            return Err(bad(format!(
                "receipt says {} bytes, {got} arrived",
                r.receipt.len
            )));
        }
        if let Some(t) = &self.token {
            if r.receipt.token != token_id(t) {
                return Err(bad("receipt names another token".into()));
            }
        }
        let path = url.path();
        if !path.ends_with(&r.receipt.path) {
            return Err(bad(format!("receipt is for {:?}", r.receipt.path)));
        }
        Ok(())
    }

    fn drop_channel(&mut self) {
        self.rtc = None;
    }

    /// POSTs an ack batch to the edge, over the data channel if there is
    /// one (acks ride the same channel as the bytes they acknowledge).
    async fn post_acks(
        &mut self,
        url: &Url,
        body: Vec<u8>,
    ) -> Result<(u16, serde_json::Value), PlayError> {
        let fail = |reason: String| PlayError::Fetch {
            url: url.to_string(),
            reason,
        };
        if let Some(ch) = &self.rtc {
            let headers = vec![
                ("host".into(), url.host_str().unwrap_or("").to_string()),
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), body.len().to_string()),
            ];
            match ch
                .request("POST", url.path(), headers, Some(body.clone().into()))
                .await
            {
                Ok(r) => {
                    self.report.rtc_responses += 1;
                    return Ok((
                        r.status,
                        serde_json::from_slice(&r.body).unwrap_or_default(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "acks over WebRTC failed; over HTTP from now on");
                    self.report.http_fallbacks += 1;
                    self.drop_channel();
                }
            }
        }
        let resp = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or_default()))
    }

    /// Sends the queued acks.
    pub async fn flush(&mut self) -> Result<(), PlayError> {
        let (Some(key), Some(token)) = (&self.key, &self.token) else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut acks = Vec::new();
        let mut urls = Vec::new();
        for (header, url) in self.pending.drain(..) {
            let r =
                SealedReceipt::from_header(&header).map_err(|e| PlayError::Hub(e.to_string()))?;
            urls.push(url);
            let ack = Ack::sign(key, r);
            acks.push(serde_json::json!({
                "receipt": header,
                "sig": URL_SAFE_NO_PAD.encode(ack.sig),
            }));
        }
        let n = acks.len() as u64;
        let url = self.base.join("/v1/acks").expect("a fixed path joins");
        let body = serde_json::to_vec(&serde_json::json!({ "token": token, "acks": acks }))
            .expect("acks serialize");
        let (status, v) = self.post_acks(&url, body).await?;
        if !(200..300).contains(&status) {
            return Err(PlayError::Fetch {
                url: url.to_string(),
                reason: format!("{status}: {}", v["error"]),
            });
        }
        self.report.acks_sent += n;
        self.report.acks_accepted += v["accepted"].as_u64().unwrap_or(0);
        self.report.acked_bytes += v["bytes"].as_u64().unwrap_or(0);
        if let Some(refused) = v["refused"].as_array() {
            for r in refused {
                let i = r["index"].as_u64().unwrap_or(0) as usize;
                let url = urls.get(i).map_or("?", String::as_str);
                let reason = r["reason"].as_str().unwrap_or("?");
                self.report.refused.push(format!("{url}: {reason}"));
            }
        }
        Ok(())
    }
}

/// A token from the HUB and the edges it steered this viewer to.
struct Steered {
    token: String,
    edges: Vec<Url>,
    keys: Vec<[u8; 32]>,
}

impl Steered {
    /// The edge to play from: `asked` if the token names it (or names no
    /// edge), else the HUB's first choice (no other edge would serve it).
    fn edge(&self, asked: &Url) -> Url {
        if self.edges.is_empty() || self.edges.iter().any(|e| e.origin() == asked.origin()) {
            asked.clone()
        } else {
            self.edges[0].clone()
        }
    }
}

/// Asks the HUB for a token for `key` to watch `video`.
async fn fetch_token(
    http: &reqwest::Client,
    hub: &str,
    video: &str,
    key: &SigningKey,
) -> Result<Steered, PlayError> {
    let url = format!("{}/v1/videos/{video}/tokens", hub.trim_end_matches('/'));
    let resp = http
        .post(&url)
        .json(&serde_json::json!({ "session": hex::encode(key.verifying_key().to_bytes()) }))
        .send()
        .await
        .map_err(|e| PlayError::Hub(format!("{url}: {e}")))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    let (mut edges, mut keys) = (Vec::new(), Vec::new());
    for e in v["edges"].as_array().into_iter().flatten() {
        if let Some(url) = e["url"].as_str().and_then(|u| Url::parse(u).ok()) {
            edges.push(url);
        }
        let mut k = [0u8; 32];
        if hex::decode_to_slice(e["key"].as_str().unwrap_or(""), &mut k).is_ok() {
            keys.push(k);
        }
    }
    match v["token"].as_str() {
        Some(t) if status.is_success() => Ok(Steered {
            token: t.to_string(),
            edges,
            keys,
        }),
        _ => Err(PlayError::Hub(format!("{url}: {status}: {}", v["error"]))),
    }
}

async fn discover_hub(http: &reqwest::Client, edge: &Url) -> Result<String, PlayError> {
    let url = edge.join("/v1/edge").expect("a fixed path joins");
    let v: serde_json::Value = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| PlayError::Hub(format!("{url}: {e}")))?
        .json()
        .await
        .map_err(|e| PlayError::Hub(format!("{url}: {e}")))?;
    v["hub"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| PlayError::Hub(format!("{url} names no hub; pass --hub URL")))
}

fn parse(url: &Url, body: &[u8]) -> Result<Playlist, PlayError> {
    m3u8_rs::parse_playlist_res(body).map_err(|e| PlayError::Playlist {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// Plays a media playlist: init segment, then every segment.
async fn play_media(s: &mut Client, url: &Url, realtime: bool) -> Result<(), PlayError> {
    let body = s.get(url).await?;
    let Playlist::MediaPlaylist(media) = parse(url, &body)? else {
        return Err(PlayError::Playlist {
            url: url.to_string(),
            reason: "expected a media playlist".into(),
        });
    };
    let join = |u: &str| {
        url.join(u).map_err(|e| PlayError::Playlist {
            url: url.to_string(),
            reason: e.to_string(),
        })
    };
    let mut init_done = None::<String>;
    for seg in &media.segments {
        if let Some(map) = &seg.map {
            if init_done.as_deref() != Some(map.uri.as_str()) {
                s.get(&join(&map.uri)?).await?;
                init_done = Some(map.uri.clone());
            }
        }
        let start = Instant::now();
        s.get(&join(&seg.uri)?).await?;
        s.report.segments += 1;
        if realtime {
            let d = Duration::from_secs_f64(seg.duration as f64);
            tokio::time::sleep(d.saturating_sub(start.elapsed())).await;
        }
    }
    Ok(())
}

/// Plays a stream to the end and reports what it fetched and acknowledged.
pub async fn play(o: Options) -> Result<Report, PlayError> {
    let started = Instant::now();
    let mut url = Url::parse(&o.url).map_err(|e| PlayError::Usage(format!("{}: {e}", o.url)))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| PlayError::Usage(e.to_string()))?;
    let (mut base, video, rest) = split_url(&url).ok_or_else(|| {
        PlayError::Usage(format!(
            "{}: expected an edge URL like http://EDGE/v/ID/master.m3u8 or /t/TOKEN/v/ID/…",
            o.url
        ))
    })?;
    if o.webrtc && !o.ack && !url.path().starts_with("/t/") {
        return Err(PlayError::Usage(
            "--webrtc needs a token: pass a /t/TOKEN/… URL or --ack".into(),
        ));
    }
    let mut key = None;
    let mut edge_keys = Vec::new();
    let mut hub = o.hub.clone();
    let mut token = url
        .path()
        .strip_prefix("/t/")
        .and_then(|r| r.split('/').next())
        .map(str::to_string);
    if o.ack {
        let k = session_key()?;
        let h = match &hub {
            Some(h) => h.clone(),
            None => discover_hub(&http, &base).await?,
        };
        let steered = fetch_token(&http, &h, &video, &k).await?;
        hub = Some(h);
        base = steered.edge(&base);
        edge_keys = steered.keys;
        let t = steered.token;
        url = base
            .join(&format!("/t/{t}/v/{video}/{rest}"))
            .map_err(|e| PlayError::Usage(e.to_string()))?;
        token = Some(t);
        key = Some(k);
    }
    let mut s = Client {
        http,
        key,
        token,
        edge_keys,
        pending: Vec::new(),
        base,
        batch: o.batch.max(1),
        report: Report {
            url: url.to_string(),
            ..Report::default()
        },
        rtc: None,
    };
    if o.webrtc {
        let h = match hub {
            Some(h) => h,
            None => discover_hub(&s.http, &s.base).await?,
        };
        let t = s.token.clone().expect("checked above: there is a token");
        let ch = rtc::RtcChannel::connect(&s.http, &h, &t)
            .await
            .map_err(PlayError::Hub)?;
        s.report.rtc_node = Some(ch.node.clone());
        s.rtc = Some(ch);
    }
    let body = s.get(&url).await?;
    match parse(&url, &body)? {
        Playlist::MediaPlaylist(_) => {
            // Already fetched once; play it (fetches it again like a player reload).
            play_media(&mut s, &url, o.realtime).await?;
        }
        Playlist::MasterPlaylist(master) => {
            let variant = master
                .variants
                .iter()
                .filter(|v| !v.is_i_frame)
                .max_by_key(|v| v.bandwidth)
                .ok_or_else(|| PlayError::Playlist {
                    url: url.to_string(),
                    reason: "no variants".into(),
                })?;
            let join = |u: &str| {
                url.join(u).map_err(|e| PlayError::Playlist {
                    url: url.to_string(),
                    reason: e.to_string(),
                })
            };
            let video_url = join(&variant.uri)?;
            let audio_url = variant.audio.as_ref().and_then(|group| {
                master
                    .alternatives
                    .iter()
                    .find(|a| &a.group_id == group && a.uri.is_some())
                    .and_then(|a| a.uri.as_deref())
                    .map(join)
            });
            play_media(&mut s, &video_url, o.realtime).await?;
            if let Some(a) = audio_url {
                play_media(&mut s, &a?, false).await?;
            }
        }
    }
    s.flush().await?;
    s.report.seconds = started.elapsed().as_secs_f64();
    Ok(s.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_with_and_without_token() {
        let u = Url::parse("http://e:8080/t/v4.public.abc/v/vid1/master.m3u8").unwrap();
        let (base, id, rest) = split_url(&u).unwrap();
        assert_eq!(
            (base.as_str(), id.as_str(), rest.as_str()),
            ("http://e:8080/", "vid1", "master.m3u8")
        );
        let u = Url::parse("http://e/v/vid2/720p/playlist.m3u8").unwrap();
        assert_eq!(split_url(&u).unwrap().2, "720p/playlist.m3u8");
        assert!(split_url(&Url::parse("http://e/other").unwrap()).is_none());
    }

    /// A node the HUB did not steer this viewer to (a stranger on the path,
    /// or a colluder answering in the steered edge's name) gets no ack.
    #[test]
    fn receipts_from_an_edge_the_hub_did_not_name_are_refused() {
        use meshcast_control::identity::NodeKey;
        use meshcast_control::receipt::ReceiptSealer;
        let url = Url::parse("http://e/v/vid1/720p/seg1.m4s").unwrap();
        let steered = ReceiptSealer::new(NodeKey::from_seed([1; 32]));
        let stranger = ReceiptSealer::new(NodeKey::from_seed([2; 32]));
        let header = |s: &ReceiptSealer| {
            s.issue([0; 16], [0; 16], "/v/vid1/720p/seg1.m4s", 0, 10, 1, 1)
                .header_value()
        };
        let mut c = Client::plain(reqwest::Client::new(), url.clone());
        assert!(c.check_receipt(&url, &header(&stranger), 10).is_ok());
        c.edge_keys = vec![steered.node()];
        assert!(c.check_receipt(&url, &header(&steered), 10).is_ok());
        let refused = c.check_receipt(&url, &header(&stranger), 10).unwrap_err();
        assert!(refused.to_string().contains("did not steer"), "{refused}");
        let short = c.check_receipt(&url, &header(&steered), 9).unwrap_err();
        assert!(short.to_string().contains("10 bytes, 9 arrived"), "{short}");
    }
}
