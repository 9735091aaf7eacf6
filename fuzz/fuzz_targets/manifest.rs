#![no_main]
//! A checkpoint manifest as stored, and its payload behind a valid envelope.
use convoy_coordinator::checkpoints::{MANIFEST_KIND, MANIFEST_VERSION, decode_manifest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = decode_manifest(data);
    let header = convoy_envelope::Header {
        kind: MANIFEST_KIND,
        version: MANIFEST_VERSION,
        tag: 0,
    };
    let _ = decode_manifest(&convoy_envelope::seal(header, data));
});
