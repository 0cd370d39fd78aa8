//! The request pipeline: one `ProxyHttp` implementation that every door
//! (TCP today; QUIC and WebRTC later, as Pingora custom sessions) feeds.
//! host → site → token → access check → cache → origin → receipt. Nothing
//! here depends on the protocol the request arrived by.

use crate::access_log::{self, AccessLog, Entry};
use crate::cache::TieredStorage;
use crate::cache_status;
use crate::delivery::book::now_ms;
use crate::delivery::gate::{Gate, VerifiedToken};
use crate::delivery::Delivery;
use crate::freshness;
use crate::metrics::Metrics;
use crate::replies::{edge_endpoint, header_bytes, refuse, send_error, unsatisfiable};
use crate::sites::{cache_key_url, normalize_host, Site, Sites};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header;
use meshcast_control::receipt::content_id;
use pingora_cache::key::{CacheKey, HashBinary};
use pingora_cache::lock::CacheKeyLockImpl;
use pingora_cache::{CacheMeta, ForcedFreshness, RespCacheable, VarianceBuilder};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, RangeType, Session};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a config reload replaces.
pub struct EdgeState {
    pub sites: Sites,
    pub max_header_bytes: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Client side: idle time between requests, and per body read.
    pub keepalive_timeout: Duration,
    pub client_read_timeout: Duration,
    pub send_timeout: Duration,
    pub admin_key: Option<String>,
    /// `Alt-Svc` advertising the QUIC door, when there is one.
    pub alt_svc: Option<String>,
}

/// What lives as long as the process.
pub struct Shared {
    pub storage: &'static TieredStorage,
    pub lock: &'static CacheKeyLockImpl,
    pub metrics: &'static Metrics,
    pub access_log: AccessLog,
    pub max_object_size: usize,
    pub state: ArcSwap<EdgeState>,
    pub delivery: Arc<Delivery>,
}

pub struct EdgePipeline {
    pub shared: Arc<Shared>,
}

pub struct RequestCtx {
    start: Instant,
    state: Arc<EdgeState>,
    site: Option<Arc<Site>>,
    host: String,
    /// The request path in normal form, without `/t/{token}`.
    path: String,
    key_url: String,
    stored: bool,
    origin_status: Option<u16>,
    /// Which door the request came through, for logs.
    proto: &'static str,
    /// Short cache outcome (hit, miss, …) for metrics and logs.
    cache_label: &'static str,
    /// The playback token the request carried, verified.
    token: Option<Arc<VerifiedToken>>,
    /// Path and query without `/t/{token}`, for the origin and the receipt.
    media_uri: Option<String>,
    /// Bytes already charged to the token's budget when the header went out.
    budget_charged: bool,
    /// A tokened request for media (not a playlist): charged to the budget
    /// and given a receipt. Playlists are not the paid bytes.
    paid: bool,
    /// The origin's 304 to a revalidation, whose every field freshens the
    /// stored response (pingora merges only a fixed few).
    not_modified: Option<http::HeaderMap>,
    /// Sent to the origin and logged (`observe::request_id`).
    request_id: String,
    /// When the request went to the origin.
    origin_sent: Option<Instant>,
}

impl RequestCtx {
    fn site_label(&self) -> &str {
        self.site
            .as_ref()
            .map_or(crate::observe::NO_SITE, |s| s.label.as_str())
    }
}

impl EdgePipeline {
    /// RFC 9111 §4.4: an unsafe method's success drops what is stored for
    /// its target and the same-host URIs its answer names.
    async fn invalidate_after_unsafe(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &RequestCtx,
    ) {
        let method = &session.req_header().method;
        if method.is_safe() {
            return;
        }
        let Some(status) = ctx.origin_status else {
            return;
        };
        let query = session.req_header().uri.query();
        let target = match query {
            Some(q) => format!("{}?{q}", ctx.path),
            None => ctx.path.clone(),
        };
        for path in crate::http_rules::invalidated(method, status, &ctx.host, &target, resp) {
            let (p, q) = path
                .split_once('?')
                .map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
            let Ok(p) = crate::path::normalize(p) else {
                continue;
            };
            let key = cache_key_url(&ctx.host, &p, q);
            let purged = self.shared.storage.purge_matching(|k| k == key).await;
            tracing::debug!(%key, purged, "invalidated by an unsafe method");
        }
    }
}

