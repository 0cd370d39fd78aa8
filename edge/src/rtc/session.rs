//! One request on a WebRTC data channel as a Pingora custom server session,
//! so that `HttpProxy::process_new_http` runs the same pipeline for it as
//! for the HTTP doors. Frames go to the peer task (`peer.rs`) through a
//! bounded channel: a slow browser holds its responses back there, not in
//! this edge's memory.

use super::peer::{Out, Shared as Flags};
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderMap;
use meshcast_control::rtc::{chunks, Frame, RequestHead, ResponseHead};
use pingora_core::protocols::http::custom::server::Session as CustomSession;
use pingora_core::protocols::http::HttpTask;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Marks a request header as this door's (in its extensions, which no
/// client can set), so the pipeline tells it from the QUIC door's
/// without building a string per request.
#[derive(Clone, Copy)]
pub struct ViaWebRtc;

pub struct RtcSession {
    id: u32,
    req: RequestHeader,
    body: Option<mpsc::UnboundedReceiver<Bytes>>,
    out: mpsc::Sender<Out>,
    flags: Arc<Flags>,
    response: Option<ResponseHeader>,
    client: Option<SocketAddr>,
    server: Option<SocketAddr>,
    body_sent: usize,
    body_read: usize,
    timeouts: crate::custom_session::Timeouts,
}

fn gone() -> Box<Error> {
    Error::explain(ErrorType::WriteError, "WebRTC peer went away").into_down()
}

impl RtcSession {
    /// The request `head` names; `body` carries its body frames (None: it
    /// has none).
    pub fn new(
        id: u32,
        head: RequestHead,
        body: Option<mpsc::UnboundedReceiver<Bytes>>,
        out: mpsc::Sender<Out>,
        flags: Arc<Flags>,
        client: std::net::SocketAddr,
    ) -> Result<Self> {
        let method = http::Method::from_bytes(head.method.as_bytes())
            .map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e.to_string()))?;
        if !head.path.starts_with('/') {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "path must start with /");
        }
        let mut req = RequestHeader::build(method, head.path.as_bytes(), Some(head.headers.len()))?;
        for (name, value) in head.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e.to_string()))?;
            let value = http::HeaderValue::from_str(&value)
                .map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e.to_string()))?;
            req.append_header(name, value)?;
        }
        req.extensions_mut().insert(ViaWebRtc);
        Ok(RtcSession {
            id,
            req,
            body,
            out,
            flags,
            response: None,
            client: Some(SocketAddr::Inet(client)),
            server: None,
            body_sent: 0,
            body_read: 0,
            timeouts: Default::default(),
        })
    }

    async fn send(&self, frame: Frame) -> Result<()> {
        if self.flags.cancelled.load(Ordering::Relaxed) {
            return Err(gone());
        }
        self.out
            .send(Out::Frame(self.id, frame))
            .await
            .map_err(|_| gone())
    }

    async fn finish_body(&mut self) -> Result<()> {
        if !self.flags.finished.swap(true, Ordering::Relaxed) {
            self.send(Frame::End).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl CustomSession for RtcSession {
    crate::custom_session::common_session_methods!();

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        let Some(rx) = self.body.as_mut() else {
            return Ok(None);
        };
        match rx.recv().await {
            Some(b) => {
                self.body_read += b.len();
                Ok(Some(b))
            }
            None => {
                self.body = None;
                Ok(None)
            }
        }
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        while self.read_body_bytes().await?.is_some() {}
        Ok(())
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        self.write_response_header_ref(&resp, end).await
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        if resp.status.is_informational() || self.response.is_some() {
            // 1xx are not relayed over this door; one head per request.
            return Ok(());
        }
        let headers = resp
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        self.send(Frame::Response(ResponseHead {
            status: resp.status.as_u16(),
            headers,
        }))
        .await?;
        self.response = Some(resp.clone());
        if end {
            self.finish_body().await?;
        }
        Ok(())
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.body_sent += data.len();
        for frame in chunks(&data) {
            self.send(frame).await?;
        }
        if end {
            self.finish_body().await?;
        }
        Ok(())
    }

    async fn write_trailers(&mut self, _trailers: HeaderMap) -> Result<()> {
        // No trailers on this door; the body is complete.
        self.finish_body().await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        let mut end_stream = false;
        for task in tasks {
            end_stream = match task {
                HttpTask::Header(header, end) => {
                    self.write_response_header(header, false).await?;
                    end
                }
                HttpTask::Body(data, end) => {
                    if let Some(d) = data {
                        self.write_body(d, false).await?;
                    }
                    end
                }
                HttpTask::UpgradedBody(..) => {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "upgraded body on a WebRTC session",
                    );
                }
                HttpTask::Trailer(_) | HttpTask::Done => true,
                HttpTask::Failed(e) => return Err(e),
            } || end_stream;
        }
        if end_stream {
            self.finish_body().await?;
        }
        Ok(end_stream)
    }

    fn request_summary(&self) -> String {
        crate::custom_session::summary(&self.req, "(WebRTC)")
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.flags.cancelled.store(true, Ordering::Relaxed);
    }

    fn is_body_done(&mut self) -> bool {
        self.body.is_none()
    }

    async fn finish(&mut self) -> Result<()> {
        self.finish_body().await
    }

    fn is_body_empty(&mut self) -> bool {
        self.body.is_none() && self.body_read == 0
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if no_body_expected || self.body.is_none() {
            // Nothing to read; a peer going away shows up as a failed write.
            std::future::pending::<()>().await;
        }
        self.read_body_bytes().await
    }

    async fn finish_custom(&mut self) -> Result<()> {
        self.finish_body().await
    }
}
