//! `meshcast hub` configuration: the API/origin listener, storage, the
//! edges whose playback URLs it hands out, and the transcoding ladder.

use crate::error::ConfError;
use crate::units::{ByteSize, Seconds};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub hub: HubSection,
    #[serde(default)]
    pub transcode: TranscodeSection,
    #[serde(default)]
    pub log: HubLog,
    #[serde(default)]
    pub ledger: HubLedger,
    #[serde(default)]
    pub storage: HubStorage,
}

/// `[storage]`: how published media is cut for storage nodes. With at
/// least `data_shards + parity_shards` admitted storage nodes up, each
/// segment and init segment is sealed and coded onto them after it is
/// published; with fewer, the hub keeps serving it alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubStorage {
    /// Shards any `data_shards` of which give an object back (`k`).
    #[serde(default = "default_data_shards")]
    pub data_shards: usize,
    /// Extra shards: this many storage nodes may be lost (`m`).
    #[serde(default = "default_parity_shards")]
    pub parity_shards: usize,
    /// A storage node silent this long loses its shards: they are rebuilt
    /// from the others onto other nodes.
    #[serde(default = "default_grace")]
    pub grace: Seconds,
    /// How often the hub looks for shards to rebuild.
    #[serde(default = "default_repair_interval")]
    pub repair_interval: Seconds,
    /// Rebuilt shard bytes put per second, at most (so repair does not
    /// starve viewers of the nodes' bandwidth).
    #[serde(default = "default_repair_rate")]
    pub repair_rate: ByteSize,
    /// How often each storage node is audited.
    #[serde(default = "default_audit_interval")]
    pub audit_interval: Seconds,
    /// How long a node has to answer an audit.
    #[serde(default = "default_audit_timeout")]
    pub audit_timeout: Seconds,
    /// Failed or late audits in a row that get a node slashed (and its
    /// shards rebuilt elsewhere).
    #[serde(default = "default_slash_after")]
    pub slash_after: u32,
}

impl Default for HubStorage {
    fn default() -> Self {
        HubStorage {
            data_shards: default_data_shards(),
            parity_shards: default_parity_shards(),
            grace: default_grace(),
            repair_interval: default_repair_interval(),
            repair_rate: default_repair_rate(),
            audit_interval: default_audit_interval(),
            audit_timeout: default_audit_timeout(),
            slash_after: default_slash_after(),
        }
    }
}

fn default_grace() -> Seconds {
    Seconds(Duration::from_secs(600))
}
fn default_repair_interval() -> Seconds {
    Seconds(Duration::from_secs(10))
}
fn default_audit_interval() -> Seconds {
    Seconds(Duration::from_secs(3600))
}
fn default_audit_timeout() -> Seconds {
    Seconds(Duration::from_secs(10))
}
fn default_slash_after() -> u32 {
    3
}
fn default_repair_rate() -> ByteSize {
    ByteSize(16 << 20)
}

fn default_data_shards() -> usize {
    4
}
fn default_parity_shards() -> usize {
    2
}

/// The ledger validator every hub embeds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubLedger {
    /// A shared chain's genesis (from `meshcast ledger init`). Without it
    /// the hub runs a one-validator chain of its own key, created in
    /// `data_dir/ledger/genesis.json` on first start.
    pub genesis: Option<PathBuf>,
    /// On the hub's own chain: node keys (64 hex digits, as `meshcast keys`
    /// prints them) that start with the stake an edge needs bonded — the
    /// operator's own edges, admitted from the first block. Written into the genesis on first start; ignored with
    /// `genesis` (a shared chain's genesis says who holds what).
    #[serde(default)]
    pub bonded_nodes: Vec<String>,
    /// On the hub's own chain: the network's delivery epoch (edges claim
    /// once per epoch), written into the genesis on first start. Ignored
    /// with `genesis`.
    #[serde(default = "default_delivery_epoch")]
    pub delivery_epoch: Seconds,
    /// Consensus traffic with the other validators (port 0: any).
    #[serde(default = "default_ledger_p2p")]
    pub p2p: SocketAddr,
    /// Other validators' `p2p` addresses.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Other validators' API addresses (client transactions go on to them).
    #[serde(default)]
    pub peer_apis: Vec<SocketAddr>,
    /// With no transactions waiting, how long the proposer waits for one
    /// before an empty block. Default: 10 s on the hub's own chain (an idle
    /// hub writes about 1 KB per block), 500 ms on a shared one, as
    /// `meshcast ledger run`. Transactions never wait for it.
    pub empty_block_interval_ms: Option<u64>,
    /// How long validators wait for a proposal (at least twice the
    /// interval). Default: 20 s on the hub's own chain, 1.5 s on a shared one.
    pub timeout_propose_ms: Option<u64>,
}

