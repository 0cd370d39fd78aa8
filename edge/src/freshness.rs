//! Whether and for how long a response is cached (RFC 9111), with the site's
//! video-aware defaults when the origin says nothing: playlists briefly,
//! segments long.

use crate::sites::Site;
use pingora_cache::cache_control::{CacheControl, Cacheable as CcCacheable, InterpretCacheControl};
use pingora_cache::filters::calculate_serve_stale_durations;
use pingora_cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora_http::ResponseHeader;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Playlist,
    Segment,
    Other,
}

/// Classifies a request path by its extension.
pub fn classify(path: &str) -> ContentKind {
    let ext = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("m3u8" | "mpd") => ContentKind::Playlist,
        Some(
            "m4s" | "ts" | "mp4" | "m4a" | "m4v" | "aac" | "vtt" | "webvtt" | "mp3" | "webm"
            | "key",
        ) => ContentKind::Segment,
        Some(e) if e.starts_with("cmf") => ContentKind::Segment,
        _ => ContentKind::Other,
    }
}

/// Statuses a site default TTL may apply to (RFC 9110 §15.1 heuristically
/// cacheable, minus the ones a video CDN should not pin).
fn default_ttl_applies(status: u16) -> bool {
    matches!(status, 200 | 203 | 204 | 300 | 301 | 308 | 410)
}

/// Decides cacheability of an origin response for `path` on `site`.
pub fn response_cacheable(
    site: &Site,
    path: &str,
    resp: &ResponseHeader,
    authorization: bool,
) -> RespCacheable {
    response_cacheable_at(site, path, resp, authorization, SystemTime::now())
}

/// `response_cacheable` for a response that arrived at `now`.
pub fn response_cacheable_at(
    site: &Site,
    path: &str,
    resp: &ResponseHeader,
    authorization: bool,
    now: SystemTime,
) -> RespCacheable {
    let uncacheable = RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return uncacheable;
    }
    let vary_star = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim() == "*"))
    });
    if vary_star {
        return uncacheable;
    }
    // RFC 9213: a targeted field, if present and valid, is what this edge
    // obeys instead of Cache-Control.
    let targeted = crate::http_rules::targeted_cache_control(resp).map(|v| {
        let mut view = resp.clone();
        let _ = view.insert_header(http::header::CACHE_CONTROL, v);
        view
    });
    let resp_for_edge = targeted.as_ref().unwrap_or(resp);
    let cc = CacheControl::from_resp_headers(resp_for_edge);
    if cc
        .as_ref()
        .is_some_and(|c| c.is_cacheable() == CcCacheable::No)
    {
        return uncacheable;
    }
    if authorization
        && !cc
            .as_ref()
            .is_some_and(|c| c.allow_caching_authorized_req())
    {
        return uncacheable;
    }
    // §4.2.3: the age it arrived with counts against its lifetime, and
    // Age on hits is that plus the time it has been here.
    let age = initial_age(resp, now);
    let created = now.checked_sub(age).unwrap_or(now);
    let fresh_until = match explicit_lifetime(cc.as_ref(), resp_for_edge, now) {
        Some(lifetime) => created + lifetime,
        None => {
            if authorization || !default_ttl_applies(resp.status.as_u16()) {
                return uncacheable;
            }
            let ttl = match classify(path) {
                ContentKind::Playlist => site.playlist_ttl,
                ContentKind::Segment => site.segment_ttl,
                // §4.2.2: 10 % of its time since Last-Modified, at most
                // the site's default (which is then the fallback).
                ContentKind::Other => heuristic_lifetime(resp, now)
                    .map_or(site.default_ttl, |h| h.min(site.default_ttl)),
            };
            if ttl.is_zero() {
                return uncacheable;
            }
            now + ttl
        }
    };
    // A no-cache response is never served stale on a site default: only
    // on the origin's own stale-* directives (must-revalidate forbids even
    // those, as pingora reads them).
    let no_cache = cc.as_ref().is_some_and(|c| c.no_cache());
    let site_defaults = if no_cache {
        CacheMetaDefaults::new(|_| None, 0, 0)
    } else {
        CacheMetaDefaults::new(
            |_| None,
            secs(site.stale_while_revalidate),
            secs(site.stale_if_error),
        )
    };
    let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &site_defaults);
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    crate::http_rules::strip_targeted(&mut header);
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, created, swr, sie, header))
}

