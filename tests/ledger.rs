//! `meshcast ledger init`: a genesis every node can load and validator
//! homes with 0600 keys and configs that pass their own checks.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn ledger_init_writes_genesis_and_validator_homes() {
    let dir = std::env::temp_dir().join(format!("meshcast-ledger-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_meshcast"))
            .args(["ledger", "init", "--validators", "4", "--dir"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let genesis: meshcast_ledger::Genesis =
        serde_json::from_slice(&std::fs::read(dir.join("genesis.json")).unwrap()).unwrap();
    assert_eq!(genesis.validators.len(), 4);
    let state = meshcast_ledger::State::from_genesis(&genesis).unwrap();
    assert_eq!(state.authorities.len(), 4);
    let mut p2p = Vec::new();
    for k in 1..=4 {
        let home = dir.join(format!("node{k}"));
        let key = home.join("validator.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let public = meshcast_control::identity::NodeKey::load(&key)
            .unwrap()
            .public()
            .to_bytes();
        assert!(genesis.validators.iter().any(|v| v.address == public));
        let c = meshcast_conf::LedgerConfig::load(&home.join("ledger.toml")).unwrap();
        assert_eq!(c.ledger.peers.len(), 3);
        p2p.push(c.ledger.p2p);
    }
    p2p.sort();
    p2p.dedup();
    assert_eq!(p2p.len(), 4, "each validator has its own address");
    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    std::fs::remove_dir_all(&dir).unwrap();
}
