//! The `Cache-Status` response header (RFC 9211) and `Age`.

use pingora_cache::CachePhase;
use pingora_proxy::Session;
use std::time::SystemTime;

/// The Cache-Status value and, for responses from cache, the Age in seconds.
pub fn describe(
    session: &Session,
    stored: bool,
    origin_status: Option<u16>,
) -> (String, Option<u64>) {
    let cache = &session.cache;
    if !cache.enabled() && !matches!(cache.phase(), CachePhase::Disabled(_)) {
        return ("meshcast; fwd=bypass".into(), None);
    }
    let fwd_status = origin_status
        .map(|s| format!("; fwd-status={s}"))
        .unwrap_or_default();
    let meta = cache.maybe_cache_meta();
    let age = meta.map(|m| m.age().as_secs());
    let ttl = meta.map(|m| {
        let now = SystemTime::now();
        match m.fresh_until().duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        }
    });
    let ttl_param = ttl.map(|t| format!("; ttl={t}")).unwrap_or_default();
    let stored_param = if stored { "; stored" } else { "" };
    let value = match cache.phase() {
        CachePhase::Hit if cache.lock_duration().is_some() => {
            format!("meshcast; fwd=miss; collapsed{ttl_param}")
        }
        CachePhase::Hit => format!("meshcast; hit{ttl_param}"),
        CachePhase::Miss => format!("meshcast; fwd=miss{fwd_status}{stored_param}"),
        CachePhase::Stale => format!("meshcast; hit{ttl_param}; detail=stale-if-error"),
        CachePhase::StaleUpdating => {
            format!("meshcast; hit{ttl_param}; detail=stale-while-revalidate")
        }
        CachePhase::Expired => format!("meshcast; fwd=stale{fwd_status}{stored_param}"),
        CachePhase::Revalidated => format!("meshcast; fwd=stale{fwd_status}; detail=revalidated"),
        CachePhase::RevalidatedNoCache(_) => {
            format!("meshcast; fwd=stale{fwd_status}; detail=revalidated-uncacheable")
        }
        CachePhase::Disabled(_) if !session.req_header().method.is_safe() => {
            "meshcast; fwd=method".into()
        }
        _ => format!("meshcast; fwd=bypass{fwd_status}"),
    };
    let from_cache = matches!(
        cache.phase(),
        CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_)
    );
    (
        value,
        if from_cache {
            age
        } else {
            Some(0).filter(|_| stored)
        },
    )
}

/// A label for metrics and logs: hit, miss, stale, revalidated, bypass...
pub fn short(cache_status: &str) -> &'static str {
    let rest = cache_status.split_once(';').map_or("", |(_, r)| r);
    if rest.contains("collapsed") {
        "collapsed"
    } else if rest.contains("detail=stale") {
        "stale"
    } else if rest.contains("detail=revalidated") {
        "revalidated"
    } else if rest.trim_start().starts_with("hit") {
        "hit"
    } else if rest.contains("fwd=miss") {
        "miss"
    } else if rest.contains("fwd=stale") {
        "expired"
    } else {
        "bypass"
    }
}
