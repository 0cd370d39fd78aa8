//! The example configs in `examples/` are what an operator copies: each
//! must load as written.

use meshcast_conf::{EdgeConfig, WorkerConfig};
use std::path::PathBuf;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

#[test]
fn every_example_config_loads() {
    let edge = EdgeConfig::load(&example("edge.toml")).unwrap();
    assert!(!edge.sites.is_empty());
    let worker = WorkerConfig::load(&example("worker.toml")).unwrap();
    assert!(worker.worker.has_role("transcode"));
    let storage = WorkerConfig::load(&example("storage.toml")).unwrap();
    assert!(storage.worker.has_role("storage"));
    assert_eq!(
        storage.worker.storage_url().unwrap(),
        "http://203.0.113.5:9100"
    );
}
