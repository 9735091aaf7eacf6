//! What a committed checkpoint is: its manifest, which lists every part and chunk with its
//! checksum. A checkpoint exists exactly when its manifest does; chunks without one are the
//! remains of an unfinished upload.

use std::collections::BTreeMap;

use convoy_envelope::{Header, Kind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::CheckpointError;
use crate::model::JobId;

/// One stored chunk, as the manifest records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    pub len: u32,
    /// xxh3-64 of the chunk's bytes.
    pub checksum: u64,
}

/// One rank's byte range of the encoded state and the chunks it was sent in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    pub offset: u64,
    pub len: u64,
    pub chunks: Vec<ChunkInfo>,
}

/// A committed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub job: JobId,
    pub step: u64,
    /// The job attempt that wrote it; its chunks are stored under this generation.
    pub generation: u64,
    pub created_at_ms: u64,
    pub total_len: u64,
    /// Ordered and contiguous, covering `[0, total_len)`.
    pub parts: Vec<PartInfo>,
    /// Metrics at that step (e.g. "loss", "val_loss"), for keep-best retention.
    pub metrics: BTreeMap<String, f64>,
    /// The model's fingerprint, for error messages and export checks.
    pub model: String,
}

impl Manifest {
    /// Chunks over all parts.
    pub fn chunk_count(&self) -> usize {
        self.parts.iter().map(|p| p.chunks.len()).sum()
    }
}

/// Checks that `parts` are contiguous from 0 and end at `total_len`, and that each part's
/// chunks add up to its length: what makes the chunks, read in order, the whole state.
pub(crate) fn check_layout(parts: &[PartInfo], total_len: u64) -> Result<(), String> {
    let mut end = 0u64;
    for (i, p) in parts.iter().enumerate() {
        if p.offset != end {
            return Err(format!(
                "part {i} starts at byte {} but the parts before it end at byte {end}",
                p.offset
            ));
        }
        let chunked: u64 = p.chunks.iter().map(|c| u64::from(c.len)).sum();
        if chunked != p.len {
            return Err(format!(
                "part {i} is {} bytes but its chunks hold {chunked}",
                p.len
            ));
        }
        end = p
            .offset
            .checked_add(p.len)
            .ok_or_else(|| format!("part {i} ends past 2^64 bytes"))?;
    }
    if end != total_len {
        return Err(format!(
            "the parts cover {end} bytes but the checkpoint is {total_len} bytes"
        ));
    }
    Ok(())
}

/// A record of the checkpoint trees, sealed in a [`convoy_envelope`] record of its own kind
/// around a MessagePack payload (fields by name), like the command log's.
pub(crate) trait Stored: Serialize + DeserializeOwned {
    const KIND: Kind;
}

impl Stored for Manifest {
    const KIND: Kind = Kind(*b"MNFT");
}

/// Commits the index has made, checked against its mark at open.
#[derive(Serialize, Deserialize)]
pub(crate) struct CommitCount(pub u64);

impl Stored for CommitCount {
    const KIND: Kind = Kind(*b"CSEQ");
}

/// A finished part, recorded until its upload commits.
impl Stored for PartInfo {
    const KIND: Kind = Kind(*b"PART");
}

pub(crate) const VERSION: u16 = 1;

pub(crate) fn encode<T: Stored>(value: &T, what: &str) -> Result<Vec<u8>, CheckpointError> {
    let payload = rmp_serde::to_vec_named(value).map_err(|e| CheckpointError::Encode {
        what: what.to_string(),
        msg: e.to_string(),
    })?;
    let header = Header {
        kind: T::KIND,
        version: VERSION,
        tag: 0,
    };
    Ok(convoy_envelope::seal(header, &payload))
}

/// Opens and decodes a record; damage, another kind or version, and a payload that does not
/// decode are all [`CheckpointError::Corrupt`] naming `what`.
pub(crate) fn decode<T: Stored>(bytes: &[u8], what: &str) -> Result<T, CheckpointError> {
    let corrupt = |msg: String| CheckpointError::Corrupt {
        what: what.to_string(),
        msg,
    };
    let (_, payload) = convoy_envelope::open(bytes, T::KIND, VERSION..=VERSION)
        .map_err(|e| corrupt(e.to_string()))?;
    rmp_serde::from_slice(payload).map_err(|e| corrupt(format!("does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(offset: u64, lens: &[u32]) -> PartInfo {
        PartInfo {
            offset,
            len: lens.iter().map(|&l| u64::from(l)).sum(),
            chunks: lens
                .iter()
                .map(|&len| ChunkInfo { len, checksum: 0 })
                .collect(),
        }
    }

    #[test]
    fn layout_must_be_contiguous_and_complete() {
        assert!(check_layout(&[part(0, &[4, 4]), part(8, &[3])], 11).is_ok());
        assert!(check_layout(&[part(0, &[]), part(0, &[5])], 5).is_ok());
        let gap = check_layout(&[part(0, &[4]), part(5, &[3])], 8).unwrap_err();
        assert!(gap.contains("part 1 starts at byte 5"), "{gap}");
        let short = check_layout(&[part(0, &[4])], 8).unwrap_err();
        assert!(short.contains("cover 4 bytes"), "{short}");
        let mut bad = part(0, &[4]);
        bad.len = 5;
        assert!(check_layout(&[bad], 5).is_err());
    }

    #[test]
    fn manifest_round_trips_and_damage_is_corrupt() {
        let m = Manifest {
            job: JobId(3),
            step: 200,
            generation: 2,
            created_at_ms: 1_700_000_000_000,
            total_len: 8,
            parts: vec![part(0, &[8])],
            metrics: [("loss".to_string(), 1.5)].into_iter().collect(),
            model: "gpt-tiny".to_string(),
        };
        let mut bytes = encode(&m, "a manifest").expect("encodes");
        assert_eq!(decode::<Manifest>(&bytes, "m").expect("decodes"), m);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let err = decode::<Manifest>(&bytes, "the manifest of job-3 step 200").unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        let part = encode(&part(0, &[8]), "a part").expect("encodes");
        let err = decode::<Manifest>(&part, "the manifest of job-3 step 200").unwrap_err();
        assert!(
            err.to_string().contains("PART record where a MNFT"),
            "{err}"
        );
    }
}
