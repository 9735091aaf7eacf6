//! Training checkpoints, kept by the coordinator: chunk bytes in files ([`chunk_files`]),
//! everything else (manifests, finished parts) in a sled database, the index.
//!
//! A job's state is the same on every rank, so each of its W ranks uploads one byte range
//! (a part) of the encoded state, as chunks of a few MiB, each with the sender's xxh3-64
//! checksum. [`CheckpointStore::put_chunk`] stores chunks, [`CheckpointStore::finish_part`]
//! records a complete part, and [`CheckpointStore::commit`], called after each part, writes the
//! manifest once the last part is in. A checkpoint exists exactly when its manifest does:
//! chunks are flushed before the manifest is written, and whatever has no manifest when the
//! store opens (an upload a crash cut short) is collected.
//!
//! Trees of the index (all keys big-endian, so sled's order is numeric order), whose values are
//! enveloped, checksummed records:
//! - [`PENDING_TREE`]: (job, step, generation, part) → the finished part, until commit;
//! - [`MANIFESTS_TREE`]: (job, step) → [`Manifest`].

mod chunk_files;
mod cleanup;
mod error;
mod keys;
mod manifest;
mod retention;
mod store;
mod upload;

pub use error::CheckpointError;
pub use keys::PartKey;
pub use manifest::{ChunkInfo, Manifest, PartInfo};
pub use retention::{Retention, select_removals};
pub use store::CheckpointStore;

pub const PENDING_TREE: &str = "ckpt/pending";
pub const MANIFESTS_TREE: &str = "ckpt/manifests";
