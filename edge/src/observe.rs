//! What the pipeline measures and names per request: a request id (kept
//! from a well-formed `X-Request-Id`, else made here) sent to the origin
//! and written to the access log, and the latency histograms by site.

use crate::metrics::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

pub const REQUEST_ID: &str = "x-request-id";

/// The id a request goes by: the client's (or a proxy's in front) when
/// it is 1–64 characters of `[A-Za-z0-9._-]`, so it cannot smuggle
/// anything into a log line or a header; otherwise a fresh one.
pub fn request_id(incoming: Option<&[u8]>) -> String {
    match incoming {
        Some(v) if is_request_id(v) => String::from_utf8_lossy(v).into_owned(),
        _ => fresh_id(),
    }
}

fn is_request_id(v: &[u8]) -> bool {
    (1..=64).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// 16 hex digits, unique within the process (a counter through a
/// bijection of u64) and unlikely to repeat across processes (a random
/// per-process key).
fn fresh_id() -> String {
    static KEY: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = *KEY.get_or_init(|| {
        let mut b = [0; 8];
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key)
}

/// The `site` label of a request that matched no site.
pub const NO_SITE: &str = "-";

pub fn first_byte(m: &Metrics, site: &str, start: Instant) {
    m.first_byte_seconds
        .with_label_values(&[site])
        .observe(start.elapsed().as_secs_f64());
}

pub fn origin_answered(m: &Metrics, site: &str, sent: Option<Instant>) {
    if let Some(sent) = sent {
        m.origin_seconds
            .with_label_values(&[site])
            .observe(sent.elapsed().as_secs_f64());
    }
}

pub fn finished(
    m: &Metrics,
    site: &str,
    cache: &str,
    start: Instant,
    error: Option<&pingora_core::Error>,
) {
    m.request_seconds
        .with_label_values(&[site, cache])
        .observe(start.elapsed().as_secs_f64());
    if let Some(e) = error {
        if e.esource() == &pingora_core::ErrorSource::Upstream {
            m.upstream_errors
                .with_label_values(&[e.etype().as_str()])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_when_clean_and_made_otherwise() {
        assert_eq!(request_id(Some(b"abc-123_x.y")), "abc-123_x.y");
        for bad in [&b""[..], b"a b", b"a\r\nX-Evil: 1", &[b'a'; 65]] {
            let id = request_id(Some(bad));
            assert_eq!(id.len(), 16, "{bad:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let made: std::collections::HashSet<String> =
            (0..10_000).map(|_| request_id(None)).collect();
        assert_eq!(made.len(), 10_000);
    }
}
