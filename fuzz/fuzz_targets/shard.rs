#![no_main]
//! An llm.c token shard (a job's training data).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("shard.bin");
    if std::fs::write(&path, data).is_ok()
        && let Ok(shard) = convoy_engine::data::shard::TokenShard::open(&path)
    {
        let _ = shard.tokens().iter().map(|&t| u64::from(t)).sum::<u64>();
    }
});
