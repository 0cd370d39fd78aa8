//! A small static-file origin for demos and manual testing: serves a
//! directory with Content-Type, ETag and Last-Modified, answers
//! If-None-Match with 304, and never serves outside its directory.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use std::path::{Component, Path, PathBuf};

struct Files {
    root: PathBuf,
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "m3u8" => "application/vnd.apple.mpegurl",
        "mpd" => "application/dash+xml",
        "m4s" | "mp4" | "cmfv" => "video/mp4",
        "m4a" | "cmfa" => "audio/mp4",
        "ts" => "video/mp2t",
        "vtt" => "text/vtt",
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript",
        _ => "application/octet-stream",
    }
}

#[async_trait]
impl ServeHttp for Files {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let rel = Path::new(req.uri.path().trim_start_matches('/'));
        let safe = rel.components().all(|c| matches!(c, Component::Normal(_)));
        let path = self.root.join(rel);
        let not_found = || {
            Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(b"not found\n".to_vec())
        };
        let resp = match (safe, std::fs::read(&path), std::fs::metadata(&path)) {
            (true, Ok(body), Ok(meta)) => {
                let etag = format!("\"{}\"", &blake3::hash(&body).to_hex()[..16]);
                let modified = meta
                    .modified()
                    .map(httpdate::fmt_http_date)
                    .unwrap_or_default();
                let matches = req
                    .headers
                    .get("if-none-match")
                    .is_some_and(|v| v.as_bytes() == etag.as_bytes());
                let builder = Response::builder()
                    .header("etag", &etag)
                    .header("last-modified", modified);
                if matches {
                    builder.status(StatusCode::NOT_MODIFIED).body(Vec::new())
                } else {
                    builder
                        .status(StatusCode::OK)
                        .header("content-type", content_type(&path))
                        .header("content-length", body.len())
                        .body(body)
                }
            }
            _ => not_found(),
        };
        resp.unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

pub fn run(dir: PathBuf, listen: &str) -> anyhow::Result<()> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let mut server = Server::new(None)?;
    server.bootstrap();
    let mut service = Service::new(
        "meshcast demo origin".into(),
        HttpServer::new_app(Files { root: dir }),
    );
    service.add_tcp(listen);
    server.add_service(service);
    tracing::info!(listen, "demo origin serving");
    server.run_forever();
}
