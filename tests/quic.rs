//! The QUIC door: HTTP/3 into the same pipeline and cache as HTTP/1.1.

mod support;

use std::time::Duration;
use support::*;

async fn quic_edge(origin: std::net::SocketAddr) -> (Edge, u16, std::path::PathBuf) {
    let edge = Edge::config(origin, "");
    let (cert, key, _) = make_cert(edge.path());
    let port = free_port();
    let text = std::fs::read_to_string(&edge.config).unwrap().replace(
        "[edge]\n",
        &format!(
            "[edge]\nlisten_tls = [\"127.0.0.1:{port}\"]\nlisten_quic = [\"127.0.0.1:{port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\nquic_max_streams = 50\n",
            cert.display(),
            key.display()
        ),
    );
    std::fs::write(&edge.config, text).unwrap();
    (edge.start().await, port, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_miss_then_http3_hit_and_the_other_way_round() {
    let origin = Origin::start().await;
    let (edge, port, cert) = quic_edge(origin.addr).await;
    let quic: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Same Host on both doors: the cache key includes it.
    let h1 = get(
        &edge.url("/seg/one.m4s?len=300000"),
        &[("host", "localhost")],
    )
    .await;
    assert!(h1.cache.contains("fwd=miss"), "{}", h1.cache);
    assert_eq!(h1.headers["alt-svc"], format!("h3=\":{port}\"; ma=86400"));
    let h3 = support::h3::get(quic, &cert, "/seg/one.m4s?len=300000").await;
    assert_eq!(h3.status, 200);
    assert!(
        h3.headers["cache-status"].to_str().unwrap().contains("hit"),
        "{:?}",
        h3.headers
    );
    assert_eq!(h3.body, h1.body);
    assert_eq!(origin.hits("/seg/one.m4s"), 1);

    let first = support::h3::get(quic, &cert, "/seg/two.m4s?len=2000000").await;
    assert!(first.headers["cache-status"]
        .to_str()
        .unwrap()
        .contains("fwd=miss"));
    assert_eq!(first.body, body_for("two.m4s", 2_000_000));
    let then = get(
        &edge.url("/seg/two.m4s?len=2000000"),
        &[("host", "localhost")],
    )
    .await;
    assert!(then.cache.contains("hit"), "{}", then.cache);
    assert_eq!(then.body, first.body);
    assert_eq!(origin.hits("/seg/two.m4s"), 1);

    // Logs (and metrics, access checks, errors) are the pipeline's, whatever the door.
    for _ in 0..50 {
        if std::fs::read_to_string(edge.path().join("access.log"))
            .unwrap_or_default()
            .contains("HTTP/3")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(edge.path().join("access.log")).unwrap();
    assert!(log.contains("HTTP/3"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_abrupt_closes_do_not_disturb_other_connections() {
    let origin = Origin::start().await;
    let (edge, port, cert) = quic_edge(origin.addr).await;
    let quic: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Random datagrams at the QUIC port.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..1200).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect();
        udp.send_to(&junk, quic).unwrap();
    }
    // A client that asks for a big object and vanishes mid-body.
    {
        let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(support::h3::client_config(&cert));
        let conn = endpoint.connect(quic, "localhost").unwrap().await.unwrap();
        let (_driver, mut send) = ::h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .unwrap();
        let req = http::Request::get(format!("https://localhost:{port}/seg/big.m4s?len=4000000"))
            .body(())
            .unwrap();
        let mut stream = send.send_request(req).await.unwrap();
        stream.finish().await.unwrap();
        let _ = stream.recv_response().await;
        let _ = stream.recv_data().await;
        conn.close(7u32.into(), b"gone");
        endpoint.close(7u32.into(), b"gone");
    }
    let ok = support::h3::get(quic, &cert, "/seg/after.m4s?len=1000").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, body_for("after.m4s", 1000));
    assert_eq!(
        get(&edge.url("/seg/after.m4s?len=1000"), &[]).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_plays_over_http3_in_chromium() {
    use support::hub::*;
    let port = free_port();
    let mut hub = Hub::config(&format!("https://localhost:{port}"));
    hub.launch().await;
    let edge = Edge::config(hub.addr(), "");
    let (cert, key, spki) = make_cert(edge.path());
    let text = std::fs::read_to_string(&edge.config).unwrap().replace(
        "[edge]\n",
        &format!(
            "[edge]\nlisten_tls = [\"127.0.0.1:{port}\"]\nlisten_quic = [\"127.0.0.1:{port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    std::fs::write(&edge.config, text).unwrap();
    let _edge = edge.start().await;
    let src = hub.dir.join("clip.mp4");
    make_video(&src, 6, "640x360");
    let client = hub.client();
    let url = meshcast_hub::tus_client::upload_file(
        &client,
        &hub.url("/v1/videos"),
        &src,
        1 << 20,
        |_, _| {},
    )
    .await
    .unwrap();
    let (video, _) = hub
        .wait_done(
            meshcast_hub::tus_client::video_id(&url),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(video["status"], "ready", "{video}");
    let player = video["player"][0].as_str().unwrap().to_string();
    assert!(
        player.starts_with(&format!("https://localhost:{port}/play/")),
        "{player}"
    );
    let flags = format!("--enable-quic --origin-to-force-quic-on=localhost:{port} --ignore-certificate-errors-spki-list={spki}");
    let r = play_in_chromium_with(&player, &flags);
    assert_eq!(r["ended"], true, "{r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    let segments: Vec<&serde_json::Value> = r["protocols"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0].as_str().unwrap_or("").ends_with(".m4s"))
        .collect();
    assert!(segments.len() >= 3, "{r}");
    assert!(
        segments.iter().all(|p| p[1] == "h3"),
        "every segment over HTTP/3: {r}"
    );
}
