//! raft-rs's `Storage` on sled: the cases raft-rs's own `MemStorage` is tested with (term,
//! entries under a size limit, bounds, append and truncation, compaction, snapshots), plus
//! what a disk adds: durability across a reopen, and damage named rather than decoded.

mod common;

use common::files::reopen;
use convoy_coordinator::replication::RaftStorage;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{Error, GetEntriesContext, Storage, StorageError};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Default::default()
    }
}

fn snapshot(index: u64, term: u64, voters: Vec<u64>) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = voters;
    s
}

/// A storage in `dir` holding entries 3, 4, 5 (terms 3, 4, 5) after a snapshot at 2.
fn three_to_five(dir: &std::path::Path) -> (sled::Db, RaftStorage) {
    let db = sled::open(dir).expect("sled");
    let s = RaftStorage::open(&db).expect("open");
    s.apply_snapshot(&snapshot(2, 2, vec![1, 2, 3]))
        .expect("snapshot");
    s.append(&[entry(3, 3), entry(4, 4), entry(5, 5)])
        .expect("append");
    (db, s)
}

fn all(s: &RaftStorage) -> Vec<Entry> {
    let first = s.first_index().expect("first index");
    let last = s.last_index().expect("last index");
    s.entries(first, last + 1, None, GetEntriesContext::empty(false))
        .expect("entries")
}

#[test]
fn term_and_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = three_to_five(dir.path());
    assert_eq!(s.term(1), Err(Error::Store(StorageError::Compacted)));
    assert_eq!(s.term(2), Ok(2)); // the snapshot's
    for i in 3..=5 {
        assert_eq!(s.term(i), Ok(i));
    }
    assert_eq!(s.term(6), Err(Error::Store(StorageError::Unavailable)));
    assert_eq!((s.first_index(), s.last_index()), (Ok(3), Ok(5)));
}

#[test]
fn entries_respect_the_range_and_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = three_to_five(dir.path());
    s.append(&[entry(6, 6)]).unwrap();
    let size = |i: u64| u64::from(entry(i, i).compute_size());
    let get = |lo, hi, max: u64| s.entries(lo, hi, max, GetEntriesContext::empty(false));
    assert_eq!(
        get(2, 6, u64::MAX),
        Err(Error::Store(StorageError::Compacted))
    );
    assert_eq!(get(3, 4, u64::MAX), Ok(vec![entry(3, 3)]));
    assert_eq!(get(4, 6, u64::MAX), Ok(vec![entry(4, 4), entry(5, 5)]));
    // The first entry comes whatever the limit.
    assert_eq!(get(4, 7, 0), Ok(vec![entry(4, 4)]));
    assert_eq!(
        get(4, 7, size(4) + size(5)),
        Ok(vec![entry(4, 4), entry(5, 5)])
    );
    assert_eq!(
        get(4, 7, size(4) + size(5) + size(6) - 1),
        Ok(vec![entry(4, 4), entry(5, 5)])
    );
    assert_eq!(
        get(4, 7, size(4) + size(5) + size(6)).map(|v| v.len()),
        Ok(3)
    );
    assert_eq!(
        get(4, 8, u64::MAX),
        Err(Error::Store(StorageError::Unavailable))
    );
}

#[test]
fn append_overwrites_a_tail_and_refuses_gaps_and_the_snapshot() {
    let cases: Vec<(Vec<Entry>, Option<Vec<Entry>>)> = vec![
        (
            vec![entry(3, 3), entry(4, 4), entry(5, 5)],
            Some(vec![entry(3, 3), entry(4, 4), entry(5, 5)]),
        ),
        (
            vec![entry(3, 3), entry(4, 6), entry(5, 6)],
            Some(vec![entry(3, 3), entry(4, 6), entry(5, 6)]),
        ),
        (
            vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 5)],
            Some(vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 5)]),
        ),
        // Into the snapshot: refused.
        (vec![entry(2, 3), entry(3, 3), entry(4, 5)], None),
        // A shorter tail replaces a longer one.
        (vec![entry(4, 5)], Some(vec![entry(3, 3), entry(4, 5)])),
        (
            vec![entry(6, 6)],
            Some(vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 6)]),
        ),
        // A gap: refused.
        (vec![entry(8, 6)], None),
    ];
    for (i, (ents, want)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, s) = three_to_five(dir.path());
        match want {
            Some(want) => {
                s.append(&ents).unwrap();
                assert_eq!(all(&s), want, "case {i}");
            }
            None => {
                assert!(s.append(&ents).is_err(), "case {i}");
                assert_eq!(all(&s), vec![entry(3, 3), entry(4, 4), entry(5, 5)]);
            }
        }
    }
}

#[test]
fn a_snapshot_compacts_and_an_older_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = three_to_five(dir.path());
    let cs = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    s.create_snapshot(4, &cs, b"state at 4".to_vec()).unwrap();
    assert_eq!((s.first_index(), s.last_index()), (Ok(5), Ok(5)));
    assert_eq!(s.term(4), Ok(4));
    let snap = s.snapshot(4, 0).unwrap();
    assert_eq!(
        (snap.get_metadata().index, snap.get_data()),
        (4, &b"state at 4"[..])
    );
    // A follower asking for a newer one waits for it to be made.
    assert_eq!(
        s.snapshot(5, 0),
        Err(Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    );
    assert_eq!(
        s.apply_snapshot(&snapshot(3, 3, vec![1])),
        Err(Error::Store(StorageError::SnapshotOutOfDate))
    );
    // A newer snapshot from the leader replaces the log and the membership.
    s.apply_snapshot(&snapshot(9, 7, vec![1, 2])).unwrap();
    assert_eq!((s.first_index(), s.last_index()), (Ok(10), Ok(9)));
    let state = s.initial_state().unwrap();
    assert_eq!(state.conf_state.voters, vec![1, 2]);
    assert_eq!((state.hard_state.commit, state.hard_state.term), (9, 7));
}

#[test]
fn everything_survives_a_reopen_and_damage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_db, s) = three_to_five(dir.path());
        let hs = HardState {
            term: 5,
            vote: 2,
            commit: 4,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
    }
    let db = reopen(|| sled::open(dir.path()));
    let s = RaftStorage::open(&db).unwrap();
    let state = s.initial_state().unwrap();
    assert_eq!(
        (
            state.hard_state.term,
            state.hard_state.vote,
            state.hard_state.commit
        ),
        (5, 2, 4)
    );
    assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(all(&s), vec![entry(3, 3), entry(4, 4), entry(5, 5)]);

    // One flipped byte in a stored entry: an error naming it, never a wrong entry.
    let tree = db.open_tree("raft/entries").unwrap();
    let mut v = tree.get(4u64.to_be_bytes()).unwrap().unwrap().to_vec();
    let last = v.len() - 1;
    v[last] ^= 1;
    tree.insert(4u64.to_be_bytes(), v).unwrap();
    let err = s.term(4).unwrap_err().to_string();
    assert!(err.contains("entry 4") && err.contains("checksum"), "{err}");
}
