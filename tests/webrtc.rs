//! The WebRTC door end to end through the real binaries: a hub, an edge
//! with `webrtc = true` that polls it for offers, and `meshcast play
//! --webrtc` fetching every playlist and segment over a data channel and
//! sending its acks back over it, credited exactly. On loopback here.

mod support;

use meshcast_control::identity::NodeKey;
use serde_json::Value;
use std::time::Duration;
use support::hub::*;
use support::*;

/// Turns on the WebRTC door in an edge's written config, with `extra`
/// more lines of `[edge]`.
fn enable_webrtc(edge: &Edge, extra: &str) {
    let text = std::fs::read_to_string(&edge.config).unwrap();
    let text = text.replacen("[edge]\n", &format!("[edge]\nwebrtc = true\n{extra}"), 1);
    std::fs::write(&edge.config, text).unwrap();
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>;

/// A STUN server (RFC 8489 binding requests only) on `ip`: its address,
/// and the sources it has answered.
async fn stun_server(ip: std::net::IpAddr) -> (std::net::SocketAddr, Seen) {
    use meshcast_control::rtc::stun;
    let socket = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if let Some(reply) = stun::binding_success(&buf[..n], from) {
                let _ = socket.send_to(&reply, from).await;
                log.lock().unwrap().push(from);
            }
        }
    });
    (addr, seen)
}

/// Waits until the hub has credited `node` exactly `bytes`; fails on more.
async fn wait_credited(hub: &Hub, node: &str, bytes: u64) {
    eventually(
        "the hub credits the acked bytes",
        Duration::from_secs(40),
        || async {
            let n = node_record(hub, node).await?;
            let credited = n["credited_bytes"].as_u64().unwrap_or(0);
            assert!(
                credited <= bytes,
                "credited {credited} > acked {bytes}: {n}"
            );
            (credited == bytes).then_some(()).ok_or(format!("{n}"))
        },
    )
    .await;
}

