//! The sans-IO part of webhooks: signatures, the retry schedule, and which
//! targets a hook may name. Time and randomness come in as arguments.
//!
//! Signatures follow Standard Webhooks (standardwebhooks.com), so
//! receivers can check them with that project's libraries: the headers
//! `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! = `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")), and a
//! secret written `whsec_` + base64 of its 32 bytes. Written here rather
//! than taken from a crate because the whole rule is one HMAC over one
//! string with the workspace's `hmac` and `sha2`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::IpAddr;
use std::time::Duration;

/// What a receiver's clock may differ by before it should refuse a
/// delivery as a replay (the Standard Webhooks default).
pub const TOLERANCE_SECS: u64 = 300;

/// A hook's secret in its written form.
pub fn encode_secret(bytes: &[u8; 32]) -> String {
    format!("whsec_{}", B64.encode(bytes))
}

fn secret_bytes(secret: &str) -> Option<Vec<u8>> {
    B64.decode(secret.strip_prefix("whsec_")?).ok()
}

/// The `webhook-signature` header for one delivery.
pub fn sign(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = secret_bytes(secret).expect("secrets are made by encode_secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the timestamp is {0} s from now (allowed: {TOLERANCE_SECS} s)")]
    Stale(u64),
    #[error("no signature matches")]
    Mismatch,
}

/// What a receiver does: any of the space-separated `v1,` signatures
/// matches, and the timestamp is within `TOLERANCE_SECS` of `now`.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: u64,
    body: &[u8],
    header: &str,
    now: u64,
) -> Result<(), VerifyError> {
    let skew = now.abs_diff(timestamp);
    if skew > TOLERANCE_SECS {
        return Err(VerifyError::Stale(skew));
    }
    let key = secret_bytes(secret).ok_or(VerifyError::Mismatch)?;
    let ours = format!("{id}.{timestamp}.");
    let matches = |sig: &str| {
        let Some(tag) = sig.strip_prefix("v1,").and_then(|b| B64.decode(b).ok()) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(ours.as_bytes());
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    };
    if header.split(' ').any(matches) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// How long to wait after failed attempt number `attempt` (1 for the
/// first), or `None` when the hook has had its `attempts`: `base` times
/// 4^(attempt-1), at most six hours, scaled by `jitter` in [0.8, 1.2) so
/// receivers that failed together are not retried together. `unit` is a
/// uniform random number in [0, 1).
pub fn retry_delay(attempt: u32, attempts: u32, base: Duration, unit: f64) -> Option<Duration> {
    if attempt >= attempts {
        return None;
    }
    const CAP: Duration = Duration::from_secs(6 * 3600);
    let growth = 4u32.saturating_pow(attempt.saturating_sub(1));
    let delay = base.saturating_mul(growth).min(CAP);
    Some(delay.mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0)))
}

/// Addresses a hook may not reach unless the operator allows private
/// targets: the hub's own host, its networks and the cloud's metadata
/// service are not the account's to send requests to.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// A hook's URL as given: `http` or `https`, a host, no credentials, not
/// too long. (Where it resolves is checked at each delivery.)
pub fn check_url(text: &str) -> Result<url::Url, String> {
    if text.len() > 2048 {
        return Err("the URL is over 2048 characters".into());
    }
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} is not an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("put no credentials in the URL; check the signature instead".into());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// The Standard Webhooks specification's own example, so receivers'
    /// libraries accept what we send.
    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        assert_eq!(
            verify(SECRET, id, 1614265330, body, &sig, 1614265330),
            Ok(())
        );
        let both = format!("v1,bm90IHRoaXM= {sig}");
        assert_eq!(
            verify(SECRET, id, 1614265330, body, &both, 1614265400),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_id_or_time_or_secret_does_not_verify() {
        let body = b"{\"type\":\"video.ready\"}";
        let sig = sign(SECRET, "evt_1", 1000, body);
        let other = encode_secret(&[7u8; 32]);
        assert_eq!(
            verify(SECRET, "evt_1", 1000, b"{}", &sig, 1000),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, "evt_2", 1000, body, &sig, 1000),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, "evt_1", 1001, body, &sig, 1001),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&other, "evt_1", 1000, body, &sig, 1000),
            Err(VerifyError::Mismatch)
        );
        // A replay after the window, though the signature is good.
        assert_eq!(
            verify(SECRET, "evt_1", 1000, body, &sig, 1301),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            verify(SECRET, "evt_1", 1000, body, "v1,!!!", 1000),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn retries_back_off_fourfold_with_jitter_and_stop() {
        let base = Duration::from_secs(5);
        let mid = |attempt| retry_delay(attempt, 8, base, 0.5).unwrap();
        assert_eq!(mid(1), Duration::from_secs(5));
        assert_eq!(mid(2), Duration::from_secs(20));
        assert_eq!(mid(3), Duration::from_secs(80));
        assert_eq!(mid(7), Duration::from_secs(20480));
        let capped = retry_delay(8, 100, base, 0.5);
        assert_eq!(capped, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(retry_delay(1, 8, base, 0.0), Some(Duration::from_secs(4)));
        assert!(retry_delay(1, 8, base, 0.999_999).unwrap() < Duration::from_secs(6));
        assert_eq!(retry_delay(8, 8, base, 0.5), None);
        assert_eq!(retry_delay(1, 1, base, 0.5), None);
        // Attempt numbers past any real schedule do not overflow.
        assert_eq!(
            retry_delay(60, 100, base, 0.5),
            Some(Duration::from_secs(6 * 3600))
        );
    }

    #[test]
    fn private_targets_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://example.com/hooks/meshcast").is_ok());
        assert!(check_url("http://127.0.0.1:9000/x").is_ok());
        for bad in [
            "ftp://example.com/",
            "example.com/hook",
            "https://user:pw@example.com/",
            "file:///etc/passwd",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://example.com/{}", "a".repeat(3000))).is_err());
    }
}
