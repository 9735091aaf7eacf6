//! [`RaftStorage`]: raft-rs's [`Storage`] on sled, for a replica's own copy of the log.
//!
//! Trees: `raft/entries` (index, big-endian, so sled's order is log order → the entry) and
//! `raft/meta` (the hard state, the conf state with the members' addresses, and the latest
//! snapshot with its metadata).
//! Each value is a raft protobuf message sealed in a [`convoy_envelope`] record of its own
//! kind, so a damaged or foreign value is named instead of decoded. Every mutation is flushed
//! before it returns: raft-rs sends a node's "persisted" messages only after the storage says
//! so, and a vote or an entry it acknowledged must survive a crash.
//!
//! Semantics follow raft-rs's `MemStorage`: entries run contiguously from `first_index` to
//! `last_index`; everything up to the snapshot's index is compacted away.

use std::sync::{Mutex, MutexGuard};

use convoy_envelope::{Header, Kind};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{Error, GetEntriesContext, RaftState, Result, Storage, StorageError};

use super::AddressBook;

const ENTRIES: &str = "raft/entries";
const META: &str = "raft/meta";
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const SNAPSHOT: &str = "snapshot";
const INCARNATION: &str = "incarnation";
const ADDRESS_BOOK: &str = "address_book";
const REMOVED: &str = "removed";

const ENTRY: Kind = Kind(*b"RENT");
const HARD: Kind = Kind(*b"RHST");
const CONF: Kind = Kind(*b"RCST");
const SNAP: Kind = Kind(*b"RSNP");
const BOOK: Kind = Kind(*b"RADB");
const VERSION: u16 = 1;

/// What is kept in memory: the bounds of the stored entries and the snapshot's metadata.
#[derive(Default)]
struct Bounds {
    /// The snapshot's index and term (0, 0 before any).
    snapshot: (u64, u64),
    /// The last stored entry's index (the snapshot's index when there are none).
    last: u64,
}

/// A replica's Raft log, hard state and snapshot in a sled database.
pub struct RaftStorage {
    entries: sled::Tree,
    meta: sled::Tree,
    db: sled::Db,
    bounds: Mutex<Bounds>,
    incarnation: u64,
}

/// A storage failure raft-rs can carry: it stops the node (the coordinator fails stop).
fn failure(what: impl std::fmt::Display) -> Error {
    Error::Store(StorageError::Other(what.to_string().into()))
}

fn seal(kind: Kind, msg: &impl protobuf::Message) -> Result<Vec<u8>> {
    let payload = msg.write_to_bytes()?;
    Ok(convoy_envelope::seal(
        Header {
            kind,
            version: VERSION,
            tag: 0,
        },
        &payload,
    ))
}

fn open<M: protobuf::Message>(kind: Kind, bytes: &[u8], what: &str) -> Result<M> {
    let (_, payload) = convoy_envelope::open(bytes, kind, VERSION..=VERSION)
        .map_err(|e| failure(format!("raft storage: {what} {e}")))?;
    M::parse_from_bytes(payload)
        .map_err(|e| failure(format!("raft storage: {what} does not decode: {e}")))
}

