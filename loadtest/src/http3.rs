//! `http3`: 2 MB segment throughput over HTTP/3 against HTTP/2 over TLS, on
//! the same edge (TLS and QUIC listeners on one port number), with the same
//! number of connections and requests in flight for each.

use crate::origin::Origin;
use crate::servers;
use crate::Common;
use anyhow::Context;
use bytes::Buf;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Options {
    pub common: Common,
    pub duration: u64,
    pub connections: usize,
    pub streams: usize,
    pub rounds: usize,
}

const PATH: &str = "/obj/2m.m4s";

fn tls_config(cert: &Path, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cert)?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// Bytes per second over HTTP/2 (TLS over TCP).
async fn h2_run(addr: SocketAddr, cert: &Path, o: &Options) -> anyhow::Result<(f64, f64)> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(cert, b"h2")?));
    let bytes = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(o.duration);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..o.connections {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(8 << 20)
            .initial_connection_window_size(32 << 20)
            .handshake::<_, bytes::Bytes>(tls)
            .await?;
        tokio::spawn(conn);
        for _ in 0..o.streams {
            let (mut send, bytes, requests) = (send.clone(), bytes.clone(), requests.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    send = send.ready().await?;
                    let req = http::Request::get(format!("https://localhost{PATH}")).body(())?;
                    let (resp, _) = send.send_request(req, true)?;
                    let mut body = resp.await?.into_body();
                    while let Some(chunk) = body.data().await {
                        let chunk = chunk?;
                        let _ = body.flow_control().release_capacity(chunk.len());
                        bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((
        bytes.load(Ordering::Relaxed) as f64 / secs,
        requests.load(Ordering::Relaxed) as f64 / secs,
    ))
}

/// Bytes per second over HTTP/3.
async fn h3_run(addr: SocketAddr, cert: &Path, o: &Options) -> anyhow::Result<(f64, f64)> {
    let tls = tls_config(cert, b"h3")?;
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    // Receive windows like the HTTP/2 client's (8 MiB per stream, 32 MiB per connection).
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window((8u32 << 20).into());
    transport.receive_window((32u32 << 20).into());
    client.transport_config(Arc::new(transport));
    let bytes = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(o.duration);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..o.connections {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(client.clone());
        let conn = endpoint
            .connect(addr, "localhost")?
            .await
            .context("QUIC handshake")?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        endpoints.push(endpoint);
        for _ in 0..o.streams {
            let (mut send, bytes, requests) = (send.clone(), bytes.clone(), requests.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let req = http::Request::get(format!("https://localhost{PATH}")).body(())?;
                    let mut stream = send.send_request(req).await?;
                    stream.finish().await?;
                    stream.recv_response().await?;
                    while let Some(mut chunk) = stream.recv_data().await? {
                        let n = chunk.remaining();
                        chunk.advance(n);
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    for e in endpoints {
        e.close(0u32.into(), b"done");
    }
    Ok((
        bytes.load(Ordering::Relaxed) as f64 / secs,
        requests.load(Ordering::Relaxed) as f64 / secs,
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("meshcast-http3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let origin = Origin::start(4.0, 10).await?;
    let (edge, port, cert) = servers::start_edge_tls_quic(&o.common, origin.addr, &dir).await?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    // Warm the cache over HTTP/2 so both protocols measure hits.
    let warm = Options {
        duration: 1,
        connections: 1,
        streams: 1,
        ..o.clone_opts()
    };
    h2_run(addr, &cert, &warm).await?;
    let (mut h2s, mut h3s, mut h2r, mut h3r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        let (b, r) = h2_run(addr, &cert, &o).await?;
        h2s.push(b);
        h2r.push(r);
        let (b, r) = h3_run(addr, &cert, &o).await?;
        h3s.push(b);
        h3r.push(r);
    }
    let (h2_mbs, h3_mbs) = (median(h2s) / 1e6, median(h3s) / 1e6);
    let ratio = h3_mbs / h2_mbs.max(1e-9);
    if o.common.json {
        println!(
            "{}",
            serde_json::json!({"object": "2 MB segment", "connections": o.connections, "streams_per_connection": o.streams,
                "duration_s": o.duration, "rounds": o.rounds,
                "h2_tls": {"mb_per_sec": (h2_mbs * 10.0).round() / 10.0, "rps": median(h2r).round()},
                "h3": {"mb_per_sec": (h3_mbs * 10.0).round() / 10.0, "rps": median(h3r).round()},
                "ratio_h3_over_h2": (ratio * 100.0).round() / 100.0})
        );
    } else {
        println!("| protocol | MB/s | req/s |\n|---|---|---|");
        println!("| HTTP/2 over TLS | {h2_mbs:.1} | {:.0} |", median(h2r));
        println!("| HTTP/3 | {h3_mbs:.1} | {:.0} |", median(h3r));
        println!("\nHTTP/3 ÷ HTTP/2 throughput: {ratio:.2} ({} connections × {} streams, {} s × {} rounds, medians)", o.connections, o.streams, o.duration, o.rounds);
    }
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

impl Options {
    fn clone_opts(&self) -> Options {
        Options {
            common: self.common.clone(),
            duration: self.duration,
            connections: self.connections,
            streams: self.streams,
            rounds: self.rounds,
        }
    }
}
