//! Receiving a checkpoint download, as both the CLI (`convoy checkpoint export`) and a
//! resuming rank do: the coordinator streams a header with the checkpoint's info, then its
//! bytes in chunks, each with the xxh3-64 checksum the coordinator computed. Every chunk is
//! checked as it arrives and the total against the header, so damage in transit or a cut
//! stream is an error, never a state decoded from partial bytes.

use convoy_proto::v1 as pb;
use tonic::Streaming;
use xxhash_rust::xxh3::xxh3_64;

/// A checkpoint's bytes as they arrived, whole and checked.
pub struct Received {
    pub info: pb::CheckpointInfo,
    /// Newer checkpoints the coordinator skipped because they failed verification.
    pub skipped: Vec<String>,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The stream failed (the coordinator went away, or refused mid-stream).
    #[error("{}", crate::one_line(.0))]
    Status(tonic::Status),
    /// The bytes did not arrive intact.
    #[error("{0}")]
    Damaged(String),
}

/// The most memory reserved up front from the header's size: a header is not trusted to
/// size an allocation; the buffer grows with what actually arrives.
const MAX_RESERVE: u64 = 64 << 20;

/// Reads a download stream to its end.
pub async fn receive(
    mut stream: Streaming<pb::CheckpointDownload>,
) -> Result<Received, ReceiveError> {
    let mut info: Option<pb::CheckpointInfo> = None;
    let mut skipped = vec![];
    let mut bytes = Vec::new();
    while let Some(m) = stream.message().await.map_err(ReceiveError::Status)? {
        if let Some(i) = m.info {
            bytes.reserve(i.size_bytes.min(MAX_RESERVE) as usize);
            info = Some(i);
            skipped = m.skipped;
        }
        if m.data.is_empty() {
            continue;
        }
        if xxh3_64(&m.data) != m.checksum {
            return Err(ReceiveError::Damaged(format!(
                "the chunk at byte {} failed its checksum in transit",
                bytes.len()
            )));
        }
        let limit = info.as_ref().map_or(0, |i| i.size_bytes);
        if (bytes.len() + m.data.len()) as u64 > limit {
            return Err(ReceiveError::Damaged(format!(
                "more bytes arrived than the checkpoint's {limit}"
            )));
        }
        bytes.extend_from_slice(&m.data);
    }
    let info = info.ok_or_else(|| ReceiveError::Damaged("the stream had no header".into()))?;
    if bytes.len() as u64 != info.size_bytes {
        return Err(ReceiveError::Damaged(format!(
            "{} of the checkpoint's {} bytes arrived",
            bytes.len(),
            info.size_bytes
        )));
    }
    Ok(Received {
        info,
        skipped,
        bytes,
    })
}
