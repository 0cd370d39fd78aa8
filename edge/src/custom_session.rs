//! What the doors that hand the pipeline Pingora custom sessions (QUIC,
//! WebRTC) answer alike: the request and response headers they hold,
//! timeouts kept for Pingora, byte counts, and no digest, retry buffer or
//! custom messages. Each door's session keeps these fields under the same
//! names and says `common_session_methods!()` in its `CustomSession` impl.

use bytes::Bytes;
use pingora_http::RequestHeader;
use std::time::Duration;

/// Timeouts Pingora sets on a session; the doors keep them for it.
#[derive(Default)]
pub struct Timeouts {
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    pub drain: Option<Duration>,
}

/// `METHOD path, Host: host (door)`, as Pingora's own sessions summarize.
pub fn summary(req: &RequestHeader, door: &str) -> String {
    format!(
        "{} {}, Host: {} {door}",
        req.method,
        req.uri.path_and_query().map_or("/", |p| p.as_str()),
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
    )
}

/// The request as an HTTP/1.1 head, for Pingora's logs and cache keys.
pub fn pseudo_raw_h1(req: &RequestHeader) -> Bytes {
    let mut text = format!("{} {} HTTP/1.1\r\n", req.method, req.uri);
    for (k, v) in req.headers.iter() {
        text.push_str(&format!(
            "{}: {}\r\n",
            k,
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    text.push_str("\r\n");
    Bytes::from(text)
}

/// The `CustomSession` methods both doors answer the same way, from the
/// fields `req`, `response`, `timeouts`, `client`, `server`, `body_sent`
/// and `body_read`.
macro_rules! common_session_methods {
    () => {
        fn req_header(&self) -> &pingora_http::RequestHeader {
            &self.req
        }

        fn req_header_mut(&mut self) -> &mut pingora_http::RequestHeader {
            &mut self.req
        }

        fn set_read_timeout(&mut self, timeout: Option<std::time::Duration>) {
            self.timeouts.read = timeout;
        }

        fn get_read_timeout(&self) -> Option<std::time::Duration> {
            self.timeouts.read
        }

        fn set_write_timeout(&mut self, timeout: Option<std::time::Duration>) {
            self.timeouts.write = timeout;
        }

        fn get_write_timeout(&self) -> Option<std::time::Duration> {
            self.timeouts.write
        }

        fn set_total_drain_timeout(&mut self, timeout: Option<std::time::Duration>) {
            self.timeouts.drain = timeout;
        }

        fn get_total_drain_timeout(&self) -> Option<std::time::Duration> {
            self.timeouts.drain
        }

        fn response_written(&self) -> Option<&pingora_http::ResponseHeader> {
            self.response.as_ref()
        }

        fn body_bytes_sent(&self) -> usize {
            self.body_sent
        }

        fn body_bytes_read(&self) -> usize {
            self.body_read
        }

        fn digest(&self) -> Option<&pingora_core::protocols::Digest> {
            None
        }

        fn digest_mut(&mut self) -> Option<&mut pingora_core::protocols::Digest> {
            None
        }

        fn client_addr(&self) -> Option<&pingora_core::protocols::l4::socket::SocketAddr> {
            self.client.as_ref()
        }

        fn server_addr(&self) -> Option<&pingora_core::protocols::l4::socket::SocketAddr> {
            self.server.as_ref()
        }

        fn pseudo_raw_h1_request_header(&self) -> bytes::Bytes {
            crate::custom_session::pseudo_raw_h1(&self.req)
        }

        fn enable_retry_buffering(&mut self) {}

        fn retry_buffer_truncated(&self) -> bool {
            false
        }

        fn get_retry_buffer(&self) -> Option<bytes::Bytes> {
            None
        }

        fn take_custom_message_reader(
            &mut self,
        ) -> Option<
            Box<
                dyn futures_util::Stream<Item = pingora_error::Result<bytes::Bytes>>
                    + Unpin
                    + Send
                    + Sync
                    + 'static,
            >,
        > {
            None
        }

        fn restore_custom_message_reader(
            &mut self,
            _reader: Box<
                dyn futures_util::Stream<Item = pingora_error::Result<bytes::Bytes>>
                    + Unpin
                    + Send
                    + Sync
                    + 'static,
            >,
        ) -> pingora_error::Result<()> {
            Ok(())
        }

        fn take_custom_message_writer(
            &mut self,
        ) -> Option<Box<dyn pingora_core::protocols::http::custom::CustomMessageWrite>> {
            None
        }

        fn restore_custom_message_writer(
            &mut self,
            _writer: Box<dyn pingora_core::protocols::http::custom::CustomMessageWrite>,
        ) -> pingora_error::Result<()> {
            Ok(())
        }
    };
}
pub(crate) use common_session_methods;
