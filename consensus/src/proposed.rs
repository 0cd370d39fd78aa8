//! What this validator proposed, kept on disk until the height commits. A
//! proposer asked again for the same height and round — after a crash and
//! WAL replay, say — must propose the very same block: a different one
//! would be two signed proposals for one round (equivocation).

use crate::codec::{decode_block, encode_block};
use crate::context::BlockValue;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct ProposalLog {
    dir: PathBuf,
}

impl ProposalLog {
    pub fn open(dir: &Path) -> std::io::Result<ProposalLog> {
        std::fs::create_dir_all(dir)?;
        Ok(ProposalLog {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, height: u64, round: i64) -> PathBuf {
        self.dir.join(format!("{height}-{round}.json"))
    }

    /// The block proposed at this height and round, if any (a file that
    /// does not decode counts as none: it was never renamed into place).
    pub fn get(&self, height: u64, round: i64) -> Option<BlockValue> {
        let bytes = std::fs::read(self.path(height, round)).ok()?;
        decode_block(&bytes).ok()
    }

    /// Durably records a proposal before it is published.
    pub fn put(&self, height: u64, round: i64, value: &BlockValue) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{height}-{round}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&encode_block(&value.block))?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.path(height, round))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Forgets proposals for heights up to `height` (committed).
    pub fn prune(&self, height: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let h = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|h| h.parse::<u64>().ok());
            if h.is_some_and(|h| h <= height) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcast_ledger::Block;

    #[test]
    fn a_proposal_survives_reopening_until_pruned() {
        let dir = std::env::temp_dir().join(format!("meshcast-proposed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = ProposalLog::open(&dir).unwrap();
        let v = BlockValue::new(Block {
            height: 4,
            time_ms: 9,
            proposer: [1; 32],
            txs: vec![],
        });
        assert!(log.get(4, 0).is_none());
        log.put(4, 0, &v).unwrap();
        let again = ProposalLog::open(&dir).unwrap();
        assert_eq!(again.get(4, 0).unwrap().id, v.id);
        assert!(again.get(4, 1).is_none());
        again.prune(3);
        assert!(again.get(4, 0).is_some());
        again.prune(4);
        assert!(again.get(4, 0).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
