//! Builds and runs an edge process from its config: the Pingora server, the
//! TCP/TLS door, the admin listener, and SIGHUP reloads.

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::cache::{TierSizes, TieredStorage};
use crate::connections::Connections;
use crate::delivery::book::Book;
use crate::delivery::hub_client::{HubClient, HubService};
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::pipeline::{EdgePipeline, EdgeState, Shared};
use crate::quic::{QuicDoor, QuicLimits};
use crate::sites::Sites;
use crate::tcp::{TcpDoor, TcpLimits, TcpService};
use arc_swap::ArcSwap;
use meshcast_conf::{ConfError, EdgeConfig};
use meshcast_control::identity::NodeKey;
use meshcast_control::messages::Issuer;
use meshcast_control::receipt::ReceiptSealer;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Config(#[from] ConfError),
    #[error("{0}")]
    Sites(String),
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
    #[error("node key: {0}")]
    Key(#[from] meshcast_control::identity::KeyError),
    #[error("ack log {0}: {1}")]
    AckLog(String, std::io::Error),
    #[error("[node] hub_ca: {0}")]
    HubCa(String),
}

/// Issuer keys the sites' configs trust for every path.
fn static_issuers(config: &EdgeConfig) -> Vec<Issuer> {
    let mut out: Vec<Issuer> = Vec::new();
    for t in config.sites.iter().filter_map(|s| s.tokens.as_ref()) {
        for k in &t.issuers {
            let i = Issuer {
                key: k.to_ascii_lowercase(),
                prefix: "/".into(),
            };
            if !out.contains(&i) {
                out.push(i);
            }
        }
    }
    out
}

/// The node identity, ack log and HUB client, when `[node]` is set.
fn build_delivery(
    config: &EdgeConfig,
    metrics: &'static Metrics,
) -> Result<(Arc<Delivery>, Option<HubClient>), EdgeError> {
    let Some(n) = &config.node else {
        let d = Delivery::new(None, None);
        d.static_issuers.store(Arc::new(static_issuers(config)));
        return Ok((Arc::new(d), None));
    };
    let key = NodeKey::load(&n.key)?;
    let dir = n.state_dir.join("acks");
    // The network's epoch length once the HUB has told it; until then the
    // configured one (and for networks whose genesis sets none).
    let epoch_ms = crate::delivery::hub_client::saved_epoch_secs(&dir)
        .map_or(n.epoch.0.as_millis() as u64, |s| s * 1000);
    let book = Book::open(
        ReceiptSealer::new(key),
        epoch_ms,
        n.ack_grace.0.as_millis() as u64,
        n.settled_keep.0.as_millis() as u64,
        &dir,
        metrics,
    )
    .map_err(|e| EdgeError::AckLog(dir.display().to_string(), e))?;
    let book = Arc::new(book);
    let delivery = Arc::new(Delivery::new(Some(book.clone()), Some(n.hub.clone())));
    delivery
        .static_issuers
        .store(Arc::new(static_issuers(config)));
    let saved = crate::delivery::hub_client::saved_issuers(&dir);
    metrics.hub_issuers.set(saved.len() as i64);
    delivery.hub_issuers.store(Arc::new(saved));
    let http =
        crate::delivery::hub_client::http_client(n.hub_ca.as_deref()).map_err(EdgeError::HubCa)?;
    let client = HubClient::new(
        delivery.clone(),
        book,
        metrics,
        n.hub.clone(),
        n.advertise.clone(),
        n.heartbeat.0,
        config.cache.disk_size.0.max(config.cache.memory_size.0),
        Box::new(move || {
            metrics
                .cache_bytes
                .with_label_values(&["memory"])
                .get()
                .max(0) as u64
                + metrics
                    .cache_bytes
                    .with_label_values(&["disk"])
                    .get()
                    .max(0) as u64
        }),
        http,
    );
    Ok((delivery, Some(client)))
}

/// Raises the open-files limit to its hard limit (every client connection,
/// origin connection and cache file is a descriptor), says what it is and
/// returns it.
fn raise_open_files_limit() -> u64 {
    raise_limit(libc::RLIMIT_NOFILE, "open-files").unwrap_or(1024)
}

/// Raises a resource's soft limit to its hard limit; returns the limit
/// now, `None` if it cannot be read. (The locked-memory limit is raised the
/// same way so `[cache] locked_size` gets what the hard limit allows.)
fn raise_limit(resource: libc::__rlimit_resource_t, name: &str) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(resource, &mut lim) != 0 {
            tracing::warn!(limit = name, "cannot read the limit");
            return None;
        }
        let before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if before != lim.rlim_max && libc::setrlimit(resource, &lim) != 0 {
            tracing::warn!(limit = name, now = before, "cannot raise the limit");
            return Some(before);
        }
        tracing::info!(
            limit = name,
            was = before,
            now = lim.rlim_cur,
            "limit raised to the hard limit"
        );
        Some(lim.rlim_cur)
    }
}

