#![no_main]
//! A training state (a checkpoint's bytes, or a `--resume` file): as stored, behind a valid
//! envelope, and in the unchecksummed format 2 that is still read.
use std::path::Path;

use convoy_engine::state;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let origin = Path::new("fuzz.state");
    let _ = state::decode(data, origin);
    let header = convoy_envelope::Header {
        kind: state::KIND,
        version: 3,
        tag: 0,
    };
    let _ = state::decode(&convoy_envelope::seal(header, data), origin);
    let mut v2 = b"CONVOYTS\x02\0\0\0".to_vec();
    v2.extend_from_slice(data);
    let _ = state::decode(&v2, origin);
});
