//! Operators' TOML configs (edge, hub, worker, ledger), from the examples
//! and minimal files mutated: every input parses or gives an error that
//! renders (with its line and column) without a panic.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use meshcast_conf::{EdgeConfig, HubConfig, LedgerConfig, WorkerConfig};
use std::path::Path;

const VALID: [(&str, &str); 5] = [
    ("edge", include_str!("../../examples/edge.toml")),
    ("worker", include_str!("../../examples/worker.toml")),
    ("worker", include_str!("../../examples/storage.toml")),
    (
        "hub",
        "[hub]\nlisten = \"127.0.0.1:7000\"\ndata_dir = \"/tmp/h\"\n[[transcode.rung]]\nname = \"hd\"\nheight = 720\nvideo_kbps = 3000\n[ledger]\ndelivery_epoch = \"10s\"\n",
    ),
    (
        "ledger",
        "[ledger]\ngenesis = \"../genesis.json\"\nkey = \"validator.key\"\ndata_dir = \"data\"\napi = \"127.0.0.1:26650\"\np2p = \"127.0.0.1:26651\"\npeers = [\"127.0.0.1:26661\"]\n",
    ),
];

/// Parses `src` as `kind`; `Ok` when it is a valid config. An error must
/// render to a message.
fn parse(kind: &str, src: &str) -> bool {
    let path = Path::new("fuzz.toml");
    let result = match kind {
        "edge" => EdgeConfig::parse(path, src).map(drop),
        "hub" => HubConfig::parse(path, src).map(drop),
        "worker" => WorkerConfig::parse(path, src).map(drop),
        _ => LedgerConfig::parse(path, src).map(drop),
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    for kind in ["edge", "hub", "worker", "ledger"] {
        parse(kind, &raw);
    }
    let mut u = Unstructured::new(data);
    let Ok(i) = u.choose_index(VALID.len()) else {
        return;
    };
    let (kind, valid) = VALID[i];
    let changed = meshcast_fuzz::mutate(valid.as_bytes().to_vec(), &mut u);
    let text = String::from_utf8_lossy(&changed);
    let ok = parse(kind, &text);
    if text == valid {
        assert!(ok, "the {kind} config the fuzzer started from is refused");
    }
});
