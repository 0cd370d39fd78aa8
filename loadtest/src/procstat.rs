//! CPU time and peak memory of processes, from /proc.

/// Clock ticks per second for /proc/*/stat times.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// User + system CPU seconds used so far by these processes.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let tps = ticks_per_sec();
    pids.iter()
        .filter_map(|p| stat_fields(*p))
        .map(|f| {
            // After the name: state(0) ppid(1) … utime(11) stime(12).
            let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let s: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            (u + s) / tps
        })
        .sum()
}

/// CPU seconds of the processes' children that have exited and been
/// waited for (cutime + cstime): e.g. the ffmpeg runs of a hub.
pub fn children_cpu_seconds(pids: &[u32]) -> f64 {
    let tps = ticks_per_sec();
    pids.iter()
        .filter_map(|p| stat_fields(*p))
        .map(|f| {
            let u: f64 = f.get(13).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let s: f64 = f.get(14).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            (u + s) / tps
        })
        .sum()
}

/// Sum of the processes' peak resident set sizes (VmHWM), in bytes.
pub fn peak_rss(pids: &[u32]) -> u64 {
    status_bytes(pids, "VmHWM:")
}

/// Sum of the processes' resident set sizes now (VmRSS), in bytes.
pub fn rss(pids: &[u32]) -> u64 {
    status_bytes(pids, "VmRSS:")
}

fn status_bytes(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .sum()
}

/// `pid` and its direct children (nginx's workers).
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if stat_fields(child).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                == Some(pid)
            {
                out.push(child);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_cpu_and_memory() {
        let me = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(super::cpu_seconds(&[me]) > 0.0);
        assert!(super::peak_rss(&[me]) > 1 << 20);
        assert!(super::rss(&[me]) > 1 << 20);
    }
}
