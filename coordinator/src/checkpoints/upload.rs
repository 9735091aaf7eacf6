//! Receiving a checkpoint: chunks of each rank's part, a record per finished part, and the
//! commit that makes the checkpoint exist by writing its manifest once every part is in.
//!
//! Durability rests on one order: chunk files are synced before the manifest is written, so a
//! manifest on disk always has its chunks; anything without a manifest is collected at the
//! next open. Pending-part records are therefore not flushed: after a crash they are dead.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64;

use super::CheckpointStore;
use super::cleanup::remove_prefix;
use super::error::CheckpointError;
use super::keys::{PartKey, Upload, manifest_key, part_key, split_part, upload_prefix};
use super::manifest::{ChunkInfo, Manifest, PartInfo, check_layout, decode, encode};
use crate::model::JobId;

impl CheckpointStore {
    /// Stores chunk `index` of a part after checking `checksum` (the sender's xxh3-64 of
    /// `data`); a mismatch stores nothing. Chunks may arrive in any order and a re-sent chunk
    /// replaces the earlier copy. If (job, step) is already committed (a retry after a lost
    /// reply, or another attempt reaching the same step), the chunk is dropped and `Ok`
    /// returned: the following commit returns the existing checkpoint.
    pub fn put_chunk(
        &self,
        key: &PartKey,
        index: u32,
        data: &[u8],
        checksum: u64,
    ) -> Result<(), CheckpointError> {
        let PartKey {
            job, step, part, ..
        } = *key;
        if u32::try_from(data.len()).is_err() {
            return Err(CheckpointError::Invalid {
                job,
                step,
                msg: format!(
                    "part {part} chunk {index} is {} bytes; a chunk is at most 4 GiB",
                    data.len()
                ),
            });
        }
        let received = xxh3_64(data);
        if received != checksum {
            return Err(CheckpointError::ChecksumMismatch {
                job,
                step,
                part,
                index,
                sent: checksum,
                received,
            });
        }
        if self.get(job, step)?.is_some() {
            return Ok(());
        }
        // Marked before the write: collection holds the set while it checks and removes.
        self.lock_in_progress().entry(key.upload()).or_default();
        self.chunks.write(key, index, data)?;
        let info = ChunkInfo {
            len: data.len() as u32, // checked above
            checksum,
        };
        self.lock_in_progress()
            .entry(key.upload())
            .or_default()
            .insert((part, index), info);
        Ok(())
    }

    /// Declares a part complete: chunks `0..chunks` must all be stored and hold `len` bytes
    /// in all. Records the part (with each chunk's length and checksum: as verified when it was
    /// stored, or hashed from the stored bytes if an earlier process stored it) for
    /// [`CheckpointStore::commit`]. Chunks numbered `chunks` or more (from an
    /// earlier try of this part cut differently) are removed. A no-op once (job, step) is
    /// committed, like [`CheckpointStore::put_chunk`].
    pub fn finish_part(
        &self,
        key: &PartKey,
        offset: u64,
        len: u64,
        chunks: u32,
    ) -> Result<(), CheckpointError> {
        let PartKey {
            job, step, part, ..
        } = *key;
        if self.get(job, step)?.is_some() {
            return Ok(());
        }
        let incomplete = |msg: String| CheckpointError::Incomplete {
            job,
            step,
            part,
            msg,
        };
        let known = self
            .lock_in_progress()
            .entry(key.upload())
            .or_default()
            .clone();
        let mut infos: Vec<ChunkInfo> = vec![];
        let mut stray = vec![];
        for index in self.chunks.part_indices(key)? {
            if index >= chunks {
                stray.push(index);
                continue;
            }
            let have = u32::try_from(infos.len()).unwrap_or(u32::MAX);
            if index != have {
                return Err(incomplete(format!("chunk {have} of {chunks} is missing")));
            }
            if let Some(info) = known.get(&(part, index)) {
                infos.push(*info);
                continue;
            }
            // Stored by an earlier process: hash the stored bytes.
            let Some(bytes) = self.chunks.read(key, index)? else {
                return Err(incomplete(format!("chunk {index} of {chunks} is missing")));
            };
            let len = u32::try_from(bytes.len())
                .map_err(|_| incomplete(format!("chunk {index} is over 4 GiB")))?;
            infos.push(ChunkInfo {
                len,
                checksum: xxh3_64(&bytes),
            });
        }
        if infos.len() < chunks as usize {
            return Err(incomplete(format!(
                "chunk {} of {chunks} is missing",
                infos.len()
            )));
        }
        let held: u64 = infos.iter().map(|c| u64::from(c.len)).sum();
        if held != len {
            return Err(incomplete(format!(
                "its {chunks} chunks hold {held} bytes, not {len}"
            )));
        }
        for index in stray {
            self.chunks.remove(key, index)?;
        }
        let record = PartInfo {
            offset,
            len,
            chunks: infos,
        };
        let bytes = encode(&record, &format!("{job} step {step} part {part}"))?;
        self.pending
            .insert(part_key(key), bytes)
            .map_err(CheckpointError::storage(format!(
                "record {job} step {step} part {part} as finished"
            )))?;
        Ok(())
    }

