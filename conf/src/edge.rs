//! `meshcast edge` configuration: listeners, the cache, logging and sites.

use crate::error::ConfError;
use crate::units::{ByteSize, Seconds};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole edge config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub edge: EdgeSection,
    pub cache: CacheSection,
    #[serde(default)]
    pub log: LogSection,
    /// Identity, HUB and proof of delivery; without it the edge signs no
    /// receipts and takes no acks.
    pub node: Option<NodeSection>,
    #[serde(rename = "site", default)]
    pub sites: Vec<SiteConfig>,
}

/// `[node]`: who this edge is to the network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Ed25519 node key (`meshcast keys gen --out FILE`), mode 0600.
    pub key: PathBuf,
    /// The HUB's base URL, e.g. "https://hub.example" (TLS with rustls,
    /// trusting the system's CA store).
    pub hub: String,
    /// PEM certificate(s) to trust for an https `hub` besides the system's
    /// CAs: a private CA, or the HUB's own self-signed certificate.
    pub hub_ca: Option<PathBuf>,
    /// Base URL viewers reach this edge at (registered with the HUB).
    pub advertise: String,
    /// Where acknowledged deliveries are logged (fsync'd) until settled.
    pub state_dir: PathBuf,
    /// Length of a delivery epoch, used only until the HUB tells the
    /// network's (kept in `state_dir/network.json`) and for networks whose
    /// genesis sets none: acks are claimed at the HUB once per epoch.
    #[serde(default = "default_epoch")]
    pub epoch: Seconds,
    /// How long after an epoch ends acks for it are still taken; keep it
    /// above the players' ack interval (the hls.js plugin: 2 s).
    #[serde(default = "default_ack_grace")]
    pub ack_grace: Seconds,
    #[serde(default = "default_heartbeat")]
    pub heartbeat: Seconds,
    /// How long a settled epoch's outcome (`{epoch}.settled` beside the ack
    /// logs) is kept for the operator; older ones are deleted.
    #[serde(default = "default_settled_keep")]
    pub settled_keep: Seconds,
}

fn default_epoch() -> Seconds {
    Seconds(Duration::from_secs(60))
}
fn default_ack_grace() -> Seconds {
    Seconds(Duration::from_secs(10))
}
fn default_heartbeat() -> Seconds {
    Seconds(Duration::from_secs(10))
}
fn default_settled_keep() -> Seconds {
    Seconds(Duration::from_secs(7 * 86_400))
}

/// `[site.tokens]`: playback tokens (PASETO v4.public) in the path,
/// `/t/{token}/...`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Paths under these prefixes need a token; others (player page,
    /// scripts) pass without one.
    #[serde(default = "default_token_paths")]
    pub paths: Vec<String>,
    /// Issuer public keys (64 hex digits) trusted for every path, besides
    /// those the HUB names.
    #[serde(default)]
    pub issuers: Vec<String>,
}

fn default_token_paths() -> Vec<String> {
    vec!["/".into()]
}

