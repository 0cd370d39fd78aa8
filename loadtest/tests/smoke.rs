//! CI smoke test: every loadtest subcommand with `--quick` runs end to end and
//! prints well-formed JSON. Nothing here is about speed; the hard facts
//! checked are that both servers coalesced the cold misses into one fetch
//! and that every ledger transfer applied.

use std::process::Command;

fn run(args: &[&str]) -> serde_json::Value {
    let exe = env!("CARGO_BIN_EXE_meshcast-loadtest");
    let meshcast = std::path::Path::new(exe).parent().unwrap().join("meshcast");
    assert!(
        meshcast.is_file(),
        "build the meshcast binary first (cargo build)"
    );
    let out = Command::new(exe)
        .args(args)
        .arg("--meshcast")
        .arg(&meshcast)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn compare_quick_reports_every_figure() {
    let r = run(&["compare", "--quick", "--json"]);
    let objects = r["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 3);
    for o in objects {
        for server in ["meshcast", "nginx"] {
            assert!(o[server]["rps"].as_f64().unwrap() > 0.0, "{o}");
            assert!(o[server]["cpu_s_per_gb"].as_f64().unwrap() > 0.0, "{o}");
        }
        assert!(o["ratio"]["rps"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(r["cold_coalescing"]["meshcast"]["origin_fetches"], 1, "{r}");
    assert_eq!(
        r["cold_coalescing"]["meshcast"]["ok"], r["cold_coalescing"]["meshcast"]["requests"],
        "{r}"
    );
    assert!(r["peak_rss_bytes"]["meshcast"].as_u64().unwrap() > 0);
    assert!(
        r["fixed_rate_small_object"]["meshcast"]["achieved_rps"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn viewers_quick_ramps_both_servers() {
    let r = run(&["viewers", "--quick", "--json"]);
    for server in ["meshcast", "nginx"] {
        let steps = r[server]["steps"].as_array().unwrap();
        assert!(!steps.is_empty(), "{r}");
        assert!(steps[0]["mean_kbps"].as_f64().unwrap() >= 800.0, "{r}");
        assert_eq!(steps[0]["failed"], 0, "{r}");
    }
}

#[test]
fn http3_quick_measures_both_protocols() {
    let r = run(&["http3", "--quick", "--json"]);
    assert!(r["h2_tls"]["mb_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["h3"]["mb_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["ratio_h3_over_h2"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn receipts_quick_measures_on_and_off() {
    // The harness itself refuses to measure unless the "on" edge sends a
    // Meshcast-Receipt and the "off" edge does not.
    let r = run(&["receipts", "--quick", "--json"]);
    let rows = r["receipts"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert!(row["rps_receipts_on"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["rps_receipts_off"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["errors"], 0, "{row}");
    }
}

#[test]
fn ledger_quick_commits_every_transfer() {
    // The harness fails unless every transfer applied (senders' nonces).
    let r = run(&["ledger", "--quick", "--json"]);
    assert_eq!(r["validators"], 4, "{r}");
    assert_eq!(r["transfers"], 2000, "{r}");
    assert!(r["committed_tx_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["finality_ms"]["samples"], 5, "{r}");
    assert!(r["blocks"].as_u64().unwrap() >= 1, "{r}");
}

#[test]
fn shards_quick_misses_from_both_origins_and_repairs() {
    let r = run(&["shards", "--quick", "--json"]);
    for origin in ["hub_origin", "network"] {
        assert!(
            r["misses"][origin]["segments"].as_u64().unwrap() >= 1,
            "{r}"
        );
        assert!(
            r["misses"][origin]["mb_per_s_p50"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
    assert!(r["repair"]["rebuilt_mb"].as_f64().unwrap() > 0.0, "{r}");
}
