//! Removing checkpoints and the remains of uploads. Manifests always go first (and are
//! flushed) before their chunk files, so a crash midway leaves unreferenced chunks, which the
//! next open collects, never a manifest whose chunks are gone.

use super::CheckpointStore;
use super::error::CheckpointError;
use super::keys::{Upload, job_prefix, manifest_key, split_part, upload_prefix};
use super::manifest::Manifest;
use super::retention::{Retention, select_removals};
use crate::model::JobId;

impl CheckpointStore {
    /// Removes every chunk and pending-part record that no manifest references, except those
    /// of uploads in progress in this process. Returns how many records were removed.
    /// [`CheckpointStore::open`] runs it; at that point nothing is in progress, so every
    /// upload a crash interrupted goes.
    pub fn collect_garbage(&self) -> Result<u64, CheckpointError> {
        let mut collected = 0u64;
        let (uploads, strangers) = self.chunks.uploads()?;
        for path in strangers {
            tracing::warn!(
                "checkpoint store: {} is not something this store wrote; left alone",
                path.display()
            );
        }
        for upload in uploads {
            let in_progress = self.lock_in_progress();
            if !in_progress.contains_key(&upload) && !self.referenced(upload)? {
                collected += self.chunks.remove_upload(upload)?;
            }
            drop(in_progress);
        }

        for item in self.pending.iter() {
            let (k, _) = item.map_err(CheckpointError::storage("scan the pending parts"))?;
            let in_progress = self.lock_in_progress();
            let live = split_part(&k).is_some_and(|(u, _)| in_progress.contains_key(&u));
            if !live {
                self.pending
                    .remove(&k)
                    .map_err(CheckpointError::storage("collect a pending part"))?;
                collected += 1;
            }
        }
        Ok(collected)
    }

    /// Removes the uploads of `job` older than `step` that never committed (a rank skipped
    /// its part of a checkpoint while its previous upload ran, so the others' parts wait for
    /// a part that never comes). Run once `step` has committed, so that disk use stays bounded
    /// during a run, not only after the next start. Returns how many files went.
    pub fn collect_older_uploads(&self, job: JobId, step: u64) -> Result<u64, CheckpointError> {
        let (uploads, _) = self.chunks.uploads()?;
        let mut collected = 0;
        for u in uploads {
            if u.job != job || u.step >= step {
                continue;
            }
            let in_progress = self.lock_in_progress();
            if !self.referenced(u)? {
                let context = format!("collect the upload of {u}");
                remove_prefix(&self.pending, &upload_prefix(u), &context)?;
                collected += self.chunks.remove_upload(u)?;
                drop(in_progress);
                self.lock_in_progress().remove(&u);
            }
        }
        Ok(collected)
    }

