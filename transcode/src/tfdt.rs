//! Moves fMP4 segments along the timeline: adds an offset to every track
//! fragment's decode time (`moof/traf/tfdt`), in place.
//!
//! Written by hand: the `mp4` crate reads fragments but does not write them
//! back, and the edit is eight bytes per fragment at a known place.

use crate::TranscodeError;
use std::path::Path;

fn bad(what: &str, why: &str) -> TranscodeError {
    TranscodeError::Ffmpeg(format!("{what}: {why}"))
}

/// The boxes directly inside `data[from..to]`: (type, start, end), where
/// `start` is the box's first byte and the payload begins 8 bytes (16 with
/// a large size) after it.
fn boxes(
    data: &[u8],
    from: usize,
    to: usize,
) -> Result<Vec<([u8; 4], usize, usize, usize)>, &'static str> {
    let mut out = Vec::new();
    let mut at = from;
    while at + 8 <= to {
        let size32 = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as u64;
        let kind: [u8; 4] = data[at + 4..at + 8].try_into().expect("4 bytes");
        let (size, header) = match size32 {
            0 => ((to - at) as u64, 8),
            1 => {
                let b = data.get(at + 8..at + 16).ok_or("truncated box size")?;
                (u64::from_be_bytes(b.try_into().expect("8 bytes")), 16)
            }
            n => (n, 8),
        };
        let end = at.checked_add(size as usize).ok_or("box too large")?;
        if size < header as u64 || end > to {
            return Err("a box runs past its parent");
        }
        out.push((kind, at, at + header, end));
        at = end;
    }
    Ok(out)
}

/// Adds `delta` ticks to every `tfdt` in `segment`.
pub fn shift_segment(segment: &mut [u8], delta: u64) -> Result<usize, &'static str> {
    let mut shifted = 0;
    for (kind, _, body, end) in boxes(segment, 0, segment.len())? {
        if &kind != b"moof" {
            continue;
        }
        for (kind, _, body, end) in boxes(segment, body, end)? {
            if &kind != b"traf" {
                continue;
            }
            for (kind, _, body, end) in boxes(segment, body, end)? {
                if &kind != b"tfdt" {
                    continue;
                }
                let version = *segment.get(body).ok_or("empty tfdt")?;
                let field = body + 4;
                if version == 1 && field + 8 <= end {
                    let t = u64::from_be_bytes(segment[field..field + 8].try_into().expect("8"));
                    let t = t.checked_add(delta).ok_or("decode time overflows")?;
                    segment[field..field + 8].copy_from_slice(&t.to_be_bytes());
                } else if version == 0 && field + 4 <= end {
                    let t = u32::from_be_bytes(segment[field..field + 4].try_into().expect("4"));
                    let t = u32::try_from(t as u64 + delta)
                        .map_err(|_| "decode time does not fit a version-0 tfdt")?;
                    segment[field..field + 4].copy_from_slice(&t.to_be_bytes());
                } else {
                    return Err("malformed tfdt");
                }
                shifted += 1;
            }
        }
    }
    if shifted == 0 {
        return Err("no track fragment decode time (tfdt)");
    }
    Ok(shifted)
}

/// The media timescale of a rendition's init segment.
pub fn timescale(init: &[u8]) -> Result<u32, String> {
    let header = mp4::Mp4Reader::read_header(std::io::Cursor::new(init), init.len() as u64)
        .map_err(|e| e.to_string())?;
    header
        .moov
        .traks
        .first()
        .map(|t| t.mdia.mdhd.timescale)
        .filter(|t| *t > 0)
        .ok_or_else(|| "no track with a timescale".to_string())
}

/// Moves every segment of the rendition in `dir` by `seconds`.
pub fn shift_rendition(dir: &Path, seconds: f64) -> Result<(), TranscodeError> {
    if seconds == 0.0 {
        return Ok(());
    }
    let init = std::fs::read(dir.join("init.mp4"))?;
    let scale = timescale(&init).map_err(|e| bad("init.mp4", &e))?;
    let delta = (seconds * scale as f64).round() as u64;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !(name.starts_with("seg_") && name.ends_with(".m4s")) {
            continue;
        }
        let mut data = std::fs::read(&path)?;
        shift_segment(&mut data, delta).map_err(|e| bad(&name, e))?;
        std::fs::write(&path, &data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    fn segment(version: u8, time: u64) -> Vec<u8> {
        let mut tfdt = vec![version, 0, 0, 0];
        if version == 1 {
            tfdt.extend_from_slice(&time.to_be_bytes());
        } else {
            tfdt.extend_from_slice(&(time as u32).to_be_bytes());
        }
        let traf = boxed(
            b"traf",
            &[boxed(b"tfhd", &[0; 8]), boxed(b"tfdt", &tfdt)].concat(),
        );
        [
            boxed(b"styp", b"msdh"),
            boxed(b"moof", &traf),
            boxed(b"mdat", &[7; 5]),
        ]
        .concat()
    }

    #[test]
    fn decode_times_move_and_nothing_else_does() {
        let mut s = segment(1, 100);
        let before = s.clone();
        assert_eq!(shift_segment(&mut s, 102_400), Ok(1));
        assert_eq!(s, segment(1, 102_500));
        assert_eq!(s.len(), before.len());
        let mut s = segment(0, 5);
        shift_segment(&mut s, 10).unwrap();
        assert_eq!(s, segment(0, 15));
    }

    #[test]
    fn malformed_segments_are_refused_not_patched() {
        let mut none = boxed(b"mdat", &[0; 4]);
        assert!(shift_segment(&mut none, 1).is_err());
        let mut s = segment(1, 1);
        let n = s.len();
        s[n - 13..n - 9].copy_from_slice(&1000u32.to_be_bytes()); // mdat runs past the end
        assert!(shift_segment(&mut s, 1).is_err());
        let mut s = segment(0, u32::MAX as u64);
        assert!(
            shift_segment(&mut s, 1).is_err(),
            "a v0 tfdt cannot overflow silently"
        );
    }
}