/// `[edge]`: listeners and request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSection {
    /// Plain-text listeners: HTTP/1.1 and h2c.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// TLS listeners: HTTP/1.1 and HTTP/2 by ALPN.
    #[serde(default)]
    pub listen_tls: Vec<SocketAddr>,
    /// HTTP/3 (QUIC) listeners; they use `tls_cert`/`tls_key` and may share
    /// a port number with a TLS listener.
    #[serde(default)]
    pub listen_quic: Vec<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Concurrent request streams per QUIC connection.
    #[serde(default = "default_quic_streams")]
    pub quic_max_streams: u32,
    /// QUIC connections at once; new ones beyond are refused.
    #[serde(default = "default_quic_connections")]
    pub quic_max_connections: usize,
    /// A QUIC connection idle this long is closed.
    #[serde(default = "default_quic_idle")]
    pub quic_idle_timeout: Seconds,
    /// Serve browsers over WebRTC data channels, signalled through the
    /// HUB (needs `[node]`): for nodes behind NAT that open no port.
    #[serde(default)]
    pub webrtc: bool,
    /// The address offered as the ICE host candidate; by default the one
    /// this host reaches the HUB from.
    pub webrtc_address: Option<std::net::IpAddr>,
    /// STUN servers ("host:port") the node asks for its public address, to
    /// offer as a server-reflexive candidate; none needed on one network.
    #[serde(default)]
    pub webrtc_stun: Vec<String>,
    /// WebRTC peers at once; offers beyond are answered with an error.
    #[serde(default = "default_webrtc_peers")]
    pub webrtc_max_peers: usize,
    /// Admin listener: `/metrics`, `/healthz`, `POST /purge`.
    pub admin: Option<SocketAddr>,
    /// Bearer key that `POST /purge` must present; purge is refused without one.
    pub admin_key: Option<Secret>,
    /// Worker threads; defaults to the number of cores.
    pub threads: Option<usize>,
    #[serde(default = "default_connect_timeout")]
    pub origin_connect_timeout: Seconds,
    #[serde(default = "default_read_timeout")]
    pub origin_read_timeout: Seconds,
    /// Requests whose header block is larger get 431.
    #[serde(default = "default_max_header")]
    pub max_request_header_size: ByteSize,
    /// A client connection idle this long between requests is closed
    /// (HTTP/1.1 keep-alive; nginx's `keepalive_timeout`).
    #[serde(default = "default_keepalive")]
    pub keepalive_timeout: Seconds,
    /// A client that sends no byte of its request body for this long is
    /// cut off.
    #[serde(default = "default_client_read")]
    pub client_read_timeout: Seconds,
    /// A request head (request line and header fields) must arrive whole
    /// within this of its first byte, and a new connection's first byte
    /// within this of the connect (408 and close otherwise; nginx's
    /// `client_header_timeout`), however slowly the bytes trickle in.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Seconds,
    /// While the edge is at `max_connections`, a new connection must send
    /// its first byte within this to be let in (taking the place of the
    /// longest-silent connection); one that stays silent is closed (the
    /// kernel holds it for about `header_timeout` first, at no cost), so
    /// silent floods cycle this slowly instead of evicting each other.
    #[serde(default = "default_header_timeout_when_full")]
    pub header_timeout_when_full: Seconds,
    /// A client that takes no byte of the response for this long is cut
    /// off (nginx's `send_timeout`).
    #[serde(default = "default_send_timeout")]
    pub send_timeout: Seconds,
    /// Client connections (TCP and TLS) open at once; more are answered 503
    /// and closed. Lowered at start to what the open-files limit allows.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Client connections from one address at once (one /64 for IPv6);
    /// more are answered 503 and closed. QUIC counts here too.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// `Server` on the edge's own responses (errors, its endpoints); the
    /// origin's is passed through on proxied ones. Read at start.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_keepalive() -> Seconds {
    Seconds(Duration::from_secs(60))
}

fn default_client_read() -> Seconds {
    Seconds(Duration::from_secs(30))
}

fn default_header_timeout() -> Seconds {
    Seconds(Duration::from_secs(10))
}

fn default_header_timeout_when_full() -> Seconds {
    Seconds(Duration::from_secs(1))
}

fn default_send_timeout() -> Seconds {
    Seconds(Duration::from_secs(60))
}

fn default_max_connections() -> usize {
    100_000
}

fn default_max_connections_per_ip() -> usize {
    1_000
}

fn default_server_name() -> String {
    "meshcast".into()
}

/// `[cache]`: the two tiers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub dir: PathBuf,
    pub disk_size: ByteSize,
    #[serde(default = "default_memory_size")]
    pub memory_size: ByteSize,
    /// Disk-tier bodies of 256KiB and up, once their sum is checked, stay
    /// mapped and locked in RAM up to this many bytes, so their next hits
    /// read nothing from disk and check nothing. Counted apart from
    /// `memory_size`. Needs `RLIMIT_MEMLOCK` at least this large (root has
    /// no limit; systemd: `LimitMEMLOCK=`); bodies that cannot be locked
    /// are checked on every hit. 0 turns it off.
    #[serde(default = "default_locked_size")]
    pub locked_size: ByteSize,
    /// Larger responses are passed through, not cached.
    #[serde(default = "default_max_object")]
    pub max_object_size: ByteSize,
    /// How long a request waits for another request's fetch of the same
    /// object before it goes to the origin itself.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: Seconds,
}

