//! The cleartext listeners' accept loop, ours rather than Pingora's.
//!
//! Pingora spawns one task per accepted connection whose future holds its
//! TLS handshake state inline, plain TCP included: 8.8 KiB before a byte
//! arrives (heaptrack), half of what an idle connection cost. Here an
//! accepted socket takes its slot and then waits for its first byte as a
//! bare socket in a small task; only then does it get the door's buffers
//! and futures (boxed, so the parked task stays small). TLS listeners
//! stay on Pingora's listener: the handshake needs its acceptor, and its
//! cost dwarfs the task's.

use super::TcpDoor;
use async_trait::async_trait;
use pingora_core::apps::HttpServerApp;
use pingora_core::server::{ListenFds, ShutdownWatch};
use std::net::SocketAddr;
use std::sync::Arc;

/// Binds `addr` for the edge (reuse-address, a deep backlog), or says why
/// not.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // The kernel caps this at net.core.somaxconn.
    socket.listen(65_535)?;
    Ok(socket.into())
}

/// A Pingora service running accept loops on bound cleartext listeners;
/// connections go to `door` on the service's worker threads.
pub struct CleartextListeners {
    listeners: Vec<std::net::TcpListener>,
    door: Arc<TcpDoor>,
}

impl CleartextListeners {
    pub fn new(listeners: Vec<std::net::TcpListener>, door: Arc<TcpDoor>) -> Self {
        CleartextListeners { listeners, door }
    }
}

#[async_trait]
impl pingora_core::services::Service for CleartextListeners {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut loops = Vec::new();
        for std_listener in self.listeners.drain(..) {
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot use a listener");
                    continue;
                }
            };
            let (door, shutdown) = (self.door.clone(), shutdown.clone());
            loops.push(
                pingora_runtime::current_handle().spawn(accept_loop(listener, door, shutdown)),
            );
        }
        for l in loops {
            let _ = l.await;
        }
        self.door.proxy.http_cleanup().await;
    }

    fn name(&self) -> &str {
        "meshcast edge"
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    door: Arc<TcpDoor>,
    mut shutdown: ShutdownWatch,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
                continue;
            }
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                // A random worker thread (Pingora's no-steal runtime).
                let worker = pingora_runtime::current_handle();
                match door.admit_cleartext(peer) {
                    Ok(slot) => {
                        let (door, shutdown) = (door.clone(), shutdown.clone());
                        worker.spawn(async move {
                            door.serve_cleartext(tcp, slot, &shutdown).await;
                        });
                    }
                    Err(reason) => {
                        worker.spawn(TcpDoor::refuse_cleartext(tcp, reason));
                    }
                }
            }
            Err(e) => {
                // Out of descriptors: accept would fail at once again; let
                // closing connections give some back.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