/// Client connections the open-files limit leaves room for: a tenth of
/// it (at least 256) is kept for origin connections, cache files, the ack
/// log and listeners, so a flood of clients cannot starve those.
fn connection_cap(open_files: u64) -> usize {
    let reserve = (open_files / 10).max(256);
    open_files.saturating_sub(reserve).max(1) as usize
}

/// The loopback origin for sites whose origin is the network, if any is.
fn network_origin(
    config: &EdgeConfig,
    metrics: &'static Metrics,
) -> Result<Option<crate::network::NetworkOrigin>, EdgeError> {
    let (true, Some(n)) = (config.sites.iter().any(|s| s.origin.network), &config.node) else {
        return Ok(None);
    };
    let key = NodeKey::load(&n.key)?;
    let http =
        crate::delivery::hub_client::http_client(n.hub_ca.as_deref()).map_err(EdgeError::HubCa)?;
    let origin = crate::network::NetworkOrigin::bind(n.hub.clone(), key, http, metrics)
        .map_err(|e| EdgeError::Sites(format!("the network origin cannot bind loopback: {e}")))?;
    tracing::info!(addr = %crate::network::origin_addr(), "network origin listening");
    Ok(Some(origin))
}

/// Everything a reload may change, built (and so validated) up front.
fn build_state(config: &EdgeConfig) -> Result<EdgeState, EdgeError> {
    Ok(EdgeState {
        sites: Sites::build(&config.sites).map_err(EdgeError::Sites)?,
        max_header_bytes: config.edge.max_request_header_size.0 as usize,
        connect_timeout: config.edge.origin_connect_timeout.0,
        read_timeout: config.edge.origin_read_timeout.0,
        keepalive_timeout: config.edge.keepalive_timeout.0,
        client_read_timeout: config.edge.client_read_timeout.0,
        send_timeout: config.edge.send_timeout.0,
        admin_key: config.edge.admin_key.as_ref().map(|k| k.0.clone()),
        alt_svc: config
            .edge
            .listen_quic
            .first()
            .map(|a| format!("h3=\":{}\"; ma=86400", a.port())),
    })
}

/// Loads and fully checks a config, as `--check` and SIGHUP do.
pub fn check(path: &Path) -> Result<EdgeConfig, EdgeError> {
    let config = EdgeConfig::load(path)?;
    build_state(&config)?;
    if let Some(n) = &config.node {
        NodeKey::load(&n.key)?;
    }
    Ok(config)
}

