//! The access log: one line per request, text or JSON, written by its own
//! thread so request handling never waits on the log file. Includes the
//! CMCD (CTA-5004) keys a player sent, from the `CMCD` query parameter or
//! the `CMCD-Request/Object/Status/Session` headers.

use meshcast_conf::AccessLogFormat;
use pingora_http::RequestHeader;
use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// CMCD keys that appear as their own fields; others stay in `cmcd`.
pub const CMCD_KEYS: [&str; 4] = ["sid", "br", "bl", "ot"];

/// Parses CMCD `key=value,key2="str",flag` lists from a request.
pub fn cmcd(req: &RequestHeader) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(q) = req.uri.query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            if k == "CMCD" {
                parse_cmcd_list(&v, &mut out);
            }
        }
    }
    for name in ["cmcd-request", "cmcd-object", "cmcd-status", "cmcd-session"] {
        for v in req.headers.get_all(name) {
            if let Ok(s) = v.to_str() {
                parse_cmcd_list(s, &mut out);
            }
        }
    }
    out
}

fn parse_cmcd_list(list: &str, out: &mut Vec<(String, String)>) {
    let mut rest = list;
    while !rest.is_empty() {
        // A quoted string may contain commas; split with that in mind.
        let (item, tail) = split_item(rest);
        rest = tail;
        let item = item.trim();
        if item.is_empty() || out.len() >= 32 {
            continue;
        }
        let (k, v) = item.split_once('=').unwrap_or((item, "true"));
        let v = v.trim().trim_matches('"');
        if k.len() <= 16 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            out.push((k.to_string(), v.chars().take(128).collect()));
        }
    }
}

fn split_item(s: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => return (&s[..i], &s[i + 1..]),
            _ => {}
        }
    }
    (s, "")
}

#[derive(Serialize, Default)]
pub struct Entry {
    pub time: String,
    pub client: String,
    pub method: String,
    pub host: String,
    pub uri: String,
    pub proto: &'static str,
    pub status: u16,
    pub cache: String,
    pub bytes: usize,
    pub duration_ms: f64,
    pub site: usize,
    pub origin_status: Option<u16>,
    pub user_agent: String,
    pub cmcd: Vec<(String, String)>,
    pub request_id: String,
}

impl Entry {
    fn text(&self) -> String {
        let mut line = format!(
            "{} {} \"{} {}{} {}\" {} {} {}B {:.1}ms site={}",
            self.time,
            self.client,
            self.method,
            self.host,
            self.uri,
            self.proto,
            self.status,
            self.cache,
            self.bytes,
            self.duration_ms,
            self.site
        );
        if let Some(s) = self.origin_status {
            line.push_str(&format!(" origin={s}"));
        }
        for (k, v) in &self.cmcd {
            line.push_str(&format!(" cmcd.{k}={v:?}"));
        }
        line.push_str(&format!(" ua={:?} id={}", self.user_agent, self.request_id));
        line
    }

    fn json(&self) -> String {
        let mut value = serde_json::json!({
            "time": self.time, "client": self.client, "method": self.method, "host": self.host,
            "uri": self.uri, "proto": self.proto, "status": self.status, "cache": self.cache,
            "bytes": self.bytes, "duration_ms": self.duration_ms, "site": self.site,
            "origin_status": self.origin_status, "user_agent": self.user_agent,
            "request_id": self.request_id,
        });
        let cmcd: serde_json::Map<String, serde_json::Value> = self
            .cmcd
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        value["cmcd"] = serde_json::Value::Object(cmcd);
        value.to_string()
    }
}

/// Lines waiting for the writer thread; past this, lines are dropped and
/// counted (`meshcast_access_log_dropped_total`) rather than held in memory
/// without bound when the disk is slower than the traffic.
pub const QUEUE_LINES: usize = 65_536;

pub struct AccessLog {
    tx: Option<mpsc::SyncSender<String>>,
    format: AccessLogFormat,
    dropped: prometheus::IntCounter,
    /// Set by SIGHUP/SIGUSR1: the writer reopens the file (after rotation).
    reopen: Arc<AtomicBool>,
}

fn open_target(target: &str) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        "stdout" => Box::new(std::io::stdout()),
        path => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    })
}

