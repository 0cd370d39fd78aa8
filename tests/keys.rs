//! `meshcast keys gen`: a private node key and its id.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn keys_gen_writes_a_private_key_and_never_overwrites() {
    let dir = std::env::temp_dir().join(format!("meshcast-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("node.key");
    let _ = std::fs::remove_file(&key);
    let out = Command::new(env!("CARGO_BIN_EXE_meshcast"))
        .args(["keys", "gen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text
        .lines()
        .find_map(|l| l.split("node id ").nth(1))
        .unwrap()
        .trim();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("public key "))
        .unwrap();
    assert_eq!(public.len(), 64, "{text}");
    assert_eq!(id.len(), 32, "{text}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&key).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_meshcast"))
        .args(["keys", "gen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}
