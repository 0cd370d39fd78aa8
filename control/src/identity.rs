//! Node identity: an Ed25519 key in a 0600 file; the node id is derived
//! from the public key, so it cannot be claimed without the key.

use ed25519_dalek::{SigningKey, VerifyingKey};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a meshcast node key (expected 64 hex digits)")]
    Format(String),
    #[error("{0}: readable by others (mode {1:o}); run `chmod 600` on it")]
    Permissions(String, u32),
    #[error("{0} exists; refusing to overwrite a key")]
    Exists(String),
    #[error("no randomness from the OS: {0}")]
    Random(String),
}

pub struct NodeKey {
    signing: SigningKey,
}

/// A node id: the first 16 bytes of BLAKE3 over the public key, as hex.
pub fn node_id(public: &VerifyingKey) -> String {
    let hash = blake3::derive_key("meshcast node id v1", public.as_bytes());
    hex::encode(&hash[..16])
}

impl NodeKey {
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(NodeKey {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        NodeKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// Writes the key as hex to a new file with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let shown = path.display().to_string();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => KeyError::Exists(shown.clone()),
                _ => KeyError::Io {
                    path: shown.clone(),
                    source: e,
                },
            })?;
        f.write_all(format!("{}\n", hex::encode(self.signing.to_bytes())).as_bytes())
            .map_err(|e| KeyError::Io {
                path: shown,
                source: e,
            })
    }

    /// Loads a key, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| KeyError::Io {
            path: shown.clone(),
            source: e,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions(shown, mode));
        }
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io {
            path: shown.clone(),
            source: e,
        })?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| KeyError::Format(shown))?;
        Ok(Self::from_seed(seed))
    }

    pub fn public(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn id(&self) -> String {
        node_id(&self.public())
    }

    /// The secret seed, for handing the same identity to a signer that
    /// does not take ed25519-dalek keys (consensus, libp2p). Keep it in
    /// memory only.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The X25519 secret content keys are wrapped for: the Ed25519 key's
    /// scalar (as libsodium's `crypto_sign_ed25519_sk_to_curve25519`), so
    /// a node needs no second key file. Keep it in memory only.
    pub fn x25519_secret(&self) -> [u8; 32] {
        self.signing.to_scalar_bytes()
    }

    pub(crate) fn signing(&self) -> &SigningKey {
        &self.signing
    }
}

/// The X25519 public key that goes with a node's Ed25519 public key (the
/// birationally equivalent Montgomery point).
pub fn x25519_public(public: &VerifyingKey) -> [u8; 32] {
    public.to_montgomery().to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_key_wrapped_for_a_nodes_public_key_opens_with_its_key_file() {
        let node = NodeKey::generate().unwrap();
        let public = x25519_public(&node.public());
        assert_eq!(meshcast_shards::public_key(&node.x25519_secret()), public);
        let key = meshcast_shards::ContentKey::random();
        let w = meshcast_shards::wrap_key(&key, &public, "v").unwrap();
        assert_eq!(
            meshcast_shards::unwrap_key(&w, &node.x25519_secret(), "v").unwrap(),
            key
        );
        let other = NodeKey::generate().unwrap();
        assert!(meshcast_shards::unwrap_key(&w, &other.x25519_secret(), "v").is_err());
    }

    #[test]
    fn save_load_and_refuse_loose_permissions() {
        let dir = std::env::temp_dir().join(format!("meshcast-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let _ = std::fs::remove_file(&path);
        let key = NodeKey::generate().unwrap();
        key.save(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(NodeKey::load(&path).unwrap().id(), key.id());
        assert!(matches!(key.save(&path), Err(KeyError::Exists(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            NodeKey::load(&path),
            Err(KeyError::Permissions(_, 0o644))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = NodeKey::from_seed([1; 32]);
        let b = NodeKey::from_seed([2; 32]);
        assert_eq!(a.id(), NodeKey::from_seed([1; 32]).id());
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().len(), 32);
    }
}