/// The writer thread: batches what is queued, reopens on request.
fn write_lines(
    target: String,
    mut out: Box<dyn Write + Send>,
    rx: mpsc::Receiver<String>,
    reopen: Arc<AtomicBool>,
) {
    while let Ok(line) = rx.recv() {
        if reopen.swap(false, Ordering::AcqRel) {
            match open_target(&target) {
                Ok(fresh) => out = fresh,
                Err(e) => eprintln!("meshcast: cannot reopen the access log {target}: {e}"),
            }
        }
        let mut batch = line;
        batch.push('\n');
        while let Ok(more) = rx.try_recv() {
            batch.push_str(&more);
            batch.push('\n');
        }
        if out
            .write_all(batch.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            eprintln!("meshcast: cannot write the access log");
        }
    }
}

impl AccessLog {
    /// `target` is "stdout", "off" or a file path (appended to); at most
    /// `queue` lines wait for the writer.
    pub fn open(
        target: &str,
        format: AccessLogFormat,
        queue: usize,
        dropped: prometheus::IntCounter,
    ) -> std::io::Result<AccessLog> {
        let reopen = Arc::new(AtomicBool::new(false));
        if target == "off" {
            return Ok(AccessLog {
                tx: None,
                format,
                dropped,
                reopen,
            });
        }
        let out = open_target(target)?;
        let (tx, rx) = mpsc::sync_channel::<String>(queue);
        let (t, r) = (target.to_string(), reopen.clone());
        std::thread::Builder::new()
            .name("meshcast-access-log".into())
            .spawn(move || write_lines(t, out, rx, r))?;
        Ok(AccessLog {
            tx: Some(tx),
            format,
            dropped,
            reopen,
        })
    }

    /// False when the log is off: callers skip building entries.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Asks the writer to reopen its file before the next line (after a
    /// logrotate move).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    pub fn write(&self, entry: &Entry) {
        if let Some(tx) = &self.tx {
            let line = match self.format {
                AccessLogFormat::Text => entry.text(),
                AccessLogFormat::Json => entry.json(),
            };
            if let Err(mpsc::TrySendError::Full(_)) = tx.try_send(line) {
                self.dropped.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uri: &str) -> Entry {
        Entry {
            uri: uri.into(),
            ..Entry::default()
        }
    }

    /// Writes `uri`'s line until it shows in `path` (a line may be dropped
    /// while the writer is busy: that is the point of the bound).
    fn write_until_seen(log: &AccessLog, path: &std::path::Path, uri: &str) -> String {
        for _ in 0..500 {
            log.write(&entry(uri));
            std::thread::sleep(std::time::Duration::from_millis(10));
            let got = std::fs::read_to_string(path).unwrap_or_default();
            if got.contains(uri) {
                return got;
            }
        }
        panic!("{uri} never reached {}", path.display());
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_rotated_file_is_reopened() {
        let dir = std::env::temp_dir().join(format!("meshcast-alog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        // A queue of 1 behind a writer that cannot keep up with 100 000
        // lines written at once: some are dropped, and counted.
        let log = AccessLog::open(
            path.to_str().unwrap(),
            AccessLogFormat::Text,
            1,
            dropped.clone(),
        )
        .unwrap();
        for i in 0..100_000 {
            log.write(&entry(&format!("/burst/{i}")));
        }
        assert!(dropped.get() > 0, "nothing dropped");
        write_until_seen(&log, &path, "/after-burst");
        // logrotate moves the file; after reopen, lines go to a new one.
        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        let fresh = write_until_seen(&log, &path, "/after-rotation");
        assert!(!fresh.contains("/burst/"), "the new file starts empty");
        assert!(!std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("/after-rotation"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cmcd_from_query_and_headers() {
        let mut req = RequestHeader::build(
            "GET",
            b"/s.m4s?CMCD=br%3D3200%2Cbl%3D2100%2Cot%3Dv%2Csid%3D%22ab%2Ccd%22%2Csu",
            None,
        )
        .unwrap();
        req.insert_header("CMCD-Request", "mtp=25400").unwrap();
        let c = cmcd(&req);
        let get = |k: &str| c.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("br"), Some("3200"));
        assert_eq!(get("bl"), Some("2100"));
        assert_eq!(get("ot"), Some("v"));
        assert_eq!(get("sid"), Some("ab,cd"));
        assert_eq!(get("su"), Some("true"));
        assert_eq!(get("mtp"), Some("25400"));
    }
}