/// `[log]`: diagnostics and the access log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `tracing` filter, e.g. "info" or "meshcast_edge=debug".
    #[serde(default = "default_level")]
    pub level: String,
    /// "stdout", "off", or a file path.
    #[serde(default = "default_access")]
    pub access: String,
    #[serde(default)]
    pub format: AccessLogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Text,
    Json,
}

/// `[[site]]`: which hosts it answers and where their content comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub hosts: Vec<HostPattern>,
    pub origin: Origin,
    /// Host header sent to the origin; defaults to the client's Host.
    pub origin_host: Option<String>,
    /// Freshness of `.m3u8`/`.mpd` when the origin gives none.
    #[serde(default = "default_playlist_ttl")]
    pub playlist_ttl: Seconds,
    /// Freshness of media segments when the origin gives none.
    #[serde(default = "default_segment_ttl")]
    pub segment_ttl: Seconds,
    /// Freshness of anything else when the origin gives none; 0 = not cached.
    #[serde(default = "zero")]
    pub default_ttl: Seconds,
    /// Serve stale while one request revalidates, unless the origin says otherwise.
    #[serde(default = "zero")]
    pub stale_while_revalidate: Seconds,
    /// Serve stale when the origin fails, unless the origin says otherwise.
    #[serde(default = "default_stale_if_error")]
    pub stale_if_error: Seconds,
    pub signed_urls: Option<SignedUrls>,
    pub tokens: Option<TokenConfig>,
}

/// `[site.signed_urls]`: HMAC-SHA256 over path prefix and expiry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedUrls {
    pub secret: Secret,
}

/// A secret string of at least 16 bytes; never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() < 16 {
            return Err(de::Error::custom(format!(
                "a secret must be at least 16 bytes long (this one has {}); generate one with `openssl rand -hex 32`",
                s.len()
            )));
        }
        Ok(Secret(s))
    }
}

/// A Host pattern: `*` (any), `*.example.com` (any subdomain) or a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Any,
    Suffix(String),
    Exact(String),
}

impl HostPattern {
    /// As written in the config: `*`, `*.example.com` or a host name.
    pub fn text(&self) -> String {
        match self {
            HostPattern::Any => "*".into(),
            HostPattern::Suffix(s) => format!("*{s}"),
            HostPattern::Exact(s) => s.clone(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        if t == "*" {
            return Ok(HostPattern::Any);
        }
        let (suffix, name) = match t.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, t.clone()),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "{text:?} is not a host pattern; expected \"*\", \"*.example.com\" or a host name"
            ));
        }
        Ok(if suffix {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }

    /// `host` must be lowercase and without a port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Suffix(s) => host.ends_with(s.as_str()),
            HostPattern::Exact(e) => host == e,
        }
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        HostPattern::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// Where a site's content comes from: `http://host:port`,
/// `https://host:port`, or `network`: media from the storage nodes'
/// shards (through the edge's own network origin on loopback), the rest
/// from the HUB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub network: bool,
}

impl Origin {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "network" {
            return Ok(Origin {
                tls: false,
                host: "127.0.0.1".into(),
                port: 0,
                network: true,
            });
        }
        const HELP: &str = "expected an origin URL such as \"http://127.0.0.1:8000\" or \"https://origin.example.com\"";
        let uri: http::Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL ({e}); {HELP}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "{text:?} has no http:// or https:// scheme; {HELP}"
                ))
            }
        };
        if uri
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
        {
            return Err(format!(
                "{text:?} has a path; an origin is scheme, host and port only; {HELP}"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("{text:?} has no host; {HELP}"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Origin {
            tls,
            host,
            port,
            network: false,
        })
    }

    /// `host:port`, bracketing IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Origin::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: default_level(),
            access: default_access(),
            format: AccessLogFormat::Text,
        }
    }
}

