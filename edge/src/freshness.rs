//! Whether and for how long a response is cached (RFC 9111), with the site's
//! video-aware defaults when the origin says nothing: playlists briefly,
//! segments long.

use crate::sites::Site;
use pingora_cache::cache_control::{CacheControl, Cacheable as CcCacheable, InterpretCacheControl};
use pingora_cache::filters::{calculate_fresh_until, calculate_serve_stale_durations};
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

const NO_DEFAULT_TTL: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

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
    if resp.headers.contains_key(http::header::SET_COOKIE) {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let vary_star = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim() == "*"))
    });
    if vary_star {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
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
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let now = SystemTime::now();
    let fresh_until = calculate_fresh_until(
        now,
        cc.as_ref(),
        resp_for_edge,
        authorization,
        &NO_DEFAULT_TTL,
    )
    .or_else(|| {
        if authorization || !default_ttl_applies(resp.status.as_u16()) {
            return None;
        }
        let ttl = match classify(path) {
            ContentKind::Playlist => site.playlist_ttl,
            ContentKind::Segment => site.segment_ttl,
            ContentKind::Other => site.default_ttl,
        };
        (!ttl.is_zero()).then(|| now + ttl)
    });
    let Some(fresh_until) = fresh_until else {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    };
    let site_defaults = CacheMetaDefaults::new(
        |_| None,
        secs(site.stale_while_revalidate),
        secs(site.stale_if_error),
    );
    let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &site_defaults);
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    crate::http_rules::strip_targeted(&mut header);
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, header))
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
}
