//! `meshcast play` and `meshcast token`: front ends of the player library
//! and of token signing.

use anyhow::{bail, Context};
use meshcast_control::identity::NodeKey;
use meshcast_control::token::{self, TokenClaims};
use std::path::Path;

pub async fn run(options: meshcast_player::Options, json: bool) -> anyhow::Result<()> {
    let ack = options.ack;
    let report = meshcast_player::play(options).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "played {}\n  {} bytes in {} requests ({} segments) in {:.1} s\n  {} receipts checked, {} acks sent, {} accepted ({} bytes)",
            report.url, report.bytes, report.requests, report.segments, report.seconds,
            report.receipts, report.acks_sent, report.acks_accepted, report.acked_bytes
        );
        if let Some(node) = &report.rtc_node {
            println!(
                "  over WebRTC from node {node}: {} responses, {} fell back to HTTP",
                report.rtc_responses, report.http_fallbacks
            );
        }
        for r in &report.refused {
            println!("  refused: {r}");
        }
    }
    if ack && report.acks_accepted < report.receipts {
        bail!(
            "{} of {} acks were not accepted",
            report.receipts - report.acks_accepted,
            report.receipts
        );
    }
    Ok(())
}

pub fn sign_token(
    key: &Path,
    video: &str,
    session: &str,
    ttl: u64,
    budget: u64,
) -> anyhow::Result<String> {
    let key = NodeKey::load(key)?;
    let mut s = [0u8; 32];
    hex::decode_to_slice(session, &mut s)
        .context("--session must be 64 hex digits (an Ed25519 public key)")?;
    if video.is_empty() || !video.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("--video {video:?} is not a video id");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = TokenClaims {
        issuer: key.public().to_bytes(),
        prefix: format!("/v/{video}/"),
        expires: now + ttl,
        budget,
        session: s,
        edges: Vec::new(),
    };
    Ok(token::issue(&key, &claims, now)?)
}