    /// Whether a manifest refers to `upload`'s chunks. A manifest that does not decode counts
    /// as referring: its chunks are kept rather than guessed about.
    fn referenced(&self, upload: Upload) -> Result<bool, CheckpointError> {
        match self.get(upload.job, upload.step) {
            Ok(m) => Ok(m.is_some_and(|m| m.generation == upload.generation)),
            Err(e) if e.is_damage() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The steps of `job` that `r` does not keep, ascending, without removing them (a
    /// replicated leader proposes them; see [`CheckpointStore::forget_steps`]). Manifests that
    /// do not decode are neither counted nor removed.
    pub fn retention_removals(
        &self,
        job: JobId,
        r: &Retention,
    ) -> Result<Vec<u64>, CheckpointError> {
        let manifests: Vec<_> = self
            .scan(job)?
            .into_iter()
            .filter_map(|(_, m)| m.ok())
            .collect();
        Ok(select_removals(&manifests, r))
    }

    /// Removes `job`'s checkpoints at `steps` as the replicated log says, and remembers them
    /// as forgotten first, so that no repair fetches them back from a replica that has not
    /// removed its copy yet. Returns the steps that were here.
    pub fn forget_steps(&self, job: JobId, steps: &[u64]) -> Result<Vec<u64>, CheckpointError> {
        let context = format!("forget checkpoints of {job}");
        for &step in steps {
            self.forgotten
                .insert(manifest_key(job, step), &[][..])
                .map_err(CheckpointError::storage(context.clone()))?;
        }
        self.db.flush().map_err(CheckpointError::storage(context))?;
        let mut uploads = vec![];
        for &step in steps {
            if let Ok(Some(m)) = self.get(job, step) {
                uploads.push(Upload::of(&m));
            }
        }
        self.remove_checkpoints(&uploads)?;
        Ok(uploads.iter().map(|u| u.step).collect())
    }

    /// Applies `r` to `job`'s checkpoints and returns the steps removed, ascending. Manifests
    /// that do not decode are neither counted nor removed.
    pub fn apply_retention(&self, job: JobId, r: &Retention) -> Result<Vec<u64>, CheckpointError> {
        let manifests: Vec<_> = self
            .scan(job)?
            .into_iter()
            .filter_map(|(_, m)| m.ok())
            .collect();
        let removals = select_removals(&manifests, r);
        let uploads: Vec<Upload> = manifests
            .iter()
            .filter(|m| removals.contains(&m.step))
            .map(Upload::of)
            .collect();
        self.remove_checkpoints(&uploads)?;
        Ok(removals)
    }

    /// Removes every checkpoint of `job`, and whatever its uploads left; returns how many
    /// checkpoints went.
    pub fn remove_job(&self, job: JobId) -> Result<u64, CheckpointError> {
        let manifests: Vec<Manifest> = self
            .scan(job)?
            .into_iter()
            .filter_map(|(_, m)| m.ok())
            .collect();
        let uploads: Vec<Upload> = manifests.iter().map(Upload::of).collect();
        self.remove_checkpoints(&uploads)?;
        remove_prefix(
            &self.forgotten,
            &job_prefix(job),
            &format!("forget the removed checkpoints of {job}"),
        )?;
        // Manifests that do not decode, and uploads that never committed.
        for item in self.manifests.scan_prefix(job_prefix(job)) {
            let (k, _) = item.map_err(CheckpointError::storage("list removed manifests"))?;
            self.manifests
                .remove(k)
                .map_err(CheckpointError::storage(format!(
                    "remove a manifest of {job}"
                )))?;
        }
        self.db
            .flush()
            .map_err(CheckpointError::storage("flush removed manifests"))?;
        let (all, _) = self.chunks.uploads()?;
        for u in all.into_iter().filter(|u| u.job == job) {
            self.chunks.remove_upload(u)?;
        }
        Ok(uploads.len() as u64)
    }

    fn remove_checkpoints(&self, uploads: &[Upload]) -> Result<(), CheckpointError> {
        if uploads.is_empty() {
            return Ok(());
        }
        for u in uploads {
            self.damaged
                .remove(manifest_key(u.job, u.step))
                .map_err(CheckpointError::storage(
                    "forget the damage of a removed checkpoint",
                ))?;
            self.manifests.remove(manifest_key(u.job, u.step)).map_err(
                CheckpointError::storage(format!(
                    "remove the manifest of {} step {}",
                    u.job, u.step
                )),
            )?;
        }
        self.db
            .flush()
            .map_err(CheckpointError::storage("flush removed manifests"))?;
        for &u in uploads {
            self.chunks.remove_upload(u)?;
        }
        Ok(())
    }
}

/// Removes every key of `tree` under `prefix`; returns how many.
pub(super) fn remove_prefix(
    tree: &sled::Tree,
    prefix: &[u8],
    context: &str,
) -> Result<u64, CheckpointError> {
    let mut keys = vec![];
    for item in tree.scan_prefix(prefix) {
        let (k, _) = item.map_err(CheckpointError::storage(context))?;
        keys.push(k);
    }
    for k in &keys {
        tree.remove(k).map_err(CheckpointError::storage(context))?;
    }
    Ok(keys.len() as u64)
}
