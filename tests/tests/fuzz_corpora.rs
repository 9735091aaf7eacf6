//! Every input in `fuzz/corpus/` through the decoder its fuzz target drives, on stable Rust:
//! valid seeds and the inputs that once crashed a decoder are an error or a value, never a
//! panic. (Fuzzing itself needs nightly: see fuzz/README.md.) `CONVOY_BLESS=1` writes the
//! manifest seed, which needs a real checkpoint store to produce.

use std::path::{Path, PathBuf};

use convoy_coordinator::checkpoints::{CheckpointStore, MANIFESTS_TREE, PartKey, decode_manifest};
use convoy_coordinator::log::codec;
use convoy_coordinator::model::JobId;
use convoy_engine::data::shard::TokenShard;
use convoy_engine::model::llmc;
use convoy_engine::state;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = convoy_testkit::repo_root().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("an entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no inputs", dir.display());
    files
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn stored_records_decode_or_fail_cleanly() {
    for f in corpus("envelope") {
        let _ = convoy_envelope::open_any(&bytes(&f));
    }
    for f in corpus("log_entry") {
        let b = bytes(&f);
        // The seeds are real entries: they decode.
        assert!(codec::decode_entry(&b).is_ok(), "{}", f.display());
    }
    for f in corpus("snapshot") {
        assert!(
            codec::decode_snapshot(&bytes(&f)).is_ok(),
            "{}",
            f.display()
        );
    }
    for f in corpus("manifest") {
        assert!(decode_manifest(&bytes(&f)).is_ok(), "{}", f.display());
    }
}

#[test]
fn training_states_models_and_shards_decode_or_fail_cleanly() {
    for f in corpus("train_state") {
        let r = state::decode(&bytes(&f), &f);
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert_eq!(r.is_ok(), name.starts_with("tiny"), "{}", f.display());
    }
    for f in corpus("llmc") {
        let r = llmc::read(&f);
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert_eq!(r.is_ok(), name.starts_with("tiny"), "{}", f.display());
    }
    for f in corpus("shard") {
        assert!(TokenShard::open(&f).is_ok(), "{}", f.display());
    }
}

#[test]
fn bless_the_manifest_seed() {
    if std::env::var_os("CONVOY_BLESS").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::open(dir.path().join("index")).expect("sled");
    let store = CheckpointStore::open(&db, &dir.path().join("chunks")).expect("store");
    let key = PartKey {
        job: JobId(3),
        step: 200,
        generation: 1,
        part: 0,
    };
    let data = b"twelve bytes";
    let sum = xxhash_rust::xxh3::xxh3_64(data);
    store.put_chunk(&key, 0, data, sum).expect("chunk");
    store
        .finish_part(&key, 0, data.len() as u64, 1)
        .expect("part");
    let metrics = [("loss".to_string(), 1.5)].into_iter().collect();
    store
        .commit(
            JobId(3),
            200,
            1,
            1,
            data.len() as u64,
            1,
            metrics,
            "gpt".into(),
        )
        .expect("commit")
        .expect("committed");
    let (_, v) = db
        .open_tree(MANIFESTS_TREE)
        .expect("tree")
        .first()
        .expect("read")
        .expect("a manifest");
    let out = convoy_testkit::repo_root().join("fuzz/corpus/manifest/job-3-step-200.bin");
    std::fs::write(out, &v).expect("write the seed");
}
