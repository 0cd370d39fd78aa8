//! Closed-loop load with wrk; its Lua `done` hook prints the figures as JSON.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::path::Path;

const SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"bytes":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.bytes, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct WrkResult {
    pub requests: u64,
    pub bytes: u64,
    pub duration_us: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / (self.duration_us as f64 / 1e6)
    }
}

/// Each wrk thread cycles through `n` copies of the URL (`?n=0` … `n-1`),
/// which caches store as `n` objects.
fn cycle(n: usize) -> String {
    format!(
        "local i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(nil, wrk.path .. \"?n=\" .. (i % {n}))\nend\n"
    )
}

/// A wrk run over `objects` copies of `url` (one when 1: the plain URL).
pub fn run_over(
    url: &str,
    objects: usize,
    connections: usize,
    secs: u64,
    dir: &Path,
) -> anyhow::Result<WrkResult> {
    let script = dir.join(format!("report-{objects}.lua"));
    if !script.exists() {
        let head = if objects > 1 {
            cycle(objects)
        } else {
            String::new()
        };
        std::fs::write(&script, head + SCRIPT)?;
    }
    let out = std::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .map_err(|e| {
            anyhow::anyhow!("cannot run wrk ({e}); install it with `apt-get install wrk`")
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no result from wrk: {text}"))?;
    let r: WrkResult = serde_json::from_str(line)?;
    if r.requests == 0 {
        bail!("wrk made no requests to {url}");
    }
    Ok(r)
}
