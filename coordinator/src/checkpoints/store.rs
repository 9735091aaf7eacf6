//! [`CheckpointStore`]: the trees, opening (which collects dead uploads), and reading
//! checkpoints back. Uploading is in `upload.rs`, removal in `cleanup.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::log::{Mark, MarkFile};

use xxhash_rust::xxh3::xxh3_64;

use super::chunk_files::ChunkFiles;
use super::error::CheckpointError;
use super::keys::{PartKey, Upload, job_prefix, manifest_key, split_manifest};
use super::manifest::{ChunkInfo, CommitCount, Manifest, decode, encode};
use super::{DAMAGED_TREE, FORGOTTEN_TREE, MANIFESTS_TREE, META_TREE, PENDING_TREE};

const COMMITS_KEY: &str = "commits";
use crate::model::JobId;

/// A stored manifest, or why it does not decode.
pub(super) type Decoded = Result<Manifest, CheckpointError>;

/// One checkpoint in a listing: its manifest if it decodes, and the damage known of it.
#[derive(Clone, Debug)]
pub struct Listed {
    pub step: u64,
    pub manifest: Option<Manifest>,
    pub damage: Option<String>,
}

/// Uploads in progress in this process, with the chunks each stored: (part, index) → chunk.
pub(super) type InProgress = HashMap<Upload, BTreeMap<(u32, u32), ChunkInfo>>;

/// Checkpoints of all jobs: the index in a sled database, the chunks in files. Cloning is cheap
/// and clones share the set of uploads in progress.
#[derive(Clone)]
pub struct CheckpointStore {
    pub(super) db: sled::Db,
    /// Chunk bytes, by (job, step, generation, part, index).
    pub(super) chunks: Arc<ChunkFiles>,
    /// Finished parts of uncommitted uploads, keyed (job, step, generation, part).
    pub(super) pending: sled::Tree,
    /// Committed checkpoints, keyed (job, step).
    pub(super) manifests: sled::Tree,
    /// What verification found wrong with a checkpoint, keyed (job, step), as text.
    pub(super) damaged: sled::Tree,
    /// Checkpoints removed by the replicated log, keyed (job, step).
    pub(super) forgotten: sled::Tree,
    /// Uploads that have written chunks in this process and are neither committed nor
    /// aborted: garbage collection leaves them alone. Held while collection checks and removes
    /// an upload, so a chunk cannot land between the check and the removal.
    /// With each, the length and checksum of every chunk it stored (the sender's checksum,
    /// verified against the bytes before they were written), so finishing a part does not
    /// read its chunks back.
    pub(super) in_progress: Arc<Mutex<InProgress>>,
    /// Commits so far (also in the index) and the file beside the index that records the
    /// count outside sled: see [`CheckpointStore::open`].
    pub(super) commits: Arc<Mutex<(u64, MarkFile)>>,
    pub(super) meta: sled::Tree,
}

impl CheckpointStore {
    /// The store in `dir`: the index in `dir/index`, the chunks under `dir/chunks`. A
    /// directory in the layout of an earlier convoy (chunks inside sled) is refused by name.
    pub fn open_dir(dir: &Path) -> Result<CheckpointStore, CheckpointError> {
        if dir.join("conf").exists() || dir.join("db").exists() {
            return Err(CheckpointError::Layout {
                dir: dir.to_path_buf(),
            });
        }
        let index = dir.join("index");
        let db = sled::open(&index).map_err(CheckpointError::storage(format!(
            "open {}",
            index.display()
        )))?;
        CheckpointStore::open(&db, &dir.join("chunks"))
    }

