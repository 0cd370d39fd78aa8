//! The catalog: videos and the files that make them up, in redb.

use crate::HubError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

const VIDEOS: TableDefinition<&str, &[u8]> = TableDefinition::new("videos");
/// `"{video}/{path}"` → JSON `FileRef`.
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
/// Sequence number → JSON `VideoEvent`: each video's arrival at ready or
/// failed, written in the transaction that made it so (webhooks read it).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("video_events");

/// A video reaching a final state, as the catalog recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoEvent {
    pub seq: u64,
    pub video: String,
    /// `video.ready` or `video.failed`.
    pub kind: String,
    /// Unix seconds.
    pub at: u64,
}

/// Appends the event for `before` → `after`, if it is one (a video newly
/// ready or newly failed).
fn record_transition(
    txn: &redb::WriteTransaction,
    before: Status,
    after: &VideoRecord,
) -> Result<(), HubError> {
    let kind = match after.status {
        Status::Ready => "video.ready",
        Status::Failed => "video.failed",
        _ => return Ok(()),
    };
    if before == after.status {
        return Ok(());
    }
    let mut events = txn.open_table(EVENTS).map_err(err)?;
    let seq = events
        .last()
        .map_err(err)?
        .map_or(1, |(k, _)| k.value() + 1);
    let event = VideoEvent {
        seq,
        video: after.id.clone(),
        kind: kind.into(),
        at: crate::nodes::now_secs(),
    };
    let json = serde_json::to_vec(&event).map_err(err)?;
    events.insert(seq, json.as_slice()).map_err(err)?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Uploading,
    Queued,
    Transcoding,
    Ready,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VideoRecord {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub upload_length: u64,
    pub percent: f64,
    pub reason: Option<String>,
    pub duration: Option<f64>,
    pub renditions: Vec<String>,
    pub created: u64,
    #[serde(default)]
    pub policy: Policy,
    /// Hex Ed25519 key that may sign tokens for this video.
    #[serde(default)]
    pub owner: Option<String>,
    /// The account it belongs to (`None`: made before accounts; the
    /// operator's).
    #[serde(default)]
    pub account: Option<String>,
    /// Distributed transcoding: each chunk, who encoded it and every
    /// attempt's outcome (absent when the HUB transcoded it whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<serde_json::Value>,
}

/// Who may get a playback token for a video.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The HUB issues a token to any viewer key that asks (rate-limited).
    #[default]
    Public,
    /// Only the owner's key issues tokens.
    Signed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub hash: String,
    pub size: u64,
    pub content_type: String,
}

pub struct Catalog {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> HubError {
    HubError::Catalog(e.to_string())
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Self, HubError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(VIDEOS).map_err(err)?;
        txn.open_table(FILES).map_err(err)?;
        txn.open_table(EVENTS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Catalog { db })
    }

