//! The admin listener: Prometheus `/metrics`, `/healthz`, and
//! `POST /purge?url=URL` or `POST /purge?prefix=URL` behind a bearer key.

use crate::pipeline::Shared;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub struct Admin {
    pub shared: Arc<Shared>,
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts are valid")
}

fn text(status: StatusCode, msg: &str) -> Response<Vec<u8>> {
    reply(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

/// A purge target: an optional host and the path (with query) under it.
/// `http://Host/p`, `host/p` and `/p` (any host) are accepted.
pub fn purge_matcher(value: &str, prefix: bool) -> impl Fn(&str) -> bool {
    let v = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .unwrap_or(value);
    let (host, path) = match v.find('/') {
        Some(0) => (None, v.to_string()),
        Some(i) => (Some(v[..i].to_ascii_lowercase()), v[i..].to_string()),
        None => (Some(v.to_ascii_lowercase()), "/".to_string()),
    };
    move |key: &str| {
        let (key_host, key_path) = key.find('/').map_or((key, ""), |i| (&key[..i], &key[i..]));
        let host_ok = host
            .as_deref()
            .is_none_or(|h| crate::sites::normalize_host(h) == key_host);
        host_ok
            && if prefix {
                key_path.starts_with(&path)
            } else {
                key_path == path
            }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        match (req.method.as_str(), path.as_str()) {
            ("GET", "/healthz") => {
                let disk = if self.shared.storage.has_disk() {
                    "disk ok"
                } else {
                    "disk unavailable, memory only"
                };
                text(StatusCode::OK, &format!("ok ({disk})"))
            }
            ("GET", "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.shared.metrics.render(),
            ),
            ("POST", "/purge") => self.purge(session).await,
            (_, "/purge") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST /purge?url=URL or POST /purge?prefix=URL",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz or POST /purge",
            ),
        }
    }
}

impl Admin {
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let Some(key) = self.shared.state.load().admin_key.clone() else {
            return text(
                StatusCode::FORBIDDEN,
                "purge is disabled: set admin_key in [edge]",
            );
        };
        let presented = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(key.as_bytes())) {
            return text(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer key (Authorization: Bearer KEY)",
            );
        }
        let query = req.uri.query().unwrap_or("");
        let mut target = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "url" => target = Some((v.into_owned(), false)),
                "prefix" => target = Some((v.into_owned(), true)),
                _ => {}
            }
        }
        let Some((value, prefix)) = target.filter(|(v, _)| !v.is_empty()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "name what to purge: ?url=http://host/path or ?prefix=http://host/dir/",
            );
        };
        let purged = self
            .shared
            .storage
            .purge_matching(purge_matcher(&value, prefix))
            .await;
        tracing::info!(target = %value, prefix, purged, "purge");
        reply(
            StatusCode::OK,
            "application/json",
            serde_json::json!({ "purged": purged }).to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::purge_matcher;

    #[test]
    fn purge_targets() {
        let exact = purge_matcher("http://Example.com/v/1/a.m4s", false);
        assert!(exact("example.com/v/1/a.m4s"));
        assert!(!exact("example.com/v/1/a.m4s2"));
        assert!(!exact("other.com/v/1/a.m4s"));
        let prefix = purge_matcher("/v/1/", true);
        assert!(prefix("example.com/v/1/a.m4s"));
        assert!(prefix("other.com/v/1/b.m4s"));
        assert!(!prefix("other.com/v/2/b.m4s"));
    }
}