    /// Opens the `ckpt/` trees of `db` with the chunk files under `chunks`, then removes every
    /// chunk and pending part that no manifest references: an upload a crash interrupted never
    /// becomes a checkpoint.
    ///
    /// The index counts its commits, and `commits.mark` beside the chunks records the count
    /// outside sled after every commit. sled recovers a damaged file by dropping what follows
    /// the damage, silently, which would make committed checkpoints vanish; an index that
    /// counts fewer commits than its mark is refused instead.
    pub fn open(db: &sled::Db, chunks: &Path) -> Result<CheckpointStore, CheckpointError> {
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(CheckpointError::storage(format!("open the {name} tree")))
        };
        let store = CheckpointStore {
            db: db.clone(),
            chunks: Arc::new(ChunkFiles::open(chunks)?),
            pending: tree(PENDING_TREE)?,
            manifests: tree(MANIFESTS_TREE)?,
            damaged: tree(DAMAGED_TREE)?,
            forgotten: tree(FORGOTTEN_TREE)?,
            in_progress: Arc::default(),
            commits: Arc::new(Mutex::new(Self::check_commits(db, chunks)?)),
            meta: tree(META_TREE)?,
        };
        let collected = store.collect_garbage()?;
        if collected > 0 {
            tracing::info!(
                collected,
                "checkpoint store: removed the records of uploads that never committed"
            );
        }
        Ok(store)
    }

    /// The index's commit count, checked against its mark.
    fn check_commits(db: &sled::Db, chunks: &Path) -> Result<(u64, MarkFile), CheckpointError> {
        let meta = db
            .open_tree(META_TREE)
            .map_err(CheckpointError::storage("open the meta tree"))?;
        let counted = match meta
            .get(COMMITS_KEY)
            .map_err(CheckpointError::storage("read the commit count"))?
        {
            Some(v) => decode::<CommitCount>(&v, "the commit count")?.0,
            None => 0,
        };
        let path = chunks.with_file_name("commits.mark");
        let (file, mark) = MarkFile::open(&path).map_err(|e| CheckpointError::Corrupt {
            what: path.display().to_string(),
            msg: e.to_string(),
        })?;
        if let Some(mark) = mark
            && mark.index > counted
        {
            return Err(CheckpointError::Corrupt {
                what: "the checkpoint index".to_string(),
                msg: format!(
                    "it holds {counted} commits but {} were made ({}); the index lost \
                     committed checkpoints, so the coordinator refuses to start rather than \
                     serve fewer (restore the data directory from a backup)",
                    mark.index,
                    path.display()
                ),
            });
        }
        Ok((counted, file))
    }

    /// Counts one more commit, in the index and in its mark (after the manifest is durable).
    pub(super) fn count_commit(&self) -> Result<(), CheckpointError> {
        let mut guard = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        let (count, file) = &mut *guard;
        let next = *count + 1;
        let bytes = encode(&CommitCount(next), "the commit count")?;
        self.meta
            .insert(COMMITS_KEY, bytes)
            .map_err(CheckpointError::storage("write the commit count"))?;
        self.db
            .flush()
            .map_err(CheckpointError::storage("flush the commit count"))?;
        file.save(Mark {
            index: next,
            jobs_issued: 0,
        })
        .map_err(|e| CheckpointError::Io {
            context: format!("record commit {next}"),
            source: std::io::Error::other(e.to_string()),
        })?;
        *count = next;
        Ok(())
    }

    pub(super) fn lock_in_progress(&self) -> MutexGuard<'_, InProgress> {
        self.in_progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committed checkpoint of `job` at `step`, if there is one.
    pub fn get(&self, job: JobId, step: u64) -> Result<Option<Manifest>, CheckpointError> {
        let bytes =
            self.manifests
                .get(manifest_key(job, step))
                .map_err(CheckpointError::storage(format!(
                    "read the manifest of {job} step {step}"
                )))?;
        bytes
            .map(|b| decode(&b, &format!("the manifest of {job} step {step}")))
            .transpose()
    }

    /// Every manifest of `job` in step order with its step, each decoded separately so one
    /// damaged manifest does not hide the others. Only a failure of sled itself is an `Err`.
    pub(super) fn scan(&self, job: JobId) -> Result<Vec<(u64, Decoded)>, CheckpointError> {
        let mut out = vec![];
        for item in self.manifests.scan_prefix(job_prefix(job)) {
            let (k, v) = item.map_err(CheckpointError::storage(format!(
                "list the checkpoints of {job}"
            )))?;
            let Some((_, step)) = split_manifest(&k) else {
                continue; // not a key this store writes
            };
            out.push((
                step,
                decode(&v, &format!("the manifest of {job} step {step}")),
            ));
        }
        Ok(out)
    }

    /// The checkpoints of `job`, oldest step first.
    pub fn list(&self, job: JobId) -> Result<Vec<Manifest>, CheckpointError> {
        self.scan(job)?.into_iter().map(|(_, m)| m).collect()
    }

    /// Every checkpoint of `job`, oldest first, with the damage known of it: a manifest that
    /// does not decode, or chunks that failed a verification or a resume (recorded then).
    pub fn listing(&self, job: JobId) -> Result<Vec<Listed>, CheckpointError> {
        let mut out = vec![];
        for (step, m) in self.scan(job)? {
            let listed = match m {
                Ok(m) => {
                    let damage = self
                        .damaged
                        .get(manifest_key(job, step))
                        .map_err(CheckpointError::storage(format!(
                            "read the damage of {job} step {step}"
                        )))?
                        .map(|v| String::from_utf8_lossy(&v).into_owned());
                    Listed {
                        step,
                        manifest: Some(m),
                        damage,
                    }
                }
                Err(e) if e.is_damage() => Listed {
                    step,
                    manifest: None,
                    damage: Some(e.to_string()),
                },
                Err(e) => return Err(e),
            };
            out.push(listed);
        }
        Ok(out)
    }

    /// Bytes free to this process on the chunk files' filesystem.
    pub fn free_bytes(&self) -> Result<u64, CheckpointError> {
        self.chunks.free_bytes()
    }

    /// The highest job id with a committed checkpoint, if any.
    pub fn newest_job(&self) -> Result<Option<JobId>, CheckpointError> {
        let last = self
            .manifests
            .last()
            .map_err(CheckpointError::storage("read the last manifest"))?;
        Ok(last
            .and_then(|(k, _)| split_manifest(&k))
            .map(|(job, _)| job))
    }

    /// Records that `job`'s checkpoint at `step` failed verification, for listings.
    fn mark_damaged(&self, job: JobId, step: u64, e: &CheckpointError) {
        if let Err(err) = self
            .damaged
            .insert(manifest_key(job, step), e.to_string().as_bytes())
        {
            tracing::warn!("recording the damage of {job} step {step}: {err}");
        }
    }

    /// The newest checkpoint of `job`, without reading its chunks.
    pub fn latest(&self, job: JobId) -> Result<Option<Manifest>, CheckpointError> {
        let last = self.manifests.scan_prefix(job_prefix(job)).next_back();
        let Some(item) = last else { return Ok(None) };
        let (k, v) = item.map_err(CheckpointError::storage(format!(
            "read the latest checkpoint of {job}"
        )))?;
        let step = split_manifest(&k).map_or(u64::MAX, |(_, s)| s);
        decode(&v, &format!("the manifest of {job} step {step}")).map(Some)
    }

    /// The chunks of `m` in order (part 0 chunk 0, part 0 chunk 1, …, part 1 chunk 0, …), each
    /// checked against the manifest's length and checksum. Concatenated, they are the state.
    /// The iterator owns what it needs, so it can outlive `self` and `m` (e.g. in a stream).
    pub fn read_chunks(
        &self,
        m: &Manifest,
    ) -> impl Iterator<Item = Result<Vec<u8>, CheckpointError>> + use<> {
        let files = self.chunks.clone();
        let (job, step, generation) = (m.job, m.step, m.generation);
        let wanted: Vec<(u32, u32, ChunkInfo)> = (0u32..)
            .zip(&m.parts)
            .flat_map(|(part, p)| (0u32..).zip(&p.chunks).map(move |(i, c)| (part, i, *c)))
            .collect();
        wanted.into_iter().map(move |(part, index, info)| {
            let key = PartKey {
                job,
                step,
                generation,
                part,
            };
            read_chunk(&files, &key, index, info)
        })
    }

    /// Reads and checks every chunk of `m`; the first damage found is the error.
    /// A damaged chunk is recorded for [`CheckpointStore::listing`].
    pub fn verify(&self, m: &Manifest) -> Result<(), CheckpointError> {
        for chunk in self.read_chunks(m) {
            if let Err(e) = chunk {
                if e.is_damage() {
                    self.mark_damaged(m.job, m.step, &e);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The newest checkpoint of `job` whose manifest decodes and whose chunks all verify,
    /// with the damage found in the newer ones it skipped (newest first), for the caller to
    /// report. A failure of sled itself is an `Err`, not a skipped checkpoint.
    pub fn latest_valid(
        &self,
        job: JobId,
    ) -> Result<(Option<Manifest>, Vec<CheckpointError>), CheckpointError> {
        let mut skipped = vec![];
        for (_, entry) in self.scan(job)?.into_iter().rev() {
            let checked = entry.and_then(|m| self.verify(&m).map(|()| m));
            match checked {
                Ok(m) => return Ok((Some(m), skipped)),
                Err(e) if e.is_damage() => skipped.push(e),
                Err(e) => return Err(e),
            }
        }
        Ok((None, skipped))
    }
}

fn read_chunk(
    files: &ChunkFiles,
    key: &PartKey,
    index: u32,
    info: ChunkInfo,
) -> Result<Vec<u8>, CheckpointError> {
    let PartKey {
        job, step, part, ..
    } = *key;
    let bytes = files.read(key, index)?;
    let corrupt = |why: String| CheckpointError::ChunkCorrupt {
        job,
        step,
        part,
        index,
        why,
    };
    let Some(bytes) = bytes else {
        return Err(CheckpointError::ChunkMissing {
            job,
            step,
            part,
            index,
        });
    };
    if bytes.len() as u64 != u64::from(info.len) {
        return Err(corrupt(format!(
            "is {} bytes, but the manifest says {}",
            bytes.len(),
            info.len
        )));
    }
    let hash = xxh3_64(&bytes);
    if hash != info.checksum {
        return Err(corrupt(format!(
            "checksum mismatch (stored bytes hash to {hash:#018x}, the manifest says {:#018x})",
            info.checksum
        )));
    }
    Ok(bytes)
}
