//! The HUB's OpenAPI document against the running hub: every route is in
//! it, everything in it is routed, and the requests it gives examples for
//! succeed as documented.

mod support;

use serde_json::Value;
use std::path::Path;
use support::hub::*;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Routes reach the hub only through `utoipa_axum::routes!`, which takes
/// path and method from the operation's annotation: so the document holds
/// every route the router has. This catches one added any other way.
#[test]
fn no_route_is_registered_outside_the_document() {
    let mut files = Vec::new();
    for krate in ["hub/src", "ledger/src", "consensus/src"] {
        sources(&repo_root().join(krate), &mut files);
    }
    assert!(files.len() > 20, "found only {} sources", files.len());
    let undocumented = [
        ".route(",
        ".route_service(",
        ".nest_service(",
        "axum::routing::",
    ];
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if undocumented.iter().any(|p| line.contains(p)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "routes outside utoipa_axum::routes! (so not in /v1/openapi.json):\n{}",
        found.join("\n")
    );
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every (method, path template) the document lists.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS.iter().chain(&["head"]) {
            if let Some(op) = item.get(*method) {
                ops.push((method.to_string(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

fn method(name: &str) -> reqwest::Method {
    name.to_uppercase().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let mut hub = Hub::config("http://127.0.0.1:9");
    hub.launch().await;
    let doc = get_json(&reqwest::Client::new(), &hub.url("/v1/openapi.json")).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "meshcast HUB API");
    let ops = operations(&doc);
    assert!(ops.len() >= 45, "only {} operations documented", ops.len());
    for path in [
        "/v1/videos",
        "/v1/uploads/{id}",
        "/v1/ledger/status",
        "/v/{id}/{path}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    let client = reqwest::Client::new();
    // A path no route matches: the fallback, which every documented
    // operation must not reach.
    let unrouted = client
        .get(hub.url("/v1/no-such-thing"))
        .send()
        .await
        .unwrap();
    assert_eq!(unrouted.status(), 404);
    let fallback = unrouted.text().await.unwrap();
    assert!(fallback.contains("openapi.json"), "{fallback}");
    let ids: std::collections::HashSet<_> = ops
        .iter()
        .map(|(_, _, op)| op["operationId"].as_str())
        .collect();
    assert_eq!(ids.len(), ops.len(), "operation ids are not unique");
    let unsummarised: Vec<_> = ops
        .iter()
        .filter(|(_, _, op)| {
            !op["summary"]
                .as_str()
                .is_some_and(|s| !s.starts_with('`') && s.len() > 8)
        })
        .map(|(m, t, _)| format!("{m} {t}"))
        .collect();
    assert!(
        unsummarised.is_empty(),
        "operations without a summary: {unsummarised:?}"
    );
    for (m, template, op) in &ops {
        assert!(
            op["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{m} {template} has no tag"
        );
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{m} {template}: no responses"
        );
        // Every parameter filled with something that is not a real id:
        // handlers answer 4xx, never the fallback or 405.
        let path = fill(template, |_| "x".to_string());
        let reply = client
            .request(method(m), hub.url(&path))
            .send()
            .await
            .unwrap();
        let status = reply.status();
        let body = reply.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{m} {template} is documented but not routed");
        assert!(
            body != fallback,
            "{m} {template} is documented but not routed"
        );
    }
    // And the other way: a method the document does not list for a path
    // is not served (the router has no undocumented method on it).
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS.iter().filter(|m| item.get(**m).is_none()) {
            let url = hub.url(&fill(path, |_| "x".to_string()));
            let status = client
                .request(method(m), url)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 405, "{m} {path} is served but not documented");
        }
    }
    hub.kill();
}

/// `template` with each `{name}` replaced by `value(name)`.
fn fill(template: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("balanced braces") + open;
        out.push_str(&rest[..open]);
        out.push_str(&value(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The request the document describes for `op`, if it gives everything
/// one needs: every required parameter an example (a path's `{id}` is the
/// upload made by the example before it), and a body its example.
fn example_request(
    client: &reqwest::Client,
    base: &str,
    (m, template, op): &(String, String, Value),
    upload: Option<&str>,
    key: impl Fn(&str) -> Option<String>,
) -> Option<reqwest::RequestBuilder> {
    // Only a `/v1/` path's `{id}` can be filled: with the upload.
    let names: Vec<&str> = template
        .split('{')
        .skip(1)
        .filter_map(|s| s.split('}').next())
        .collect();
    if !names.is_empty() && (names != ["id"] || !template.starts_with("/v1/") || upload.is_none()) {
        return None;
    }
    let path = fill(template, |_| upload.unwrap_or_default().to_string());
    let mut headers = Vec::new();
    for p in op["parameters"].as_array().into_iter().flatten() {
        let example = p.get("example").map(|e| match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        match (p["in"].as_str(), example) {
            (Some("path"), _) => {}
            (Some("header"), Some(e)) => headers.push((p["name"].as_str()?.to_string(), e)),
            (_, None) if !p["required"].as_bool().unwrap_or(false) => {}
            _ => return None,
        }
    }
    let mut request = client.request(method(m), format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some(body) = op.get("requestBody") {
        let example = body["content"]["application/json"]["example"].clone();
        if example.is_null() {
            return None;
        }
        request = request.json(&example);
    }
    // The first scheme the operation accepts (none: no key).
    let scheme = op["security"].as_array().and_then(|alts| {
        alts.iter()
            .find_map(|a| a.as_object()?.keys().next().cloned())
    });
    if let Some(scheme) = scheme {
        request = request.bearer_auth(key(&scheme)?);
    }
    Some(request)
}

/// Runs the example of every operation that has one, in the document's
/// order but with the creations first (an account, then an upload whose
/// id the `{id}` operations use) and deletions last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_example_requests_succeed() {
    let mut hub = Hub::config("http://127.0.0.1:9");
    hub.launch().await;
    // Statuses as the hub sends them (a 303 is documented as a 303).
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = hub.url("");
    let doc = get_json(&client, &hub.url("/v1/openapi.json")).await;
    let mut ops = operations(&doc);
    let rank = |(m, t, _): &(String, String, Value)| match (m.as_str(), t.as_str()) {
        ("post", "/v1/accounts") => 0,
        ("post", "/v1/videos") => 1,
        ("delete", _) => 3,
        _ => 2,
    };
    ops.sort_by_key(rank);
    let admin = hub.admin_key();
    let mut account_key: Option<String> = None;
    let mut upload: Option<String> = None;
    let mut ran = Vec::new();
    for op in &ops {
        let keys = |scheme: &str| match scheme {
            "admin_key" => Some(admin.clone()),
            "api_key" => account_key.clone(),
            _ => None,
        };
        // Each deletion of an `{id}` gets an upload of its own, made by the
        // document's creation example again.
        if op.0 == "delete" && op.1.ends_with("{id}") {
            let create = ops.iter().find(|o| rank(o) == 1).expect("POST /v1/videos");
            let made = example_request(&client, &base, create, None, keys).expect("its example");
            let reply = made.send().await.unwrap();
            assert_eq!(reply.status(), 201);
            let location = reply.headers()["location"].to_str().unwrap();
            upload = location.rsplit('/').next().map(str::to_string);
        }
        let Some(request) = example_request(&client, &base, op, upload.as_deref(), keys) else {
            continue;
        };
        let reply = request.send().await.unwrap();
        let status = reply.status();
        let location = reply
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_string);
        let body = reply.bytes().await.unwrap();
        assert!(
            status.is_success() || status.is_redirection(),
            "{} {}: {status}: {}",
            op.0,
            op.1,
            String::from_utf8_lossy(&body)
        );
        assert!(
            op.2["responses"].get(status.as_str()).is_some(),
            "{} {} answered {status}, which it does not document",
            op.0,
            op.1
        );
        match rank(op) {
            0 => {
                let made: Value = serde_json::from_slice(&body).unwrap();
                account_key = made["api_key"].as_str().map(str::to_string);
            }
            1 => upload = location.and_then(|l| l.rsplit('/').next().map(str::to_string)),
            _ => {}
        }
        ran.push(format!("{} {}", op.0.to_uppercase(), op.1));
    }
    for expected in [
        "POST /v1/accounts",
        "POST /v1/videos",
        "GET /v1/videos/{id}",
        "HEAD /v1/uploads/{id}",
        "DELETE /v1/uploads/{id}",
        "DELETE /v1/videos/{id}",
        "GET /v1/account/costs",
        "POST /v1/account/webhooks",
        "GET /v1/account",
        "GET /v1/jobs",
        "GET /v1/ledger/status",
    ] {
        assert!(
            ran.iter().any(|r| r == expected),
            "{expected} did not run; ran {ran:?}"
        );
    }
    assert!(ran.len() >= 18, "only {} examples ran: {ran:?}", ran.len());
    // The upload the examples made is gone, as DELETE said.
    let id = upload.expect("an upload was made");
    let gone = hub
        .client()
        .get(hub.url(&format!("/v1/videos/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    hub.kill();
}

/// The reference page loads Swagger UI from the hub itself (no CDN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_page_is_served_whole_by_the_hub() {
    let mut hub = Hub::config("http://127.0.0.1:9");
    hub.launch().await;
    let page = reqwest::get(hub.url("/docs/api"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/v1/openapi.json"));
    let mut assets = 0;
    for part in page
        .split(['"', '\''])
        .filter(|p| p.starts_with("/assets/"))
    {
        let reply = reqwest::get(hub.url(part)).await.unwrap();
        assert_eq!(reply.status(), 200, "{part}");
        let ct = reply.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let expected = if part.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        assert_eq!(ct, expected, "{part}");
        assert!(
            reply.bytes().await.unwrap().len() > 10_000,
            "{part} is not Swagger UI"
        );
        assets += 1;
    }
    assert_eq!(assets, 2, "the page loads Swagger UI's script and style");
    assert!(
        !page.contains("https://"),
        "the page fetches something from the internet"
    );
    hub.kill();
}
