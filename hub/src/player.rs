//! `/play/{id}`: a page that plays a video with hls.js (or native HLS, as
//! in Safari), with `?engine=dash` dash.js, or with `?engine=shaka` Shaka
//! Player (DASH; `&src=hls` for HLS). The players come from the
//! npm registry into `assets_dir` (`npm ci`), served under `/assets/`.
//! The page records what happened in `window.meshcast` for tests.

use crate::catalog::Status;
use crate::openapi::{TAG_OPERATIONS, TAG_PLAYBACK};
use crate::Hub;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use std::path::Component;
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(acks_plugin))
        .routes(routes!(rtc_loader))
        .routes(routes!(asset))
        .routes(routes!(favicon))
}

/// The proof-of-delivery plugin for hls.js, dash.js and Shaka.
#[utoipa::path(get, path = "/assets/meshcast-acks.js", tag = TAG_PLAYBACK,
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String)))]
async fn acks_plugin() -> Response {
    script(PLUGIN)
}

/// The hls.js loader that fetches over a WebRTC data channel.
#[utoipa::path(get, path = "/assets/meshcast-rtc.js", tag = TAG_PLAYBACK,
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String)))]
async fn rtc_loader() -> Response {
    script(RTC_LOADER)
}

/// Browsers ask; there is none.
#[utoipa::path(get, path = "/favicon.ico", tag = TAG_OPERATIONS,
    responses((status = 204, description = "No icon")))]
async fn favicon() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The proof-of-delivery plugin for hls.js, dash.js and Shaka, kept in the
/// repo as plain JS.
const PLUGIN: &str = include_str!("../../player/js/meshcast-acks.js");

/// The hls.js loader that fetches over a WebRTC data channel.
const RTC_LOADER: &str = include_str!("../../player/js/meshcast-rtc.js");

fn script(text: &'static str) -> Response {
    (
        [
            ("content-type", "text/javascript"),
            ("cache-control", "public, max-age=300"),
        ],
        text,
    )
        .into_response()
}

/// The packages whose files are served (swagger-ui-dist keeps its files
/// at its root).
const ALLOWED_ASSETS: [&str; 5] = [
    "hls.js/dist/",
    "dashjs/dist/",
    "shaka-player/dist/",
    "swagger-ui-dist/",
    "tus-js-client/dist/",
];

/// The players' and the API reference's files, from `npm ci`.
#[utoipa::path(get, path = "/assets/{*path}", tag = TAG_OPERATIONS,
    params(("path" = String, Path, description = "e.g. `hls.js/dist/hls.min.js`, `dashjs/dist/modern/umd/dash.all.min.js`, `swagger-ui-dist/swagger-ui.css`")),
    responses(
        (status = 200, description = "The file", content_type = "text/javascript", body = String),
        (status = 404, description = "Not one of the served packages, or not installed", content_type = "text/plain", body = String)))]
async fn asset(State(hub): State<Arc<Hub>>, Path(path): Path<String>) -> Response {
    let Some(dir) = &hub.config.hub.assets_dir else {
        return (
            StatusCode::NOT_FOUND,
            "no assets_dir configured; run `npm ci` and set [hub] assets_dir\n",
        )
            .into_response();
    };
    let rel = std::path::Path::new(&path);
    let safe = rel.components().all(|c| matches!(c, Component::Normal(_)))
        && ALLOWED_ASSETS.iter().any(|p| path.starts_with(p));
    if !safe {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    match tokio::fs::read(dir.join(rel)).await {
        Ok(bytes) => {
            let ct = match path.rsplit('.').next() {
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                Some("png") => "image/png",
                Some("map" | "json") => "application/json",
                _ => "application/octet-stream",
            };
            (
                [
                    ("content-type", ct),
                    ("cache-control", "public, max-age=86400"),
                ],
                bytes,
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::NOT_FOUND,
            format!("{path} is not installed; run `npm ci`\n"),
        )
            .into_response(),
    }
}

/// The player page of a ready video.
#[utoipa::path(get, path = "/play/{id}", tag = TAG_PLAYBACK,
    params(("id" = String, Path, description = "The video's id"),
        ("engine" = Option<String>, Query, description = "`hls` (hls.js, the default), `dash` (dash.js) or `shaka`"),
        ("token" = Option<String>, Query, description = "A playback token to play with (a `signed` video's, from its owner)")),
    responses(
        (status = 200, description = "The page", content_type = "text/html", body = String),
        (status = 404, description = "No such video", content_type = "text/html", body = String),
        (status = 503, description = "Not ready yet; `Retry-After`", content_type = "text/html", body = String)))]
