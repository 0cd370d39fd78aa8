//! Header rules of RFC 9110 and RFC 9213 the pipeline applies to what it
//! forwards and stores, each small and pure:
//!
//! - hop-by-hop fields (RFC 9110 §7.6.1): the ones a `Connection` header
//!   names, and `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//!   `Upgrade`, are removed from what the edge forwards and stores;
//! - targeted cache control (RFC 9213): `Meshcast-Cache-Control` (this
//!   CDN's own field), then `CDN-Cache-Control`, take precedence over
//!   `Cache-Control` for the edge's own caching, and are not forwarded to
//!   clients; a targeted field that does not parse is ignored (§2.1);
//! - request directives (RFC 9111 §5.2.1): `max-age`, `max-stale`,
//!   `min-fresh`, `no-cache`, `no-store`, `only-if-cached`;
//! - freshening a stored response with a 304 (RFC 9111 §3.2, §4.3.4);
//! - invalidation after unsafe methods (RFC 9111 §4.4).

use http::header::{self, HeaderName};
use pingora_http::{RequestHeader, ResponseHeader};

/// This CDN's targeted field (RFC 9213 §2: `{cdn}-Cache-Control`).
pub const MESHCAST_CACHE_CONTROL: &str = "meshcast-cache-control";
/// The field every CDN obeys (RFC 9213 §3).
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// Hop-by-hop names besides those `Connection` lists. (Transfer-Encoding
/// is framing, which Pingora rewrites for each side itself.)
const HOP_BY_HOP: [&str; 5] = ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// Names `Connection` lists (lower case), minus the framing ones.
fn connection_names(headers: &http::HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && n != "close" && n != "keep-alive" && n != "transfer-encoding")
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop fields from a response before it is stored or
/// forwarded.
pub fn strip_hop_by_hop_response(resp: &mut ResponseHeader) {
    for name in connection_names(&resp.headers) {
        resp.remove_header(&name);
    }
    for name in HOP_BY_HOP {
        resp.remove_header(name);
    }
}

/// Removes hop-by-hop fields from a request before it goes to the origin.
pub fn strip_hop_by_hop_request(req: &mut RequestHeader) {
    for name in connection_names(&req.headers) {
        req.remove_header(&name);
    }
    for name in HOP_BY_HOP {
        req.remove_header(name);
    }
}

/// The cache-control value the edge obeys for `resp`: the most specific
/// targeted field that parses, else `None` (use `Cache-Control`).
pub fn targeted_cache_control(resp: &ResponseHeader) -> Option<String> {
    [MESHCAST_CACHE_CONTROL, CDN_CACHE_CONTROL]
        .into_iter()
        .filter_map(|name| {
            let values: Vec<&str> = resp
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(", "))
        })
        .find(|v| parses(v))
}

/// Whether a cache-control value is a list of `token[=value]` directives.
fn parses(value: &str) -> bool {
    value.split(',').all(|d| {
        let d = d.trim();
        let (name, arg) = d.split_once('=').unwrap_or((d, "x"));
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !arg.is_empty()
    })
}

/// Removes the targeted fields (for what clients see or what is stored).
pub fn strip_targeted(resp: &mut ResponseHeader) {
    resp.remove_header(MESHCAST_CACHE_CONTROL);
    resp.remove_header(CDN_CACHE_CONTROL);
}

/// RFC 9111 §4.3.4 / §3.2: the stored header updated with a 304's — every
/// field the 304 carries replaces the stored field of that name, except
/// Content-Length (the 304 describes no body) and the framing fields.
pub fn freshen(stored: &ResponseHeader, not_modified: &http::HeaderMap) -> ResponseHeader {
    let mut out = stored.clone();
    let skip = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ];
    let mut names: Vec<&HeaderName> = not_modified.keys().filter(|n| !skip.contains(n)).collect();
    names.dedup();
    for name in names {
        out.remove_header(name);
        for value in not_modified.get_all(name) {
            let _ = out.append_header(name.clone(), value.clone());
        }
    }
    out
}

