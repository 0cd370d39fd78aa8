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

    fn payload_hint(&self) -> usize {
        match self {
            Frame::Body(b) => b.len(),
            Frame::Error(why) => why.len(),
            Frame::End | Frame::Cancel => 0,
            Frame::Request(_) | Frame::Response(_) => 512,
        }
    }

    /// The message for the data channel. Body frames longer than
    /// `MAX_CHUNK` are the caller's bug (split with [`chunks`]).
    pub fn encode(&self, id: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + MAX_CHUNK.min(self.payload_hint()));
        out.push(self.kind());
        out.extend_from_slice(&id.to_be_bytes());
        // The payload goes straight after the prefix: one copy of a body.
        match self {
            Frame::Request(h) => serde_json::to_writer(&mut out, h).expect("a head serializes"),
            Frame::Response(h) => serde_json::to_writer(&mut out, h).expect("a head serializes"),
            Frame::Body(b) => {
                assert!(b.len() <= MAX_CHUNK, "body frame over MAX_CHUNK");
                out.extend_from_slice(b);
            }
            Frame::End | Frame::Cancel => {}
            Frame::Error(why) => out.extend_from_slice(why.as_bytes()),
        }
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

/// STUN (RFC 8489) binding, the one exchange a node needs to learn its
/// public address: written here because str0m's STUN parser is ICE's and
/// refuses messages without MESSAGE-INTEGRITY, which plain STUN servers
/// neither send nor expect.
pub mod stun {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    pub const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    const MAPPED_ADDRESS: u16 = 0x0001;

    /// A binding request with transaction id `trans` (no attributes).
    pub fn binding_request(trans: [u8; 12]) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[1] = 0x01;
        out[4..8].copy_from_slice(&COOKIE);
        out[8..].copy_from_slice(&trans);
        out
    }

    /// The mapped address in a binding success for `trans`, if `msg` is one.
    pub fn mapped_address(msg: &[u8], trans: [u8; 12]) -> Option<SocketAddr> {
        if msg.len() < 20 || msg[..2] != [0x01, 0x01] || msg[4..8] != COOKIE || msg[8..20] != trans
        {
            return None;
        }
        let len = u16::from_be_bytes([msg[2], msg[3]]) as usize;
        let attrs = msg.get(20..20 + len)?;
        let mut at = 0;
        let mut plain = None;
        while at + 4 <= attrs.len() {
            let kind = u16::from_be_bytes([attrs[at], attrs[at + 1]]);
            let alen = u16::from_be_bytes([attrs[at + 2], attrs[at + 3]]) as usize;
            let value = attrs.get(at + 4..at + 4 + alen)?;
            match kind {
                XOR_MAPPED_ADDRESS => return address(value, &msg[4..20]),
                MAPPED_ADDRESS => plain = address(value, &[0; 16]),
                _ => {}
            }
            at += 4 + alen.div_ceil(4) * 4;
        }
        plain
    }

    /// An address attribute's value, XORed with `mask` (cookie + id).
    fn address(v: &[u8], mask: &[u8]) -> Option<SocketAddr> {
        let port = u16::from_be_bytes([v.get(2)? ^ mask[0], v.get(3)? ^ mask[1]]);
        let ip = match v.get(1)? {
            1 if v.len() >= 8 => IpAddr::V4(Ipv4Addr::from(std::array::from_fn::<u8, 4, _>(|i| {
                v[4 + i] ^ mask[i]
            }))),
            2 if v.len() >= 20 => {
                IpAddr::V6(Ipv6Addr::from(std::array::from_fn::<u8, 16, _>(|i| {
                    v[4 + i] ^ mask[i]
                })))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    /// A binding success mapping `request`'s sender to `mapped` (IPv4), as
    /// a STUN server answers; for tests that play one.
    pub fn binding_success(request: &[u8], mapped: SocketAddr) -> Option<Vec<u8>> {
        let SocketAddr::V4(v4) = mapped else {
            return None;
        };
        if request.len() < 20 || request[..2] != [0, 1] || request[4..8] != COOKIE {
            return None;
        }
        let mut out = vec![0x01, 0x01, 0, 12];
        out.extend_from_slice(&request[4..20]);
        out.extend_from_slice(&[0x00, 0x20, 0, 8, 0, 1]);
        out.extend_from_slice(&(v4.port() ^ 0x2112).to_be_bytes());
        out.extend(v4.ip().octets().iter().zip(COOKIE).map(|(b, c)| b ^ c));
        Some(out)
    }
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
    fn a_stun_binding_round_trips_and_strangers_are_ignored() {
        let trans = [7u8; 12];
        let req = stun::binding_request(trans);
        let public: std::net::SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let reply = stun::binding_success(&req, public).unwrap();
        assert_eq!(stun::mapped_address(&reply, trans), Some(public));
        // Another transaction's reply, a request, junk: no address.
        assert_eq!(stun::mapped_address(&reply, [8u8; 12]), None);
        assert_eq!(stun::mapped_address(&req, trans), None);
        assert_eq!(stun::mapped_address(&reply[..22], trans), None);
        assert_eq!(stun::mapped_address(b"junk", trans), None);
        // RFC 5769 §2.2: a server's IPv4 response (XOR-MAPPED-ADDRESS
        // 192.0.2.1:32853), with other attributes before it.
        let vector = hex::decode(concat!(
            "0101003c2112a442b7e7a701bc34d686fa87dfae",
            "8022000b7465737420766563746f7220",
            "002000080001a147e112a643",
            "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7",
            "80280004c07d4c96"
        ))
        .unwrap();
        let trans: [u8; 12] = vector[8..20].try_into().unwrap();
        assert_eq!(
            stun::mapped_address(&vector, trans),
            Some("192.0.2.1:32853".parse().unwrap())
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
