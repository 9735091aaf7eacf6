#![no_main]
//! An llm.c model file (`init_from`, `convoy checkpoint export --format llmc` read back).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("model.bin");
    if std::fs::write(&path, data).is_ok() {
        let _ = convoy_engine::model::llmc::read(&path);
    }
});
