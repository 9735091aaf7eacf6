//! Errors of the checkpoint store. Each message is one line naming the job and step (and the
//! part and chunk where there is one), so it can be shown to the job's owner as it is.

use crate::model::JobId;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// sled failed (a full disk or an I/O error lands here).
    #[error("checkpoint store: {context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: sled::Error,
    },
    /// The chunk files failed (a full disk lands here too).
    #[error("checkpoint store: cannot {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checkpoint store {}: the layout of an earlier convoy (chunks inside sled), which this \
         release does not read; move it aside to start with an empty store",
        dir.display()
    )]
    Layout { dir: std::path::PathBuf },
    #[error("checkpoint store: cannot encode {what}: {msg}")]
    Encode { what: String, msg: String },
    /// A stored record that does not decode (a manifest or a pending-part record).
    #[error("checkpoint store: {what} is corrupt: {msg}")]
    Corrupt { what: String, msg: String },
    /// The bytes received are not the bytes the sender hashed: the chunk was not stored.
    #[error(
        "checkpoint {job} step {step}: part {part} chunk {index} was damaged in transit \
         (sender's checksum {sent:#018x}, received bytes hash to {received:#018x})"
    )]
    ChecksumMismatch {
        job: JobId,
        step: u64,
        part: u32,
        index: u32,
        sent: u64,
        received: u64,
    },
    /// A committed checkpoint lacks a chunk its manifest lists.
    #[error("checkpoint {job} step {step} is incomplete: part {part} chunk {index} is missing")]
    ChunkMissing {
        job: JobId,
        step: u64,
        part: u32,
        index: u32,
    },
    /// A committed checkpoint's chunk is not what was uploaded.
    #[error("checkpoint {job} step {step} is corrupt: part {part} chunk {index} {why}")]
    ChunkCorrupt {
        job: JobId,
        step: u64,
        part: u32,
        index: u32,
        why: String,
    },
    /// A part was declared finished but its chunks do not add up.
    #[error("checkpoint {job} step {step}: part {part} is incomplete: {msg}")]
    Incomplete {
        job: JobId,
        step: u64,
        part: u32,
        msg: String,
    },
    /// A request that cannot describe a valid checkpoint (parts that leave a gap, …).
    #[error("checkpoint {job} step {step}: {msg}")]
    Invalid { job: JobId, step: u64, msg: String },
}

impl CheckpointError {
    pub(crate) fn storage(
        context: impl Into<String>,
    ) -> impl FnOnce(sled::Error) -> CheckpointError {
        let context = context.into();
        move |source| CheckpointError::Storage { context, source }
    }

    /// Whether this error is damage to one checkpoint (so an older one may still be used),
    /// rather than a failure of the store itself.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            CheckpointError::Corrupt { .. }
                | CheckpointError::ChunkMissing { .. }
                | CheckpointError::ChunkCorrupt { .. }
        )
    }
}
