//! The QUIC door: HTTP/3 over quinn + h3. Every request stream becomes a
//! Pingora custom session (`session.rs`) handed to the same `HttpProxy`
//! pipeline as the TCP door, so HTTP/3 shares cache, coalescing, access
//! checks, logs and metrics. Listeners bound to a loopback IPv4 address
//! also listen on `[::1]`, so browsers resolving `localhost` to IPv6 connect.

mod session;

use crate::connections::Connections;
use crate::pipeline::EdgePipeline;
use async_trait::async_trait;
use pingora_core::apps::HttpServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_proxy::HttpProxy;
use session::H3Session;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct QuicLimits {
    pub max_streams: u32,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

pub struct QuicDoor {
    addrs: Vec<SocketAddr>,
    config: quinn::ServerConfig,
    proxy: Arc<HttpProxy<EdgePipeline>>,
    /// This door's own `quic_max_connections`.
    quic: Arc<Connections>,
    /// The edge's table, shared with the TCP door (per-address limits).
    shared: Arc<Connections>,
}

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("reading {path}: {why}")]
    Pem { path: String, why: String },
    #[error("TLS config: {0}")]
    Tls(String),
}

fn server_config(
    cert: &Path,
    key: &Path,
    limits: &QuicLimits,
) -> Result<quinn::ServerConfig, QuicError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |p: &Path, e: &dyn std::fmt::Display| QuicError::Pem {
        path: p.display().to_string(),
        why: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(limits.max_streams.into());
    transport.max_concurrent_uni_streams(8u32.into());
    // Segments are megabytes: windows sized for a few in flight per
    // connection, like the HTTP/2 door's.
    transport.send_window(16 << 20);
    transport.stream_receive_window((4u32 << 20).into());
    transport.receive_window((16u32 << 20).into());
    transport.max_idle_timeout(Some(
        limits
            .idle_timeout
            .try_into()
            .map_err(|_| QuicError::Tls("idle timeout too large".into()))?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

impl QuicDoor {
    pub fn new(
        addrs: &[SocketAddr],
        cert: &Path,
        key: &Path,
        limits: &QuicLimits,
        proxy: Arc<HttpProxy<EdgePipeline>>,
        shared: Arc<Connections>,
    ) -> Result<Self, QuicError> {
        let mut all = addrs.to_vec();
        for a in addrs {
            if a.ip() == IpAddr::from([127, 0, 0, 1]) {
                all.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), a.port()));
            }
        }
        Ok(QuicDoor {
            addrs: all,
            config: server_config(cert, key, limits)?,
            proxy,
            quic: Connections::new(limits.max_connections, limits.max_connections, None),
            shared,
        })
    }
}

#[async_trait]
impl BackgroundService for QuicDoor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut endpoints = Vec::new();
        for addr in &self.addrs {
            match quinn::Endpoint::server(self.config.clone(), *addr) {
                Ok(ep) => {
                    tracing::info!(%addr, "HTTP/3 listening");
                    endpoints.push(ep);
                }
                Err(e) => tracing::error!(%addr, error = %e, "cannot listen for HTTP/3"),
            }
        }
        for ep in &endpoints {
            let (ep, proxy, quic, shared, shutdown) = (
                ep.clone(),
                self.proxy.clone(),
                self.quic.clone(),
                self.shared.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                while let Some(incoming) = ep.accept().await {
                    let peer = Some(incoming.remote_address().ip());
                    // QUIC connections are never evicted for TCP ones
                    // (busy from the start); they have their idle timeout.
                    let Ok(slot) = quic
                        .admit(None, true)
                        .and_then(|q| shared.admit(peer, true).map(|s| (q, s)))
                    else {
                        incoming.refuse();
                        continue;
                    };
                    let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        // Held for the task's life, however it ends (a
                        // panic included): dropping it frees the slot.
                        let _slot = slot;
                        if let Err(e) = serve_connection(incoming, proxy, shutdown).await {
                            tracing::debug!(error = %e, "HTTP/3 connection ended");
                        }
                    });
                }
            });
        }
        let _ = shutdown.changed().await;
        for ep in endpoints {
            ep.close(0u32.into(), b"shutting down");
        }
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    proxy: Arc<HttpProxy<EdgePipeline>>,
    shutdown: ShutdownWatch,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let conn = incoming.await?;
    let client = conn.remote_address();
    let local = conn.local_ip().map(|ip| SocketAddr::new(ip, 0));
    let mut h3 = h3::server::Connection::new(h3_quinn::Connection::new(conn)).await?;
    loop {
        match h3.accept().await {
            Ok(Some(resolver)) => {
                let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let (request, stream) = match resolver.resolve_request().await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(error = %e, "malformed HTTP/3 request");
                            return;
                        }
                    };
                    match H3Session::new(request, stream, client, local) {
                        Ok(session) => {
                            let _ = proxy
                                .process_new_http(
                                    ServerSession::new_custom(Box::new(session)),
                                    &shutdown,
                                )
                                .await;
                        }
                        Err(e) => tracing::debug!(error = %e, "unusable HTTP/3 request"),
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(Box::new(e)),
        }
    }
}
