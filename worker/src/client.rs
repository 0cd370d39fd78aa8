//! The worker's side of the HUB's worker protocol: every call a signed
//! envelope, except bulk bytes, which carry the lease's capability.

use meshcast_control::envelope::Envelope;
use meshcast_control::identity::NodeKey;
use meshcast_control::messages::{self, Heartbeat, Register};
use meshcast_control::transcoding::{self, Commitment, Job, Progress};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Hub(String),
    #[error("{0}")]
    Transcode(#[from] meshcast_transcode::TranscodeError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("node key: {0}")]
    Key(#[from] meshcast_control::identity::KeyError),
}

/// The HUB's verdict on a commitment.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CommitAnswer {
    pub accepted: bool,
    pub outcome: String,
    #[serde(default)]
    pub slashed: bool,
}

pub struct Client {
    http: reqwest::Client,
    hub: String,
    key: NodeKey,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hub_error(what: &str, status: u16, body: &[u8]) -> WorkerError {
    WorkerError::Hub(format!(
        "{what} refused ({status}): {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    ))
}

impl Client {
    /// A client for `hub` (base URL) signing with `key`; `hub_ca` adds PEM
    /// certificates to trust besides the system's.
    pub fn new(hub: &str, key: NodeKey, hub_ca: Option<&Path>) -> Result<Client, WorkerError> {
        // Longer than the HUB's 20 s long-poll, and than a commit's check.
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(600));
        if let Some(path) = hub_ca {
            let pem = std::fs::read(path)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                WorkerError::Hub(format!("{}: not PEM certificates: {e}", path.display()))
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| WorkerError::Hub(e.to_string()))?;
        Ok(Client {
            http,
            hub: hub.trim_end_matches('/').to_string(),
            key,
        })
    }

    pub fn id(&self) -> String {
        self.key.id()
    }

    async fn post(
        &self,
        path: &str,
        domain: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), WorkerError> {
        let env = Envelope::seal(&self.key, domain, body, now_secs())
            .map_err(|e| WorkerError::Hub(e.to_string()))?;
        let resp = self
            .http
            .post(format!("{}{path}", self.hub))
            .header("content-type", "application/octet-stream")
            .body(env.encode())
            .send()
            .await
            .map_err(|e| WorkerError::Hub(format!("{}{path}: {e}", self.hub)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| WorkerError::Hub(e.to_string()))?;
        Ok((status, bytes.to_vec()))
    }

    /// Registers a worker that opens no port.
    pub async fn register(&self, roles: &[String]) -> Result<(), WorkerError> {
        self.register_at(roles, "", 0).await.map(|_| ())
    }

    /// Registers with the base URL others reach this node at and the bytes
    /// it offers; returns the HUB's public key (hex), which signs what the
    /// HUB asks of it.
    pub async fn register_at(
        &self,
        roles: &[String],
        addr: &str,
        capacity_bytes: u64,
    ) -> Result<String, WorkerError> {
        let reg = Register {
            addr: addr.to_string(),
            roles: roles.to_vec(),
            capacity_bytes,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let body = serde_json::to_vec(&reg).expect("serializes");
        match self
            .post("/v1/nodes/register", messages::REGISTER, body)
            .await?
        {
            (200, b) => {
                let info = serde_json::from_slice::<messages::HubInfo>(&b)
                    .map_err(|e| WorkerError::Hub(format!("registration answer: {e}")))?;
                if !info.admission.is_none_or(|a| a.admitted()) {
                    tracing::warn!(?roles, "registered, but not admitted: bond the stake its roles need from this node's key");
                }
                Ok(info.hub)
            }
            (s, b) => Err(hub_error("registration", s, &b)),
        }
    }

    /// Ok(false): the HUB no longer knows this node.
    pub async fn heartbeat(&self) -> Result<bool, WorkerError> {
        let hb = Heartbeat {
            load: 0.0,
            cache_bytes: 0,
            bytes_out: 0,
        };
        let body = serde_json::to_vec(&hb).expect("serializes");
        match self
            .post("/v1/nodes/heartbeat", messages::HEARTBEAT, body)
            .await?
        {
            (200, _) => Ok(true),
            (404, _) => Ok(false),
            (s, b) => Err(hub_error("heartbeat", s, &b)),
        }
    }

    /// A job, or `None` when the HUB had none within its long-poll.
    pub async fn lease(&self) -> Result<Option<Job>, WorkerError> {
        match self
            .post("/v1/work/lease", transcoding::LEASE, b"{}".to_vec())
            .await?
        {
            (200, b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| WorkerError::Hub(format!("job: {e}"))),
            (204, _) => Ok(None),
            (s, b) => Err(hub_error("lease", s, &b)),
        }
    }

    pub async fn fetch_source(&self, job: &Job, dest: &Path) -> Result<(), WorkerError> {
        let resp = self
            .http
            .get(format!("{}{}", self.hub, job.source_path))
            .bearer_auth(&job.capability)
            .send()
            .await
            .map_err(|e| WorkerError::Hub(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| WorkerError::Hub(e.to_string()))?;
        if status != 200 {
            return Err(hub_error("source", status, &bytes));
        }
        tokio::fs::write(dest, &bytes).await?;
        Ok(())
    }

    /// Uploads one output file (`rung/file`).
    pub async fn upload(
        &self,
        job: &Job,
        rung: &str,
        file: &str,
        bytes: Vec<u8>,
    ) -> Result<(), WorkerError> {
        let resp = self
            .http
            .put(format!("{}{}/{rung}/{file}", self.hub, job.upload_path))
            .bearer_auth(&job.capability)
            .body(bytes)
            .send()
            .await
            .map_err(|e| WorkerError::Hub(e.to_string()))?;
        let status = resp.status().as_u16();
        if status != 204 {
            let b = resp.bytes().await.unwrap_or_default();
            return Err(hub_error(&format!("upload of {rung}/{file}"), status, &b));
        }
        Ok(())
    }

    pub async fn progress(&self, job: &Job, fraction: f64) -> Result<(), WorkerError> {
        let p = Progress {
            video: job.video.clone(),
            chunk: job.chunk,
            attempt: job.attempt,
            fraction,
        };
        match self
            .post(
                "/v1/work/progress",
                transcoding::PROGRESS,
                serde_json::to_vec(&p).expect("serializes"),
            )
            .await?
        {
            (204, _) => Ok(()),
            (s, b) => Err(hub_error("progress", s, &b)),
        }
    }

    /// Commits; the answer comes once the HUB has checked the output.
    pub async fn commit(&self, c: &Commitment) -> Result<CommitAnswer, WorkerError> {
        match self
            .post(
                "/v1/work/commit",
                transcoding::COMMIT,
                serde_json::to_vec(c).expect("serializes"),
            )
            .await?
        {
            (200 | 422, b) => {
                serde_json::from_slice(&b).map_err(|e| WorkerError::Hub(format!("verdict: {e}")))
            }
            (s, b) => Err(hub_error("commit", s, &b)),
        }
    }
}