fn header_time(resp: &ResponseHeader, name: http::header::HeaderName) -> Option<SystemTime> {
    let v = resp.headers.get(name)?.to_str().ok()?;
    // IMF-fixdate, RFC 850 and asctime (RFC 9110 §5.6.7).
    httpdate::parse_http_date(v.trim()).ok()
}

/// RFC 9111 §4.2.3: the corrected initial age of a response received at
/// `now` — the larger of its apparent age (now − Date) and its `Age`.
pub fn initial_age(resp: &ResponseHeader, now: SystemTime) -> Duration {
    let apparent = header_time(resp, http::header::DATE)
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or_default();
    let age_value = resp
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    apparent.max(age_value)
}

/// RFC 9111 §4.2.1: `s-maxage`/`max-age`, else `Expires` − `Date` (the
/// origin's clock on both sides, so the edge's does not matter); an
/// `Expires` that does not parse means already expired (§5.3).
fn explicit_lifetime(
    cc: Option<&CacheControl>,
    resp: &ResponseHeader,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(d) = cc.and_then(|c| c.fresh_duration()) {
        return Some(d);
    }
    resp.headers.get(http::header::EXPIRES)?;
    let date = header_time(resp, http::header::DATE).unwrap_or(now);
    Some(
        header_time(resp, http::header::EXPIRES)
            .and_then(|e| e.duration_since(date).ok())
            .unwrap_or_default(),
    )
}

