//! meshcast-edge is the data plane: the request pipeline (one Pingora
//! `ProxyHttp`), the two-tier cache behind it, the doors that feed it, the
//! admin listener, and config reload. It reads configuration from
//! `meshcast-conf` and must not define config syntax itself, nor know about
//! HUB business logic (catalogs, ledgers): it serves bytes and reports.

pub mod access;
pub mod access_log;
pub mod admin;
pub mod cache;
mod cache_status;
pub mod connections;
mod custom_session;
pub mod delivery;
pub mod freshness;
pub mod http_rules;
pub mod metrics;
pub mod network;
mod observe;
pub mod path;
pub mod pipeline;
pub mod quic;
pub mod replies;
pub mod rtc;
pub mod server;
pub mod sites;
pub mod tcp;
