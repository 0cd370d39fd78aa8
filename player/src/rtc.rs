//! The viewer's side of the WebRTC door: one data channel to a node the
//! HUB picked (`POST /v1/rtc/sessions`), requests framed on it as
//! `meshcast_control::rtc` says, several in flight. A task drives str0m's
//! `Rtc` with a UDP socket; `RtcChannel::request` talks to that task.

use bytes::Bytes;
use meshcast_control::rtc::{chunks, Frame, RequestHead, ResponseHead, LABEL};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use str0m::change::SdpAnswer;
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// How long the channel may take to open after the answer.
const OPEN_WAIT: Duration = Duration::from_secs(10);
/// How long one response may take over the channel before the caller
/// takes it another way (a node that vanished says nothing).
const RESPONSE_WAIT: Duration = Duration::from_secs(5);
/// Largest response body taken from a node.
const MAX_BODY: usize = 256 << 20;

#[derive(Debug)]
pub struct RtcResponse {
    /// From the request's send to its response head.
    pub ttfb: Duration,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RtcResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Call {
    head: RequestHead,
    body: Option<Bytes>,
    reply: oneshot::Sender<Result<RtcResponse, String>>,
}

/// A data channel to one node; cloneable handles share it.
#[derive(Clone)]
pub struct RtcChannel {
    calls: mpsc::Sender<Call>,
    /// The node's id, as the HUB named it.
    pub node: String,
}

/// The local address the routing table picks for `host:port`.
fn address_towards(url: &url::Url) -> Result<IpAddr, String> {
    let target = (
        url.host_str().ok_or("the HUB URL has no host")?,
        url.port_or_known_default()
            .ok_or("the HUB URL has no port")?,
    );
    let probe = std::net::UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
    probe
        .connect(target)
        .map_err(|e| format!("no route to the HUB: {e}"))?;
    Ok(probe.local_addr().map_err(|e| e.to_string())?.ip())
}

impl RtcChannel {
    /// Asks `hub` for a WebRTC session for `token` and opens its channel.
    pub async fn connect(
        http: &reqwest::Client,
        hub: &str,
        token: &str,
    ) -> Result<RtcChannel, String> {
        let hub_url = url::Url::parse(hub).map_err(|e| format!("{hub}: {e}"))?;
        let ip = address_towards(&hub_url)?;
        let socket =
            std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| e.to_string())?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let mut rtc = RtcConfig::new().build(Instant::now());
        let host = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
        rtc.add_local_candidate(host)
            .ok_or("host candidate refused")?;
        let mut change = rtc.sdp_api();
        let channel = change.add_channel(LABEL.into());
        let (offer, pending) = change.apply().ok_or("no offer to make")?;
        let url = format!("{}/v1/rtc/sessions", hub.trim_end_matches('/'));
        let resp = http
            .post(&url)
            .json(&serde_json::json!({ "token": token, "offer": offer }))
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("{url}: {status}: {}", v["error"]));
        }
        let answer: SdpAnswer = serde_json::from_value(v["answer"].clone())
            .map_err(|e| format!("{url}: not an SDP answer: {e}"))?;
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("answer refused: {e}"))?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        let socket = UdpSocket::from_std(socket).map_err(|e| e.to_string())?;
        let (calls, rx) = mpsc::channel(64);
        let (opened_tx, opened) = oneshot::channel();
        let driver = Driver {
            rtc,
            socket,
            local,
            channel,
            open: false,
            opened: Some(opened_tx),
            next_id: 1,
            waiting: HashMap::new(),
            unsent: VecDeque::new(),
        };
        tokio::spawn(driver.run(rx));
        match tokio::time::timeout(OPEN_WAIT, opened).await {
            Ok(Ok(())) => Ok(RtcChannel {
                calls,
                node: v["node"]["id"].as_str().unwrap_or("").to_string(),
            }),
            _ => Err(format!(
                "the data channel did not open within {OPEN_WAIT:?}"
            )),
        }
    }

    /// One request over the channel; the whole response.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Option<Bytes>,
    ) -> Result<RtcResponse, String> {
        let (reply, rx) = oneshot::channel();
        let head = RequestHead {
            method: method.into(),
            path: path.into(),
            headers,
            body: body.is_some(),
        };
        self.calls
            .send(Call { head, body, reply })
            .await
            .map_err(|_| "the data channel is closed".to_string())?;
        match tokio::time::timeout(RESPONSE_WAIT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the data channel closed mid-response".into()),
            Err(_) => Err(format!("no response within {RESPONSE_WAIT:?}")),
        }
    }
}

