//! `meshcast worker` configuration: the node's key and HUB, and what work
//! it takes. A transcoding worker opens no port: it pulls jobs from its
//! HUB. A storage node listens: the HUB puts shards on it and audits it,
//! edges read shards from it.

use crate::error::ConfError;
use crate::units::{ByteSize, Seconds};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    pub node: WorkerNode,
    pub worker: WorkerSection,
}

/// `[node]`: who the worker is and which HUB it works for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerNode {
    /// Ed25519 node key (`meshcast keys gen --out FILE`), mode 0600; its
    /// stake (bonded on the HUB's ledger) admits the worker.
    pub key: PathBuf,
    /// The HUB's base URL, e.g. "https://hub.example".
    pub hub: String,
    /// PEM certificate(s) to trust for an https `hub` besides the system's.
    pub hub_ca: Option<PathBuf>,
    #[serde(default = "default_heartbeat")]
    pub heartbeat: Seconds,
}

/// `[worker]`: the work it takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// Work this node does: "transcode", "storage", or both.
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
    /// Jobs worked on at once (each runs one ffmpeg, which uses every core).
    #[serde(default = "default_parallel")]
    pub parallel_jobs: usize,
    /// Where sources and outputs of jobs in progress are kept.
    pub scratch_dir: PathBuf,
    /// The ffmpeg program to run (a path, or a name looked up in PATH).
    #[serde(default = "default_ffmpeg")]
    pub ffmpeg: PathBuf,
    /// Storage role: where shards are kept.
    pub storage_dir: Option<PathBuf>,
    /// Storage role: how many bytes of shards this node offers.
    pub capacity: Option<ByteSize>,
    /// Storage role: the address to listen on for the HUB and edges.
    pub listen: Option<SocketAddr>,
    /// Storage role: the base URL others reach `listen` at (default
    /// `http://{listen}`, which needs a specific address).
    pub advertise: Option<String>,
}

impl WorkerSection {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The base URL a storage node registers.
    pub fn storage_url(&self) -> Option<String> {
        self.advertise
            .clone()
            .or_else(|| self.listen.map(|l| format!("http://{l}")))
    }
}

fn default_ffmpeg() -> PathBuf {
    PathBuf::from("ffmpeg")
}

fn default_heartbeat() -> Seconds {
    Seconds(Duration::from_secs(10))
}
fn default_roles() -> Vec<String> {
    vec!["transcode".into()]
}
fn default_parallel() -> usize {
    1
}

/// Roles a worker may take.
pub const WORKER_ROLES: [&str; 2] = ["transcode", "storage"];

impl WorkerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfError> {
        crate::load::load(path, Self::validate)
    }

    pub fn parse(path: &Path, src: &str) -> Result<Self, ConfError> {
        crate::load::parse(path, src, Self::validate)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let hub = &self.node.hub;
        if !(hub.starts_with("http://") || hub.starts_with("https://")) {
            return Err((
                "node.hub".into(),
                format!("{hub:?} is not a base URL like \"https://hub.example\""),
            ));
        }
        if self.worker.roles.is_empty() {
            return Err((
                "worker.roles".into(),
                "name at least one role: roles = [\"transcode\"]".into(),
            ));
        }
        if let Some((i, r)) = self
            .worker
            .roles
            .iter()
            .enumerate()
            .find(|(_, r)| !WORKER_ROLES.contains(&r.as_str()))
        {
            return Err((
                format!("worker.roles[{i}]"),
                format!("unknown role {r:?}; a worker takes {WORKER_ROLES:?}"),
            ));
        }
        if !(1..=64).contains(&self.worker.parallel_jobs) {
            return Err(("worker.parallel_jobs".into(), "1 to 64".into()));
        }
        if self.worker.has_role("storage") {
            self.validate_storage()?;
        }
        Ok(())
    }

    fn validate_storage(&self) -> Result<(), (String, String)> {
        let w = &self.worker;
        let need = |key: &str, example: &str| {
            (
                format!("worker.{key}"),
                format!("the storage role needs {key}, e.g. {key} = {example}"),
            )
        };
        if w.storage_dir.is_none() {
            return Err(need("storage_dir", "\"/var/lib/meshcast/shards\""));
        }
        if w.capacity.is_none_or(|c| c.0 == 0) {
            return Err(need("capacity", "\"100GiB\""));
        }
        let Some(listen) = w.listen else {
            return Err(need("listen", "\"0.0.0.0:9100\""));
        };
        match &w.advertise {
            Some(a) if !(a.starts_with("http://") || a.starts_with("https://")) => Err((
                "worker.advertise".into(),
                format!("{a:?} is not a base URL like \"http://203.0.113.5:9100\""),
            )),
            None if listen.ip().is_unspecified() => Err((
                "worker.advertise".into(),
                format!("listen = \"{listen}\" is every address: say which one others reach, e.g. advertise = \"http://203.0.113.5:{}\"", listen.port()),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "[node]\nkey = \"worker.key\"\nhub = \"http://127.0.0.1:8000\"\n\n[worker]\nscratch_dir = \"scratch\"\n";

    #[test]
    fn defaults_and_errors_that_say_where() {
        let c = WorkerConfig::parse(Path::new("worker.toml"), OK).unwrap();
        assert_eq!(c.worker.roles, ["transcode"]);
        assert_eq!(c.worker.parallel_jobs, 1);
        let bad = OK.replace(
            "scratch\"\n",
            "scratch\"\nroles = [\"transcode\", \"mining\"]\n",
        );
        let e = WorkerConfig::parse(Path::new("worker.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker.roles[1]") && e.contains("mining"), "{e}");
        let storage = OK.replace("scratch\"\n", "scratch\"\nroles = [\"storage\"]\n");
        let e = WorkerConfig::parse(Path::new("worker.toml"), &storage)
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker.storage_dir"), "{e}");
        let full = storage.replace(
            "roles = [\"storage\"]\n",
            "roles = [\"storage\"]\nstorage_dir = \"s\"\ncapacity = \"1GiB\"\nlisten = \"0.0.0.0:9100\"\n",
        );
        let e = WorkerConfig::parse(Path::new("worker.toml"), &full)
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker.advertise"), "{e}");
        let c = WorkerConfig::parse(
            Path::new("worker.toml"),
            &full.replace("0.0.0.0", "127.0.0.1"),
        )
        .unwrap();
        assert_eq!(c.worker.storage_url().unwrap(), "http://127.0.0.1:9100");
        assert_eq!(c.worker.capacity.unwrap().0, 1 << 30);
        let bad = OK.replace("http://127.0.0.1:8000", "127.0.0.1:8000");
        let e = WorkerConfig::parse(Path::new("worker.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("worker.toml:3:") && e.contains("node.hub"),
            "{e}"
        );
    }
}
