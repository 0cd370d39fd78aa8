//! Checking a worker's result before it is paid: the uploaded files are
//! exactly what it committed to; every segment passes the structural
//! check (keyframe start, duration, no gap, first picture at the chunk's
//! start); a sample drawn from the commitment and a fresh nonce passes the
//! fidelity check against the original upload (frames drawn the same way
//! in each sampled segment, all of a chunk's in one ffmpeg run). A false sampled segment is
//! slashed with evidence the ledger re-checks (the signed commitment, the
//! nonce, the index); a false segment outside the sample, or files that do
//! not match the commitment, only lose the worker the chunk.

use super::VideoContext;
use crate::Hub;
use meshcast_control::transcoding::{self, Commitment};
use meshcast_ledger::{Action, Work};
use meshcast_transcode::{
    check_range, chunk_first_frame, encode_chunk, inspect_rendition, Part, Rendition,
    RenditionKind, VerifyError,
};
use std::collections::BTreeSet;
use std::path::Path;

pub struct Verdict {
    pub passed: bool,
    pub outcome: String,
    /// Indices (into the commitment's segments) the fidelity check ran on.
    pub checked: Vec<usize>,
    pub slashed: bool,
}

impl Verdict {
    fn refused(outcome: String) -> Verdict {
        Verdict {
            passed: false,
            outcome,
            checked: vec![],
            slashed: false,
        }
    }
}

/// The files uploaded for the attempt are exactly the committed ones.
fn matches_upload(ctx: &VideoContext, c: &Commitment, dir: &Path) -> Result<(), String> {
    let hash = |p: &Path| -> Result<String, String> {
        std::fs::read(p)
            .map(|b| blake3::hash(&b).to_hex().to_string())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    for rung in &ctx.rungs {
        let committed = c
            .inits
            .iter()
            .find(|(r, _)| *r == rung.name)
            .ok_or_else(|| format!("no init segment committed for {}", rung.name))?;
        if hash(&dir.join(&rung.name).join("init.mp4"))? != committed.1 {
            return Err(format!("{}/init.mp4 is not the one committed", rung.name));
        }
        let uploaded: BTreeSet<String> = std::fs::read_dir(dir.join(&rung.name))
            .map_err(|e| format!("{}: {e}", rung.name))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with("seg_") && f.ends_with(".m4s"))
            .collect();
        let listed: BTreeSet<String> = c
            .segments
            .iter()
            .filter(|s| s.rung == rung.name)
            .map(|s| format!("seg_{:05}.m4s", s.number))
            .collect();
        if uploaded != listed {
            return Err(format!(
                "{}: the uploaded segments are not the committed ones",
                rung.name
            ));
        }
    }
    for s in &c.segments {
        if !ctx.rungs.iter().any(|r| r.name == s.rung) {
            return Err(format!("segment for unknown rung {:?}", s.rung));
        }
        let file = dir.join(&s.rung).join(format!("seg_{:05}.m4s", s.number));
        if hash(&file)? != hex::encode(s.hash) {
            return Err(format!(
                "{}/seg_{:05}.m4s is not the one committed",
                s.rung, s.number
            ));
        }
    }
    Ok(())
}

/// The commitment index of the segment a structural error names.
fn index_named(c: &Commitment, e: &VerifyError) -> Option<usize> {
    let VerifyError::Bad(what, _) = e else {
        return None;
    };
    let (rung, file) = what.split_once('/')?;
    let number: u32 = file
        .strip_prefix("seg_")?
        .strip_suffix(".m4s")?
        .parse()
        .ok()?;
    c.segments
        .iter()
        .position(|s| s.rung == rung && s.number == number)
}

enum Finding {
    /// False, at this commitment index, for this reason.
    False(usize, String),
    /// False, but not provably so on the ledger (outside the sample).
    Unproven(String),
}

/// Structural check of every rung; the inspected renditions.
fn structure(
    ctx: &VideoContext,
    c: &Commitment,
    dir: &Path,
    picked: &[usize],
) -> Result<Vec<Rendition>, Finding> {
    let chunk = &ctx.chunks[c.chunk as usize];
    let mut out = Vec::new();
    for rung in &ctx.rungs {
        let first = chunk_first_frame(chunk, rung);
        match inspect_rendition(
            &dir.join(&rung.name),
            &rung.name,
            RenditionKind::Video,
            ctx.segment_secs,
            first,
        ) {
            Ok(r) => {
                exact(ctx, chunk, rung, &r)?;
                out.push(r)
            }
            Err(e) => {
                return Err(match index_named(c, &e) {
                    Some(i) if picked.contains(&i) => Finding::False(i, e.to_string()),
                    _ => Finding::Unproven(e.to_string()),
                })
            }
        }
    }
    Ok(out)
}