    /// Commits the checkpoint if all `parts` parts of the upload are finished: syncs the
    /// chunk files, writes the manifest, drops the pending records and flushes the index. Returns
    /// `Ok(None)` while parts are missing (call it after every finished part; the last one
    /// commits). If (job, step) is already committed, returns that manifest unchanged and
    /// removes what this upload stored (unless it is the same generation: those chunks are the
    /// committed ones).
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &self,
        job: JobId,
        step: u64,
        generation: u64,
        parts: u32,
        total_len: u64,
        created_at_ms: u64,
        metrics: BTreeMap<String, f64>,
        model: String,
    ) -> Result<Option<Manifest>, CheckpointError> {
        let upload = Upload {
            job,
            step,
            generation,
        };
        if parts == 0 {
            return Err(CheckpointError::Invalid {
                job,
                step,
                msg: "a checkpoint has at least one part".to_string(),
            });
        }
        if let Some(existing) = self.get(job, step)? {
            return self.discard_duplicate(upload, existing).map(Some);
        }
        let Some(found) = self.finished_parts(upload, parts)? else {
            return Ok(None);
        };
        check_layout(&found, total_len).map_err(|msg| CheckpointError::Invalid {
            job,
            step,
            msg,
        })?;
        let manifest = Manifest {
            job,
            step,
            generation,
            created_at_ms,
            total_len,
            parts: found,
            metrics,
            model,
        };
        let bytes = encode(&manifest, &format!("the manifest of {job} step {step}"))?;
        let context = format!("commit {job} step {step}");
        self.chunks.sync_upload(upload)?;
        let swapped = self
            .manifests
            .compare_and_swap(manifest_key(job, step), None::<&[u8]>, Some(bytes))
            .map_err(CheckpointError::storage(context.clone()))?;
        if let Err(lost) = swapped {
            // A concurrent commit of the same step won; `current` is its manifest.
            let what = format!("the manifest of {job} step {step}");
            return match lost.current {
                Some(bytes) => self
                    .discard_duplicate(upload, decode(&bytes, &what)?)
                    .map(Some),
                None => Err(CheckpointError::Corrupt {
                    what,
                    msg: "sled refused to create it yet holds none".to_string(),
                }),
            };
        }
        remove_prefix(&self.pending, &upload_prefix(upload), &context)?;
        // A step saved again (a job resumed from before it) is wanted again.
        self.forgotten
            .remove(manifest_key(job, step))
            .map_err(CheckpointError::storage(context.clone()))?;
        self.db.flush().map_err(CheckpointError::storage(context))?;
        self.count_commit()?;
        self.lock_in_progress().remove(&upload);
        Ok(Some(manifest))
    }

    /// The finished parts `0..parts` of `upload` in order, or `None` while one is missing.
    fn finished_parts(
        &self,
        upload: Upload,
        parts: u32,
    ) -> Result<Option<Vec<PartInfo>>, CheckpointError> {
        let Upload { job, step, .. } = upload;
        let mut found: Vec<PartInfo> = vec![];
        for item in self.pending.scan_prefix(upload_prefix(upload)) {
            let (k, v) = item.map_err(CheckpointError::storage(format!(
                "read the finished parts of {job} step {step}"
            )))?;
            let Some((_, part)) = split_part(&k) else {
                return Err(CheckpointError::Corrupt {
                    what: format!("a pending-part key of {job} step {step}"),
                    msg: format!("{} bytes long", k.len()),
                });
            };
            if part >= parts {
                return Err(CheckpointError::Invalid {
                    job,
                    step,
                    msg: format!("part {part} was finished, but the checkpoint has {parts} parts"),
                });
            }
            if part as usize != found.len() {
                return Ok(None);
            }
            found.push(decode(
                &v,
                &format!("the record of {job} step {step} part {part}"),
            )?);
        }
        Ok((found.len() == parts as usize).then_some(found))
    }

    /// Cleans up after an upload of a step that is already committed, returning the
    /// committed manifest.
    fn discard_duplicate(
        &self,
        upload: Upload,
        existing: Manifest,
    ) -> Result<Manifest, CheckpointError> {
        let context = format!("discard a duplicate upload of {upload}");
        remove_prefix(&self.pending, &upload_prefix(upload), &context)?;
        if existing.generation != upload.generation {
            self.chunks.remove_upload(upload)?;
        }
        self.lock_in_progress().remove(&upload);
        Ok(existing)
    }

    /// Removes what an upload stored so far, so a failed upload leaves nothing behind. The
    /// chunks of a committed checkpoint are never removed here. Call it once no rank sends to
    /// this upload any more: a chunk arriving later starts it again.
    pub fn abort(&self, job: JobId, step: u64, generation: u64) -> Result<(), CheckpointError> {
        let upload = Upload {
            job,
            step,
            generation,
        };
        let context = format!("abort the upload of {upload}");
        remove_prefix(&self.pending, &upload_prefix(upload), &context)?;
        let committed = self
            .get(job, step)?
            .is_some_and(|m| m.generation == generation);
        if !committed {
            self.chunks.remove_upload(upload)?;
        }
        self.lock_in_progress().remove(&upload);
        Ok(())
    }
}
