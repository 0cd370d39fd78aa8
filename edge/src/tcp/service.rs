//! The TCP door as a Pingora service: it starts the lobby on the bound
//! listeners and serves each connection the lobby hands over on one of
//! the service's worker threads (a random one, as Pingora's own listener
//! does on its no-steal runtime).

use super::lobby::{self, Arrival, Listening, LobbySettings};
use super::TcpDoor;
use crate::connections::Connections;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::server::{ListenFds, ShutdownWatch};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Binds `addr` for the edge (reuse-address, a deep backlog), so that an
/// address in use stops the start with its name.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    // The kernel caps this at net.core.somaxconn; when the lobby stops
    // accepting (the edge full, every standing place taken), newcomers
    // wait here.
    socket.listen(65_535)?;
    Ok(socket.into())
}

/// Connections handed over but not yet picked up by the service.
const HANDOFF: usize = 1024;

pub struct TcpService {
    listeners: Vec<Listening>,
    door: Arc<TcpDoor>,
    connections: Arc<Connections>,
    settings: LobbySettings,
    metrics: &'static Metrics,
}

impl TcpService {
    /// `listeners`: bound sockets, each with its TLS acceptor if any.
    pub fn new(
        listeners: Vec<(std::net::TcpListener, Option<Acceptor>)>,
        door: TcpDoor,
        connections: Arc<Connections>,
        grace: std::time::Duration,
        metrics: &'static Metrics,
    ) -> Self {
        let settings = LobbySettings {
            header_timeout: door.limits.header_timeout,
            grace,
            max_header_bytes: door.limits.max_header_bytes,
        };
        TcpService {
            listeners: listeners
                .into_iter()
                .map(|(socket, tls)| Listening {
                    socket,
                    tls: tls.map(Arc::new),
                })
                .collect(),
            door: Arc::new(door),
            connections,
            settings,
            metrics,
        }
    }
}

#[async_trait]
impl pingora_core::services::Service for TcpService {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let (handoff, mut arrivals) = mpsc::channel::<Arrival>(HANDOFF);
        let lobby = match lobby::start(
            std::mem::take(&mut self.listeners),
            self.connections.clone(),
            self.settings.clone(),
            self.metrics,
            handoff,
        ) {
            Ok(lobby) => lobby,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the TCP lobby; no TCP or TLS connection will be served");
                return;
            }
        };
        let mut watch = shutdown.clone();
        let mut batch = Vec::with_capacity(64);
        loop {
            tokio::select! {
                n = arrivals.recv_many(&mut batch, 64) => {
                    if n == 0 {
                        break;
                    }
                    for arrival in batch.drain(..) {
                        let (door, shutdown) = (self.door.clone(), shutdown.clone());
                        pingora_runtime::current_handle().spawn(async move {
                            door.serve_arrival(arrival, &shutdown).await;
                        });
                    }
                }
                _ = super::wait_shutdown(&mut watch) => break,
            }
        }
        drop(lobby);
        self.door.cleanup().await;
    }

    fn name(&self) -> &str {
        "meshcast edge"
    }
}
