//! One HTTP/3 request stream as a Pingora custom server session, so that
//! `HttpProxy::process_new_http` runs the same pipeline for it as for
//! HTTP/1.1 and HTTP/2: same cache, coalescing, access checks, logs and
//! metrics.

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http::HeaderMap;
use pingora_core::protocols::http::custom::server::Session as CustomSession;
use pingora_core::protocols::http::HttpTask;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

type Stream3 = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Response headers that mean nothing (or are forbidden) in HTTP/3.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

pub struct H3Session {
    req: RequestHeader,
    stream: Stream3,
    response: Option<ResponseHeader>,
    client: Option<SocketAddr>,
    server: Option<SocketAddr>,
    body_sent: usize,
    body_read: usize,
    request_body_done: bool,
    finished: bool,
    timeouts: crate::custom_session::Timeouts,
}

fn down(e: impl std::fmt::Display) -> Box<Error> {
    Error::explain(ErrorType::WriteError, format!("HTTP/3 stream: {e}")).into_down()
}

impl H3Session {
    /// Converts the h3 request (pseudo-headers in the URI) into Pingora's
    /// form: origin-form path and a Host header from `:authority`.
    pub fn new(
        request: http::Request<()>,
        stream: Stream3,
        client: std::net::SocketAddr,
        server: Option<std::net::SocketAddr>,
    ) -> Result<Self> {
        let (parts, ()) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = RequestHeader::build(
            parts.method.clone(),
            path.as_bytes(),
            Some(parts.headers.len() + 1),
        )?;
        if let Some(authority) = parts.uri.authority() {
            req.insert_header(http::header::HOST, authority.as_str())?;
        }
        for (name, value) in parts.headers.iter() {
            if name != http::header::HOST || parts.uri.authority().is_none() {
                req.append_header(name.clone(), value.clone())?;
            }
        }
        let no_body = matches!(parts.method, http::Method::GET | http::Method::HEAD)
            && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
        Ok(H3Session {
            req,
            stream,
            response: None,
            client: Some(SocketAddr::Inet(client)),
            server: server.map(SocketAddr::Inet),
            body_sent: 0,
            body_read: 0,
            request_body_done: no_body,
            finished: false,
            timeouts: Default::default(),
        })
    }

    fn to_h3_response(resp: &ResponseHeader) -> Result<http::Response<()>> {
        let mut out = http::Response::builder().status(resp.status);
        for (name, value) in resp.headers.iter() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                out = out.header(name, value);
            }
        }
        out.body(()).map_err(|e| {
            Error::explain(
                ErrorType::InternalError,
                format!("bad response header: {e}"),
            )
        })
    }
}

#[async_trait]
impl CustomSession for H3Session {
    crate::custom_session::common_session_methods!();

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        if self.request_body_done {
            return Ok(None);
        }
        match self.stream.recv_data().await {
            Ok(Some(mut buf)) => {
                let bytes = buf.copy_to_bytes(buf.remaining());
                self.body_read += bytes.len();
                Ok(Some(bytes))
            }
            Ok(None) => {
                self.request_body_done = true;
                Ok(None)
            }
            Err(e) => Err(down(e)),
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
        if self.response.is_some() && resp.status.is_informational() {
            return Ok(());
        }
        if resp.status.is_informational() {
            // 1xx are not relayed over this door.
            return Ok(());
        }
        self.stream
            .send_response(Self::to_h3_response(resp)?)
            .await
            .map_err(down)?;
        self.response = Some(resp.clone());
        if end {
            self.finish().await?;
        }
        Ok(())
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        if !data.is_empty() {
            self.body_sent += data.len();
            self.stream.send_data(data).await.map_err(down)?;
        }
        if end {
            self.finish().await?;
        }
        Ok(())
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        self.stream.send_trailers(trailers).await.map_err(down)?;
        self.finish().await
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
                        "upgraded body on an HTTP/3 session",
                    );
                }
                HttpTask::Trailer(Some(trailers)) => {
                    self.stream.send_trailers(*trailers).await.map_err(down)?;
                    true
                }
                HttpTask::Trailer(None) | HttpTask::Done => true,
                HttpTask::Failed(e) => return Err(e),
            } || end_stream;
        }
        if end_stream {
            self.finish().await?;
        }
        Ok(end_stream)
    }

    fn request_summary(&self) -> String {
        crate::custom_session::summary(&self.req, "(HTTP/3)")
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        if !self.finished {
            self.stream
                .stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            self.finished = true;
        }
    }

    fn is_body_done(&mut self) -> bool {
        self.request_body_done
    }

    async fn finish(&mut self) -> Result<()> {
        if !self.finished {
            self.finished = true;
            self.stream.finish().await.map_err(down)?;
        }
        Ok(())
    }

    fn is_body_empty(&mut self) -> bool {
        self.request_body_done && self.body_read == 0
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if no_body_expected || self.request_body_done {
            // Nothing to read; a client going away shows up as a failed write.
            std::future::pending::<()>().await;
        }
        self.read_body_bytes().await
    }

    async fn finish_custom(&mut self) -> Result<()> {
        self.finish().await
    }
}
