//! The on-disk form of a [`TrainState`]: a magic, a format version and the bincode encoding,
//! so a truncated or foreign file is recognised instead of decoded as garbage.

use std::path::Path;

use crate::error::{EngineError, Result};
use crate::train::TrainState;

const MAGIC: &[u8; 8] = b"CONVOYTS";
/// The most a decode may allocate for strings and byte buffers, whose length prefixes it
/// would otherwise trust: a damaged prefix must be an error, not an allocation of exabytes.
/// (The parameter and moment vectors are sequences, which serde grows as elements arrive.)
const DECODE_LIMIT: usize = 64 << 20;
/// 2 added the tensor table, the GPT config, the spec hash and the last step's metrics.
const VERSION: u32 = 2;

pub fn encode(state: &TrainState) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    let body = bincode::serde::encode_to_vec(state, bincode::config::standard())
        .expect("a TrainState always encodes");
    out.extend_from_slice(&body);
    out
}

pub fn decode(bytes: &[u8], origin: &Path) -> Result<TrainState> {
    let bad = |msg: String| EngineError::Checkpoint {
        path: origin.to_path_buf(),
        msg,
    };
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(bad("not a convoy training state (bad magic)".into()));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        let hint = if version < VERSION {
            " (an older convoy wrote it: resume it with that release, or start afresh)"
        } else {
            " (a newer convoy wrote it)"
        };
        return Err(bad(format!(
            "training state format version {version}; this convoy reads {VERSION}{hint}"
        )));
    }
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    let (state, used) = bincode::serde::decode_from_slice(&bytes[12..], config)
        .map_err(|e| bad(format!("corrupt or truncated training state: {e}")))?;
    if used != bytes.len() - 12 {
        return Err(bad(format!(
            "{} trailing bytes after the training state",
            bytes.len() - 12 - used
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
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    decode(&bytes, path)
}