/// Sends an interim (1xx) response to an HTTP/1.1 client at once, as RFC
/// 9110 §15.2 asks. Pingora would queue it with the final response and,
/// when both came in one read from the origin and the final one is served
/// from the cache fill, drop it; so the edge writes it here and has
/// Pingora ignore its own copy. Never stored (the cache skips 1xx).
/// HTTP/2 and HTTP/3 clients do not get interim responses: Pingora's h2
/// server cannot send them (hyperium/h2#167), and the QUIC door neither.
async fn forward_interim(session: &mut Session, resp: &ResponseHeader) -> Result<()> {
    let down = session.as_downstream_mut();
    let expects_continue = resp.status == http::StatusCode::CONTINUE
        && down
            .req_header()
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if down.is_http2() || down.is_custom() || expects_continue {
        // Pingora's own handling (a 100 it answers Expect with goes out
        // through it; h2 and h3 ignore 1xx).
        return Ok(());
    }
    down.set_ignore_info_resp(false);
    let sent = down.write_response_header(Box::new(resp.clone())).await;
    down.set_ignore_info_resp(true);
    sent
}

#[async_trait]
impl ProxyHttp for EdgePipeline {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            state: self.shared.state.load_full(),
            site: None,
            host: String::new(),
            path: String::new(),
            key_url: String::new(),
            stored: false,
            origin_status: None,
            proto: "HTTP/1.1",
            cache_label: "none",
            token: None,
            media_uri: None,
            budget_charged: false,
            paid: false,
            not_modified: None,
            request_id: String::new(),
            origin_sent: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let incoming = session.req_header().headers.get(crate::observe::REQUEST_ID);
        ctx.request_id = crate::observe::request_id(incoming.map(|v| v.as_bytes()));
        ctx.proto = if session.as_downstream().is_custom() {
            // Two doors hand the pipeline custom sessions; the WebRTC
            // one marks its requests.
            if session
                .req_header()
                .extensions
                .get::<crate::rtc::session::ViaWebRtc>()
                .is_some()
            {
                "WebRTC"
            } else {
                "HTTP/3"
            }
        } else if session.is_http2() {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        let req = session.req_header();
        let p = req.uri.path();
        if p == "/v1/acks" || p == "/v1/edge" {
            return edge_endpoint(&self.shared.delivery, self.shared.metrics, session).await;
        }
        let size = header_bytes(req);
        if size > ctx.state.max_header_bytes {
            let why = format!(
                "request headers are {size} bytes; this edge accepts at most {}",
                ctx.state.max_header_bytes
            );
            return refuse(session, 431, &why).await;
        }
        let host = req.uri.host().map(str::to_string).or_else(|| {
            req.headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(normalize_host)
        });
        let Some(host) = host.filter(|h| !h.is_empty()) else {
            return refuse(session, 400, "the request has no Host header").await;
        };
        let Some(site) = ctx.state.sites.route(&host).cloned() else {
            let why = format!("no site is configured for host {host:?} on this edge");
            return refuse(session, 421, &why).await;
        };
        // One normal form before anything reads the path: prefix checks
        // here and the origin's own normalisation cannot disagree.
        let mut path = match crate::path::normalize(req.uri.path()) {
            Ok(p) => p.into_owned(),
            Err(e) => {
                self.shared
                    .metrics
                    .access_denied
                    .with_label_values(&["bad_path"])
                    .inc();
                return refuse(session, 400, &e.to_string()).await;
            }
        };
        let query = req.uri.query().map(str::to_string);
        if path != req.uri.path() {
            // The origin is asked for the normal form too.
            ctx.media_uri = Some(match &query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            });
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let delivery = &self.shared.delivery;
        let hub_issuers = delivery.hub_issuers.load();
        let me = delivery.book.as_ref().map(|b| b.sealer.node());
        match delivery
            .tokens
            .gate(site.tokens.as_ref(), &hub_issuers, me.as_ref(), &path, now)
        {
            Gate::Open => {}
            Gate::Token {
                token,
                path: rest,
                paid,
            } => {
                ctx.media_uri = Some(match &query {
                    Some(q) => format!("{rest}?{q}"),
                    None => rest.clone(),
                });
                ctx.paid = paid;
                path = rest;
                ctx.token = Some(token);
            }
            Gate::Denied { reason, label } => {
                self.shared
                    .metrics
                    .access_denied
                    .with_label_values(&[label])
                    .inc();
                return refuse(session, 403, &reason).await;
            }
        }
        if let Some(check) = &site.access {
            if let Err(denied) = check.check(&path, query.as_deref(), now) {
                self.shared
                    .metrics
                    .access_denied
                    .with_label_values(&[denied.label()])
                    .inc();
                return refuse(session, 403, denied.reason()).await;
            }
        }
        ctx.key_url = cache_key_url(&host, &path, query.as_deref());
        ctx.path = path;
        ctx.host = host;
        ctx.site = Some(site);
        Ok(false)
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Idle keep-alive connections are closed on time (pingora keeps
        // them forever otherwise), and a stalled body is cut off.
        session.set_keepalive(Some(ctx.state.keepalive_timeout.as_secs()));
        session.set_read_timeout(Some(ctx.state.client_read_timeout));
        // A client that stops reading its response is cut off too.
        session.set_write_timeout(Some(ctx.state.send_timeout));
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Result<()> {
        let method = &session.req_header().method;
        if method == http::Method::GET || method == http::Method::HEAD {
            let s = &self.shared;
            session
                .cache
                .enable(s.storage, None, None, Some(s.lock), None);
            session.cache.set_max_file_size_bytes(s.max_object_size);
        }
        Ok(())
    }

    fn cache_key_callback(&self, _session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        Ok(CacheKey::new(ctx.key_url.as_bytes(), ""))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let mut variance = VarianceBuilder::new();
        let names: Vec<String> = meta
            .headers()
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        for name in &names {
            variance.add_value(
                name,
                req.headers
                    .get(name.as_str())
                    .map_or(&b""[..], |v| v.as_bytes()),
            );
        }
        variance.finalize()
    }

    /// Pingora's range handling, except that a range selecting no byte
    /// (`bytes=-0`, RFC 9110 §14.1.2: a suffix length of 0 is
    /// unsatisfiable) is a 416, not a 206 with an inverted Content-Range.
    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> RangeType {
        let total = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let range = pingora_proxy::range_header_filter(session.req_header(), resp, Some(200));
        match (range, total) {
            (RangeType::Single(r), Some(total)) if r.is_empty() => {
                unsatisfiable(resp, total);
                RangeType::Invalid
            }
            (range, _) => range,
        }
    }

    /// RFC 9111 §5.2.1: the request's own max-age, min-fresh, no-cache and
    /// max-stale decide about a stored response before the cache's rules.
    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut pingora_cache::HitHandler,
        _is_fresh: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        // Most requests carry no Cache-Control: nothing to decide.
        if !session
            .req_header()
            .headers
            .contains_key(header::CACHE_CONTROL)
        {
            return Ok(None);
        }
        let wants = crate::http_rules::RequestDirectives::parse(session.req_header());
        let now = SystemTime::now();
        let fresh_left = match meta.fresh_until().duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64) - 1,
        };
        let stale_forbidden =
            pingora_cache::cache_control::CacheControl::from_resp_headers(meta.response_header())
                .is_some_and(|cc| cc.must_revalidate() || cc.no_cache() || cc.proxy_revalidate());
        Ok(
            match wants.verdict(meta.age().as_secs(), fresh_left, stale_forbidden) {
                Some(false) => Some(ForcedFreshness::ForceExpired),
                Some(true) => Some(ForcedFreshness::ForceFresh),
                None => None,
            },
        )
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(site) = &ctx.site else {
            return Ok(RespCacheable::Uncacheable(
                pingora_cache::NoCacheReason::Custom("no site"),
            ));
        };
        let req = session.req_header();
        let authorization = req.headers.contains_key(header::AUTHORIZATION);
        let freshened = ctx
            .not_modified
            .take()
            .map(|fresh| crate::http_rules::freshen(resp, &fresh));
        let resp = freshened.as_ref().unwrap_or(resp);
        // §5.2.1.5: a request with no-store stores nothing of its answer.
        if crate::http_rules::RequestDirectives::parse(req).no_store {
            return Ok(RespCacheable::Uncacheable(
                pingora_cache::NoCacheReason::Custom("request no-store"),
            ));
        }
        let decision = freshness::response_cacheable(site, &ctx.path, resp, authorization);
        ctx.stored = matches!(decision, RespCacheable::Cacheable(_));
        Ok(decision)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let site = ctx
            .site
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no site routed"))?;
        if crate::http_rules::only_if_cached(_session.req_header()) {
            // RFC 9111 §5.2.1.7: nothing stored, and the client forbids a fetch.
            return Err(Error::explain(ErrorType::HTTPStatus(504), "only-if-cached"));
        }
        let mut peer = HttpPeer::new(site.origin_addr, site.origin_tls, site.origin_sni.clone());
        peer.options.connection_timeout = Some(ctx.state.connect_timeout);
        peer.options.total_connection_timeout = Some(ctx.state.connect_timeout);
        peer.options.read_timeout = Some(ctx.state.read_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let host = ctx
            .site
            .as_ref()
            .and_then(|s| s.origin_host.clone())
            .unwrap_or_else(|| ctx.host.clone());
        crate::http_rules::strip_hop_by_hop_request(upstream);
        upstream.insert_header(header::HOST, host)?;
        if let Some(uri) = &ctx.media_uri {
            let uri = uri
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InternalError, "token path", e))?;
            upstream.set_uri(uri);
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            // Append, as every proxy in a chain does: the origin believes
            // hops from the right only as far as it trusts them.
            let value = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {ip}"),
                _ => ip.to_string(),
            };
            upstream.insert_header("x-forwarded-for", value)?;
        }
        upstream.insert_header(crate::observe::REQUEST_ID, ctx.request_id.as_str())?;
        ctx.origin_sent = Some(Instant::now());
        self.shared.metrics.origin_fetches.inc();
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.origin_status = Some(resp.status.as_u16());
        crate::observe::origin_answered(self.shared.metrics, ctx.site_label(), ctx.origin_sent);
        if resp.status.as_u16() == 304 {
            ctx.not_modified = Some(resp.headers.clone());
        }
        // Before the cache sees it: hop-by-hop fields are neither stored
        // nor forwarded.
        crate::http_rules::strip_hop_by_hop_response(resp);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            return forward_interim(session, resp).await;
        }
        crate::observe::first_byte(self.shared.metrics, ctx.site_label(), ctx.start);
        crate::http_rules::strip_targeted(resp);
        self.invalidate_after_unsafe(session, resp, ctx).await;
        let (status, age) = cache_status::describe(session, ctx.stored, ctx.origin_status);
        ctx.cache_label = cache_status::short(&status);
        if let Some(age) = age {
            resp.insert_header(header::AGE, age.to_string())?;
        }
        resp.insert_header("cache-status", status)?;
        if let Some(alt_svc) = &ctx.state.alt_svc {
            if ctx.proto != "HTTP/3" {
                resp.insert_header(header::ALT_SVC, alt_svc.as_str())?;
            }
        }
        if let (Some(token), true) = (&ctx.token, ctx.paid) {
            let get = session.req_header().method == http::Method::GET;
            let len = resp
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let (true, true, Some(len)) = (get, matches!(resp.status.as_u16(), 200 | 206), len) {
                // Charged as the header goes out, so the next request sees it.
                self.shared
                    .delivery
                    .tokens
                    .add_served(token, len, now_ms() / 1000);
                ctx.budget_charged = true;
                let start = if resp.status.as_u16() == 206 {
                    resp.headers
                        .get(header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok())
                } else {
                    Some(0)
                };
                if let (Some(book), Some(start)) = (&self.shared.delivery.book, start) {
                    let path = ctx.media_uri.as_deref().unwrap_or("/");
                    let path = path.split('?').next().unwrap_or(path);
                    let content =
                        content_id(resp.headers.get(header::ETAG).map(|v| v.as_bytes()), path);
                    let r = book.sealer.issue(
                        token.id,
                        content,
                        path,
                        start,
                        len,
                        now_ms(),
                        book.next_serial(),
                    );
                    resp.insert_header("meshcast-receipt", r.header_value())?;
                    // Only a CORS request (one with `Origin`) has headers
                    // hidden from its script; the others (native players,
                    // same-origin pages) are spared 49 bytes per response.
                    if session.req_header().headers.contains_key(header::ORIGIN) {
                        expose_receipt(resp)?;
                    }
                    self.shared.metrics.receipts.inc();
                }
            }
        }
        Ok(())
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        // None: within stale-while-revalidate, already checked against the
        // object's window. Some: the origin failed; stale-if-error decides.
        error.is_none_or(|e| {
            e.esource() == &ErrorSource::Upstream
                || matches!(e.etype(), ErrorType::HTTPStatus(500..=599))
        })
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use ErrorType::*;
        let (code, reason) = match (e.esource(), e.etype()) {
            (_, HTTPStatus(504)) => (
                504,
                "only-if-cached, and nothing is stored for this request",
            ),
            (_, HTTPStatus(code)) => (*code, "request failed"),
            (ErrorSource::Upstream, ConnectTimedout | ReadTimedout | WriteTimedout) => {
                (504, "the origin timed out")
            }
            (ErrorSource::Upstream, _) => (502, "the origin is unreachable or answered badly"),
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => (0, ""),
            (ErrorSource::Downstream, _) => (400, "malformed request"),
            _ => (500, "internal error"),
        };
        if code > 0 {
            if let Err(err) = send_error(session, code, reason).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let m = self.shared.metrics;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let cache = ctx.cache_label;
        let bytes = session.body_bytes_sent();
        m.requests
            .with_label_values(&[&status.to_string(), cache])
            .inc();
        m.bytes_out.inc_by(bytes as u64);
        crate::observe::finished(m, ctx.site_label(), cache, ctx.start, e);
        if let (Some(t), true, false) = (&ctx.token, ctx.paid, ctx.budget_charged) {
            self.shared
                .delivery
                .tokens
                .add_served(t, bytes as u64, now_ms() / 1000);
        }
        if session.cache.enabled() && session.cache.lock_duration().is_some() {
            m.coalesced_waiters.inc();
        }
        if let Some(err) = e {
            tracing::debug!(error = %err, "request ended with an error");
        }
        if !self.shared.access_log.enabled() {
            return;
        }
        let req = session.req_header();
        self.shared.access_log.write(&Entry {
            time: httpdate::fmt_http_date(SystemTime::now()),
            client: session
                .client_addr()
                .map_or_else(|| "-".into(), |a| a.to_string()),
            method: req.method.to_string(),
            host: ctx.host.clone(),
            uri: req
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            proto: ctx.proto,
            status,
            cache: cache.to_string(),
            bytes,
            duration_ms: ctx.start.elapsed().as_secs_f64() * 1000.0,
            site: ctx.site.as_ref().map_or(0, |s| s.number),
            origin_status: ctx.origin_status,
            user_agent: req
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string(),
            cmcd: access_log::cmcd(req),
            request_id: ctx.request_id.clone(),
        });
    }
}

/// Adds `Meshcast-Receipt` to what the origin's response exposes to a
/// cross-origin script (the HUB exposes its own headers; they stay).
fn expose_receipt(resp: &mut ResponseHeader) -> Result<()> {
    let name = header::ACCESS_CONTROL_EXPOSE_HEADERS;
    let value = match resp.headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(v) if !v.trim().is_empty() => format!("{v}, Meshcast-Receipt"),
        _ => "Meshcast-Receipt".to_string(),
    };
    resp.insert_header(name, value)
}
