//! The WebRTC door's wire format, sans-IO: HTTP requests and responses as
//! frames on one data channel (docs/webrtc.md), and the signalling bodies a
//! node and its HUB exchange in signed envelopes.
//!
//! A frame is one data-channel message: a kind byte, the request id (u32,
//! big-endian, chosen by the client, unique among its requests in flight)
//! and a payload. Heads are JSON; bodies are raw bytes in frames of at most
//! [`MAX_CHUNK`], so several responses interleave on the channel and none
//! holds it for a whole segment.

use serde::{Deserialize, Serialize};

/// Envelope domain of a node's long-poll for offers.
pub const POLL: &str = "meshcast-rtc-poll-v1";
/// Envelope domain of a node's answer to one offer.
pub const ANSWER: &str = "meshcast-rtc-answer-v1";

/// The data channel's label; a node serves no other channel.
pub const LABEL: &str = "meshcast";
/// Body bytes per frame: small enough to interleave responses and to fit
/// every browser's data-channel message limit (Chromium: 256 KiB).
pub const MAX_CHUNK: usize = 16 * 1024;
/// Largest head (request or response JSON) either side accepts.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest frame either side accepts: a chunk or a head, plus the prefix.
pub const MAX_FRAME: usize = 5 + if MAX_CHUNK > MAX_HEAD {
    MAX_CHUNK
} else {
    MAX_HEAD
};

/// One offer the HUB relays to a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Offer {
    /// The HUB's id for this signalling exchange.
    pub id: String,
    /// The client's SDP offer (`{"type": "offer", "sdp": …}`).
    pub offer: serde_json::Value,
}

/// What the HUB answers a poll with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Offers {
    pub offers: Vec<Offer>,
}

/// A node's reply to one offer: its SDP answer, or why it has none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub id: String,
    #[serde(default)]
    pub answer: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<String>,
}

/// A request's head: method, origin-form path (query included), headers.
/// `body` says request body frames follow, ended by `End`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: bool,
}

/// A response's head; body frames and `End` follow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResponseHead {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Client → node: a new request.
    Request(RequestHead),
    /// Node → client: the response's head.
    Response(ResponseHead),
    /// Either way: body bytes of the request or response with this id.
    Body(bytes::Bytes),
    /// Either way: the body is complete.
    End,
    /// Client → node: stop sending this response.
    Cancel,
    /// Node → client: the request failed (before or during its response);
    /// the client should fetch it another way.
    Error(String),
}

const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const BODY: u8 = 3;
const END: u8 = 4;
const CANCEL: u8 = 5;
const ERROR: u8 = 6;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than its 5-byte prefix")]
    Short(usize),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame {kind} carries a {len}-byte payload where none is allowed")]
    Payload { kind: u8, len: usize },
    #[error("bad {what} head: {why}")]
    Head { what: &'static str, why: String },
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Request(_) => REQUEST,
            Frame::Response(_) => RESPONSE,
            Frame::Body(_) => BODY,
            Frame::End => END,
            Frame::Cancel => CANCEL,
            Frame::Error(_) => ERROR,
        }
    }

    /// The message for the data channel. Body frames longer than
    /// `MAX_CHUNK` are the caller's bug (split with [`chunks`]).
    pub fn encode(&self, id: u32) -> Vec<u8> {
        let payload: Vec<u8> = match self {
            Frame::Request(h) => serde_json::to_vec(h).expect("a head serializes"),
            Frame::Response(h) => serde_json::to_vec(h).expect("a head serializes"),
            Frame::Body(b) => {
                assert!(b.len() <= MAX_CHUNK, "body frame over MAX_CHUNK");
                b.to_vec()
            }
            Frame::End | Frame::Cancel => Vec::new(),
            Frame::Error(why) => why.as_bytes().to_vec(),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(self.kind());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Reads one data-channel message.
    pub fn decode(msg: &[u8]) -> Result<(u32, Frame), FrameError> {
        if msg.len() < 5 {
            return Err(FrameError::Short(msg.len()));
        }
        if msg.len() > MAX_FRAME {
            return Err(FrameError::TooLong(msg.len()));
        }
        let id = u32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]);
        let payload = &msg[5..];
        let head = |what: &'static str| {
            move |e: serde_json::Error| FrameError::Head {
                what,
                why: e.to_string(),
            }
        };
        let empty = |frame: Frame| {
            if payload.is_empty() {
                Ok(frame)
            } else {
                Err(FrameError::Payload {
                    kind: msg[0],
                    len: payload.len(),
                })
            }
        };
        let frame = match msg[0] {
            REQUEST => Frame::Request(serde_json::from_slice(payload).map_err(head("request"))?),
            RESPONSE => Frame::Response(serde_json::from_slice(payload).map_err(head("response"))?),
            BODY => Frame::Body(bytes::Bytes::copy_from_slice(payload)),
            END => empty(Frame::End)?,
            CANCEL => empty(Frame::Cancel)?,
            ERROR => Frame::Error(String::from_utf8_lossy(payload).into_owned()),
            k => return Err(FrameError::Kind(k)),
        };
        Ok((id, frame))
    }
}

