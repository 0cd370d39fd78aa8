//! A tus 1.0 client for `meshcast up` and the tests: create, then PATCH in
//! chunks, resuming from the server's offset after any failure.

use crate::tus::TUS_VERSION;
use base64::Engine;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TusError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
}

/// Creates an upload; returns its absolute URL.
pub async fn create(
    client: &reqwest::Client,
    endpoint: &str,
    name: &str,
    length: u64,
) -> Result<String, TusError> {
    let meta = format!(
        "filename {}",
        base64::engine::general_purpose::STANDARD.encode(name)
    );
    let resp = client
        .post(endpoint)
        .header("tus-resumable", TUS_VERSION)
        .header("upload-length", length)
        .header("upload-metadata", meta)
        .send()
        .await?;
    if resp.status() != reqwest::StatusCode::CREATED {
        return Err(TusError::Protocol(format!(
            "create: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default().trim()
        )));
    }
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| TusError::Protocol("create: no Location header".into()))?;
    Ok(resolve(endpoint, location))
}

fn resolve(endpoint: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let origin_end = endpoint
        .find("://")
        .map(|i| i + 3)
        .and_then(|i| endpoint[i..].find('/').map(|j| i + j))
        .unwrap_or(endpoint.len());
    format!("{}{}", &endpoint[..origin_end], location)
}

pub async fn offset(client: &reqwest::Client, url: &str) -> Result<u64, TusError> {
    let resp = client
        .head(url)
        .header("tus-resumable", TUS_VERSION)
        .send()
        .await?;
    resp.headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| TusError::Protocol(format!("HEAD: {} without Upload-Offset", resp.status())))
}

pub async fn patch(
    client: &reqwest::Client,
    url: &str,
    at: u64,
    data: Vec<u8>,
) -> Result<u64, TusError> {
    let resp = client
        .patch(url)
        .header("tus-resumable", TUS_VERSION)
        .header("upload-offset", at)
        .header("content-type", "application/offset+octet-stream")
        .body(data)
        .send()
        .await?;
    if resp.status() != reqwest::StatusCode::NO_CONTENT {
        return Err(TusError::Protocol(format!(
            "PATCH: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default().trim()
        )));
    }
    resp.headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| TusError::Protocol("PATCH: no Upload-Offset in the answer".into()))
}

/// Uploads a whole file in `chunk`-byte PATCHes, retrying from the server's
/// offset up to 5 times in a row; returns the upload URL.
pub async fn upload_file(
    client: &reqwest::Client,
    endpoint: &str,
    path: &Path,
    chunk: usize,
    mut on_progress: impl FnMut(u64, u64),
) -> Result<String, TusError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let name = path
        .file_name()
        .map_or("video".into(), |n| n.to_string_lossy().into_owned());
    let url = create(client, endpoint, &name, length).await?;
    let mut at = 0u64;
    let mut failures = 0;
    on_progress(0, length);
    while at < length {
        file.seek(SeekFrom::Start(at))?;
        let mut buf = vec![0u8; chunk.min((length - at) as usize)];
        file.read_exact(&mut buf)?;
        match patch(client, &url, at, buf).await {
            Ok(next) => {
                at = next;
                failures = 0;
                on_progress(at, length);
            }
            Err(e) if failures < 5 => {
                failures += 1;
                tracing::warn!(error = %e, "upload chunk failed; resuming from the hub's offset");
                tokio::time::sleep(std::time::Duration::from_millis(200 * failures)).await;
                at = offset(client, &url).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(url)
}

/// The video id at the end of an upload URL.
pub fn video_id(upload_url: &str) -> &str {
    upload_url.rsplit('/').next().unwrap_or(upload_url)
}

#[cfg(test)]
mod tests {
    #[test]
    fn locations_resolve_against_the_endpoint() {
        assert_eq!(
            super::resolve("http://h:1/v1/videos", "/v1/uploads/ab"),
            "http://h:1/v1/uploads/ab"
        );
        assert_eq!(
            super::resolve("http://h:1/v1/videos", "http://x/y"),
            "http://x/y"
        );
    }
}
