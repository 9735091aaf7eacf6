//! [`CommandLog`] on sled: one tree of entries keyed by big-endian index (so sled's order is
//! log order) and one tree for the snapshot. Every append and snapshot is flushed before it
//! returns, which is what "durable before applied" needs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::codec::{decode, decode_entry, encode};
use super::{CommandLog, Index};
use crate::error::StoreError;
use crate::state::{ClusterState, Command};

const ENTRIES: &str = "entries";
const META: &str = "meta";
const SNAPSHOT_KEY: &str = "snapshot";
/// Bumped when the snapshot's layout changes, so an old file is refused, not misread.
const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    index: Index,
    state: ClusterState,
}

/// A command log in a sled database directory.
pub struct SledLog {
    db: sled::Db,
    entries: sled::Tree,
    meta: sled::Tree,
    /// The last index appended or covered by the snapshot, read once at open: decoding the
    /// snapshot on every append would make appends cost as much as the state is large.
    last: Index,
}

impl SledLog {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> Result<SledLog, StoreError> {
        let db = sled::open(dir).map_err(StoreError::sled(format!("open {}", dir.display())))?;
        let entries = db
            .open_tree(ENTRIES)
            .map_err(StoreError::sled("open the entries tree"))?;
        let meta = db
            .open_tree(META)
            .map_err(StoreError::sled("open the meta tree"))?;
        let mut log = SledLog {
            db,
            entries,
            meta,
            last: 0,
        };
        let last_entry = match log
            .entries
            .last()
            .map_err(StoreError::sled("read the last entry"))?
        {
            Some((key, _)) => key_index(&key)?,
            None => 0,
        };
        log.last = last_entry.max(log.snapshot_index()?);
        Ok(log)
    }

    /// Writes `cmd` at the next index without flushing.
    fn insert(&mut self, cmd: &Command) -> Result<Index, StoreError> {
        let index = self.last + 1;
        let bytes = encode(cmd, &format!("entry {index}"))?;
        self.entries
            .insert(index.to_be_bytes(), bytes)
            .map_err(StoreError::sled(format!("append entry {index}")))?;
        self.last = index;
        Ok(index)
    }

    fn snapshot_index(&self) -> Result<Index, StoreError> {
        Ok(self.load_snapshot_file()?.map_or(0, |s| s.index))
    }

    fn load_snapshot_file(&self) -> Result<Option<SnapshotFile>, StoreError> {
        let Some(bytes) = self
            .meta
            .get(SNAPSHOT_KEY)
            .map_err(StoreError::sled("read the snapshot"))?
        else {
            return Ok(None);
        };
        let file: SnapshotFile = decode(&bytes).map_err(StoreError::CorruptSnapshot)?;
        if file.format != SNAPSHOT_FORMAT {
            return Err(StoreError::CorruptSnapshot(format!(
                "format {} (this build reads format {SNAPSHOT_FORMAT})",
                file.format
            )));
        }
        Ok(Some(file))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(StoreError::sled("flush"))?;
        Ok(())
    }
}

fn key_index(key: &[u8]) -> Result<Index, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        StoreError::Invalid(format!("an entry key of {} bytes (expected 8)", key.len()))
    })?;
    Ok(Index::from_be_bytes(bytes))
}

impl CommandLog for SledLog {
    fn append(&mut self, cmd: &Command) -> Result<Index, StoreError> {
        let index = self.insert(cmd)?;
        self.flush()?;
        Ok(index)
    }

    fn append_all(&mut self, cmds: &[Command]) -> Result<Index, StoreError> {
        for cmd in cmds {
            self.insert(cmd)?;
        }
        self.flush()?;
        Ok(self.last)
    }

    fn read_after(&self, index: Index) -> Result<Vec<(Index, Command)>, StoreError> {
        let mut out = vec![];
        let start = index.saturating_add(1);
        for item in self.entries.range(start.to_be_bytes()..) {
            let (key, value) = item.map_err(StoreError::sled("read entries"))?;
            let i = key_index(&key)?;
            let cmd =
                decode_entry(&value).map_err(|msg| StoreError::CorruptEntry { index: i, msg })?;
            out.push((i, cmd));
        }
        Ok(out)
    }

    fn last_index(&self) -> Result<Index, StoreError> {
        Ok(self.last)
    }

    fn save_snapshot(&mut self, index: Index, state: &ClusterState) -> Result<(), StoreError> {
        let file = SnapshotFile {
            format: SNAPSHOT_FORMAT,
            index,
            state: state.clone(),
        };
        let bytes = encode(&file, &format!("the snapshot at {index}"))?;
        self.meta
            .insert(SNAPSHOT_KEY, bytes)
            .map_err(StoreError::sled("write the snapshot"))?;
        self.flush()?;
        // The snapshot is durable: the entries it covers are no longer needed.
        for item in self.entries.range(..=index.to_be_bytes()) {
            let (key, _) = item.map_err(StoreError::sled("compact entries"))?;
            self.entries
                .remove(key)
                .map_err(StoreError::sled("compact entries"))?;
        }
        self.flush()
    }

    fn load_snapshot(&self) -> Result<Option<(Index, ClusterState)>, StoreError> {
        Ok(self.load_snapshot_file()?.map(|f| (f.index, f.state)))
    }
}
