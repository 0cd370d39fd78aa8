//! The edge's own answers, as opposed to what it proxies: its endpoints
//! (`POST /v1/acks` with its CORS preflight, `GET /v1/edge`) and the
//! errors it makes itself, with the `Server` name they carry.

use crate::delivery::book::AckBatch;
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use bytes::Bytes;
use http::header;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// Largest ack batch body accepted.
const MAX_ACK_BODY: usize = 1 << 20;

/// Sends a small JSON answer (edge endpoints, not proxied).
async fn respond_json(
    session: &mut Session,
    status: u16,
    body: &serde_json::Value,
) -> Result<bool> {
    let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// `POST /v1/acks` (and its CORS preflight), `GET /v1/edge`.
pub(crate) async fn edge_endpoint(
    delivery: &Delivery,
    metrics: &Metrics,
    session: &mut Session,
) -> Result<bool> {
    let req = session.req_header();
    let path = req.uri.path().to_string();
    let method = req.method.clone();
    if path == "/v1/edge" {
        return respond_json(session, 200, &delivery.describe()).await;
    }
    if method == http::Method::OPTIONS {
        let mut resp = ResponseHeader::build(204, Some(4))?;
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")?;
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS")?;
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type")?;
        resp.insert_header(header::ACCESS_CONTROL_MAX_AGE, "86400")?;
        session.write_response_header(Box::new(resp), true).await?;
        return Ok(true);
    }
    let err = |m: String| serde_json::json!({ "error": m });
    if method != http::Method::POST {
        return respond_json(session, 405, &err("POST a batch of acks here".into())).await;
    }
    let Some(book) = &delivery.book else {
        return respond_json(
            session,
            404,
            &err("this edge has no [node] identity and takes no acks".into()),
        )
        .await;
    };
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ACK_BODY {
            return respond_json(
                session,
                413,
                &err(format!("ack batches are at most {MAX_ACK_BODY} bytes")),
            )
            .await;
        }
    }
    let batch: AckBatch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            let why = format!("ack batch: {e}; send {{\"token\": \"…\", \"acks\": [{{\"receipt\": \"…\", \"sig\": \"…\"}}]}}");
            return respond_json(session, 400, &err(why)).await;
        }
    };
    let mut issuers = delivery.hub_issuers.load().as_ref().clone();
    issuers.extend(delivery.static_issuers.load().iter().cloned());
    match book
        .accept(batch, &delivery.tokens, &issuers, metrics)
        .await
    {
        Ok(reply) => {
            respond_json(
                session,
                200,
                &serde_json::to_value(reply).unwrap_or_default(),
            )
            .await
        }
        Err((status, why)) => respond_json(session, status, &err(why)).await,
    }
}

/// Size of the request head as received (request line and header fields).
pub(crate) fn header_bytes(req: &RequestHeader) -> usize {
    let line =
        req.method.as_str().len() + req.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    line + req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// An error the edge makes itself: a one-line reason, never cached, and
/// the CORS header a player's successful responses carry, so a browser
/// player can read why (without it the page sees only a CORS failure).
pub(crate) async fn send_error(session: &mut Session, status: u16, reason: &str) -> Result<()> {
    let body = Bytes::from(format!("meshcast: {reason}\n"));
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")?;
    resp.insert_header(header::SERVER, server_name())?;
    if matches!(status, 400 | 408 | 431) {
        // A malformed request leaves the framing of whatever follows in
        // doubt (RFC 9112 §2.2): answer and close.
        session.set_keepalive(None);
    }
    session.write_error_response(resp, body).await
}

static SERVER_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The `Server` value of the edge's own responses (`[edge] server_name`,
/// set once at start).
pub fn server_name() -> &'static str {
    SERVER_NAME.get().map_or("meshcast", String::as_str)
}

/// Sets the `Server` value of the edge's own responses; the first call wins.
pub fn set_server_name(name: &str) {
    let _ = SERVER_NAME.set(name.to_string());
}

/// Turns `resp` into a 416 for a body of `total` bytes (as Pingora does
/// for ranges it finds unsatisfiable).
pub(crate) fn unsatisfiable(resp: &mut ResponseHeader, total: u64) {
    let _ = resp.set_status(416);
    let _ = resp.insert_header(header::CONTENT_LENGTH, "0");
    let _ = resp.insert_header(header::CONTENT_RANGE, format!("bytes */{total}"));
    for h in [
        header::ACCEPT_RANGES,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
    ] {
        resp.remove_header(&h);
    }
}

pub(crate) async fn refuse(session: &mut Session, status: u16, reason: &str) -> Result<bool> {
    send_error(session, status, reason).await?;
    Ok(true)
}