fn index_of(key: &[u8]) -> Result<u64> {
    let b: [u8; 8] = key
        .try_into()
        .map_err(|_| failure(format!("raft storage: an entry key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(b))
}

impl RaftStorage {
    /// Opens (or creates) the storage in `db`'s `raft/` trees.
    pub fn open(db: &sled::Db) -> Result<RaftStorage> {
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| failure(format!("raft storage: open {name}: {e}")))
        };
        let s = RaftStorage {
            entries: tree(ENTRIES)?,
            meta: tree(META)?,
            db: db.clone(),
            bounds: Mutex::default(),
            incarnation: 0,
        };
        let mut s = s;
        s.incarnation = match s
            .meta
            .get(INCARNATION)
            .map_err(sled_failure("read the incarnation"))?
        {
            Some(v) => index_of(&v)?,
            None => {
                let fresh = rand::random::<u64>();
                s.meta
                    .insert(INCARNATION, &fresh.to_be_bytes())
                    .map_err(sled_failure("write the incarnation"))?;
                s.flush()?;
                fresh
            }
        };
        let snapshot = s.snapshot_metadata()?;
        let snapshot = (snapshot.index, snapshot.term);
        let last = match s
            .entries
            .last()
            .map_err(sled_failure("read the last entry"))?
        {
            Some((k, _)) => index_of(&k)?,
            None => snapshot.0,
        };
        *s.lock() = Bounds { snapshot, last };
        Ok(s)
    }

    /// Chosen when this storage was created (see `PeerMessage.incarnation`).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn lock(&self) -> MutexGuard<'_, Bounds> {
        self.bounds.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(sled_failure("flush"))?;
        Ok(())
    }

    fn get_meta<M: protobuf::Message>(&self, key: &str, kind: Kind) -> Result<Option<M>> {
        match self
            .meta
            .get(key)
            .map_err(sled_failure("read the meta tree"))?
        {
            Some(v) => open(kind, &v, key).map(Some),
            None => Ok(None),
        }
    }

    fn snapshot_metadata(&self) -> Result<SnapshotMetadata> {
        Ok(self
            .get_meta::<Snapshot>(SNAPSHOT, SNAP)?
            .map(|mut s| s.take_metadata())
            .unwrap_or_default())
    }

    /// The stored snapshot's index and data (what a restarting replica rebuilds its state
    /// from), if there is one.
    pub fn stored_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self
            .get_meta::<Snapshot>(SNAPSHOT, SNAP)?
            .map(|s| (s.get_metadata().index, s.data.to_vec())))
    }

    /// Stores `hs` durably.
    pub fn set_hard_state(&self, hs: &HardState) -> Result<()> {
        self.meta
            .insert(HARD_STATE, seal(HARD, hs)?)
            .map_err(sled_failure("write the hard state"))?;
        self.flush()
    }

    /// Stores `cs` durably.
    pub fn set_conf_state(&self, cs: &ConfState) -> Result<()> {
        self.meta
            .insert(CONF_STATE, seal(CONF, cs)?)
            .map_err(sled_failure("write the conf state"))?;
        self.flush()
    }

    /// The member addresses stored with the conf state, if any were.
    pub fn address_book(&self) -> Result<Option<AddressBook>> {
        let Some(v) = self
            .meta
            .get(ADDRESS_BOOK)
            .map_err(sled_failure("read the address book"))?
        else {
            return Ok(None);
        };
        let (_, payload) = convoy_envelope::open(&v, BOOK, VERSION..=VERSION)
            .map_err(|e| failure(format!("raft storage: the address book {e}")))?;
        rmp_serde::from_slice(payload).map(Some).map_err(|e| {
            failure(format!(
                "raft storage: the address book does not decode: {e}"
            ))
        })
    }

    /// Stores the conf state and the member addresses together, durably: a crash leaves
    /// both before a membership change or both after it.
    pub fn set_membership(&self, cs: &ConfState, book: &AddressBook) -> Result<()> {
        let payload = rmp_serde::to_vec_named(book)
            .map_err(|e| failure(format!("raft storage: encode the address book: {e}")))?;
        let book = convoy_envelope::seal(
            Header {
                kind: BOOK,
                version: VERSION,
                tag: 0,
            },
            &payload,
        );
        let mut batch = sled::Batch::default();
        batch.insert(CONF_STATE, seal(CONF, cs)?);
        batch.insert(ADDRESS_BOOK, book);
        self.meta
            .apply_batch(batch)
            .map_err(sled_failure("write the membership"))?;
        self.flush()
    }

    /// Records, durably, that this replica was removed from the cluster: it must not serve
    /// again from this storage.
    pub fn mark_removed(&self) -> Result<()> {
        self.meta
            .insert(REMOVED, &[1u8][..])
            .map_err(sled_failure("mark the replica removed"))?;
        self.flush()
    }

    pub fn removed(&self) -> Result<bool> {
        self.meta
            .contains_key(REMOVED)
            .map_err(sled_failure("read the removal mark"))
    }

    /// Records the commit index raft-rs reports after a `Ready` was advanced.
    pub fn set_commit(&self, commit: u64) -> Result<()> {
        let mut hs = self.hard_state()?;
        if hs.commit >= commit {
            return Ok(());
        }
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Appends `ents` durably, replacing any stored entries from `ents[0].index` on (a new
    /// leader's entries overwrite an old one's uncommitted tail). The entries must continue
    /// the log and may not reach back into the snapshot.
    pub fn append(&self, ents: &[Entry]) -> Result<()> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        let mut b = self.lock();
        if first.index <= b.snapshot.0 {
            return Err(failure(format!(
                "raft storage: appending entry {} overwrites the snapshot at {}",
                first.index, b.snapshot.0
            )));
        }
        if first.index > b.last + 1 {
            return Err(failure(format!(
                "raft storage: appending entry {} leaves a gap after {}",
                first.index, b.last
            )));
        }
        for index in first.index..=b.last {
            self.entries
                .remove(index.to_be_bytes())
                .map_err(sled_failure("truncate entries"))?;
        }
        let mut last = b.last.min(first.index - 1);
        for e in ents {
            if e.index != last + 1 {
                return Err(failure(format!(
                    "raft storage: entry {} follows {last}",
                    e.index
                )));
            }
            self.entries
                .insert(e.index.to_be_bytes(), seal(ENTRY, e)?)
                .map_err(sled_failure("append an entry"))?;
            last = e.index;
        }
        self.flush()?;
        b.last = last;
        Ok(())
    }

    /// Installs `snapshot` (received from the leader): the log restarts after its index, and
    /// its conf state becomes this replica's.
    pub fn apply_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let meta = snapshot.get_metadata();
        let mut b = self.lock();
        if meta.index < b.snapshot.0 {
            return Err(Error::Store(StorageError::SnapshotOutOfDate));
        }
        self.meta
            .insert(SNAPSHOT, seal(SNAP, snapshot)?)
            .map_err(sled_failure("write the snapshot"))?;
        self.meta
            .insert(CONF_STATE, seal(CONF, meta.get_conf_state())?)
            .map_err(sled_failure("write the conf state"))?;
        let mut hs = self.hard_state()?;
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.meta
            .insert(HARD_STATE, seal(HARD, &hs)?)
            .map_err(sled_failure("write the hard state"))?;
        self.entries
            .clear()
            .map_err(sled_failure("clear entries"))?;
        self.flush()?;
        *b = Bounds {
            snapshot: (meta.index, meta.term),
            last: meta.index,
        };
        Ok(())
    }

    /// Records a snapshot this replica made of its state at `index` (which it has applied)
    /// and drops the entries it covers.
    pub fn create_snapshot(&self, index: u64, conf_state: &ConfState, data: Vec<u8>) -> Result<()> {
        let term = self.term(index)?;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state.clone());
        self.meta
            .insert(SNAPSHOT, seal(SNAP, &snapshot)?)
            .map_err(sled_failure("write the snapshot"))?;
        self.flush()?;
        self.lock().snapshot = (index, term);
        self.compact(index + 1)
    }

    /// Drops the entries before `index` (they are in the snapshot).
    pub fn compact(&self, index: u64) -> Result<()> {
        let b = self.lock();
        if index > b.snapshot.0 + 1 {
            return Err(failure(format!(
                "raft storage: compacting to {index} beyond the snapshot at {}",
                b.snapshot.0
            )));
        }
        for item in self.entries.range(..index.to_be_bytes()) {
            let (k, _) = item.map_err(sled_failure("compact entries"))?;
            self.entries
                .remove(k)
                .map_err(sled_failure("compact entries"))?;
        }
        self.flush()
    }

    fn hard_state(&self) -> Result<HardState> {
        Ok(self.get_meta(HARD_STATE, HARD)?.unwrap_or_default())
    }

    fn entry(&self, index: u64) -> Result<Entry> {
        let v = self
            .entries
            .get(index.to_be_bytes())
            .map_err(sled_failure("read an entry"))?
            .ok_or_else(|| failure(format!("raft storage: entry {index} is missing")))?;
        open(ENTRY, &v, &format!("entry {index}"))
    }
}

