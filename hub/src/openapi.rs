//! The HUB's API description: an OpenAPI 3.1 document generated from the
//! handlers' `#[utoipa::path]` annotations, served at `/v1/openapi.json`,
//! and a reference page (Swagger UI from npm, served from `assets_dir`) at
//! `/docs/api`.
//!
//! Every route is registered through `utoipa_axum::routes!`, which takes
//! the path and method from the same annotation the document is made of,
//! so a route cannot exist without being documented (a test also scans the
//! sources for routes added any other way). This module owns the document's
//! header (title, version, tags, security scheme) and its two endpoints; it
//! does not describe any other module's handlers.

use crate::Hub;
use axum::extract::Extension;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};
use utoipa_axum::{router::OpenApiRouter, routes};

pub const TAG_VIDEOS: &str = "videos";
pub const TAG_UPLOADS: &str = "uploads";
pub const TAG_ACCOUNTS: &str = "accounts";
pub const TAG_PLAYBACK: &str = "playback";
pub const TAG_NODES: &str = "nodes";
pub const TAG_WORK: &str = "work";
pub const TAG_OPERATIONS: &str = "operations";
pub const TAG_CONSOLE: &str = "console";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "meshcast HUB API",
        description = "Upload video (tus 1.0), follow it through transcoding, play it from the \
            network's edges, and manage accounts and keys. Nodes register, heartbeat and take \
            work here in signed envelopes; the ledger's state is under `/v1/ledger`.\n\n\
            Authenticate with an API key as a bearer token: `Authorization: Bearer mck_…` \
            (an account's key) or `mca_…` (the operator's admin key, in `data_dir/admin.key`).",
        license(name = "Apache-2.0 OR MIT")
    ),
    modifiers(&Security),
    tags(
        (name = "videos", description = "A video's state, renditions and playback URLs"),
        (name = "uploads", description = "Resumable uploads (tus 1.0 core, creation and termination)"),
        (name = "accounts", description = "Accounts, quotas and API keys"),
        (name = "playback", description = "Player pages, playback tokens, WebRTC sessions and origin media"),
        (name = "nodes", description = "Node registration, heartbeats and the network's nodes"),
        (name = "work", description = "Transcode jobs and placements for worker and storage nodes"),
        (name = "ledger", description = "The replicated ledger: balances, blocks and transactions"),
        (name = "operations", description = "Health, metrics and this document"),
        (name = "console", description = "The web console's page and files"),
    )
)]
struct HubDoc;

/// The bearer schemes the handlers' `security(...)` name: `api_key` (an
/// account's) and `admin_key` (the operator's).
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        components.add_security_scheme("api_key", bearer("An account's API key (`mck_…`)"));
        components.add_security_scheme(
            "admin_key",
            bearer("The operator's admin key (`mca_…`, in the hub's `data_dir/admin.key`)"),
        );
    }
}

/// The router the handlers join, already carrying the document's header.
pub fn router() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::with_openapi(HubDoc::openapi())
        .routes(routes!(document))
        .routes(routes!(reference))
}

/// Finishes the document once every route has joined: axum's wildcard
/// segments (`{*path}`) become plain OpenAPI parameters (`{path}`),
/// summaries lose the `` `METHOD /path`: `` their doc comments open with
/// (the reference shows both), operation ids a handler's name shares with
/// another module's get its tag in front, and the hub's version goes in.
pub fn finish(mut doc: Document) -> Document {
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for op in operations(&mut doc) {
        *seen
            .entry(op.operation_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    for op in operations(&mut doc) {
        let id = op.operation_id.clone().unwrap_or_default();
        if seen.get(&id).copied().unwrap_or(0) > 1 {
            let tag = op
                .tags
                .as_ref()
                .and_then(|t| t.first())
                .cloned()
                .unwrap_or_default();
            op.operation_id = Some(format!("{tag}_{id}"));
        }
        op.summary = op.summary.take().map(|s| tidy_summary(&s));
    }
    doc
}

fn operations(doc: &mut Document) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.head,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
    })
}

/// "`GET /v1/x` (admin): the caller's\nthings." → "The caller's things
/// (admin)."
fn tidy_summary(summary: &str) -> String {
    let text = summary.split_whitespace().collect::<Vec<_>>().join(" ");
    let Some((route, rest)) = text.strip_prefix('`').and_then(|t| t.split_once('`')) else {
        return text;
    };
    if !(route.contains(' ') && route.contains('/')) {
        return text;
    }
    let (note, rest) = match rest.strip_prefix(" (").and_then(|r| r.split_once("): ")) {
        Some((note, rest)) => (Some(note), rest),
        None => (None, rest.strip_prefix(": ").unwrap_or(rest)),
    };
    let mut out: String = match rest.chars().next() {
        Some(first) => first.to_uppercase().chain(rest.chars().skip(1)).collect(),
        None => return text,
    };
    if let Some(note) = note {
        let end = out.strip_suffix('.').map(str::len).unwrap_or(out.len());
        out.insert_str(end, &format!(" ({note})"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tidy_summary;

    #[test]
    fn summaries_lose_their_route() {
        assert_eq!(
            tidy_summary("`GET /v1/account`: the caller's\naccount."),
            "The caller's account."
        );
        assert_eq!(
            tidy_summary("`POST /v1/accounts` (admin): a new account."),
            "A new account (admin)."
        );
        assert_eq!(
            tidy_summary("`PUT …/files/{rung}/{file}`: one file"),
            "One file"
        );
        assert_eq!(tidy_summary("The `x` of it"), "The `x` of it");
        assert_eq!(tidy_summary("`tus`-style"), "`tus`-style");
    }
}

/// What a path no route matches gets: a JSON error like every other, and
/// where the routes are listed.
pub async fn no_route() -> Response {
    crate::nodes::refuse(
        StatusCode::NOT_FOUND,
        "no such endpoint: GET /v1/openapi.json lists them",
    )
}

/// The finished document, shared by the handler.
#[derive(Clone)]
pub struct Served(pub Arc<Document>);

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = TAG_OPERATIONS,
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
async fn document(Extension(doc): Extension<Served>) -> Response {
    match doc.0.to_json() {
        Ok(json) => (
            [
                ("content-type", "application/json"),
                ("cache-control", "public, max-age=60"),
            ],
            json,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The API reference, rendered in the browser from `/v1/openapi.json`.
#[utoipa::path(get, path = "/docs/api", tag = TAG_OPERATIONS,
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
async fn reference() -> Html<&'static str> {
    Html(REFERENCE)
}

/// Swagger UI's own files come from `npm ci` (`swagger-ui-dist`), served
/// by the player module's `/assets/`; nothing is fetched from the internet.
const REFERENCE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshcast HUB API reference</title>
<link rel="stylesheet" href="/assets/swagger-ui-dist/swagger-ui.css">
</head><body>
<div id="api"><noscript>This page renders <a href="/v1/openapi.json">/v1/openapi.json</a> with JavaScript.</noscript></div>
<script src="/assets/swagger-ui-dist/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({ url: '/v1/openapi.json', dom_id: '#api', deepLinking: true,
  persistAuthorization: true, tryItOutEnabled: false });
</script>
</body></html>
"#;