async fn page(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Response {
    let ok_id = id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    let video = if ok_id {
        hub.catalog.video(&id).ok().flatten()
    } else {
        None
    };
    let Some(video) = video else {
        return (
            StatusCode::NOT_FOUND,
            Html("<h1>No such video</h1>".to_string()),
        )
            .into_response();
    };
    if video.status != Status::Ready {
        let msg = format!(
            "<h1>Not ready yet</h1><p>Status: {:?}, {:.0}%</p>",
            video.status, video.percent
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "5")],
            Html(msg),
        )
            .into_response();
    }
    let title: String = video
        .name
        .chars()
        .filter(|c| c.is_alphanumeric() || " ._-".contains(*c))
        .collect();
    let html = PAGE.replace("{ID}", &id).replace("{TITLE}", &title);
    ([("cache-control", "public, max-age=60")], Html(html)).into_response()
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{TITLE} — meshcast</title>
<style>body{font-family:sans-serif;background:#111;color:#eee;margin:2em}video{width:100%;max-width:960px;background:#000}</style>
</head><body>
<h1>{TITLE}</h1>
<video id="v" controls muted autoplay playsinline></video>
<p id="state">loading…</p>
<script>
window.meshcast = { events: [], errors: [], engine: null };
const video = document.getElementById('v');
const state = document.getElementById('state');
const engine = new URLSearchParams(location.search).get('engine') || 'hls';
const note = (e) => { window.meshcast.events.push(e); state.textContent = e; };
const fail = (e) => { window.meshcast.errors.push(String(e)); state.textContent = 'error: ' + e; };
for (const ev of ['playing', 'waiting']) video.addEventListener(ev, () => note(ev));
// The end of playback, once: the element's `ended`, or dash.js's
// PLAYBACK_ENDED for the last period. dash.js ends playback itself (a seek
// to the end and a pause) when its 200 ms timer finds the playhead at the
// period's end before the element has fired `ended`; the element then never
// fires it, so both are listened to.
const atEnd = [];
let over = false;
const end = () => { if (over) return; over = true; note('ended'); atEnd.forEach((f) => f()); };
video.addEventListener('ended', end);
video.addEventListener('error', () => fail('video element error ' + (video.error && video.error.code)));
function load(src, onload) { const s = document.createElement('script'); s.src = src; s.onload = onload; s.onerror = () => fail('cannot load ' + src); document.head.appendChild(s); }
// Through an edge with a node identity, media needs a playback token: get
// one for a fresh session key (the plugin) and acknowledge what arrives.
// Straight from the hub, play the plain origin URLs.
async function prepare() {
  const given = new URLSearchParams(location.search).get('token');
  let edge = null;
  try { const r = await fetch('/v1/edge'); if (r.ok) edge = await r.json(); } catch (e) {}
  if (!edge || !edge.receipts) return { base: '/v/{ID}/', session: null };
  if (given) return { base: '/t/' + given + '/v/{ID}/', session: null };
  await new Promise((ok) => load('/assets/meshcast-acks.js', ok));
  const session = await MeshcastAcks.start({ video: '{ID}' });
  window.meshcast.acks = session.stats;
  atEnd.push(() => session.flush().then(() => note('acks flushed')));
  // ?via=webrtc: playlists, segments and acks over a data channel to a
  // node the hub picks; HTTPS per request when it fails.
  if (new URLSearchParams(location.search).get('via') === 'webrtc') {
    await new Promise((ok) => load('/assets/meshcast-rtc.js', ok));
    try {
      const rtc = await MeshcastRtc.connect({ token: session.token });
      session.post = rtc.poster();
      session.rtc = rtc;
      window.meshcast.rtc = rtc.stats;
      note('webrtc open');
    } catch (e) { note('webrtc unavailable: ' + e); }
  }
  return { base: session.url(''), session };
}
prepare().then(({ base, session }) => {
  if (engine === 'dash') {
    window.meshcast.engine = 'dash.js';
    load('/assets/dashjs/dist/modern/umd/dash.all.min.js', () => {
      const p = dashjs.MediaPlayer().create();
      p.on(dashjs.MediaPlayer.events.ERROR, (e) => fail('dash.js: ' + JSON.stringify(e.error || e)));
      p.on(dashjs.MediaPlayer.events.PLAYBACK_ENDED, (e) => { if (e && e.isLast) end(); });
      if (session) p.addResponseInterceptor(session.dashInterceptor());
      p.initialize(video, base + 'manifest.mpd', true);
    });
  } else if (engine === 'shaka') {
    window.meshcast.engine = 'shaka';
    const src = new URLSearchParams(location.search).get('src') === 'hls' ? 'master.m3u8' : 'manifest.mpd';
    load('/assets/shaka-player/dist/shaka-player.compiled.js', async () => {
      shaka.polyfill.installAll();
      const p = new shaka.Player();
      p.addEventListener('error', (e) => fail('shaka: ' + (e.detail && e.detail.code)));
      try {
        await p.attach(video);
        if (session) p.getNetworkingEngine().registerResponseFilter(session.shakaFilter());
        await p.load(base + src);
      } catch (e) { fail('shaka: ' + (e.code || e)); }
    });
  } else if (video.canPlayType('application/vnd.apple.mpegurl') && !window.MediaSource) {
    window.meshcast.engine = 'native';
    video.src = base + 'master.m3u8';
  } else {
    window.meshcast.engine = 'hls.js';
    load('/assets/hls.js/dist/hls.min.js', () => {
      const loader = session && (session.rtc ? session.rtc.loader(Hls, session) : session.loader(Hls));
      const h = new Hls(loader ? { loader } : {});
      h.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) fail('hls.js: ' + d.type + ' ' + d.details); else note('hls.js recovered: ' + d.details); });
      h.loadSource(base + 'master.m3u8');
      h.attachMedia(video);
    });
  }
}).catch(fail);
</script>
</body></html>
"#;
