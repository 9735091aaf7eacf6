//! The checkpoint store on a real sled index and real chunk files: split uploads, commit,
//! reading back, corruption, abort, crash (drop without commit) and reopen, retention,
//! duplicate commits.

mod common;

use std::collections::BTreeMap;

use common::files::{copy_with_flipped_bit, files_under, reopen};
use convoy_coordinator::JobId;
use convoy_coordinator::checkpoints::{
    CheckpointError, CheckpointStore, MANIFESTS_TREE, Manifest, PENDING_TREE, PartKey, Retention,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use xxhash_rust::xxh3::xxh3_64;

const MIB: usize = 1 << 20;

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// One checkpoint upload as the ranks would send it.
struct Upload<'a> {
    job: JobId,
    step: u64,
    generation: u64,
    state: &'a [u8],
    parts: u32,
    chunk: usize,
    val_loss: Option<f64>,
}

impl Upload<'_> {
    /// Rank `part`'s byte range: the state split evenly, the last part taking the rest.
    fn range(&self, part: u32) -> (usize, usize) {
        let share = self.state.len() / self.parts as usize;
        let offset = share * part as usize;
        let end = if part + 1 == self.parts {
            self.state.len()
        } else {
            offset + share
        };
        (offset, end)
    }

    fn key(&self, part: u32) -> PartKey {
        PartKey {
            job: self.job,
            step: self.step,
            generation: self.generation,
            part,
        }
    }

    fn send_chunks(&self, store: &CheckpointStore, part: u32) -> u32 {
        let (offset, end) = self.range(part);
        let mut n = 0;
        for (i, c) in self.state[offset..end].chunks(self.chunk).enumerate() {
            let index = u32::try_from(i).expect("a chunk index");
            store
                .put_chunk(&self.key(part), index, c, xxh3_64(c))
                .expect("the chunk is stored");
            n += 1;
        }
        n
    }

    /// Sends part `part`, finishes it and calls commit, as the server does per part.
    fn send_part(&self, store: &CheckpointStore, part: u32) -> Option<Manifest> {
        let chunks = self.send_chunks(store, part);
        let (offset, end) = self.range(part);
        store
            .finish_part(
                &self.key(part),
                offset as u64,
                (end - offset) as u64,
                chunks,
            )
            .expect("the part is finished");
        self.commit(store).expect("commit")
    }

    fn commit(&self, store: &CheckpointStore) -> Result<Option<Manifest>, CheckpointError> {
        let metrics: BTreeMap<String, f64> = self
            .val_loss
            .map(|v| ("val_loss".to_string(), v))
            .into_iter()
            .collect();
        store.commit(
            self.job,
            self.step,
            self.generation,
            self.parts,
            self.state.len() as u64,
            1_700_000_000_000 + self.step,
            metrics,
            "mlp-test".to_string(),
        )
    }

    fn send_all(&self, store: &CheckpointStore) -> Manifest {
        let mut last = None;
        for part in 0..self.parts {
            last = self.send_part(store, part);
            if part + 1 < self.parts {
                assert!(last.is_none(), "committed before the last part");
            }
        }
        last.expect("the last part commits")
    }
}

fn small(job: u64, step: u64, state: &[u8]) -> Upload<'_> {
    Upload {
        job: JobId(job),
        step,
        generation: 1,
        state,
        parts: 3,
        chunk: 4096,
        val_loss: None,
    }
}

fn reassemble(store: &CheckpointStore, m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.total_len as usize);
    for chunk in store.read_chunks(m) {
        out.extend_from_slice(&chunk.expect("a stored chunk"));
    }
    out
}

/// The chunk file layout the store documents: `chunks/<job>/<step>-<generation>/<part>-<index>`.
fn chunk_path(
    dir: &std::path::Path,
    job: u64,
    step: u64,
    generation: u64,
    part: u32,
    index: u32,
) -> std::path::PathBuf {
    dir.join(format!("chunks/{job}/{step}-{generation}/{part}-{index}"))
}