/// RFC 9111 §4.2.2: a tenth of the time between `Last-Modified` and
/// `Date` (or now).
fn heuristic_lifetime(resp: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    let modified = header_time(resp, http::header::LAST_MODIFIED)?;
    let date = header_time(resp, http::header::DATE).unwrap_or(now);
    Some(date.duration_since(modified).ok()? / 10)
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sites::test_site;

    fn resp(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn ttl(c: RespCacheable) -> Option<u64> {
        match c {
            RespCacheable::Cacheable(meta) => Some(meta.fresh_sec()),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn classifies_video_paths() {
        assert_eq!(classify("/v/1/master.m3u8"), ContentKind::Playlist);
        assert_eq!(classify("/v/1/manifest.MPD"), ContentKind::Playlist);
        assert_eq!(classify("/v/1/720p/seg_00001.m4s"), ContentKind::Segment);
        assert_eq!(classify("/v/1/audio.cmfa"), ContentKind::Segment);
        assert_eq!(classify("/index.html"), ContentKind::Other);
        assert_eq!(classify("/dir.m3u8/file"), ContentKind::Other);
    }

    #[test]
    fn site_defaults_apply_only_without_origin_freshness() {
        let site = test_site();
        assert_eq!(
            ttl(response_cacheable(&site, "/a.m3u8", &resp(&[]), false)),
            Some(2)
        );
        assert_eq!(
            ttl(response_cacheable(&site, "/a.m4s", &resp(&[]), false)),
            Some(86400)
        );
        assert_eq!(
            ttl(response_cacheable(&site, "/a.html", &resp(&[]), false)),
            None
        );
        assert_eq!(
            ttl(response_cacheable(
                &site,
                "/a.m4s",
                &resp(&[("cache-control", "max-age=60")]),
                false
            )),
            Some(60)
        );
        assert_eq!(
            ttl(response_cacheable(
                &site,
                "/a.m4s",
                &resp(&[("cache-control", "s-maxage=30, max-age=60")]),
                false
            )),
            Some(30)
        );
    }

    #[test]
    fn no_store_private_cookie_and_vary_star_are_not_stored() {
        let site = test_site();
        for h in [
            ("cache-control", "no-store"),
            ("cache-control", "private, max-age=60"),
            ("set-cookie", "a=b"),
            ("vary", "*"),
        ] {
            assert_eq!(
                ttl(response_cacheable(&site, "/a.m4s", &resp(&[h]), false)),
                None,
                "{h:?}"
            );
        }
    }

    #[test]
    fn authorization_needs_explicit_permission() {
        let site = test_site();
        assert_eq!(
            ttl(response_cacheable(&site, "/a.m4s", &resp(&[]), true)),
            None
        );
        assert_eq!(
            ttl(response_cacheable(
                &site,
                "/a.m4s",
                &resp(&[("cache-control", "public, max-age=9")]),
                true
            )),
            Some(9)
        );
    }

    fn meta(c: RespCacheable) -> CacheMeta {
        match c {
            RespCacheable::Cacheable(m) => m,
            RespCacheable::Uncacheable(r) => panic!("not cacheable: {r:?}"),
        }
    }

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    fn date(unix: u64) -> String {
        httpdate::fmt_http_date(at(unix))
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn rfc9111_4_2_3_the_age_it_arrived_with_counts() {
        let site = test_site();
        // max-age=60 with Age: 50 → 10 s of freshness left, and hits say
        // Age 50 + time here.
        let m = meta(response_cacheable_at(
            &site,
            "/a.html",
            &resp(&[("cache-control", "max-age=60"), ("age", "50")]),
            false,
            at(NOW),
        ));
        assert_eq!(m.fresh_until(), at(NOW + 10));
        assert_eq!(m.created(), at(NOW - 50));
        // A Date 30 s in the past is an apparent age of 30 (the larger wins).
        let m = meta(response_cacheable_at(
            &site,
            "/a.html",
            &resp(&[
                ("cache-control", "max-age=60"),
                ("age", "5"),
                ("date", &date(NOW - 30)),
            ]),
            false,
            at(NOW),
        ));
        assert_eq!(m.fresh_until(), at(NOW + 30));
    }

    #[test]
    fn rfc9111_4_2_1_expires_is_relative_to_date_in_every_date_format() {
        let site = test_site();
        // The origin's clock is an hour ahead: Expires − Date is 60 s of
        // freshness here, not an hour and a minute.
        let ahead = NOW + 3600;
        for (d, e) in [
            (date(ahead), date(ahead + 60)),
            (
                "Friday, 15-Jan-27 09:00:00 GMT".to_string(),
                "Friday, 15-Jan-27 09:01:00 GMT".to_string(),
            ),
            (
                "Fri Jan 15 09:00:00 2027".to_string(),
                "Fri Jan 15 09:01:00 2027".to_string(),
            ),
        ] {
            let m = meta(response_cacheable_at(
                &site,
                "/a.html",
                &resp(&[("date", &d), ("expires", &e)]),
                false,
                at(NOW),
            ));
            assert_eq!(m.fresh_sec(), 60, "{d} / {e}");
        }
        // An Expires that does not parse means already expired (§5.3).
        let m = meta(response_cacheable_at(
            &site,
            "/a.m4s",
            &resp(&[("expires", "0")]),
            false,
            at(NOW),
        ));
        assert!(m.fresh_until() <= at(NOW));
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_freshness_from_last_modified() {
        let mut site = test_site();
        site.default_ttl = Duration::from_secs(3600);
        // Modified 1 000 s before Date: 100 s (a tenth).
        let m = meta(response_cacheable_at(
            &site,
            "/page.html",
            &resp(&[("date", &date(NOW)), ("last-modified", &date(NOW - 1000))]),
            false,
            at(NOW),
        ));
        assert_eq!(m.fresh_until(), at(NOW + 100));
        // Never above the site's default; a 404 gets no heuristic (§4.2.2).
        let m = meta(response_cacheable_at(
            &site,
            "/page.html",
            &resp(&[("last-modified", &date(NOW - 10_000_000))]),
            false,
            at(NOW),
        ));
        assert_eq!(m.fresh_until(), at(NOW + 3600));
        let mut not_found = resp(&[("last-modified", &date(NOW - 1000))]);
        not_found.set_status(404).unwrap();
        assert!(matches!(
            response_cacheable_at(&site, "/page.html", &not_found, false, at(NOW)),
            RespCacheable::Uncacheable(_)
        ));
    }

    #[test]
    fn no_cache_and_must_revalidate_are_never_stale_on_a_site_default() {
        let site = test_site();
        assert!(
            site.stale_if_error > Duration::ZERO,
            "the test site has a default"
        );
        for cc in ["no-cache", "max-age=60, must-revalidate"] {
            let m = meta(response_cacheable_at(
                &site,
                "/a.m4s",
                &resp(&[("cache-control", cc)]),
                false,
                at(NOW),
            ));
            assert!(!m.serve_stale_if_error(at(NOW + 61)), "{cc}");
        }
        // The origin's own stale-if-error does let a no-cache one be served.
        let m = meta(response_cacheable_at(
            &site,
            "/a.m4s",
            &resp(&[("cache-control", "no-cache, stale-if-error=60")]),
            false,
            at(NOW),
        ));
        assert!(m.serve_stale_if_error(at(NOW + 30)));
        // Without either, the site default applies.
        let m = meta(response_cacheable_at(
            &site,
            "/a.m4s",
            &resp(&[("cache-control", "max-age=1")]),
            false,
            at(NOW),
        ));
        assert!(m.serve_stale_if_error(at(NOW + 2)));
    }
}