fn sled_failure(what: &'static str) -> impl Fn(sled::Error) -> Error {
    move |e| failure(format!("raft storage: {what}: {e}"))
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state()?,
            conf_state: self.get_meta(CONF_STATE, CONF)?.unwrap_or_default(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> Result<Vec<Entry>> {
        let (first, last) = {
            let b = self.lock();
            (b.snapshot.0 + 1, b.last)
        };
        if low < first {
            return Err(Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = vec![];
        let mut size = 0u64;
        for index in low..high {
            let e = self.entry(index)?;
            size = size.saturating_add(u64::from(e.compute_size()));
            // The first entry is returned whatever its size, as raft-rs expects.
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64> {
        let (snapshot, last) = {
            let b = self.lock();
            (b.snapshot, b.last)
        };
        if index == snapshot.0 {
            return Ok(snapshot.1);
        }
        if index < snapshot.0 {
            return Err(Error::Store(StorageError::Compacted));
        }
        if index > last {
            return Err(Error::Store(StorageError::Unavailable));
        }
        Ok(self.entry(index)?.term)
    }

    fn first_index(&self) -> Result<u64> {
        Ok(self.lock().snapshot.0 + 1)
    }

    fn last_index(&self) -> Result<u64> {
        Ok(self.lock().last)
    }

    /// The stored snapshot if it covers `request_index`; otherwise the caller must make a
    /// newer one first ([`RaftStorage::create_snapshot`]).
    fn snapshot(&self, request_index: u64, _to: u64) -> Result<Snapshot> {
        match self.get_meta::<Snapshot>(SNAPSHOT, SNAP)? {
            Some(s) if s.get_metadata().index >= request_index => Ok(s),
            _ => Err(Error::Store(StorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}