/// Chunk files whose path under `chunks/` starts with `prefix` ("" for all).
fn chunk_files(dir: &std::path::Path, prefix: &str) -> usize {
    let root = dir.join("chunks");
    files_under(&root)
        .iter()
        .filter_map(|f| f.strip_prefix(&root).ok())
        .filter(|f| f.to_string_lossy().starts_with(prefix))
        .count()
}

fn keys_with_prefix(db: &sled::Db, tree: &str, prefix: &[u8]) -> usize {
    db.open_tree(tree)
        .expect("the tree")
        .scan_prefix(prefix)
        .count()
}

fn step_prefix(job: u64, step: u64) -> Vec<u8> {
    [job.to_be_bytes(), step.to_be_bytes()].concat()
}

fn open(dir: &std::path::Path) -> (sled::Db, CheckpointStore) {
    let db = sled::open(dir.join("index")).expect("open sled");
    let store = CheckpointStore::open(&db, &dir.join("chunks")).expect("open the store");
    (db, store)
}

#[test]
fn a_split_upload_commits_after_its_last_part_and_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store) = open(dir.path());
    let state = random_bytes(1, 10 * MIB + 12_345);
    let up = Upload {
        chunk: MIB,
        val_loss: Some(2.5),
        ..small(1, 100, &state)
    };
    // Ranks finish in any order; nothing is visible until the last part is in.
    for part in [2, 0] {
        assert!(up.send_part(&store, part).is_none());
        assert!(store.get(up.job, 100).unwrap().is_none());
        assert!(store.list(up.job).unwrap().is_empty());
        assert!(store.latest(up.job).unwrap().is_none());
        assert!(store.latest_valid(up.job).unwrap().0.is_none());
    }
    let m = up.send_part(&store, 1).expect("the last part commits");

    assert_eq!(m.total_len, state.len() as u64);
    assert_eq!(m.parts.len(), 3);
    assert_eq!(m.chunk_count(), 12); // 3.33 MiB per part in 1 MiB chunks
    assert_eq!(m.metrics.get("val_loss"), Some(&2.5));
    assert_eq!(store.get(up.job, 100).unwrap(), Some(m.clone()));
    assert_eq!(store.list(up.job).unwrap(), vec![m.clone()]);
    assert_eq!(store.latest(up.job).unwrap(), Some(m.clone()));
    assert!(reassemble(&store, &m) == state, "reassembled bytes differ");
    store.verify(&m).unwrap();
    assert_eq!(store.latest_valid(up.job).unwrap().0, Some(m));
}

#[test]
fn a_chunk_with_a_wrong_checksum_is_rejected_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store) = open(dir.path());
    let key = PartKey {
        job: JobId(7),
        step: 300,
        generation: 2,
        part: 1,
    };
    let data = random_bytes(2, 1000);
    let err = store
        .put_chunk(&key, 4, &data, xxh3_64(&data) ^ 1)
        .unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::ChecksumMismatch {
                job: JobId(7),
                step: 300,
                part: 1,
                index: 4,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("job-7 step 300") && msg.contains("part 1 chunk 4"),
        "{msg}"
    );
    assert_eq!(chunk_files(dir.path(), ""), 0);

    // A part whose chunks do not add up is refused.
    store.put_chunk(&key, 0, &data, xxh3_64(&data)).unwrap();
    let short = store.finish_part(&key, 0, 1000, 2).unwrap_err();
    assert!(
        matches!(short, CheckpointError::Incomplete { .. }),
        "{short:?}"
    );
    let long = store.finish_part(&key, 0, 999, 1).unwrap_err();
    assert!(long.to_string().contains("hold 1000 bytes"), "{long}");
}

