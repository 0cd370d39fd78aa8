//! Prometheus metrics of one edge process, served on the admin listener.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets, seconds: from a memory hit on loopback to an origin
/// that takes its time.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub bytes_out: IntCounter,
    pub origin_fetches: IntCounter,
    pub coalesced_waiters: IntCounter,
    pub cache_bytes: IntGaugeVec,
    pub cache_objects: IntGaugeVec,
    /// Cache hits by the tier that answered (resolved once: no label
    /// lookup per request).
    pub hits_memory: IntCounter,
    pub hits_disk: IntCounter,
    /// Disk-tier bodies served from RAM, locked since their check.
    pub hits_locked: IntCounter,
    pub hits_partial: IntCounter,
    pub uring_submissions: IntCounter,
    pub disk_errors: IntCounter,
    pub corrupt_objects: IntCounter,
    /// Body bytes sent from cache files by `sendfile` (plaintext HTTP/1).
    pub sendfile_bytes: IntCounter,
    pub access_denied: IntCounterVec,
    pub reloads: IntCounterVec,
    pub receipts: IntCounter,
    pub access_log_dropped: IntCounter,
    pub acks: IntCounterVec,
    pub ack_fsyncs: IntCounter,
    pub claims: IntCounterVec,
    pub hub_up: prometheus::IntGauge,
    pub hub_issuers: prometheus::IntGauge,
    pub client_connections: prometheus::IntGauge,
    pub connections_refused: IntCounterVec,
    pub connections_waiting: IntGaugeVec,
    pub network_objects: IntCounterVec,
    pub network_shards: IntCounterVec,
    pub rtc_peers: IntCounterVec,
    /// Request duration, first byte of the body or header written to the
    /// client, and origin answer time, each by site.
    pub request_seconds: HistogramVec,
    pub first_byte_seconds: HistogramVec,
    pub origin_seconds: HistogramVec,
    pub upstream_errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let hits = counter_vec(
            "meshcast_cache_hits_total",
            "Cache hits by the tier that answered (memory; disk; partial: an object still being written, streamed to a later reader)",
            &["tier"],
        );
        Metrics {
            request_seconds: histogram_vec("meshcast_request_duration_seconds", "From the request's arrival to its last byte sent, by site (its first host pattern) and cache outcome", &["site", "cache"]),
            first_byte_seconds: histogram_vec("meshcast_time_to_first_byte_seconds", "From the request's arrival to its response header going out, by site", &["site"]),
            origin_seconds: histogram_vec("meshcast_origin_duration_seconds", "From the request sent to the origin to its response header back, by site", &["site"]),
            upstream_errors: counter_vec("meshcast_upstream_errors_total", "Origin fetches that failed, by kind (Pingora's error type: ConnectTimedout, ConnectRefused, ReadTimedout, ConnectionClosed, InvalidHTTPHeader, …)", &["kind"]),
            requests: counter_vec("meshcast_requests_total", "Requests answered, by status code and cache status", &["status", "cache"]),
            bytes_out: counter("meshcast_response_bytes_total", "Response body bytes sent to clients"),
            origin_fetches: counter("meshcast_origin_fetches_total", "Requests sent to origins"),
            coalesced_waiters: counter("meshcast_coalesced_waiters_total", "Requests that waited for another request's origin fetch instead of making their own"),
            cache_bytes: gauge_vec("meshcast_cache_bytes", "Bytes held by each cache tier", &["tier"]),
            cache_objects: gauge_vec("meshcast_cache_objects", "Objects held by each cache tier", &["tier"]),
            hits_memory: hits.with_label_values(&["memory"]),
            hits_disk: hits.with_label_values(&["disk"]),
            hits_locked: hits.with_label_values(&["locked"]),
            hits_partial: hits.with_label_values(&["partial"]),
            uring_submissions: counter("meshcast_uring_submissions_total", "io_uring submission queue entries pushed by the disk tier"),
            disk_errors: counter("meshcast_disk_errors_total", "Disk tier operations that failed (the object stays memory-only)"),
            corrupt_objects: counter("meshcast_cache_corrupt_objects_total", "Cached objects that failed their checksum and were purged"),
            sendfile_bytes: counter("meshcast_sendfile_bytes_total", "Body bytes sent from disk-cache files by sendfile, without a copy through user space"),
            access_denied: counter_vec("meshcast_access_denied_total", "Requests refused by the access check, by reason", &["reason"]),
            reloads: counter_vec("meshcast_config_reloads_total", "Config reloads on SIGHUP, by result", &["result"]),
            receipts: counter("meshcast_receipts_signed_total", "Delivery receipts signed (Meshcast-Receipt headers sent)"),
            access_log_dropped: counter("meshcast_access_log_dropped_total", "Access log lines dropped because the writer fell behind"),
            acks: counter_vec("meshcast_acks_total", "Player acks by outcome", &["outcome"]),
            ack_fsyncs: counter("meshcast_ack_log_fsyncs_total", "fdatasync calls on the ack log (one per group commit per epoch file)"),
            claims: counter_vec("meshcast_claims_total", "Epoch claims the hub settled, by outcome", &["outcome"]),
            hub_up: {
                let g = prometheus::IntGauge::new("meshcast_hub_reachable", "1 when the last call to the hub succeeded").expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            hub_issuers: {
                let g = prometheus::IntGauge::new("meshcast_hub_issuers", "Token issuers the edge has from its hub (learned or saved); 0 means it refuses every hub-issued playback token").expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            client_connections: {
                let g = prometheus::IntGauge::new("meshcast_client_connections", "Client connections open now (TCP, TLS and QUIC)").expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            connections_refused: counter_vec("meshcast_connections_refused_total", "Client connections closed by the TCP door before the pipeline, by reason (full, per_address, evicted to make room, silent: no byte within header_timeout, silent_when_full: none within header_timeout_when_full, header_timeout, head_too_large, bad_preface, tls_handshake)", &["reason"]),
            connections_waiting: gauge_vec("meshcast_connections_waiting", "TCP/TLS connections in the lobby waiting for their first byte (seated: holding a place; standing: arrived while the edge was full)", &["kind"]),
            network_objects: counter_vec("meshcast_network_objects_total", "Media objects the network origin answered, by where they came from (network: decoded from shards; hub: the HUB's origin)", &["from"]),
            network_shards: counter_vec("meshcast_network_shards_total", "Shard fetches of the network origin, by outcome (ok, failed, hedged: a spare started because one was slow)", &["outcome"]),
            rtc_peers: counter_vec("meshcast_rtc_peers_total", "WebRTC offers relayed by the HUB, by outcome (answered: a peer started; refused: no answer, e.g. the node is at webrtc_max_peers or the offer is unusable)", &["outcome"]),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
