//! Where a request head ends, decided from the bytes read so far: the
//! sans-IO half of the TCP door's head reader. It says only whether the
//! head is whole (an HTTP/1 head, or the HTTP/2 prior-knowledge preface),
//! still coming, malformed at the preface, or too large; parsing the head
//! stays Pingora's.

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The preface's request line: a head starting with it is h2 or an error.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// More bytes are needed.
    Partial,
    /// A whole HTTP/1 head: the request line and fields up to the empty
    /// line (what follows, a body or a pipelined request, is Pingora's).
    Http1,
    /// The HTTP/2 connection preface (h2c with prior knowledge).
    Http2,
    /// Starts as the HTTP/2 preface does but is not it (RFC 9113 §3.4:
    /// a connection error of type PROTOCOL_ERROR).
    BadPreface,
    /// No end of the head within the size limit (431).
    TooLarge,
}

/// Scans a growing buffer; each call looks only at bytes it has not seen,
/// so a head trickled in one byte at a time costs linear work.
#[derive(Debug)]
pub struct HeadScan {
    max: usize,
    h2c: bool,
    scanned: usize,
}

impl HeadScan {
    /// `max`: the largest head accepted; `h2c`: whether the HTTP/2 preface
    /// may open the connection (its first request, on a cleartext door).
    pub fn new(max: usize, h2c: bool) -> Self {
        HeadScan {
            max,
            h2c,
            scanned: 0,
        }
    }

    /// What `buf` (everything read so far, from the head's first byte)
    /// holds.
    pub fn scan(&mut self, buf: &[u8]) -> Head {
        debug_assert!(buf.len() >= self.scanned, "the buffer only grows");
        if self.h2c {
            if let Some(verdict) = preface(buf) {
                return verdict;
            }
        }
        // An end straddling the previous read: look three bytes back.
        let from = self.scanned.saturating_sub(3);
        self.scanned = buf.len();
        let window = &buf[from..];
        if find(window, b"\r\n\r\n") || find(window, b"\n\n") {
            return Head::Http1;
        }
        if buf.len() >= self.max {
            return Head::TooLarge;
        }
        Head::Partial
    }
}

/// The verdict on a buffer that is (or could still become) the HTTP/2
/// preface; `None` once it is plainly HTTP/1.
fn preface(buf: &[u8]) -> Option<Head> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return Some(if n == H2_PREFACE.len() {
            Head::Http2
        } else {
            Head::Partial
        });
    }
    let line = buf.len().min(H2_PREFACE_LINE.len());
    if line == H2_PREFACE_LINE.len() && buf[..line] == *H2_PREFACE_LINE {
        return Some(Head::BadPreface);
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(bytes: &[u8], piece: usize, max: usize, h2c: bool) -> Vec<Head> {
        let mut s = HeadScan::new(max, h2c);
        let mut out = Vec::new();
        let mut end = 0;
        while end < bytes.len() {
            end = (end + piece).min(bytes.len());
            out.push(s.scan(&bytes[..end]));
        }
        out
    }

    #[test]
    fn a_head_is_whole_at_its_empty_line_however_it_is_cut() {
        let req = b"GET /v/a/1.m4s HTTP/1.1\r\nHost: edge\r\n\r\n";
        for piece in 1..=req.len() {
            let verdicts = scan_in_pieces(req, piece, 1024, true);
            assert_eq!(verdicts.last(), Some(&Head::Http1), "pieces of {piece}");
            assert!(
                verdicts[..verdicts.len() - 1]
                    .iter()
                    .all(|v| *v == Head::Partial),
                "pieces of {piece}: {verdicts:?}"
            );
        }
        assert_eq!(
            HeadScan::new(64, false).scan(b"GET / HTTP/1.0\n\n"),
            Head::Http1
        );
        assert_eq!(
            HeadScan::new(64, true).scan(b"GARBAGE\r\n\r\n"),
            Head::Http1,
            "garbage is whole too: Pingora answers it 400"
        );
    }

    #[test]
    fn the_h2_preface_and_what_only_looks_like_it() {
        for piece in [1, 5, 24] {
            let v = scan_in_pieces(H2_PREFACE, piece, 1024, true);
            assert_eq!(v.last(), Some(&Head::Http2), "pieces of {piece}");
        }
        let mut bad = H2_PREFACE.to_vec();
        bad[20] = b'X';
        assert_eq!(HeadScan::new(1024, true).scan(&bad), Head::BadPreface);
        assert_eq!(
            HeadScan::new(1024, true).scan(b"PRI * HTTP/2.0\r\n\r\n\r\n"),
            Head::BadPreface
        );
        // Not on a door without h2c (TLS, or a later request).
        assert_eq!(HeadScan::new(1024, false).scan(H2_PREFACE), Head::Http1);
        // A method that merely starts like it is HTTP/1.
        assert_eq!(
            HeadScan::new(1024, true).scan(b"PRIX / HTTP/1.1\r\n\r\n"),
            Head::Http1
        );
    }

    #[test]
    fn no_end_within_the_limit_is_too_large() {
        let mut s = HeadScan::new(16, true);
        assert_eq!(s.scan(b"GET /aaaa"), Head::Partial);
        assert_eq!(s.scan(b"GET /aaaaaaaaaaaaaaa"), Head::TooLarge);
    }
}
