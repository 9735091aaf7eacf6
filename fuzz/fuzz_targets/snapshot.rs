#![no_main]
//! A snapshot as stored, and its payload behind a valid envelope.
use convoy_coordinator::log::codec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = codec::decode_snapshot(data);
    let header = convoy_envelope::Header {
        kind: codec::SNAPSHOT,
        version: codec::SNAPSHOT_VERSION,
        tag: 0,
    };
    let _ = codec::decode_snapshot(&convoy_envelope::seal(header, data));
});