#[test]
fn a_corrupt_chunk_is_detected_and_latest_valid_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store) = open(dir.path());
    let s100 = random_bytes(3, 200_000);
    let s200 = random_bytes(4, 200_000);
    let m100 = small(3, 100, &s100).send_all(&store);
    let m200 = small(3, 200, &s200).send_all(&store);

    // Damage part 1 chunk 4 of step 200 behind the store's back.
    let path = chunk_path(dir.path(), 3, 200, 1, 1, 4);
    let mut bytes = std::fs::read(&path).expect("the chunk exists");
    bytes[17] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let err = store.verify(&m200).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::ChunkCorrupt {
                part: 1,
                index: 4,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("job-3 step 200") && msg.contains("part 1 chunk 4"),
        "{msg}"
    );
    assert!(msg.contains("checksum mismatch"), "{msg}");
    store.verify(&m100).unwrap();

    let (valid, skipped) = store.latest_valid(JobId(3)).unwrap();
    assert_eq!(valid, Some(m100.clone()));
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].to_string(), msg);
    // `latest` does not read chunks: it still names the damaged one.
    assert_eq!(store.latest(JobId(3)).unwrap(), Some(m200.clone()));

    // A missing chunk is reported as such.
    std::fs::remove_file(chunk_path(dir.path(), 3, 200, 1, 0, 0)).unwrap();
    let first = store.read_chunks(&m200).next().unwrap().unwrap_err();
    assert!(
        matches!(
            first,
            CheckpointError::ChunkMissing {
                part: 0,
                index: 0,
                ..
            }
        ),
        "{first:?}"
    );
    // A truncated chunk too.
    let k = chunk_path(dir.path(), 3, 100, 1, 2, 0);
    let short = std::fs::read(&k).unwrap()[..10].to_vec();
    std::fs::write(&k, short).unwrap();
    let (valid, skipped) = store.latest_valid(JobId(3)).unwrap();
    assert_eq!(valid, None);
    assert_eq!(skipped.len(), 2);
    assert!(
        skipped[1].to_string().contains("is 10 bytes"),
        "{}",
        skipped[1]
    );
}

#[test]
fn abort_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = open(dir.path());
    let state = random_bytes(5, 100_000);
    let up = small(4, 100, &state);
    assert!(up.send_part(&store, 0).is_none());
    up.send_chunks(&store, 1); // part 1 never finishes
    assert!(chunk_files(dir.path(), "") > 0);
    assert_eq!(keys_with_prefix(&db, PENDING_TREE, &[]), 1);

    store.abort(up.job, 100, 1).unwrap();
    assert_eq!(chunk_files(dir.path(), ""), 0);
    assert_eq!(keys_with_prefix(&db, PENDING_TREE, &[]), 0);
    assert!(up.commit(&store).unwrap().is_none());
    assert!(store.get(up.job, 100).unwrap().is_none());
}

#[test]
fn reopening_after_a_crash_collects_dead_uploads_and_keeps_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let s100 = random_bytes(6, 300_000);
    let s200 = random_bytes(7, 300_000);
    let m100 = {
        let (db, store) = open(dir.path());
        let m100 = small(5, 100, &s100).send_all(&store);
        let up = small(5, 200, &s200);
        assert!(up.send_part(&store, 0).is_none());
        assert!(up.send_part(&store, 1).is_none());
        up.send_chunks(&store, 2);
        // In this process the upload is in progress: collection leaves it alone.
        assert_eq!(store.clone().collect_garbage().unwrap(), 0);
        assert!(chunk_files(dir.path(), "5/200-") > 0);
        db.flush().unwrap(); // make sure the dead upload really is on disk
        m100
    }; // the "crash": everything dropped without a commit

    let db = sled::open(dir.path().join("index")).unwrap();
    assert!(chunk_files(dir.path(), "5/200-") > 0);
    assert_eq!(keys_with_prefix(&db, PENDING_TREE, &[]), 2);
    let store = CheckpointStore::open(&db, &dir.path().join("chunks")).unwrap();
    assert_eq!(chunk_files(dir.path(), "5/200-"), 0);
    assert_eq!(keys_with_prefix(&db, PENDING_TREE, &[]), 0);
    assert_eq!(chunk_files(dir.path(), ""), m100.chunk_count());
    assert_eq!(store.collect_garbage().unwrap(), 0);

    assert_eq!(store.list(JobId(5)).unwrap(), vec![m100.clone()]);
    assert!(reassemble(&store, &m100) == s100);
    assert!(store.get(JobId(5), 200).unwrap().is_none());
    // The step can be uploaded again by the next attempt.
    let again = Upload {
        generation: 2,
        ..small(5, 200, &s200)
    };
    let m200 = again.send_all(&store);
    assert!(reassemble(&store, &m200) == s200);
}

