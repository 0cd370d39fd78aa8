//! The WebRTC door: browsers fetch over a data channel from a node that
//! opened no port. The node long-polls its HUB for offers in signed
//! envelopes (`POST /v1/rtc/poll`), answers each with str0m (`accept`),
//! and runs one `Peer` task per browser that hands every request framed on
//! the channel (`meshcast_control::rtc`) to the same Pingora pipeline as
//! the HTTP doors, as a custom session: one cache, coalescing, tokens,
//! receipts, acks (`POST /v1/acks` over the channel), metrics and log.
//!
//! Why str0m and not webrtc-rs: it is sans-IO like quinn-proto (one
//! `Rtc` value driven by our socket and clock, so a peer is one task, not
//! a tree of them), it is small, and data channels are all this door needs.

mod peer;
pub mod session;

use crate::delivery::hub_client::HubLink;
use crate::pipeline::EdgePipeline;
use async_trait::async_trait;
use meshcast_control::rtc::{self as wire, Answer, Offer, Offers};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_proxy::HttpProxy;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::SdpOffer;
use str0m::{Candidate, Rtc, RtcConfig};
use tokio::net::UdpSocket;

pub struct RtcDoor {
    link: HubLink,
    proxy: Arc<HttpProxy<EdgePipeline>>,
    /// The address offered as this node's ICE host candidate; None: the
    /// one this host reaches the HUB from.
    address: Option<IpAddr>,
    max_peers: usize,
    /// STUN servers ("host:port") asked for a server-reflexive candidate.
    stun: Vec<String>,
    peers: Arc<AtomicUsize>,
    metrics: &'static crate::metrics::Metrics,
}

impl RtcDoor {
    pub fn new(
        link: HubLink,
        proxy: Arc<HttpProxy<EdgePipeline>>,
        address: Option<IpAddr>,
        max_peers: usize,
        stun: Vec<String>,
        metrics: &'static crate::metrics::Metrics,
    ) -> RtcDoor {
        RtcDoor {
            link,
            proxy,
            address,
            max_peers,
            stun,
            peers: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }
}

/// The local address the routing table picks for reaching `hub` (a UDP
/// connect sends nothing).
fn address_towards(hub: &str) -> Option<IpAddr> {
    let url = url::Url::parse(hub).ok()?;
    let target = (url.host_str()?, url.port_or_known_default()?);
    let probe = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    probe.connect(target).ok()?;
    Some(probe.local_addr().ok()?.ip())
}

/// `socket`'s address as the STUN server `server` ("host:port") sees it: a
/// binding request, three tries half a second apart.
async fn reflexive(socket: &UdpSocket, server: &str) -> Result<SocketAddr, String> {
    use meshcast_control::rtc::stun;
    let target = tokio::net::lookup_host(server)
        .await
        .map_err(|e| format!("{server}: {e}"))?
        .find(|a| a.is_ipv4() == socket.local_addr().is_ok_and(|l| l.is_ipv4()))
        .ok_or_else(|| format!("{server}: no address of the socket's family"))?;
    let mut trans = [0u8; 12];
    getrandom::fill(&mut trans).map_err(|e| e.to_string())?;
    let request = stun::binding_request(trans);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        socket
            .send_to(&request, target)
            .await
            .map_err(|e| format!("{server}: {e}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok((len, from))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            if let Some(mapped) = (from == target)
                .then(|| stun::mapped_address(&buf[..len], trans))
                .flatten()
            {
                return Ok(mapped);
            }
        }
    }
    Err(format!("{server}: no STUN reply"))
}

/// The node's answer to `offer` and the connection it starts on `socket`:
/// its host candidate, and `reflexive` ones (as STUN servers saw it).
pub fn accept(
    offer: &serde_json::Value,
    socket: &UdpSocket,
    reflexive: &[SocketAddr],
) -> Result<(Rtc, serde_json::Value), String> {
    let offer: SdpOffer =
        serde_json::from_value(offer.clone()).map_err(|e| format!("not an SDP offer: {e}"))?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    // Buffered counts until acknowledged, so it caps the data in flight:
    // str0m's 128 KiB default is under 1 MB/s at a 100 ms round trip.
    let mut rtc = RtcConfig::new()
        .set_sctp_max_buffered_amount(peer::SCTP_BUFFER)
        .build(Instant::now());
    let host = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
    rtc.add_local_candidate(host)
        .ok_or("the host candidate was refused")?;
    for public in reflexive.iter().filter(|a| **a != local) {
        let srflx =
            Candidate::server_reflexive(*public, local, "udp").map_err(|e| e.to_string())?;
        // str0m drops a candidate that adds nothing; that is fine.
        let _ = rtc.add_local_candidate(srflx);
    }
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| format!("offer refused: {e}"))?;
    let answer = serde_json::to_value(&answer).map_err(|e| e.to_string())?;
    Ok((rtc, answer))
}