/// RFC 9111 §4.4: the paths (with query) whose stored responses an unsafe
/// request's non-error answer invalidates: its own target, and the
/// `Location` / `Content-Location` it names on the same host.
pub fn invalidated(
    method: &http::Method,
    status: u16,
    host: &str,
    target: &str,
    resp: &ResponseHeader,
) -> Vec<String> {
    let safe = matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    );
    if safe || !(200..400).contains(&status) {
        return Vec::new();
    }
    let mut out = vec![target.to_string()];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(v) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let same_host = match v.parse::<http::Uri>() {
            Ok(u) if u.host().is_some() => u
                .host()
                .is_some_and(|h| crate::sites::normalize_host(h) == host)
                .then(|| u.path_and_query().map_or("/".into(), |p| p.to_string())),
            Ok(_) if v.starts_with('/') => Some(v.to_string()),
            _ => None,
        };
        out.extend(same_host);
    }
    out
}

/// A request's cache-control directives (RFC 9111 §5.2.1), parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    pub max_age: Option<u64>,
    /// `Some(None)`: any staleness; `Some(Some(n))`: at most n seconds.
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub no_cache: bool,
    pub no_store: bool,
}

impl RequestDirectives {
    pub fn parse(req: &RequestHeader) -> RequestDirectives {
        let mut d = RequestDirectives::default();
        let values = req.headers.get_all(header::CACHE_CONTROL);
        for item in values
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let (name, arg) = item.trim().split_once('=').unwrap_or((item.trim(), ""));
            let secs = arg.trim_matches('"').parse::<u64>().ok();
            match name.to_ascii_lowercase().as_str() {
                "max-age" => d.max_age = secs.or(d.max_age),
                "max-stale" => d.max_stale = Some(secs),
                "min-fresh" => d.min_fresh = secs.or(d.min_fresh),
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                _ => {}
            }
        }
        d
    }

    /// What the request asks of a stored response `age` old with
    /// `fresh_left` seconds of freshness (negative: stale that long), whose
    /// own directives may forbid serving it stale:
    /// `Some(false)` revalidate first, `Some(true)` serve it even if stale,
    /// `None` the cache's own rules.
    pub fn verdict(&self, age: u64, fresh_left: i64, stale_forbidden: bool) -> Option<bool> {
        let too_old = self.max_age.is_some_and(|m| age > m);
        let not_fresh_enough = self.min_fresh.is_some_and(|m| fresh_left < m as i64);
        if self.no_cache || too_old || not_fresh_enough {
            return Some(false);
        }
        let stale_ok = match self.max_stale {
            Some(None) => true,
            Some(Some(n)) => -fresh_left <= n as i64,
            None => false,
        };
        (fresh_left < 0 && stale_ok && !stale_forbidden).then_some(true)
    }
}

