//! The sled command log: crash (drop) and recover, with and without snapshots; corruption.

mod common;

use common::cluster;
use common::random::Gen;
use convoy_coordinator::log::codec;
use convoy_coordinator::{
    ClusterConfig, ClusterState, CommandLog, LoggedState, SledLog, StoreError, recover,
};

/// Runs `n` generated commands through a coordinator on a sled log in `dir`; returns the
/// state it ended with, after dropping everything (as a crash would).
fn run(dir: &std::path::Path, seed: u64, n: usize, snapshot_every: u64) -> ClusterState {
    let log = SledLog::open(dir).expect("open");
    let mut c = LoggedState::open(log, ClusterConfig::default(), snapshot_every).expect("coord");
    let mut g = Gen::new(seed);
    for _ in 0..n {
        let cmd = g.next(c.state());
        let _ = c.execute(&cmd); // rejections are part of the history too
    }
    c.state().clone()
}

#[test]
fn recover_without_a_snapshot_rebuilds_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let before = run(dir.path(), 7, 60, 0);
    let log = SledLog::open(dir.path()).unwrap();
    assert!(log.load_snapshot().unwrap().is_none());
    assert_eq!(log.last_index().unwrap(), 60);
    let (state, index) = recover(&log, ClusterConfig::default()).unwrap();
    assert_eq!(index, 60);
    assert_eq!(state, before);
    assert_ne!(state, cluster());
}

#[test]
fn recover_from_a_snapshot_plus_later_commands() {
    let dir = tempfile::tempdir().unwrap();
    let before = run(dir.path(), 11, 67, 10);
    let log = SledLog::open(dir.path()).unwrap();
    let (snap_index, _) = log.load_snapshot().unwrap().expect("a snapshot");
    assert_eq!(snap_index, 60);
    // Compacted: only the entries after the snapshot remain.
    assert_eq!(log.read_after(0).unwrap().len(), 7);
    let (state, index) = recover(&log, ClusterConfig::default()).unwrap();
    assert_eq!((index, &state), (67, &before));
    drop(log);
    // And a reopened coordinator continues the index sequence.
    let mut c = LoggedState::open(
        SledLog::open(dir.path()).unwrap(),
        ClusterConfig::default(),
        10,
    )
    .unwrap();
    assert_eq!(c.state(), &before);
    let _ = c.execute(&convoy_coordinator::Command::Tick { now: u64::MAX / 2 });
    assert_eq!(c.applied(), 68);
}

#[test]
fn a_corrupt_entry_is_an_error_naming_its_index() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), 3, 5, 0);
    {
        let db = sled::open(dir.path()).unwrap();
        let entries = db.open_tree("entries").unwrap();
        entries
            .insert(6u64.to_be_bytes(), vec![0xff, 0xff, 0xff])
            .unwrap();
        db.flush().unwrap();
    }
    let log = SledLog::open(dir.path()).unwrap();
    let err = recover(&log, ClusterConfig::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::CorruptEntry { index: 6, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("command log entry 6 is corrupt"),
        "{err}"
    );
    // Trailing bytes after a valid value are corruption too.
    let cmd = convoy_coordinator::Command::Tick { now: 1 };
    let mut bytes = codec::encode(&cmd, "test").unwrap();
    bytes.push(0);
    assert!(codec::decode::<convoy_coordinator::Command>(&bytes).is_err());
}

/// A damaged entry decodes to an error (or to some other command), never to a panic or an
/// abort: every byte of an encoded submission, where its length prefixes and strings are, is
/// set to values that make huge or torn lengths.
#[test]
fn a_damaged_entry_is_an_error_never_a_panic() {
    let cmd = common::submit_cmd("damaged", 2, 0, 7);
    let bytes = codec::encode(&cmd, "test").expect("encode");
    let mut errors = 0;
    for pos in 0..bytes.len() {
        for v in [0x00, 0x7f, 0xfb, 0xfc, 0xfd, 0xfe, 0xff] {
            let mut b = bytes.clone();
            b[pos] = v;
            errors += usize::from(codec::decode_entry::<convoy_coordinator::Command>(&b).is_err());
        }
    }
    assert!(errors > 0, "no damage was noticed at all");
}