#[test]
fn retention_keeps_the_newest_and_the_best_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = open(dir.path());
    let losses = [(100, 3.0), (200, 1.0), (300, 2.0), (400, 2.5), (500, 2.2)];
    let states: Vec<Vec<u8>> = (0..losses.len())
        .map(|i| random_bytes(10 + i as u64, 50_000))
        .collect();
    let mut manifests = BTreeMap::new();
    for ((step, loss), state) in losses.iter().zip(&states) {
        let up = Upload {
            val_loss: Some(*loss),
            ..small(6, *step, state)
        };
        manifests.insert(*step, up.send_all(&store));
    }
    // Another job's checkpoints are not touched.
    let other = small(9, 100, &states[0]).send_all(&store);

    let r = Retention {
        keep_last: 2,
        keep_best: 1,
        best_metric: "val_loss".to_string(),
        minimize: true,
    };
    assert_eq!(store.apply_retention(JobId(6), &r).unwrap(), vec![100, 300]);
    let kept: Vec<u64> = store
        .list(JobId(6))
        .unwrap()
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(kept, vec![200, 400, 500]);
    for step in [100, 300] {
        assert_eq!(chunk_files(dir.path(), &format!("6/{step}-")), 0);
        assert_eq!(
            keys_with_prefix(&db, MANIFESTS_TREE, &step_prefix(6, step)),
            0
        );
    }
    for step in [200, 400, 500] {
        store.verify(&manifests[&step]).unwrap();
    }
    store.verify(&other).unwrap();
    // Applying it again removes nothing more.
    assert!(store.apply_retention(JobId(6), &r).unwrap().is_empty());
}

#[test]
fn an_older_upload_that_never_completes_is_collected_when_a_newer_step_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store) = open(dir.path());
    let state = random_bytes(40, 60_000);
    // One rank sent its part of step 100; the others skipped that checkpoint.
    let stale = small(7, 100, &state);
    assert!(stale.send_part(&store, 0).is_none());
    assert!(chunk_files(dir.path(), "7/100-") > 0);
    let m = small(7, 200, &state).send_all(&store);
    assert!(store.collect_older_uploads(JobId(7), 200).unwrap() > 0);
    assert_eq!(chunk_files(dir.path(), "7/100-"), 0);
    assert!(reassemble(&store, &m) == state);
}

#[test]
fn a_duplicate_commit_returns_the_first_and_stores_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store) = open(dir.path());
    let state = random_bytes(20, 120_000);
    let up = small(8, 100, &state);
    let m = up.send_all(&store);
    let stored = chunk_files(dir.path(), "");

    // The same commit again (a retry after a lost reply).
    assert_eq!(up.commit(&store).unwrap(), Some(m.clone()));
    // The whole upload again, same generation: chunks are dropped, the manifest returned.
    for part in 0..3 {
        assert_eq!(up.send_part(&store, part), Some(m.clone()));
    }
    // Another attempt reaching the same step: the first checkpoint stays.
    let other = random_bytes(21, 90_000);
    let second = Upload {
        generation: 2,
        ..small(8, 100, &other)
    };
    for part in 0..3 {
        assert_eq!(second.send_part(&store, part), Some(m.clone()));
    }
    assert_eq!(chunk_files(dir.path(), ""), stored);
    assert_eq!(keys_with_prefix(&db, PENDING_TREE, &[]), 0);
    assert!(reassemble(&store, &m) == state);

    // Chunks of a competing attempt that arrived before the commit are cleaned up by its own
    // commit.
    let a = small(8, 200, &state);
    let b = Upload {
        generation: 2,
        ..small(8, 200, &other)
    };
    assert!(b.send_part(&store, 0).is_none());
    b.send_chunks(&store, 1);
    let ma = a.send_all(&store);
    assert_eq!(b.commit(&store).unwrap(), Some(ma.clone()));
    assert_eq!(chunk_files(dir.path(), "8/200-2/"), 0);
    assert!(reassemble(&store, &ma) == state);
}