impl HubLedger {
    /// (empty block interval, propose timeout) in milliseconds.
    pub fn pacing_ms(&self) -> (u64, u64) {
        let (interval, timeout) = match self.genesis {
            None => (10_000, 20_000),
            Some(_) => (500, 1_500),
        };
        (
            self.empty_block_interval_ms.unwrap_or(interval),
            self.timeout_propose_ms.unwrap_or(timeout),
        )
    }
}

fn default_delivery_epoch() -> Seconds {
    Seconds(std::time::Duration::from_secs(60))
}

fn default_ledger_p2p() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Default for HubLedger {
    fn default() -> Self {
        HubLedger {
            genesis: None,
            bonded_nodes: Vec::new(),
            delivery_epoch: default_delivery_epoch(),
            p2p: default_ledger_p2p(),
            peers: Vec::new(),
            peer_apis: Vec::new(),
            empty_block_interval_ms: None,
            timeout_propose_ms: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// API, origin and player pages.
    pub listen: SocketAddr,
    /// Catalog, media blobs, uploads in progress.
    pub data_dir: PathBuf,
    /// Base URLs of the edges that serve this hub's videos, e.g.
    /// "http://127.0.0.1:8080"; playback URLs are given for each.
    #[serde(default)]
    pub edges: Vec<String>,
    /// Folder holding `hls.js/dist` and `dashjs/dist` (an npm
    /// `node_modules`), served under `/assets/` for the player page.
    pub assets_dir: Option<PathBuf>,
    /// Largest upload; also a new account's per-upload limit by default.
    #[serde(default = "default_max_upload")]
    pub max_upload_size: ByteSize,
    /// Source bytes a new account may hold at once (uploads and videos),
    /// unless its creation says otherwise.
    #[serde(default = "default_account_storage")]
    pub account_storage: ByteSize,
    /// How often the hub probes each admitted edge (fetches a random media
    /// object with a token of its own and checks bytes and receipt); each
    /// round starts at a random moment between half and one and a half
    /// intervals. "0s" turns probes off.
    #[serde(default = "default_probe_interval")]
    pub probe_interval: Seconds,
    /// The operator's API key (creates accounts, sees every video). Default
    /// `data_dir/admin.key`, created on first start with mode 0600.
    pub admin_key: Option<PathBuf>,
    /// The HUB's Ed25519 key (signs playback tokens). Default
    /// `data_dir/hub.key`, created on first start with mode 0600.
    pub key: Option<PathBuf>,
    /// Longest life of a token the hub issues.
    #[serde(default = "default_token_ttl")]
    pub token_ttl: Seconds,
    /// Tokens a minute one client address may get for public videos.
    #[serde(default = "default_token_rate")]
    pub token_rate: u32,
    /// A public token's byte budget: this many times the video's total size
    /// (every rendition, audio and init segments together). A viewer watches
    /// one rendition at a time, so 4 (the default) covers a whole viewing
    /// with ABR switches and seeks several times over, while bounding what
    /// one token can earn an edge. Playlists are not charged and still pass
    /// when the budget is spent.
    #[serde(default = "default_budget_factor")]
    pub token_budget_factor: u32,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs or addresses),
    /// such as this hub's own edges. Anyone else's is ignored: a client
    /// address is what the socket says unless the peer is listed here.
    #[serde(default = "default_trusted_proxies")]
    pub trusted_proxies: Vec<String>,
    /// On SIGTERM or Ctrl-C the hub stops accepting, lets requests in
    /// flight finish and its queued ledger transactions commit, for at most
    /// this long each, then exits.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Seconds,
    /// A failed webhook delivery is retried after this, then four times
    /// longer each time (at most 6 h apart, with jitter).
    #[serde(default = "default_webhook_retry")]
    pub webhook_retry: Seconds,
    /// Attempts per webhook delivery before it is given up (and listed as
    /// failed on the hook); 0 and 1 both mean one. The default, 8 from
    /// 5 s, spans about 7.5 hours.
    #[serde(default = "default_webhook_attempts")]
    pub webhook_attempts: u32,
    /// Let webhooks reach loopback and private addresses. Off by default:
    /// accounts aim hooks, and the hub's own networks are not theirs to
    /// send requests into. Turn on only where every account is trusted.
    #[serde(default)]
    pub webhook_private_targets: bool,
}

impl HubSection {
    /// `trusted_proxies` parsed (validated at load, so none is dropped).
    pub fn trusted_proxy_nets(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| parse_net(p).ok())
            .collect()
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address (`192.0.2.7`, `::1`).
fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a CIDR such as \"10.0.0.0/8\""))
}