/// Runs the edge until it is told to stop. Never returns.
pub fn run(path: PathBuf, config: EdgeConfig) -> Result<(), EdgeError> {
    let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
    // Bound before the sites are built: they proxy to its address.
    let network = network_origin(&config, metrics)?;
    let state = build_state(&config)?;
    crate::replies::set_server_name(&config.edge.server_name);
    let open_files = raise_open_files_limit();
    raise_limit(libc::RLIMIT_MEMLOCK, "locked-memory");
    let c = &config.cache;
    let sizes = TierSizes {
        disk: c.disk_size.0,
        memory: c.memory_size.0,
        locked: c.locked_size.0,
    };
    let storage: &'static TieredStorage =
        Box::leak(Box::new(TieredStorage::new(&c.dir, sizes, metrics)));
    let lock: Box<CacheKeyLockImpl> = CacheLock::new_boxed(c.lock_timeout.0);
    let lock: &'static CacheKeyLockImpl = Box::leak(lock);
    let access_log = AccessLog::open(
        &config.log.access,
        config.log.format,
        crate::access_log::QUEUE_LINES,
        metrics.access_log_dropped.clone(),
    )
    .map_err(EdgeError::AccessLog)?;
    let (delivery, hub_client) = build_delivery(&config, metrics)?;
    let shared = Arc::new(Shared {
        delivery,
        storage,
        lock,
        metrics,
        access_log,
        max_object_size: c.max_object_size.0 as usize,
        state: ArcSwap::from_pointee(state),
    });
    spawn_reloader(path, shared.clone());

    let threads = config
        .edge
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let conf = ServerConf {
        threads,
        // Each thread keeps its connections: no cross-thread wake-ups on the
        // hot path (measured: see BENCHMARKS.md).
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // One pipeline behind every door.
    let mut proxy = pingora_proxy::http_proxy(
        &server.configuration,
        EdgePipeline {
            shared: shared.clone(),
        },
    );
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    // An HTTP/2 connection with no stream open is closed like an idle
    // HTTP/1.1 one.
    options.h2_idle_timeout = Some(config.edge.keepalive_timeout.0);
    proxy.server_options = Some(options);
    let proxy = Arc::new(proxy);
    let connections = Connections::new(
        config.edge.max_connections.min(connection_cap(open_files)),
        config.edge.max_connections_per_ip,
        Some(metrics.client_connections.clone()),
    );
    let door = TcpDoor::new(
        proxy.clone(),
        TcpLimits {
            header_timeout: config.edge.header_timeout.0,
            keepalive_timeout: config.edge.keepalive_timeout.0,
            max_header_bytes: config.edge.max_request_header_size.0 as usize,
        },
        metrics,
    );
    // Every TCP and TLS listener feeds the door's lobby, which holds a
    // connection as a bare socket until its first byte; bound here so
    // that an address in use stops the start with its name.
    let mut listeners = Vec::new();
    for addr in &config.edge.listen {
        listeners.push((bind_listener(*addr)?, None));
    }
    if !config.edge.listen_tls.is_empty() {
        let (Some(cert), Some(key)) = (&config.edge.tls_cert, &config.edge.tls_key) else {
            return Err(EdgeError::Tls(
                "listen_tls needs tls_cert and tls_key".into(),
            ));
        };
        for addr in &config.edge.listen_tls {
            let mut tls =
                TlsSettings::intermediate(&cert.to_string_lossy(), &key.to_string_lossy())
                    .map_err(|e| EdgeError::Tls(e.to_string()))?;
            tls.enable_h2();
            listeners.push((bind_listener(*addr)?, Some(tls.build())));
        }
    }
    server.add_service(TcpService::new(
        listeners,
        door,
        connections.clone(),
        config.edge.header_timeout_when_full.0,
        metrics,
    ));

    if !config.edge.listen_quic.is_empty() {
        let (Some(cert), Some(key)) = (&config.edge.tls_cert, &config.edge.tls_key) else {
            return Err(EdgeError::Tls(
                "listen_quic needs tls_cert and tls_key".into(),
            ));
        };
        // The same pipeline and shared state as the TCP door, driven by
        // QUIC request streams instead of Pingora's own listeners.
        let limits = QuicLimits {
            max_streams: config.edge.quic_max_streams,
            max_connections: config.edge.quic_max_connections,
            idle_timeout: config.edge.quic_idle_timeout.0,
        };
        let door = QuicDoor::new(
            &config.edge.listen_quic,
            cert,
            key,
            &limits,
            proxy.clone(),
            connections.clone(),
        )
        .map_err(|e| EdgeError::Tls(e.to_string()))?;
        server.add_service(background_service("meshcast quic door", door));
    }

    if let Some(network) = network {
        server.add_service(background_service("meshcast network origin", network));
    }

    if let (true, Some(client)) = (config.edge.webrtc, &hub_client) {
        let door = crate::rtc::RtcDoor::new(
            client.link(),
            proxy.clone(),
            config.edge.webrtc_address,
            config.edge.webrtc_max_peers,
            config.edge.webrtc_stun.clone(),
            metrics,
        );
        server.add_service(background_service("meshcast webrtc door", door));
    }

    if let Some(client) = hub_client {
        server.add_service(background_service(
            "meshcast hub client",
            HubService(parking_lot::Mutex::new(Some(client))),
        ));
    }

    if let Some(addr) = config.edge.admin {
        let mut admin = Service::new(
            "meshcast admin".into(),
            HttpServer::new_app(Admin {
                shared: shared.clone(),
            }),
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    tracing::info!(
        listen = ?config.edge.listen,
        listen_tls = ?config.edge.listen_tls,
        listen_quic = ?config.edge.listen_quic,
        admin = ?config.edge.admin,
        threads,
        disk = storage.has_disk(),
        "meshcast edge starting"
    );
    server.run_forever();
}

/// Reloads the config on SIGHUP (and reopens the access log); SIGUSR1 only
/// reopens the access log. A bad file is refused with its error and the
/// running config keeps serving; connections are never dropped.
fn spawn_reloader(path: PathBuf, shared: Arc<Shared>) {
    use signal_hook::consts::{SIGHUP, SIGUSR1};
    let mut signals = match signal_hook::iterator::Signals::new([SIGHUP, SIGUSR1]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; config reload disabled");
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("meshcast-reload".into()).spawn(move || {
        for signal in signals.forever() {
            // Both reopen the access log (after logrotate moved it).
            shared.access_log.reopen();
            if signal == SIGUSR1 {
                tracing::info!("access log reopened");
                continue;
            }
            match EdgeConfig::load(&path).map_err(EdgeError::from).and_then(|c| Ok((build_state(&c)?, static_issuers(&c)))) {
                Ok((state, issuers)) => {
                    shared.state.store(Arc::new(state));
                    shared.delivery.static_issuers.store(Arc::new(issuers));
                    shared.metrics.reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(config = %path.display(), "config reloaded (listeners and [cache] changes need a restart)");
                }
                Err(e) => {
                    shared.metrics.reloads.with_label_values(&["refused"]).inc();
                    tracing::error!(error = %e, "config reload refused; still serving the previous config");
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the reload thread");
    }
}

/// Binds a client listener, or says which address could not be had.
fn bind_listener(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, EdgeError> {
    crate::tcp::bind(addr).map_err(|e| EdgeError::Listen(addr, e))
}
