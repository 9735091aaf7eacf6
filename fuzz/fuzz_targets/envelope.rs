#![no_main]
//! Any bytes: an envelope opens or is an error, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = convoy_envelope::open_any(data);
});