async fn node_record(hub: &Hub, node: &str) -> Result<Value, String> {
    let v = get_json(&hub.client(), &hub.url("/v1/nodes")).await;
    v["nodes"]
        .as_array()
        .and_then(|l| l.iter().find(|n| n["id"] == node).cloned())
        .ok_or_else(|| format!("node {node} not listed: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_fetches_everything_over_the_data_channel_and_is_credited_exactly() {
    let edge_port = free_port();
    let mut hub = Hub::config(&format!("http://127.0.0.1:{edge_port}"));
    let mut edge = Edge::config(hub.addr(), "");
    hub.bond_at_genesis(&[edge_key(&edge)]);
    hub.launch().await;
    edge.port = edge_port;
    edge.write_config(hub.addr(), &node_extra(&edge, &hub));
    enable_webrtc(&edge, "");
    let edge = edge.start().await;
    let node = NodeKey::load(&edge.dir.join("node.key")).unwrap().id();
    let src = hub.dir.join("clip.mp4");
    make_video(&src, 4, "640x360");
    let id = hub.publish(&src).await;
    eventually(
        "the edge polls the hub for offers",
        Duration::from_secs(20),
        || async {
            let n = node_record(&hub, &node).await?;
            (n["webrtc"] == true && n["admitted"] == true)
                .then_some(())
                .ok_or(format!("{n}"))
        },
    )
    .await;

    let url = edge.url(&format!("/v/{id}/master.m3u8"));
    let report = meshcast_play(&["--ack", "--webrtc", "--json", "--hub", &hub.url(""), &url]);
    assert_eq!(report["rtc_node"], node, "{report}");
    assert_eq!(report["http_fallbacks"], 0, "{report}");
    // Every fetch and every ack batch came over the channel.
    let requests = report["requests"].as_u64().unwrap();
    assert!(
        report["rtc_responses"].as_u64().unwrap() > requests,
        "{report}"
    );
    let bytes = report["receipt_bytes"].as_u64().unwrap();
    assert!(bytes > 100_000, "{report}");
    assert_eq!(report["acked_bytes"].as_u64(), Some(bytes), "{report}");
    assert_eq!(report["acks_accepted"], report["receipts"], "{report}");
    assert!(report["segments"].as_u64().unwrap() >= 2, "{report}");

    // The same pipeline: its access log names the door.
    let log = std::fs::read_to_string(edge.dir.join("access.log")).unwrap_or_default();
    let over_rtc = log.lines().filter(|l| l.contains("WebRTC")).count() as u64;
    assert!(over_rtc > requests, "{over_rtc} WebRTC lines:\n{log}");
    assert_eq!(
        edge.metric("meshcast_rtc_peers_total{outcome=\"answered\"}")
            .await,
        1.0
    );

    // Credited exactly what was acknowledged over the channel.
    wait_credited(&hub, &node, bytes).await;

    // A cheater cannot open a session with a token of its own making (to
    // steer viewers and pay to a node it names), nor answer for a node.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stranger = NodeKey::generate().unwrap();
    let forged = meshcast_control::token::issue(
        &stranger,
        &meshcast_control::token::TokenClaims {
            issuer: stranger.public().to_bytes(),
            prefix: format!("/v/{id}/"),
            expires: now + 600,
            budget: u64::MAX,
            session: NodeKey::generate().unwrap().public().to_bytes(),
            edges: vec![NodeKey::load(&edge.dir.join("node.key"))
                .unwrap()
                .public()
                .to_bytes()],
        },
        now,
    )
    .unwrap();
    let offer = serde_json::json!({"type": "offer", "sdp": "v=0\r\n"});
    let r = hub
        .client()
        .post(hub.url("/v1/rtc/sessions"))
        .json(&serde_json::json!({"token": forged, "offer": offer}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let why = r.text().await.unwrap();
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("token"), "{why}");
    let answer = |key: &NodeKey| {
        let body = br#"{"id": "0123456789abcdef", "answer": {"type": "answer", "sdp": "v=0"}}"#;
        meshcast_control::envelope::Envelope::seal(
            key,
            meshcast_control::rtc::ANSWER,
            body.to_vec(),
            now,
        )
        .unwrap()
        .encode()
    };
    let post = |body: Vec<u8>| {
        hub.client()
            .post(hub.url("/v1/rtc/answer"))
            .body(body)
            .send()
    };
    // Signed by a stranger, for an offer nobody made: no viewer gets it.
    assert_eq!(post(answer(&stranger)).await.unwrap().status(), 410);
    // Unsigned: refused before anything is read.
    assert_eq!(post(b"{}".to_vec()).await.unwrap().status(), 400);
    assert_eq!(
        edge.metric("meshcast_rtc_peers_total{outcome=\"answered\"}")
            .await,
        1.0,
        "no offer reached the node"
    );
}

/// A home network behind NAT, made of two network namespaces: `home` (the
/// node, 10.232.N.2) routes through `router`, which masquerades it to
/// 10.231.N.2 on a veth pair to the host (10.231.N.1). No port is
/// forwarded and the host has no route into the home network.
struct Nat {
    home: String,
    router: String,
    host_link: String,
    n: u32,
    /// The host's primary address: the browser's, on the internet side.
    primary: std::net::IpAddr,
}

impl Nat {
    /// None (with the reason) when this machine cannot make namespaces.
    fn try_new() -> Result<Nat, String> {
        let n = 20 + std::process::id() % 200;
        // Chromium's ICE socket is bound to the wildcard address and its
        // candidate is the host's primary one: replies into the NAT must
        // come from that address (as from a browser on the internet), or
        // the router's connection tracking drops them.
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        probe
            .connect("203.0.113.1:9")
            .map_err(|e| format!("no default route: {e}"))?;
        let primary_ip = probe.local_addr().map_err(|e| e.to_string())?.ip();
        let primary = primary_ip.to_string();
        let nat = Nat {
            home: format!("mc-home-{n}"),
            router: format!("mc-rtr-{n}"),
            host_link: format!("mch{n}"),
            n,
            primary: primary_ip,
        };
        let (h, r, up, down, home_if) = (
            nat.home.as_str(),
            nat.router.as_str(),
            nat.host_link.as_str(),
            format!("mcd{n}"),
            format!("mci{n}"),
        );
        let (host_ip, router_up, router_down, home_ip) = (
            format!("10.231.{n}.1/24"),
            format!("10.231.{n}.2/24"),
            format!("10.232.{n}.1/24"),
            format!("10.232.{n}.2/24"),
        );
        let wan = format!("10.231.{n}.0/24");
        let steps: Vec<Vec<&str>> = vec![
            vec!["ip", "netns", "add", h],
            vec!["ip", "netns", "add", r],
            vec![
                "ip", "link", "add", up, "type", "veth", "peer", "name", "mcu", "netns", r,
            ],
            vec!["ip", "addr", "add", &host_ip, "dev", up],
            vec!["ip", "link", "set", up, "up"],
            vec!["ip", "route", "replace", &wan, "dev", up, "src", &primary],
            vec!["ip", "-n", r, "addr", "add", &router_up, "dev", "mcu"],
            vec!["ip", "-n", r, "link", "set", "mcu", "up"],
            vec!["ip", "-n", r, "link", "set", "lo", "up"],
            // The router's uplink is the host: its every address is reached
            // through it, as the internet is through a home router's.
            vec![
                "ip",
                "-n",
                r,
                "route",
                "add",
                "default",
                "via",
                &host_ip[..host_ip.len() - 3],
            ],
            vec![
                "ip", "-n", r, "link", "add", &down, "type", "veth", "peer", "name", &home_if,
                "netns", h,
            ],
            vec!["ip", "-n", r, "addr", "add", &router_down, "dev", &down],
            vec!["ip", "-n", r, "link", "set", &down, "up"],
            vec!["ip", "-n", h, "addr", "add", &home_ip, "dev", &home_if],
            vec!["ip", "-n", h, "link", "set", &home_if, "up"],
            vec!["ip", "-n", h, "link", "set", "lo", "up"],
            vec![
                "ip",
                "-n",
                h,
                "route",
                "add",
                "default",
                "via",
                &router_down[..router_down.len() - 3],
            ],
            vec![
                "ip",
                "netns",
                "exec",
                r,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
            vec![
                "ip",
                "netns",
                "exec",
                r,
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "mcu",
                "-j",
                "MASQUERADE",
            ],
        ];
        for step in steps {
            let out = std::process::Command::new(step[0])
                .args(&step[1..])
                .output()
                .map_err(|e| format!("{}: {e}", step.join(" ")))?;
            if !out.status.success() {
                return Err(format!(
                    "{}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(nat)
    }

    fn host_ip(&self) -> String {
        format!("10.231.{}.1", self.n)
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        for args in [
            vec!["link", "del", self.host_link.as_str()],
            vec!["netns", "del", self.home.as_str()],
            vec!["netns", "del", self.router.as_str()],
        ] {
            let _ = std::process::Command::new("ip").args(args).output();
        }
    }
}

/// The WebRTC node: on loopback an ordinary edge process, behind NAT the
/// same binary run inside the home namespace.
struct Node {
    child: std::process::Child,
    id: String,
    /// Its config and state (removed when dropped, after the process).
    edge: Edge,
}

impl Node {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.edge.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Net {
    hub: Hub,
    /// An HTTP edge on the host: serves the page, the fallback.
    edge: Edge,
    node: Node,
    id: String,
    /// Behind NAT: who asked the host's STUN server for their address.
    stun_seen: Option<Seen>,
    nat: Option<Nat>,
}

/// A hub, an HTTP edge, and a WebRTC node (behind NAT when `nat`), both
/// bonded; a published `secs`-second video; the node polling for offers.
async fn network(nat: Option<Nat>, secs: u32) -> Net {
    let edge_port = free_port();
    let mut hub = Hub::config(&format!("http://127.0.0.1:{edge_port}"));
    let mut edge = Edge::config(hub.addr(), "");
    let node_edge = Edge::config(hub.addr(), "");
    hub.bond_at_genesis(&[edge_key(&edge), edge_key(&node_edge)]);
    // Reached from the home namespace through the NAT, so on every address.
    let text = std::fs::read_to_string(&hub.config).unwrap();
    std::fs::write(
        &hub.config,
        text.replacen("listen = \"127.0.0.1:", "listen = \"0.0.0.0:", 1),
    )
    .unwrap();
    hub.launch().await;
    edge.port = edge_port;
    edge.write_config(hub.addr(), &node_extra(&edge, &hub));
    let edge = edge.start().await;

    // The node reaches the hub (its origin and its signalling) at the
    // host's address on the NAT's far side, or on loopback.
    let hub_addr: std::net::SocketAddr = match &nat {
        Some(n) => format!("{}:{}", n.host_ip(), hub.port).parse().unwrap(),
        None => hub.addr(),
    };
    let hub_url = format!("http://{hub_addr}");
    let extra = node_extra(&node_edge, &hub).replace(&hub.url(""), &hub_url);
    node_edge.write_config(hub_addr, &extra);
    // Behind the NAT the node asks a STUN server on the host's primary
    // address (the internet side) for its public address.
    let stun = match &nat {
        Some(n) => Some(stun_server(n.primary).await),
        None => None,
    };
    let stun_line = stun
        .as_ref()
        .map_or(String::new(), |(a, _)| format!("webrtc_stun = [\"{a}\"]\n"));
    enable_webrtc(&node_edge, &stun_line);
    let bin = env!("CARGO_BIN_EXE_meshcast");
    let mut cmd = match &nat {
        Some(n) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", &n.home, bin]);
            c
        }
        None => std::process::Command::new(bin),
    };
    let child = cmd
        .args(["edge", "--config"])
        .arg(&node_edge.config)
        // NODE_LOG=is=trace,str0m=debug shows the node's ICE checks.
        .env(
            "MESHCAST_LOG",
            std::env::var("NODE_LOG").unwrap_or("warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the WebRTC node");
    let id = NodeKey::load(&node_edge.dir.join("node.key")).unwrap().id();
    let node = Node {
        child,
        id,
        edge: node_edge,
    };
    let src = hub.dir.join("clip.mp4");
    make_video(&src, secs, "640x360");
    let video = hub.publish(&src).await;
    eventually(
        "the node polls the hub for offers",
        Duration::from_secs(30),
        || async {
            let n = node_record(&hub, &node.id).await?;
            (n["webrtc"] == true && n["admitted"] == true)
                .then_some(())
                .ok_or(format!("{n}"))
        },
    )
    .await;
    Net {
        hub,
        edge,
        node,
        id: video,
        stun_seen: stun.map(|(_, seen)| seen),
        nat,
    }
}

/// Chromium with the node's and its own real addresses in ICE (no mDNS
/// names, which a node cannot resolve) and loopback allowed.
const RTC_CHROMIUM: &str =
    "--disable-features=WebRtcHideLocalIpsWithMdns --allow-loopback-in-peer-connection";

/// Plays `?via=webrtc` in Chromium through the HTTP edge's page; checks
/// that every media request took the data channel and the node is credited
/// exactly what the page acknowledged.
async fn chromium_plays_over_the_channel(net: &Net) -> Value {
    let page = net.edge.url(&format!("/play/{}?via=webrtc", net.id));
    let result = play_in_chromium_with(&page, RTC_CHROMIUM);
    assert_eq!(result["ended"], true, "{result}");
    assert_eq!(result["errors"], serde_json::json!([]), "{result}");
    let rtc = &result["rtc"];
    assert_eq!(rtc["node"], net.node.id.as_str(), "{result}");
    assert_eq!(rtc["http"], 0, "every request over the channel: {result}");
    assert!(rtc["rtc"].as_u64().unwrap() >= 4, "{result}");
    let acks = &result["acks"];
    let acked = acks["ackedBytes"].as_u64().unwrap();
    assert!(acked > 100_000, "{result}");
    assert_eq!(acks["bytes"].as_u64(), Some(acked), "{result}");
    assert_eq!(acks["errors"], serde_json::json!([]), "{result}");
    wait_credited(&net.hub, &net.node.id, acked).await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_from_a_node_behind_nat_over_the_data_channel() {
    let nat = match Nat::try_new() {
        Ok(n) => Some(n),
        Err(why) => {
            // CI without CAP_NET_ADMIN: the same test on loopback.
            eprintln!("no network namespaces ({why}); on loopback instead");
            None
        }
    };
    let net = network(nat, 4).await;
    let result = chromium_plays_over_the_channel(&net).await;
    if let (Some(nat), Some(seen)) = (&net.nat, &net.stun_seen) {
        // The node learned its public address (the router's) by STUN and
        // offered it as a server-reflexive candidate.
        let public = format!("10.231.{}.2", nat.n);
        let asked = seen.lock().unwrap().clone();
        assert!(
            asked.iter().any(|a| a.ip().to_string() == public),
            "STUN requests came from {asked:?}"
        );
        let offered = result["rtc"]["candidates"].to_string();
        assert!(
            offered.contains(&public) && offered.contains("typ srflx"),
            "{offered}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_falls_back_to_http_when_the_node_dies_mid_play() {
    let mut net = network(None, 12).await;
    let page = net.edge.url(&format!("/play/{}?via=webrtc", net.id));
    let browser = tokio::task::spawn_blocking(move || play_in_chromium_with(&page, RTC_CHROMIUM));
    let node = &mut net.node;
    eventually(
        "segments served over the channel",
        Duration::from_secs(40),
        || async {
            let log = node.access_log();
            let n = log
                .lines()
                .filter(|l| l.contains("WebRTC") && l.contains(".m4s"))
                .count();
            (n >= 3).then_some(()).ok_or(format!("{n} segments so far"))
        },
    )
    .await;
    net.node.kill();
    let result = browser.await.unwrap();
    assert_eq!(result["ended"], true, "{result}");
    assert_eq!(result["errors"], serde_json::json!([]), "{result}");
    let rtc = &result["rtc"];
    assert!(rtc["rtc"].as_u64().unwrap() >= 3, "{result}");
    assert!(
        rtc["http"].as_u64().unwrap() >= 1,
        "the rest over HTTP: {result}"
    );
}
