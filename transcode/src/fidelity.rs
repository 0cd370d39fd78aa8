//! Checks one encoded segment against the source over the same time range
//! (the sampled half of proof of transcoding; the structural half —
//! keyframes, durations, continuity, init segments — is `inspect_rendition`
//! on every segment).
//!
//! One ffmpeg run decodes the segments and the source range once, scales
//! the source to each rung, and measures two SSIMs against it: the segment's,
//! and that of the source scaled down to two thirds of the rung's size and
//! back up (no encode). An honest encode keeps detail a smaller picture
//! cannot, so it beats that reference; a rendition at half the size (the
//! next rung of a usual ladder) scaled up to pass as this rung cannot
//! (encoding only loses more). Other
//! video, junk or a wrong range scores far below both. Where the source
//! has so little detail that even the reference is near perfect, an SSIM
//! of at least `LOSSLESS` passes: no viewer could tell.
//!
//! The bound this leaves: a worker may encode a rung at between two thirds
//! and full size and scale it up, saving at most 5/9 of that rung's
//! encode, and only where the result is still closer to the source than a
//! two-thirds picture. Measured on the test source (854x480, ultrafast):
//! honest segments 0.985–0.993, the half-size reference 0.957–0.960 and a
//! half-size encode scaled up 0.958 — a margin of 0.0004 over a
//! half-size reference, too thin to rest a slash on. Against the
//! two-thirds reference (0.968–0.970) honest segments lead by ≥ 0.017 and
//! the half-size substitute trails by 0.011.
//!
//! Where the source holds detail no encode at the rung's bitrate keeps
//! (temporal noise, film grain), even an honest segment falls below the
//! reference; the HUB then measures its own encode of the segment and
//! calls the worker's false only where its own encode beats the reference
//! and the worker's is clearly worse (`hub/src/work/check.rs`).
//!
//! The SSIMs may cover only some frames of a segment (`Part::frames`,
//! which the HUB draws after the commitment): a segment's output is then
//! decoded only up to its last such frame and only those frames are
//! scaled and measured, which is what makes checking cheap next to
//! encoding. Frame by frame the margins hold: on a 480p rung every
//! honest frame led the reference by 0.004–0.006 and every frame of a
//! half-size encode scaled up trailed it by 0.007–0.010.

use crate::ladder::Rung;
use std::path::Path;

/// An SSIM this high passes whatever the reference says.
pub const LOSSLESS: f64 = 0.99;

/// What the check measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fidelity {
    /// SSIM (all planes) of the segment against the source at the rung.
    pub ssim: f64,
    /// SSIM of the source scaled down to `reference_size` and back up.
    pub reference: f64,
}

impl Fidelity {
    pub fn passes(&self) -> bool {
        self.ssim >= LOSSLESS || self.ssim > self.reference
    }
}

/// Where a segment sits in the source, and what it must look like.
#[derive(Debug, Clone)]
pub struct SegmentRange<'a> {
    pub rung: &'a Rung,
    /// Seconds into the source where the segment's first frame is.
    pub start: f64,
    pub duration: f64,
}

/// The size the reference is scaled through: two thirds of the rung's
/// (even sides).
pub fn reference_size(rung: &Rung) -> (u32, u32) {
    let two_thirds = |side: u32| (side * 2 / 3 / 2 * 2).max(2);
    (two_thirds(rung.width), two_thirds(rung.height))
}

/// The SSIM filters' "All:" values in the order the graph names them
/// (`Parsed_ssim_N`); ffmpeg prints them as the filters close, in no
/// fixed order.
fn parse_ssim(stderr: &str) -> Vec<f64> {
    let mut found: Vec<(u32, f64)> = stderr
        .lines()
        .filter_map(|l| {
            let n = l
                .split("Parsed_ssim_")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()?;
            let v = l
                .split("All:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((n, v))
        })
        .collect();
    found.sort_by_key(|(n, _)| *n);
    found.into_iter().map(|(_, v)| v).collect()
}

/// Why a segment could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The segment itself does not decode: the worker's fault.
    #[error("the segment does not decode: {0}")]
    Undecodable(String),
    /// The check could not run (the source, the verifier's disk or
    /// ffmpeg): nobody's fault that a slash could rest on.
    #[error("the check could not run: {0}")]
    Verifier(String),
}

fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .to_string()
}

/// Whether `file` decodes to the end, on its own.
async fn decodes(file: &Path) -> Result<(), CheckError> {
    let out = crate::ffmpeg::command()
        .args([
            "-hide_banner",
            "-nostdin",
            "-nostats",
            "-v",
            "error",
            "-xerror",
            "-i",
        ])
        .arg(file)
        .args(["-map", "0:v:0", "-f", "null", "-"])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| CheckError::Verifier(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CheckError::Undecodable(last_line(&out.stderr)))
    }
}

/// Names scratch files of checks running at once apart.
static CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One committed segment to measure: its rung, its bytes, where it sits
/// in the run and which of its frames to compare.
pub struct Part<'a> {
    pub rung: &'a Rung,
    pub init: &'a [u8],
    pub segment: &'a [u8],
    /// Frames of the rung between the run's start and the segment's first.
    pub offset: u32,
    /// The segment's frames to compare (indices from 0, ascending);
    /// empty: every frame.
    pub frames: &'a [u32],
}

/// Decodes `init` + `segment` (written to `scratch`) and compares it with
/// `source` over `range`.
pub async fn check_segment(
    init: &[u8],
    segment: &[u8],
    source: &Path,
    range: &SegmentRange<'_>,
    scratch: &Path,
) -> Result<Fidelity, CheckError> {
    let part = Part {
        rung: range.rung,
        init,
        segment,
        offset: 0,
        frames: &[],
    };
    let (start, duration) = (range.start, range.duration);
    let mut all = check_range(&[part], source, (start, duration), scratch)
        .await
        .map_err(|(_, e)| e)?;
    Ok(all.remove(0))
}

/// Measures segments of any rungs within `(start, duration)` of the source
/// in one ffmpeg run (the source is decoded once for all of them; each
/// part sits `offset` frames of its rung after `start`). On failure, says
/// which segment does not decode (by its position in `parts`), or that the
/// check could not run.
pub async fn check_range(
    parts: &[Part<'_>],
    source: &Path,
    (start, duration): (f64, f64),
    scratch: &Path,
) -> Result<Vec<Fidelity>, (Option<usize>, CheckError)> {
    let n = CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut files = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let f = scratch.join(format!("check-{}-{n}-{i}.mp4", std::process::id()));
        std::fs::write(&f, [p.init, p.segment].concat())
            .map_err(|e| (None, CheckError::Verifier(e.to_string())))?;
        files.push(f);
    }
    let result = compare(parts, &files, source, (start, duration)).await;
    let result = match result {
        Ok(v) => Ok(v),
        // Whose fault: a segment that does not decode on its own.
        Err(e) => Err(blame(&files, e).await),
    };
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    result
}

async fn blame(files: &[std::path::PathBuf], e: CheckError) -> (Option<usize>, CheckError) {
    for (i, f) in files.iter().enumerate() {
        if let Err(undecodable) = decodes(f).await {
            return (Some(i), undecodable);
        }
    }
    (None, e)
}

