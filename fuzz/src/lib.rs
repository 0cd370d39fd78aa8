//! The harness shared by meshcast's fuzz targets: the edits a target
//! applies to a valid encoding it built (so the fuzzer explores the
//! neighbourhood of real messages, not only random bytes) and nothing
//! else. The parsers themselves live in their crates; this crate must not
//! re-implement any of them.

use arbitrary::Unstructured;

/// Applies up to eight edits that the fuzzer's input chooses to `bytes`:
/// flip a bit, set a byte, truncate, insert bytes, duplicate a span, swap
/// two bytes. With no input left it returns `bytes` unchanged, so every
/// target also checks that its valid encoding is accepted.
pub fn mutate(mut bytes: Vec<u8>, u: &mut Unstructured) -> Vec<u8> {
    let edits = u.int_in_range(0..=8u8).unwrap_or(0);
    for _ in 0..edits {
        let Ok(op) = u.int_in_range(0..=5u8) else {
            break;
        };
        let len = bytes.len();
        let at = if len == 0 {
            0
        } else {
            u.choose_index(len).unwrap_or(0)
        };
        match op {
            0 if len > 0 => bytes[at] ^= 1 << u.int_in_range(0..=7u8).unwrap_or(0),
            1 if len > 0 => bytes[at] = u.arbitrary().unwrap_or(0),
            2 => bytes.truncate(at),
            3 => {
                let n = u.int_in_range(1..=16usize).unwrap_or(1);
                let ins: Vec<u8> = (0..n).map(|_| u.arbitrary().unwrap_or(0)).collect();
                bytes.splice(at..at, ins);
            }
            4 if len > 0 => {
                let end = (at + u.int_in_range(1..=64usize).unwrap_or(1)).min(len);
                let span = bytes[at..end].to_vec();
                bytes.splice(at..at, span);
            }
            5 if len > 1 => {
                let other = u.choose_index(len).unwrap_or(0);
                bytes.swap(at, other);
            }
            _ => {}
        }
    }
    bytes
}
