//! The on-disk form of a [`TrainState`]: a [`convoy_envelope`] record (kind `TRST`, format
//! version, checksum) around the bincode encoding. A truncated, damaged or foreign file is
//! named as such before anything is decoded. The state holds no enums, so bincode's positional
//! layout is pinned by the format version alone; the parameter vectors stay compact (4 bytes
//! a float).

use std::path::Path;

use convoy_envelope::{EnvelopeError, Header, Kind};

use crate::error::{EngineError, Result};
use crate::train::TrainState;

pub const KIND: Kind = Kind(*b"TRST");
/// 2 added the tensor table, the GPT config, the spec hash and the last step's metrics; 3 is
/// 2's payload in the checksummed envelope.
const VERSION: u16 = 3;
/// Version 2's header, before the envelope: still read, so older checkpoints resume.
const V2_MAGIC: &[u8; 8] = b"CONVOYTS";
const V2_HEADER: usize = 12;
/// The most a decode may allocate for strings and byte buffers, whose length prefixes it
/// would otherwise trust: a damaged prefix must be an error, not an allocation of exabytes.
/// (The parameter and moment vectors are sequences, which serde grows as elements arrive.)
const DECODE_LIMIT: usize = 64 << 20;

pub fn encode(state: &TrainState) -> Vec<u8> {
    let body = bincode::serde::encode_to_vec(state, bincode::config::standard())
        .expect("a TrainState always encodes");
    let header = Header {
        kind: KIND,
        version: VERSION,
        tag: 0,
    };
    convoy_envelope::seal(header, &body)
}

pub fn decode(bytes: &[u8], origin: &Path) -> Result<TrainState> {
    let bad = |msg: String| EngineError::Checkpoint {
        path: origin.to_path_buf(),
        msg,
    };
    let body = if bytes.starts_with(V2_MAGIC) {
        let version = bytes
            .get(8..V2_HEADER)
            .map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
            .ok_or_else(|| bad("a truncated training state".into()))?;
        if version != 2 {
            return Err(bad(format!(
                "training state format version {version}; this convoy reads versions 2 and \
                 {VERSION} (an older convoy wrote it: resume it with that release, or start \
                 afresh)"
            )));
        }
        &bytes[V2_HEADER..]
    } else {
        match convoy_envelope::open(bytes, KIND, VERSION..=VERSION) {
            Ok((_, body)) => body,
            Err(EnvelopeError::NotARecord { .. }) => {
                return Err(bad("not a convoy training state (bad magic)".into()));
            }
            Err(e) => return Err(bad(format!("the training state {e}"))),
        }
    };
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    let (state, used) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| bad(format!("corrupt or truncated training state: {e}")))?;
    if used != body.len() {
        return Err(bad(format!(
            "{} trailing bytes after the training state",
            body.len() - used
        )));
    }
    Ok(state)
}

/// Writes through a temporary file and a rename: the previous state stays intact until the
/// new one is complete.
pub fn save(path: &Path, state: &TrainState) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, encode(state)).map_err(|e| EngineError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))
}

pub fn load(path: &Path) -> Result<TrainState> {
    let bytes = crate::data::open::read_regular(path)?;
    decode(&bytes, path)
}