fn default_quic_streams() -> u32 {
    100
}
fn default_webrtc_peers() -> usize {
    256
}
fn default_quic_connections() -> usize {
    10_000
}
fn default_quic_idle() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_connect_timeout() -> Seconds {
    Seconds(Duration::from_secs(3))
}
fn default_read_timeout() -> Seconds {
    Seconds(Duration::from_secs(15))
}
fn default_max_header() -> ByteSize {
    ByteSize(32 << 10)
}
fn default_memory_size() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_locked_size() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_max_object() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_lock_timeout() -> Seconds {
    Seconds(Duration::from_secs(10))
}
fn default_level() -> String {
    "info".into()
}
fn default_access() -> String {
    "stdout".into()
}
fn default_playlist_ttl() -> Seconds {
    Seconds(Duration::from_secs(2))
}
fn default_segment_ttl() -> Seconds {
    Seconds(Duration::from_secs(86400))
}
fn default_stale_if_error() -> Seconds {
    Seconds(Duration::from_secs(60))
}
fn zero() -> Seconds {
    Seconds(Duration::ZERO)
}

impl EdgeConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfError> {
        crate::load::load(path, Self::validate)
    }

    /// Parses and validates `src`; `path` is used only in error messages.
    pub fn parse(path: &Path, src: &str) -> Result<Self, ConfError> {
        crate::load::parse(path, src, Self::validate)
    }

    /// Checks that span several keys. Returns the key to blame and why.
    fn validate(&self) -> Result<(), (String, String)> {
        let e = &self.edge;
        if e.server_name.is_empty()
            || e.server_name.len() > 100
            || !e
                .server_name
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err((
                "edge.server_name".into(),
                "1 to 100 visible ASCII characters, e.g. \"meshcast\"".into(),
            ));
        }
        for (key, t) in [
            ("edge.keepalive_timeout", e.keepalive_timeout.0),
            ("edge.client_read_timeout", e.client_read_timeout.0),
            ("edge.header_timeout", e.header_timeout.0),
            ("edge.send_timeout", e.send_timeout.0),
        ] {
            if t < Duration::from_secs(1) || t > Duration::from_secs(3600) {
                return Err((key.into(), "1s to 1h".into()));
            }
        }
        let when_full = e.header_timeout_when_full.0;
        if when_full < Duration::from_millis(100) || when_full > e.header_timeout.0 {
            return Err((
                "edge.header_timeout_when_full".into(),
                format!(
                    "100ms to header_timeout ({}s)",
                    e.header_timeout.0.as_secs_f64()
                ),
            ));
        }
        if e.max_connections == 0 || e.max_connections_per_ip == 0 {
            return Err((
                "edge.max_connections".into(),
                "max_connections and max_connections_per_ip must be at least 1".into(),
            ));
        }
        if e.max_connections_per_ip > e.max_connections {
            return Err((
                "edge.max_connections_per_ip".into(),
                format!(
                    "{} is more than max_connections ({})",
                    e.max_connections_per_ip, e.max_connections
                ),
            ));
        }
        if e.webrtc && self.node.is_none() {
            return Err((
                "edge.webrtc".into(),
                "WebRTC offers come through the HUB: add a [node] section with `hub = \"http://HUB:PORT\"`".into(),
            ));
        }
        if let Some(bad) = e.webrtc_stun.iter().find(|s| {
            s.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err((
                "edge.webrtc_stun".into(),
                format!("{bad:?} is not host:port, e.g. \"stun.example.org:3478\""),
            ));
        }
        if e.webrtc_max_peers == 0 {
            return Err(("edge.webrtc_max_peers".into(), "at least 1".into()));
        }
        if e.listen.is_empty() && e.listen_tls.is_empty() && !e.webrtc {
            return Err((
                "edge".into(),
                "no listener: set `listen = [\"0.0.0.0:80\"]`, `listen_tls`, or `webrtc = true`"
                    .into(),
            ));
        }
        for (key, list) in [
            ("edge.listen_tls", &e.listen_tls),
            ("edge.listen_quic", &e.listen_quic),
        ] {
            if list.is_empty() {
                continue;
            }
            if e.tls_cert.is_none() {
                return Err((
                    key.into(),
                    "TLS and QUIC listeners need `tls_cert = \"PATH\"` (PEM certificate chain)"
                        .into(),
                ));
            }
            if e.tls_key.is_none() {
                return Err((
                    key.into(),
                    "TLS and QUIC listeners need `tls_key = \"PATH\"` (PEM private key)".into(),
                ));
            }
        }
        if e.quic_max_streams == 0 || e.quic_max_connections == 0 {
            return Err((
                "edge.quic_max_streams".into(),
                "QUIC limits must be at least 1".into(),
            ));
        }
        if e.threads == Some(0) {
            return Err(("edge.threads".into(), "threads must be at least 1".into()));
        }
        let c = &self.cache;
        if c.memory_size.0 < (1 << 20) {
            return Err((
                "cache.memory_size".into(),
                "the memory tier needs at least 1MiB".into(),
            ));
        }
        if c.max_object_size.0 > 256 << 20 {
            return Err((
                "cache.max_object_size".into(),
                "objects are cached whole; at most 256MiB per object".into(),
            ));
        }
        if c.max_object_size.0 > c.memory_size.0.max(c.disk_size.0) {
            return Err((
                "cache.max_object_size".into(),
                "max_object_size is larger than both cache tiers".into(),
            ));
        }
        if self.sites.is_empty() {
            return Err((
                "edge".into(),
                "no [[site]]: add one with `hosts = [\"*\"]` and `origin = \"http://HOST:PORT\"`"
                    .into(),
            ));
        }
        if self.node.is_none() {
            if let Some(i) = self.sites.iter().position(|s| s.origin.network) {
                return Err((
                    format!("site[{i}].origin"),
                    "origin = \"network\" reads shards with this edge's node key from its HUB: add a [node] section".into(),
                ));
            }
        }
        if let Some(n) = &self.node {
            for (key, url) in [("node.hub", &n.hub), ("node.advertise", &n.advertise)] {
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.parse::<http::Uri>().is_err()
                {
                    return Err((
                        key.into(),
                        format!("{url:?} is not a base URL like \"http://127.0.0.1:7000\""),
                    ));
                }
            }
            if n.epoch.0 < Duration::from_secs(1) || n.epoch.0 > Duration::from_secs(3600) {
                return Err(("node.epoch".into(), "an epoch is 1s to 1h".into()));
            }
            if n.ack_grace.0 >= n.epoch.0.max(Duration::from_secs(2)) * 10 {
                return Err((
                    "node.ack_grace".into(),
                    "keep ack_grace well under ten epochs".into(),
                ));
            }
            if n.settled_keep.0 < Duration::from_secs(3600) {
                return Err((
                    "node.settled_keep".into(),
                    "keep settled epochs at least 1h".into(),
                ));
            }
        }
        for (i, site) in self.sites.iter().enumerate() {
            let Some(t) = &site.tokens else { continue };
            if let Some(p) = t.paths.iter().find(|p| !p.starts_with('/')) {
                return Err((
                    format!("site[{i}].tokens.paths"),
                    format!("{p:?} must start with /"),
                ));
            }
            for k in &t.issuers {
                if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err((
                        format!("site[{i}].tokens.issuers"),
                        format!("{k:?} is not a public key (64 hex digits; `meshcast keys gen` prints one)"),
                    ));
                }
            }
            if t.issuers.is_empty() && self.node.is_none() {
                return Err((
                    format!("site[{i}].tokens"),
                    "no token issuer: list `issuers = [\"<hex key>\"]` or add a [node] section so the HUB names them".into(),
                ));
            }
        }
        let mut seen: Vec<(&HostPattern, usize)> = Vec::new();
        for (i, site) in self.sites.iter().enumerate() {
            if site.hosts.is_empty() {
                return Err((
                    format!("site[{i}].hosts"),
                    "a site needs at least one host pattern, e.g. [\"*\"]".into(),
                ));
            }
            for host in &site.hosts {
                if let Some((_, first)) = seen.iter().find(|(h, _)| *h == host) {
                    return Err((
                        format!("site[{i}].hosts"),
                        format!("host pattern {host:?} is already used by site {} (sites are numbered from 1)", first + 1),
                    ));
                }
                seen.push((host, i));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[edge]
listen = ["127.0.0.1:8080"]      # HTTP/1.1 and h2c
admin  = "127.0.0.1:9090"        # /metrics, /healthz, purge
[cache]
dir = "/var/lib/meshcast/cache"
disk_size = "10GiB"
memory_size = "256MiB"
[[site]]
hosts = ["*"]                    # or a list of names; "*" matches any Host
origin = "http://127.0.0.1:8000"
"#;

    fn err(src: &str) -> String {
        EdgeConfig::parse(Path::new("edge.toml"), src)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn minimal_file_from_the_issue_parses() {
        let c = EdgeConfig::parse(Path::new("edge.toml"), MINIMAL).unwrap();
        assert_eq!(c.cache.disk_size.0, 10 << 30);
        assert_eq!(c.cache.memory_size.0, 256 << 20);
        assert_eq!(c.cache.locked_size.0, 256 << 20, "locked_size defaults");
        assert_eq!(
            c.sites[0].origin,
            Origin {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8000,
                network: false,
            }
        );
        assert_eq!(c.sites[0].hosts, vec![HostPattern::Any]);
        assert_eq!(c.sites[0].playlist_ttl.0, Duration::from_secs(2));
    }

    #[test]
    fn the_network_as_origin_needs_a_node_identity() {
        let src = MINIMAL.replace("origin = \"http://127.0.0.1:8000\"", "origin = \"network\"");
        assert_ne!(src, MINIMAL);
        let e = err(&src);
        assert!(e.contains("site[0].origin") && e.contains("[node]"), "{e}");
        assert!(Origin::parse("network").unwrap().network);
    }

    #[test]
    fn webrtc_needs_a_hub_and_stun_servers_are_host_and_port() {
        let src = MINIMAL.replace("admin  =", "webrtc = true\nadmin  =");
        let e = err(&src);
        assert!(e.contains("edge.webrtc") && e.contains("[node]"), "{e}");
        let src = MINIMAL.replace("admin  =", "webrtc_stun = [\"stun.example.org\"]\nadmin  =");
        let e = err(&src);
        assert!(
            e.contains("edge.webrtc_stun") && e.contains("host:port"),
            "{e}"
        );
    }

    #[test]
    fn bad_size_names_file_line_and_key() {
        let e = err(&MINIMAL.replace("\"10GiB\"", "\"10XB\""));
        assert!(e.starts_with("edge.toml:7:"), "{e}");
        assert!(e.contains("key `cache.disk_size`"), "{e}");
        assert!(e.contains("unknown size unit"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&MINIMAL.replace("memory_size", "memroy_size"));
        assert!(e.starts_with("edge.toml:8:"), "{e}");
        assert!(e.contains("memroy_size"), "{e}");
    }

    #[test]
    fn bad_origin_in_second_site() {
        let src = format!("{MINIMAL}\n[[site]]\nhosts = [\"a.example\"]\norigin = \"ftp://x\"\n");
        let e = err(&src);
        assert!(e.contains("key `site[1].origin`"), "{e}");
        assert!(e.contains("http://"), "{e}");
        assert!(e.starts_with("edge.toml:15:"), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let src = MINIMAL.replace("admin  =", "listen_tls = [\"127.0.0.1:8443\"]\nadmin  =");
        let e = err(&src);
        assert!(e.starts_with("edge.toml:4:"), "{e}");
        assert!(e.contains("tls_cert"), "{e}");
        let dup = format!("{MINIMAL}\n[[site]]\nhosts = [\"*\"]\norigin = \"http://x:1\"\n");
        let e = err(&dup);
        assert!(
            e.contains("site[1].hosts") && e.contains("already used"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = err("[edge]\nlisten = [\"127.0.0.1:80\"\n");
        assert!(
            e.starts_with("edge.toml:2:") || e.starts_with("edge.toml:3:"),
            "{e}"
        );
    }

    #[test]
    fn missing_section_is_named() {
        let e = err("[edge]\nlisten = [\"127.0.0.1:80\"]\n");
        assert!(e.starts_with("edge.toml:1:1: missing field `cache`"), "{e}");
    }

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("*.Example.com").unwrap();
        assert!(p.matches("cdn.example.com"));
        assert!(!p.matches("example.com"));
        assert!(HostPattern::parse("bad host").is_err());
    }
}
