//! The sled command log: crash (drop) and recover, with and without snapshots; corruption.

mod common;

use common::cluster;
use common::files::{copy_with_flipped_bit, files_under, reopen};
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
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let before = run(&dir, 7, 60, 0);
    let log = reopen(|| SledLog::open(&dir));
    assert!(log.load_snapshot().unwrap().is_none());
    assert_eq!(log.last_index().unwrap(), 60);
    let (state, index) = recover(&log, ClusterConfig::default()).unwrap();
    assert_eq!(index, 60);
    assert_eq!(state, before);
    assert_ne!(state, cluster());
}

#[test]
fn recover_from_a_snapshot_plus_later_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let before = run(&dir, 11, 67, 10);
    let log = reopen(|| SledLog::open(&dir));
    let (snap_index, _) = log.load_snapshot().unwrap().expect("a snapshot");
    assert_eq!(snap_index, 60);
    // Compacted: only the entries after the snapshot remain.
    assert_eq!(log.read_after(0).unwrap().len(), 7);
    let (state, index) = recover(&log, ClusterConfig::default()).unwrap();
    assert_eq!((index, &state), (67, &before));
    drop(log);
    // And a reopened coordinator continues the index sequence.
    let mut c =
        LoggedState::open(reopen(|| SledLog::open(&dir)), ClusterConfig::default(), 10).unwrap();
    assert_eq!(c.state(), &before);
    let _ = c.execute(&convoy_coordinator::Command::Tick { now: u64::MAX / 2 });
    assert_eq!(c.applied(), 68);
}

#[test]
fn a_corrupt_entry_is_an_error_naming_its_index() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    run(&dir, 3, 5, 0);
    {
        let db = reopen(|| sled::open(&dir));
        let entries = db.open_tree("entries").unwrap();
        entries
            .insert(6u64.to_be_bytes(), vec![0xff, 0xff, 0xff])
            .unwrap();
        db.flush().unwrap();
    }
    let log = reopen(|| SledLog::open(&dir));
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
    // One flipped bit in a stored entry is caught by its checksum.
    let cmd = convoy_coordinator::Command::Tick { now: 1 };
    let mut bytes = codec::encode_entry(&cmd, 1).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    let msg = codec::decode_entry(&bytes).unwrap_err();
    assert!(msg.contains("checksum"), "{msg}");
}

/// A damaged entry is an error, never a panic or an abort. The checksum catches any change to a
/// stored entry, so the payload decoder is swept behind a valid envelope too (as a damaged
/// entry that happened to keep its checksum, or a crafted one, would reach it): every byte of
/// an encoded submission is set to values that make huge or torn lengths.
#[test]
fn a_damaged_entry_is_an_error_never_a_panic() {
    let cmd = common::submit_cmd("damaged", 2, 0, 7);
    let bytes = codec::encode_entry(&cmd, 1).expect("encode");
    let payload = &bytes[convoy_envelope::HEADER_LEN..];
    let header = convoy_envelope::Header {
        kind: codec::ENTRY,
        version: codec::ENTRY_VERSION,
        tag: codec::tag(&cmd),
    };
    let mut errors = 0;
    for pos in 0..bytes.len() {
        for v in [0x00, 0x7f, 0xc1, 0xdb, 0xdd, 0xdf, 0xfe, 0xff] {
            let mut b = bytes.clone();
            if b[pos] != v {
                b[pos] = v;
                assert!(
                    codec::decode_entry(&b).is_err(),
                    "byte {pos} = {v:#x} unnoticed"
                );
            }
            if pos < payload.len() {
                let mut p2 = payload.to_vec();
                p2[pos] = v;
                let resealed = convoy_envelope::seal(header, &p2);
                errors += usize::from(codec::decode_entry(&resealed).is_err());
            }
        }
    }
    assert!(errors > 0, "no damage was noticed at all");
}

/// Removes the log's entries after `keep` behind its back, as sled does when it recovers a
/// damaged file by dropping what follows the damage.
fn drop_entries_after(dir: &std::path::Path, keep: u64) {
    let db = reopen(|| sled::open(dir));
    let entries = db.open_tree("entries").expect("test files");
    for item in entries.range((keep + 1).to_be_bytes()..) {
        entries
            .remove(item.expect("test files").0)
            .expect("test files");
    }
    db.flush().expect("test files");
}

#[test]
fn a_log_that_lost_acknowledged_entries_is_refused() {
    for keep in [0, 30] {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("log");
        run(&log_dir, 5, 60, 0);
        drop_entries_after(&log_dir, keep);
        let log = reopen(|| SledLog::open(&log_dir));
        let Err(err) = LoggedState::open(log, ClusterConfig::default(), 0) else {
            panic!("a log that lost entries {}.. opened", keep + 1)
        };
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "ends at entry {keep}, but entry 60 was acknowledged"
            )) && msg.contains("log.mark"),
            "{msg}"
        );
    }
}

#[test]
fn a_lost_snapshot_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    run(&log_dir, 5, 40, 20);
    {
        let db = reopen(|| sled::open(&log_dir));
        db.open_tree("meta").unwrap().remove("snapshot").unwrap();
        db.flush().unwrap();
    }
    let log = reopen(|| SledLog::open(&log_dir));
    assert!(LoggedState::open(log, ClusterConfig::default(), 0).is_err());
}

/// One flipped byte anywhere in the log's files, at seeded offsets: the coordinator either
/// recovers exactly the state it had or refuses to start; never a smaller state.
#[test]
fn a_flipped_byte_in_the_log_recovers_everything_or_is_refused() {
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    let before = run(&pristine.join("log"), 9, 120, 50);
    let mut files = vec![];
    for entry in files_under(&pristine) {
        files.push(entry);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
    let (mut recovered, mut refused) = (0, 0);
    for trial in 0..48 {
        let copy = dir.path().join(format!("trial-{trial}"));
        let file = &files[trial % files.len()];
        let Some((target, at)) = copy_with_flipped_bit(&pristine, &copy, file, &mut rng) else {
            continue;
        };
        let opened = std::panic::catch_unwind(|| {
            let log = SledLog::open(&copy.join("log"))?;
            LoggedState::open(log, ClusterConfig::default(), 50).map_err(|e| match e {
                convoy_coordinator::CoordinatorError::Store(s) => s,
                other => StoreError::Invalid(other.to_string()),
            })
        });
        match opened {
            Ok(Ok(c)) => {
                assert_eq!(
                    c.state(),
                    &before,
                    "{} byte {at}: recovered a different state",
                    target.display()
                );
                recovered += 1;
            }
            Ok(Err(e)) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
            Err(_) => panic!("{} byte {at}: opening panicked", target.display()),
        }
        std::fs::remove_dir_all(&copy).unwrap();
    }
    assert!(recovered + refused > 0);
    eprintln!("{recovered} recovered, {refused} refused");
}
