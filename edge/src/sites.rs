//! Sites: which Host goes to which origin, with what TTL defaults and which
//! access check. Built from the config at start and on every reload.

use crate::access::{AccessCheck, SignedUrls, SIGNING_PARAMS};
use crate::delivery::gate::SiteTokens;
use meshcast_conf::{HostPattern, SiteConfig};
use meshcast_control::messages::Issuer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub struct Site {
    /// 1-based number in the config file, for logs.
    pub number: usize,
    /// Its first host pattern, the `site` label of its metrics.
    pub label: String,
    pub hosts: Vec<HostPattern>,
    pub origin_addr: SocketAddr,
    pub origin_tls: bool,
    pub origin_sni: String,
    pub origin_host: Option<String>,
    pub playlist_ttl: Duration,
    pub segment_ttl: Duration,
    pub default_ttl: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub access: Option<Arc<dyn AccessCheck>>,
    pub tokens: Option<SiteTokens>,
}

impl Site {
    /// Resolves the origin once, here, so requests never block on DNS.
    pub fn build(number: usize, c: &SiteConfig) -> Result<Site, String> {
        let authority = c.origin.authority();
        let origin_addr = if c.origin.network {
            crate::network::origin_addr()
        } else {
            authority
                .to_socket_addrs()
                .map_err(|e| format!("site {number}: cannot resolve origin {authority}: {e}"))?
                .next()
                .ok_or_else(|| {
                    format!("site {number}: origin {authority} resolves to no address")
                })?
        };
        Ok(Site {
            number,
            label: c
                .hosts
                .first()
                .map_or_else(|| format!("site {number}"), |h| h.text()),
            hosts: c.hosts.clone(),
            origin_addr,
            origin_tls: c.origin.tls,
            origin_sni: c.origin.host.clone(),
            origin_host: c.origin_host.clone(),
            playlist_ttl: c.playlist_ttl.0,
            segment_ttl: c.segment_ttl.0,
            default_ttl: c.default_ttl.0,
            stale_while_revalidate: c.stale_while_revalidate.0,
            stale_if_error: c.stale_if_error.0,
            access: c
                .signed_urls
                .as_ref()
                .map(|s| Arc::new(SignedUrls::new(&s.secret.0)) as Arc<dyn AccessCheck>),
            tokens: c.tokens.as_ref().map(|t| SiteTokens {
                paths: t.paths.clone(),
                issuers: t
                    .issuers
                    .iter()
                    .map(|k| Issuer {
                        key: k.to_ascii_lowercase(),
                        prefix: "/".into(),
                    })
                    .collect(),
            }),
        })
    }
}

/// Host routing: exact names first, then the longest `*.suffix`, then `*`.
pub struct Sites {
    sites: Vec<Arc<Site>>,
}

impl Sites {
    pub fn build(configs: &[SiteConfig]) -> Result<Sites, String> {
        let sites = configs
            .iter()
            .enumerate()
            .map(|(i, c)| Site::build(i + 1, c).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Sites { sites })
    }

    /// `host` is the Host header as sent; port and case are normalised here.
    pub fn route(&self, host: &str) -> Option<&Arc<Site>> {
        let host = normalize_host(host);
        let mut best: Option<(&Arc<Site>, usize)> = None;
        for site in &self.sites {
            for pattern in &site.hosts {
                if !pattern.matches(&host) {
                    continue;
                }
                let rank = match pattern {
                    HostPattern::Exact(_) => usize::MAX,
                    HostPattern::Suffix(s) => s.len(),
                    HostPattern::Any => 0,
                };
                if best.is_none_or(|(_, r)| rank > r) {
                    best = Some((site, rank));
                }
            }
        }
        best.map(|(s, _)| s)
    }
}

/// Lowercases and strips the port (keeping IPv6 brackets' content).
pub fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let without_port = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        h.rsplit_once(':').map_or(h, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                h
            }
        })
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// The URL part of the cache key: `host/path?query` with the signer's
/// parameters removed, so every signed variant of a URL shares one object.
pub fn cache_key_url(host: &str, path: &str, query: Option<&str>) -> String {
    let mut key = String::with_capacity(host.len() + path.len() + query.map_or(0, str::len) + 1);
    key.push_str(host);
    key.push_str(path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        let kept: Vec<&str> = q
            .split('&')
            .filter(|pair| {
                let name = pair.split('=').next().unwrap_or("");
                !SIGNING_PARAMS.contains(&name)
            })
            .collect();
        if !kept.is_empty() {
            key.push('?');
            key.push_str(&kept.join("&"));
        }
    }
    key
}

#[cfg(test)]
pub fn test_site() -> Site {
    Site {
        number: 1,
        label: "*".into(),
        hosts: vec![HostPattern::Any],
        origin_addr: "127.0.0.1:1".parse().unwrap(),
        origin_tls: false,
        origin_sni: String::new(),
        origin_host: None,
        playlist_ttl: Duration::from_secs(2),
        segment_ttl: Duration::from_secs(86400),
        default_ttl: Duration::ZERO,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::from_secs(60),
        access: None,
        tokens: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_prefers_exact_then_longest_suffix_then_any() {
        let mk = |hosts: &[&str]| {
            let mut s = test_site();
            s.hosts = hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect();
            Arc::new(s)
        };
        let mut a = mk(&["*"]);
        Arc::get_mut(&mut a).unwrap().number = 1;
        let mut b = mk(&["*.example.com"]);
        Arc::get_mut(&mut b).unwrap().number = 2;
        let mut c = mk(&["live.example.com"]);
        Arc::get_mut(&mut c).unwrap().number = 3;
        let sites = Sites {
            sites: vec![a, b, c],
        };
        assert_eq!(sites.route("LIVE.example.com:8080").unwrap().number, 3);
        assert_eq!(sites.route("vod.example.com").unwrap().number, 2);
        assert_eq!(sites.route("other.org").unwrap().number, 1);
        let only = Sites {
            sites: vec![mk(&["a.example"])],
        };
        assert!(only.route("b.example").is_none());
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("[::1]:443"), "::1");
        assert_eq!(normalize_host("example.com."), "example.com");
    }

    #[test]
    fn cache_key_drops_signing_params_only() {
        assert_eq!(
            cache_key_url("h", "/a.m4s", Some("exp=1&sig=ab&x=2")),
            "h/a.m4s?x=2"
        );
        assert_eq!(
            cache_key_url("h", "/a.m4s", Some("exp=1&prefix=%2F&sig=ab")),
            "h/a.m4s"
        );
        assert_eq!(cache_key_url("h", "/a.m4s", None), "h/a.m4s");
    }
}
