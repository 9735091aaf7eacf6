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
//! - [`MANIFESTS_TREE`]: (job, step) → [`Manifest`];
//! - [`DAMAGED_TREE`]: (job, step) → what a verification found wrong with it (text);
//! - [`FORGOTTEN_TREE`]: (job, step) → nothing: checkpoints a replicated log removed (by
//!   retention), never to be fetched from a peer again.

mod chunk_files;
mod cleanup;
mod error;
mod keys;
mod manifest;
mod repair;
mod retention;
mod store;
mod upload;

pub use error::CheckpointError;
pub use keys::PartKey;
pub use manifest::{ChunkInfo, Manifest, PartInfo};

/// The record kind and format version of a stored manifest.
pub const MANIFEST_KIND: convoy_envelope::Kind = <Manifest as manifest::Stored>::KIND;
pub const MANIFEST_VERSION: u16 = manifest::VERSION;

/// Opens and decodes a stored manifest (for tools and fuzzing; the store uses it inside).
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, CheckpointError> {
    manifest::decode(bytes, "a manifest")
}
pub use retention::{Retention, select_removals};
pub use store::{CheckpointStore, Listed};

pub const PENDING_TREE: &str = "ckpt/pending";
pub const MANIFESTS_TREE: &str = "ckpt/manifests";
pub const DAMAGED_TREE: &str = "ckpt/damaged";
pub const FORGOTTEN_TREE: &str = "ckpt/forgotten";
/// The index's own records (the commit count).
pub const META_TREE: &str = "ckpt/meta";
