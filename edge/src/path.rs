//! The request path, normalised once before anything reads it (token and
//! signed-URL prefixes, the cache key, the origin request), so that a
//! prefix check here and the origin's own normalisation can never disagree
//! about where a path leads.
//!
//! RFC 3986: percent-encoded unreserved characters are decoded (§6.2.2.2)
//! and hex digits upper-cased (§6.2.2.1); dot segments are removed
//! (§5.2.4) — after decoding, so `%2e%2e` is `..`. Refused (400): encoded
//! `/` or `\` (an origin may decode them into separators), a raw `\`, NUL
//! in any form, malformed escapes, and dot segments that would climb above
//! the root (RFC 3986 would clamp them; a request that tries is not one a
//! player sends). Written by hand: the rules are these few lines, and the
//! crates that normalise URLs (`url`) follow WHATWG, which decodes and
//! re-encodes differently from what origins do.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with /")]
    NotAbsolute,
    #[error("the request path has a malformed %-escape")]
    BadEscape,
    #[error("the request path encodes a / or \\ (%2F, %5C); this edge refuses them")]
    EncodedSeparator,
    #[error("the request path holds a backslash")]
    Backslash,
    #[error("the request path holds a NUL")]
    Nul,
    #[error("the request path climbs above the root with ..")]
    AboveRoot,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes escaped unreserved characters and upper-cases other escapes.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (h, l) = match (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let v = h * 16 + l;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::Nul),
                    v if unreserved(v) => out.push(v as char),
                    v => out.push_str(&format!("%{v:02X}")),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            _ => {
                // Multi-byte UTF-8 is copied whole (the path is a &str).
                let ch = path[i..].chars().next().expect("in bounds");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok(out)
}

/// Removes `.` and `..` segments; `..` past the root is an error.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut joined = String::with_capacity(path.len());
    for s in &out {
        joined.push('/');
        joined.push_str(s);
    }
    if trailing_slash || joined.is_empty() {
        joined.push('/');
    }
    Ok(joined)
}

/// The normalised path; borrowed when it is already normal (the usual
/// case: no escapes, no dot segments).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let plain = !path.bytes().any(|b| matches!(b, b'%' | b'\\' | 0))
        && !path.split('/').any(|s| s == "." || s == "..");
    if plain {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn ordinary_paths_pass_unchanged_and_borrowed() {
        for p in [
            "/",
            "/v/abc/720p/seg_00001.m4s",
            "/t/v4.public.AbC-_x/v/a/master.m3u8",
            "/a//b/",
            "/caf\u{e9}",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn every_way_out_of_a_prefix_is_closed() {
        // What an origin that normalises would serve for each: B's secret.
        assert_eq!(n("/v/A/../B/secret"), Ok("/v/B/secret".into()));
        assert_eq!(n("/v/A/%2e%2e/B/secret"), Ok("/v/B/secret".into()));
        assert_eq!(n("/v/A/.%2E/B/secret"), Ok("/v/B/secret".into()));
        assert_eq!(n("/v/A/%2E./B/secret"), Ok("/v/B/secret".into()));
        assert_eq!(n("/v/A/..%2fB/secret"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/v/A/..%2FB/secret"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/v/A/..%5cB/secret"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/v/A/..\\B/secret"), Err(PathError::Backslash));
        assert_eq!(n("/v/A/%00"), Err(PathError::Nul));
        assert_eq!(n("/../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(n("/v/%2e%2e/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(n("/v/A/%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/v/A/%4"), Err(PathError::BadEscape));
        assert_eq!(n("v/A"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn rfc_3986_normal_forms() {
        // §6.2.2.2 unreserved decoded, §6.2.2.1 other escapes upper-cased.
        assert_eq!(n("/%7Euser/%41b%2d"), Ok("/~user/Ab-".into()));
        assert_eq!(n("/a%3fb/%e2%82%ac"), Ok("/a%3Fb/%E2%82%AC".into()));
        // §5.2.4's examples, from the root.
        assert_eq!(n("/a/b/c/./../../g"), Ok("/a/g".into()));
        assert_eq!(n("/mid/content=5/../6"), Ok("/mid/6".into()));
        assert_eq!(n("/a/b/."), Ok("/a/b/".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/a/.."), Ok("/".into()));
        assert_eq!(n("/."), Ok("/".into()));
        assert_eq!(n("/a/./b"), Ok("/a/b".into()));
    }
}