/// `Cache-Control: only-if-cached` on the request (RFC 9111 §5.2.1.7).
pub fn only_if_cached(req: &RequestHeader) -> bool {
    req.headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("only-if-cached"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn hop_by_hop_fields_named_by_connection_go() {
        let mut r = resp(&[
            ("connection", "x-hop, close"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("x-end", "kept"),
        ]);
        strip_hop_by_hop_response(&mut r);
        assert!(r.headers.get("x-hop").is_none());
        assert!(r.headers.get("keep-alive").is_none());
        assert_eq!(r.headers["x-end"], "kept");
        let mut q = RequestHeader::build("GET", b"/", None).unwrap();
        q.append_header("connection", "x-client-hop").unwrap();
        q.append_header("x-client-hop", "1").unwrap();
        q.append_header("te", "trailers").unwrap();
        strip_hop_by_hop_request(&mut q);
        assert!(q.headers.get("x-client-hop").is_none());
        assert!(q.headers.get("te").is_none());
    }

    #[test]
    fn the_most_specific_targeted_field_that_parses_wins() {
        let r = resp(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ]);
        assert_eq!(targeted_cache_control(&r).as_deref(), Some("max-age=60"));
        let r = resp(&[
            ("cdn-cache-control", "max-age=60"),
            ("meshcast-cache-control", "no-store"),
        ]);
        assert_eq!(targeted_cache_control(&r).as_deref(), Some("no-store"));
        // RFC 9213 §2.1: one that does not parse is ignored.
        let r = resp(&[
            ("cdn-cache-control", "max-age=60"),
            ("meshcast-cache-control", "max-age=\"6\"0=, ,"),
        ]);
        assert_eq!(targeted_cache_control(&r).as_deref(), Some("max-age=60"));
        assert_eq!(
            targeted_cache_control(&resp(&[("cache-control", "max-age=1")])),
            None
        );
    }

    #[test]
    fn a_304_replaces_every_field_it_carries_but_content_length() {
        let stored = resp(&[
            ("content-length", "1000"),
            ("x-version", "1"),
            ("cache-control", "max-age=1"),
            ("x-kept", "k"),
            ("link", "<a>"),
            ("link", "<b>"),
        ]);
        let fresh = resp(&[
            ("content-length", "0"),
            ("x-version", "2"),
            ("cache-control", "max-age=60"),
            ("x-new", "n"),
            ("link", "<c>"),
        ]);
        let out = freshen(&stored, &fresh.headers);
        assert_eq!(out.headers["content-length"], "1000");
        assert_eq!(out.headers["x-version"], "2");
        assert_eq!(out.headers["cache-control"], "max-age=60");
        assert_eq!(out.headers["x-new"], "n");
        assert_eq!(out.headers["x-kept"], "k");
        let links: Vec<_> = out.headers.get_all("link").iter().collect();
        assert_eq!(links, ["<c>"]);
    }

    #[test]
    fn unsafe_methods_invalidate_their_target_and_same_host_locations() {
        let r = resp(&[
            ("location", "/v/a/new.m4s"),
            ("content-location", "http://other.example/v/a/x.m4s"),
        ]);
        let post = http::Method::POST;
        assert_eq!(
            invalidated(&post, 201, "cdn.example", "/v/a/up", &r),
            ["/v/a/up", "/v/a/new.m4s"]
        );
        let same = resp(&[("content-location", "http://CDN.example/v/a/x.m4s?q=1")]);
        assert_eq!(
            invalidated(&http::Method::DELETE, 204, "cdn.example", "/v/a/x", &same),
            ["/v/a/x", "/v/a/x.m4s?q=1"]
        );
        let unknown = http::Method::from_bytes(b"PURGEX").unwrap();
        assert_eq!(invalidated(&unknown, 200, "h", "/p", &resp(&[])), ["/p"]);
        assert!(
            invalidated(&post, 500, "h", "/p", &r).is_empty(),
            "errors invalidate nothing"
        );
        assert!(invalidated(&http::Method::GET, 200, "h", "/p", &r).is_empty());
    }

    #[test]
    fn request_directives_as_rfc_9111_5_2_1_reads_them() {
        let d = |v: &str| {
            let mut q = RequestHeader::build("GET", b"/", None).unwrap();
            q.append_header("cache-control", v).unwrap();
            RequestDirectives::parse(&q)
        };
        // §5.2.1.1 max-age: older than that is not acceptable.
        assert_eq!(d("max-age=10").verdict(11, 50, false), Some(false));
        assert_eq!(d("max-age=10").verdict(10, 50, false), None);
        // §5.2.1.3 min-fresh: fresh for at least that much longer.
        assert_eq!(d("min-fresh=30").verdict(0, 20, false), Some(false));
        assert_eq!(d("min-fresh=30").verdict(0, 40, false), None);
        // §5.2.1.4 no-cache: validate first.
        assert_eq!(d("no-cache").verdict(0, 1000, false), Some(false));
        // §5.2.1.2 max-stale: stale accepted, within the bound, unless the
        // response forbids it (must-revalidate, no-cache).
        assert_eq!(d("max-stale").verdict(100, -90, false), Some(true));
        assert_eq!(d("max-stale=60").verdict(100, -90, false), None);
        assert_eq!(d("max-stale=60").verdict(100, -30, false), Some(true));
        assert_eq!(d("max-stale").verdict(100, -30, true), None);
        assert_eq!(d("max-stale").verdict(1, 30, false), None, "fresh anyway");
        // §5.2.1.5 no-store is parsed for the response side.
        assert!(d("no-store").no_store);
        assert_eq!(d("").verdict(5, 5, false), None);
    }

    #[test]
    fn only_if_cached_is_found_among_directives() {
        let mut q = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(!only_if_cached(&q));
        q.append_header("cache-control", "max-stale=5, Only-If-Cached")
            .unwrap();
        assert!(only_if_cached(&q));
    }
}
