//! `meshcast play` and `meshcast token`: front ends of the player library
//! and of token signing.

use anyhow::{bail, Context};
use meshcast_control::identity::NodeKey;
use meshcast_control::token::{self, TokenClaims};
use std::path::Path;

pub async fn run(
    url: String,
    ack: bool,
    hub: Option<String>,
    realtime: bool,
    json: bool,
) -> anyhow::Result<()> {
    let report = meshcast_player::play(meshcast_player::Options {
        url,
        ack,
        hub,
        realtime,
        batch: 16,
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "played {}\n  {} bytes in {} requests ({} segments) in {:.1} s\n  {} receipts checked, {} acks sent, {} accepted ({} bytes)",
            report.url, report.bytes, report.requests, report.segments, report.seconds,
            report.receipts, report.acks_sent, report.acks_accepted, report.acked_bytes
        );
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