/// The rung's picture size, and every segment (but the video's last) as
/// long as the source's frames over its span, to the tick. A mismatch
/// refuses the chunk but is not slashed: a source with a variable frame
/// rate could make an honest one.
fn exact(
    ctx: &VideoContext,
    chunk: &meshcast_transcode::Chunk,
    rung: &meshcast_transcode::Rung,
    r: &Rendition,
) -> Result<(), Finding> {
    if (r.width, r.height) != (rung.width, rung.height) {
        return Err(Finding::Unproven(format!(
            "{} is {}x{}, not {}x{}",
            rung.name, r.width, r.height, rung.width, rung.height
        )));
    }
    let scale = r.timescale.max(1) as f64;
    let at = |t: f64| (meshcast_transcode::first_frame_at(t, rung.fps) * scale).round() as u64;
    let n = r.segments.len();
    for (j, seg) in r.segments.iter().enumerate() {
        if chunk.end.is_none() && j + 1 == n {
            break;
        }
        let Some(number) = seg.file.get(4..9).and_then(|d| d.parse::<u32>().ok()) else {
            return Err(Finding::Unproven(format!("odd segment name {}", seg.file)));
        };
        let span = ctx.segment_secs;
        let expected = at(number as f64 * span) - at((number - 1) as f64 * span);
        if seg.ticks != expected {
            return Err(Finding::Unproven(format!(
                "{}/{} lasts {} ticks; the source's frames there last {expected}",
                rung.name, seg.file, seg.ticks
            )));
        }
    }
    Ok(())
}

/// Every rung's init segment is the one of the chunks accepted before
/// (the join needs one init per rung); the first accepted chunk pins it.
fn same_inits(ctx: &VideoContext, c: &Commitment) -> Result<(), String> {
    let pinned = ctx.inits.lock().unwrap_or_else(|p| p.into_inner());
    for (rung, hash) in &c.inits {
        if pinned.get(rung).is_some_and(|p| p != hash) {
            return Err(format!(
                "{rung}'s init segment differs from the chunks accepted before (other encoder settings or another ffmpeg)"
            ));
        }
    }
    Ok(())
}

/// How far below the HUB's own encode (SSIM) an honest segment may fall:
/// the same encoder and settings, but another machine and thread count.
const OWN_ENCODE_MARGIN: f64 = 0.01;

/// Below this share of the HUB's own encode's SSIM a segment is false even
/// where the source cannot be checked against the rescaled reference:
/// honest encodes of the same job on a noise source reached 0.71–0.92 of
/// each other's, other video 0.40.
const FAR_BELOW_OWN: f64 = 0.6;

