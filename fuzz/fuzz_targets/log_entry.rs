#![no_main]
//! A command-log entry as stored, and its payload behind a valid envelope (what a damaged
//! entry with an intact checksum, or a crafted one, would reach).
use convoy_coordinator::log::codec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = codec::decode_entry(data);
    if let Some((&tag, payload)) = data.split_first() {
        let header = convoy_envelope::Header {
            kind: codec::ENTRY,
            version: codec::ENTRY_VERSION,
            tag: u16::from(tag % 16),
        };
        let _ = codec::decode_entry(&convoy_envelope::seal(header, payload));
    }
});