/// The filter graph: the source (last input) split once per part; each
/// branch at the part's rung, from its first frame, split three ways
/// (against the segment, against its two-thirds picture, and that
/// picture); two SSIMs per part, each a mapped output.
fn graph(parts: &[Part<'_>]) -> String {
    let src = parts.len();
    let mut g = format!("[{src}:v]setpts=PTS-STARTPTS,split={}", parts.len());
    for i in 0..parts.len() {
        g.push_str(&format!("[src{i}]"));
    }
    for (i, p) in parts.iter().enumerate() {
        let r = p.rung;
        let (w, h) = (r.width, r.height);
        let (lw, lh) = reference_size(r);
        let (pick, stop) = picks(p.frames);
        g.push_str(&format!(
            ";[src{i}]fps={fps},trim=start_frame={offset},setpts=PTS-STARTPTS{pick},scale={w}:{h}:flags=bicubic,setsar=1,format=yuv420p,split=3[ref{i}a][ref{i}b][small{i}]\
             ;[small{i}]scale={lw}:{lh}:flags=bicubic,scale={w}:{h}:flags=bicubic,format=yuv420p[downup{i}]\
             ;[{i}:v]{stop}setsar=1,format=yuv420p,setpts=PTS-STARTPTS{pick}[seg{i}]\
             ;[seg{i}][ref{i}a]ssim=shortest=1[ssim{i}a];[downup{i}][ref{i}b]ssim=shortest=1[ssim{i}b]",
            fps = r.fps,
            offset = p.offset,
        ));
    }
    g
}

/// The filters that keep only `frames` (renumbered so both sides of an
/// SSIM carry the same timestamps), and the one that stops decoding the
/// segment after the last of them.
fn picks(frames: &[u32]) -> (String, String) {
    let Some(last) = frames.last() else {
        return (String::new(), String::new());
    };
    let which: Vec<String> = frames.iter().map(|n| format!("eq(n,{n})")).collect();
    (
        format!(",select='{}',setpts=N/TB", which.join("+")),
        format!("trim=end_frame={},", last + 1),
    )
}

async fn compare(
    parts: &[Part<'_>],
    files: &[std::path::PathBuf],
    source: &Path,
    (start, duration): (f64, f64),
) -> Result<Vec<Fidelity>, CheckError> {
    let mut cmd = crate::ffmpeg::command();
    cmd.args(["-hide_banner", "-nostdin", "-nostats", "-xerror"]);
    // One decoding thread per input: a run has many inputs, and frame
    // threads cost CPU and memory the check does not need.
    for f in files {
        cmd.args(["-threads", "1", "-i"]).arg(f);
    }
    let out = cmd
        // A hair before the first frame, so rounding never drops it.
        .args(["-ss", &format!("{:.6}", (start - 1e-4).max(0.0))])
        .args(["-t", &format!("{duration:.6}"), "-threads", "1"])
        .arg("-i")
        .arg(source)
        // Only the graph's output: the source's audio would be decoded
        // for nothing.
        .args(["-filter_complex", &graph(parts)])
        // Every SSIM an output, so the run ends when the last is done
        // (a sink inside the graph may be cut short).
        .args(outputs(parts.len()))
        .args(["-an", "-sn", "-dn", "-f", "null", "-"])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| CheckError::Verifier(e.to_string()))?;
    let values = parse_ssim(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || values.len() != 2 * parts.len() {
        return Err(CheckError::Verifier(format!(
            "comparing with the source: {}",
            last_line(&out.stderr)
        )));
    }
    Ok(values
        .chunks(2)
        .map(|v| Fidelity {
            ssim: v[0],
            reference: v[1],
        })
        .collect())
}

fn outputs(parts: usize) -> Vec<String> {
    (0..parts)
        .flat_map(|i| ["a", "b"].map(|x| ["-map".to_string(), format!("[ssim{i}{x}]")]))
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ssim_lines_are_read_in_order() {
        let err = "[Parsed_ssim_8 @ 0x2] SSIM Y:0.97 (15) U:0.96 (14) V:0.96 (14) All:0.969600 (15.2)\n\
                   [Parsed_ssim_7 @ 0x1] SSIM Y:0.99 (20) U:0.98 (19) V:0.98 (19) All:0.992275 (21.1)\n";
        assert_eq!(parse_ssim(err), vec![0.992275, 0.9696]);
        let f = Fidelity {
            ssim: 0.9634,
            reference: 0.9696,
        };
        assert!(!f.passes(), "a lower rung scaled up");
        assert!(Fidelity {
            ssim: 0.983,
            reference: 0.9696
        }
        .passes());
        assert!(
            Fidelity {
                ssim: 0.991,
                reference: 0.995
            }
            .passes(),
            "visually lossless"
        );
    }
}