/// `data` as body frames of at most `MAX_CHUNK` bytes (none when empty).
pub fn chunks(data: &bytes::Bytes) -> impl Iterator<Item = Frame> + '_ {
    (0..data.len())
        .step_by(MAX_CHUNK)
        .map(move |at| Frame::Body(data.slice(at..(at + MAX_CHUNK).min(data.len()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn round_trip(f: Frame, id: u32) {
        assert_eq!(Frame::decode(&f.encode(id)), Ok((id, f)));
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(
            Frame::Request(RequestHead {
                method: "GET".into(),
                path: "/t/x/v/abc/720p/seg_00001.m4s".into(),
                headers: vec![("range".into(), "bytes=0-99".into())],
                body: false,
            }),
            7,
        );
        round_trip(
            Frame::Response(ResponseHead {
                status: 206,
                headers: vec![("meshcast-receipt".into(), "r".into())],
            }),
            u32::MAX,
        );
        round_trip(Frame::Body(Bytes::from_static(b"\0\x01bytes")), 0);
        round_trip(Frame::End, 3);
        round_trip(Frame::Cancel, 3);
        round_trip(Frame::Error("origin down".into()), 9);
    }

    #[test]
    fn bad_messages_are_refused_with_the_reason() {
        assert_eq!(Frame::decode(b"\x01\0\0"), Err(FrameError::Short(3)));
        assert_eq!(Frame::decode(b"\x09\0\0\0\x01"), Err(FrameError::Kind(9)));
        assert!(matches!(
            Frame::decode(b"\x04\0\0\0\x01junk"),
            Err(FrameError::Payload { kind: 4, len: 4 })
        ));
        assert!(matches!(
            Frame::decode(b"\x01\0\0\0\x01{\"method\":1}"),
            Err(FrameError::Head {
                what: "request",
                ..
            })
        ));
        // An unknown field is an error, not silently dropped.
        assert!(matches!(
            Frame::decode(b"\x02\0\0\0\x01{\"status\":200,\"x\":1}"),
            Err(FrameError::Head { .. })
        ));
        let long = vec![BODY; MAX_FRAME + 1];
        assert_eq!(
            Frame::decode(&long),
            Err(FrameError::TooLong(MAX_FRAME + 1))
        );
    }

    #[test]
    fn a_body_splits_into_whole_chunks_that_join_back() {
        let data = Bytes::from(
            (0..(2 * MAX_CHUNK + 5))
                .map(|i| i as u8)
                .collect::<Vec<_>>(),
        );
        let frames: Vec<Frame> = chunks(&data).collect();
        assert_eq!(frames.len(), 3);
        let mut joined = Vec::new();
        for f in frames {
            let Frame::Body(b) = f else {
                panic!("not a body")
            };
            assert!(b.len() <= MAX_CHUNK);
            joined.extend_from_slice(&b);
        }
        assert_eq!(joined, data);
        assert_eq!(chunks(&Bytes::new()).count(), 0);
    }
}
