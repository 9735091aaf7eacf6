//! [`CommandLog`] on sled: one tree of entries keyed by big-endian index (so sled's order is
//! log order) and one tree for the snapshot. Every append and snapshot is flushed before it
//! returns, which is what "durable before applied" needs.

use std::path::{Path, PathBuf};

use super::codec::{decode_entry, decode_snapshot, encode_entry, encode_snapshot};
use super::mark::{Mark, MarkFile};
use super::{CommandLog, Index};
use crate::error::StoreError;
use crate::state::{ClusterState, Command};

const ENTRIES: &str = "entries";
const META: &str = "meta";
const SNAPSHOT_KEY: &str = "snapshot";

/// A command log in a sled database directory, with its high-water mark in the file beside it
/// (`<dir>.mark`).
pub struct SledLog {
    dir: PathBuf,
    db: sled::Db,
    entries: sled::Tree,
    meta: sled::Tree,
    /// The last index appended or covered by the snapshot, read once at open: decoding the
    /// snapshot on every append would make appends cost as much as the state is large.
    last: Index,
    mark_file: MarkFile,
    mark: Option<Mark>,
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
        let (mark_file, mark) = MarkFile::open(&dir.with_extension("mark"))?;
        let mut log = SledLog {
            dir: dir.to_path_buf(),
            db,
            entries,
            meta,
            last: 0,
            mark_file,
            mark,
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
        let bytes = encode_entry(cmd, index)?;
        self.entries
            .insert(index.to_be_bytes(), bytes)
            .map_err(StoreError::sled(format!("append entry {index}")))?;
        self.last = index;
        Ok(index)
    }

    fn snapshot_index(&self) -> Result<Index, StoreError> {
        Ok(self.load_snapshot()?.map_or(0, |(index, _)| index))
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
        let bytes = encode_snapshot(index, state)?;
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

    fn save_mark(&mut self, mark: Mark) -> Result<(), StoreError> {
        self.mark_file.save(mark)?;
        self.mark = Some(mark);
        Ok(())
    }

    fn mark(&self) -> Option<Mark> {
        self.mark
    }

    fn location(&self) -> String {
        format!(
            "{} (high-water mark {})",
            self.dir.display(),
            self.mark_file.path().display()
        )
    }

    fn load_snapshot(&self) -> Result<Option<(Index, ClusterState)>, StoreError> {
        let Some(bytes) = self
            .meta
            .get(SNAPSHOT_KEY)
            .map_err(StoreError::sled("read the snapshot"))?
        else {
            return Ok(None);
        };
        decode_snapshot(&bytes)
            .map(Some)
            .map_err(StoreError::CorruptSnapshot)
    }
}
