//! The edge's TCP door on the open internet (#13): silent, slow and
//! garbage clients are answered and closed on time, broken HTTP/2 prefaces
//! get GOAWAY, and connections past the limits get 503 — while ordinary
//! HTTP/1.1 and h2c requests are served as before.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An edge in front of the test origin with `edge_extra` in `[edge]`.
async fn edge_with(edge_extra: &str) -> (Origin, Edge) {
    let origin = Origin::start().await;
    let edge = Edge::config(origin.addr, "");
    let text = std::fs::read_to_string(&edge.config)
        .unwrap()
        .replace("[edge]\n", &format!("[edge]\n{edge_extra}\n"));
    std::fs::write(&edge.config, text).unwrap();
    let edge = edge.start().await;
    (origin, edge)
}

/// A connection to the edge from `source` (any 127/8 address is this
/// machine), so tests can play several clients.
async fn connect_from(source: &str, port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse::<SocketAddr>().unwrap())
        .unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// Everything the edge sends until it closes (at most `within`).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .expect("the edge closed the connection in time")
        .unwrap_or_default();
    out
}

/// Waits until the edge's metrics hold the line `want` (`what`, for the
/// failure message).
async fn wait_metric(edge: &Edge, want: String, what: String) {
    eventually(&what, Duration::from_secs(10), || async {
        let metrics = edge.metrics().await;
        if metrics.contains(&want) {
            Ok(())
        } else {
            Err(metrics)
        }
    })
    .await
}

/// Waits until the edge reports `n` client connections open.
async fn wait_open(edge: &Edge, n: u64) {
    let want = format!("meshcast_client_connections {n}\n");
    wait_metric(edge, want, format!("{n} connections open")).await
}

/// A new client from `source` asks for `path` once (`Connection: close`);
/// the status line of what it got before the edge closed.
async fn get_once(source: &str, port: u16, path: &str) -> String {
    let mut s = connect_from(source, port).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    status_of(&read_until_closed(&mut s, Duration::from_secs(10)).await)
}

fn status_of(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_closed_on_time() {
    let (_origin, edge) = edge_with("header_timeout = \"1s\"").await;

    // Connects and says nothing: closed, without a word, about a second on.
    let started = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", edge.port)).await.unwrap();
    let said = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(said.is_empty(), "{}", String::from_utf8_lossy(&said));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(850), "{waited:?}");

    // Half a request line, then nothing: 408 and close.
    let mut partial = TcpStream::connect(("127.0.0.1", edge.port)).await.unwrap();
    partial.write_all(b"GET /seg/a.m4s HT").await.unwrap();
    let reply = read_until_closed(&mut partial, Duration::from_secs(10)).await;
    assert!(
        status_of(&reply).starts_with("HTTP/1.1 408"),
        "{}",
        status_of(&reply)
    );
    assert!(String::from_utf8_lossy(&reply).contains("Server: meshcast"));

    // Slowloris: a byte every 200 ms never finishes a head; the whole head
    // is due a second after its first byte, however busy the trickle.
    let mut slow = TcpStream::connect(("127.0.0.1", edge.port)).await.unwrap();
    let started = Instant::now();
    let head = b"GET /seg/a.m4s HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut sent = 0;
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        let mut probe = [0u8; 64];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), slow.read(&mut probe)).await
        {
            assert!(
                String::from_utf8_lossy(&probe[..n]).starts_with("HTTP/1.1 408"),
                "{}",
                String::from_utf8_lossy(&probe[..n])
            );
            break;
        }
    }
    assert!(sent < head.len(), "the edge waited out the whole trickle");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // A client that sends its request promptly is served as ever.
    let ok = get(&edge.url("/seg/ok.m4s?len=5"), &[]).await;
    assert_eq!((ok.status, ok.body.len()), (200, 5));
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("meshcast_connections_refused_total{reason=\"header_timeout\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshcast_connections_refused_total{reason=\"silent\"} 1"),
        "{metrics}"
    );
}