/// Frees a peer's place when its task ends, however it ends.
struct PeerSlot(Arc<AtomicUsize>);

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RtcDoor {
    fn slot(&self) -> Option<PeerSlot> {
        let taken = self.peers.fetch_add(1, Ordering::Relaxed);
        let slot = PeerSlot(self.peers.clone());
        (taken < self.max_peers).then_some(slot)
    }

    /// A peer for `offer` on a fresh UDP port of `ip`, and its answer.
    async fn start_peer(
        &self,
        ip: IpAddr,
        offer: &Offer,
        shutdown: &ShutdownWatch,
    ) -> Result<(PeerSlot, peer::Peer, serde_json::Value), String> {
        let slot = self
            .slot()
            .ok_or_else(|| format!("this node serves at most {} WebRTC peers", self.max_peers))?;
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .map_err(|e| format!("UDP port on {ip}: {e}"))?;
        let mut public = Vec::new();
        for server in &self.stun {
            match reflexive(&socket, server).await {
                Ok(a) => public.push(a),
                Err(e) => tracing::warn!(error = %e, "STUN: no server-reflexive candidate"),
            }
        }
        let (rtc, answer) = accept(&offer.offer, &socket, &public)?;
        let peer = peer::Peer::new(rtc, socket, self.proxy.clone(), shutdown.clone())
            .map_err(|e| e.to_string())?;
        Ok((slot, peer, answer))
    }

    /// Answers one offer and starts its peer.
    async fn answer(&self, ip: IpAddr, offer: Offer, shutdown: &ShutdownWatch) {
        let started = self.start_peer(ip, &offer, shutdown).await;
        let reply = match started {
            Ok((slot, peer, answer)) => {
                self.metrics
                    .rtc_peers
                    .with_label_values(&["answered"])
                    .inc();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = peer.run().await {
                        tracing::debug!(error = %e, "WebRTC peer ended");
                    }
                });
                Answer {
                    id: offer.id,
                    answer: Some(answer),
                    error: None,
                }
            }
            Err(why) => {
                self.metrics.rtc_peers.with_label_values(&["refused"]).inc();
                tracing::info!(%why, "WebRTC offer refused");
                Answer {
                    id: offer.id,
                    answer: None,
                    error: Some(why),
                }
            }
        };
        let body = serde_json::to_vec(&reply).expect("an answer serializes");
        match self.link.post("/v1/rtc/answer", wire::ANSWER, body).await {
            Ok((200, _)) => {}
            Ok((status, body)) => tracing::info!(
                status,
                body = %String::from_utf8_lossy(&body),
                "the HUB did not take the WebRTC answer"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot send the WebRTC answer"),
        }
    }

    /// One long-poll: the offers the HUB holds for this node.
    async fn poll(&self) -> Result<Vec<Offer>, String> {
        match self
            .link
            .post("/v1/rtc/poll", wire::POLL, b"{}".to_vec())
            .await?
        {
            (200, body) => serde_json::from_slice::<Offers>(&body)
                .map(|o| o.offers)
                .map_err(|e| format!("unreadable offers: {e}")),
            (204, _) => Ok(Vec::new()),
            (status, body) => Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )),
        }
    }
}

#[async_trait]
impl BackgroundService for RtcDoor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(ip) = self.address.or_else(|| address_towards(&self.link.hub)) else {
            tracing::error!(hub = %self.link.hub, "WebRTC: no local address reaches the HUB; set edge.webrtc_address");
            return;
        };
        tracing::info!(%ip, hub = %self.link.hub, "WebRTC door polling the HUB for offers");
        let mut delays = crate::delivery::hub_client::retry_delays(None);
        loop {
            let polled = tokio::select! {
                p = self.poll() => p,
                _ = shutdown.changed() => return,
            };
            match polled {
                Ok(offers) => {
                    delays = crate::delivery::hub_client::retry_delays(None);
                    for offer in offers {
                        self.answer(ip, offer, &shutdown).await;
                    }
                }
                Err(e) => {
                    let wait = delays.next().unwrap_or(Duration::from_secs(20));
                    tracing::warn!(error = %e, retry_in = ?wait, "WebRTC poll failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stun_server_tells_the_node_its_public_address() {
        let public: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            let reply = meshcast_control::rtc::stun::binding_success(&buf[..n], public).unwrap();
            server.send_to(&reply, from).await.unwrap();
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(reflexive(&socket, &addr.to_string()).await, Ok(public));
    }

    #[tokio::test]
    async fn a_silent_stun_server_is_an_error_not_a_hang() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let got = reflexive(&socket, &silent.local_addr().unwrap().to_string()).await;
        assert!(got.unwrap_err().contains("no STUN reply"));
    }
}