/// A segment below the rescaled reference is judged again against the
/// HUB's own encode of it: on a source whose detail no encode at the
/// rung's bitrate keeps (temporal noise, film grain) the reference is out
/// of anyone's reach, and an honest worker must not be slashed for that.
/// Within `OWN_ENCODE_MARGIN` of the HUB's encode it passes. Below that, it
/// is false (slashed) where the HUB's encode beats the reference (the
/// source can be checked this way) or where it is under `FAR_BELOW_OWN` of
/// the HUB's SSIM. Between the two the chunk is refused without a slash:
/// x264 runs of one job differ too much on such content (0.71–0.92 of each
/// other's SSIM) to rest a slash on, and the chunk is redone by another.
async fn judge_against_own_encode(
    hub: &Hub,
    (ctx, c): (&VideoContext, &Commitment),
    (p, f, name): (&Picked<'_>, &meshcast_transcode::Fidelity, &str),
    (parts, k, range): (&[Part<'_>], usize, (f64, f64)),
) -> Result<(), Finding> {
    let ours = own_encode_ssim(ctx, c, p, (parts, k, range)).await.map_err(|e| {
        tracing::error!(video = %c.video, chunk = c.chunk, error = %e, "the HUB's own encode could not run");
        Finding::Unproven(format!("chunk {}: the HUB's own encode: {e}", c.chunk))
    })?;
    let verdict = if f.ssim + OWN_ENCODE_MARGIN >= ours {
        "honest"
    } else if ours > f.reference || f.ssim < FAR_BELOW_OWN * ours {
        "false"
    } else {
        "uncheckable"
    };
    hub.metrics.own_encodes.with_label_values(&[verdict]).inc();
    tracing::info!(video = %c.video, chunk = c.chunk, segment = name, ssim = f.ssim,
        reference = f.reference, own = ours, verdict, "below the rescaled reference: judged against the HUB's own encode");
    let measured = format!(
        "{name}: SSIM {:.4} against the source, below the {:.4} of a two-thirds picture scaled back up and the {ours:.4} of the HUB's own encode",
        f.ssim, f.reference
    );
    match verdict {
        "honest" => Ok(()),
        "false" => Err(Finding::False(p.index, measured)),
        _ => Err(Finding::Unproven(format!(
            "{measured}, which is below that picture too: this source cannot be checked this way; refused without a slash"
        ))),
    }
}

/// The SSIM the HUB's own encode of `p`'s segment reaches on its frames,
/// measured in the very run that measured the worker's (`parts`, with the
/// HUB's segment in place `k`): the same start and offsets, so the same
/// source frames meet it. (A run of its own could align a frame apart,
/// which on temporal noise alone moves SSIM by 0.08.)
async fn own_encode_ssim(
    ctx: &VideoContext,
    c: &Commitment,
    p: &Picked<'_>,
    (parts, k, range): (&[Part<'_>], usize, (f64, f64)),
) -> Result<f64, String> {
    // The worker's own job, every rung: the same ffmpeg run as the
    // worker's, so the same encode where x264 is deterministic.
    let job = ctx.job(c.chunk).ok_or("no such chunk")?;
    // One encode per chunk, whichever of its sampled segments need it
    // (`fidelity` removes it when the chunk is judged).
    let out = own_dir(ctx, c);
    let done = out.join(".done");
    let measured = async {
        if !done.exists() {
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
            encode_chunk(&ctx.cut_path(c.chunk), &job, &out, |_| {})
                .await
                .map_err(|e| e.to_string())?;
            std::fs::write(&done, b"").map_err(|e| e.to_string())?;
        }
        let dir = out.join(&p.rung.name);
        let read = |f: &str| std::fs::read(dir.join(f)).map_err(|e| format!("{f}: {e}"));
        let init = read("init.mp4")?;
        let segment = read(&format!("seg_{:05}.m4s", c.segments[p.index].number))?;
        let swapped: Vec<Part> = parts
            .iter()
            .enumerate()
            .map(|(i, q)| Part {
                rung: q.rung,
                init: if i == k { &init } else { q.init },
                segment: if i == k { &segment } else { q.segment },
                offset: q.offset,
                frames: q.frames,
            })
            .collect();
        let found = check_range(&swapped, &ctx.input, range, &ctx.dir)
            .await
            .map_err(|(_, e)| e.to_string())?;
        found
            .get(k)
            .map(|f| f.ssim)
            .ok_or_else(|| "no measurement".to_string())
    }
    .await;
    measured
}

/// Where the HUB's own encode of a chunk under judgment is kept.
fn own_dir(ctx: &VideoContext, c: &Commitment) -> std::path::PathBuf {
    ctx.dir.join("own").join(c.chunk.to_string())
}

/// A picked segment, read and placed for the fidelity run.
struct Picked<'a> {
    index: usize,
    rung: &'a meshcast_transcode::Rung,
    init: Vec<u8>,
    segment: Vec<u8>,
    /// Seconds into the source of its first frame, and its length.
    at: f64,
    duration: f64,
    frames: Vec<u32>,
}

/// Reads the picked segment at commitment index `i` and draws its frames.
fn pick<'a>(
    ctx: &'a VideoContext,
    c: &Commitment,
    dir: &Path,
    renditions: &[Rendition],
    (i, nonce): (usize, &[u8; 32]),
) -> Result<Picked<'a>, Finding> {
    let rung = &c.segments[i].rung;
    let (Some(r), Some(spec)) = (
        renditions.iter().find(|r| r.name == *rung),
        ctx.rungs.iter().find(|r| r.name == *rung),
    ) else {
        return Err(Finding::False(i, format!("segment of unknown rung {rung}")));
    };
    let file = format!("seg_{:05}.m4s", c.segments[i].number);
    let Some(seg) = r.segments.iter().find(|s| s.file == file) else {
        return Err(Finding::False(i, format!("{rung}/{file} is missing")));
    };
    let read =
        |p: std::path::PathBuf| std::fs::read(p).map_err(|e| Finding::Unproven(e.to_string()));
    let at = (seg.start + r.composition_offset).saturating_sub(r.edit_offset) as f64
        / r.timescale.max(1) as f64;
    let count = (seg.duration * spec.fps).round() as u32;
    Ok(Picked {
        index: i,
        rung: spec,
        init: read(dir.join(rung).join("init.mp4"))?,
        segment: read(dir.join(rung).join(&file))?,
        at,
        duration: seg.duration,
        frames: transcoding::frames_to_check(&c.root, nonce, i, count),
    })
}

/// Fidelity of the picked segments against the original upload, in one
/// ffmpeg run over the chunk: the source decoded once, each segment up to
/// the last of its drawn frames.
async fn fidelity(
    hub: &Hub,
    ctx: &VideoContext,
    c: &Commitment,
    dir: &Path,
    renditions: &[Rendition],
    (picked, nonce): (&[usize], &[u8; 32]),
) -> Result<(), Finding> {
    let loaded = picked
        .iter()
        .map(|&i| pick(ctx, c, dir, renditions, (i, nonce)))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(start) = loaded.iter().map(|p| p.at).reduce(f64::min) else {
        return Ok(());
    };
    let end = loaded
        .iter()
        .map(|p| p.at + p.duration)
        .fold(start, f64::max);
    let parts: Vec<Part> = loaded
        .iter()
        .map(|p| Part {
            rung: p.rung,
            init: &p.init,
            segment: &p.segment,
            offset: ((p.at - start) * p.rung.fps).round() as u32,
            frames: &p.frames,
        })
        .collect();
    let judged = judge(hub, (ctx, c), &loaded, &parts, (start, end)).await;
    let _ = std::fs::remove_dir_all(own_dir(ctx, c));
    judged
}

/// The fidelity run over `parts`, and each segment's verdict.
async fn judge(
    hub: &Hub,
    (ctx, c): (&VideoContext, &Commitment),
    loaded: &[Picked<'_>],
    parts: &[Part<'_>],
    (start, end): (f64, f64),
) -> Result<(), Finding> {
    let named = |p: &Picked| format!("{}/seg_{:05}.m4s", p.rung.name, c.segments[p.index].number);
    match check_range(parts, &ctx.input, (start, end - start), &ctx.dir).await {
        Ok(found) => {
            for (k, (p, f)) in loaded.iter().zip(&found).enumerate() {
                if !f.passes() {
                    let run = (parts, k, (start, end - start));
                    judge_against_own_encode(hub, (ctx, c), (p, f, &named(p)), run).await?;
                }
            }
            Ok(())
        }
        Err((Some(pos), e)) => Err(Finding::False(
            loaded[pos].index,
            format!("{}: {e}", named(&loaded[pos])),
        )),
        Err((None, e)) => {
            tracing::error!(video = %c.video, chunk = c.chunk, error = %e, "the fidelity check could not run");
            Err(Finding::Unproven(format!("chunk {}: {e}", c.chunk)))
        }
    }
}

pub async fn check(
    hub: &Hub,
    ctx: &VideoContext,
    c: &Commitment,
    worker: &str,
    envelope: &[u8],
) -> Verdict {
    let dir = ctx.attempt_dir(c.chunk, c.attempt);
    if !c.is_consistent() {
        return Verdict::refused("the commitment's root does not match its segments".into());
    }
    if let Err(why) = matches_upload(ctx, c, &dir).and_then(|()| same_inits(ctx, c)) {
        let _ = std::fs::remove_dir_all(&dir);
        return Verdict::refused(why);
    }
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).expect("the OS has randomness");
    let picked = transcoding::challenge(&c.root, &nonce, c.segments.len());
    let found = match structure(ctx, c, &dir, &picked) {
        Ok(renditions) => fidelity(hub, ctx, c, &dir, &renditions, (&picked, &nonce)).await,
        Err(f) => Err(f),
    };
    match found {
        Ok(()) => {
            if let Err(e) = accept(ctx, c, &dir) {
                return Verdict::refused(format!("cannot keep the output: {e}"));
            }
            ctx.pin_inits(&c.inits);
            pay(hub, ctx, c, worker);
            tracing::info!(worker, video = %c.video, chunk = c.chunk, checked = picked.len(), of = c.segments.len(), "chunk accepted");
            Verdict {
                passed: true,
                outcome: format!(
                    "passed: {} of {} segments checked, {} frames each",
                    picked.len(),
                    c.segments.len(),
                    transcoding::FRAMES_PER_SEGMENT
                ),
                checked: picked,
                slashed: false,
            }
        }
        Err(Finding::Unproven(why)) => {
            let _ = std::fs::remove_dir_all(&dir);
            tracing::warn!(worker, video = %c.video, chunk = c.chunk, %why, "chunk refused");
            Verdict {
                passed: false,
                outcome: why,
                checked: picked,
                slashed: false,
            }
        }
        Err(Finding::False(index, why)) => {
            let sample = failed_sample(c, &dir, index);
            let _ = std::fs::remove_dir_all(&dir);
            slash(hub, worker, (envelope, &sample), nonce, index, &why);
            Verdict {
                passed: false,
                outcome: why,
                checked: picked,
                slashed: true,
            }
        }
    }
}

/// Keeps an accepted attempt's output as the chunk's part.
fn accept(ctx: &VideoContext, c: &Commitment, dir: &Path) -> std::io::Result<()> {
    let part = ctx.part_dir(c.chunk);
    if part.exists() {
        std::fs::remove_dir_all(&part)?;
    }
    std::fs::create_dir_all(part.parent().expect("parts/ has a parent"))?;
    std::fs::rename(dir, &part)
}

/// Pays the worker per output second per rung, once per chunk.
fn pay(hub: &Hub, ctx: &VideoContext, c: &Commitment, worker: &str) {
    let Some(node) = hub.registry.node(worker).ok().flatten() else {
        return;
    };
    let Some(key) = crate::admission::node_key(&node) else {
        return;
    };
    let chunk = &ctx.chunks[c.chunk as usize];
    let length = chunk.end.unwrap_or(ctx.duration) - chunk.start;
    let rung_seconds = (length * ctx.rungs.len() as f64).ceil() as u64;
    let reference = format!("transcode/{}/{}", c.video, c.chunk);
    let line = crate::costs::Line {
        video: c.video.clone(),
        at: crate::nodes::now_secs(),
        kind: "transcode".into(),
        units: rung_seconds,
        reference: reference.clone(),
    };
    crate::costs::note(hub, &[(reference.clone(), line)]);
    hub.ledger.submit(vec![Action::Reward {
        payer: ctx.payer,
        node: key,
        work: Work::Transcode {
            seconds: rung_seconds,
        },
        reference,
    }]);
}

/// The failed sample as evidence: the challenge's nonce and index, and the
/// segment and its init segment as uploaded (hex), so anyone can hash them
/// against the signed commitment and re-run the check on the source.
fn failed_sample(c: &Commitment, dir: &Path, index: usize) -> serde_json::Value {
    let s = &c.segments[index];
    let read = |p: std::path::PathBuf| std::fs::read(p).map(hex::encode).unwrap_or_default();
    serde_json::json!({
        "index": index,
        "rung": s.rung,
        "number": s.number,
        "init": read(dir.join(&s.rung).join("init.mp4")),
        "segment": read(dir.join(&s.rung).join(format!("seg_{:05}.m4s", s.number))),
    })
}

/// Keeps the evidence (the signed commitment, the nonce and the failed
/// sample), marks the node and queues the ledger slash.
fn slash(
    hub: &Hub,
    worker: &str,
    (envelope, sample): (&[u8], &serde_json::Value),
    nonce: [u8; 32],
    index: usize,
    why: &str,
) {
    let also = serde_json::json!({ "nonce": hex::encode(nonce), "sample": sample }).to_string();
    if let Some((key, _)) = hub.record_slash(worker, 0, why, envelope, Some(also)) {
        hub.ledger
            .slash_transcode(key, envelope, nonce, index as u32, why);
    }
}