/// Waits until the lobby reports `n` admitted connections waiting for a
/// request.
async fn wait_seated(edge: &Edge, n: u64) {
    let want = format!("meshcast_connections_waiting{{kind=\"seated\"}} {n}\n");
    wait_metric(edge, want, format!("{n} connections waiting in the lobby")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_head_is_gathered_in_the_lobby_and_served_whole() {
    let (_origin, edge) = edge_with("header_timeout = \"5s\"").await;
    // A head sent in pieces stays in the lobby (no worker sees it) until
    // its empty line: the part sent so far keeps it waiting there.
    let mut s = TcpStream::connect(("127.0.0.1", edge.port)).await.unwrap();
    s.write_all(b"GET /seg/pieces.m4s?len=7 HT").await.unwrap();
    wait_seated(&edge, 1).await;
    s.write_all(b"TP/1.1\r\nHost: a\r\n").await.unwrap();
    wait_seated(&edge, 1).await;
    s.write_all(b"\r\n").await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // From then on the door reads its requests, as on any connection.
    wait_seated(&edge, 0).await;
    s.write_all(b"GET /seg/second.m4s?len=9 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert_eq!(status_of(&reply), "HTTP/1.1 200 OK");
    assert!(reply.ends_with(&body_for("second.m4s", 9)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_requests_without_host_get_400_and_close() {
    let (_origin, edge) = edge_with("").await;
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", edge.port)).await.unwrap();
        s.write_all(request).await.unwrap();
        let reply = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(
            status_of(&reply).starts_with("HTTP/1.1 400"),
            "{:?} → {}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&reply)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_h2_preface_gets_goaway_and_a_real_one_is_served() {
    let (_origin, edge) = edge_with("").await;
    let mut s = TcpStream::connect(("127.0.0.1", edge.port)).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        .await
        .unwrap();
    let frames = read_until_closed(&mut s, Duration::from_secs(10)).await;
    // SETTINGS (type 4) on stream 0, then GOAWAY (type 7) with
    // PROTOCOL_ERROR (1), as RFC 9113 §3.4 and §6.8 write them.
    assert!(frames.len() >= 9 + 17, "{frames:?}");
    assert_eq!(frames[3], 0x4, "SETTINGS first: {frames:?}");
    let goaway = &frames[9..];
    assert_eq!(goaway[3], 0x7, "then GOAWAY: {frames:?}");
    assert_eq!(&goaway[9 + 4..9 + 8], &1u32.to_be_bytes(), "PROTOCOL_ERROR");

    // h2c with prior knowledge still works.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .get(format!("http://127.0.0.1:{}/seg/h2.m4s?len=7", edge.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_makes_room_for_viewers_and_one_address_gets_its_share() {
    let (_origin, edge) =
        edge_with("header_timeout = \"30s\"\nmax_connections = 5\nmax_connections_per_ip = 3")
            .await;
    // Three idle connections from one address fill its share (once the
    // edge has taken them all: which of four racing connects loses is
    // not for the test to guess).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", edge.port).await);
    }
    wait_open(&edge, 3).await;
    let mut fourth = connect_from("127.0.0.2", edge.port).await;
    let reply = read_until_closed(&mut fourth, Duration::from_secs(10)).await;
    assert!(
        status_of(&reply).starts_with("HTTP/1.1 503"),
        "{}",
        status_of(&reply)
    );
    assert!(String::from_utf8_lossy(&reply).contains("from your address"));

    // Two more from another address fill the edge. A viewer arriving now
    // is served: the oldest silent connection is closed (without a word)
    // to make room, not the viewer refused.
    for _ in 0..2 {
        held.push(connect_from("127.0.0.3", edge.port).await);
    }
    wait_open(&edge, 5).await;
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("meshcast_connections_waiting{kind=\"seated\"} 5"),
        "{metrics}"
    );

    // A viewer that speaks at once is let in.
    let status = get_once("127.0.0.4", edge.port, "/seg/room.m4s?len=3").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let evicted = read_until_closed(&mut held[0], Duration::from_secs(10)).await;
    assert!(evicted.is_empty(), "{}", String::from_utf8_lossy(&evicted));
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("meshcast_connections_refused_total{reason=\"evicted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshcast_connections_refused_total{reason=\"per_address\"} 1"),
        "{metrics}"
    );
}

/// Reads one response with a `Content-Length` body from a kept-alive
/// connection; its status line.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("the connection stays open");
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .expect("a content-length");
            if buf.len() >= end + 4 + length {
                return status_of(&buf);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_full_a_silent_newcomer_takes_nobodys_place() {
    let (_origin, edge) = edge_with(
        "header_timeout = \"2s\"\nheader_timeout_when_full = \"500ms\"\nmax_connections = 3\nmax_connections_per_ip = 3",
    )
    .await;
    // Three viewers fill the edge and keep their connections between
    // requests (no first-byte deadline ends those).
    let mut viewers = Vec::new();
    for i in 0..3 {
        let mut v = connect_from(&format!("127.0.0.{}", 10 + i), edge.port).await;
        v.write_all(b"GET /seg/ka.m4s?len=3 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut v).await.starts_with("HTTP/1.1 200"));
        viewers.push(v);
    }
    wait_open(&edge, 3).await;

    // A newcomer that says nothing takes nobody's place: the kernel holds
    // it first (TCP_DEFER_ACCEPT, about header_timeout), then it stands
    // for header_timeout_when_full and is closed without a word.
    let started = Instant::now();
    let mut silent = connect_from("127.0.0.20", edge.port).await;
    let said = read_until_closed(&mut silent, Duration::from_secs(20)).await;
    assert!(said.is_empty(), "{}", String::from_utf8_lossy(&said));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    eprintln!("a silent newcomer was closed after {waited:?}");
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("meshcast_connections_refused_total{reason=\"silent_when_full\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("reason=\"evicted\""), "{metrics}");
    for v in &mut viewers {
        v.write_all(b"GET /seg/ka.m4s?len=3 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(
            read_response(v).await.starts_with("HTTP/1.1 200"),
            "still served"
        );
    }

    // A newcomer that speaks at once is let in: the viewer waiting longest
    // between requests makes room for it.
    let status = get_once("127.0.0.21", edge.port, "/seg/ka.m4s?len=3").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let closed = read_until_closed(&mut viewers[0], Duration::from_secs(10)).await;
    assert!(closed.is_empty(), "{}", String::from_utf8_lossy(&closed));
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains("meshcast_connections_refused_total{reason=\"evicted\"} 1"),
        "{metrics}"
    );
}

/// An origin that answers every request with `103 Early Hints` and the
/// final `200` in one write (the case that used to lose the 103).
async fn early_hints_origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 103 Early Hints\r\nLink: </v/a/init.mp4>; rel=preload\r\n\r\n\
                          HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// RFC 9110 §15.2: interim responses are forwarded, before the final one,
/// even when both arrive in one packet; and never stored (RFC 9111 §3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_forwarded_and_never_stored() {
    let origin = early_hints_origin().await;
    let edge = Edge::config(origin, "").start().await;
    let fetch = || async {
        let mut s = TcpStream::connect(("127.0.0.1", edge.port)).await.unwrap();
        s.write_all(b"GET /seg/hints.m4s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8_lossy(&read_until_closed(&mut s, Duration::from_secs(10)).await)
            .into_owned()
    };
    let first = fetch().await;
    let (hints, fin) = (first.find("HTTP/1.1 103"), first.find("HTTP/1.1 200"));
    assert!(
        matches!((hints, fin), (Some(h), Some(f)) if h < f),
        "103 then 200:\n{first}"
    );
    assert!(first.contains("rel=preload"), "{first}");
    assert!(first.ends_with("ok"), "{first}");
    // The hit is the stored final response alone.
    let second = fetch().await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second
            .to_ascii_lowercase()
            .contains("cache-status: meshcast; hit"),
        "{second}"
    );
    assert!(!second.contains("103"), "{second}");
}