struct Pending {
    sent: Instant,
    ttfb: Duration,
    head: Option<ResponseHead>,
    body: Vec<u8>,
    reply: oneshot::Sender<Result<RtcResponse, String>>,
}

struct Driver {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    channel: ChannelId,
    open: bool,
    opened: Option<oneshot::Sender<()>>,
    next_id: u32,
    waiting: HashMap<u32, Pending>,
    unsent: VecDeque<Vec<u8>>,
}

impl Driver {
    async fn run(mut self, mut calls: mpsc::Receiver<Call>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let Some(deadline) = self.drive().await else {
                break;
            };
            self.flush();
            let deadline = tokio::time::Instant::from_std(deadline);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, source)) = r else { break };
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp, source, destination: self.local, contents,
                    });
                    if self.rtc.accepts(&input) && self.rtc.handle_input(input).is_err() {
                        break;
                    }
                }
                call = calls.recv(), if self.open => match call {
                    Some(c) => self.send(c),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if self.rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                        break;
                    }
                }
            }
        }
        for (_, p) in self.waiting.drain() {
            let _ = p.reply.send(Err("the data channel closed".into()));
        }
    }

    async fn drive(&mut self) -> Option<Instant> {
        loop {
            if !self.rtc.is_alive() {
                return None;
            }
            match self.rtc.poll_output().ok()? {
                Output::Timeout(t) => return Some(t),
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(e) => match e {
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        return None
                    }
                    Event::ChannelOpen(id, _) if id == self.channel => {
                        self.open = true;
                        if let Some(o) = self.opened.take() {
                            let _ = o.send(());
                        }
                    }
                    Event::ChannelData(d) if d.id == self.channel => self.on_message(&d.data),
                    Event::ChannelClose(id) if id == self.channel => return None,
                    _ => {}
                },
            }
        }
    }

    fn flush(&mut self) {
        while let Some(msg) = self.unsent.front() {
            let Some(mut ch) = self.rtc.channel(self.channel) else {
                return;
            };
            match ch.write(true, msg) {
                Ok(true) => {
                    self.unsent.pop_front();
                }
                _ => return,
            }
        }
    }

    fn send(&mut self, c: Call) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.unsent.push_back(Frame::Request(c.head).encode(id));
        if let Some(body) = &c.body {
            for f in chunks(body) {
                self.unsent.push_back(f.encode(id));
            }
            self.unsent.push_back(Frame::End.encode(id));
        }
        self.waiting.insert(
            id,
            Pending {
                sent: Instant::now(),
                ttfb: Duration::ZERO,
                head: None,
                body: Vec::new(),
                reply: c.reply,
            },
        );
        self.flush();
    }

    fn on_message(&mut self, msg: &[u8]) {
        let Ok((id, frame)) = Frame::decode(msg) else {
            return;
        };
        let Some(p) = self.waiting.get_mut(&id) else {
            return;
        };
        match frame {
            Frame::Response(h) => {
                p.ttfb = p.sent.elapsed();
                p.head = Some(h);
            }
            Frame::Body(b) if p.body.len() + b.len() <= MAX_BODY => p.body.extend_from_slice(&b),
            Frame::Body(_) => {
                let p = self.waiting.remove(&id).expect("looked up above");
                let _ = p
                    .reply
                    .send(Err(format!("response body over {MAX_BODY} bytes")));
            }
            Frame::End => {
                let p = self.waiting.remove(&id).expect("looked up above");
                let result = match p.head {
                    Some(h) => Ok(RtcResponse {
                        ttfb: p.ttfb,
                        status: h.status,
                        headers: h.headers,
                        body: p.body,
                    }),
                    None => Err("the node ended a response it never began".into()),
                };
                let _ = p.reply.send(result);
            }
            Frame::Error(why) => {
                let p = self.waiting.remove(&id).expect("looked up above");
                let _ = p.reply.send(Err(format!("the node: {why}")));
            }
            Frame::Request(_) | Frame::Cancel => {}
        }
    }
}