    /// Up to `limit` events after sequence number `after`, oldest first.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<VideoEvent>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(EVENTS).map_err(err)?;
        let mut out = Vec::new();
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(err)?
            .take(limit)
        {
            let (_, v) = entry.map_err(err)?;
            out.push(serde_json::from_slice(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    pub fn put_video(&self, v: &VideoRecord) -> Result<(), HubError> {
        let json = serde_json::to_vec(v).map_err(err)?;
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(VIDEOS)
            .map_err(err)?
            .insert(v.id.as_str(), json.as_slice())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    pub fn video(&self, id: &str) -> Result<Option<VideoRecord>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(VIDEOS).map_err(err)?;
        match table.get(id).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    /// Applies `change` to a video in one write transaction.
    pub fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut VideoRecord),
    ) -> Result<Option<VideoRecord>, HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        let updated = {
            let mut table = txn.open_table(VIDEOS).map_err(err)?;
            let current: Option<VideoRecord> = match table.get(id).map_err(err)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(err)?),
                None => None,
            };
            match current {
                Some(mut v) => {
                    let before = v.status;
                    change(&mut v);
                    let json = serde_json::to_vec(&v).map_err(err)?;
                    table.insert(id, json.as_slice()).map_err(err)?;
                    Some((before, v))
                }
                None => None,
            }
        };
        if let Some((before, v)) = &updated {
            record_transition(&txn, *before, v)?;
        }
        txn.commit().map_err(err)?;
        Ok(updated.map(|(_, v)| v))
    }

    /// Removes a video and its files' records (the blobs stay: they are
    /// shared by hash with any other video that has the same bytes).
    pub fn delete_video(&self, id: &str) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(VIDEOS)
            .map_err(err)?
            .remove(id)
            .map_err(err)?;
        let (lo, hi) = (format!("{id}/"), format!("{id}0"));
        txn.open_table(FILES)
            .map_err(err)?
            .retain_in(lo.as_str()..hi.as_str(), |_, _| false)
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    pub fn videos(&self) -> Result<Vec<VideoRecord>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(VIDEOS).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(err)? {
            let (_, v) = entry.map_err(err)?;
            out.push(serde_json::from_slice::<VideoRecord>(v.value()).map_err(err)?);
        }
        out.sort_by_key(|v| v.created);
        Ok(out)
    }

    /// Records a video's files and marks it ready, atomically: a video is
    /// never ready with some of its files missing.
    pub fn publish(
        &self,
        id: &str,
        files: &[(String, FileRef)],
        duration: f64,
        renditions: Vec<String>,
    ) -> Result<(), HubError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(FILES).map_err(err)?;
            for (path, f) in files {
                let json = serde_json::to_vec(f).map_err(err)?;
                table
                    .insert(format!("{id}/{path}").as_str(), json.as_slice())
                    .map_err(err)?;
            }
            let mut videos = txn.open_table(VIDEOS).map_err(err)?;
            let current = videos
                .get(id)
                .map_err(err)?
                .map(|v| serde_json::from_slice::<VideoRecord>(v.value()));
            let mut v = current
                .ok_or_else(|| HubError::Catalog(format!("video {id} vanished")))?
                .map_err(err)?;
            let before = v.status;
            v.status = Status::Ready;
            v.percent = 100.0;
            v.duration = Some(duration);
            v.renditions = renditions;
            let json = serde_json::to_vec(&v).map_err(err)?;
            videos.insert(id, json.as_slice()).map_err(err)?;
            drop(videos);
            record_transition(&txn, before, &v)?;
        }
        txn.commit().map_err(err)
    }

    pub fn file(&self, id: &str, path: &str) -> Result<Option<FileRef>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(FILES).map_err(err)?;
        match table.get(format!("{id}/{path}").as_str()).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }

    /// A video's published files: (path, reference), by path.
    pub fn files(&self, id: &str) -> Result<Vec<(String, FileRef)>, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(FILES).map_err(err)?;
        let (lo, hi) = (format!("{id}/"), format!("{id}0"));
        let mut out = Vec::new();
        for row in table.range(lo.as_str()..hi.as_str()).map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let path = k.value()[lo.len()..].to_string();
            out.push((path, serde_json::from_slice(v.value()).map_err(err)?));
        }
        Ok(out)
    }

    /// Total size of a video's published files.
    pub fn total_bytes(&self, id: &str) -> Result<u64, HubError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(FILES).map_err(err)?;
        let (lo, hi) = (format!("{id}/"), format!("{id}0"));
        let mut total = 0;
        for row in table.range(lo.as_str()..hi.as_str()).map_err(err)? {
            let (_, v) = row.map_err(err)?;
            total += serde_json::from_slice::<FileRef>(v.value())
                .map_err(err)?
                .size;
        }
        Ok(total)
    }

    /// Videos a restart caught queued or mid-transcode go back to queued.
    pub fn requeue_interrupted(&self) -> Result<Vec<String>, HubError> {
        let mut ids = Vec::new();
        for v in self.videos()? {
            if matches!(v.status, Status::Queued | Status::Transcoding) {
                self.update(&v.id, |v| {
                    v.status = Status::Queued;
                    v.percent = 0.0;
                })?;
                ids.push(v.id);
            }
        }
        Ok(ids)
    }
}
