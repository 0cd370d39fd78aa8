//! Medians, ratios, and the tables and JSON the harness prints.

use crate::coalesce::Coalesced;
use crate::openloop::OpenLoop;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub rps: f64,
    pub mb_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub cpu_s_per_gb: f64,
    pub errors: u64,
}

fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Median of each figure over the rounds.
pub fn median(cells: &[Cell]) -> Cell {
    let f = |g: fn(&Cell) -> f64| med(cells.iter().map(g).collect());
    Cell {
        rps: f(|c| c.rps),
        mb_per_sec: f(|c| c.mb_per_sec),
        p50_ms: f(|c| c.p50_ms),
        p99_ms: f(|c| c.p99_ms),
        p999_ms: f(|c| c.p999_ms),
        cpu_s_per_gb: f(|c| c.cpu_s_per_gb),
        errors: cells.iter().map(|c| c.errors).sum(),
    }
}

pub struct Fixed {
    pub meshcast: OpenLoop,
    pub nginx: OpenLoop,
}

pub struct Peak {
    pub meshcast_rss: u64,
    pub nginx_rss: u64,
}

pub struct CompareReport {
    pub cells: Vec<(String, Cell, Cell)>,
    pub fixed: Fixed,
    pub coalesce: (Coalesced, Coalesced),
    pub peak: Peak,
    pub settings: Value,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 100.0).round() / 100.0
    } else {
        0.0
    }
}

fn cell_json(c: &Cell) -> Value {
    json!({"rps": c.rps.round(), "mb_per_sec": (c.mb_per_sec * 10.0).round() / 10.0, "p50_ms": c.p50_ms, "p99_ms": c.p99_ms,
           "p999_ms": c.p999_ms, "cpu_s_per_gb": (c.cpu_s_per_gb * 100.0).round() / 100.0, "errors": c.errors})
}

fn coalesce_json(c: &Coalesced) -> Value {
    json!({"requests": c.requests, "ok": c.ok, "origin_fetches": c.origin_fetches, "ttfb_p50_ms": c.ttfb_p50_ms, "ttfb_p99_ms": c.ttfb_p99_ms})
}

fn fixed_json(f: &OpenLoop) -> Value {
    json!({"offered_rps": f.offered_rps.round(), "achieved_rps": f.achieved_rps.round(), "p50_ms": f.p50_us as f64 / 1000.0,
           "p99_ms": f.p99_us as f64 / 1000.0, "errors": f.errors})
}

impl CompareReport {
    pub fn json(&self) -> Value {
        let objects: Vec<Value> = self
            .cells
            .iter()
            .map(|(label, m, n)| {
                json!({"object": label, "meshcast": cell_json(m), "nginx": cell_json(n),
                       "ratio": {"rps": ratio(m.rps, n.rps), "mb_per_sec": ratio(m.mb_per_sec, n.mb_per_sec),
                                 "p99": ratio(m.p99_ms, n.p99_ms), "cpu_s_per_gb": ratio(m.cpu_s_per_gb, n.cpu_s_per_gb)}})
            })
            .collect();
        json!({
            "settings": self.settings,
            "objects": objects,
            "fixed_rate_small_object": {"meshcast": fixed_json(&self.fixed.meshcast), "nginx": fixed_json(&self.fixed.nginx),
                "ratio_p99": ratio(self.fixed.meshcast.p99_us as f64, self.fixed.nginx.p99_us as f64)},
            "cold_coalescing": {"meshcast": coalesce_json(&self.coalesce.0), "nginx": coalesce_json(&self.coalesce.1)},
            "peak_rss_bytes": {"meshcast": self.peak.meshcast_rss, "nginx": self.peak.nginx_rss},
        })
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("| object | server | req/s | MB/s | p50 ms | p99 ms | p99.9 ms | CPU s/GB |\n|---|---|---|---|---|---|---|---|\n");
        for (label, m, n) in &self.cells {
            for (name, c) in [("meshcast", m), ("nginx", n)] {
                s.push_str(&format!(
                    "| {label} | {name} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                    c.rps, c.mb_per_sec, c.p50_ms, c.p99_ms, c.p999_ms, c.cpu_s_per_gb
                ));
            }
            s.push_str(&format!(
                "| {label} | **meshcast ÷ nginx** | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                ratio(m.rps, n.rps),
                ratio(m.mb_per_sec, n.mb_per_sec),
                ratio(m.p50_ms, n.p50_ms),
                ratio(m.p99_ms, n.p99_ms),
                ratio(m.p999_ms, n.p999_ms),
                ratio(m.cpu_s_per_gb, n.cpu_s_per_gb)
            ));
        }
        let (fm, fx) = (&self.fixed.meshcast, &self.fixed.nginx);
        s.push_str(&format!(
            "\nFixed rate on the 1 KB object ({:.0} req/s = 80 % of nginx's max, open loop): p99 meshcast {:.2} ms, nginx {:.2} ms (ratio {:.2}); achieved {:.0} and {:.0} req/s.\n",
            fm.offered_rps,
            fm.p99_us as f64 / 1000.0,
            fx.p99_us as f64 / 1000.0,
            ratio(fm.p99_us as f64, fx.p99_us as f64),
            fm.achieved_rps,
            fx.achieved_rps
        ));
        let (cm, cn) = &self.coalesce;
        s.push_str(&format!(
            "\nCold 2 MB segment, {} concurrent requests, origin answers after 500 ms: origin fetches meshcast {}, nginx {}; time to first byte p50/p99 meshcast {:.0}/{:.0} ms, nginx {:.0}/{:.0} ms; complete bodies {} and {}.\n",
            cm.requests, cm.origin_fetches, cn.origin_fetches, cm.ttfb_p50_ms, cm.ttfb_p99_ms, cn.ttfb_p50_ms, cn.ttfb_p99_ms, cm.ok, cn.ok
        ));
        s.push_str(&format!(
            "\nPeak RSS: meshcast {:.0} MiB, nginx {:.0} MiB (master + workers).\n",
            self.peak.meshcast_rss as f64 / 1048576.0,
            self.peak.nginx_rss as f64 / 1048576.0
        ));
        if let Some(hits) = self.settings.get("edge_hits") {
            s.push_str(&format!(
                "\nEdge memory tier {}; its hits by tier over the run: {hits}.\n",
                self.settings["memory_size"]
            ));
        }
        s
    }
}