#[test]
fn commit_refuses_parts_that_leave_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store) = open(dir.path());
    let state = random_bytes(30, 10_000);
    let up = small(2, 100, &state);
    assert!(up.send_part(&store, 0).is_none());
    for part in [1, 2] {
        let chunks = up.send_chunks(&store, part);
        let (offset, end) = up.range(part);
        // Part 1 claims to start one byte late.
        let offset = offset as u64 + u64::from(part == 1);
        store
            .finish_part(
                &up.key(part),
                offset,
                (end as u64) - up.range(part).0 as u64,
                chunks,
            )
            .unwrap();
    }
    let err = up.commit(&store).unwrap_err();
    assert!(matches!(err, CheckpointError::Invalid { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("job-2 step 100: part 1 starts at byte 3334"),
        "{err}"
    );
    assert!(store.get(up.job, 100).unwrap().is_none());
    store.abort(up.job, 100, 1).unwrap();
}

/// One flipped byte anywhere in the store (the index's sled files, its commit mark, the chunk
/// files), at seeded places: the store refuses to open, or it opens with every committed
/// checkpoint there, each either reading back exactly or failing its checksum. Never fewer
/// checkpoints, never different bytes, never a panic.
#[test]
fn a_flipped_byte_in_the_store_is_refused_or_named_never_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let mut states = BTreeMap::new();
    {
        let (db, store) = open(&pristine);
        for job in 1..=3u64 {
            for step in [100, 200, 300] {
                let state = random_bytes(job * 1000 + step, 20_000);
                small(job, step, &state).send_all(&store);
                states.insert((job, step), state);
            }
        }
        db.flush().unwrap();
    }
    // Copied only once sled has let go of the index.
    drop(reopen(|| sled::open(pristine.join("index"))));
    let files = files_under(&pristine);
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let (mut refused, mut opened) = (0, 0);
    for trial in 0..60 {
        let copy = tmp.path().join(format!("trial-{trial}"));
        let file = &files[trial % files.len()];
        let Some((target, at)) = copy_with_flipped_bit(&pristine, &copy, file, &mut rng) else {
            continue;
        };
        let outcome = std::panic::catch_unwind(|| {
            let db = sled::open(copy.join("index")).map_err(|e| e.to_string())?;
            let store =
                CheckpointStore::open(&db, &copy.join("chunks")).map_err(|e| e.to_string())?;
            for ((job, step), state) in &states {
                let m = match store.get(JobId(*job), *step) {
                    Ok(Some(m)) => m,
                    Ok(None) => panic!(
                        "{} byte {at}: job {job} step {step} vanished",
                        target.display()
                    ),
                    Err(e) => {
                        assert!(e.is_damage(), "{e}");
                        continue;
                    }
                };
                let read: Result<Vec<Vec<u8>>, _> = store.read_chunks(&m).collect();
                if let Ok(chunks) = read {
                    assert!(
                        chunks.concat() == *state,
                        "{}: different bytes",
                        target.display()
                    );
                }
            }
            Ok::<(), String>(())
        });
        match outcome {
            Ok(Ok(())) => opened += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!(
                "{} byte {at}: a panic or a lost checkpoint",
                target.display()
            ),
        }
    }
    assert!(opened + refused > 0);
}