fn default_trusted_proxies() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}

fn default_webhook_retry() -> Seconds {
    Seconds(Duration::from_secs(5))
}

fn default_webhook_attempts() -> u32 {
    8
}

fn default_shutdown_grace() -> Seconds {
    Seconds(Duration::from_secs(10))
}

fn default_probe_interval() -> Seconds {
    Seconds(Duration::from_secs(300))
}

fn default_account_storage() -> ByteSize {
    ByteSize(100 << 30)
}

fn default_token_ttl() -> Seconds {
    Seconds(Duration::from_secs(6 * 3600))
}
fn default_token_rate() -> u32 {
    30
}
fn default_budget_factor() -> u32 {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubLog {
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for HubLog {
    fn default() -> Self {
        HubLog {
            level: default_level(),
        }
    }
}

/// `[transcode]`: the adaptive ladder and its packaging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeSection {
    #[serde(default = "default_segment")]
    pub segment_duration: Seconds,
    /// x264 preset: ultrafast … veryslow. The default is x264's own,
    /// medium: a video is encoded once and delivered many times, so the
    /// encode's CPU buys quality in every byte served (and a pricier
    /// encode makes the HUB's fidelity check, which is bound by decoding,
    /// a smaller share of it: BENCHMARKS.md).
    #[serde(default = "default_preset")]
    pub preset: String,
    #[serde(default = "default_audio_kbps")]
    pub audio_kbps: u32,
    /// Rungs from the top; a rung's `height` is the picture's short side.
    /// Rungs larger than the source are skipped (the source's own size
    /// becomes the top rung when all are larger).
    #[serde(default = "default_ladder", rename = "rung")]
    pub rungs: Vec<RungConfig>,
    /// Longest video accepted; a longer upload is refused before encoding.
    #[serde(default = "default_max_duration")]
    pub max_duration: Seconds,
    /// Largest picture side accepted (width or height, in pixels).
    #[serde(default = "default_max_side")]
    pub max_side: u32,
    /// How long ffprobe may take to read an upload.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout: Seconds,
    /// ffmpeg is stopped when its output time has not advanced for this
    /// long, so one hostile file cannot hold the queue.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout: Seconds,
    /// Distributed transcoding: segments per chunk a worker encodes.
    #[serde(default = "default_chunk_segments")]
    pub chunk_segments: u32,
    /// How long a worker holds a chunk without reporting progress before
    /// it is given to another.
    #[serde(default = "default_lease")]
    pub lease: Seconds,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RungConfig {
    pub name: String,
    pub height: u32,
    pub video_kbps: u32,
}

impl Default for TranscodeSection {
    fn default() -> Self {
        TranscodeSection {
            segment_duration: default_segment(),
            preset: default_preset(),
            audio_kbps: default_audio_kbps(),
            rungs: default_ladder(),
            max_duration: default_max_duration(),
            max_side: default_max_side(),
            probe_timeout: default_probe_timeout(),
            stall_timeout: default_stall_timeout(),
            chunk_segments: default_chunk_segments(),
            lease: default_lease(),
        }
    }
}

fn default_chunk_segments() -> u32 {
    8
}
fn default_lease() -> Seconds {
    Seconds(Duration::from_secs(60))
}

fn default_max_duration() -> Seconds {
    Seconds(Duration::from_secs(12 * 3600))
}
fn default_max_side() -> u32 {
    7680
}
fn default_probe_timeout() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_stall_timeout() -> Seconds {
    Seconds(Duration::from_secs(120))
}

fn default_max_upload() -> ByteSize {
    ByteSize(20 << 30)
}
fn default_level() -> String {
    "info".into()
}
fn default_segment() -> Seconds {
    Seconds(Duration::from_secs(4))
}
fn default_preset() -> String {
    "medium".into()
}
fn default_audio_kbps() -> u32 {
    128
}

/// 1080p / 720p / 480p / 360p at common H.264 bitrates.
pub fn default_ladder() -> Vec<RungConfig> {
    [
        ("1080p", 1080, 5000),
        ("720p", 720, 2800),
        ("480p", 480, 1400),
        ("360p", 360, 800),
    ]
    .into_iter()
    .map(|(name, height, video_kbps)| RungConfig {
        name: name.into(),
        height,
        video_kbps,
    })
    .collect()
}

const PRESETS: [&str; 9] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
];

impl HubConfig {
    pub fn load(path: &Path) -> Result<Self, ConfError> {
        crate::load::load(path, Self::validate)
    }

    pub fn parse(path: &Path, src: &str) -> Result<Self, ConfError> {
        crate::load::parse(path, src, Self::validate)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let st = &self.storage;
        if st.audit_interval.0.is_zero() || st.audit_timeout.0.is_zero() || st.slash_after == 0 {
            return Err((
                "storage.audit_interval".into(),
                "audits need a nonzero audit_interval and audit_timeout, and slash_after of at least 1".into(),
            ));
        }
        if st.repair_rate.0 < 1024 || st.repair_interval.0.is_zero() {
            return Err((
                "storage.repair_rate".into(),
                "repair needs a rate of at least 1KiB (a second) and a nonzero repair_interval"
                    .into(),
            ));
        }
        if st.data_shards == 0 || st.parity_shards == 0 || st.data_shards + st.parity_shards > 255 {
            return Err((
                "storage.data_shards".into(),
                format!(
                    "k = {}, m = {}: each at least 1 and at most 255 shards in all",
                    st.data_shards, st.parity_shards
                ),
            ));
        }
        for (i, edge) in self.hub.edges.iter().enumerate() {
            if !(edge.starts_with("http://") || edge.starts_with("https://"))
                || edge.parse::<http::Uri>().is_err()
            {
                return Err((
                    format!("hub.edges[{i}]"),
                    format!("{edge:?} is not a base URL like \"http://127.0.0.1:8080\""),
                ));
            }
        }
        let (interval, timeout) = self.ledger.pacing_ms();
        if timeout < 2 * interval {
            // Point at the key the operator wrote.
            let key = match self.ledger.timeout_propose_ms {
                Some(_) => "ledger.timeout_propose_ms",
                None => "ledger.empty_block_interval_ms",
            };
            return Err((
                key.into(),
                format!("timeout_propose_ms ({timeout}) must be at least twice empty_block_interval_ms ({interval}), or validators give up on a proposer that is only waiting for transactions"),
            ));
        }
        if self.hub.token_rate == 0 {
            return Err((
                "hub.token_rate".into(),
                "must be at least 1 a minute".into(),
            ));
        }
        for (i, p) in self.hub.trusted_proxies.iter().enumerate() {
            parse_net(p).map_err(|why| (format!("hub.trusted_proxies[{i}]"), why))?;
        }
        if self.hub.token_budget_factor == 0 {
            return Err((
                "hub.token_budget_factor".into(),
                "must be at least 1".into(),
            ));
        }
        if self.hub.token_ttl.0 < Duration::from_secs(60) {
            return Err((
                "hub.token_ttl".into(),
                "tokens must live at least 1m".into(),
            ));
        }
        let t = &self.transcode;
        let seg = t.segment_duration.0.as_secs_f64();
        if !(1.0..=20.0).contains(&seg) {
            return Err((
                "transcode.segment_duration".into(),
                "segments must be 1s to 20s long".into(),
            ));
        }
        if !PRESETS.contains(&t.preset.as_str()) {
            return Err((
                "transcode.preset".into(),
                format!("unknown x264 preset; one of {}", PRESETS.join(", ")),
            ));
        }
        if !(32..=512).contains(&t.audio_kbps) {
            return Err((
                "transcode.audio_kbps".into(),
                "audio bitrate must be 32 to 512 kbps".into(),
            ));
        }
        if !(1..=1000).contains(&t.chunk_segments) {
            return Err((
                "transcode.chunk_segments".into(),
                "segments per chunk: 1 to 1000".into(),
            ));
        }
        if !(16..=16384).contains(&t.max_side) {
            return Err((
                "transcode.max_side".into(),
                "the largest picture side must be 16 to 16384 pixels".into(),
            ));
        }
        for (key, value) in [
            ("transcode.max_duration", t.max_duration.0),
            ("transcode.probe_timeout", t.probe_timeout.0),
            ("transcode.stall_timeout", t.stall_timeout.0),
            ("transcode.lease", t.lease.0),
        ] {
            if value < Duration::from_secs(1) {
                return Err((key.into(), "must be at least 1s".into()));
            }
        }
        if t.rungs.is_empty() {
            return Err((
                "transcode".into(),
                "the ladder needs at least one [[transcode.rung]]".into(),
            ));
        }
        for (i, r) in t.rungs.iter().enumerate() {
            let ok_name = !r.name.is_empty()
                && r.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_name || r.name == "audio" {
                return Err((
                    format!("transcode.rung[{i}].name"),
                    "rung names are letters, digits, - and _ (and not \"audio\")".into(),
                ));
            }
            if r.height < 144 || r.height > 4320 || r.height % 2 != 0 {
                return Err((
                    format!("transcode.rung[{i}].height"),
                    "height must be even, 144 to 4320".into(),
                ));
            }
            if !(100..=100_000).contains(&r.video_kbps) {
                return Err((
                    format!("transcode.rung[{i}].video_kbps"),
                    "video bitrate must be 100 to 100000 kbps".into(),
                ));
            }
            if t.rungs[..i].iter().any(|o| o.name == r.name) {
                return Err((
                    format!("transcode.rung[{i}].name"),
                    format!("rung name {:?} is used twice", r.name),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_hub_config_gets_the_default_ladder() {
        let c = HubConfig::parse(
            Path::new("hub.toml"),
            "[hub]\nlisten = \"127.0.0.1:7000\"\ndata_dir = \"/tmp/h\"\n",
        )
        .unwrap();
        assert_eq!(c.transcode.rungs.len(), 4);
        assert_eq!(c.transcode.segment_duration.0, Duration::from_secs(4));
    }

    #[test]
    fn bad_rung_is_located() {
        let src = "[hub]\nlisten = \"127.0.0.1:7000\"\ndata_dir = \"/tmp/h\"\n[[transcode.rung]]\nname = \"hd\"\nheight = 721\nvideo_kbps = 3000\n";
        let e = HubConfig::parse(Path::new("hub.toml"), src)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("hub.toml:6:"), "{e}");
        assert!(e.contains("transcode.rung[0].height"), "{e}");
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let base = "[hub]\nlisten = \"127.0.0.1:7000\"\ndata_dir = \"/tmp/h\"\n";
        let c = HubConfig::parse(Path::new("hub.toml"), base).unwrap();
        let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert!(c
            .hub
            .trusted_proxy_nets()
            .iter()
            .any(|n| n.contains(&loopback)));
        let ok = format!("{base}trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"::1\"]\n");
        let c = HubConfig::parse(Path::new("hub.toml"), &ok).unwrap();
        assert_eq!(c.hub.trusted_proxy_nets().len(), 3);
        assert!(!c
            .hub
            .trusted_proxy_nets()
            .iter()
            .any(|n| n.contains(&loopback)));
        let bad = format!("{base}trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n");
        let e = HubConfig::parse(Path::new("hub.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hub.trusted_proxies[1]") && e.contains("CIDR"),
            "{e}"
        );
    }

    #[test]
    fn ledger_pacing_defaults_by_chain_and_is_checked() {
        let base = "[hub]\nlisten = \"127.0.0.1:7000\"\ndata_dir = \"/tmp/h\"\n";
        let own = HubConfig::parse(Path::new("hub.toml"), base).unwrap();
        assert_eq!(own.ledger.pacing_ms(), (10_000, 20_000));
        let shared = format!("{base}[ledger]\ngenesis = \"g.json\"\n");
        let shared = HubConfig::parse(Path::new("hub.toml"), &shared).unwrap();
        assert_eq!(shared.ledger.pacing_ms(), (500, 1_500));
        let bad = format!("{base}[ledger]\nempty_block_interval_ms = 15000\n");
        let e = HubConfig::parse(Path::new("hub.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("hub.toml:5:"), "{e}");
        assert!(e.contains("ledger.empty_block_interval_ms"), "{e}");
        assert!(
            e.contains("timeout_propose_ms (20000) must be at least twice"),
            "{e}"
        );
    }
}
