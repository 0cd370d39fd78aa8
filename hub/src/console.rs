//! The web console at `/console`: one page of plain HTML, CSS and
//! JavaScript (`hub/console/`, compiled in) over the documented API, for
//! owners (upload, library, player, costs) and anyone curious about the
//! network (nodes, chain). Its only library, tus-js-client, comes from
//! `npm ci` and is served under `/assets/` like the players; nothing is
//! fetched from the internet. This module serves the files; what they do
//! is in `hub/console/console.js`.

use crate::openapi::TAG_CONSOLE;
use crate::Hub;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use utoipa_axum::{router::OpenApiRouter, routes};

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

pub fn routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new()
        .routes(routes!(home))
        .routes(routes!(page))
        .routes(routes!(script))
        .routes(routes!(style))
}

/// The page holds an API key: only its own scripts run (no inline script,
/// nothing from elsewhere), it talks only to the hub, and only edges'
/// player pages may be framed in it.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; frame-src http: https:; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'self'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    // Short-lived: a new hub version's console is picked up within a minute.
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=60"),
            (CONTENT_SECURITY_POLICY, POLICY),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The hub's front door: the console.
#[utoipa::path(get, path = "/", tag = TAG_CONSOLE,
    responses((status = 303, description = "To `/console`")))]
async fn home() -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, "/console")]).into_response()
}

/// The console page (sign in with an API key; library, money, network).
#[utoipa::path(get, path = "/console", tag = TAG_CONSOLE,
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
async fn page() -> Response {
    file("text/html; charset=utf-8", PAGE)
}

/// The console's script.
#[utoipa::path(get, path = "/console/console.js", tag = TAG_CONSOLE,
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String)))]
async fn script() -> Response {
    file("text/javascript", SCRIPT)
}

/// The console's style sheet.
#[utoipa::path(get, path = "/console/console.css", tag = TAG_CONSOLE,
    responses((status = 200, description = "The style sheet", content_type = "text/css", body = String)))]
async fn style() -> Response {
    file("text/css", STYLE)
}
